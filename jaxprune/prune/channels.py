"""Channel (neuron) pruning: Network Slimming and StructLTH ("refill").

A channel is a conv's output channel. The channel-level view is
`{conv name: bool vector}`, read off the conv kernel masks (a channel is alive
while any of its kernel weights is). A structured mask tree masks, for every
pruned channel, the conv kernel slice, the conv bias and the scale *and* bias
of the BN that follows: the channel is then exactly 0 before and after BN, in
both BN modes (BN(0) = (0 - mean) * 0 + 0), and after the ReLU, which makes
removing it (`compression.compress`) exact. The paper's code masks BN gamma
and beta the same way.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.models.spec import Layer, resolve_inputs
from jaxprune.prune import select


def following_bn(layers: Sequence[Layer]) -> dict[str, str]:
  """{conv name: name of the BN applied directly to its output}."""
  ops = {l.name: l.op for l in layers}
  return {ins[0]: l.name for l, ins in zip(layers, resolve_inputs(layers))
          if l.op == "bn" and ops.get(ins[0]) == "conv"}


def conv_kernel_masks(masks) -> dict[str, jax.Array]:
  """{layer: kernel mask} of the conv (4-D) kernels in the mask tree."""
  return {name: m["kernel"] for name, m in masks.items()
          if "kernel" in m and m["kernel"].ndim == 4}


def channel_view(masks) -> dict[str, np.ndarray]:
  """{conv name: bool vector of alive output channels}."""
  return {name: np.any(np.asarray(k) != 0, axis=(0, 1, 2))
          for name, k in conv_kernel_masks(masks).items()}


def channel_counts(masks) -> dict[str, int]:
  """{conv name: number of alive output channels}."""
  return {name: int(np.count_nonzero(a)) for name, a in channel_view(masks).items()}


def prune_channels(scores: dict[str, jax.Array], alive: dict[str, np.ndarray], rate: float,
                   scope: str = "global", min_channels: int = 1) -> dict[str, np.ndarray]:
  """Prunes round(rate * alive channels) of the lowest-scoring ones (per scope).

  Only convs in `scores` take part (and are returned). The top `min_channels`
  alive channels of each layer are protected, so no layer is ever emptied
  (fewer channels are pruned when only protected ones are left).
  """
  names = sorted(scores)
  live = [np.asarray(alive[n], bool) for n in names]
  floor = [min(min_channels, int(a.sum())) for a in live]
  guarded = [_protect_top(np.asarray(scores[n]), a, f) for n, a, f in zip(names, live, floor)]
  n_remove = [min(n, sum(live[i].size - floor[i] for i in g))
              for g, n in zip(select.groups(len(names), scope),
                              select.removal_counts(live, rate, scope))]
  keep = select.keep_leaves(guarded, live, n_remove, scope)
  return {n: np.asarray(k) for n, k in zip(names, keep)}


def _protect_top(scores: np.ndarray, alive: np.ndarray, n: int) -> np.ndarray:
  """Scores with the `n` best alive channels raised to +inf (ties: earlier channel wins)."""
  order = np.argsort(-np.where(alive, scores, -np.inf), kind="stable")
  out = np.array(scores)
  out[order[:n]] = np.inf
  return out


def channel_masks(alive: dict[str, np.ndarray], masks, params, layers: Sequence[Layer]):
  """Structured mask tree: kernel slice, conv bias and following BN scale/bias per channel.

  Pruning refills: an alive channel's kernel slice becomes all ones.
  """
  bn_of = following_bn(layers)
  out = {name: dict(m) for name, m in masks.items()}
  for name, a in alive.items():
    kernel = masks[name]["kernel"]
    vec = np.asarray(a, kernel.dtype)
    out[name]["kernel"] = jnp.asarray(np.broadcast_to(vec, kernel.shape))
    if "bias" in params[name]:
      out[name]["bias"] = jnp.asarray(vec)
    if name in bn_of:
      out[bn_of[name]] = {"scale": jnp.asarray(vec), "bias": jnp.asarray(vec)}
  return out


def slim_scores(params, masks, layers: Sequence[Layer]) -> dict[str, jax.Array]:
  """Network Slimming: |gamma| of the BN after each masked conv (convs without BN take no part)."""
  bn_of = following_bn(layers)
  return {name: jnp.abs(params[bn_of[name]]["scale"])
          for name in conv_kernel_masks(masks) if name in bn_of}


def struct_lth_scores(params, masks, imp_rate: float = 0.2,
                      scope: str = "global") -> dict[str, jax.Array]:
  """StructLTH: an IMP step (|w|, `imp_rate`), then each channel's summed surviving |w|."""
  kernels = conv_kernel_masks(masks)
  weights = {n: jnp.abs(params[n]["kernel"]) for n in kernels}
  imp = select.update_masks(weights, kernels, imp_rate, scope)
  return {n: jnp.sum(weights[n] * imp[n], axis=(0, 1, 2)) for n in kernels}
