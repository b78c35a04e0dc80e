"""A run's network and properties as a VNN-COMP-style benchmark folder, for other verifiers.

    rows = jaxprune.verify.export.export_stage("runs/quickstart", "bench/", round=2)
    python -m jaxprune.experiments.export --workdir=runs/quickstart --round=best --out=bench/

The folder holds:

    net.onnx          the stage's network (BN folded, masks applied, structured rounds
                      compressed), NCHW pixel-space input: normalisation is inside
    prop_NNNNN.vnnlib the L-inf ball of test image NNNNN clipped to [0, 1] (in the ONNX
                      input's NCHW order) and the unsafe set "some other logit >= the
                      true one", one disjunct per other class
    instances.csv     onnx,vnnlib,timeout per property (no header), as VNN-COMP's
    samples.csv       index,label,our verdict (when this stage was verified)

Properties are written for the samples our verification of this stage
proved (`--samples=verified`, the default when results exist), so any other
verifier can check each claim, or for all of the first `num_samples`.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from jaxprune import runs
from jaxprune.errors import RunError
from jaxprune.interop import onnx as jonnx
from jaxprune.interop import vnnlib
from jaxprune.utils import atomic_open, atomic_write_text
from jaxprune.verify import runner

SAMPLES = ("verified", "all")


def nchw(x: np.ndarray) -> np.ndarray:
  """(H, W, C) pixels in the ONNX input's order (C, H, W)."""
  return np.transpose(x, (2, 0, 1)) if x.ndim == 3 else x


def our_verdicts(stage: str, method: Optional[str]) -> tuple[Optional[dict], dict]:
  """(the settings they were made with, {index: status}) of this stage's verification
  results (bab preferred), or (None, {})."""
  for m in ([method] if method else ["bab", "alpha", "crown", "ibp"]):
    p = runner.paths(stage, m)
    rows = runs.read_jsonl(p["results"])
    if rows:
      return runs.read_json(p["settings"]), {r["index"]: r["status"] for r in rows}
  return None, {}


def export_stage(run: str, out: str, round: Optional[int] = None, samples: str = "verified",
                 method: Optional[str] = None) -> list[dict]:
  """Write the benchmark folder of one stage; returns one row per property written."""
  if samples not in SAMPLES:
    raise RunError(f"unknown samples {samples!r}; valid: {', '.join(SAMPLES)}")
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise RunError(f"--out {out} exists and is not an empty directory")
  config = runs.load_config(run)
  stage = runs.stage_dir(run, round)
  found, verdicts = our_verdicts(stage, method)
  # The properties of what was verified (eps, images, timeout), else the config's.
  wanted = found or runner.settings(config, method or config.verify.method or "bab")
  if samples == "verified" and found is None:
    raise RunError(f"{stage} has no verification results; verify it first "
                   "(python -m jaxprune.experiments.verify) or export --samples=all")
  ds, x, y = runner.test_images(config, wanted)
  net, what, _ = runner.network(run, round, wanted["slot"])
  picked = [i for i in range(len(x)) if samples == "all" or verdicts.get(i) == "verified"]
  os.makedirs(out, exist_ok=True)
  model = jonnx.to_model(net, x.shape[1:], mean=np.broadcast_to(ds.mean, x.shape[-1:]),
                         std=np.broadcast_to(ds.std, x.shape[-1:]))
  with atomic_open(os.path.join(out, "net.onnx"), "wb") as f:
    f.write(model.SerializeToString())
  eps, rows = wanted["eps"], []
  for i in picked:
    xi = np.asarray(x[i], np.float64)
    lower, upper = np.clip(xi - eps, 0.0, 1.0), np.clip(xi + eps, 0.0, 1.0)
    name = f"prop_{i:05d}.vnnlib"
    atomic_write_text(os.path.join(out, name), vnnlib.to_text(
        nchw(lower), nchw(upper), vnnlib.robustness_disjuncts(int(y[i]), ds.num_classes),
        comment=f"{config.dataset} test image {i}, label {int(y[i])}, eps {eps}; {what}"))
    rows.append({"index": i, "label": int(y[i]), "vnnlib": name,
                 "ours": verdicts.get(i, "")})
  atomic_write_text(os.path.join(out, "instances.csv"), "".join(
      f"net.onnx,{r['vnnlib']},{wanted['timeout']:g}\n" for r in rows))
  atomic_write_text(os.path.join(out, "samples.csv"), "index,label,ours\n" + "".join(
      f"{r['index']},{r['label']},{r['ours']}\n" for r in rows))
  return rows
