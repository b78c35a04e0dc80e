"""Verification of L-inf robustness: incomplete bounds, or complete branch and bound.

    net = jaxprune.bounds.from_model(model, variables, bn="eval")
    results = jaxprune.verify.verify(net, x, y, eps=2 / 255, mean=m, std=s, method="bab")

`method="bab"` (complete): PGD first (a checked counterexample gives
"falsified"), then alpha-CROWN on every margin ("verified" if all are
positive), then beta-CROWN branch and bound per remaining margin
(`verify.bab`). "ibp", "crown", "alpha" stop after the bound: "verified" or
"unknown". A clean misclassification is never verified.

    result = jaxprune.verify.verify_property(net, lower, upper, disjuncts, timeout=60.0)

verifies a general property (a VNNLIB file's, `interop.vnnlib`): no input of
the box [lower, upper] (the net's input layout) reaches the unsafe set, the
union over disjuncts (C, d) of {y : C y <= d}. Robustness is the special case
of one row e_y - e_j per other class j with d = 0, and both go through the same
steps; nets with at most `inputsplit.MAX_DIMS` inputs split the input box
(`verify.inputsplit`) instead of ReLUs.
"""
from __future__ import annotations

import functools
import inspect
import math
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.bounds import attack
from jaxprune.bounds.alpha import alpha_crown
from jaxprune.bounds.crown import crown
from jaxprune.bounds.ibp import ibp
from jaxprune.bounds.ir import Net, fold_spec, forward
from jaxprune.interop import vnnlib
from jaxprune.registry import lookup
from jaxprune.verify import boxes, inputsplit
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


def _options(method: str, bab_options: dict):
  lookup({m: m for m in METHODS}, method, "verification method")
  if "branching" in bab_options:
    lookup(BRANCHING, bab_options["branching"], "branching heuristic")
  allowed = set(inspect.signature(bab_row).parameters) - BAB_ARGS
  if set(bab_options) - allowed:
    raise ValueError(f"unknown verify options {sorted(set(bab_options) - allowed)}; "
                     f"valid: {', '.join(sorted(allowed))}")


def verify(net: Net, x, y, eps: float, mean=0.0, std=1.0, method: str = "bab",
           timeout: float = 30.0, tol: float = 1e-5, pixel_range=(0.0, 1.0),
           restarts: int = 16, steps: int = 30, root_iterations: int = 20,
           intermediate: str = "fixed", input_split: bool = False, seed: int = 0,
           **bab_options) -> list[Result]:
  """One `Result` per sample of x (B, *shape) in pixel space, labels y (B,).

  The bounds use the pixel ball normalised in float64 and rounded outward to
  float32 (`boxes.normalised_box`), so they cover every pixel input of the
  ball. The bound engine itself runs in float32 without directed rounding, so
  "verified" needs every margin lower bound > tol * max(1, max |logit|) (a
  guard for its rounding, far above float32's error on small nets), and the
  leaves' LPs are solved in float64. Counterexamples are checked by a plain
  float32 forward pass at a pixel input inside the inward-rounded ball.
  `timeout` (seconds per sample) bounds the whole sample (attack included).
  `input_split` branches on the input box instead of ReLUs (None: when the
  input has at most `inputsplit.MAX_DIMS` elements). `bab_options` go to
  `bab.bab_row` (batch, iterations, max_domains, branching: "babsr" | "fsb" |
  "random", max_memory, shard, ...).
  """
  _options(method, bab_options)
  x = np.asarray(x, np.float32)
  y = np.asarray(y).reshape(-1)
  mean32, std32 = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
  key = jax.random.PRNGKey(seed)
  settings = dict(tol=tol, restarts=restarts, steps=steps, root_iterations=root_iterations,
                  intermediate=intermediate, input_split=input_split)
  results = []
  for i in range(x.shape[0]):
    start = time.monotonic()
    key, sub = jax.random.split(key)
    logits = np.asarray(_forward(net, (jnp.asarray(x[i][None]) - mean32) / std32))[0]
    if int(np.argmax(logits)) != int(y[i]):
      results.append(Result("misclassified", time.monotonic() - start))
      continue
    lower, upper = boxes.normalised_box(x[i], eps, mean, std, *pixel_range)
    p_lo, p_hi = boxes.round32(*boxes.pixel_box(x[i], eps, *pixel_range), outward=False)
    disjuncts = vnnlib.robustness_disjuncts(int(y[i]), logits.shape[0])
    results.append(_decide(net, disjuncts, lower, upper, p_lo, p_hi, mean32, std32, logits,
                           method, start, start + timeout, sub, settings, bab_options))
  return results


