"""`jaxprune.runtime`: the XLA flag default and the one-time huge-page re-execution.

The process state (environment, imported modules, glibc version, THP mode,
execve) is injected, so both outcomes of each decision run on any machine.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxprune import runtime

REPO = Path(__file__).resolve().parents[1]
MADVISE = "always [madvise] never\n"


@pytest.fixture
def thp(tmp_path):
  """A THP-mode file with the given contents (None: no such file)."""
  def write(mode):
    path = tmp_path / "enabled"
    if mode is not None:
      path.write_text(mode)
    return str(path)
  return write


class Exec:
  """Records execve's arguments instead of replacing the process."""

  def __init__(self):
    self.calls = []

  def __call__(self, path, argv, env):
    self.calls.append((path, argv, env))


@pytest.mark.parametrize("mode,version,helps", [
    (MADVISE, (2, 35), True),
    (MADVISE, (2, 39), True),
    (MADVISE, (2, 34), False),
    (MADVISE, None, False),  # not glibc
    ("[always] madvise never\n", (2, 39), False),
    ("always madvise [never]\n", (2, 39), False),
    (None, (2, 39), False),
])
def test_huge_pages_help_only_with_new_glibc_and_a_kernel_that_waits_to_be_asked(
    thp, mode, version, helps):
  assert runtime.huge_pages_help(thp(mode), lambda: version) == helps


@pytest.mark.parametrize("given,expected", [
    (None, "glibc.malloc.hugetlb=1"),
    ("glibc.malloc.trim_threshold=1000000",
     "glibc.malloc.trim_threshold=1000000:glibc.malloc.hugetlb=1"),
])
def test_reexecs_with_the_tunable_and_the_same_interpreter_and_arguments(thp, given, expected):
  environ = {"HOME": "/h"} if given is None else {"HOME": "/h", "GLIBC_TUNABLES": given}
  execve = Exec()
  runtime.reexec_with_huge_pages(environ, execve, thp(MADVISE), lambda: (2, 39))
  new_env = {"HOME": "/h", "GLIBC_TUNABLES": expected}
  assert execve.calls == [(sys.executable, sys.orig_argv, new_env)]
  assert environ.get("GLIBC_TUNABLES") == given  # the new process's environment only


@pytest.mark.parametrize("environ,mode,version", [
    ({"JAXPRUNE_HUGE_PAGES": "0"}, MADVISE, (2, 39)),  # opted out
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, MADVISE, (2, 39)),  # chosen: runs at most once
    ({}, MADVISE, (2, 31)),  # old glibc
    ({}, "[always] madvise never\n", (2, 39)),  # would not help
])
def test_no_reexec_when_opted_out_already_set_or_useless(thp, environ, mode, version):
  execve = Exec()
  runtime.reexec_with_huge_pages(dict(environ), execve, thp(mode), lambda: version)
  assert execve.calls == []


@pytest.mark.parametrize("environ,modules,expected", [
    ({}, {}, runtime.XLA_CPU_DEFAULTS),
    ({"XLA_FLAGS": "--xla_dump_to=/d"}, {}, "--xla_dump_to=/d " + runtime.XLA_CPU_DEFAULTS),
    ({"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=x"}, {}, None),  # the user's choice
    ({"JAXPRUNE_XLA_DEFAULTS": "0"}, {}, None),
    ({}, {"jax": None}, None),  # too late: JAX may have read XLA_FLAGS
])
def test_xla_default_only_before_jax_and_when_not_chosen(environ, modules, expected):
  before = environ.get("XLA_FLAGS")
  assert runtime.set_xla_defaults(environ, modules) == (expected is not None)
  assert environ.get("XLA_FLAGS") == (before if expected is None else expected)


def test_configure_sets_the_flag_then_reexecs_with_it(thp):
  execve = Exec()
  environ = {}
  runtime.configure(environ, {}, execve, thp(MADVISE), lambda: (2, 39))
  (_, _, env), = execve.calls
  assert env == {"XLA_FLAGS": runtime.XLA_CPU_DEFAULTS, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  execve.calls.clear()
  runtime.configure(env, {}, execve, thp(MADVISE), lambda: (2, 39))  # the re-executed process
  assert execve.calls == [] and env["XLA_FLAGS"] == runtime.XLA_CPU_DEFAULTS


SCRIPT = r"""
import os, sys
print("start", flush=True)
from jaxprune import runtime
runtime.configure()
print("end", os.environ.get("GLIBC_TUNABLES"), os.environ.get("XLA_FLAGS"), sys.argv[1:])
"""


def test_configure_in_a_real_process():
  """The real execve, glibc and kernel: output flushed before, arguments kept, at most once."""
  ours = ("GLIBC_TUNABLES", "JAXPRUNE_HUGE_PAGES", "XLA_FLAGS", "JAXPRUNE_XLA_DEFAULTS")
  env = {k: v for k, v in os.environ.items() if k not in ours}
  out = subprocess.run([sys.executable, "-c", SCRIPT, "a", "--b=1"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  tunables = "glibc.malloc.hugetlb=1" if runtime.huge_pages_help() else None
  starts = ["start"] * (2 if tunables else 1)
  assert out.stdout.splitlines() == starts + [
      f"end {tunables} {runtime.XLA_CPU_DEFAULTS} ['a', '--b=1']"]
