"""`python -m jaxprune.experiments.export --workdir=RUN [--round=R] --out=DIR`.

Writes one stage of a run as a VNN-COMP-style benchmark folder (net.onnx,
one VNNLIB property per sample, instances.csv) so that any other verifier can
check our verdicts; see `jaxprune.verify.export`.
"""
from __future__ import annotations

import sys

from jaxprune.experiments.verify import fail, rounds_to_verify

USAGE = """usage: python -m jaxprune.experiments.export --workdir=RUN --out=DIR [options]

options:
  --workdir=RUN        a run directory (required)
  --out=DIR            a new or empty directory for net.onnx, prop_NNNNN.vnnlib, instances.csv
  --round=R            pruning runs: best | last | a round number (default: best)
  --samples=S          verified (default: the samples our verification proved) | all
  --method=M           whose verdicts select the samples (default: bab, alpha, crown, ibp)
  -h, --help           show this message and exit
"""


def main(argv=None) -> None:
  argv = sys.argv if argv is None else argv
  args = {}
  for a in argv[1:]:
    if a in ("-h", "--help"):
      print(USAGE)
      sys.exit(0)
    key, sep, value = a[2:].partition("=") if a.startswith("--") else ("", "", "")
    if not sep or key not in ("workdir", "out", "round", "samples", "method"):
      fail(f"unexpected argument {a!r} (see --help)")
    args[key] = value
  for key in ("workdir", "out"):
    if key not in args:
      fail(f"--{key} is required (see --help)")
  from jaxprune import runtime
  runtime.configure()
  from jaxprune import runs
  from jaxprune.errors import RunError
  from jaxprune.verify import export
  try:
    runs.load_config(args["workdir"])
  except RunError as e:
    fail(str(e))
  which = args.get("round")
  if which == "all":
    fail("--round=all: export one stage at a time (best, last or a round number)")
  if runs.is_pruning_run(args["workdir"]) and which is None:
    which = "best"
  (r,) = rounds_to_verify(args["workdir"], which)
  try:
    rows = export.export_stage(args["workdir"], args["out"], r,
                               samples=args.get("samples", "verified"),
                               method=args.get("method"))
  except (RunError, ValueError) as e:
    fail(str(e))
  print(f"exported {'the run' if r is None else f'round {r}'} of {args['workdir']}: "
        f"net.onnx and {len(rows)} properties in {args['out']} (instances.csv lists them)")


if __name__ == "__main__":
  main()
