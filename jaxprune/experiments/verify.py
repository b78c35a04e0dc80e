"""`python -m jaxprune.experiments.verify --workdir=RUN [--round=...] [--method=...]`.

Verifies a trained (or pruned) run directory's networks on the first test
images, one jsonl line per sample under the stage it verified (see
`jaxprune.verify.runner`); killed and re-run, it continues where it stopped.
"""
from __future__ import annotations

import sys

USAGE = """usage: python -m jaxprune.experiments.verify --workdir=RUN [options]

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
    elif key in ("workdir", "round", "method", "num_samples", "timeout"):
      out[key] = value
    else:
      fail(f"unknown flag --{key} (see --help)")
  if "workdir" not in out:
    fail("--workdir is required (see --help)")
  out["overrides"] = overrides
  return out


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
