"""A declarative layer graph that defines every model once.

The same `Layer` tuple builds the flax module (`SpecNet`) and the bound IR
(`jaxprune.bounds.from_model`), so bounding never has to interpret a jaxpr and
the two can never disagree about the architecture.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxprune.ops import BN_EPS, conv_padding, flax_conv

OPS = ("conv", "dense", "bn", "relu", "flatten", "add", "avgpool")
INPUT = "input"


@dataclasses.dataclass(frozen=True)
class Layer:
  """One node. `inputs` defaults to the previous node (or the network input)."""

  op: str
  name: str
  inputs: tuple[str, ...] = ()
  features: int = 0
  kernel: int = 0
  stride: int = 1
  padding: int = 0
  use_bias: bool = True

  def __post_init__(self):
    if self.op not in OPS:
      raise ValueError(f"unknown layer op {self.op!r}; expected one of {OPS}")


def resolve_inputs(layers: Sequence[Layer]) -> list[tuple[str, ...]]:
  """Explicit input names of every layer (implicit chaining made explicit)."""
  prev, out = INPUT, []
  for layer in layers:
    out.append(layer.inputs or (prev,))
    prev = layer.name
  return out


class BatchNorm(nn.Module):
  """BatchNorm that reports the batch statistics it used.

  Certified training folds BN with the *clean batch's* statistics before
  bounding (as auto_LiRPA does); sowing them here lets the train step reuse
  the clean forward pass instead of recomputing it. Running statistics use
  PyTorch's convention (momentum 0.1 on the new batch, biased variance).
  """

  momentum: float = 0.9
  epsilon: float = BN_EPS

  @nn.compact
  def __call__(self, x, train: bool):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,))
    ra_var = self.variable("batch_stats", "var", jnp.ones, (c,))
    if train:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x, axes)
      var = jnp.mean(jnp.square(x - mean), axes)
      self.sow("intermediates", "mean", mean, reduce_fn=lambda _, b: b, init_fn=lambda: None)
      self.sow("intermediates", "var", var, reduce_fn=lambda _, b: b, init_fn=lambda: None)
      if not self.is_initializing():
        m = self.momentum
        ra_mean.value = m * ra_mean.value + (1 - m) * jax.lax.stop_gradient(mean)
        ra_var.value = m * ra_var.value + (1 - m) * jax.lax.stop_gradient(var)
    else:
      mean, var = ra_mean.value, ra_var.value
    return (x - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias


class SpecNet(nn.Module):
  """Evaluates a `Layer` graph on NHWC inputs; the last layer is the output."""

  layers: tuple[Layer, ...]
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    values = {INPUT: x}
    for layer, ins in zip(self.layers, resolve_inputs(self.layers)):
      args = [values[n] for n in ins]
      h = args[0]
      if layer.op == "conv":
        h = nn.Conv(layer.features, (layer.kernel, layer.kernel), strides=layer.stride,
                    padding=conv_padding(layer.padding), use_bias=layer.use_bias,
                    conv_general_dilated=flax_conv, name=layer.name)(h)
      elif layer.op == "dense":
        h = nn.Dense(layer.features, use_bias=layer.use_bias, name=layer.name)(h)
      elif layer.op == "bn":
        h = BatchNorm(name=layer.name)(h, train)
      elif layer.op == "relu":
        h = nn.relu(h)
      elif layer.op == "flatten":
        h = h.reshape(h.shape[0], -1)
      elif layer.op == "add":
        h = sum(args[1:], args[0])
      elif layer.op == "avgpool":
        k = layer.kernel
        h = nn.avg_pool(h, (k, k), strides=(k, k))
      values[layer.name] = h
    return values[self.layers[-1].name]
