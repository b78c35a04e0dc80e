"""Physically remove dead conv channels: the smaller network verification gets to see.

A channel is removed only when it is *identically zero* where it leaves the
conv -> [BN] -> [ReLU] chain, evaluated with eval-mode BN on the masked
params: its kernel slice is zero and bias/BN/ReLU map the constant to 0, or
BN's scale is zero and the rest maps BN's shift to 0. A zero input channel
contributes nothing to the next conv (zero padding included) or, after a
flatten, to the next dense layer, so dropping it there is exact. Channels
that are constant but non-zero (e.g. a zero kernel slice under an unmasked
BN) are kept: folding them into the next layer's bias is not exact next to
a padded border. Structured masks (`channels.channel_masks`) zero the conv
bias and BN scale/bias of pruned channels, so every pruned channel is dead.

Only chains whose output feeds convs or flatten -> dense layers exclusively
are shrunk; a conv feeding a residual `add` keeps its channels (its dead
channels stay as zeros). A layer keeps at least one channel.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.models import masks as masks_lib
from jaxprune.models.spec import Layer, resolve_inputs
from jaxprune.ops import BN_EPS


def consumers(layers: Sequence[Layer]) -> dict[str, list[str]]:
  out: dict[str, list[str]] = {l.name: [] for l in layers}
  for l, ins in zip(layers, resolve_inputs(layers)):
    for i in ins:
      out.setdefault(i, []).append(l.name)
  return out


def removable_chain(conv: str,
                    layers: Sequence[Layer]) -> Optional[tuple[Optional[str], bool, list[str]]]:
  """(BN name or None, whether a ReLU follows, the consuming conv/dense layers) of a conv.

  None when its channels cannot be removed: the chain branches, or its output
  reaches anything other than convs and flatten -> dense.
  """
  ops = {l.name: l.op for l in layers}
  users = consumers(layers)
  node, bn, relu = conv, None, False
  for op in ("bn", "relu"):
    nxt = users[node]
    if len(nxt) == 1 and ops[nxt[0]] == op:
      node = nxt[0]
      bn, relu = (node, relu) if op == "bn" else (bn, True)
  targets = []
  for user in users[node]:
    if ops[user] == "conv":
      targets.append(user)
    elif ops[user] == "flatten" and users[user] and all(ops[u] == "dense" for u in users[user]):
      targets += users[user]
    else:
      return None
  return (bn, relu, targets) if targets else None


def dead_channels(conv: str, bn: Optional[str], relu: bool, params, batch_stats) -> np.ndarray:
  """Output channels of the chain that are exactly 0 for every input (eval-mode BN)."""
  p = params[conv]
  const = np.all(p["kernel"] == 0, axis=(0, 1, 2))
  value = p.get("bias", np.zeros(p["kernel"].shape[-1], p["kernel"].dtype))
  if bn is not None:
    scale = params[bn]["scale"] / np.sqrt(batch_stats[bn]["var"] + BN_EPS)
    const = const | (scale == 0)
    value = (value - batch_stats[bn]["mean"]) * scale + params[bn]["bias"]
  if relu:
    value = np.maximum(value, 0)
  return const & (value == 0)


def compress(layers: Sequence[Layer], variables: dict, masks=None):
  """(new layers, new variables) of the network with its dead channels removed.

  Masks are baked into the returned params. In eval mode the result computes
  what the masked network computes (up to float summation order). Slicing
  runs on host NumPy copies. Layers are visited in order, so a conv's dead
  inputs are already gone when its own channels are tested.
  """
  as_numpy = lambda tree: {k: {n: np.asarray(x) for n, x in v.items()} for k, v in tree.items()}
  params = as_numpy(masks_lib.apply_masks(variables["params"], masks))
  stats = as_numpy(variables.get("batch_stats", {}))
  new_layers = list(layers)
  for i, layer in enumerate(layers):
    chain = removable_chain(layer.name, layers) if layer.op == "conv" else None
    if chain is None:
      continue
    bn, relu, targets = chain
    keep = ~dead_channels(layer.name, bn, relu, params, stats)
    if keep.all():
      continue
    if not keep.any():
      keep[0] = True
    params[layer.name] = {k: v[..., keep] for k, v in params[layer.name].items()}
    if bn is not None:
      params[bn] = {k: v[keep] for k, v in params[bn].items()}
      stats[bn] = {k: v[keep] for k, v in stats[bn].items()}
    for t in targets:
      params[t]["kernel"] = drop_inputs(params[t]["kernel"], keep)
    new_layers[i] = dataclasses.replace(layer, features=int(keep.sum()))
  new_vars = dict(variables, params=jax.tree_util.tree_map(jnp.asarray, params))
  if "batch_stats" in variables:
    new_vars["batch_stats"] = jax.tree_util.tree_map(jnp.asarray, stats)
  return tuple(new_layers), new_vars


def drop_inputs(kernel: np.ndarray, keep: np.ndarray) -> np.ndarray:
  """Keeps the input channels `keep` of a conv (HWIO) or of a dense after an NHWC flatten.

  The flatten index is (h * W + w) * C + c, so the dense rows are (HW, C) major-to-minor.
  """
  if kernel.ndim == 4:
    return kernel[:, :, keep, :]
  rows, out = kernel.shape
  return kernel.reshape(rows // keep.size, keep.size, out)[:, keep, :].reshape(-1, out)
