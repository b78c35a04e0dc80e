"""Branch and bound over ReLU splits with beta-CROWN bounds, for one margin at a time.

Domains live on the host in a heap ordered by lower bound, each holding its
splits and its optimised (alpha, beta) (warm starts for its children),
flattened over the ReLU neurons, and the neuron it splits next (chosen on
the device by the branching heuristic when it was bounded). A step pops the
`batch` worst domains, splits each, and bounds the 2 * batch children in one
jitted call of fixed shape (padded; sharded over the local devices), so
nothing recompiles after the first step. Children that are
proven (bound > tol) or infeasible are dropped; the others have their
bound-minimising input checked concretely. A domain without unstable unsplit
neurons is a linear program: solved exactly (`milp.minimum`), which makes the
search complete, on nets whose dense LP fits (`leaf_elements`; larger leaves
are left undecided: "unknown").
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
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxprune.bounds import beta as beta_lib
from jaxprune.bounds.crown import node_shapes
from jaxprune.bounds.ir import Net
from jaxprune.registry import lookup
from jaxprune.verify import milp

# beta-CROWN steps per child (warm-started from the parent's slopes and multipliers).
ITERATIONS = 10
# Host storage of a domain: splits in {-1, 0, 1}, and warm starts at half precision (any slope
# in [0, 1] and multiplier >= 0 is sound, so rounding them costs no soundness).
SPLIT_DTYPE, WARM_DTYPE, BETA_MAX = np.int8, jnp.float16, 6e4
MAX_MEMORY = 4 << 30  # bytes of queued domains
UNROLL_NEURONS = (1024, 32768)  # see `unrolls`
LEAF_ELEMENTS = 1 << 25  # float64 elements of a leaf's LP (`leaf_elements`): 256 MiB


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
  """Scores (D, *shape) per ReLU of each domain's neurons; higher splits first (jittable).

  `pick` chooses the neuron to split from the flat masked scores; FSB
  overrides it to re-score its best candidates by bounding their children.
  """

  def score(self, coeffs: dict, bounds: dict, key) -> dict:
    raise NotImplementedError

  def pick(self, scores, split_bound):
    """(D,) flat index of the neuron to split, -1 where none is left.

    scores: (D, N), -inf where a neuron cannot be split; split_bound(cand (D,
    k)) -> (D, k) the worse child's bound of splitting each candidate.
    """
    return jnp.where(jnp.isfinite(jnp.max(scores, axis=1)), jnp.argmax(scores, axis=1), -1)


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


class FSB(BaBSR):
  """Filtered smart branching (De Palma et al. 2021): BaBSR's top `k` candidates re-scored.

  Each candidate's two children are bounded once (the domain's optimised
  slopes and multipliers, no further steps; one fixed-shape batch of 2 D per
  candidate) and the candidate whose worse child is best wins: BaBSR's
  estimate only ranks the candidates, the bound decides.
  """

  k = 8

  def pick(self, scores, split_bound):
    best, cand = jax.lax.top_k(scores, min(self.k, scores.shape[1]))
    value = jnp.where(jnp.isfinite(best), split_bound(cand), -jnp.inf)
    chosen = jnp.take_along_axis(cand, jnp.argmax(value, axis=1)[:, None], axis=1)[:, 0]
    return jnp.where(jnp.isfinite(best[:, 0]), chosen, -1)


class Random(Heuristic):
  """Uniformly random among the unstable unsplit neurons (a baseline)."""

  def score(self, coeffs, bounds, key):
    keys = jax.random.split(key, len(bounds))
    return {r: jax.random.uniform(k, l.shape) for k, (r, (l, _)) in zip(keys, bounds.items())}


BRANCHING: dict[str, type] = {"babsr": BaBSR, "fsb": FSB, "random": Random}


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
                                             "lr_beta", "unroll"))
def bound_domains(net: Net, lower, upper, root: dict, splits, alphas, betas, key, layout: Layout,
                  heuristic: type = BaBSR, iterations: int = ITERATIONS, lr_alpha: float = 0.1,
                  lr_beta: float = 0.05, unroll: bool = False):
  """beta-CROWN bounds of D domains of a one-output net (the folded margin), flat in and out.

  splits: (D, N) `SPLIT_DTYPE`; alphas, betas: (D, N) `WARM_DTYPE`. Returns (lb
  (D,), alphas, betas (`WARM_DTYPE`), branch (D,) the flat neuron each domain
  splits next (-1: none left, a leaf), x (D, *in) the bound's minimiser).
  `unroll`: beta-CROWN's steps unrolled (see `beta.beta_crown`; `bab_row` decides).
  """
  dtype = lower.dtype
  per_spec = lambda flat: {r: v[:, None] for r, v in layout.unflatten(flat.astype(dtype)).items()}
  lb, al, be, aux = beta_lib.beta_crown(net, lower, upper, root,
                                        layout.unflatten(splits.astype(dtype)), per_spec(alphas),
                                        per_spec(betas), iterations, lr_alpha, lr_beta,
                                        unroll=unroll)
  flat = lambda t: layout.flatten({r: v[:, 0] for r, v in t.items()})
  al, be = flat(al).astype(WARM_DTYPE), jnp.minimum(flat(be), BETA_MAX).astype(WARM_DTYPE)
  h = heuristic()
  scores = layout.flatten(h.score(aux["coeffs"], aux["bounds"], key))
  unstable = layout.flatten({r: (l < 0) & (u > 0) for r, (l, u) in aux["bounds"].items()})
  scores = jnp.where(unstable & (splits == 0), scores, -jnp.inf)
  shapes = node_shapes(net, lower)
  rows = jnp.arange(splits.shape[0])
  twice = lambda v: per_spec(jnp.concatenate([v, v]))

  def split_bound(cand):
    def one(j):  # both children of every domain's candidate j: one batch of 2 D
      sp = jnp.concatenate([splits.at[rows, j].set(1), splits.at[rows, j].set(-1)])
      v = beta_lib.beta_bound(net, lower, upper, root, layout.unflatten(sp.astype(dtype)),
                              twice(al), twice(be), shapes)[0][:, 0]
      return jnp.minimum(v[:len(rows)], v[len(rows):])
    if unroll:  # as beta-CROWN's steps (a loop slows the convs)
      return jnp.stack([one(j) for j in cand.T], axis=1)
    return jax.lax.map(one, cand.T).T

  branch = h.pick(scores, split_bound).astype(jnp.int32)
  return lb[:, 0], al, be, branch, aux["x"][:, 0]


def initial_slopes(layout: Layout, root: dict) -> np.ndarray:
  """(1, N) CROWN's adaptive slopes (1 where u > -l) of the root bounds: the root's warm start."""
  return np.asarray(layout.flatten({r: (u > -l).astype(WARM_DTYPE) for r, (l, u) in root.items()}))


def unrolls(net: Net, layout: Layout) -> bool:
  """Whether to unroll beta-CROWN's steps: for conv nets of `UNROLL_NEURONS` ReLU neurons.

  Measured (benchmarks/RESULTS.md): unrolled, the small Fashion-MNIST and
  CIFAR CNNs bound 2.5-4x more domains/s; CNN-7L ran slower and compiled 4x longer.
  """
  lo, hi = UNROLL_NEURONS
  return lo <= layout.size < hi and any(n.op == "conv" for n in net.nodes)


def leaf_elements(net: Net, in_shape) -> int:
  """Float64 elements `milp.expand` and one leaf LP hold densely: every linear map as an
  (in, out) matrix (convs from an (in, in) basis) and every node's rows over the input."""
  shapes = node_shapes(net, jnp.zeros((1,) + tuple(in_shape), jnp.float32))
  n_in, total = math.prod(in_shape), 0
  for node in net.nodes:
    a, b = math.prod(shapes[node.inputs[0]]), math.prod(shapes[node.name])
    total += n_in * b + (a * b + a * a * (node.op in ("conv", "avgpool"))
                         if node.op in ("conv", "dense", "affine", "avgpool") else 0)
  return total


def _placement(width: int) -> Callable:
  """Puts (width, ...) host arrays on the local devices, sharded on their "data" axis
  (domains are independent), when there are several and they divide width."""
  devices = jax.local_devices()
  if len(devices) < 2 or width % len(devices):
    return jnp.asarray
  sharding = NamedSharding(Mesh(np.array(devices), ("data",)), PartitionSpec("data"))
  return lambda v: jax.device_put(v, sharding)


@dataclasses.dataclass(order=True)
class _Domain:
  lb: float
  order: int
  splits: np.ndarray = dataclasses.field(compare=False)
  alphas: np.ndarray = dataclasses.field(compare=False)
  betas: np.ndarray = dataclasses.field(compare=False)
  branch: int = dataclasses.field(compare=False)


@dataclasses.dataclass
class RowResult:
  status: str  # "verified" | "falsified" | "timeout" | "unknown"
  domains: int
  depth: int
  lower_bound: float
  counterexample: Optional[np.ndarray] = None  # normalised input space


def bab_row(net: Net, lower, upper, root: dict, check: Callable, deadline: float,
            tol: float = 0.0, batch: int = 8, iterations: int = ITERATIONS,
            max_domains: int = 100_000, branching: str = "babsr", lr_alpha: float = 0.1,
            lr_beta: float = 0.05, seed: int = 0, max_memory: int = MAX_MEMORY,
            max_leaf_elements: int = LEAF_ELEMENTS, shard: bool = True,
            unroll: Optional[bool] = None) -> RowResult:
  """Proves min f(x) > tol over the box for a net with one output (a folded margin), or refutes it.

  lower, upper: (1, *in) normalised box; root: {relu: (l, u)} (1, *shape)
  sound pre-activation bounds on the box; check(x (D, *in)) -> (D,) bool, True
  where x is a concrete counterexample of the sample's spec; `deadline` in
  `time.monotonic()` seconds. "unknown" once `max_domains` are bounded or the
  queue holds more than `max_memory` bytes, and for leaves whose LP would
  exceed `max_leaf_elements` (`leaf_elements`: large nets) or ties at 0.
  `shard` spreads each batch over the local devices (`_placement`). `unroll`
  (None: `unrolls(net, layout)`) unrolls beta-CROWN's steps.
  """
  heuristic = lookup(BRANCHING, branching, "branching heuristic")
  layout = Layout.of(net, lower.shape[1:])
  n, width = layout.size, 2 * batch
  per_domain = n * (np.dtype(SPLIT_DTYPE).itemsize + 2 * np.dtype(WARM_DTYPE).itemsize)
  key = jax.random.PRNGKey(seed)
  counter = itertools.count()
  alpha0 = initial_slopes(layout, root)
  unroll = unrolls(net, layout) if unroll is None else unroll
  run = functools.partial(bound_domains, net, lower, upper, root, layout=layout,
                          heuristic=heuristic, iterations=iterations, lr_alpha=lr_alpha,
                          lr_beta=lr_beta, unroll=unroll)
  place = _placement(width) if shard else jnp.asarray
  maps, leaf_ok, proven, depth, count, undecided = None, None, math.inf, 0, 0, False

  pad = lambda v: np.concatenate([v, np.repeat(v[:1], width - len(v), 0)])
  hits = lambda xs: np.asarray(check(jnp.asarray(pad(xs), jnp.float32)))[:len(xs)]

  def bound(splits, alphas, betas):
    nonlocal key, count
    key, sub = jax.random.split(key)
    out = run(*(place(pad(v)) for v in (splits, alphas, betas)), sub)
    count += len(splits)
    return [np.asarray(v)[:len(splits)] for v in out]

  def leaf(d):
    """Exact LP (float64) of a domain whose ReLUs are all stable or split; None if too large."""
    nonlocal maps, leaf_ok
    if leaf_ok is None:
      leaf_ok = leaf_elements(net, lower.shape[1:]) <= max_leaf_elements
    if not leaf_ok:
      return None
    maps = maps or milp.expand(net, lower.shape[1:])
    phases = {r: v.reshape(-1) for r, v in layout.unflatten(d.splits[None]).items()}
    return milp.minimum(net, lower, upper, [1.0], phases, maps)

  heap = []

  def consider(lbs, splits, alphas, betas, branch, xs):
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
                                   int(branch[i])))
    return None

  zeros = np.zeros((1, n), SPLIT_DTYPE)
  lbs, al, be, branch, xs = bound(zeros, alpha0, np.zeros((1, n), WARM_DTYPE))
  cex = consider(lbs, zeros, al, be, branch, xs)
  while cex is None and heap:
    if time.monotonic() > deadline:
      return RowResult("timeout", count, depth, min(proven, heap[0].lb))
    if count >= max_domains or len(heap) * per_domain > max_memory:
      return RowResult("unknown", count, depth, min(proven, heap[0].lb))
    parents = [heapq.heappop(heap) for _ in range(min(batch, len(heap)))]
    kids = []
    for d in parents:
      if d.branch < 0:
        sol = leaf(d)
        if sol is None:  # too large for the LP: left undecided
          undecided, proven = True, min(proven, d.lb)
        elif sol.value > tol:
          proven = min(proven, sol.value)
        elif hits(sol.x.reshape((1,) + lower.shape[1:]))[0]:
          cex = sol.x.reshape(lower.shape[1:]).astype(np.float32)
          break
        else:  # within the tolerance of 0: neither provable nor a float32 counterexample
          undecided, proven = True, min(proven, sol.value)
        continue
      for s in (1, -1):
        sp = d.splits.copy()
        sp[d.branch] = s
        kids.append((sp, d.alphas, d.betas))
    if cex is None and kids:  # at most 2 * batch: one call
      sp, al, be = (np.stack(v) for v in zip(*kids))
      lbs, al, be, branch, xs = bound(sp, al, be)
      cex = consider(lbs, sp, al, be, branch, xs)
  if cex is not None:
    return RowResult("falsified", count, depth, -math.inf, np.asarray(cex))
  return RowResult("unknown" if undecided else "verified", count, depth, proven)
