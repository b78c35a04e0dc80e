"""Loss fusion: an upper bound of the worst-case cross-entropy in one backward pass.

CE(f(x), y) = log sum_j exp(m_j(x)) with m_j = z_j - z_y. Bounding the nine
margins separately costs a CROWN pass with nine specifications; instead, as
auto_LiRPA's loss fusion does, relax exp on each margin's IBP interval by its
chord (exp is convex, so the chord lies above it), which makes sum_j exp(m_j)
at most a linear function of the margins, and bound that single function with
one CROWN pass (one specification). log is increasing, so log of the bound
bounds the loss. Everything is shifted by max_j u_j for numerical stability.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxprune.bounds.crown import backward_bound, node_shapes
from jaxprune.bounds.ibp import ibp
from jaxprune.bounds.ir import Net, fold_spec
from jaxprune.bounds.spec import margin_matrix


def chord(lower, upper):
  """(slope, intercept) of the chord of exp over [lower, upper]: exp(m) <= slope m + intercept."""
  el, eu = jnp.exp(lower), jnp.exp(upper)
  width = upper - lower
  wide = width > 1e-6
  slope = jnp.where(wide, (eu - el) / jnp.where(wide, width, 1.0), eu)
  return slope, el - slope * lower


def fused_ce_bound(net: Net, x_lower, x_upper, labels, num_classes: int, crown_weight):
  """Upper bound of max over the box of CE(f(x), y), per example.

  `crown_weight` in [0, 1] mixes the CROWN-IBP bound with the pure IBP one
  (CROWN-IBP's schedule: (eps_max - eps) / eps_max). The CROWN pass always
  runs: skipping it at weight 0 with `lax.cond` made XLA:CPU's gradient many
  times slower (benchmarks/RESULTS.md), so callers that know the weight is 0
  use the IBP loss instead (`train.make_train_step`). Returns (bound,
  margin_lower, relu_bounds): the IBP lower bounds of z_y - z_j and the IBP
  pre-activation bounds, which the caller needs anyway (verified counts,
  NRS/RS losses).
  """
  net_m = fold_spec(net, -margin_matrix(labels, num_classes))  # rows e_j - e_y: m_j
  lower, upper, relu_bounds = ibp(net_m, x_lower, x_upper)
  shift = jax.lax.stop_gradient(jnp.max(upper, axis=-1))
  lo, up = lower - shift[:, None], upper - shift[:, None]
  ibp_sum = jnp.sum(jnp.exp(up), axis=-1)

  # exp(m - s) <= slope (m - s) + intercept: linear in the unshifted margins m.
  slope, intercept = chord(lo, up)
  shapes = node_shapes(net_m, x_lower)
  neg = backward_bound(net_m, net_m.output, -slope[:, None, :], x_lower, x_upper, relu_bounds,
                       shapes)[:, 0]
  crown_sum = jnp.sum(intercept - slope * shift[:, None], axis=-1) - neg
  total = crown_weight * crown_sum + (1 - crown_weight) * ibp_sum
  return jnp.log(total) + shift, -upper, relu_bounds
