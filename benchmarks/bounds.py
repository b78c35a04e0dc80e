"""Bound methods on CNN-7L: time and peak memory.

    python benchmarks/bounds.py [--inputs 200] [--slow-inputs 2] [--repeats 3]
        [--slow-repeats 1] [--rows "CROWN;alpha-CROWN, 20 it."]

CNN-7L at random initialisation, BN in eval mode, CIFAR-shaped inputs
(uniform in [0, 1]^(32x32x3), fixed seed) with the eps = 2/255 pixel ball,
normalised, and the margin specification. IBP and CROWN-IBP run on all
`--inputs` in one batch; CROWN and alpha-CROWN (intermediate="fixed": CROWN's
intermediate bounds, output slopes optimised) on the first `--slow-inputs`
only, and are reported per input. Each row runs in its own process, so its
peak RSS (ru_maxrss) is its own; "delta" subtracts the RSS before the first
bound call (JAX runtime, model, inputs; compilation is included). Time: the
function is compiled ahead of time (reported, not timed), then the median of
`--repeats` (`--slow-repeats`) calls, as wall time and as CPU time of the
process (all threads; steadier than wall time on a shared machine).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import time

from jaxprune import runtime
from jaxprune.data import CIFAR10_MEAN, CIFAR10_SHAPE, CIFAR10_STD, NUM_CLASSES

runtime.configure()  # first: JAX is imported by the workers only

EPS = 2 / 255
# (row label, method, options, runs on the slow subset)
ROWS = [("IBP", "ibp", {}, False),
        ("CROWN-IBP", "crown_ibp", {}, False),
        ("CROWN-IBP, lower bounds only", "crown_ibp", {"bound_upper": False}, False),
        ("CROWN", "crown", {}, True),
        ("CROWN, refine unstable", "crown", {"refine": "unstable"}, True),
        ("alpha-CROWN, 20 it.", "alpha_crown", {"iterations": 20, "intermediate": "fixed"}, True),
        ("alpha-CROWN, 100 it.", "alpha_crown", {"iterations": 100, "intermediate": "fixed"}, True)]


def rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(method: str, options: dict, inputs: int, repeats: int) -> dict:
  """Times one method in this process; returns the measurements as a dict."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxprune import bounds, models

  model = models.create("cnn7l")
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((inputs, *CIFAR10_SHAPE), np.float32))
  labels = jnp.asarray(rng.integers(0, NUM_CLASSES, inputs))
  variables = model.init(jax.random.PRNGKey(0), x[:1])
  net = bounds.from_model(model, variables, bn="eval")
  xl, xu = bounds.input_box(x, EPS, jnp.array(CIFAR10_MEAN), jnp.array(CIFAR10_STD))
  C = bounds.margin_matrix(labels, NUM_CLASSES)
  fn = jax.jit(functools.partial(bounds.compute_bounds, method=method, **options))
  before = rss_mb()
  start = time.perf_counter()
  fn = fn.lower(net, xl, xu, C).compile()
  compile_s = time.perf_counter() - start
  times, cpu = [], []
  for _ in range(repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    lower, _ = jax.block_until_ready(fn(net, xl, xu, C))
    times.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
  others = np.arange(NUM_CLASSES)[None, :] != np.asarray(labels)[:, None]
  median = float(np.median(times))
  return {"inputs": inputs, "repeats": repeats, "compile_s": compile_s, "median_s": median,
          "per_input_s": median / inputs, "cpu_per_input_s": float(np.median(cpu)) / inputs,
          "load": os.getloadavg()[0], "rss_before_mb": before, "peak_rss_mb": rss_mb(),
          "mean_margin_lower": float(np.asarray(lower)[others].mean()),
          "verified": int(np.asarray(bounds.verified_from_margins(lower, labels)).sum())}


def run_row(method: str, options: dict, inputs: int, repeats: int) -> dict:
  cmd = [sys.executable, __file__, "--worker", json.dumps([method, options, inputs, repeats])]
  out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def table(results: list[tuple[str, dict]]) -> str:
  lines = ["| method | inputs | wall s / call | wall s / input | CPU s / input "
           "| compile (s) | load avg | peak RSS (MB) | RSS delta (MB) "
           "| mean margin lower bound |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for label, r in results:
    lines.append(f"| {label} | {r['inputs']} | {r['median_s']:.3f} | {r['per_input_s']:.4f} "
                 f"| {r['cpu_per_input_s']:.4f} | {r['compile_s']:.1f} | {r['load']:.1f} "
                 f"| {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - r['rss_before_mb']:.0f} "
                 f"| {r['mean_margin_lower']:.4g} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--inputs", type=int, default=200)
  parser.add_argument("--slow-inputs", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--slow-repeats", type=int, default=1)
  parser.add_argument("--rows", help="only these rows (labels separated by ';')")
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(worker(*json.loads(args.worker))))
    return
  results = []
  if min(args.repeats, args.slow_repeats) < 1:
    sys.exit("error: --repeats and --slow-repeats must be >= 1")
  rows = [r for r in ROWS if not args.rows or r[0] in args.rows.split(";")]
  if not rows:
    sys.exit(f"error: --rows matches none of {[r[0] for r in ROWS]}")
  for label, method, options, slow in rows:
    n, repeats = (args.slow_inputs, args.slow_repeats) if slow else (args.inputs, args.repeats)
    results.append((label, run_row(method, options, n, repeats)))
    print(f"{label}: {json.dumps(results[-1][1])}", file=sys.stderr, flush=True)
  print(f"CNN-7L (random init, BN eval), eps 2/255, margin spec; {platform.machine()}, "
        f"{os.cpu_count()} cores\n")
  print(table(results))


if __name__ == "__main__":
  main()
