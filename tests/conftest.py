"""Shared test setup: offline, quiet, and one persistent compilation cache per session.

Many tests build the same jitted step for the same tiny model (every `fit`
call, every pruning round, every CLI subprocess); a persistent cache shared
through the environment compiles each distinct program once.
"""
import os
import shutil
import tempfile

os.environ.setdefault("JAXPRUNE_NO_DOWNLOAD", "1")
CACHE = tempfile.mkdtemp(prefix="jaxprune-test-jit-cache-")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# The CPU settings the entry points apply (XLA_FLAGS, inherited by CLI subprocesses), so that
# in-process runs and CLI runs compute the same numbers; before anything imports JAX.
from jaxprune import runtime  # noqa: E402

runtime.set_xla_defaults()

from absl import logging  # noqa: E402
from hypothesis import settings  # noqa: E402

logging.set_verbosity(logging.WARNING)

# CI (CI=true) draws the same hypothesis examples every run and prints a reproduction blob on
# failure; elsewhere the default (random) profile stays.
settings.register_profile("ci", derandomize=True, print_blob=True, deadline=None)
if os.environ.get("CI"):
  settings.load_profile("ci")


def pytest_sessionfinish(session, exitstatus):
  shutil.rmtree(CACHE, ignore_errors=True)
