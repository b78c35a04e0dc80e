"""Test configs: a packaged dataset config with dotted overrides ("train.epochs": 2)."""
from jaxprune import config as config_lib


def load_config(name="digits", preset="smoke", **overrides):
  c = config_lib.load(f"{name}:{preset}")
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c
