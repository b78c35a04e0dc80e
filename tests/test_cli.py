"""The command line and the run-directory lifecycle, as a new user meets them.

Every usage or input error is one line on stderr, exit status 2, and leaves
the file system as it was; a run directory resumes only under the config
that shaped it.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxprune import data, runs
from jaxprune.errors import RunError

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["--config=digits:smoke", "--config.train.epochs=1", "--config.train.steps_per_epoch=2",
         "--config.eval.num_test=64", "--config.eval.batch_size=64"]


def cli(*args, cwd=REPO, env=None, dataset="digits"):
  return subprocess.run([sys.executable, "-m", f"jaxprune.experiments.{dataset}", *args],
                        cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def snapshot(directory: Path) -> dict:
  """Every file under `directory` with its content hash (and the directories, empty or not)."""
  out = {}
  for root, dirs, files in os.walk(directory):
    for d in dirs:
      out[os.path.relpath(os.path.join(root, d), directory)] = "dir"
    for f in files:
      p = os.path.join(root, f)
      out[os.path.relpath(p, directory)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
  return out


def one_error_line(out, code=2) -> str:
  assert out.returncode == code, (out.returncode, out.stdout[-2000:], out.stderr[-2000:])
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
  return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
  run = tmp_path_factory.mktemp("cli") / "run"
  out = cli(f"--workdir={run}", *SMOKE)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "new run in" in out.stdout and "done: best epoch 1/1" in out.stdout
  assert str(run / "metrics.jsonl") in out.stdout  # says where the results are
  return run


def test_same_config_resumes_says_so_and_changes_nothing(finished):
  before = snapshot(finished)
  out = cli(f"--workdir={finished}", *SMOKE)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resuming (1 of 1 epochs done)" in out.stdout
  assert snapshot(finished) == before


@pytest.mark.parametrize("extra,diff", [
    (["--config.train.lr=0.01"], "train.lr: 0.003 -> 0.01"),
    (["--config.model=mlp_tiny"], 'model: "cnn_tiny" -> "mlp_tiny"'),
    (["--pruner=slim", "--config.prune.rewind_epoch=0"], 'prune.pruner: "dense" -> "slim"'),
    (["--config.seed=1"], "seed: 100 -> 1"),
])
def test_another_config_is_refused_with_the_diff_and_nothing_touched(finished, extra, diff):
  before = snapshot(finished)
  line = one_error_line(cli(f"--workdir={finished}", *SMOKE, *extra))
  assert "holds a run with a different config" in line and diff in line
  assert snapshot(finished) == before


def test_where_the_data_lives_is_not_part_of_the_config_identity(finished, tmp_path):
  out = cli(f"--workdir={finished}", *SMOKE, f"--config.data_dir={tmp_path}")
  assert out.returncode == 0 and "resuming" in out.stdout, out.stderr[-2000:]


def test_half_finished_run_resumes_only_under_its_own_config(finished, tmp_path):
  run = tmp_path / "half"
  shutil.copytree(finished, run)
  config = json.loads((run / "config.json").read_text())
  config["train"]["epochs"] = 2  # the same directory is now epoch 1 of a 2-epoch run
  (run / "config.json").write_text(json.dumps(config))
  two = [*SMOKE, "--config.train.epochs=2"]
  before = snapshot(run)
  line = one_error_line(cli(f"--workdir={run}", *two, "--config.train.lr=0.01"))
  assert "train.lr: 0.003 -> 0.01" in line
  assert snapshot(run) == before
  out = cli(f"--workdir={run}", *two)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resuming (1 of 2 epochs done)" in out.stdout
  assert [r["epoch"] for r in runs.read_jsonl(run / "metrics.jsonl")] == [1, 2]


def test_overwrite_starts_afresh_and_says_so(finished, tmp_path):
  run = tmp_path / "again"
  shutil.copytree(finished, run)
  (run / "stale.txt").write_text("from before")
  out = cli(f"--workdir={run}", *SMOKE, "--config.train.lr=0.01", "--overwrite")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "overwriting the old run (--overwrite)" in out.stdout
  assert not (run / "stale.txt").exists()
  assert json.loads((run / "config.json").read_text())["train"]["lr"] == 0.01
  assert [r["epoch"] for r in runs.read_jsonl(run / "metrics.jsonl")] == [1]


def test_restore_gives_the_selected_network(finished):
  model, variables, masks, config = runs.restore(str(finished), slot="best")
  assert config.model == "cnn_tiny" and set(masks) == {"conv1", "conv2"}
  best = max(runs.read_jsonl(finished / "metrics.jsonl"), key=lambda r: r["test_ibp_verified_acc"])
  ds = data.load("digits")
  x, y = data.first_n_test(ds, config.eval.num_test)
  logits = model.apply(variables, data.normalize(x, ds), train=False)
  assert np.mean(np.argmax(logits, -1) == y) == pytest.approx(best["test_clean_acc"])
  with pytest.raises(RunError, match="plain training run"):
    runs.restore(str(finished), round=1)
  with pytest.raises(RunError, match="unknown checkpoint slot"):
    runs.restore(str(finished), slot="first")


# --- input errors: one line, exit 2, nothing written ---------------------------------------

def _file(tmp):
  (tmp / "afile").write_text("x")
  return tmp / "afile"


def _not_a_run(tmp):
  (tmp / "notes").mkdir()
  (tmp / "notes" / "todo.txt").write_text("x")
  return tmp / "notes"


@pytest.mark.parametrize("workdir,extra,message", [
    (_file, [], "is a file, not a directory"),
    (_not_a_run, [], "holds no config.json: not a jaxprune run"),
    ("run", ["--config=digits:nope"], "unknown preset 'nope' for digits.py; valid: ibp, smoke, "
     "prune_smoke"),
    ("run", ["stray"], "unexpected arguments ['stray']"),
    ("run", ["--config.data_dir=DATA"], "data_dir"),
    ("run", ["--config.train.batch_size=5000"], "train.batch_size (5000) exceeds the 1437 "
     "training images"),
    ("run", ["--config.eval.num_test=5000"], "eval.num_test (5000) exceeds the 360 test images"),
    ("run", ["--config.train.num_train=99999"], "train.num_train (99999) exceeds"),
    ("run", ["--config.eval.crown_num_test=100"], "eval.crown_num_test must lie in"),
    ("run", ["--config.no_such_key=1"], "unknown config key 'no_such_key'"),
    ("run", ["--config.train.lr=fast"], "bad command line"),
    ("run", ["--config=nosuch.py"], "neither a file nor a packaged config"),
    ("run", ["--pruner=magnitude"], "unknown pruner 'magnitude'; valid: dense, hydra"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, workdir, extra, message):
  workdir = workdir(tmp_path) if callable(workdir) else tmp_path / workdir
  extra = [a.replace("DATA", str(tmp_path / "missing")) for a in extra]
  before = snapshot(tmp_path)
  line = one_error_line(cli(f"--workdir={workdir}", *SMOKE, *extra))
  assert message in line
  assert snapshot(tmp_path) == before  # not even the workdir or a data_dir was created


def test_a_workdir_that_cannot_be_written_is_an_error(tmp_path):
  line = one_error_line(cli("--workdir=/proc/jaxprune-run", *SMOKE))
  assert "/proc/jaxprune-run" in line and ("not writable" in line or "cannot write" in line)


def test_batch_not_divisible_by_the_devices_is_an_error(tmp_path):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  line = one_error_line(cli(f"--workdir={tmp_path / 'run'}", *SMOKE,
                            "--config.train.batch_size=33", env=env))
  assert "train.batch_size (33) is not divisible by the 2 devices" in line
  assert not (tmp_path / "run").exists()


def test_missing_workdir_is_an_error():
  assert "--workdir is required" in one_error_line(cli(*SMOKE))


@pytest.mark.parametrize("dataset", ["digits", "fashion_mnist"])
def test_help_lists_the_flags_and_presets(dataset):
  out = cli("--help", dataset=dataset)
  assert out.returncode == 0, out.stderr
  for word in ("--workdir", "--config", "--pruner", "--overwrite", "imp_nrs", "presets of"):
    assert word in out.stdout
  from jaxprune import config as config_lib
  for preset, text in config_lib.presets(dataset).items():
    assert f"{preset}  " in out.stdout and text in out.stdout


def test_repository_config_paths_work_from_another_directory(tmp_path):
  out = cli("--workdir=run", *SMOKE[1:], "--config=configs/digits.py:smoke", cwd=tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  assert (tmp_path / "run" / "config.json").exists()
