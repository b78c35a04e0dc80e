"""Branch and bound over ReLU splits with beta-CROWN bounds, for one margin at a time.

Domains live on the host in a heap ordered by lower bound, each holding its
splits, its optimised (alpha, beta) (warm starts for its children) and its
branching scores, all flattened over the ReLU neurons. A step pops the
`batch` worst domains, splits each on its best-scored unstable unsplit
neuron, and bounds the 2 * batch children in one jitted call of fixed shape
(padded), so nothing recompiles after the first step. Children that are
proven (bound > tol) or infeasible are dropped; the others have their
bound-minimising input checked concretely. A domain without unstable unsplit
neurons is a linear program: solved exactly (`milp.minimum`), which makes the
search complete.
"""
from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
import math
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.bounds import beta as beta_lib
from jaxprune.bounds.crown import node_shapes
from jaxprune.bounds.ir import Net
from jaxprune.registry import lookup
from jaxprune.verify import milp


@dataclasses.dataclass
class Result:
  """Outcome for one sample. lower_bound: of the min margin (proven when verified)."""

  status: str  # "verified" | "falsified" | "timeout" | "unknown" | "misclassified"
  seconds: float = 0.0
  domains: int = 0
  depth: int = 0
  lower_bound: float = math.nan
  counterexample: Optional[np.ndarray] = None


# --- branching heuristics --------------------------------------------------------------

class Heuristic:
  """Scores (D, *shape) per ReLU of each domain's neurons; higher splits first (jittable)."""

  def score(self, coeffs: dict, bounds: dict, key) -> dict:
    raise NotImplementedError


class BaBSR(Heuristic):
  """BaBSR-style (Bunel et al. 2020): the bound lost to the ReLU's upper relaxation.

  A negative coefficient a of an unstable ReLU's output pays a (-l u / (u - l))
  for the triangle's intercept, which a split removes; |a| min(u, -l) (the
  lower line's gap) breaks ties among neurons with positive coefficients.
  """

  def score(self, coeffs, bounds, key):
    out = {}
    for r, (l, u) in bounds.items():
      a = coeffs[r][:, 0]
      den = jnp.where(u - l > 0, u - l, 1.0)
      intercept = jnp.maximum(-l * u / den, 0.0)
      out[r] = jnp.maximum(-a, 0.0) * intercept + 1e-3 * jnp.abs(a) * jnp.maximum(
          jnp.minimum(u, -l), 0.0)
    return out


class Random(Heuristic):
  """Uniformly random among the unstable unsplit neurons (a baseline)."""

  def score(self, coeffs, bounds, key):
    keys = jax.random.split(key, len(bounds))
    return {r: jax.random.uniform(k, l.shape) for k, (r, (l, _)) in zip(keys, bounds.items())}


BRANCHING: dict[str, type] = {"babsr": BaBSR, "random": Random}


# --- flattening over the ReLU neurons --------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Layout:
  """Where each ReLU's neurons sit in the flat (D, N) host arrays."""

  names: tuple[str, ...]
  shapes: tuple[tuple[int, ...], ...]

  @staticmethod
  def of(net: Net, in_shape) -> "Layout":
    shapes = node_shapes(net, jnp.zeros((1,) + tuple(in_shape), jnp.float32))
    relus = net.relu_nodes()
    return Layout(tuple(r.name for r in relus), tuple(shapes[r.name] for r in relus))

  @property
  def size(self) -> int:
    return sum(math.prod(s) for s in self.shapes)

  def flatten(self, tree: dict):
    return jnp.concatenate([tree[n].reshape(tree[n].shape[0], -1) for n in self.names], axis=1)

  def unflatten(self, flat) -> dict:
    out, i = {}, 0
    for n, s in zip(self.names, self.shapes):
      k = math.prod(s)
      out[n] = flat[:, i:i + k].reshape((flat.shape[0],) + s)
      i += k
    return out


@functools.partial(jax.jit, static_argnames=("layout", "heuristic", "iterations", "lr_alpha",
                                             "lr_beta"))
def bound_domains(net: Net, lower, upper, root: dict, splits, alphas, betas, key, layout: Layout,
                  heuristic: type = BaBSR, iterations: int = 10, lr_alpha: float = 0.1,
                  lr_beta: float = 0.05):
  """beta-CROWN bounds of D domains of a one-output net (the folded margin), flat in and out.

  splits, alphas, betas: (D, N). Returns (lb (D,), alphas, betas, scores (D, N)
  with -inf where a neuron is stable or split, x (D, *in) the bound's minimiser).
  """
  sp = layout.unflatten(splits)
  al = {r: v[:, None] for r, v in layout.unflatten(alphas).items()}
  be = {r: v[:, None] for r, v in layout.unflatten(betas).items()}
  lb, al, be, aux = beta_lib.beta_crown(net, lower, upper, root, sp, al, be, iterations,
                                        lr_alpha, lr_beta)
  scores = layout.flatten(heuristic().score(aux["coeffs"], aux["bounds"], key))
  unstable = layout.flatten({r: (l < 0) & (u > 0) for r, (l, u) in aux["bounds"].items()})
  scores = jnp.where(unstable & (splits == 0), scores, -jnp.inf)
  flat = lambda t: layout.flatten({r: v[:, 0] for r, v in t.items()})
  return lb[:, 0], flat(al), flat(be), scores, aux["x"][:, 0]


