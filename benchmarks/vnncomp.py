"""Our verdicts on a VNN-COMP 2021 benchmark folder, side by side with the competition's record.

    python benchmarks/vnncomp.py --folder=../shared/data/vnncomp2021/mnistfc --timeout=60 \
        --batch=64 --out=benchmarks/out/mnistfc_60s_b64.csv

Runs every instance of the folder's `*_instances.csv` with our runner
(`jaxprune.verify.vnncomp`, resumable: re-run to continue), then prints a
markdown table per network: our unsat / sat / timeout / unknown counts, the
median seconds of the solved instances (process start excluded, loading and
compilation included), BaB domains per second, and the 2021 alpha-beta-CROWN
line and the majority of the 13 tools (`vnncomp2021_results.csv`). Every
verdict that contradicts the majority is listed: an `unsat` against a `sat`
majority is a soundness bug to investigate; our `sat`s carry counterexamples
re-checked by onnxruntime, so a `sat` against an `unsat` majority is the
majority's error (or a float32 tie).
"""
from __future__ import annotations

import argparse
import csv
import glob
import os
import statistics

from jaxprune.verify import vnncomp

VERDICTS = ("unsat", "sat", "timeout", "unknown")


def table(rows: list[dict], record: dict) -> str:
  nets = sorted({r["onnx"] for r in rows}, key=lambda n: (len(n), n))
  out = ["| network | instances | ours unsat / sat / timeout / unknown | median s (solved) "
         "| BaB domains/s | abCROWN 2021 unsat / sat / timeout | majority unsat / sat |",
         "|---|---:|---|---:|---:|---|---|"]
  for net in nets:
    mine = [r for r in rows if r["onnx"] == net]
    count = lambda vs, v: sum(x == v for x in vs)
    ours = [r["verdict"] for r in mine]
    solved = [float(r["seconds"]) for r in mine if r["verdict"] in ("sat", "unsat")]
    bab = [r for r in mine if int(r["domains"]) > 0]
    rate = (sum(int(r["domains"]) for r in bab) / sum(float(r["seconds"]) for r in bab)
            if bab else 0.0)
    ref = [record.get((r["onnx"], r["vnnlib"]), {}) for r in mine]
    ab = [x.get("abcrown_2021_result", "") for x in ref]
    ab = ["timeout" if v in ("timeout", "none", "") else v for v in ab]
    maj = [x.get("majority_of_tools", "") for x in ref]
    out.append(f"| {net} | {len(mine)} | " + " / ".join(str(count(ours, v)) for v in VERDICTS)
               + f" | {statistics.median(solved) if solved else float('nan'):.2f} | {rate:.0f} | "
               + " / ".join(str(count(ab, v)) for v in ("unsat", "sat", "timeout"))
               + f" | {count(maj, 'unsat')} / {count(maj, 'sat')} |")
  return "\n".join(out)


def contradictions(rows: list[dict], record: dict) -> list[str]:
  out = []
  for r in rows:
    ref = record.get((r["onnx"], r["vnnlib"]), {})
    maj = ref.get("majority_of_tools")
    if r["verdict"] in ("sat", "unsat") and maj in ("sat", "unsat") and r["verdict"] != maj:
      out.append(f"{r['onnx']} {r['vnnlib']}: ours {r['verdict']}, majority {maj} "
                 f"(votes sat {ref.get('votes_sat')}, unsat {ref.get('votes_unsat')})")
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--folder", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--timeout", type=float, default=None, help="per instance (default: the CSV's)")
  p.add_argument("--limit", type=int, default=None)
  p.add_argument("--batch", type=int, default=None, help="BaB domains popped per step")
  args = p.parse_args()
  options = {} if args.batch is None else {"batch": args.batch}
  (instances,) = glob.glob(os.path.join(args.folder, "*_instances.csv"))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  rows = vnncomp.run_instances(instances, args.out, args.timeout, args.limit, **options)
  record = {}
  with open(os.path.join(args.folder, "vnncomp2021_results.csv")) as f:
    for r in csv.DictReader(f):
      record[(r["onnx"], r["vnnlib"])] = r
  print(table(rows, record))
  bad = contradictions(rows, record)
  print(f"\n{len(bad)} verdicts contradict the majority" + (":" if bad else "."))
  for line in bad:
    print("  " + line)


if __name__ == "__main__":
  main()
