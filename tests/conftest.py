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

from absl import logging  # noqa: E402

logging.set_verbosity(logging.WARNING)


def pytest_sessionfinish(session, exitstatus):
  shutil.rmtree(CACHE, ignore_errors=True)
