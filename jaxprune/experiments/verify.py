"""`python -m jaxprune.experiments.verify --workdir=RUN` or `--onnx=N --vnnlib=P` or `--instances=CSV`.

Verifies a trained (or pruned) run directory's networks on the first test
images, one jsonl line per sample under the stage it verified (see
`jaxprune.verify.runner`); killed and re-run, it continues where it stopped.
With `--onnx`/`--vnnlib` it verifies one VNN-COMP instance and prints (and
`--result` writes) the competition's result; with `--instances` a whole
benchmark folder (`jaxprune.verify.vnncomp`).
"""
from __future__ import annotations

import collections
import os
import sys

USAGE = """usage: python -m jaxprune.experiments.verify --workdir=RUN [options]
       python -m jaxprune.experiments.verify --onnx=NET.onnx --vnnlib=PROP.vnnlib [--timeout=S]
                                             [--result=OUT.txt] [--method=M]
       python -m jaxprune.experiments.verify --instances=instances.csv --out=RESULTS.csv
                                             [--timeout=S] [--limit=N] [--method=M]

Verifies the networks of a run directory on its first test images and writes,
under each stage verified, verify/<method>.jsonl (one line per sample) and
verify/<method>.summary.json. Re-running continues where it stopped.

options:
  --workdir=RUN            a run directory made by jaxprune.experiments.<dataset> (required)
  --round=R                pruning runs: best | last | all | a round number (default: all)
  --method=M               ibp | crown | alpha | bab (default: config.verify.method, else bab)
  --num_samples=N          the first N test images (default: config.verify.num_samples)
  --timeout=S              seconds per sample (default: config.verify.timeout)
  --config.verify.KEY=V    any other verify setting: eps, dataset, data_dir, slot
  --overwrite              discard earlier results of this method and verify afresh
  -h, --help               show this message and exit

VNN-COMP instances (an ONNX network, a VNNLIB property; unsat = the property holds):
  --onnx=FILE --vnnlib=FILE  one instance: prints unsat | sat + counterexample | timeout |
                           unknown (a sat is re-checked by onnxruntime on the ONNX file)
  --result=FILE            also write that result in the competition's format
  --instances=CSV          every line onnx,vnnlib,timeout of a benchmark folder
  --out=CSV                where --instances writes verdict, seconds and domains per
                           instance (and <CSV stem>_results/ the result files); resumable
  --limit=N                only the first N instances
  --timeout=S              seconds per instance (default: the CSV's, else 60)
  --batch=N                branch and bound domains per step (default 8; 64 suits MLPs)
"""


def fail(message: str, code: int = 2):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def parse(argv: list[str]) -> dict:
  """Flags as a dict; --config.verify.KEY=V overrides as {"verify": {KEY: V}}."""
  out, overrides = {"overwrite": False}, {}
  for a in argv[1:]:
    if a in ("-h", "--help"):
      print(USAGE)
      sys.exit(0)
    if a == "--overwrite":
      out["overwrite"] = True
      continue
    if not a.startswith("--") or "=" not in a:
      fail(f"unexpected argument {a!r} (flags are written --name=value; see --help)")
    key, value = a[2:].split("=", 1)
    if key.startswith("config.verify."):
      overrides[key[len("config.verify."):]] = value
    elif key in ("workdir", "round", "method", "num_samples", "timeout") + VNN_FLAGS:
      out[key] = value
    else:
      fail(f"unknown flag --{key} (see --help)")
  vnn = sorted(set(out) & set(VNN_FLAGS))
  if vnn and "workdir" in out:
    fail(f"--workdir verifies a run; --{vnn[0]} a VNN-COMP instance: give one of them")
  if "workdir" not in out and not vnn:
    fail("--workdir, --onnx/--vnnlib or --instances is required (see --help)")
  out["overrides"] = overrides
  return out


VNN_FLAGS = ("onnx", "vnnlib", "result", "instances", "out", "limit", "batch")


def number(args: dict, key: str, kind, default):
  try:
    value = kind(args[key]) if key in args else default
  except ValueError:
    fail(f"bad value for --{key}: {args[key]!r}")
  if value is not None and not value > 0:
    fail(f"--{key} must be > 0, got {value}")
  return value


