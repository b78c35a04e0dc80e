"""Exporting a run as a VNN-COMP-style folder that other verifiers (and an exact MILP) can check."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from configured import load_config
from jaxprune import bounds, data, runs
from jaxprune.interop import onnx as jonnx, vnnlib
from jaxprune.prune import driver
from jaxprune.verify import milp, runner, vnncomp

REPO = Path(__file__).resolve().parents[1]
TINY = {"train.epochs": 3, "train.eps_start": 1, "train.eps_length": 2, "train.lr_milestones": (),
        "eval.num_test": 120, "eval.batch_size": 120, "prune.rounds": 1, "prune.rewind_epoch": 1}


@pytest.fixture(scope="module")
def verified_run(tmp_path_factory) -> Path:
  run = tmp_path_factory.mktemp("export") / "run"
  c = load_config(preset="prune_smoke", **TINY)
  hook = lambda r: {"verified_acc": runner.verify_stage(
      str(run), r, method="bab", progress=False,
      verify_overrides={"num_samples": 12, "timeout": 20.0})["verified_acc"]}
  driver.run(c, str(run), round_hook=hook)
  return run


def export(*args):
  return subprocess.run([sys.executable, "-m", "jaxprune.experiments.export", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_exported_folder_holds_our_network_and_checkable_claims(verified_run, tmp_path):
  out = tmp_path / "bench"
  res = export(f"--workdir={verified_run}", "--round=1", f"--out={out}")
  assert res.returncode == 0, res.stderr[-3000:]
  ours = {r["index"]: r["status"] for r in runs.read_jsonl(
      runner.paths(runs.round_dir(str(verified_run), 1), "bab")["results"])}
  proved = sorted(i for i, s in ours.items() if s == "verified")
  assert proved, "the tiny run proved nothing: the test would check nothing"
  instances = [line.split(",") for line in (out / "instances.csv").read_text().splitlines()]
  assert [v for _, v, _ in instances] == [f"prop_{i:05d}.vnnlib" for i in proved]
  assert all(o == "net.onnx" and float(t) == 20.0 for o, _, t in instances)

  # The ONNX file computes our network's logits on pixel inputs (normalisation inside).
  ds = data.load("digits")
  x, y = data.first_n_test(ds, 12)
  net, _, cfg = runner.network(str(verified_run), 1, "best")
  ours_logits = np.asarray(bounds.forward(net, data.normalize(x, ds)))
  sess = ort.InferenceSession(str(out / "net.onnx"), providers=["CPUExecutionProvider"])
  name = sess.get_inputs()[0].name
  got = np.concatenate([sess.run(None, {name: xi.transpose(2, 0, 1)[None].astype(np.float32)})[0]
                        for xi in x])
  np.testing.assert_allclose(got, ours_logits, rtol=1e-5, atol=1e-5)

  # Each property is the clipped eps ball of its image; an exact MILP on the re-imported
  # file agrees with our "verified": no other logit can reach the true one.
  m = jonnx.load(str(out / "net.onnx"))
  for i in proved[:3]:
    (case,) = vnnlib.read(str(out / f"prop_{i:05d}.vnnlib"))
    xi = x[i].transpose(2, 0, 1).reshape(-1)
    assert np.all(case.lower <= xi) and np.all(xi <= case.upper)
    assert np.all(case.upper - case.lower <= 2 * cfg.train.eps + 1e-12)
    assert len(case.disjuncts) == 9
    lo, hi = (m.to_input(v[None]) for v in (case.lower, case.upper))
    for C, d in case.disjuncts:
      sol = milp.minimum(m.net, lo, hi, np.asarray(C)[0])
      assert sol.value > float(np.ravel(d)[0]), (i, sol.value)

  # Our own VNN-COMP runner, from the files alone, proves the same claims.
  rows = vnncomp.run_instances(str(out / "instances.csv"), str(tmp_path / "ours.csv"), limit=4,
                               progress=False)
  assert [r["verdict"] for r in rows] == ["unsat"] * min(4, len(proved))


def test_all_samples_and_the_error_paths(verified_run, tmp_path):
  out = tmp_path / "all"
  res = export(f"--workdir={verified_run}", "--round=0", "--samples=all", f"--out={out}")
  assert res.returncode == 0, res.stderr[-2000:]
  assert len((out / "instances.csv").read_text().splitlines()) == 12
  for args, message in ((["--round=0", f"--out={out}"], "is not an empty directory"),
                        (["--round=all", f"--out={tmp_path / 'x'}"], "one stage at a time"),
                        ([f"--out={tmp_path / 'y'}", "--samples=some"], "unknown samples"),
                        (["--round=0"], "--out is required")):
    res = export(f"--workdir={verified_run}", *args)
    assert res.returncode == 2 and message in res.stderr, res.stderr[-2000:]
  assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
