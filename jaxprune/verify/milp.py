"""Exact minimum of a margin over the input box by mixed-integer programming (HiGHS).

The oracle for tests and benchmarks, and the exact solver of branch-and-bound
leaves (every ReLU's phase fixed: a linear program). Tiny nets only: every
node is expanded to a dense float64 matrix (convs through their one-hot
responses, exact in float32 since each output reads one weight), so the
encoding is independent of the bound engine under test. Pre-activation
bounds for big-M come from float64 interval arithmetic over the encoding's
own variables (loose bounds only slow the solver; they never cut a solution).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax.numpy as jnp
import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from jaxprune.bounds.crown import node_shapes
from jaxprune.bounds.ir import Net, avgpool, linear
from jaxprune.models.spec import INPUT


@dataclasses.dataclass
class Solution:
  """value: min of c^T f(x) (+inf when infeasible), exact up to HiGHS's gaps and feasibility
  tolerances (about 1e-6 absolute); x: a minimiser, flattened."""

  value: float
  x: Optional[np.ndarray]
  status: int


def expand(net: Net, in_shape: tuple[int, ...]) -> list:
  """[(node, M, b)]: each linear node as y = x_flat @ M + b in float64 (others with M None)."""
  shapes = node_shapes(net, jnp.zeros((1,) + tuple(in_shape), jnp.float32))
  maps = []
  for node in net.nodes:
    M = b = None
    if node.op in ("conv", "dense", "affine", "avgpool"):
      s_in = shapes[node.inputs[0]]
      n = math.prod(s_in)
      if node.op == "dense":
        if np.ndim(node.w) != 2:
          raise ValueError("milp: per-example (3-D) dense kernels are not supported")
        M = np.asarray(node.w, np.float64)
      elif node.op == "affine":
        M = np.diag(np.broadcast_to(np.asarray(node.w, np.float64), s_in).reshape(-1))
      else:
        basis = jnp.eye(n, dtype=jnp.float32).reshape((n,) + s_in)
        if node.op == "conv":
          M = np.asarray(linear(node, basis, bias=False), np.float64).reshape(n, -1)
        else:  # avgpool: k*k * response is an integer count
          k2 = node.kernel * node.kernel
          M = np.rint(np.asarray(avgpool(node, basis), np.float64).reshape(n, -1) * k2) / k2
      out = M.shape[1]
      b = np.zeros(out) if node.b is None else np.broadcast_to(
          np.asarray(node.b, np.float64), shapes[node.name]).reshape(-1)
    maps.append((node, M, b))
  return maps


class _Program:
  """Variables [x, (y, d) per unstable ReLU] and constraints rows lo <= A v <= hi."""

  def __init__(self, lower, upper):
    self.lo, self.hi = list(lower), list(upper)
    self.integer = [0] * len(self.lo)
    self.rows, self.rlo, self.rhi = [], [], []

  def add_vars(self, lo, hi, integer):
    start = len(self.lo)
    self.lo += list(lo)
    self.hi += list(hi)
    self.integer += [int(integer)] * len(lo)
    return start

  def pad(self, E):
    return np.pad(E, ((0, 0), (0, len(self.lo) - E.shape[1])))

  def interval(self, E, e):
    E = self.pad(E)
    pos, neg = np.maximum(E, 0), np.minimum(E, 0)
    lo, hi = np.array(self.lo), np.array(self.hi)
    return e + pos @ lo + neg @ hi, e + pos @ hi + neg @ lo

  def constrain(self, E, lo, hi):
    for row, a, b in zip(self.pad(E), lo, hi):
      self.rows.append(row)
      self.rlo.append(a)
      self.rhi.append(b)


def minimum(net: Net, lower, upper, c, phases: Optional[dict] = None, maps=None,
            time_limit: Optional[float] = None, d=None) -> Solution:
  """min of c . f(x) over lower <= x <= upper (one input, its own shape or with a batch axis of 1).

  c of shape (R, n_out) with offsets d (R,) (default 0): min of max_r c_r . f(x)
  - d_r, which is <= 0 exactly where some input satisfies C f(x) <= d (a
  VNNLIB disjunct is reachable).

  phases: {relu name: flat array in {-1, 0, 1}} fixes ReLU phases (z >= 0 or
  z <= 0 added as constraints); with every unstable ReLU fixed the program
  is an LP. `maps` is `expand`'s result, reusable across calls.
  """
  shape = np.shape(lower)
  if maps is None:
    maps = expand(net, shape[1:] if len(shape) > 1 and shape[0] == 1 else shape)
  lower = np.asarray(lower, np.float64).reshape(-1)
  upper = np.asarray(upper, np.float64).reshape(-1)
  phases = phases or {}
  prog = _Program(lower, upper)
  n0 = len(lower)
  vals = {INPUT: (np.eye(n0), np.zeros(n0))}
  for node, M, b in maps:
    args = [vals[n] for n in node.inputs]
    E, e = args[0]
    if M is not None:
      E, e = M.T @ prog.pad(E), M.T @ e + b
    elif node.op == "add":
      width = len(prog.lo)
      E = sum(np.pad(a[0], ((0, 0), (0, width - a[0].shape[1]))) for a in args)
      e = sum(a[1] for a in args)
    elif node.op == "relu":
      E, e = _relu(prog, E, e, np.asarray(phases.get(node.name, np.zeros(len(e))), np.int64))
    elif node.op != "flatten":
      raise ValueError(f"milp: no encoding for op {node.op!r}")
    vals[node.name] = (E, e)
  E, e = vals[net.output]
  C = np.asarray(c, np.float64)
  C = C.reshape(1, -1) if C.ndim < 2 else C
  off = np.zeros(len(C)) if d is None else np.asarray(d, np.float64).reshape(-1)
  if len(C) == 1:
    obj, const = prog.pad(C @ E)[0], float(C[0] @ e - off[0])
  else:  # min t subject to t >= c_r . f(x) - d_r
    t_lo, t_hi = prog.interval(C @ E, C @ e - off)
    t = prog.add_vars([np.max(t_lo)], [np.max(t_hi)], False)
    cut = prog.pad(C @ E)
    cut[:, t] = -1.0
    prog.constrain(cut, np.full(len(C), -np.inf), off - C @ e)
    obj, const = np.eye(len(prog.lo))[t], 0.0
  rows = [np.pad(r, (0, len(prog.lo) - len(r))) for r in prog.rows]
  cons = [LinearConstraint(np.array(rows), prog.rlo, prog.rhi)] if rows else []
  options = {"mip_rel_gap": 1e-9}
  if time_limit is not None:
    options["time_limit"] = time_limit
  solve = lambda **extra: milp(obj, constraints=cons, integrality=np.array(prog.integer),
                              bounds=Bounds(np.array(prog.lo), np.array(prog.hi)),
                              options={**options, **extra})
  res = solve()
  if res.status == 4:  # HiGHS's occasional numerical "Solve error": once more without presolve
    res = solve(presolve=False)
  if res.status == 2:
    return Solution(math.inf, None, res.status)
  if res.x is None:
    raise RuntimeError(f"milp: HiGHS returned status {res.status}: {res.message}")
  return Solution(float(res.fun) + const, res.x[:n0], res.status)


def _relu(prog: _Program, E, e, phase):
  """y = relu(z), z = E v + e: exact for stable or fixed neurons, big-M with a binary otherwise."""
  l, u = prog.interval(E, e)
  margin = 1e-9 * (1.0 + np.abs(l) + np.abs(u))
  l, u = l - margin, u + margin
  active = (phase > 0) | ((phase == 0) & (l >= 0))
  inactive = (phase < 0) | ((phase == 0) & (u <= 0))
  free = ~active & ~inactive
  Ep = prog.pad(E)
  # Fixed phases: z >= 0 or z <= 0 as rows.
  fa, fi = (phase > 0) & (l < 0), (phase < 0) & (u > 0)
  if fa.any():
    prog.constrain(Ep[fa], -e[fa], np.full(fa.sum(), np.inf))
  if fi.any():
    prog.constrain(Ep[fi], np.full(fi.sum(), -np.inf), -e[fi])
  idx = np.flatnonzero(free)
  k = len(idx)
  ys = prog.add_vars(np.zeros(k), np.maximum(u[idx], 0), False)
  ds = prog.add_vars(np.zeros(k), np.ones(k), True)
  width = len(prog.lo)
  Ep = prog.pad(E)
  Y = np.zeros((k, width))
  Y[np.arange(k), ys + np.arange(k)] = 1.0
  D = np.zeros((k, width))
  D[np.arange(k), ds + np.arange(k)] = 1.0
  z = Ep[idx]
  if k:
    prog.constrain(Y - z, e[idx], np.full(k, np.inf))  # y >= z
    # y <= z - l (1 - d)
    prog.constrain(Y - z - l[idx, None] * D, np.full(k, -np.inf), e[idx] - l[idx])
    prog.constrain(Y - u[idx, None] * D, np.full(k, -np.inf), np.zeros(k))  # y <= u d
  out = np.where(active[:, None], Ep, 0.0)
  out[idx] = Y
  return out, np.where(active, e, 0.0)
