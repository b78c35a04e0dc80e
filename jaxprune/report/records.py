"""Run directories -> plain records, read only through `jaxprune.runs` and `runner.paths`.

A record is one pruning run: its identity (dataset, eps, pruner, seed, the
verification settings its numbers were made with), one dict per finished
round, and `problems`, the reasons it is incomplete (missing rounds, missing
or short verification summaries). Records never hide a gap: whatever is
missing is a problem, and `tabular`/`plots` keep incomplete runs apart.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Optional

from jaxprune import prune, runs
from jaxprune.errors import RunError
from jaxprune.prune import driver
from jaxprune.verify import METHODS
from jaxprune.verify import runner

GLOB_CHARS = "*?["
# Settings that make results comparable, from a verification summary.
VERIFY_KEYS = ("method", "eps", "dataset", "num_samples", "timeout", "slot")


def expand(patterns: list[str]) -> list[str]:
  """Run directories named by glob patterns (sorted per pattern, deduplicated).

  A pattern that matches nothing is a RunError; files a glob matches (logs
  beside run directories) are skipped, since only directories can be runs.
  Whether each one is a run is `collect`'s check.
  """
  found = []
  for pattern in patterns:
    matches = sorted(glob.glob(pattern))
    if any(c in pattern for c in GLOB_CHARS):
      matches = [m for m in matches if os.path.isdir(m)]
    if not matches:
      raise RunError(f"no run directory matched {pattern!r}")
    found += [m for m in map(os.path.normpath, matches) if m not in found]
  return found


def verify_method(run: str, config, rounds: list[int]) -> Optional[str]:
  """The method whose summaries hold the run's verified accuracy: the configured one,
  else the first of METHODS (bab first: complete) that verified any round."""
  if config.verify.method:
    return config.verify.method
  for m in METHODS:
    if any(os.path.exists(summary_path(run, r, m)) for r in rounds):
      return m
  return None


def summary_path(run: str, r: int, method: str) -> str:
  return runner.paths(runs.round_dir(run, r), method)["summary"]


def round_record(row: dict, summary: Optional[dict]) -> dict:
  """One round's numbers: verification summary first, the round's own evaluation else.

  clean/PGD come from the verification summary when there is one (the same
  samples as the verified accuracy); the fallback verified accuracy is the
  first `test_*_verified_acc` the round evaluated.
  """
  fallback = fallback_metric(row)
  s = summary or {}
  pick = lambda key, alt: s[key] if s.get(key) is not None else row.get(alt)
  return {
      "round": row["round"], "remain_ratio": row["remain_ratio"],
      "channel_remain_ratio": row.get("channel_remain_ratio"),
      "clean_acc": pick("clean_acc", "test_clean_acc"),
      "pgd_acc": pick("pgd_acc", "test_pgd_acc"),
      "verified_acc": s["verified_acc"] if summary else row.get("verified_acc",
                                                               row.get(fallback)),
      "verified_by": s.get("method") or row.get("verify_method") or fallback,
      "seconds": s.get("mean_seconds", row.get("verify_mean_seconds")),
      "peak_memory_bytes": s.get("peak_memory_bytes"),
      "timeouts": s.get("num_timeout", row.get("verify_timeouts")),
      "samples": s.get("samples", row.get("verify_samples", row.get("num_test"))),
      "instability_unstable": row.get("instability_unstable"),
      "unstable_ratio": row.get("unstable_ratio"),
  }


def fallback_metric(row: dict) -> Optional[str]:
  """The first incomplete verified accuracy a round evaluated (`test_ibp_verified_acc`, ...)."""
  return next((k for k in row if k.startswith("test_") and k.endswith("_verified_acc")), None)


def verification(run: str, config, rows: list[dict], method: Optional[str]):
  """(settings, {round: summary}, problems) of the run's verification with `method`.

  Without a method the settings name the fallback metric and its test set.
  """
  if method is None:
    metric = fallback_metric(rows[0]) if rows else None
    return {"method": "", "metric": metric, "num_samples": config.eval.num_test}, {}, []
  wanted = runner.settings(config, method)
  summaries, problems, seen = {}, [], []
  for r in (row["round"] for row in rows):
    path = summary_path(run, r, method)
    if not os.path.exists(path):
      problems.append(f"round {r}: no {method} verification summary")
      continue
    s = summaries[r] = runs.read_json(path)
    got = {k: s.get(k) for k in VERIFY_KEYS}
    seen.append(got)
    asked = wanted["num_samples"] if method == config.verify.method else got["num_samples"]
    if s["samples"] < asked:
      problems.append(f"round {r}: {method} verified {s['samples']} of {asked} samples")
  settings = seen[0] if seen else wanted
  if any(got != settings for got in seen):
    problems.append(f"rounds verified with different {method} settings")
  return settings, summaries, problems


def read_run(run: str) -> dict:
  """The record of one pruning run (RunError if `run` is not one, or its files are torn)."""
  if not os.path.isdir(run) or not os.path.exists(os.path.join(run, runs.CONFIG)):
    raise RunError(f"{run} is not a jaxprune run (no {runs.CONFIG})")
  if not runs.is_pruning_run(run):
    raise RunError(f"{run} is a plain training run; the report reads pruning runs")
  try:
    return record(run)
  except (json.JSONDecodeError, KeyError, TypeError, OSError) as e:
    raise RunError(f"{run}: unreadable run files ({type(e).__name__}: {e})") from None


def record(run: str) -> dict:
  config = runs.load_config(run)
  done = runs.list_rounds(run)
  rows = [runs.read_json(os.path.join(runs.round_dir(run, r), runs.ROUND_SUMMARY))
          for r in done]
  expected = list(range(driver.num_rounds(config) + 1))
  missing = sorted(set(expected) - set(done))
  problems = [f"round(s) {', '.join(map(str, missing))} of 0-{expected[-1]} not finished"
              ] if missing else []
  method = verify_method(run, config, done)
  settings, summaries, verify_problems = verification(run, config, rows, method)
  return {
      "run": run, "dataset": config.dataset, "model": config.model,
      "mode": config.train.mode, "eps": config.train.eps, "seed": config.seed,
      "pruner": config.prune.pruner, "kind": prune.get(config.prune.pruner).kind,
      "verify": settings, "config": runs.config_json(config),
      "rounds": [round_record(row, summaries.get(row["round"])) for row in rows],
      "expected_rounds": len(expected), "problems": problems + verify_problems}


def collect(run_dirs: list[str]) -> list[dict]:
  """Records of the given run directories (RunError on the first that is not a run)."""
  if not run_dirs:
    raise RunError("no run directories given")
  return [read_run(r) for r in run_dirs]


def best_round(record: dict) -> Optional[dict]:
  """The round with the highest verified accuracy (the earliest on ties), as the paper reports."""
  scored = [r for r in record["rounds"] if r["verified_acc"] is not None]
  return max(scored, key=lambda r: (r["verified_acc"], -r["round"]), default=None)
