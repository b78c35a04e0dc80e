"""The CLI's one-time re-execution with glibc's huge-page tunable (`jaxprune.runtime`)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxprune import runtime

REPO = Path(__file__).resolve().parents[1]
GLIBC_OK = (runtime.glibc_version() or (0, 0)) >= (2, 35)

SCRIPT = r"""
import os, sys
print("start", flush=True)
from jaxprune.runtime import reexec_with_huge_pages
reexec_with_huge_pages()
print("end", os.environ.get("GLIBC_TUNABLES"), sys.argv[1:])
"""


@pytest.mark.parametrize("mode,helps", [
    ("always [madvise] never\n", True),
    ("[always] madvise never\n", False),
    ("always madvise [never]\n", False),
    (None, False),
])
def test_huge_pages_help_only_when_the_kernel_waits_to_be_asked(tmp_path, mode, helps):
  path = tmp_path / "enabled"
  if mode is not None:
    path.write_text(mode)
  assert runtime.huge_pages_help(str(path)) == (helps and GLIBC_OK)


def run_script(**env_changes):
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JAXPRUNE_HUGE_PAGES")}
  env.update(env_changes)
  out = subprocess.run([sys.executable, "-c", SCRIPT, "a", "--b=1"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  return out.stdout.splitlines()


@pytest.mark.parametrize("given,expected", [
    (None, "glibc.malloc.hugetlb=1"),
    ("glibc.malloc.trim_threshold=1000000", "glibc.malloc.trim_threshold=1000000:glibc.malloc.hugetlb=1"),
])
def test_reexecs_once_with_the_tunable_and_the_same_arguments(given, expected):
  lines = run_script(**({} if given is None else {"GLIBC_TUNABLES": given}))
  if runtime.huge_pages_help():
    assert lines == ["start", "start", f"end {expected} ['a', '--b=1']"]
  else:
    assert lines == ["start", f"end {given} ['a', '--b=1']"]


def test_opt_out_and_an_explicit_setting_are_left_alone():
  assert run_script(JAXPRUNE_HUGE_PAGES="0") == ["start", "end None ['a', '--b=1']"]
  assert run_script(GLIBC_TUNABLES="glibc.malloc.hugetlb=0") == [
      "start", "end glibc.malloc.hugetlb=0 ['a', '--b=1']"]
