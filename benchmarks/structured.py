"""Structured (channel) sparsity vs CROWN cost on CNN-7L (the paper's Figure 4 trend).

    python benchmarks/structured.py [--levels 1,0.8,0.6,0.4,0.25] [--inputs 1] [--repeats 2]
        [--max-run-s 30] [--methods crown[,crown_ibp,ibp]] [--chunk-size N] [--check-level 0.6]

CNN-7L at random initialisation (seed 0) with the BN scales redrawn as
|N(0, 1)| + 0.01, so Network Slimming's |gamma| ranking is non-trivial; BN in
eval mode. Each level keeps a fraction of the 416 conv channels: one global
`slim` step with rate 1 - level (with fixed weights, k rounds at 0.11 give the
same ranking, so this is the k-round mask at level (1 - 0.11)^k up to
rounding), at least one channel per layer. The masked network is then
`prune.compress`ed into a physically smaller one, which is what is bounded.

Inputs: CIFAR-shaped images uniform in [0, 1]^(32x32x3) (seed 0), the eps =
2/255 pixel ball normalised with the CIFAR mean/std, and the margin
specification of random labels. CROWN is full CROWN (every intermediate
bound by CROWN, patches mode). Its chunks (neurons per backward pass) are
automatic by default: they grow as the network shrinks, keeping one A-matrix
near 64 MiB, so memory stays roughly flat; `--chunk-size N` fixes them at
every level instead (then memory follows the widths).

Each level runs in its own process. Time: the function is compiled ahead of
time (`jit(...).lower(...).compile()`, reported but not timed), then run
`--repeats` times, but no new repeat once `--max-run-s` is spent (fast methods:
until 1 s is spent); the median is reported. Memory, two measures:
  * XLA temp: the temporary buffers XLA planned for the compiled program
    (`compiled.memory_analysis().temp_size_in_bytes`), deterministic;
  * run RSS: the process's peak resident memory during the runs above its
    resident memory right before them (the peak is reset after compiling
    via /proc/self/clear_refs, so compilation is excluded); noisy (allocator).
`peak_rss_total_mb` in the JSON is ru_maxrss of the whole worker (compile included).

Correctness: the dense (level 1.0) worker also bounds the *masked,
uncompressed* network of `--check-level` (same shapes as the dense one, so
the same executable), and the bounds must equal those of the compressed
network from the check level's worker (relative 1e-4).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time

from jaxprune import runtime
from jaxprune.data import CIFAR10_MEAN, CIFAR10_SHAPE, CIFAR10_STD, NUM_CLASSES

runtime.configure()  # first: JAX is imported by the workers only

EPS = 2 / 255
TOL = 1e-4
MIN_TIME_S = 1.0  # fast methods repeat until this much time is spent (50 runs at most)


def _status_kb(field: str) -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise KeyError(field)


def _reset_peak_rss() -> bool:
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")  # resets VmHWM to the current RSS
    return True
  except OSError:
    return False


def build(level: float):
  """(dense layers, variables, masks at `level`, compressed layers, compressed variables)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxprune import models, prune

  model = models.create("cnn7l")
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, *CIFAR10_SHAPE)))
  rng = np.random.default_rng(0)
  params = {k: dict(v) for k, v in variables["params"].items()}
  for name in sorted(params):
    if name.startswith("bn"):
      scale = params[name]["scale"]
      params[name]["scale"] = jnp.asarray(np.abs(rng.standard_normal(scale.shape)) + 0.01,
                                          scale.dtype)
  variables = dict(variables, params=params)
  masks = models.init_masks(params, model.layers)
  masks = prune.channel_masks(prune.channel_view(masks), masks, params, model.layers)
  if level < 1.0:
    masks = prune.prune_step("slim", params, masks, layers=model.layers, rate=1.0 - level)
  layers, cvars = prune.compress(model.layers, variables, masks)
  return model.layers, variables, masks, layers, cvars


def inputs_box(n: int):
  import jax.numpy as jnp
  import numpy as np

  from jaxprune import bounds

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((n, *CIFAR10_SHAPE), np.float32))
  labels = jnp.asarray(rng.integers(0, NUM_CLASSES, n))
  xl, xu = bounds.input_box(x, EPS, jnp.array(CIFAR10_MEAN), jnp.array(CIFAR10_STD))
  return xl, xu, bounds.margin_matrix(labels, NUM_CLASSES), labels


