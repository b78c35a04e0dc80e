"""Masks: a pytree shaped like `params`, holding only the prunable kernels.

`{"conv1": {"kernel": m1}, ...}` — biases and BN parameters have no entry, so
a mask tree is a sub-tree of the params tree (as in jaxpruner).
"""
from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util


def prunable_paths(params, layer_ops: dict[str, str], include: Iterable[str] = ("conv",)):
  """Paths `(layer, "kernel")` of the kernels of the given op kinds (conv by default)."""
  include = set(include)
  return [path for path in traverse_util.flatten_dict(params)
          if path[-1] == "kernel" and layer_ops.get(path[0]) in include]


def init_masks(params, layers, include: Iterable[str] = ("conv",)):
  """All-ones masks over the kernels of `include` ops ("conv", "dense")."""
  ops = {layer.name: layer.op for layer in layers}
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict(
      {p: jnp.ones_like(flat[p]) for p in prunable_paths(params, ops, include)})


def apply_masks(params, masks):
  """`params` with each masked kernel multiplied by its mask (masks may be None)."""
  if not masks:
    return params
  flat = dict(traverse_util.flatten_dict(params))
  for path, m in traverse_util.flatten_dict(masks).items():
    flat[path] = flat[path] * m.astype(flat[path].dtype)
  return traverse_util.unflatten_dict(flat)


def remaining_fraction(masks) -> float:
  """Fraction of unmasked kernel weights.

  Structured masks also hold conv-bias and BN entries (`prune.channel_masks`);
  those are not weights, so only the "kernel" leaves count.
  """
  flat = jax.tree_util.tree_flatten_with_path(masks)[0]
  kernels = [m for path, m in flat if getattr(path[-1], "key", None) == "kernel"]
  total = sum(m.size for m in kernels)
  return float(sum(np.count_nonzero(np.asarray(m)) for m in kernels) / max(total, 1))


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
