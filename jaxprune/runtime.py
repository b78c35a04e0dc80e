"""Process-wide CPU settings for a program's entry point: `configure()`.

Importing jaxprune changes nothing in the process; the CLI and the benchmarks
call `configure()` first, before JAX is imported, and so can any script.

* XLA:CPU runs convolutions with YNNPACK by default; for CNN-7L's training
  convolutions (and their gradients, see `jaxprune.ops.conv2d`) its Eigen
  convolutions are faster. `set_xla_defaults` asks for them in XLA_FLAGS,
  which XLA reads once, when JAX creates its CPU backend; so only while JAX is
  not imported yet, only when XLA_FLAGS does not choose that flag itself, and
  not with `JAXPRUNE_XLA_DEFAULTS=0`.
* XLA:CPU's Eigen convolutions allocate their packed operands (tens of MB) on
  every call, and every execution allocates its temporaries afresh. glibc
  serves blocks that large with fresh mmaps, so each train step page-faults
  in hundreds of MB, most of its kernel time. glibc's `glibc.malloc.hugetlb=1`
  tunable (glibc >= 2.35) makes malloc ask for transparent huge pages, which
  cuts the faults and speeds the step up. glibc reads tunables at process
  start only, so `reexec_with_huge_pages` re-executes the process once with
  the tunable added; `JAXPRUNE_HUGE_PAGES=0` opts out.

benchmarks/RESULTS.md has the measurements. Every function takes the process
state it reads or changes as arguments defaulting to the real ones
(`os.environ`, `sys.modules`, `os.execve`, the running glibc, the kernel's THP
mode), so both outcomes can be tested on any machine.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Container, MutableMapping, Optional

XLA_CPU_DEFAULTS = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
TUNABLE = "glibc.malloc.hugetlb"
THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the running glibc, None elsewhere (musl, macOS, Windows)."""
  try:
    name = os.confstr("CS_GNU_LIBC_VERSION") or ""
  except (AttributeError, ValueError, OSError):
    return None
  parts = name.split()
  if len(parts) != 2 or parts[0] != "glibc":
    return None
  try:
    major, minor = parts[1].split(".")[:2]
    return int(major), int(minor)
  except ValueError:
    return None


def set_xla_defaults(environ: MutableMapping[str, str] = os.environ,
                     modules: Container[str] = sys.modules) -> bool:
  """Append `XLA_CPU_DEFAULTS` to XLA_FLAGS; whether it did.

  Not once JAX is imported (`modules` holds "jax"): its backend may already
  have read XLA_FLAGS, and the fast paths of `jaxprune.ops`, chosen from
  XLA_FLAGS, would no longer match what XLA runs.
  """
  flags = environ.get("XLA_FLAGS", "")
  if (environ.get("JAXPRUNE_XLA_DEFAULTS", "1") == "0"
      or "xla_cpu_experimental_ynn_fusion_type" in flags or "jax" in modules):
    return False
  environ["XLA_FLAGS"] = f"{flags} {XLA_CPU_DEFAULTS}".strip()
  return True


def huge_pages_help(thp_mode_file: str = THP_MODE,
                    version: Callable[[], Optional[tuple[int, int]]] = glibc_version) -> bool:
  """Whether the tunable changes anything here.

  It needs glibc >= 2.35 (`version()`) and a kernel giving transparent huge
  pages on request only ("[madvise]" in `thp_mode_file`): with "[always]"
  malloc gets them anyway, with "[never]" never.
  """
  v = version()
  if v is None or v < (2, 35):
    return False
  try:
    with open(thp_mode_file) as f:
      return "[madvise]" in f.read()
  except OSError:
    return False


def reexec_with_huge_pages(environ: MutableMapping[str, str] = os.environ,
                           execve: Callable = os.execve, thp_mode_file: str = THP_MODE,
                           version: Callable[[], Optional[tuple[int, int]]] = glibc_version
                           ) -> None:
  """Re-run this program (same interpreter and arguments) with the tunable set.

  Returns without doing anything when JAXPRUNE_HUGE_PAGES=0, when
  GLIBC_TUNABLES already sets it (so this runs at most once), or when it would
  not help (`huge_pages_help`). Only for a program's entry point: `execve`
  replaces the process image.
  """
  if environ.get("JAXPRUNE_HUGE_PAGES", "1") == "0":
    return
  tunables = environ.get("GLIBC_TUNABLES", "")
  if TUNABLE in tunables or not huge_pages_help(thp_mode_file, version):
    return
  env = dict(environ, GLIBC_TUNABLES=":".join(filter(None, [tunables, f"{TUNABLE}=1"])))
  sys.stdout.flush()
  sys.stderr.flush()
  execve(sys.executable, sys.orig_argv, env)


def configure(environ: MutableMapping[str, str] = os.environ,
              modules: Container[str] = sys.modules, execve: Callable = os.execve,
              thp_mode_file: str = THP_MODE,
              version: Callable[[], Optional[tuple[int, int]]] = glibc_version) -> None:
  """All of jaxprune's CPU settings, first thing in a program's entry point.

  `set_xla_defaults`, then `reexec_with_huge_pages` (the re-executed process
  inherits XLA_FLAGS, and its own call changes nothing more). Call it before
  anything imports JAX, or the XLA default is left out.
  """
  set_xla_defaults(environ, modules)
  reexec_with_huge_pages(environ, execve, thp_mode_file, version)
