"""Importance scores of unstructured pruners: pytrees shaped like the mask tree.

Higher is more important; `select.update_masks` keeps the top ones. Every
scorer sees the *raw* params and picks the leaves at the mask tree's paths.
"""
from __future__ import annotations

import itertools
from typing import Callable, Iterable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune.prune import select

LossFn = Callable[..., jax.Array]  # loss_fn(params, masks, batch) -> scalar


def at_masks(tree, masks):
  """The sub-tree of `tree` (params, grads) at the paths of the mask tree."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: _get(tree, path), masks)


def _get(tree, path):
  for p in path:
    tree = tree[p.key]
  return tree


@jax.jit
def random_scores(key: jax.Array, masks):
  """Uniform scores: a random mask, reproducible by `key`.

  One draw for all leaves, split afterwards: a PRNG kernel compiles once, not per shape.
  """
  leaves, treedef = jax.tree_util.tree_flatten(masks)
  sizes = [m.size for m in leaves]
  parts = jnp.split(jax.random.uniform(key, (sum(sizes),)), np.cumsum(sizes)[:-1])
  return treedef.unflatten([p.reshape(m.shape) for p, m in zip(parts, leaves)])


def magnitude_scores(params, masks):
  """IMP / LTH: |w|."""
  return jax.tree_util.tree_map(jnp.abs, at_masks(params, masks))


def snip_scores(params, masks, grads):
  """SNIP: |w * dL/dw| of one batch = |dL/dm|, the loss sensitivity to each mask entry."""
  return jax.tree_util.tree_map(lambda w, g: jnp.abs(w * g), at_masks(params, masks),
                                at_masks(grads, masks))


def taylor_scores(params, masks, grads: Sequence):
  """First-order Taylor: |w * mean_b dL_b/dw|, gradients accumulated over batches.

  The accumulated gradient (as PyTorch's `.grad` sums over backward passes)
  makes -w * g the first-order estimate of the change in the *whole* loss
  when w is removed, so the abs is taken after accumulating. The paper's
  code scores one batch (its loss helper returns after the first), where
  this equals SNIP's score.
  """
  grads = [at_masks(g, masks) for g in grads]
  mean = jax.tree_util.tree_map(lambda *g: sum(g) / len(g), *grads)
  return jax.tree_util.tree_map(lambda w, g: jnp.abs(w * g), at_masks(params, masks), mean)


def loss_grads(loss_fn: LossFn, params, masks, batches: Iterable) -> list:
  """Per-batch gradients of `loss_fn(params, masks, batch)` w.r.t. params."""
  grad = jax.jit(jax.grad(loss_fn))
  return [grad(params, masks, b) for b in batches]


class HydraConfig(NamedTuple):
  """HYDRA's score optimisation (the paper's code: Adam, lr 1e-3, 20 epochs)."""

  steps: int = 100
  optimizer: optax.GradientTransformation = optax.adam(1e-3)


def hydra_init(params, masks, scope: str = "global"):
  """Signed scores w / max|w| over each top-k group, so the first top-k is IMP's mask.

  HYDRA scales by sqrt(6 / fan_in) / max|w| per layer; that factor leaves a
  layer-wise top-k unchanged but would skew a global one across layers.
  """
  w_leaves, treedef = jax.tree_util.tree_flatten(at_masks(params, masks))
  out = list(w_leaves)
  for g in select.groups(len(w_leaves), scope):
    top = max(jnp.max(jnp.abs(w_leaves[i])) for i in g)
    for i in g:
      out[i] = w_leaves[i] / jnp.maximum(top, jnp.finfo(top.dtype).tiny)
  return treedef.unflatten(out)


def straight_through_masks(scores, masks, n_remove: Sequence[int], scope: str):
  """Binary top-k mask of |scores| forward, identity to the scores backward."""
  s_leaves, treedef = jax.tree_util.tree_flatten(scores)
  m_leaves = treedef.flatten_up_to(masks)
  mag = [jnp.abs(s) for s in s_leaves]
  hard = select.keep_leaves(jax.lax.stop_gradient(mag), [m != 0 for m in m_leaves],
                            n_remove, scope)
  return treedef.unflatten([(h + a - jax.lax.stop_gradient(a)).astype(m.dtype)
                            for h, a, m in zip(hard, mag, m_leaves)])


def hydra_scores(params, masks, loss_fn: LossFn, batches: Sequence, *, rate: float,
                 scope: str = "global", config: HydraConfig = HydraConfig()):
  """HYDRA: |scores| learned with frozen weights through a straight-through top-k mask.

  The forward mask keeps the top (1 - rate) of the remaining weights, exactly
  what `select.update_masks(result, masks, rate, scope)` then selects.
  Batches are cycled for `config.steps` optimiser steps.
  """
  alive = [np.asarray(m) != 0 for m in jax.tree_util.tree_leaves(masks)]
  n_remove = select.removal_counts(alive, rate, scope)

  def loss(scores, batch):
    return loss_fn(params, straight_through_masks(scores, masks, n_remove, scope), batch)

  @jax.jit
  def step(scores, opt_state, batch):
    g = jax.grad(loss)(scores, batch)
    updates, opt_state = config.optimizer.update(g, opt_state, scores)
    return optax.apply_updates(scores, updates), opt_state

  scores = hydra_init(params, masks, scope)
  opt_state = config.optimizer.init(scores)
  for batch in itertools.islice(itertools.cycle(batches), config.steps):
    scores, opt_state = step(scores, opt_state, batch)
  return jax.tree_util.tree_map(jnp.abs, scores)
