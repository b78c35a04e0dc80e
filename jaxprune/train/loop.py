"""The training loop: `train_and_evaluate(config, workdir)`.

Resumable exactly: the data order depends only on (seed, epoch), the PRNG key
lives in the checkpointed state, and a checkpoint is written at the end of
every epoch, so a run killed at any point and started again with the same
command ends with the same parameters as an uninterrupted one. Epochs count
from 1 everywhere (console, metrics.jsonl, checkpoints, summaries). The
directory layout and its lifecycle are `jaxprune.runs`'.
"""
from __future__ import annotations

import math
import os
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from jaxprune import bounds, data, models, runs
from jaxprune.bounds import attack
from jaxprune.models import apply_masks
from jaxprune.registry import lookup
from jaxprune.train import losses, schedules
from jaxprune.train import config as train_config
from jaxprune.train.state import TrainState, init_state, make_optimizer


class NaNLossError(FloatingPointError):
  pass


def make_context(config, ds) -> losses.Context:
  t = config.train
  return losses.Context(
      model=models.create(config.model, num_classes=ds.num_classes),
      mean=tuple(np.broadcast_to(ds.mean, (ds.input_shape[-1],)).tolist()),
      std=tuple(np.broadcast_to(ds.std, (ds.input_shape[-1],)).tolist()),
      num_classes=ds.num_classes, eps_max=t.eps, kappa_end=t.kappa_end,
      rs_weight=t.rs_weight, nrs_weight=t.nrs_weight, slim_l1=t.slim_l1,
      fgsm_step=t.fgsm_step, gradalign_weight=t.gradalign_weight,
      bound_method=losses.BOUND_METHOD.get(t.mode, "ibp"), loss_fusion=t.loss_fusion)


def make_train_step(ctx: losses.Context, loss_fn: Callable, tx,
                    at_eps_max: Optional[tuple] = None) -> Callable:
  """One jitted optimisation step; masked weights are re-zeroed after every update.

  `at_eps_max`, a (ctx, loss_fn) pair (`losses.loss_at_eps_max`), replaces the
  loss at steps whose eps reaches ctx.eps_max; it is compiled separately and
  picked on the host (a `lax.cond` inside the step slows XLA:CPU's gradient).
  """

  def build(ctx, loss_fn):
    def step(state: TrainState, x, y, eps, kappa):
      key = jax.random.fold_in(state.key, state.step)

      def f(params):
        return loss_fn(ctx, params, state.batch_stats, state.masks, (x, y), eps, kappa, key)

      (_, (batch_stats, metrics)), grads = jax.value_and_grad(f, has_aux=True)(state.params)
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = apply_masks(optax.apply_updates(state.params, updates), state.masks)
      return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                           opt_state=opt_state), metrics

    return jax.jit(step, donate_argnums=0)

  ramp = build(ctx, loss_fn)
  if at_eps_max is None:
    return ramp
  final = build(*at_eps_max)
  return lambda state, x, y, eps, kappa: (final if np.float32(eps) >= np.float32(ctx.eps_max) else ramp)(
      state, x, y, eps, kappa)


# Margins need lower bounds only; CROWN refines only the neurons its intervals leave unstable
# (~2.5x faster on trained CNN-7L; the ReLU bounds of stable neurons are then intervals).
EVAL_OPTIONS = {"crown": {"refine": "unstable", "bound_upper": False},
                "crown_ibp": {"bound_upper": False}}


def make_eval_fn(ctx: losses.Context, methods: Sequence[str],
                 pgd: Optional[tuple[int, int]] = None) -> Callable:
  """Sums over a (padded) batch: clean correct, verified per bound method, instability.

  `pgd` = (restarts, steps) also counts the correct images that PGD on the
  margins (`attack.pgd_batch`, pixel ball clipped to [0, 1]) does not flip: an
  upper bound on robust accuracy, where the verified counts are lower bounds.
  Its key is fixed, so the metric depends on the weights only.
  """

  def evaluate(params, batch_stats, masks, x, y, weight, eps):
    logits, _, _ = losses.clean_forward(ctx, params, batch_stats, masks, x, train=False)
    correct = jnp.argmax(logits, -1) == y
    out = {"clean": jnp.sum(weight * correct)}
    net = bounds.from_layers(ctx.model.layers, {"params": params, "batch_stats": batch_stats},
                             masks, bn="eval")
    if pgd is not None:
      _, worst = attack.pgd_batch(net, jnp.clip(x - eps, 0.0, 1.0), jnp.clip(x + eps, 0.0, 1.0),
                                  y, jnp.asarray(ctx.mean, x.dtype), jnp.asarray(ctx.std, x.dtype),
                                  jax.random.PRNGKey(0), restarts=pgd[0], steps=pgd[1])
      out["pgd"] = jnp.sum(weight * (correct & (worst > 0)))
    relu_bounds = None
    for method in methods:
      lower, relu_bounds = losses.certified_bounds(ctx, net, x, y, eps, method,
                                                   **EVAL_OPTIONS.get(method, {}))
      out[f"{method}_verified"] = jnp.sum(weight * bounds.verified_from_margins(lower, y))
    if relu_bounds:
      unstable, inst, inst_unstable, count = losses.instability(relu_bounds)
      out["unstable"], out["instability"] = jnp.sum(weight * unstable), jnp.sum(weight * inst)
      out["instability_unstable"] = jnp.sum(weight * inst_unstable)
      out["neurons"] = count * jnp.sum(weight)
    return out

  return jax.jit(evaluate)


