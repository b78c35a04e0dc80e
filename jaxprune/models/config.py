"""Validation of the config's model key, before anything is written."""
from __future__ import annotations

from jaxprune.registry import unknown


def problems(c) -> list[str]:
  from jaxprune.models import REGISTRY
  return [] if c.model in REGISTRY else [unknown("model", c.model, REGISTRY)]
