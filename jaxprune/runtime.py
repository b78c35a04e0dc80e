"""Process-level setting for XLA:CPU speed, applied by the CLI and the benchmarks.

XLA:CPU's Eigen convolutions allocate their packed operands (tens of MB) on
every call, and every execution allocates its temporaries afresh. glibc serves
blocks that large with fresh mmaps, so each CROWN-IBP train step of CNN-7L
(batch 128) page-faults in about 800 MB: 200k faults, most of the 18 % of its
CPU time spent in the kernel. glibc's `glibc.malloc.hugetlb=1` tunable
(glibc >= 2.35) makes malloc ask for transparent huge pages, which cuts the
faults 13x and speeds that step up by about 7 % (benchmarks/RESULTS.md).
glibc reads tunables at process start only, so the process re-executes itself
once with the tunable added; `JAXPRUNE_HUGE_PAGES=0` opts out.
"""
from __future__ import annotations

import os
import sys

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


def huge_pages_help(thp_mode_file: str = THP_MODE) -> bool:
  """Whether the tunable changes anything here.

  It needs glibc >= 2.35 and a kernel giving transparent huge pages on request
  only ("[madvise]"): with "[always]" malloc gets them anyway, with "[never]"
  never.
  """
  version = glibc_version()
  if version is None or version < (2, 35):
    return False
  try:
    with open(thp_mode_file) as f:
      return "[madvise]" in f.read()
  except OSError:
    return False


def reexec_with_huge_pages() -> None:
  """Re-run this program (same interpreter and arguments) with the tunable set.

  Returns without doing anything when JAXPRUNE_HUGE_PAGES=0, when
  GLIBC_TUNABLES already sets it (so this runs at most once), or when it would
  not help. Only for a program's entry point: the process image is replaced.
  """
  if os.environ.get("JAXPRUNE_HUGE_PAGES", "1") == "0":
    return
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  if TUNABLE in tunables or not huge_pages_help():
    return
  env = dict(os.environ, GLIBC_TUNABLES=":".join(filter(None, [tunables, f"{TUNABLE}=1"])))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, env)