def evaluate(eval_fn, state: TrainState, x, y, eps: float, batch_size: int) -> dict:
  """Run `eval_fn` over (x, y) in fixed-size padded batches; returns rates."""
  n = len(x)
  sums: dict = {}
  for i in range(0, n, batch_size):
    xb, yb = x[i:i + batch_size], y[i:i + batch_size]
    pad = batch_size - len(xb)
    w = np.concatenate([np.ones(len(xb), np.float32), np.zeros(pad, np.float32)])
    xb = np.concatenate([xb, np.repeat(xb[:1], pad, 0)]) if pad else xb
    yb = np.concatenate([yb, np.repeat(yb[:1], pad, 0)]) if pad else yb
    out = eval_fn(state.params, state.batch_stats, state.masks, xb, yb, w, eps)
    for k, v in out.items():
      sums[k] = sums.get(k, 0.0) + float(v)
  res = {f"test_{k}_acc" if k.endswith("verified") or k in ("clean", "pgd") else k: v / n
         for k, v in sums.items() if k != "neurons"}
  if "neurons" in sums:
    res["unstable_ratio"] = sums["unstable"] / max(sums["neurons"], 1.0)
    res["unstable"] = sums["unstable"] / n
    res["instability"] = sums["instability"] / n
    res["instability_unstable"] = sums["instability_unstable"] / n
  return res


def make_mesh() -> Mesh:
  return Mesh(np.array(jax.devices()), ("data",))


def resume_metrics(path: str, epochs_done: int) -> list[dict]:
  """metrics.jsonl's rows up to the checkpoint; rows past it (a kill in between) are dropped."""
  rows = runs.read_jsonl(path)
  kept = [r for r in rows if r["epoch"] <= epochs_done]
  if len(kept) != len(rows):
    runs.write_jsonl(path, kept)
  return kept


