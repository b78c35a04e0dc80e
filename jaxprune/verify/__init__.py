"""Verification of L-inf robustness: incomplete bounds, or complete branch and bound.

    net = jaxprune.bounds.from_model(model, variables, bn="eval")
    results = jaxprune.verify.verify(net, x, y, eps=2 / 255, mean=m, std=s, method="bab")

`method="bab"` (complete): PGD first (a checked counterexample gives
"falsified"), then alpha-CROWN on every margin ("verified" if all are
positive), then beta-CROWN branch and bound per remaining margin
(`verify.bab`). "ibp", "crown", "alpha" stop after the bound: "verified" or
"unknown". A clean misclassification is never verified.
"""
from __future__ import annotations

import functools
import inspect
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.bounds import attack
from jaxprune.bounds.alpha import alpha_crown
from jaxprune.bounds.crown import crown
from jaxprune.bounds.ibp import ibp
from jaxprune.bounds.ir import Net, fold_spec, forward
from jaxprune.bounds.spec import margin_matrix
from jaxprune.registry import lookup
from jaxprune.verify import boxes
from jaxprune.verify.bab import BRANCHING, Result, bab_row

METHODS = ("bab", "ibp", "crown", "alpha")
_forward = jax.jit(forward)
# `bab_row`'s arguments that `verify` supplies itself.
BAB_ARGS = {"net", "lower", "upper", "root", "check", "deadline", "tol"}


@functools.partial(jax.jit, static_argnames=("method", "iterations", "intermediate"))
def margin_bounds(net: Net, C, lower, upper, method: str = "alpha", iterations: int = 20,
                  intermediate: str = "fixed"):
  """(lower bounds of C f(x) (B, S), relu_bounds) over the box by an incomplete method."""
  folded = fold_spec(net, C)
  if method == "ibp":
    lb, _, rb = ibp(folded, lower, upper)
  elif method == "crown":
    lb, _, rb = crown(folded, lower, upper, bound_upper=False)
  else:
    lb, _, rb = alpha_crown(folded, lower, upper, iterations=iterations,
                            intermediate=intermediate, bound_upper=False)
  return lb, rb


def verify(net: Net, x, y, eps: float, mean=0.0, std=1.0, method: str = "bab",
           timeout: float = 30.0, tol: float = 1e-5, pixel_range=(0.0, 1.0),
           restarts: int = 16, steps: int = 30, root_iterations: int = 20,
           intermediate: str = "fixed", seed: int = 0, **bab_options) -> list[Result]:
  """One `Result` per sample of x (B, *shape) in pixel space, labels y (B,).

  The bounds use the pixel ball normalised in float64 and rounded outward to
  float32 (`boxes.normalised_box`), so they cover every pixel input of the
  ball. The bound engine itself runs in float32 without directed rounding, so
  "verified" needs every margin lower bound > tol * max(1, max |logit|) (a
  guard for its rounding, far above float32's error on small nets), and the
  leaves' LPs are solved in float64. Counterexamples are checked by a plain
  float32 forward pass at a pixel input inside the inward-rounded ball.
  `timeout` (seconds per sample) bounds the whole sample (attack included).
  `bab_options` go to `bab.bab_row` (batch, iterations, max_domains, branching:
  "babsr" | "fsb" | "random", max_memory, shard, ...).
  """
  lookup({m: m for m in METHODS}, method, "verification method")
  if "branching" in bab_options:
    lookup(BRANCHING, bab_options["branching"], "branching heuristic")
  allowed = set(inspect.signature(bab_row).parameters) - BAB_ARGS
  if set(bab_options) - allowed:
    raise ValueError(f"unknown verify options {sorted(set(bab_options) - allowed)}; "
                     f"valid: {', '.join(sorted(allowed))}")
  x = np.asarray(x, np.float32)
  y = np.asarray(y).reshape(-1)
  mean32, std32 = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
  key = jax.random.PRNGKey(seed)
  results = []
  for i in range(x.shape[0]):
    start = time.monotonic()
    key, sub = jax.random.split(key)
    results.append(_one(net, x[i], int(y[i]), eps, mean, std, mean32, std32, method, tol,
                        pixel_range, start, start + timeout, restarts, steps, root_iterations,
                        intermediate, sub, bab_options))
  return results


def _one(net, x, y, eps, mean, std, mean32, std32, method, tol, pixel_range, start, deadline,
         restarts, steps, root_iterations, intermediate, key, bab_options) -> Result:
  elapsed = lambda: time.monotonic() - start
  logits = np.asarray(_forward(net, (jnp.asarray(x[None]) - mean32) / std32))[0]
  if int(np.argmax(logits)) != y:
    return Result("misclassified", elapsed())
  tol = tol * max(1.0, float(np.max(np.abs(logits))))
  lower, upper = (jnp.asarray(v[None]) for v in boxes.normalised_box(x, eps, mean, std,
                                                                      *pixel_range))
  p_lo, p_hi = (jnp.asarray(v) for v in boxes.round32(*boxes.pixel_box(x, eps, *pixel_range),
                                                      outward=False))
  k = logits.shape[0]
  others = np.arange(k) != y

  def cex_pixels(xn):
    return jnp.clip(xn * std32 + mean32, p_lo, p_hi)

  def check(xn):
    return attack.check(net, cex_pixels(xn), p_lo, p_hi, y, mean32, std32)

  if method == "bab" and restarts > 0:  # restarts=0: no attack (tests of the search itself)
    xa, _ = attack.pgd(net, p_lo, p_hi, y, mean32, std32, key, restarts=restarts, steps=steps)
    if bool(attack.check(net, xa[None], p_lo, p_hi, y, mean32, std32)[0]):
      return Result("falsified", elapsed(), lower_bound=-math.inf, counterexample=np.asarray(xa))
  C = jnp.asarray(margin_matrix(jnp.asarray([y]), k)[0])
  lb, rb = margin_bounds(net, C, lower, upper, "alpha" if method == "bab" else method,
                         root_iterations, intermediate)
  lb = np.asarray(lb)[0]
  low = float(np.min(lb[others]))
  if low > tol:
    return Result("verified", elapsed(), lower_bound=low)
  if method != "bab":
    return Result("unknown", elapsed(), lower_bound=low)
  rows = [j for j in np.argsort(lb) if others[j] and lb[j] <= tol]
  status, domains, depth = "verified", 0, 0
  bound = min((float(v) for v in lb[others & (lb > tol)]), default=math.inf)
  for j in rows:
    row = bab_row(fold_spec(net, C[j:j + 1]), lower, upper, rb, check, deadline, tol,
                  **bab_options)
    domains, depth = domains + row.domains, max(depth, row.depth)
    bound = min(bound, row.lower_bound)
    if row.status == "falsified":
      return Result("falsified", elapsed(), domains, depth, -math.inf,
                    np.asarray(cex_pixels(jnp.asarray(row.counterexample[None])))[0])
    if row.status == "timeout":
      return Result("timeout", elapsed(), domains, depth, bound)
    if row.status == "unknown":
      status = "unknown"
  return Result(status, elapsed(), domains, depth, bound)
