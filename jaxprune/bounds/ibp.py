"""Interval bound propagation in centre/radius form (the paper, Sec. 3.3, Eq. 1)."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jaxprune.bounds.ir import Net, avgpool, linear
from jaxprune.models.spec import INPUT
from jaxprune.ops import conv2d


def _linear(node, x, kernel=None, bias: bool = True):
  """`ir.linear`, with convolutions through `conv2d` (same values, faster backward on CPU)."""
  if node.op != "conv":
    return linear(node, x, kernel, bias)
  y = conv2d(x, node.w if kernel is None else kernel, node.stride, node.padding)
  return y + node.b if bias and node.b is not None else y


def ibp(net: Net, lower, upper, relu_bounds: Optional[dict] = None):
  """Returns (lower, upper, relu_bounds) with relu_bounds[name] = (l, u) of each ReLU's input.

  mu' = W mu + b, r' = |W| r: two passes per linear layer, no matter the width.
  The given `relu_bounds` ({relu name: (l, u)}, e.g. tighter CROWN bounds) are
  intersected with the intervals reaching those ReLUs, and the result propagated.
  """
  given = relu_bounds or {}
  vals = {INPUT: ((upper + lower) / 2, (upper - lower) / 2)}
  out = {}
  for node in net.nodes:
    args = [vals[n] for n in node.inputs]
    c, r = args[0]
    if node.op in ("conv", "dense", "affine"):
      c, r = _linear(node, c), _linear(node, r, kernel=jnp.abs(node.w), bias=False)
    elif node.op == "relu":
      l, u = c - r, c + r
      if node.name in given:
        l, u = jnp.maximum(l, given[node.name][0]), jnp.minimum(u, given[node.name][1])
      out[node.name] = (l, u)
      l, u = jax.nn.relu(l), jax.nn.relu(u)
      c, r = (u + l) / 2, (u - l) / 2
    elif node.op == "flatten":
      c, r = c.reshape(c.shape[0], -1), r.reshape(r.shape[0], -1)
    elif node.op == "add":
      c, r = sum(a[0] for a in args), sum(a[1] for a in args)
    elif node.op == "avgpool":
      c, r = avgpool(node, c), avgpool(node, r)
    vals[node.name] = (c, r)
  c, r = vals[net.output]
  return c - r, c + r, out
