"""Validation of the config's `verify` section, before anything is written."""
from __future__ import annotations

import os

from jaxprune.registry import unknown
from jaxprune.runs import SLOTS


def problems(c) -> list[str]:
  from jaxprune.data import NAMES
  from jaxprune.verify import METHODS
  v, out = c.verify, []
  if v.method and v.method not in METHODS:
    out.append(unknown("verify.method", v.method, ("",) + METHODS))
  if not v.num_samples >= 1:
    out.append(f"verify.num_samples must be >= 1, got {v.num_samples}")
  if not v.timeout > 0:
    out.append(f"verify.timeout must be > 0 seconds, got {v.timeout}")
  if v.eps is not None and not v.eps >= 0:
    out.append(f"verify.eps must be >= 0 (or None: train.eps), got {v.eps}")
  if v.dataset and v.dataset not in NAMES:
    out.append(unknown("verify.dataset", v.dataset, NAMES))
  if v.data_dir and not os.path.isdir(os.path.expanduser(v.data_dir)):
    out.append(f"verify.data_dir {v.data_dir!r} does not exist or is not a directory")
  if v.slot not in SLOTS:
    out.append(unknown("verify.slot", v.slot, SLOTS))
  return out
