"""Iterative pruning: train, prune, rewind (or finetune), retrain; resumable after kill -9.

    rows = jaxprune.prune.driver.run(config, workdir)   # config.prune.pruner, .rounds, ...
    python -m jaxprune.experiments.digits --pruner=imp --workdir=runs/imp \\
        --config=configs/digits.py:prune_smoke

Round 0 trains the dense network; each of the `prune.rounds` rounds after it
scores the *final* weights of the previous round (as the paper's code does),
prunes `rate` of what remains, and retrains. Every round trains with the
pruner's regulariser (`Pruner.train_weights()`, e.g. NRSLoss 0.01 for
imp_nrs) unless the config already sets that weight.

Modes (`prune.mode`):
  rewind    surviving weights (and BN statistics) go back to the rewind point,
            the weights after `rewind_epoch` epochs of round 0 (0: the initial
            ones); optimizer, lr and eps schedules restart from step 0.
  finetune  the paper's ablation (B.2): keep weights, BN statistics and the
            optimizer state; "no lr reset" means rounds >= 1 train at the lr
            round 0 ended with and at the full eps (constant schedules), so
            each round continues where the previous one stopped.
  one_shot  one pruning step to the final sparsity 1 - (1 - rate)^rounds
            after round 0, then one rewound retraining (round 1 is the last).

Data-driven scorers (snip, tp, hydra) use the training mode's loss at the
full eps (BN in train mode, the previous round's running statistics) on the
first unaugmented training batches of epoch 0's shuffle. Structured runs keep
one mask tree shape (conv bias and BN entries included) from round 0 on.

Layout of `workdir` (`jaxprune.runs`): config.json (the resolved config),
rewind/state.npz, summary.jsonl (one row per finished round) and round_NN/
with masks.npz, checkpoints/{last,best}, metrics.jsonl and summary.json: the
remain ratio of the prunable kernels and the test metrics of the round's best
epoch (as `fit` selects it) and of its last (`last_*`), with the number of
test images each used; structured rows add the channel remain ratio and the
compressed network's conv widths and parameter count. Every file is written
atomically; a directory holding another config is refused (`runs.open_run`).
A round is finished when its summary.json exists; a round's mask is a
deterministic function of the previous round's last checkpoint and the seed,
so a killed run started again with the same command ends with the masks and
metrics of an uninterrupted one.
"""
from __future__ import annotations

import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxprune import data, prune, runs
from jaxprune.models import apply_masks, count_params
from jaxprune.prune import config as prune_config
from jaxprune.prune.pruners import Pruner
from jaxprune.registry import lookup
from jaxprune.runs import load_tree, round_dir, save_tree
from jaxprune.train import config as train_config
from jaxprune.train import losses, schedules
from jaxprune.train.loop import accuracy_text, epochs_done, fit, make_context, prepare, start_line
from jaxprune.train.state import TrainState, init_state, make_optimizer

HYDRA_SCORE = prune.get("hydra").score


def validate(c) -> None:
  """ConfigError naming every problem of the keys the pruning driver reads."""
  train_config.raise_if(train_config.problems(c) + prune_config.problems(c, pruning=True))


def resolve_config(config, pruner: str | None = None):
  """A validated copy with `pruner` (if given), its default rate and its regulariser set."""
  c = config.copy_and_resolve_references()
  if pruner is not None:
    c.prune.pruner = pruner
  validate(c)
  p = prune.get(c.prune.pruner)
  if c.prune.rate is None:
    c.prune.rate = p.rate
  for field, weight in p.train_weights().items():
    if not c.train[field]:
      c.train[field] = weight
  return c


def num_rounds(config) -> int:
  """Index of the last round: one retraining for one_shot, `prune.rounds` otherwise."""
  return 1 if config.prune.mode == "one_shot" else config.prune.rounds