def time_method(compiled, net, xl, xu, C, repeats: int, max_run_s: float = float("inf")) -> dict:
  """Runs `compiled` `repeats` times (fewer once `max_run_s` is spent, more while under
  MIN_TIME_S); median time and the peak RSS of the runs above the RSS right before them."""
  import gc

  import jax
  import numpy as np

  gc.collect()
  reset = _reset_peak_rss()
  start_rss = _status_kb("VmRSS")
  times, out = [], None
  while ((len(times) < repeats and (not times or sum(times) < max_run_s))
         or (sum(times) < MIN_TIME_S and len(times) < 50)):
    t = time.perf_counter()
    out = jax.block_until_ready(compiled(net, xl, xu, C))
    times.append(time.perf_counter() - t)
  peak = _status_kb("VmHWM")
  return {"times_s": times, "median_s": float(np.median(times)),
          "run_rss_mb": (peak - start_rss) / 1024 if reset else None,
          "rss_before_run_mb": start_rss / 1024, "lower": np.asarray(out[0]).tolist(),
          "upper": np.asarray(out[1]).tolist()}


def worker(level: float, inputs: int, repeats: int, max_run_s: float, methods: list[str],
           chunk_size: int | None, check_level: float | None) -> dict:
  import resource

  import jax

  from jaxprune import bounds, prune
  from jaxprune.models import count_params

  dense_layers, variables, masks, layers, cvars = build(level)
  net = bounds.from_layers(layers, cvars, bn="eval")
  xl, xu, C, _ = inputs_box(inputs)
  alive = prune.channel_view(masks)
  row = {"level": level, "inputs": inputs, "repeats": repeats, "chunk_size": chunk_size,
         "channel_fraction": sum(int(a.sum()) for a in alive.values())
                             / sum(a.size for a in alive.values()),
         "channels": {l.name: l.features for l in layers if l.op == "conv"},
         "params": count_params(cvars["params"]), "rss_before_compile_mb": _status_kb("VmRSS") / 1024,
         "methods": {}}
  for method in methods:
    options = {"chunk_size": chunk_size} if method == "crown" else {}
    fn = jax.jit(functools.partial(bounds.compute_bounds, method=method, **options))
    t = time.perf_counter()
    compiled = fn.lower(net, xl, xu, C).compile()
    compile_s = time.perf_counter() - t
    mem = compiled.memory_analysis()
    r = time_method(compiled, net, xl, xu, C, repeats, max_run_s)
    r.update(compile_s=compile_s, xla_temp_mb=mem.temp_size_in_bytes / 2**20 if mem else None)
    if method == "crown" and check_level is not None:
      # The masked, uncompressed network of the check level has the dense shapes.
      _, _, check_masks, _, _ = build(check_level)
      masked = bounds.from_layers(dense_layers, variables, check_masks, bn="eval")
      m = time_method(compiled, masked, xl, xu, C, 1)
      r["check"] = {"level": check_level, "lower": m["lower"], "upper": m["upper"],
                    "time_s": m["median_s"]}
    row["methods"][method] = r
  row["peak_rss_total_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return row


def run_level(level: float, args) -> dict:
  methods = args.methods.split(",")
  check = args.check_level if level == 1.0 and "crown" in methods else None
  cmd = [sys.executable, os.path.abspath(__file__), "--worker",
         json.dumps([level, args.inputs, args.repeats, args.max_run_s, methods, args.chunk_size,
                     check])]
  out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def check_compression(rows: list[dict], check_level: float) -> dict:
  """Max |difference| of CROWN bounds: compressed (check level) vs masked dense; asserts TOL."""
  import numpy as np

  dense = next(r for r in rows if r["level"] == 1.0)["methods"]["crown"]["check"]
  comp = next(r for r in rows if r["level"] == check_level)["methods"]["crown"]
  out = {"level": check_level}
  for key in ("lower", "upper"):
    a, b = np.asarray(comp[key]), np.asarray(dense[key])
    out[f"max_abs_diff_{key}"] = float(np.max(np.abs(a - b)))
    out[f"max_rel_diff_{key}"] = float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b))))
    assert out[f"max_rel_diff_{key}"] <= TOL, (key, out)
  out["max_abs_bound"] = float(np.max(np.abs(np.asarray(dense["lower"]))))
  return out


