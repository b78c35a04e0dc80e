"""Top-k selection over mask pytrees: the one place that turns scores into masks.

Scores are a pytree shaped like the mask tree. Already-pruned entries
(mask 0) score -inf, so they stay pruned and are never counted twice. The
rate is a fraction of the *remaining* entries: each round prunes
`round(rate * n_alive)` (Python's round, as PyTorch's pruning does), so k
rounds at rate r leave (1 - r)^k of them up to one entry of rounding per round.
Ties break deterministically: among equal scores the entry earlier in
flattened leaf order (jax.tree_util order, i.e. sorted layer names) is pruned
first.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

SCOPES = ("global", "layerwise")


def check_scope(scope: str) -> None:
  if scope not in SCOPES:
    raise ValueError(f"unknown scope {scope!r}; expected one of {SCOPES}")


def keep_top(scores: jax.Array, alive: jax.Array, n_remove) -> jax.Array:
  """Boolean keep-vector of flat `scores`: drops the `n_remove` lowest, dead ones first."""
  order = jnp.argsort(jnp.where(alive, scores, -jnp.inf), stable=True)
  return jnp.zeros(scores.shape, bool).at[order].set(jnp.arange(scores.size) >= n_remove)


def groups(n_leaves: int, scope: str) -> list[list[int]]:
  """Leaf indices ranked together: all of them (global) or one leaf each (layerwise)."""
  check_scope(scope)
  return [list(range(n_leaves))] if scope == "global" else [[i] for i in range(n_leaves)]


def removal_counts(alive: Sequence[np.ndarray], rate: float, scope: str) -> list[int]:
  """`n_remove` per group: its dead entries plus round(rate * its alive entries)."""
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"rate must be in [0, 1], got {rate}")
  counts = []
  for g in groups(len(alive), scope):
    n_alive = int(sum(np.count_nonzero(alive[i]) for i in g))
    n_total = int(sum(alive[i].size for i in g))
    counts.append(n_total - n_alive + round(rate * n_alive))
  return counts


@functools.partial(jax.jit, static_argnames="scope")
def keep_leaves(scores: Sequence[jax.Array], alive: Sequence[jax.Array],
                n_remove: Sequence[int], scope: str) -> list[jax.Array]:
  """Per-leaf boolean keep arrays from per-leaf scores (top-k within each group)."""
  out: list = [None] * len(scores)
  for g, n in zip(groups(len(scores), scope), n_remove):
    flat_s = jnp.concatenate([jnp.ravel(scores[i]) for i in g])
    flat_a = jnp.concatenate([jnp.ravel(alive[i]) for i in g])
    keep = keep_top(flat_s, flat_a, n)
    offsets = np.cumsum([0] + [scores[i].size for i in g])
    for j, i in enumerate(g):
      out[i] = keep[offsets[j]:offsets[j + 1]].reshape(scores[i].shape)
  return out


def update_masks(scores, masks, rate: float, scope: str = "global"):
  """New masks keeping the top (1 - rate) of the currently unmasked entries by score.

  `scores` and `masks` are pytrees of the same structure; the result keeps the
  dtype of `masks`.
  """
  m_leaves, treedef = jax.tree_util.tree_flatten(masks)
  s_leaves = treedef.flatten_up_to(scores)
  alive = [np.asarray(m) != 0 for m in m_leaves]
  keep = keep_leaves(s_leaves, alive, removal_counts(alive, rate, scope), scope)
  return treedef.unflatten([jnp.asarray(np.asarray(k, m.dtype)) for k, m in zip(keep, m_leaves)])

