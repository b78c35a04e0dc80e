"""Verifying run directories: per-sample results, resume, refusals, rounds, the pipeline hook."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from configured import load_config
from jaxprune import bounds, data, runs
from jaxprune.errors import RunError
from jaxprune.prune import driver
from jaxprune.train import train_and_evaluate
from jaxprune.verify import runner

REPO = Path(__file__).resolve().parents[1]
FIELDS = ("index", "label", "method", "status", "seconds", "domains", "depth", "lower_bound",
          "peak_memory_bytes")
TINY = {"train.epochs": 3, "train.eps_start": 1, "train.eps_length": 2, "train.lr_milestones": (),
        "eval.num_test": 120, "eval.batch_size": 120}


def tiny_config(preset="ibp", **overrides):
  return load_config(preset=preset, **{**TINY, **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
  run = tmp_path_factory.mktemp("verify") / "run"
  train_and_evaluate(tiny_config(), str(run))
  return run


def cli(*args):
  return subprocess.run([sys.executable, "-m", "jaxprune.experiments.verify", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def statuses(path) -> dict:
  return {r["index"]: r["status"] for r in runs.read_jsonl(path)}


def test_verify_writes_one_line_per_sample_and_a_summary(trained):
  out = cli(f"--workdir={trained}", "--method=bab", "--num_samples=30", "--timeout=20")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "bab on 30 test images of digits" in out.stdout and "results:" in out.stdout
  rows = runs.read_jsonl(trained / "verify" / "bab.jsonl")
  assert [r["index"] for r in rows] == list(range(30))
  assert all(set(FIELDS) <= set(r) for r in rows)
  s = runs.read_json(trained / "verify" / "bab.summary.json")
  n = {st: sum(r["status"] == st for r in rows) for st in runner.STATUSES}
  assert s["num_verified"] == n["verified"] and s["verified_acc"] == n["verified"] / 30
  assert s["verified_acc"] <= s["pgd_acc"] <= s["clean_acc"] <= 1
  assert n["timeout"] == n["unknown"] == 0  # tiny net, generous timeout: all decided
  # Every falsified sample carries a counterexample inside the ball that flips the label.
  ds = data.load("digits")
  x, y = data.first_n_test(ds, 30)
  model, variables, _, cfg = runs.restore(str(trained))
  for r in rows:
    if r["status"] == "falsified":
      cex = np.load(trained / r["counterexample"])
      assert np.all(np.abs(cex - x[r["index"]]) <= cfg.train.eps + 1e-6)
      assert np.all((0 <= cex) & (cex <= 1))
      logits = model.apply(variables, data.normalize(cex[None], ds), train=False)
      assert int(np.argmax(logits)) != y[r["index"]]
  # Run again: every sample is done, nothing changes.
  before = (trained / "verify" / "bab.jsonl").read_bytes()
  out = cli(f"--workdir={trained}", "--method=bab", "--num_samples=30", "--timeout=20")
  assert out.returncode == 0 and (trained / "verify" / "bab.jsonl").read_bytes() == before


def test_incomplete_methods_never_beat_complete_verification(trained):
  crown = runner.verify_stage(str(trained), method="crown", progress=False,
                              verify_overrides={"num_samples": 30})
  bab = runner.verify_stage(str(trained), method="bab", progress=False,
                            verify_overrides={"num_samples": 30, "timeout": 20.0})
  c, b = (statuses(trained / "verify" / f"{m}.jsonl") for m in ("crown", "bab"))
  assert all(b[i] == "verified" for i in c if c[i] == "verified")  # sound and complete
  assert all(c[i] != "verified" for i in b if b[i] == "falsified")
  assert crown["num_verified"] <= bab["num_verified"] and crown["pgd_acc"] is None


def test_other_settings_are_refused_and_overwrite_restarts(trained, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(trained, run, ignore=shutil.ignore_patterns("verify"))
  assert cli(f"--workdir={run}", "--method=crown", "--num_samples=10").returncode == 0
  before = (run / "verify" / "crown.jsonl").read_bytes()
  out = cli(f"--workdir={run}", "--method=crown", "--num_samples=12")
  assert out.returncode == 2 and "num_samples: 10 -> 12" in out.stderr
  assert (run / "verify" / "crown.jsonl").read_bytes() == before
  out = cli(f"--workdir={run}", "--method=crown", "--num_samples=12", "--overwrite")
  assert out.returncode == 0, out.stderr[-2000:]
  assert len(runs.read_jsonl(run / "verify" / "crown.jsonl")) == 12


@pytest.mark.parametrize("args,message", [
    (["--method=magic"], "unknown verify.method 'magic'"),
    (["--round=1"], "plain training run: it has no rounds"),
    (["--config.verify.colour=red"], "unknown verify setting 'colour'"),
    (["--num_samples=9999"], "verify.num_samples (9999) exceeds the 360 test images"),
    (["--timeout=soon"], "bad value for verify.timeout"),
    (["stray"], "unexpected argument 'stray'"),
])
def test_bad_verify_input_is_one_line_and_exit_2(trained, args, message):
  before = sorted(os.listdir(trained))
  out = cli(f"--workdir={trained}", *args)
  assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
  assert len(out.stderr.strip().splitlines()) == 1
  assert sorted(os.listdir(trained)) == before


def test_not_a_run_is_an_error(tmp_path):
  out = cli(f"--workdir={tmp_path}")
  assert out.returncode == 2 and "is not a jaxprune run" in out.stderr


def test_torn_results_resume_to_the_same_verdicts(trained, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(trained, run, ignore=shutil.ignore_patterns("verify"))
  opts = dict(method="crown", progress=False, verify_overrides={"num_samples": 20})
  full = runner.verify_stage(str(run), **opts)
  path = run / "verify" / "crown.jsonl"
  ref = statuses(path)
  lines = path.read_text().splitlines(keepends=True)
  path.write_text("".join(lines[:7]) + lines[7][:25])  # a kill in the middle of line 8
  again = runner.verify_stage(str(run), **opts)
  assert statuses(path) == ref and len(runs.read_jsonl(path)) == 20
  assert again["num_verified"] == full["num_verified"]


def test_killed_verification_resumes_to_the_same_verdicts(trained, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(trained, run, ignore=shutil.ignore_patterns("verify"))
  args = [sys.executable, "-m", "jaxprune.experiments.verify", f"--workdir={run}",
          "--method=bab", "--num_samples=150", "--timeout=20"]
  proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  path, deadline = run / "verify" / "bab.jsonl", time.time() + 240
  while len(runs.read_jsonl(path)) < 3:
    assert proc.poll() is None and time.time() < deadline, "ended before it could be killed"
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert len(runs.read_jsonl(path)) < 150
  assert subprocess.run(args, cwd=REPO, capture_output=True, timeout=600).returncode == 0
  got = statuses(path)
  assert sorted(got) == list(range(150))
  ref = tmp_path / "ref"  # the same, uninterrupted
  shutil.copytree(trained, ref, ignore=shutil.ignore_patterns("verify"))
  summary = runner.verify_stage(str(ref), method="bab", progress=False,
                                verify_overrides={"num_samples": 150, "timeout": 20.0})
  assert summary["num_verified"] == sum(s == "verified" for s in got.values())
  assert statuses(ref / "verify" / "bab.jsonl") == got


def test_pipeline_verifies_every_round_into_its_summary(tmp_path):
  config = tiny_config("prune_smoke", **{"prune.rounds": 1, "prune.rewind_epoch": 1})
  hook = lambda r: {"verified_acc": runner.verify_stage(
      str(tmp_path), r, method="crown", progress=False,
      verify_overrides={"num_samples": 16})["verified_acc"]}
  rows = driver.run(config, str(tmp_path), round_hook=hook)
  for r, row in enumerate(rows):
    results = runs.read_jsonl(runs.round_dir(str(tmp_path), r) + "/verify/crown.jsonl")
    assert len(results) == 16
    assert row["verified_acc"] == sum(q["status"] == "verified" for q in results) / 16
  assert runs.read_json(runs.round_dir(str(tmp_path), 1) + "/summary.json") == rows[1]
  out = cli(f"--workdir={tmp_path}", "--method=crown", "--num_samples=16", "--round=all")
  assert out.returncode == 0 and out.stdout.count("crown on 16 test images") == 2
  for which, r in (("last", 1), ("0", 0)):
    out = cli(f"--workdir={tmp_path}", "--method=crown", "--num_samples=16", f"--round={which}")
    assert out.returncode == 0 and f"round {r})" in out.stdout, out.stderr[-2000:]
  with pytest.raises(RunError, match="round 7 is not finished"):
    runner.verify_stage(str(tmp_path), 7, method="crown")


def test_structured_rounds_are_verified_compressed_with_the_masked_bounds(tmp_path):
  config = tiny_config("prune_smoke", **{"prune.rounds": 1, "prune.rewind_epoch": 1,
                                         "prune.pruner": "slim", "prune.rate": 0.5})
  driver.run(config, str(tmp_path))
  net, what, _ = runner.network(str(tmp_path), 1, "best")
  assert "physically compressed" in what
  model, variables, masks, cfg = runs.restore(str(tmp_path), round=1, slot="best")
  masked = bounds.from_model(model, variables, masks=masks, bn="eval")
  assert sum(n.w.size for n in net.nodes if n.w is not None) < sum(
      n.w.size for n in masked.nodes if n.w is not None)
  ds = data.load("digits")
  x, y = data.first_n_test(ds, 8)
  lo, hi = bounds.input_box(x, cfg.train.eps, ds.mean, ds.std)
  C = bounds.margin_matrix(y, 10)
  for method in ("ibp", "crown"):
    a = bounds.compute_bounds(net, lo, hi, C=C, method=method)[0]
    b = bounds.compute_bounds(masked, lo, hi, C=C, method=method)[0]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