def verify_property(net: Net, lower, upper, disjuncts, method: str = "bab",
                    timeout: float = 30.0, tol: float = 1e-5, restarts: int = 16,
                    steps: int = 30, root_iterations: int = 20, intermediate: str = "fixed",
                    input_split: Optional[bool] = None, seed: int = 0,
                    deadline: Optional[float] = None, **bab_options) -> Result:
  """Whether no input of [lower, upper] reaches the unsafe set of `disjuncts`.

  lower, upper: float64 arrays of the net's input shape (one example; a
  VNNLIB box through `OnnxNet.to_input`); disjuncts: [(C (R, n_out), d (R,))],
  unsafe where C f(x) <= d on every row. "verified": the property holds;
  "falsified": `counterexample` is a float32 input inside [lower, upper] whose
  float32 forward pass reaches the unsafe set. The bounds use the box rounded
  outward to float32, the counterexamples the box rounded inward, and
  "verified" needs bounds > tol * max(1, |outputs at the centre|, |d|).
  `deadline` (time.monotonic()) overrides `timeout`; other options as `verify`.
  """
  _options(method, bab_options)
  start = time.monotonic()
  lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
  if lower.shape != upper.shape or np.any(lower > upper):
    raise ValueError(f"need lower <= upper of one shape, got {lower.shape} and {upper.shape}")
  lo32, hi32 = boxes.round32(lower, upper, outward=True)
  p_lo, p_hi = boxes.round32(lower, upper, outward=False)
  centre = jnp.asarray(((lo32 + hi32) / 2)[None])
  logits = np.asarray(_forward(net, centre))[0]
  settings = dict(tol=tol, restarts=restarts, steps=steps, root_iterations=root_iterations,
                  intermediate=intermediate, input_split=input_split)
  zero, one = jnp.zeros((), jnp.float32), jnp.ones((), jnp.float32)  # no normalisation
  return _decide(net, disjuncts, lo32, hi32, p_lo, p_hi, zero, one, logits, method, start,
                 start + timeout if deadline is None else deadline, jax.random.PRNGKey(seed),
                 settings, bab_options)


def stack_disjuncts(disjuncts, n_out: int) -> tuple[np.ndarray, np.ndarray]:
  """(C (K, R, n_out), d (K, R)) of disjuncts of up to R rows, padded with rows d = +inf."""
  rows = max([1] + [np.shape(d)[0] for _, d in disjuncts])
  C = np.zeros((len(disjuncts), rows, n_out), np.float32)
  d = np.full((len(disjuncts), rows), np.inf)
  for k, (c, b) in enumerate(disjuncts):
    c = np.asarray(c, np.float64).reshape(-1, n_out)
    C[k, :len(c)], d[k, :len(c)] = c, np.ravel(b)
  return C, d


def fold_rows(net: Net, C, d) -> Net:
  """The net computing C f(x) - d (R outputs): a disjunct's rows, proven where one is > 0."""
  folded = fold_spec(net, jnp.asarray(C, jnp.float32))
  last = folded.nodes[-1]
  offset = jnp.asarray(d, jnp.float32)
  b = -offset if last.b is None else last.b - offset
  return folded.replace(nodes=folded.nodes[:-1] + (last.replace(b=b),))


