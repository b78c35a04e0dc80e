"""Verify a run directory's networks sample by sample, resumably.

    summary = jaxprune.verify.runner.verify_run("runs/fm_imp_nrs", round=2, method="bab")

Results live beside what they verified (`runs.stage_dir`: the run, or one
round of a pruning run), in `verify/`:

    <method>.json           the settings the results were made with
    <method>.jsonl          one line per sample, appended durably in index order
    <method>.summary.json   clean / PGD / verified accuracy, timeouts, times, memory
    <method>_cex/NNNNN.npy  the pixel-space counterexample of each falsified sample

A killed verification started again skips the finished samples and ends with
the same verdicts; one started with other settings is refused (RunError,
nothing touched) unless `overwrite`. Structured pruning rounds are verified
as the physically compressed network (channels removed), as they would be
deployed; the summary says so.
"""
from __future__ import annotations

import math
import os
import resource
import shutil
from typing import Optional

import numpy as np
from tqdm import tqdm

from jaxprune import bounds, data, prune, runs
from jaxprune.errors import ConfigError, RunError
from jaxprune.train.config import raise_if
from jaxprune.utils import atomic_open
from jaxprune.verify import config as verify_config
from jaxprune.verify import verify

VERIFY_DIR = "verify"
STATUSES = ("verified", "falsified", "timeout", "unknown", "misclassified")


def paths(stage: str, method: str) -> dict[str, str]:
  d = os.path.join(stage, VERIFY_DIR)
  return {"dir": d, "settings": os.path.join(d, f"{method}.json"),
          "results": os.path.join(d, f"{method}.jsonl"),
          "summary": os.path.join(d, f"{method}.summary.json"),
          "cex": os.path.join(d, f"{method}_cex")}


def peak_memory_bytes() -> int:
  """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
  return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def network(run: str, round: Optional[int], slot: str):
  """(bound IR, description, config) of a stage's checkpoint; structured rounds compressed."""
  model, variables, masks, config = runs.restore(run, round=round, slot=slot)
  what = f"{slot} checkpoint of " + (f"round {round}" if round is not None else "the run")
  if round is not None and prune.get(config.prune.pruner).kind == "structured":
    layers, variables = prune.compress(model.layers, variables, masks)
    widths = {l.name: l.features for l in layers if l.op == "conv"}
    return (bounds.from_layers(layers, variables, bn="eval"),
            f"{what}, physically compressed (conv channels {widths})", config)
  return bounds.from_model(model, variables, bn="eval"), what, config


def settings(config, method: str) -> dict:
  """What the results depend on (besides the checkpoint): compared on resume."""
  v = config.verify
  return {"method": method, "eps": config.train.eps if v.eps is None else v.eps,
          "dataset": v.dataset or config.dataset, "num_samples": v.num_samples,
          "timeout": v.timeout, "slot": v.slot}


def test_images(config, wanted: dict):
  """The first `num_samples` test images of the verification dataset."""
  name = wanted["dataset"]
  data_dir = config.verify.data_dir or (config.data_dir if name == config.dataset else "")
  ds = data.load(name, data_dir=data_dir or None)
  if wanted["num_samples"] > len(ds.x_test):
    raise ConfigError(f"verify.num_samples ({wanted['num_samples']}) exceeds the "
                      f"{len(ds.x_test)} test images of {name}")
  x, y = data.first_n_test(ds, wanted["num_samples"])
  return ds, x, y


def check_settings(p: dict, wanted: dict, overwrite: bool) -> None:
  """Refuse results made with other settings (nothing touched), or clear them if overwriting."""
  if not os.path.exists(p["settings"]):
    return
  diff = runs.config_diff(runs.read_json(p["settings"]), wanted)
  if diff and not overwrite:
    raise RunError(f"{p['results']} holds results made with other settings ("
                   + "; ".join(diff) + "); use --overwrite to verify afresh")
  if overwrite:
    for key in ("settings", "results", "summary"):
      if os.path.exists(p[key]):
        os.unlink(p[key])
    shutil.rmtree(p["cex"], ignore_errors=True)


