"""Branch and bound over the input box, for networks with few inputs (ACAS Xu, VNN-COMP `test`).

With a handful of inputs, halving the box shrinks every ReLU's interval at
once, which converges much faster than ReLU splits (alpha-beta-CROWN uses input
splits on ACAS Xu for the same reason). A domain is a sub-box; a step pops the
`batch` worst, bounds both halves along every input dimension in one jitted
call of fixed shape (2 * n * batch boxes, CROWN), keeps for each box the
dimension whose halves leave the least to prove (`split_all`: the bounds
decide, as in FSB), drops the proven halves and checks the centres of the
others as counterexamples.

The net here has R outputs (a disjunct's rows folded in, offsets subtracted):
the disjunct is impossible on a box where some row's lower bound is > tol.
"""
from __future__ import annotations

import heapq
import itertools
import math
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.bounds.crown import crown
from jaxprune.bounds.ir import Net
from jaxprune.verify.bab import RowResult

# Inputs up to which `verify` splits the input box instead of ReLUs by default.
MAX_DIMS = 16
# A box narrower than this fraction of the root box in every dimension is left undecided.
MIN_WIDTH = 2.0 ** -40


def box_value(net: Net, lower, upper):
  """(B,) max over the net's outputs of their CROWN lower bounds: > 0 proves the box."""
  lb, _, _ = crown(net, lower, upper, bound_upper=False)
  return jnp.max(lb, axis=1)


@jax.jit
def split_all(net: Net, lower, upper, parent, root_width):
  """Both halves of each box (P, *in) along every input dimension, bounded; the best kept.

  Returns (lower, upper (P, 2, *in), value (P, 2)) of the halves along the
  dimension that leaves the least to prove: the sum over both halves of their
  bounds' shortfall below 0 (a proven half counts 0). The worse half alone
  (FSB's rule) stalls on a disjunct of several rows, whose minimum sits where
  rows cross: halving there helps one half only. A half's bound is at least its
  parent's (`parent` (P,)): CROWN need not be monotone in the box, and the
  parent's bound holds on its halves. Where no dimension improves on the
  parent's shortfall, the widest relative to `root_width`, so that every dimension
  keeps shrinking. Dimensions too narrow to halve in float32 are never chosen.
  """
  p, shape = lower.shape[0], lower.shape[1:]
  n = math.prod(shape)
  lo, hi = lower.reshape(p, 1, n), upper.reshape(p, 1, n)
  mid = (lo + hi) / 2
  eye = jnp.eye(n, dtype=bool)[None]  # (1, dim, n)
  halves_lo = jnp.stack([jnp.broadcast_to(lo, (p, n, n)), jnp.where(eye, mid, lo)], axis=2)
  halves_hi = jnp.stack([jnp.where(eye, mid, hi), jnp.broadcast_to(hi, (p, n, n))], axis=2)
  value = box_value(net, halves_lo.reshape((-1,) + shape), halves_hi.reshape((-1,) + shape))
  value = jnp.maximum(value.reshape(p, n, 2), parent[:, None, None])  # the parent's holds too
  splittable = ((mid > lo) & (mid < hi))[:, 0]
  gain = jnp.where(splittable, jnp.sum(jnp.minimum(value, 0.0), axis=2), -jnp.inf)
  before = 2 * jnp.minimum(parent, 0.0)
  improves = jnp.max(gain, axis=1) > before + 1e-6 * (1.0 + jnp.abs(before))
  rel = jnp.where(splittable, (hi - lo)[:, 0] / root_width.reshape(1, n), -1.0)
  best = jnp.where(improves, jnp.argmax(gain, axis=1), jnp.argmax(rel, axis=1))
  take = lambda v: jnp.take_along_axis(v, best[:, None, None, None], axis=1)[:, 0]
  return (take(halves_lo).reshape((p, 2) + shape), take(halves_hi).reshape((p, 2) + shape),
          jnp.take_along_axis(value, best[:, None, None], axis=1)[:, 0])


def bab_box(net: Net, lower, upper, check: Callable, deadline: float, tol: float = 0.0,
            batch: int = 32, max_domains: int = 2_000_000) -> RowResult:
  """Proves that some output of `net` is > tol at every input of the box, or refutes it.

  lower, upper: (1, *in) float32 box; check(x (B, *in)) -> (B,) bool, True
  where x is a concrete counterexample. "unknown" after `max_domains` boxes or
  on a box narrower than `MIN_WIDTH` of the root in every dimension.
  """
  lower, upper = np.asarray(lower, np.float32), np.asarray(upper, np.float32)
  root_width = np.maximum(upper - lower, np.finfo(np.float32).tiny)[0]
  counter = itertools.count()
  value = float(box_value(net, jnp.asarray(lower), jnp.asarray(upper))[0])
  heap = [(value, next(counter), lower[0], upper[0], 0)] if value <= tol else []
  proven, count, depth, undecided = (value if value > tol else math.inf), 1, 0, False
  pad = lambda v, width=batch: np.concatenate([v, np.repeat(v[:1], width - len(v), 0)])
  while heap:
    if time.monotonic() > deadline:
      return RowResult("timeout", count, depth, min(proven, heap[0][0]))
    if count >= max_domains:
      return RowResult("unknown", count, depth, min(proven, heap[0][0]))
    parents = [heapq.heappop(heap) for _ in range(min(batch, len(heap)))]
    lo, hi, val = (np.asarray(v)[:len(parents)] for v in split_all(
        net, jnp.asarray(pad(np.stack([d[2] for d in parents]))),
        jnp.asarray(pad(np.stack([d[3] for d in parents]))),
        jnp.asarray(pad(np.array([d[0] for d in parents], np.float32))),
        jnp.asarray(root_width)))
    count += 2 * len(parents) * lo[0, 0].size
    centres = ((lo + hi) / 2).reshape((-1,) + lo.shape[2:])
    found = np.asarray(check(jnp.asarray(pad(centres, 2 * batch))))[:len(centres)]
    if found.any():
      return RowResult("falsified", count, depth, -math.inf, centres[np.argmax(found)])
    for i, d in enumerate(parents):
      for h in range(2):
        v = float(val[i, h])
        if v > tol:
          proven = min(proven, v)
        elif np.all((hi[i, h] - lo[i, h] <= MIN_WIDTH * root_width)
                    | ((lo[i, h] + hi[i, h]) / 2 <= lo[i, h])):  # nothing left to halve
          undecided, proven = True, min(proven, v)
        else:
          depth = max(depth, d[4] + 1)
          heapq.heappush(heap, (v, next(counter), lo[i, h], hi[i, h], d[4] + 1))
  return RowResult("unknown" if undecided else "verified", count, depth, proven)