@dataclasses.dataclass(order=True)
class _Domain:
  lb: float
  order: int
  splits: np.ndarray = dataclasses.field(compare=False)
  alphas: np.ndarray = dataclasses.field(compare=False)
  betas: np.ndarray = dataclasses.field(compare=False)
  scores: np.ndarray = dataclasses.field(compare=False)


@dataclasses.dataclass
class RowResult:
  status: str  # "verified" | "falsified" | "timeout" | "unknown"
  domains: int
  depth: int
  lower_bound: float
  counterexample: Optional[np.ndarray] = None  # normalised input space


def bab_row(net: Net, lower, upper, root: dict, check: Callable, deadline: float,
            tol: float = 0.0, batch: int = 8, iterations: int = 10, max_domains: int = 100_000,
            branching: str = "babsr", lr_alpha: float = 0.1, lr_beta: float = 0.05,
            seed: int = 0) -> RowResult:
  """Proves min f(x) > tol over the box for a net with one output (a folded margin), or refutes it.

  lower, upper: (1, *in) normalised box; root: {relu: (l, u)} (1, *shape)
  sound pre-activation bounds on the box; check(x (D, *in)) -> (D,) bool, True
  where x is a concrete counterexample of the sample's spec; `deadline` in
  `time.monotonic()` seconds.
  """
  heuristic = lookup(BRANCHING, branching, "branching heuristic")
  layout = Layout.of(net, lower.shape[1:])
  n, width = layout.size, 2 * batch
  key = jax.random.PRNGKey(seed)
  counter = itertools.count()
  alpha0 = np.asarray(layout.flatten({r: (u > -l).astype(l.dtype) for r, (l, u) in root.items()}))
  run = functools.partial(bound_domains, net, lower, upper, root, layout=layout,
                          heuristic=heuristic, iterations=iterations, lr_alpha=lr_alpha,
                          lr_beta=lr_beta)
  maps, proven, depth, count, undecided = None, math.inf, 0, 0, False

  pad = lambda v: np.concatenate([v, np.repeat(v[:1], width - len(v), 0)])
  hits = lambda xs: np.asarray(check(jnp.asarray(pad(xs), jnp.float32)))[:len(xs)]

  def bound(splits, alphas, betas):
    nonlocal key, count
    key, sub = jax.random.split(key)
    out = run(pad(splits), pad(alphas), pad(betas), sub)
    count += len(splits)
    return [np.asarray(v)[:len(splits)] for v in out]

  def leaf(d):
    """Exact LP (float64) of a domain whose ReLUs are all stable or split."""
    nonlocal maps
    maps = maps or milp.expand(net, lower.shape[1:])
    phases = {r: v.reshape(-1) for r, v in layout.unflatten(d.splits[None]).items()}
    return milp.minimum(net, lower, upper, [1.0], phases, maps)

  heap = []

  def consider(lbs, splits, alphas, betas, scores, xs):
    """Drops proven children, returns a counterexample if one is found, pushes the rest."""
    nonlocal proven, depth
    depth = max(depth, int(np.max(np.count_nonzero(splits, axis=1))))
    keep = ~(lbs > tol)
    proven = min([proven] + [float(v) for v in lbs[~keep]])
    if not keep.any():
      return None
    found = hits(xs)
    for i in np.flatnonzero(keep):
      if found[i]:
        return xs[i]
      heapq.heappush(heap, _Domain(float(lbs[i]), next(counter), splits[i], alphas[i], betas[i],
                                   scores[i]))
    return None

  zeros = np.zeros((1, n), np.float32)
  lbs, al, be, scores, xs = bound(zeros, alpha0, zeros)
  cex = consider(lbs, zeros, al, be, scores, xs)
  while cex is None and heap:
    if time.monotonic() > deadline:
      return RowResult("timeout", count, depth, min(proven, heap[0].lb))
    if count >= max_domains:
      return RowResult("unknown", count, depth, min(proven, heap[0].lb))
    parents = [heapq.heappop(heap) for _ in range(min(batch, len(heap)))]
    kids = []
    for d in parents:
      j = int(np.argmax(d.scores))
      if not np.isfinite(d.scores[j]):
        sol = leaf(d)
        if sol.value > tol:
          proven = min(proven, sol.value)
        elif hits(sol.x.reshape((1,) + lower.shape[1:]))[0]:
          cex = sol.x.reshape(lower.shape[1:]).astype(np.float32)
          break
        else:  # within the tolerance of 0: neither provable nor a float32 counterexample
          undecided, proven = True, min(proven, sol.value)
        continue
      for s in (1, -1):
        sp = d.splits.copy()
        sp[j] = s
        kids.append((sp, d.alphas, d.betas))
    if cex is None and kids:  # at most 2 * batch: one call
      sp, al, be = (np.stack(v) for v in zip(*kids))
      lbs, al, be, scores, xs = bound(sp, al, be)
      cex = consider(lbs, sp, al, be, scores, xs)
  if cex is not None:
    return RowResult("falsified", count, depth, -math.inf, np.asarray(cex))
  return RowResult("unknown" if undecided else "verified", count, depth, proven)