def summarise(rows: list[dict], wanted: dict, what: str) -> dict:
  n = len(rows)
  count = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
  seconds = [r["seconds"] for r in rows]
  pgd_ran = wanted["method"] == "bab"  # the incomplete methods run no attack
  return {
      **wanted, "stage": what, "samples": n,
      **{f"num_{s}": count[s] for s in STATUSES},
      "clean_acc": (n - count["misclassified"]) / n,
      "pgd_acc": (n - count["misclassified"] - count["falsified"]) / n if pgd_ran else None,
      "verified_acc": count["verified"] / n,
      "mean_seconds": float(np.mean(seconds)), "median_seconds": float(np.median(seconds)),
      "peak_memory_bytes": max(r["peak_memory_bytes"] for r in rows)}


def verify_stage(run: str, round: Optional[int] = None, method: Optional[str] = None,
                 overwrite: bool = False, progress: bool = True,
                 verify_overrides: Optional[dict] = None, **options) -> dict:
  """Verify one stage (a plain run, or round `round`) and return its summary.

  `method` defaults to config.verify.method, else "bab"; the other settings
  come from the run's `verify` config section, updated by `verify_overrides`
  (num_samples, timeout, eps, ...). `options` go to `verify.verify`.
  """
  config = runs.load_config(run)
  if verify_overrides:
    config.verify.update(dict(verify_overrides))
  method = method or config.verify.method or "bab"
  config.verify.method = method
  raise_if(verify_config.problems(config))
  wanted = settings(config, method)
  stage = runs.stage_dir(run, round)
  p = paths(stage, method)
  ds, x, y = test_images(config, wanted)
  check_settings(p, wanted, overwrite)
  net, what, _ = network(run, round, wanted["slot"])
  os.makedirs(p["dir"], exist_ok=True)
  if not os.path.exists(p["settings"]):
    runs.write_json(p["settings"], wanted)
  rows = runs.read_jsonl(p["results"])
  done = {r["index"] for r in rows}
  todo = [i for i in range(len(x)) if i not in done]
  bar = tqdm(total=len(x), initial=len(x) - len(todo), desc=f"verify {method}", disable=(
      None if progress else True))
  for i in todo:
    r = verify(net, x[i:i + 1], y[i:i + 1], eps=wanted["eps"], mean=ds.mean, std=ds.std,
               method=method, timeout=wanted["timeout"], **options)[0]
    row = {"index": i, "label": int(y[i]), "method": method, "status": r.status,
           "seconds": r.seconds, "domains": r.domains, "depth": r.depth,
           "lower_bound": r.lower_bound if math.isfinite(r.lower_bound) else None,
           "peak_memory_bytes": peak_memory_bytes()}
    if r.counterexample is not None:
      os.makedirs(p["cex"], exist_ok=True)
      cex = os.path.join(p["cex"], f"{i:05d}.npy")
      with atomic_open(cex, "wb") as f:
        np.save(f, np.asarray(r.counterexample, np.float32).reshape(x.shape[1:]))
      row["counterexample"] = os.path.relpath(cex, stage)
    runs.append_jsonl(p["results"], row)
    rows.append(row)
    bar.update(1)
    bar.set_postfix({s[:5]: sum(q["status"] == s for q in rows) for s in STATUSES[:3]})
  bar.close()
  rows.sort(key=lambda q: q["index"])
  summary = {**summarise(rows, wanted, what), "results": p["results"]}
  runs.write_json(p["summary"], summary)
  return summary


def summary_text(summary: dict) -> str:
  n = summary["samples"]
  pgd = "" if summary["pgd_acc"] is None else f", PGD {100 * summary['pgd_acc']:.1f} %"
  return (f"{summary['method']} on {n} test images of {summary['dataset']} at eps "
          f"{summary['eps']:.4g} ({summary['stage']}): verified {summary['num_verified']}/{n} "
          f"({100 * summary['verified_acc']:.1f} %), clean {100 * summary['clean_acc']:.1f} %"
          f"{pgd}; falsified {summary['num_falsified']}, timeouts {summary['num_timeout']}, "
          f"unknown {summary['num_unknown']}; {summary['mean_seconds']:.2f} s/sample mean, "
          f"{summary['median_seconds']:.2f} median; peak memory "
          f"{summary['peak_memory_bytes'] / 2**30:.2f} GiB\nresults: {summary['results']}")