def fit(config, workdir: str, ctx: losses.Context, ds, state: TrainState,
        on_epoch_end: Optional[Callable[[int, TrainState], None]] = None
        ) -> tuple[TrainState, dict]:
  """Train `state` for config.train.epochs in `workdir`, resuming from its checkpoints.

  Returns the final state and a summary (last and best metrics). The best
  checkpoint is the one with the highest verified accuracy of the first
  eval method; clean accuracy for standard training, and PGD accuracy for
  FGSM+GradAlign (its IBP-verified accuracy stays 0; clean with PGD off).
  """
  t = config.train
  os.makedirs(workdir, exist_ok=True)
  x_train, y_train = ds.x_train, ds.y_train
  if t.num_train:
    x_train, y_train = x_train[:t.num_train], y_train[:t.num_train]
  steps_per_epoch = len(x_train) // t.batch_size
  if t.steps_per_epoch:
    steps_per_epoch = min(steps_per_epoch, t.steps_per_epoch)
  x_test, y_test = data.first_n_test(ds, config.eval.num_test)
  tx = make_optimizer(t, steps_per_epoch)
  lr_fn = schedules.lr_schedule(t.lr, t.lr_milestones, t.lr_decay, steps_per_epoch)  # for logs
  loss_fn = lookup(losses.LOSSES, t.mode, "training mode")
  train_step = make_train_step(ctx, loss_fn, tx, losses.loss_at_eps_max(ctx, t.mode))
  methods = tuple(config.eval.methods)
  e = config.eval
  pgd = (e.pgd_restarts, e.pgd_steps) if e.pgd_restarts and e.pgd_steps else None
  eval_fn = make_eval_fn(ctx, methods, pgd)
  n_crown = config.eval.crown_num_test
  crown_fn = make_eval_fn(ctx, ("crown",)) if n_crown else None
  if t.mode == "fgsm_gradalign" and pgd is not None:
    select = "test_pgd_acc"
  elif methods and t.mode not in ("standard", "fgsm_gradalign"):
    select = f"test_{methods[0]}_verified_acc"
  else:
    select = "test_clean_acc"

  mesh = make_mesh()
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  train_config.raise_if(train_config.dataset_problems(config, ds, mesh.size))
  # The step donates its state; copy once so the caller's arrays (e.g. masks) stay valid.
  state = jax.device_put(jax.tree_util.tree_map(jnp.array, state), replicated)
  ckpts = runs.checkpoints_of(workdir)
  done, best = 0, {"value": -1.0}
  if ckpts.latest_step("last") is not None:
    state, meta = ckpts.restore("last", state)
    state = jax.device_put(state, replicated)
    done, best = meta["epoch"], meta["best"]
  metrics_path = os.path.join(workdir, runs.METRICS)
  rows = resume_metrics(metrics_path, done)
  n_test = len(x_test)

  last = rows[-1] if rows else {}
  for epoch in range(done + 1, t.epochs + 1):
    t0 = time.time()
    sums, count = {}, 0
    bar = tqdm(data.batches(x_train, y_train, t.batch_size, config.seed, epoch - 1,
                            augmentation=t.augment),
               total=steps_per_epoch, desc=f"epoch {epoch}/{t.epochs}", leave=False,
               disable=None)
    for i, (xb, yb) in enumerate(bar):
      if i >= steps_per_epoch:
        break
      gstep = (epoch - 1) * steps_per_epoch + i
      eps = schedules.eps_at(t, gstep, steps_per_epoch)
      kappa = schedules.kappa_at(t, eps)
      state, metrics = train_step(state, jax.device_put(xb, sharded), jax.device_put(yb, sharded),
                                  jnp.float32(eps), jnp.float32(kappa))
      for k, v in metrics.items():
        sums[k] = sums.get(k, 0.0) + v
      count += 1
      if i % 10 == 0 or i == steps_per_epoch - 1:
        loss = float(metrics["loss"])
        if not math.isfinite(loss):
          raise NaNLossError(f"loss is {loss} at epoch {epoch}, step {i + 1} (eps={eps:.5f}); "
                             f"stopping. {_kept(workdir, epoch)}")
        bar.set_postfix(loss=f"{loss:.4f}", eps=f"{eps:.4f}")
    train_metrics = {f"train_{k}": float(v) / count for k, v in sums.items()}
    if not math.isfinite(train_metrics["train_loss"]):
      raise NaNLossError(f"loss is not finite in epoch {epoch}; stopping. "
                         f"{_kept(workdir, epoch)}")
    test = evaluate(eval_fn, state, x_test, y_test, t.eps, config.eval.batch_size)
    test["num_test"] = n_test
    if crown_fn is not None and (epoch % config.eval.crown_every == 0 or epoch == t.epochs):
      crown = evaluate(crown_fn, state, x_test[:n_crown], y_test[:n_crown], t.eps,
                       min(config.eval.batch_size, n_crown))
      test.update({"test_crown_verified_acc": crown["test_crown_verified_acc"],
                   "crown_num_test": n_crown,
                   "crown_unstable_ratio": crown["unstable_ratio"],
                   "crown_instability": crown["instability"],
                   "crown_instability_unstable": crown["instability_unstable"]})
    last = {"epoch": epoch, "eps": eps, "lr": float(lr_fn(gstep)),
            **train_metrics, **test, "epoch_time_s": time.time() - t0}
    # Log and hook before the "last" checkpoint: a run killed in between redoes this
    # epoch, and the redo rewrites both (the log drops rows past the checkpoint).
    runs.append_jsonl(metrics_path, last)
    if on_epoch_end is not None:
      on_epoch_end(epoch, state)
    value = last.get(select, 0.0)
    if value > best["value"]:
      best = {"value": value, "epoch": epoch, "metric": select, **last}
      ckpts.save("best", epoch, state, {"epoch": epoch, "best": best})
    ckpts.save("last", epoch, state, {"epoch": epoch, "best": best})
    tqdm.write(f"epoch {epoch}/{t.epochs} " + " ".join(
        f"{k}={v:.4f}" for k, v in last.items()
        if k in ("train_loss", "test_clean_acc", select, "eps", "epoch_time_s")))
  ckpts.close()
  return state, {"last": last, "best": best}