def vnn_main(args: dict) -> None:
  """Verify one VNN-COMP instance, or a benchmark folder's instances."""
  from jaxprune.interop.onnx import UnsupportedOnnx
  from jaxprune.interop.vnnlib import VnnlibError
  from jaxprune.verify import METHODS, vnncomp
  method = args.get("method", "bab")
  if method not in METHODS:
    fail(f"unknown --method {method!r}; valid: {', '.join(METHODS)}")
  timeout = number(args, "timeout", float, None)
  options = {"method": method}
  if "batch" in args:
    options["batch"] = number(args, "batch", int, None)
  extra = [k for k in ("round", "num_samples") if k in args] + (
      ["overwrite"] if args["overwrite"] else []) + (["config.verify.*"] if args["overrides"]
                                                     else [])
  if extra:
    fail(f"--{extra[0]} applies to --workdir runs only")
  try:
    if "instances" in args:
      for k in ("onnx", "vnnlib", "result"):
        if k in args:
          fail(f"--{k} is for one instance; --instances runs the CSV's")
      if "out" not in args:
        fail("--instances needs --out=RESULTS.csv")
      out = args["out"]
      if os.path.isdir(out) or not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        fail(f"--out {out} must be a file in an existing directory")
      rows = vnncomp.run_instances(args["instances"], out, timeout,  # refuses a bad CSV first
                                   number(args, "limit", int, None), **options)
      counts = collections.Counter(r["verdict"] for r in rows)
      print(f"{len(rows)} instances: " + ", ".join(f"{v} {n}" for v, n in sorted(counts.items()))
            + f"; results in {out}", flush=True)
      return
    for k in ("onnx", "vnnlib"):
      if k not in args:
        fail(f"--{k} is required with --{'vnnlib' if k == 'onnx' else 'onnx'}")
      if not os.path.isfile(args[k]):
        fail(f"--{k} {args[k]}: no such file")
    for k in ("out", "limit"):
      if k in args:
        fail(f"--{k} is for --instances")
    if "result" in args and not os.path.isdir(os.path.dirname(os.path.abspath(args["result"]))):
      fail(f"--result {args['result']}: its directory does not exist")
    inst = vnncomp.verify_instance(args["onnx"], args["vnnlib"],
                                   60.0 if timeout is None else timeout, **options)
  except (UnsupportedOnnx, VnnlibError, ValueError) as e:
    fail(str(e))
  print(inst.text, end="", flush=True)
  print(f"# {inst.seconds:.2f} s, {inst.domains} domains" + (f"; {inst.note}" if inst.note
                                                              else ""), file=sys.stderr)
  if "result" in args:
    from jaxprune.utils import atomic_write_text
    atomic_write_text(args["result"], inst.text)


def coerce(old, value: str, key: str):
  """`value` as the type of the config field it overrides."""
  try:
    if isinstance(old, bool):
      return value.lower() in ("1", "true", "yes")
    if isinstance(old, int):
      return int(value)
    if isinstance(old, float) or old is None:
      return None if value.lower() == "none" else float(value)
    return value
  except ValueError:
    fail(f"bad value for {key}: {value!r}")


def rounds_to_verify(run: str, which: str | None) -> list:
  """[None] for a plain run; the round indices `which` names for a pruning run."""
  from jaxprune import runs
  from jaxprune.prune.driver import best_round
  if not runs.is_pruning_run(run):
    if which is not None:
      fail(f"{run} is a plain training run: it has no rounds (drop --round)")
    return [None]
  finished = runs.list_rounds(run)
  if not finished:
    fail(f"{run}: no finished round yet")
  which = which or "all"
  if which == "all":
    return finished
  if which == "last":
    return finished[-1:]
  if which == "best":
    return [best_round(runs.read_jsonl(f"{run}/{runs.SUMMARY}"))["round"]]
  if which.isdigit() and int(which) in finished:
    return [int(which)]
  fail(f"--round must be best, last, all or a finished round ({finished}), got {which!r}")


def main(argv=None) -> None:
  from jaxprune import runtime
  runtime.configure()
  args = parse(sys.argv if argv is None else argv)
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  if "workdir" not in args:
    return vnn_main(args)
  from jaxprune import runs
  from jaxprune.data import DataError
  from jaxprune.errors import ConfigError, RunError
  from jaxprune.verify import runner
  run = args["workdir"]
  try:
    config = runs.load_config(run)
  except RunError as e:
    fail(str(e))
  overrides = dict(args["overrides"])
  for key, flag in (("num_samples", "num_samples"), ("timeout", "timeout")):
    if flag in args:
      overrides[key] = args[flag]
  for key, value in overrides.items():
    if key not in config.verify or key == "method":
      fail(f"unknown verify setting {key!r}; valid: "
           + ", ".join(k for k in config.verify if k != "method"))
    config.verify[key] = coerce(config.verify[key], value, f"verify.{key}")
  rounds = rounds_to_verify(run, args.get("round"))
  try:
    for r in rounds:
      summary = runner.verify_stage(run, r, method=args.get("method"),
                                    overwrite=args["overwrite"], verify_overrides=config.verify)
      print(runner.summary_text(summary), flush=True)
  except (ConfigError, DataError, RunError, ValueError) as e:
    fail(str(e))


if __name__ == "__main__":
  main()
