"""The iterative pruning driver: every pruner end to end, rewinding, modes, kill -9, CLI errors."""
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import configured
from jaxprune import data, prune, runs
from jaxprune.prune import driver
from jaxprune.train import ConfigError, make_context

REPO = Path(__file__).resolve().parents[1]
# cnn_tiny on digits: 36 + 512 conv kernel weights, 4 + 8 conv channels.
CONV_WEIGHTS, CONV_CHANNELS = 548, 12
# One step shape and lr schedule for all tests: their compilations are shared.
TINY = {"train.epochs": 1, "train.steps_per_epoch": 2, "train.lr_milestones": (1,),
        "eval.num_test": 64, "eval.batch_size": 64, "prune.rounds": 1, "prune.rewind_epoch": 0,
        "prune.score_batches": 2, "prune.hydra_steps": 2}


def load_config(preset="prune_smoke", **overrides):
  return configured.load_config(preset=preset, **{**TINY, **overrides})


def final_state(config, workdir, r):
  """Round r's last checkpoint, restored like the driver does."""
  config = driver.resolve_config(config)
  ds = data.load(config.dataset)
  ctx = make_context(config, ds)
  like = driver.initial_state(config, ctx, ds, prune.get(config.prune.pruner))
  return runs.restore_state(runs.round_dir(workdir, r), "last", like)[0]