def _kept(workdir: str, epoch: int) -> str:
  """What a NaN stop in `epoch` leaves behind: the previous epoch's checkpoint, if any."""
  if epoch > 1:
    return (f"The checkpoint of epoch {epoch - 1} in "
            f"{os.path.join(workdir, runs.CHECKPOINTS, 'last')} is intact.")
  return "No checkpoint was written: it failed in the first epoch."


def maybe_initialize_distributed(config) -> None:
  d = config.get("distributed")
  if d is not None and d.num_processes > 1:
    jax.distributed.initialize(d.coordinator_address, d.num_processes, d.process_id)


def prepare(config, workdir: str, overwrite: bool = False):
  """What can still fail on bad input once the config is validated, before anything is written.

  Loads the data and checks the config against it, and checks the run
  directory (`runs.check_run`). Returns (dataset, "new" | "resume" | "overwrite").
  """
  ds = data.load(config.dataset, data_dir=config.data_dir or None)
  train_config.raise_if(train_config.dataset_problems(config, ds, jax.device_count()))
  return ds, runs.check_run(workdir, config, overwrite)


def start_line(workdir: str, config, action: str, resumed: str = "") -> str:
  """One line saying what this run is and where it writes."""
  devices = jax.devices()
  what = {"new": "new run", "overwrite": "overwriting the old run (--overwrite)",
          "resume": f"resuming ({resumed})" if resumed else "resuming"}[action]
  return (f"jaxprune: {what} in {os.path.abspath(workdir)}: dataset={config.dataset} "
          f"model={config.model} mode={config.train.mode} pruner={config.prune.pruner} "
          f"devices={len(devices)}x{devices[0].platform}")


def accuracy_text(row: dict) -> str:
  """"clean 91.1 %, ibp-verified 75.3 % on 360 test images; crown-verified 60.0 % on the
  first 20" of a metrics row (or a round's summary row)."""
  pct = lambda k: f"{100 * row[k]:.1f} %"
  parts = [f"{k[5:-4]} {pct(k)}" for k in ("test_clean_acc", "test_pgd_acc")
           if row.get(k) is not None]
  parts += [f"{k[5:-13]}-verified {pct(k)}" for k in sorted(row)
            if k.startswith("test_") and k.endswith("_verified_acc")
            and k != "test_crown_verified_acc" and row[k] is not None]
  text = ", ".join(parts) + (f" on {row['num_test']} test images" if row.get("num_test") else "")
  if row.get("test_crown_verified_acc") is not None:
    text += (f"; crown-verified {pct('test_crown_verified_acc')} on the first "
             f"{row.get('crown_num_test')}")
  if row.get("verified_acc") is not None:  # complete verification (the pipeline's hook)
    text += (f"; {row.get('verify_method', 'complete')}-verified {pct('verified_acc')}"
             + (f" on the first {row['verify_samples']}" if "verify_samples" in row else ""))
  return text


def epochs_done(workdir: str) -> int:
  """Epochs of a stage directory that are checkpointed (the resume point)."""
  with runs.checkpoints_of(workdir, ("last",)) as ckpts:
    return ckpts.latest_step("last") or 0


def train_and_evaluate(config, workdir: str, overwrite: bool = False):
  """Validate, load data, open the run directory, train (resuming) and evaluate.

  A run directory holding another config is refused (RunError) before
  anything is written; `overwrite=True` starts afresh. Prints a start line
  and an end summary; returns {"last": ..., "best": ...} metrics.
  """
  train_config.validate(config)
  ds, action = prepare(config, workdir, overwrite)
  resumed = f"{epochs_done(workdir)} of {config.train.epochs} epochs done" \
      if action == "resume" else ""
  runs.open_run(workdir, config, overwrite)
  print(start_line(workdir, config, action, resumed), flush=True)
  maybe_initialize_distributed(config)
  ctx = make_context(config, ds)
  state = init_state(ctx.model, ds.input_shape, make_optimizer(config.train, 1), config.seed)
  state, result = fit(config, workdir, ctx, ds, state)
  best, workdir = result["best"], os.path.abspath(workdir)
  print(f"done: best epoch {best['epoch']}/{config.train.epochs} (selected by "
        f"{best['metric']}): {accuracy_text(best)}\n"
        f"results: {os.path.join(workdir, runs.METRICS)} (every epoch), "
        f"{os.path.join(workdir, runs.CHECKPOINTS, 'best')} and .../last", flush=True)
  return state, result
