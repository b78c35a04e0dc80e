"""Shared test setup: offline, quiet, and small models compiled once per session."""
import os

os.environ.setdefault("JAXPRUNE_NO_DOWNLOAD", "1")

from absl import logging  # noqa: E402

logging.set_verbosity(logging.WARNING)