def run(config, workdir: str, pruner: str | None = None, overwrite: bool = False,
        round_hook=None) -> list[dict]:
  """All rounds (skipping finished ones); returns the summary rows.

  `pruner` overrides config.prune.pruner. The config, the data and the run
  directory are checked before anything is written; a directory holding
  another config is refused (RunError) unless `overwrite`. `round_hook(r)`,
  called once round r is trained, returns more fields for its summary row
  (the CLI verifies each round with it; a later stage, so it is passed in).
  """
  config = resolve_config(config, pruner)
  p = prune.get(config.prune.pruner)
  ds, action = prepare(config, workdir, overwrite)
  ctx = make_context(config, ds)
  state0 = initial_state(config, ctx, ds, p)
  total = num_rounds(config) + 1
  resumed = ""
  if action == "resume":
    finished = runs.list_rounds(workdir)
    resumed = f"{len(finished)} of {total} rounds finished"
    if len(finished) < total:
      resumed += (f", round {len(finished)} at epoch "
                  f"{epochs_done(round_dir(workdir, len(finished)))}/{config.train.epochs}")
  runs.open_run(workdir, config, overwrite)
  print(start_line(workdir, config, action, resumed), flush=True)
  rows = []
  for r in range(total):
    summary = os.path.join(round_dir(workdir, r), runs.ROUND_SUMMARY)
    if os.path.exists(summary):
      rows.append(runs.read_json(summary))
    else:
      rows.append(run_round(config, workdir, ctx, ds, p, state0, r))
      if round_hook is not None:
        rows[-1].update(round_hook(r))
      runs.write_json(summary, rows[-1])
    runs.write_jsonl(os.path.join(workdir, runs.SUMMARY), rows)
  print(end_summary(workdir, rows), flush=True)
  return rows


def best_round(rows: list[dict]) -> dict:
  """The round with the highest complete-verification accuracy when rounds were verified
  (the paper's measure), else the highest score on the metric `fit` selected by."""
  key = "verified_acc" if all(row.get("verified_acc") is not None for row in rows) else None
  return max(rows, key=lambda row: (row.get(key or row["selected_by"]) or 0.0, -row["round"]))


def end_summary(workdir: str, rows: list[dict]) -> str:
  """A table of the rounds, the best one, and where the results are."""
  metric = rows[0]["selected_by"]
  lines = [f"done: {len(rows)} rounds of {rows[0]['pruner']} (round 0 dense); per round, its "
           f"best epoch (selected by {metric}):"]
  for row in rows:
    lines.append(f"  round {row['round']:2d}  remain {100 * row['remain_ratio']:5.1f} %  "
                 f"epoch {row['best_epoch']}: {accuracy_text(row)}")
  best, workdir = best_round(rows), os.path.abspath(workdir)
  by = "verified_acc" if best.get("verified_acc") is not None else metric
  lines.append(f"best round: {best['round']} (remain {100 * best['remain_ratio']:.1f} %, "
               f"by {by})")
  lines.append(f"results: {os.path.join(workdir, runs.SUMMARY)} (one line per round), "
               f"{round_dir(workdir, 0)[:-2]}NN/ (checkpoints, masks, metrics)")
  return "\n".join(lines)


def initial_state(config, ctx: losses.Context, ds, pruner: Pruner) -> TrainState:
  """Round 0's state.

  Structured runs get their full mask tree (conv bias, BN) from the start, so
  its shape, the compiled step and the checkpoints match across rounds.
  """
  include = ("conv", "dense") if config.prune.include_dense else ("conv",)
  state = init_state(ctx.model, ds.input_shape, make_optimizer(config.train, 1), config.seed,
                     mask_include=include)
  if pruner.kind == "structured":
    state = state.replace(masks=prune.channel_masks(prune.channel_view(state.masks), state.masks,
                                                    state.params, ctx.model.layers))
  return state


def run_round(config, workdir: str, ctx, ds, pruner: Pruner, state0: TrainState, r: int) -> dict:
  """Train round r (resuming inside it) and return its summary row."""
  rdir = round_dir(workdir, r)
  masks_path = os.path.join(rdir, runs.MASKS)
  rewind_path = os.path.join(workdir, runs.REWIND)
  rewinds = config.prune.mode != "finetune"
  hook = None
  if r == 0:
    start = state0
    if rewinds:
      hook = rewind_hook(rewind_path, config.prune.rewind_epoch, start)
  else:
    prev = runs.restore_state(round_dir(workdir, r - 1), "last", state0)[0]
    masks = (load_tree(masks_path) if os.path.exists(masks_path)
             else next_masks(config, ctx, ds, pruner, prev, r))
    start = (rewound_state(config, load_tree(rewind_path), masks, state0, r) if rewinds
             else prev.replace(params=apply_masks(prev.params, masks), masks=masks))
  if not os.path.exists(masks_path):
    save_tree(masks_path, start.masks)
  state, result = fit(round_config(config, r), rdir, ctx, ds, start, on_epoch_end=hook)
  return summary_row(ctx, pruner, r, state, result, rdir)


