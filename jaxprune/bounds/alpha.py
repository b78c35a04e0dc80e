"""alpha-CROWN (Xu et al. 2021): CROWN with optimised lower slopes of unstable ReLUs.

Any slope alpha in [0, 1] gives a sound lower line alpha x for an unstable
ReLU, so the slopes are free parameters: projected Adam ascends the sum of
the output lower bounds over batch and specifications. As in alpha-CROWN,
every bounded node (the output and each pre-ReLU node) has its own slopes
for the ReLUs upstream of it, so the optimiser also tightens the
intermediate bounds insofar as that raises the output bound.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from jaxprune.bounds.crown import (ancestors, chunking, crown, crown_core, node_shapes,
                                   target_plan)
from jaxprune.bounds.ir import Net
from jaxprune.models.spec import INPUT

INTERMEDIATE = ("full", "shared", "fixed")
# Default cap on `alpha_memory`'s estimate: past it alpha_crown refuses to start.
MAX_BYTES = 8 << 30


class AlphaMemoryError(MemoryError):
  """alpha-CROWN's slopes would not fit: raised before anything is allocated."""


def _tighter(a, b):
  """Elementwise tighter of two sound (lower, upper, relu_bounds) results."""
  rb = {r: (jnp.maximum(a[2][r][0], b[2][r][0]), jnp.minimum(a[2][r][1], b[2][r][1]))
        for r in a[2]}
  return jnp.maximum(a[0], b[0]), jnp.minimum(a[1], b[1]), rb


def init_alphas(net: Net, relu_bounds: dict, given: dict, shapes: dict, batch: int,
                share_alphas: bool = False, intermediate: str = "full",
                chunk_size: Optional[int] = None, conv_mode: str = "patches",
                bound_upper: bool = True) -> dict:
  """CROWN's adaptive slopes (1 where u > -l) laid out per bounded node.

  {target: {relu: slopes}} for the output and for the input node of every ReLU
  not in `given`; the layouts are those of `crown_core`/`node_bounds`: a spec
  axis of 2 S (S without `bound_upper`) at the output, and at intermediate
  nodes (chunks, ., 2 * chunk) per neuron ("full") or 2 per node ("shared").
  `share_alphas` drops the batch axis to 1 (initialised with the batch mean).
  """
  adaptive = {r: (u > -l).astype(l.dtype) for r, (l, u) in relu_bounds.items()}
  if share_alphas:
    adaptive = {r: jnp.mean(v, axis=0, keepdims=True) for r, v in adaptive.items()}
  relus = [r.name for r in net.relu_nodes()]
  targets = [r.inputs[0] for r in net.relu_nodes() if r.name not in given and r.inputs[0] != INPUT]
  alphas = {}
  for t in targets + [net.output]:
    up = ancestors(net, t)
    if t == net.output:
      spec, lead = (1 + bound_upper) * math.prod(shapes[t]), ()
    elif intermediate == "shared":
      spec, lead = 2, ()
    else:
      c, k = chunking(shapes, t, batch, chunk_size, target_plan(net, t, shapes, conv_mode))
      spec, lead = 2 * c, (k,)
    alphas[t] = {r: jnp.broadcast_to(adaptive[r][:, None],
                                     lead + (adaptive[r].shape[0], spec) + adaptive[r].shape[1:])
                 for r in relus if r in up}
  return alphas


def alpha_memory(alphas) -> int:
  """Estimated bytes that optimising `alphas` (shapes suffice) holds live: the slopes, their
  gradient, Adam's two moments, and A-matrices for one slice (a chunk, or the output's
  batch) of the largest target, taken as twice that slice's slopes."""
  leaves = jax.tree.leaves(alphas)
  total = sum(math.prod(v.shape) * v.dtype.itemsize for v in leaves)
  per_target = [sum(math.prod(v.shape[1:]) * v.dtype.itemsize for v in jax.tree.leaves(t))
                for t in alphas.values()]
  return 4 * total + 2 * max(per_target, default=0)


