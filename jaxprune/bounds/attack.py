"""PGD towards an unsafe output set, and the concrete check that makes a candidate a counterexample.

The unsafe set is a sample's misclassification (`margins`, `pgd`: training's
PGD accuracy) or a general union of polytopes (C, d) as VNNLIB writes them
(`violation`, `pgd_spec`, `check_spec`: the verifier). Everything here is in
pixel space: the attack moves inside the pixel box and `check_spec`
re-normalises and runs plain `bounds.forward`, so a counterexample is exactly
what the model computes on an input of the eps ball (complete verification
checks against the inward rounded box of `verify.boxes`). It lives with the
bounds, below training, because training evaluates PGD accuracy.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxprune.bounds.ir import Net, forward


def margins(net: Net, x, y, mean, std):
  """f_y(x) - f_j(x) for every class j (B, K); +inf at j = y."""
  logits = forward(net, (x - mean) / std)
  m = logits[:, y][:, None] - logits
  return jnp.where(jnp.arange(logits.shape[1]) == y, jnp.inf, m)


def violation(out, C, d):
  """How far outputs (B, n_out) are from an unsafe set, (B,): <= 0 exactly inside it.

  The unsafe set is the union over disjuncts k of {y : C[k] y <= d[k]} (C (K, R,
  n_out), d (K, R)); rows padded with d = +inf never count. The value is the
  min over k of the max over rows of C[k] y - d[k].
  """
  return jnp.min(jnp.max(jnp.einsum("kro,bo->bkr", C, out) - d, axis=2), axis=1)


def _descend(objective, lower, upper, key, restarts: int, steps: int, step_size: float):
  """Best (x, value) of `restarts` projected sign-gradient descents of objective over the box.

  objective: (R, *shape) -> (R,). Steps are `step_size` of the box width,
  decaying linearly; restart 0 starts at the box centre, the others uniformly
  at random.
  """
  shape = (restarts,) + lower.shape
  x = lower + (upper - lower) * jax.random.uniform(key, shape, lower.dtype)
  x = x.at[0].set((lower + upper) / 2)
  grad = jax.grad(lambda x: jnp.sum(objective(x)))
  where = lambda v: v.reshape((-1,) + (1,) * lower.ndim)

  def step(t, carry):
    x, best_x, best = carry
    value = objective(x)
    best_x = jnp.where(where(value < best), x, best_x)
    best = jnp.minimum(value, best)
    size = step_size * (1.0 - t / (steps + 1)) * (upper - lower)
    x = jnp.clip(x - size * jnp.sign(grad(x)), lower, upper)
    return x, best_x, best

  init = (x, x, jnp.full((restarts,), jnp.inf, lower.dtype))
  x, best_x, best = jax.lax.fori_loop(0, steps, step, init)
  value = objective(x)
  best_x = jnp.where(where(value < best), x, best_x)
  best = jnp.minimum(value, best)
  i = jnp.argmin(best)
  return best_x[i], best[i]


@functools.partial(jax.jit, static_argnames=("restarts", "steps"))
def pgd(net: Net, lower, upper, y, mean, std, key, restarts: int = 16, steps: int = 30,
        step_size: float = 0.25):
  """Best (x, min margin) of PGD on the min margin over the pixel box (one input's shape)."""
  objective = lambda x: jnp.min(margins(net, x, y, mean, std), axis=1)
  return _descend(objective, lower, upper, key, restarts, steps, step_size)


@functools.partial(jax.jit, static_argnames=("restarts", "steps"))
def pgd_spec(net: Net, lower, upper, C, d, mean, std, key, restarts: int = 16, steps: int = 30,
             step_size: float = 0.25):
  """Best (x, `violation`) of PGD towards the unsafe set (C, d) over the box (pixel space)."""
  objective = lambda x: violation(forward(net, (x - mean) / std), C, d)
  return _descend(objective, lower, upper, key, restarts, steps, step_size)


@jax.jit
def check_spec(net: Net, x, lower, upper, C, d, mean, std):
  """(B,) True where x (B, *shape, pixel space) lies in [lower, upper] and reaches the unsafe set."""
  axes = tuple(range(1, x.ndim))
  inside = jnp.all((x >= lower) & (x <= upper), axis=axes)
  return inside & (violation(forward(net, (x - mean) / std), C, d) <= 0)


@functools.partial(jax.jit, static_argnames=("restarts", "steps"))
def pgd_batch(net: Net, lower, upper, y, mean, std, key, restarts: int = 16, steps: int = 30,
              step_size: float = 0.25):
  """`pgd` on every sample of a batch, one key each: (x (B, *shape), min margin (B,)).

  lower, upper: per-sample pixel boxes (B, *shape); y: labels (B,).
  """
  one = lambda lo, hi, label, k: pgd(net, lo, hi, label, mean, std, k, restarts=restarts,
                                     steps=steps, step_size=step_size)
  return jax.vmap(one)(lower, upper, y, jax.random.split(key, y.shape[0]))