def flat(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_same(a, b):
  """Two pytrees (or flat dicts) with the same paths and bit-identical arrays."""
  a, b = flat(a), flat(b)
  assert a.keys() == b.keys()
  for path in a:
    np.testing.assert_array_equal(a[path], b[path], err_msg=path)


# --- every pruner, two rounds --------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(prune.PRUNERS))
def test_two_rounds_of_every_pruner(tmp_path, name):
  config = load_config(**{"prune.pruner": name})
  rows = driver.run(config, str(tmp_path))
  pruner = prune.get(name)

  assert [r["round"] for r in rows] == [0, 1]
  assert runs.read_jsonl(tmp_path / "summary.jsonl") == rows
  for r in (0, 1):
    d = tmp_path / f"round_{r:02d}"
    for f in ("masks.npz", "metrics.jsonl", "summary.json", "checkpoints/last/1"):
      assert (d / f).exists(), f
  assert (tmp_path / "rewind" / "state.npz").exists()
  for row in rows:
    for k, v in row.items():
      if isinstance(v, float):
        assert math.isfinite(v), (k, v)
    assert 0 <= row["test_ibp_verified_acc"] <= row["test_clean_acc"] <= 1

  masks = runs.load_tree(str(tmp_path / "round_01" / "masks.npz"))
  assert rows[0]["remain_ratio"] == 1.0
  if pruner.kind == "none":
    assert rows[1]["remain_ratio"] == 1.0
  elif pruner.kind == "unstructured":  # rate 0.2 of the conv weights, Python-rounded
    assert rows[1]["remain_ratio"] == (CONV_WEIGHTS - round(0.2 * CONV_WEIGHTS)) / CONV_WEIGHTS
  else:  # round(0.11 * 12) = 1 channel
    alive = CONV_CHANNELS - round(0.11 * CONV_CHANNELS)
    assert sum(prune.channel_counts(masks).values()) == alive
    assert rows[1]["channel_remain_ratio"] == alive / CONV_CHANNELS
    assert rows[1]["channels"] == prune.channel_counts(masks)
    assert rows[1]["compressed_params"] < rows[0]["compressed_params"]

  # Masked weights (and, structured, biases and BN entries) stay exactly zero.
  params, mask_flat = flat(final_state(config, str(tmp_path), 1).params), flat(masks)
  for path, m in mask_flat.items():
    assert np.all(params[path][m == 0] == 0), path

  # The pruner's regulariser was merged into the training config and trained with.
  saved = json.loads((tmp_path / "config.json").read_text())["train"]
  extra = {"rs": "train_rs_loss", "nrs": "train_nrs_loss"}.get(pruner.train_loss_extra)
  for field, weight in pruner.train_weights().items():
    assert saved[field] == weight
  if extra:
    assert all(extra in row for row in runs.read_jsonl(tmp_path / "round_01" / "metrics.jsonl"))


# --- round starts: rewind, finetune, one-shot ----------------------------------------------

def spy_on_fit(monkeypatch):
  """Records the state each round's `fit` starts from and the params after each epoch."""
  starts, epochs, real_fit = [], [], driver.fit

  def fit(config, workdir, ctx, ds, state, on_epoch_end=None):
    starts.append(jax.tree_util.tree_map(np.array, state))

    def hook(epoch, s):
      epochs.append((workdir, epoch, flat(s.params)))
      if on_epoch_end is not None:
        on_epoch_end(epoch, s)

    return real_fit(config, workdir, ctx, ds, state, on_epoch_end=hook)

  monkeypatch.setattr(driver, "fit", fit)
  return starts, epochs


def test_rewind_restores_saved_weights_bit_for_bit(tmp_path, monkeypatch):
  config = load_config(**{"prune.pruner": "imp", "train.epochs": 2, "prune.rewind_epoch": 1})
  starts, epochs = spy_on_fit(monkeypatch)
  driver.run(config, str(tmp_path))

  rewind = runs.load_tree(str(tmp_path / "rewind" / "state.npz"))
  [after_epoch_1] = [p for w, e, p in epochs if w.endswith("round_00") and e == 1]
  assert_same(rewind["params"], after_epoch_1)
  assert not np.array_equal(flat(rewind["params"])["conv1/kernel"],
                            flat(starts[0].params)["conv1/kernel"])  # it trained first

  start, masks = starts[1], flat(starts[1].masks)
  assert_same(masks, runs.load_tree(str(tmp_path / "round_01" / "masks.npz")))
  for path, w in flat(rewind["params"]).items():
    expected = w * masks[path] if path in masks else w
    np.testing.assert_array_equal(flat(start.params)[path], expected)
  assert_same(start.batch_stats, rewind["batch_stats"])
  assert int(start.step) == 0
  assert all(np.all(x == 0) for x in jax.tree_util.tree_leaves(start.opt_state))  # fresh Adam

  end = flat(final_state(config, str(tmp_path), 1).params)
  for path, m in masks.items():
    assert np.all(end[path][m == 0] == 0)
    assert np.mean(end[path][m == 1] != flat(start.params)[path][m == 1]) > 0.9


def test_finetune_continues_from_the_pruned_final_weights(tmp_path, monkeypatch):
  config = load_config(**{"prune.pruner": "imp", "prune.mode": "finetune", "train.epochs": 2})
  starts, _ = spy_on_fit(monkeypatch)
  driver.run(config, str(tmp_path))

  before = final_state(config, str(tmp_path), 0)
  start, masks = starts[1], flat(starts[1].masks)
  for path, w in flat(before.params).items():
    np.testing.assert_array_equal(flat(start.params)[path], w * masks.get(path, 1))
  assert int(start.step) == int(before.step) == 4
  assert_same(start.opt_state, before.opt_state)  # Adam moments kept
  assert not (tmp_path / "rewind").exists()
  first, second = (runs.read_jsonl(tmp_path / f"round_0{r}" / "metrics.jsonl") for r in (0, 1))
  assert first[0]["eps"] == 0 and first[0]["lr"] == pytest.approx(config.train.lr)
  # Round 1 goes on at round 0's final lr and the full eps: no lr or eps reset.
  assert [r["lr"] for r in second] == [pytest.approx(config.train.lr * config.train.lr_decay)] * 2
  assert [r["eps"] for r in second] == [config.train.eps] * 2


def test_restore_gives_each_rounds_masked_network(tmp_path):
  config = load_config(**{"prune.pruner": "imp"})
  driver.run(config, str(tmp_path))
  assert runs.list_rounds(str(tmp_path)) == [0, 1]
  model, variables, masks, saved = runs.restore(str(tmp_path), round=1, slot="last")
  assert saved.prune.pruner == "imp" and saved.prune.rate == 0.2
  assert_same(masks, runs.load_tree(str(tmp_path / "round_01" / "masks.npz")))
  assert_same(variables["params"], final_state(config, str(tmp_path), 1).params)
  assert prune.remaining_fraction(masks) == pytest.approx(0.8, abs=1 / CONV_WEIGHTS)
  assert_same(runs.restore(str(tmp_path), slot="last")[2], masks)  # default: the last round
  with pytest.raises(runs.RunError, match="round 5 is not finished; finished rounds: \\[0, 1\\]"):
    runs.restore(str(tmp_path), round=5)


def test_one_shot_prunes_the_final_sparsity_at_once(tmp_path):
  config = load_config(**{"prune.pruner": "imp", "prune.mode": "one_shot", "prune.rounds": 3})
  rows = driver.run(config, str(tmp_path))
  assert [r["round"] for r in rows] == [0, 1]
  removed = round((1 - 0.8 ** 3) * CONV_WEIGHTS)
  assert rows[1]["remain_ratio"] == (CONV_WEIGHTS - removed) / CONV_WEIGHTS


# --- kill -9 and resume --------------------------------------------------------------------

KILL_ARGS = {"train.epochs": 2, "prune.rounds": 2,
             "prune.rewind_epoch": 1}


def test_killed_run_resumes_to_identical_masks_and_metrics(tmp_path):
  ref, killed = tmp_path / "ref", tmp_path / "killed"
  config = load_config(**{"prune.pruner": "tp", **KILL_ARGS})
  driver.run(config, str(ref))

  args = [f"--config.{k}={v}" for k, v in {**TINY, **KILL_ARGS}.items()]
  proc = subprocess.Popen(
      [sys.executable, "-m", "jaxprune.experiments.digits", f"--workdir={killed}",
       "--config=configs/digits.py:prune_smoke", "--pruner=tp", *args],
      cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while not (killed / "round_01" / "checkpoints" / "last" / "1").is_dir():
    assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / "round_02" / "summary.json").exists()
  driver.run(config, str(killed))  # the same command, run again

  strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_time_s")} for r in rows]
  assert strip(runs.read_jsonl(killed / "summary.jsonl")) == strip(runs.read_jsonl(ref / "summary.jsonl"))
  for r in range(3):
    assert_same(runs.load_tree(str(ref / f"round_{r:02d}" / "masks.npz")),
                runs.load_tree(str(killed / f"round_{r:02d}" / "masks.npz")))
  assert_same(final_state(config, str(ref), 2), final_state(config, str(killed), 2))


# --- bad input -----------------------------------------------------------------------------

def test_unknown_pruner_on_the_command_line_lists_valid_ones(tmp_path):
  workdir = tmp_path / "run"
  out = subprocess.run(
      [sys.executable, "-m", "jaxprune.experiments.digits", f"--workdir={workdir}",
       "--pruner=magnitude"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2
  assert "unknown pruner 'magnitude'; valid: " + ", ".join(sorted(prune.PRUNERS)) in out.stderr
  assert not workdir.exists()


@pytest.mark.parametrize("overrides,message", [
    ({"prune.rate": 1.0}, "prune.rate must lie in (0, 1)"),
    ({"prune.rounds": 0}, "prune.rounds must be >= 1"),
    ({"prune.mode": "lottery"}, "unknown prune.mode 'lottery'"),
    ({"prune.rewind_epoch": 1}, "prune.rewind_epoch (1) must be < train.epochs (1)"),
    ({"prune.pruner": "slim", "prune.include_dense": True}, "unstructured pruners only"),
])
def test_bad_prune_config_is_rejected_before_anything_is_written(tmp_path, overrides, message):
  with pytest.raises(ConfigError) as e:
    driver.run(load_config(**overrides), str(tmp_path / "run"))
  assert message in str(e.value)
  assert not (tmp_path / "run").exists()


def test_pruner_defaults_fill_rate_and_regulariser_but_keep_explicit_values():
  c = driver.resolve_config(load_config(**{"prune.pruner": "slim"}))
  assert c.prune.rate == 0.11 and c.train.slim_l1 == 1e-4
  c = driver.resolve_config(load_config(**{"train.nrs_weight": 1e-3, "prune.rate": 0.3}),
                            pruner="imp_nrs")
  assert c.prune.pruner == "imp_nrs" and c.prune.rate == 0.3 and c.train.nrs_weight == 1e-3
