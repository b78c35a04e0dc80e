"""Validation of the config's data keys (`dataset`, `data_dir`), before anything is written."""
from __future__ import annotations

import os

from jaxprune.data.datasets import NAMES
from jaxprune.registry import unknown


def problems(c) -> list[str]:
  problems = []
  if c.dataset not in NAMES:
    problems.append(unknown("dataset", c.dataset, NAMES))
  if c.data_dir and not os.path.isdir(os.path.expanduser(c.data_dir)):
    problems.append(f"data_dir {c.data_dir!r} does not exist or is not a directory")
  return problems
