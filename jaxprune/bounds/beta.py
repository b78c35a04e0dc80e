"""beta-CROWN (Wang et al. 2021): CROWN bounds of a split domain, split constraints by duality.

A domain fixes the phase of some ReLUs: s_j = +1 (pre-activation z_j >= 0),
-1 (z_j <= 0), 0 (free). Split neurons get clamped bounds (l = max(l, 0) or
u = min(u, 0)), which makes their relaxation exact, and the constraint
s_j z_j >= 0 enters the bound as a Lagrangian term: on the domain,
g(x) >= g(x) - beta_j s_j z_j for any beta_j >= 0, so the coefficient of z_j
gets -beta_j s_j. Any (alpha, beta) in [0, 1] x [0, inf) gives a sound lower
bound; projected Adam ascends it. Intermediate bounds stay fixed (as inside
alpha-beta-CROWN's branch and bound): only the output pass is re-run.
"""
from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from jaxprune.bounds.crown import backward_bound, node_shapes
from jaxprune.bounds.ir import Net
from jaxprune.models.spec import INPUT


def clamp_bounds(bounds: dict, splits: dict) -> dict:
  """Bounds with split neurons clamped: active l = max(l, 0), inactive u = min(u, 0)."""
  out = {}
  for r, (l, u) in bounds.items():
    s = splits.get(r)
    if s is not None:
      l, u = jnp.where(s > 0, jnp.maximum(l, 0.0), l), jnp.where(s < 0, jnp.minimum(u, 0.0), u)
    out[r] = (l, u)
  return out


def infeasible(bounds: dict):
  """(B,) True where some neuron has l > u: the domain is empty (proven)."""
  flags = [jnp.any((l > u).reshape(l.shape[0], -1), axis=1) for l, u in bounds.values()]
  return jnp.any(jnp.stack(flags), axis=0)


def beta_bound(net: Net, lower, upper, bounds: dict, splits: dict, alphas: Optional[dict] = None,
               betas: Optional[dict] = None, shapes: Optional[dict] = None):
  """Lower bounds (B, S) of every output of `net` over the split domains, and what branching needs.

  bounds: {relu: (l, u)} fixed pre-activation bounds, (B or 1, *shape);
  splits: {relu: s} in {-1, 0, 1}, (B, *shape); alphas, betas: {relu: (B, S or 1, *shape)}
  lower slopes and multipliers (betas >= 0, used only where s != 0).
  Returns (lb, aux) with aux = {"bounds": the clamped bounds, "infeasible": (B,),
  "coeffs": {relu: coefficients (B, S, *shape) of the ReLU's output}, "x": the
  input (B, S, *in) minimising the final linear bound}.
  """
  shapes = shapes or node_shapes(net, lower)
  clamped = clamp_bounds(bounds, splits)
  batch = max(v.shape[0] for v in splits.values()) if splits else lower.shape[0]
  clamped = {r: (jnp.broadcast_to(l, (batch,) + l.shape[1:]),
                 jnp.broadcast_to(u, (batch,) + u.shape[1:])) for r, (l, u) in clamped.items()}
  pre = {}  # pre-activation node -> ReLUs reading it
  for relu in net.relu_nodes():
    pre.setdefault(relu.inputs[0], []).append(relu.name)
  relus = {r.name for r in net.relu_nodes()}
  seen = {}

  def hook(name, a):
    # Traced values read back below, within the same trace.
    if name in relus:
      seen[name] = a
    for r in pre.get(name, ()):
      if betas is not None and r in betas and r in splits:
        a = a - betas[r] * splits[r][:, None].astype(a.dtype)
    if name == INPUT:
      seen[INPUT] = a
    return a

  out_shape = shapes[net.output]
  s = math.prod(out_shape)
  e = jnp.eye(s, dtype=lower.dtype).reshape((s,) + out_shape)
  a = jnp.broadcast_to(e[None], (batch,) + e.shape)
  lo = jnp.broadcast_to(lower, (batch,) + lower.shape[1:])
  up = jnp.broadcast_to(upper, (batch,) + upper.shape[1:])
  lb = backward_bound(net, net.output, a, lo, up, clamped, shapes, alphas, coeff_hook=hook)
  x = jnp.where(seen[INPUT] > 0, lo[:, None], up[:, None])
  dead = infeasible(clamped)
  lb = jnp.where(dead[:, None], jnp.inf, lb)
  coeffs = {r: v for r, v in seen.items() if r in relus}
  return lb, {"bounds": clamped, "infeasible": dead, "coeffs": coeffs, "x": x}


def beta_crown(net: Net, lower, upper, bounds: dict, splits: dict, alphas: dict, betas: dict,
               iterations: int = 20, lr_alpha: float = 0.1, lr_beta: float = 0.05,
               lr_decay: float = 0.98, unroll: bool = False):
  """`beta_bound` maximised over alphas in [0, 1] and betas >= 0 by projected Adam.

  alphas, betas: {relu: (B, S, *shape)} starting points (e.g. the parent
  domain's). Every evaluated bound is sound, so the result keeps, per (domain,
  spec), the best of the `iterations + 1` evaluations and its parameters.
  Returns (lb, alphas, betas, aux) with `aux` of the best evaluation (see `beta_bound`).
  `unroll` unrolls the steps: inside XLA:CPU's while loop the conv transposes'
  kernels are loop parameters, not constants, and run a several times slower
  conv (benchmarks/RESULTS.md); unrolled, compilation takes longer.
  """
  shapes = node_shapes(net, lower)

  def evaluate(params):
    return beta_bound(net, lower, upper, bounds, splits, params[0], params[1], shapes)

  def loss(params):
    lb, aux = evaluate(params)
    return -jnp.sum(jnp.where(jnp.isfinite(lb), lb, 0.0)), (lb, aux)

  schedule = lambda lr: optax.adam(optax.exponential_decay(lr, 1, lr_decay))
  opts = (schedule(lr_alpha), schedule(lr_beta))

  def keep(better, new, old):
    return jax.tree.map(lambda n, o: jnp.where(better.reshape(better.shape + (1,) * (n.ndim - 2)),
                                               n, o), new, old)

  def step(_, carry):
    params, states, best, best_params = carry
    grads, (lb, _) = jax.grad(loss, has_aux=True)(params)
    better = lb > best
    best_params = keep(better, params, best_params)
    best = jnp.maximum(best, lb)
    new, states2 = [], []
    for p, g, o, st in zip(params, grads, opts, states):
      upd, st = o.update(g, st, p)
      new.append(optax.apply_updates(p, upd))
      states2.append(st)
    new = (jax.tree.map(lambda v: jnp.clip(v, 0.0, 1.0), new[0]),
           jax.tree.map(lambda v: jnp.maximum(v, 0.0), new[1]))
    return new, tuple(states2), best, best_params

  params = (alphas, betas)
  states = tuple(o.init(p) for o, p in zip(opts, params))
  batch = next(iter(splits.values())).shape[0] if splits else lower.shape[0]
  start = jnp.full((batch, math.prod(shapes[net.output])), -jnp.inf, lower.dtype)
  carry = jax.lax.fori_loop(0, iterations + 1, step, (params, states, start, params),
                            unroll=unroll)
  lb, aux = evaluate(carry[3])
  return jnp.maximum(lb, carry[2]), carry[3][0], carry[3][1], aux