def alpha_crown(net: Net, lower, upper, iterations: int = 20, lr: float = 0.1,
                lr_decay: float = 0.98, share_alphas: bool = False, intermediate: str = "full",
                chunk_size: Optional[int] = None, compare_ibp: bool = False,
                conv_mode: str = "patches", bound_upper: bool = True,
                relu_bounds: Optional[dict] = None, refine: str = "all",
                max_bytes: Optional[int] = MAX_BYTES):
  """Optimised CROWN bounds; never looser than CROWN's, elementwise.

  intermediate: "full" gives each neuron of each pre-ReLU node its own slopes
  (alpha-CROWN; memory grows as neurons x upstream neurons, fine for small
  nets only, gigabytes per input on CNN-7L), "shared" one set of slopes per
  node (per lower/upper side), and "fixed" keeps CROWN's intermediate bounds
  and optimises the output's slopes only (the cheap mode for large nets).
  The Adam step size decays by `lr_decay` per iteration (alpha-beta-CROWN's
  defaults: lr_alpha 0.1, alpha_lr_decay 0.98). `share_alphas` shares the
  slopes over the batch. `chunk_size`, `compare_ibp`, `conv_mode` and
  `bound_upper` are CROWN's (see `crown`); `relu_bounds` are used as given and
  never re-optimised (branch and bound). `refine` is CROWN's (see `crown`),
  for the starting CROWN bounds (hence all intermediate bounds when "fixed").
  `max_bytes`: `AlphaMemoryError` when `alpha_memory` estimates more (None: no cap);
  checked from shapes alone, before the slopes exist (4 CNN-7L inputs with
  "full" took 22.9 GB and were killed).

  The bounds are evaluated at the initial slopes and after each of the
  `iterations` projected Adam steps; the result is the elementwise tightest of
  CROWN's bounds and these `iterations + 1` evaluations, intermediate bounds
  included (each is sound for any slopes in [0, 1], hence so is their
  intersection). Only the output lower bounds are optimised; the upper bounds
  are CROWN's or tighter. Differentiable w.r.t. the network with the slopes
  held at their optimised values (not through the optimiser).
  """
  if intermediate not in INTERMEDIATE:
    raise ValueError(f"intermediate must be one of {INTERMEDIATE}, got {intermediate!r}")
  given = dict(relu_bounds or {})
  start = crown(net, lower, upper, given, chunk_size, compare_ibp, conv_mode, bound_upper, refine)
  if intermediate == "fixed":
    given = start[2]
  shapes = node_shapes(net, lower)
  make = functools.partial(init_alphas, net, given=given, shapes=shapes, batch=lower.shape[0],
                           share_alphas=share_alphas, intermediate=intermediate,
                           chunk_size=chunk_size, conv_mode=conv_mode, bound_upper=bound_upper)
  need = alpha_memory(jax.eval_shape(make, start[2]))
  if max_bytes is not None and need > max_bytes:
    raise AlphaMemoryError(
        f"alpha_crown(intermediate={intermediate!r}) needs about {need / 2**30:.1f} GiB for its "
        f"slopes (batch {lower.shape[0]}), over max_bytes={max_bytes / 2**30:.1f} GiB: use "
        f"intermediate='fixed' or 'shared', a smaller batch, or a larger max_bytes")
  # The slopes are optimised as constants of the network: gradients w.r.t. the
  # network flow through the bounds at the slopes used, not through Adam
  # (whose sqrt(v) at v = 0 would turn them into NaN).
  alphas = jax.lax.stop_gradient(make(start[2]))
  evaluate = functools.partial(crown_core, net, lower, upper, given, chunk_size, compare_ibp,
                               conv_mode, bound_upper, shared=intermediate == "shared")

  def loss(alphas):
    result = evaluate(alphas=alphas)
    return -jnp.sum(result[0]), result

  opt = optax.adam(optax.exponential_decay(lr, 1, lr_decay))

  def step(_, carry):
    alphas, state, best = carry
    grads, result = jax.grad(loss, has_aux=True)(alphas)
    updates, state = opt.update(jax.lax.stop_gradient(grads), state, alphas)
    alphas = jax.tree.map(lambda a: jnp.clip(a, 0.0, 1.0), optax.apply_updates(alphas, updates))
    return alphas, state, _tighter(best, result)

  # The last step's update is never evaluated: one more backward pass is
  # cheaper than compiling a separate evaluation.
  return jax.lax.fori_loop(0, iterations + 1, step, (alphas, opt.init(alphas), start))[2]