def table(rows: list[dict], methods: list[str]) -> str:
  dense = next((r for r in rows if r["level"] == 1.0), rows[0])
  # s/input: median time per input, (runs) the number of runs it is the median of.
  head = "| remaining channels | conv widths | params |"
  rule = "|---:|---|---:|"
  for m in methods:
    head += (f" {m} s/input (runs) | {m} speedup | {m} XLA temp (MB) | {m} run RSS (MB) "
             f"| {m} compile (s) |")
    rule += "---:|---:|---:|---:|---:|"
  lines = [head, rule]
  for r in rows:
    line = (f"| {100 * r['channel_fraction']:.1f}% | {'-'.join(map(str, r['channels'].values()))} "
            f"| {r['params']:,} |")
    for m in methods:
      x, d = r["methods"][m], dense["methods"][m]
      rss = "n/a" if x["run_rss_mb"] is None else f"{x['run_rss_mb']:.0f}"
      temp = "n/a" if x["xla_temp_mb"] is None else f"{x['xla_temp_mb']:.0f}"
      line += (f" {x['median_s'] / r['inputs']:.3g} ({len(x['times_s'])}) "
               f"| {d['median_s'] / x['median_s']:.1f}x "
               f"| {temp} | {rss} | {x['compile_s']:.1f} |")
    lines.append(line)
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--levels", default="1,0.8,0.6,0.4,0.25",
                      help="remaining channel fractions, comma-separated (1 = dense)")
  parser.add_argument("--inputs", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--max-run-s", type=float, default=30.0,
                      help="no further repeat of a method once its runs took this long")
  parser.add_argument("--methods", default="crown", help="comma-separated: crown,crown_ibp,ibp")
  parser.add_argument("--chunk-size", type=int, default=None,
                      help="CROWN neurons per backward pass at every level (default: automatic)")
  parser.add_argument("--check-level", type=float, default=0.6,
                      help="level whose compressed CROWN bounds are checked against the masked "
                           "dense network (needs 1 and it in --levels; negative: no check)")
  parser.add_argument("--json", help="also write the rows here")
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(worker(*json.loads(args.worker))))
    return
  levels = [float(v) for v in args.levels.split(",")]
  methods = args.methods.split(",")
  if (args.check_level < 0 or args.check_level not in levels or 1.0 not in levels
      or "crown" not in methods):
    args.check_level = None
  start = time.perf_counter()
  rows = []
  for level in levels:
    rows.append(run_level(level, args))
    summary = {m: {k: v for k, v in x.items() if k not in ("lower", "upper", "check")}
               for m, x in rows[-1]["methods"].items()}
    print(f"level {level}: {json.dumps({**rows[-1], 'methods': summary})}", file=sys.stderr,
          flush=True)
  check = check_compression(rows, args.check_level) if args.check_level is not None else None
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"rows": rows, "check": check}, f)
  print(f"CNN-7L (random init, random BN scales, BN eval), slim channel pruning + compress, "
        f"eps 2/255, margin spec, {args.inputs} input(s), median of <= {args.repeats} "
        f"(max {args.max_run_s:g} s), CROWN chunks {args.chunk_size or 'auto'}; "
        f"{platform.machine()} {platform.processor() or 'cpu'}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} at the end, total {time.perf_counter() - start:.0f} s\n")
  print(table(rows, methods))
  if check:
    print(f"\ncompress check at {100 * check['level']:.0f}% channels: CROWN bounds of the compressed "
          f"vs the masked dense network differ by at most {check['max_abs_diff_lower']:.2e} "
          f"(lower) / {check['max_abs_diff_upper']:.2e} (upper), relative "
          f"{max(check['max_rel_diff_lower'], check['max_rel_diff_upper']):.1e} <= {TOL} "
          f"(lower bounds up to {check['max_abs_bound']:.0f} in magnitude)")


if __name__ == "__main__":
  main()
