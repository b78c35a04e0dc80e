"""Training: schedules, end-to-end smoke run, masks, exact resume, data parallel, bad input."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import config as config_lib
from jaxprune import data, runs
from jaxprune.train import NaNLossError, fit, make_context, schedules, train_and_evaluate
from jaxprune.train.state import init_state, make_optimizer
from configured import load_config
from trees import assert_trees_equal

REPO = Path(__file__).resolve().parents[1]


def tiny_config(**overrides):
  base = {"train.epochs": 3, "train.steps_per_epoch": 4, "train.batch_size": 32,
          "eval.num_test": 64, "eval.batch_size": 64}
  return load_config(**{**base, **overrides})


def restore_last(workdir, config):
  ds = data.load(config.dataset)
  ctx = make_context(config, ds)
  like = init_state(ctx.model, ds.input_shape, make_optimizer(config.train, 1), config.seed)
  return runs.restore_state(workdir, "last", like)


# --- schedules ---------------------------------------------------------------------------

def test_smoothed_eps_matches_auto_lirpa_shape():
  spe, eps = 10, 0.1
  f = lambda s: schedules.smoothed_eps(s, eps, spe, start_epoch=3, length=5, mid=0.4)
  values = [f(s) for s in range(100)]
  assert all(v == 0.0 for v in values[:21])  # epochs 1-2 and the first step of epoch 3
  assert all(b >= a for a, b in zip(values, values[1:]))
  assert values[(3 + 5 - 1) * spe - 1] == pytest.approx(eps)
  assert values[-1] == eps
  # exponential (convex) before the mid point, linear after it
  d = np.diff(values[21:40])
  assert np.all(np.diff(d[:8]) > 0)
  np.testing.assert_allclose(np.diff(values[45:69]), np.diff(values[45:69])[0], rtol=1e-9)


def test_linear_eps_and_kappa():
  spe = 4
  vals = [schedules.linear_eps(s, 1.0, spe, start_epoch=2, length=2) for s in range(20)]
  assert vals[:4] == [0.0] * 4 and vals[11] == 1.0 and vals[-1] == 1.0
  assert vals[5] == pytest.approx(2 / 8)
  cfg = load_config().train
  cfg.eps, cfg.kappa_end = 0.2, 0.5
  assert schedules.kappa_at(cfg, 0.0) == 1.0
  assert schedules.kappa_at(cfg, 0.1) == pytest.approx(0.75)
  assert schedules.kappa_at(cfg, 0.2) == pytest.approx(0.5)


def test_lr_schedule_decays_at_milestones():
  f = schedules.lr_schedule(1e-3, (2, 3), 0.1, steps_per_epoch=5)
  assert float(f(9)) == pytest.approx(1e-3)
  assert float(f(10)) == pytest.approx(1e-4)
  assert float(f(15)) == pytest.approx(1e-5)


# --- end to end --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["standard", "ibp", "crown_ibp", "fgsm_gradalign"])
def test_one_epoch_end_to_end_writes_metrics_and_checkpoints(tmp_path, mode):
  config = tiny_config(**{"train.mode": mode, "train.epochs": 1, "train.steps_per_epoch": 2,
                          "train.nrs_weight": 0.01, "eval.crown_num_test": 16})
  state, summary = train_and_evaluate(config, str(tmp_path))
  rows = runs.read_jsonl(tmp_path / "metrics.jsonl")
  assert [r["epoch"] for r in rows] == [1]
  assert rows[0]["num_test"] == 64 and rows[0]["crown_num_test"] == 16
  assert rows[0]["instability"] <= rows[0]["instability_unstable"]  # stable neurons add < 0
  for key in ("train_loss", "train_nrs_loss", "test_clean_acc", "test_ibp_verified_acc",
              "test_crown_verified_acc", "unstable", "unstable_ratio", "instability",
              "crown_unstable_ratio"):
    assert np.isfinite(rows[0][key]), key
  assert 0 <= rows[0]["test_ibp_verified_acc"] <= rows[0]["test_clean_acc"] <= 1
  assert 0 <= rows[0]["test_crown_verified_acc"] <= 1
  assert 0 <= rows[0]["unstable_ratio"] <= 1
  assert (tmp_path / "checkpoints" / "last" / "1").is_dir()
  assert (tmp_path / "checkpoints" / "best" / "1").is_dir()
  assert int(state.step) == 2
  assert summary["last"]["epoch"] == 1


def test_crown_eval_runs_every_k_epochs_and_at_the_last(tmp_path):
  config = tiny_config(**{"train.epochs": 3, "train.steps_per_epoch": 1,
                          "eval.crown_num_test": 4, "eval.crown_every": 2})
  train_and_evaluate(config, str(tmp_path))
  rows = runs.read_jsonl(tmp_path / "metrics.jsonl")
  assert ["test_crown_verified_acc" in r for r in rows] == [False, True, True]


def test_ibp_training_learns_on_digits(tmp_path):
  """A real property, not a smoke check: IBP training beats chance by a wide margin."""
  config = load_config(preset="ibp", **{"train.epochs": 10, "train.eps_start": 2,
                                     "train.eps_length": 5, "train.lr_milestones": (8,)})
  _, summary = train_and_evaluate(config, str(tmp_path))
  assert summary["last"]["test_clean_acc"] > 0.7  # measured 0.88
  assert summary["last"]["test_ibp_verified_acc"] > 0.5  # measured 0.68


@pytest.mark.parametrize("optimizer,wd", [("sgd", 5e-4), ("adam", 1e-5)])
def test_masked_weights_stay_exactly_zero(tmp_path, optimizer, wd):
  config = tiny_config(**{"train.optimizer": optimizer, "train.weight_decay": wd,
                          "train.mode": "ibp", "train.epochs": 1, "train.lr": 0.05})
  ds = data.load("digits")
  ctx = make_context(config, ds)
  tx = make_optimizer(config.train, 1)
  state = init_state(ctx.model, ds.input_shape, tx, 0)
  rng = np.random.default_rng(0)
  masks = jax.tree_util.tree_map(lambda m: jnp.asarray(rng.random(m.shape) < 0.5, m.dtype),
                                 state.masks)
  state = init_state(ctx.model, ds.input_shape, tx, 0, masks=masks)
  before = jax.tree_util.tree_map(np.asarray, state.params)
  state, _ = fit(config, str(tmp_path), ctx, ds, state)
  for name, m in masks.items():
    k, m = np.asarray(state.params[name]["kernel"]), np.asarray(m["kernel"])
    assert np.all(k[m == 0] == 0.0)
    assert np.mean(k[m == 1] != before[name]["kernel"][m == 1]) > 0.9


def test_nan_loss_stops_with_clear_error_and_keeps_last_checkpoint(tmp_path):
  config = tiny_config(**{"train.mode": "standard", "train.lr_milestones": (1,),
                          "train.lr_decay": 1e38, "train.grad_clip": 0.0})
  with pytest.raises(NaNLossError, match="loss is nan at epoch 2.*checkpoint of epoch 1 .* intact"):
    train_and_evaluate(config, str(tmp_path))
  state, meta = restore_last(str(tmp_path), config)
  assert meta["epoch"] == 1
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(state.params))


# --- exact resume after kill -9 ----------------------------------------------------------

CLI_ARGS = ["--config.train.epochs=4", "--config.train.steps_per_epoch=6",
            "--config.train.batch_size=32", "--config.eval.num_test=64",
            "--config.eval.batch_size=64"]


def cli(workdir, *extra, config="configs/digits.py:smoke"):
  return [sys.executable, "-m", "jaxprune.experiments.digits", f"--workdir={workdir}",
          f"--config={config}", *CLI_ARGS, *extra]


def test_killed_run_resumes_to_identical_parameters(tmp_path):
  ref, killed = tmp_path / "ref", tmp_path / "killed"
  config = load_config(**{a.split("=")[0][len("--config."):]: eval(a.split("=")[1])
                          for a in CLI_ARGS})
  train_and_evaluate(config, str(ref))

  proc = subprocess.Popen(cli(killed), cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while not (killed / "checkpoints" / "last" / "2").is_dir():
    assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  rows = runs.read_jsonl(killed / "metrics.jsonl")
  assert len(rows) < 4
  train_and_evaluate(config, str(killed))  # the same command, run again

  a, meta_a = restore_last(str(ref), config)
  b, meta_b = restore_last(str(killed), config)
  assert meta_a["epoch"] == meta_b["epoch"] == 4
  assert_trees_equal(a, b)
  ra = runs.read_jsonl(ref / "metrics.jsonl")
  rb = runs.read_jsonl(killed / "metrics.jsonl")
  assert [r["epoch"] for r in rb] == [1, 2, 3, 4]
  strip = lambda r: {k: v for k, v in r.items() if k != "epoch_time_s"}
  assert list(map(strip, ra)) == list(map(strip, rb))


# --- command line: bad input -------------------------------------------------------------

@pytest.mark.parametrize("arg,message", [
    ("--config.no_such_key=1", "unknown config key"),
    ("--config.train.eps=-0.1", "train.eps must be >= 0"),
    ("--config.dataset=mnist", "unknown dataset 'mnist'; valid: "),
    ("--config.model=vgg", "unknown model 'vgg'; valid: "),
    ("--config.train.mode=magic", "unknown train.mode 'magic'; valid: "),
])
def test_bad_config_exits_nonzero_and_writes_nothing(tmp_path, arg, message):
  workdir = tmp_path / "run"
  out = subprocess.run(cli(workdir, arg), cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2
  assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
  assert not workdir.exists()


# --- data parallel -----------------------------------------------------------------------

DP_SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from jaxprune import data
from jaxprune.train import losses, make_context, make_train_step
from jaxprune.train.loop import make_mesh
from jaxprune.train.state import init_state, make_optimizer
from jaxprune import config as config_lib
config = config_lib.load("digits:smoke")
assert jax.device_count() == 2, jax.devices()
ds = data.load("digits")
ctx = make_context(config, ds)
tx = make_optimizer(config.train, 10)
x, y = ds.x_train[:64], ds.y_train[:64]
out = {}
for n in (1, 2):
  mesh = make_mesh() if n == 2 else jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  rep, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  state = jax.device_put(init_state(ctx.model, ds.input_shape, tx, 0), rep)
  step = make_train_step(ctx, losses.LOSSES["ibp"], tx)
  xs, ys = jax.device_put(x, shard), jax.device_put(y, shard)
  state, m = step(state, xs, ys, jnp.float32(0.05), jnp.float32(0.5))
  state, m2 = step(state, xs, ys, jnp.float32(0.05), jnp.float32(0.5))
  out[n] = (float(m["loss"]), float(m2["loss"]), len(xs.sharding.device_set))
print(out)
assert out[2][2] == 2 and out[1][2] == 1
assert abs(out[1][0] - out[2][0]) < 1e-5 and abs(out[1][1] - out[2][1]) < 1e-5, out
print("OK")
"""