def rewind_hook(path: str, rewind_epoch: int, state0: TrainState):
  """Saves the rewind point: now (epoch 0: the initial weights) or from round 0's hook."""
  point = lambda s: {"params": s.params, "batch_stats": s.batch_stats}
  if rewind_epoch == 0:
    if not os.path.exists(path):
      save_tree(path, point(state0))
    return None

  def hook(epoch: int, state: TrainState) -> None:
    if epoch == rewind_epoch:
      save_tree(path, point(state))

  return hook


def rewound_state(config, rewind: dict, masks, state0: TrainState, r: int) -> TrainState:
  """The rewind point under the new mask, with a fresh optimizer at step 0."""
  params = apply_masks(rewind["params"], masks)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=rewind.get("batch_stats", {}),
                    opt_state=make_optimizer(config.train, 1).init(params), masks=masks,
                    key=jax.random.fold_in(state0.key, r))


def round_config(config, r: int):
  """Finetune rounds >= 1 keep round 0's final lr and the full eps (see the module doc)."""
  if r == 0 or config.prune.mode != "finetune":
    return config
  c = config.copy_and_resolve_references()
  t = c.train
  t.lr = float(schedules.lr_schedule(t.lr, t.lr_milestones, t.lr_decay, 1)(t.epochs - 1))
  t.lr_milestones, t.eps_schedule = (), "constant"
  return c


def next_masks(config, ctx, ds, pruner: Pruner, prev: TrainState, r: int):
  """Round r's mask from the previous round's final state (deterministic in the seed)."""
  pc = config.prune
  rate = 1 - (1 - pc.rate) ** pc.rounds if pc.mode == "one_shot" else pc.rate
  prune_key, loss_key = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(config.seed), r))
  n = pc.hydra_steps if pruner.score is HYDRA_SCORE else pc.score_batches
  return prune.prune_step(
      pruner, prev.params, prev.masks, rate=rate, scope=pc.scope, key=prune_key,
      loss_fn=score_loss(config, ctx, prev.batch_stats, loss_key),
      batches=training_batches(config, ds, n), layers=ctx.model.layers,
      min_channels=pc.min_channels, hydra=prune.HydraConfig(steps=pc.hydra_steps))


def score_loss(config, ctx, batch_stats, key):
  """loss_fn(params, masks, batch) of the training mode at the full eps, BN in train mode."""
  t = config.train
  eps, kappa = t.eps, schedules.kappa_at(t, t.eps)
  ctx, loss = losses.loss_at_eps_max(ctx, t.mode) or (ctx, lookup(losses.LOSSES, t.mode, "training mode"))
  return lambda params, masks, batch: loss(ctx, params, batch_stats, masks, batch, eps, kappa,
                                           key)[0]


def training_batches(config, ds, n: int):
  """The first `n` unaugmented training batches (epochs 0, 1, ... of the training shuffle).

  A generator: pruners that score no data never build them.
  """
  t = config.train
  x, y = ds.x_train, ds.y_train
  if t.num_train:
    x, y = x[:t.num_train], y[:t.num_train]
  stream = itertools.chain.from_iterable(
      data.batches(x, y, t.batch_size, config.seed, e) for e in itertools.count())
  return ((jnp.asarray(a), jnp.asarray(b)) for a, b in itertools.islice(stream, n))


def summary_row(ctx, pruner: Pruner, r: int, state: TrainState, result: dict, rdir: str) -> dict:
  """Round r's remain ratio and its best-epoch test metrics (plus the last epoch's).

  A metric the best epoch did not evaluate (CROWN runs every `eval.crown_every`
  epochs) is None there; the last epoch always has every metric.
  """
  best, last = result["best"], result["last"]
  keys = [k for k in last if k.startswith("test_") or k.endswith(
      ("instability", "instability_unstable", "unstable_ratio", "num_test"))]
  rows = runs.read_jsonl(os.path.join(rdir, runs.METRICS))
  train_time = sum(row["epoch_time_s"] for row in rows)
  row = {"round": r, "pruner": pruner.name, "remain_ratio": prune.remaining_fraction(state.masks),
         "best_epoch": best["epoch"], "selected_by": best["metric"],
         **{k: best.get(k) for k in keys}, **{f"last_{k}": last[k] for k in keys},
         "train_time_s": train_time}
  if pruner.kind == "structured":
    alive = prune.channel_view(state.masks)
    layers, variables = prune.compress(
        ctx.model.layers, {"params": state.params, "batch_stats": state.batch_stats}, state.masks)
    row["channel_remain_ratio"] = (sum(int(a.sum()) for a in alive.values())
                                   / sum(a.size for a in alive.values()))
    row["channels"] = {l.name: l.features for l in layers if l.op == "conv"}
    row["compressed_params"] = count_params(variables["params"])
  return row
