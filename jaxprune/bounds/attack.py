"""PGD on the margins, and the concrete check that makes a candidate a counterexample.

Everything here is in pixel space: the attack moves inside the pixel box and
`check` re-normalises and runs plain `bounds.forward`, so a counterexample is
exactly what the model computes on an input of the eps ball (complete
verification checks against the inward rounded box of `verify.boxes`). It
lives with the bounds, below training, because training evaluates PGD accuracy.
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


@functools.partial(jax.jit, static_argnames=("restarts", "steps"))
def pgd(net: Net, lower, upper, y, mean, std, key, restarts: int = 16, steps: int = 30,
        step_size: float = 0.25):
  """Best (x, min margin) over `restarts` projected sign-gradient descents on the min margin.

  lower, upper: the pixel box (shape of one input); the steps are `step_size`
  of the box width, decaying linearly; restart 0 starts at the box centre,
  the others uniformly at random.
  """
  shape = (restarts,) + lower.shape
  x = lower + (upper - lower) * jax.random.uniform(key, shape, lower.dtype)
  x = x.at[0].set((lower + upper) / 2)
  objective = lambda x: jnp.min(margins(net, x, y, mean, std), axis=1)
  grad = jax.grad(lambda x: jnp.sum(objective(x)))

  def step(t, carry):
    x, best_x, best = carry
    value = objective(x)
    better = value < best
    best_x = jnp.where(better.reshape((-1,) + (1,) * lower.ndim), x, best_x)
    best = jnp.minimum(value, best)
    size = step_size * (1.0 - t / (steps + 1)) * (upper - lower)
    x = jnp.clip(x - size * jnp.sign(grad(x)), lower, upper)
    return x, best_x, best

  init = (x, x, jnp.full((restarts,), jnp.inf, lower.dtype))
  x, best_x, best = jax.lax.fori_loop(0, steps, step, init)
  value = objective(x)
  best_x = jnp.where((value < best).reshape((-1,) + (1,) * lower.ndim), x, best_x)
  best = jnp.minimum(value, best)
  i = jnp.argmin(best)
  return best_x[i], best[i]


@jax.jit
def check(net: Net, x, lower, upper, y, mean, std):
  """(B,) True where x (B, *shape, pixel space) lies in [lower, upper] and some margin is < 0."""
  axes = tuple(range(1, x.ndim))
  inside = jnp.all((x >= lower) & (x <= upper), axis=axes)
  return inside & (jnp.min(margins(net, x, y, mean, std), axis=1) < 0)


@functools.partial(jax.jit, static_argnames=("restarts", "steps"))
def pgd_batch(net: Net, lower, upper, y, mean, std, key, restarts: int = 16, steps: int = 30,
              step_size: float = 0.25):
  """`pgd` on every sample of a batch, one key each: (x (B, *shape), min margin (B,)).

  lower, upper: per-sample pixel boxes (B, *shape); y: labels (B,).
  """
  one = lambda lo, hi, label, k: pgd(net, lo, hi, label, mean, std, k, restarts=restarts,
                                     steps=steps, step_size=step_size)
  return jax.vmap(one)(lower, upper, y, jax.random.split(key, y.shape[0]))