def test_data_parallel_two_fake_devices_match_one_device():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  out = subprocess.run([sys.executable, "-c", DP_SCRIPT], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


# --- PGD accuracy ------------------------------------------------------------------------

def test_fgsm_gradalign_selects_by_pgd_accuracy_between_verified_and_clean(tmp_path):
  """PGD accuracy is logged every epoch, picks FGSM's best epoch, and is an attack:
  verified <= PGD <= clean at every eps, PGD == clean at eps 0 and < clean at a large eps."""
  from jaxprune.train import evaluate, make_eval_fn
  config = tiny_config(**{"train.mode": "fgsm_gradalign", "train.epochs": 2,
                          "train.steps_per_epoch": 2})
  state, summary = train_and_evaluate(config, str(tmp_path))
  rows = runs.read_jsonl(tmp_path / "metrics.jsonl")
  for r in rows:
    assert 0 <= r["test_ibp_verified_acc"] <= r["test_pgd_acc"] <= r["test_clean_acc"] <= 1
  assert summary["best"]["metric"] == "test_pgd_acc"
  assert summary["best"]["value"] == max(r["test_pgd_acc"] for r in rows)

  ds = data.load("digits")
  x, y = data.first_n_test(ds, 64)
  eval_fn = make_eval_fn(make_context(config, ds), ("ibp",), pgd=(1, 10))
  at = {eps: evaluate(eval_fn, state, x, y, eps, 64) for eps in (0.0, 0.002, 0.05, 0.3)}
  for r in at.values():
    assert r["test_ibp_verified_acc"] <= r["test_pgd_acc"] <= r["test_clean_acc"]
  assert at[0.0]["test_pgd_acc"] == pytest.approx(at[0.0]["test_clean_acc"], abs=1 / 64)
  assert at[0.002]["test_ibp_verified_acc"] > 0
  assert at[0.3]["test_pgd_acc"] < at[0.3]["test_clean_acc"]


def test_pgd_accuracy_is_off_with_zero_steps_and_standard_keeps_clean(tmp_path):
  config = tiny_config(**{"train.mode": "standard", "train.epochs": 1,
                          "train.steps_per_epoch": 1, "eval.pgd_steps": 0})
  _, summary = train_and_evaluate(config, str(tmp_path))
  assert "test_pgd_acc" not in summary["last"]
  assert summary["best"]["metric"] == "test_clean_acc"
  bad = tiny_config(**{"eval.pgd_restarts": -1})
  with pytest.raises(config_lib.ConfigError, match="eval.pgd_restarts must be >= 0"):
    config_lib.validate(bad)