def _decide(net, disjuncts, lower, upper, p_lo, p_hi, mean32, std32, logits, method, start,
            deadline, key, settings, bab_options) -> Result:
  """The steps of verification for one box (see the module docstring).

  lower, upper: float32 box of the net's input (outward); p_lo, p_hi: the
  point box counterexamples must lie in (inward), mapped to the net's input by
  (p - mean) / std.
  """
  elapsed = lambda: time.monotonic() - start
  if not disjuncts:
    return Result("verified", elapsed(), lower_bound=math.inf)
  C, d = stack_disjuncts(disjuncts, logits.shape[0])
  finite = np.abs(d[np.isfinite(d)])
  tol = settings["tol"] * max(1.0, float(np.max(np.abs(logits))),
                              float(np.max(finite, initial=0.0)))
  lower, upper = jnp.asarray(lower[None]), jnp.asarray(upper[None])
  p_lo, p_hi = jnp.asarray(p_lo), jnp.asarray(p_hi)
  Cj, dj = jnp.asarray(C), jnp.asarray(d, jnp.float32)

  def to_point(xn):
    return jnp.clip(xn * std32 + mean32, p_lo, p_hi)

  def check(xn):
    return attack.check_spec(net, to_point(xn), p_lo, p_hi, Cj, dj, mean32, std32)

  if method == "bab" and settings["restarts"] > 0:  # restarts=0: no attack (tests of the search)
    xa, _ = attack.pgd_spec(net, p_lo, p_hi, Cj, dj, mean32, std32, key,
                            restarts=settings["restarts"], steps=settings["steps"])
    if bool(attack.check_spec(net, xa[None], p_lo, p_hi, Cj, dj, mean32, std32)[0]):
      return Result("falsified", elapsed(), lower_bound=-math.inf, counterexample=np.asarray(xa))
  k, r = d.shape
  lb, rb = margin_bounds(net, Cj.reshape(k * r, -1), lower, upper,
                         "alpha" if method == "bab" else method, settings["root_iterations"],
                         settings["intermediate"])
  rows_lb = np.asarray(lb)[0].reshape(k, r) - d  # -inf on padded rows
  value = np.max(rows_lb, axis=1)
  if np.all(value > tol):
    return Result("verified", elapsed(), lower_bound=float(np.min(value)))
  if method != "bab":
    return Result("unknown", elapsed(), lower_bound=float(np.min(value)))
  split_input = settings["input_split"]
  if split_input is None:
    split_input = math.prod(lower.shape[1:]) <= inputsplit.MAX_DIMS
  status, domains, depth = "verified", 0, 0
  bound = min((float(v) for v in value[value > tol]), default=math.inf)
  for j in np.argsort(value):
    if value[j] > tol:
      continue
    rows = [i for i in np.argsort(-rows_lb[j]) if np.isfinite(d[j, i])]
    if not rows:  # an empty conjunction: every input is unsafe (the attack's centre shows it)
      return Result("falsified", elapsed(), lower_bound=-math.inf,
                    counterexample=np.asarray((p_lo + p_hi) / 2))
    if split_input:
      attempts = [inputsplit.bab_box(fold_rows(net, C[j, rows], d[j, rows]), lower, upper,
                                     check, deadline, tol, bab_options.get("batch", 32))]
    else:  # ReLU splits prove one row at a time; any row proven proves the conjunction
      attempts = (bab_row(fold_rows(net, C[j, i:i + 1], d[j, i:i + 1]), lower, upper, rb, check,
                          deadline, tol, **bab_options) for i in rows)
    for row in attempts:
      domains, depth = domains + row.domains, max(depth, row.depth)
      if row.status in ("verified", "falsified", "timeout"):
        break
    bound = min(bound, row.lower_bound)
    if row.status == "falsified":
      return Result("falsified", elapsed(), domains, depth, -math.inf,
                    np.asarray(to_point(jnp.asarray(row.counterexample[None])))[0])
    if row.status == "timeout":
      return Result("timeout", elapsed(), domains, depth, bound)
    if row.status == "unknown":
      status = "unknown"
  return Result(status, elapsed(), domains, depth, bound)
