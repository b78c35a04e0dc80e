"""Default configuration and its validation (run before anything is written)."""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from jaxprune import data, models


class ConfigError(ValueError):
  """A bad configuration value; the message names every problem found."""


def base_config() -> ml_collections.ConfigDict:
  """The paper's defaults (reference.md, "Training defaults"); dataset configs override."""
  c = ml_collections.ConfigDict()
  c.dataset = "cifar10"
  c.data_dir = ""  # empty: $JAXPRUNE_DATA, then ~/.cache/jaxprune/<dataset>
  c.model = "cnn7l"
  c.seed = 100

  t = c.train = ml_collections.ConfigDict()
  t.mode = "crown_ibp"  # standard | ibp | crown_ibp | fgsm_gradalign
  t.epochs = 200
  t.batch_size = 128
  t.steps_per_epoch = 0  # 0: the whole training set
  t.num_train = 0  # 0: all training images
  t.augment = "none"  # none | crop | crop_flip (the paper's code: crop_flip; SVHN: crop)
  t.optimizer = "adam"
  t.lr = 1e-3
  t.momentum = 0.9
  t.weight_decay = 1e-5
  t.lr_milestones = (140, 170)
  t.lr_decay = 0.1
  t.grad_clip = 8.0
  t.eps = 2 / 255
  t.eps_schedule = "smoothed"  # smoothed | linear | constant
  t.eps_start = 11  # 1-based epoch where the ramp starts
  t.eps_length = 81  # epochs of the ramp
  t.eps_mid = 0.4
  t.loss_fusion = True  # crown_ibp: bound the cross-entropy directly (auto_LiRPA's fusion)
  t.kappa_end = 0.0  # clean-loss weight once eps reaches its maximum
  t.rs_weight = 0.0
  t.nrs_weight = 0.0
  t.slim_l1 = 0.0
  t.fgsm_step = 1.25
  t.gradalign_weight = 0.2

  e = c.eval = ml_collections.ConfigDict()
  e.num_test = 1000
  e.batch_size = 200
  e.methods = ("ibp",)  # bound methods on the first num_test images (the first selects "best")
  e.crown_num_test = 0  # > 0: also CROWN-verified accuracy on the first crown_num_test images
  e.crown_every = 1  # ... every this many epochs and at the last (CROWN costs seconds per image)

  p = c.prune = ml_collections.ConfigDict()  # the pruning driver (jaxprune.prune.driver)
  p.pruner = "dense"  # a name in jaxprune.prune.PRUNERS; "dense" alone: a plain training run
  p.rounds = 16  # prune-and-retrain rounds after the dense round 0 (0.8^16 = 2.8 % remain)
  p.rate = config_dict.placeholder(float)  # None: the pruner's (0.2 weights, 0.11 channels)
  p.mode = "rewind"  # rewind | finetune | one_shot
  p.rewind_epoch = 8  # rewind to the weights after this many epochs of round 0 (0: init)
  p.scope = "global"  # global | layerwise
  p.include_dense = False  # unstructured pruners: prune dense kernels too
  p.score_batches = 1  # training batches scored by snip (first only) and tp
  p.hydra_steps = 100  # HYDRA score-optimisation steps (one training batch each)
  p.min_channels = 1  # structured pruners keep at least this many channels per conv

  d = c.distributed = ml_collections.ConfigDict()
  d.coordinator_address = ""
  d.num_processes = 1
  d.process_id = 0
  return c


PRUNE_MODES = ("rewind", "finetune", "one_shot")


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `smoke` preset of every dataset: one short epoch on 512 images (about a minute)."""
  c.train.epochs, c.train.num_train, c.train.batch_size = 1, 512, 64
  c.train.eps_schedule, c.eval.num_test = "linear", 100
  c.train.eps_start, c.train.eps_length = 1, 1
  return c


def validate_config(c, pruning: bool = False) -> None:
  """Raise ConfigError naming every bad value; `pruning`: the pruning driver will run."""
  from jaxprune import bounds
  from jaxprune.train import losses
  t, problems = c.train, []
  if c.dataset not in data.NAMES:
    problems.append(f"dataset {c.dataset!r} is unknown; valid: {sorted(data.NAMES)}")
  if c.model not in models.REGISTRY:
    problems.append(f"model {c.model!r} is unknown; valid: {sorted(models.REGISTRY)}")
  if t.mode not in losses.LOSSES:
    problems.append(f"train.mode {t.mode!r} is unknown; valid: {sorted(losses.LOSSES)}")
  if not t.eps >= 0:
    problems.append(f"train.eps must be >= 0, got {t.eps}")
  for key in ("epochs", "batch_size"):
    if not t[key] >= 1:
      problems.append(f"train.{key} must be >= 1, got {t[key]}")
  for key in ("steps_per_epoch", "num_train", "weight_decay", "grad_clip", "rs_weight",
              "nrs_weight", "slim_l1", "gradalign_weight"):
    if not t[key] >= 0:
      problems.append(f"train.{key} must be >= 0, got {t[key]}")
  if not t.lr > 0:
    problems.append(f"train.lr must be > 0, got {t.lr}")
  if t.augment not in data.AUGMENTATIONS:
    problems.append(f"train.augment {t.augment!r} is unknown; valid: {list(data.AUGMENTATIONS)}")
  if t.optimizer not in ("adam", "sgd"):
    problems.append(f"train.optimizer {t.optimizer!r} is unknown; valid: ['adam', 'sgd']")
  from jaxprune.train.schedules import EPS_SCHEDULES
  if t.eps_schedule not in EPS_SCHEDULES:
    problems.append(f"train.eps_schedule {t.eps_schedule!r} is unknown; "
                    f"valid: {sorted(EPS_SCHEDULES)}")
  if t.eps_start < 1 or t.eps_length < 1:
    problems.append("train.eps_start and train.eps_length must be >= 1 (1-based epochs)")
  if not 0 <= t.eps_mid <= 1 or not 0 <= t.kappa_end <= 1:
    problems.append("train.eps_mid and train.kappa_end must lie in [0, 1]")
  if not c.eval.crown_num_test >= 0:
    problems.append(f"eval.crown_num_test must be >= 0, got {c.eval.crown_num_test}")
  if not c.eval.crown_every >= 1:
    problems.append(f"eval.crown_every must be >= 1, got {c.eval.crown_every}")
  if not c.eval.num_test >= 1 or not c.eval.batch_size >= 1:
    problems.append("eval.num_test and eval.batch_size must be >= 1")
  for m in c.eval.methods:
    if m not in bounds.METHODS:
      problems.append(f"eval.methods: {m!r} is unknown; valid: {sorted(bounds.METHODS)}")
  problems += prune_problems(c, pruning)
  if problems:
    raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def prune_problems(c, pruning: bool) -> list[str]:
  """Problems of `c.prune`; the rewind epoch is checked only when the driver runs."""
  from jaxprune import prune
  from jaxprune.prune.select import SCOPES
  p, problems = c.prune, []
  if p.pruner not in prune.PRUNERS:
    problems.append(f"prune.pruner {p.pruner!r} is unknown; valid: {sorted(prune.PRUNERS)}")
  elif p.include_dense and prune.PRUNERS[p.pruner].kind == "structured":
    problems.append("prune.include_dense applies to unstructured pruners only")
  if p.rate is not None and not 0 < p.rate < 1:
    problems.append(f"prune.rate must lie in (0, 1), got {p.rate}")
  if p.mode not in PRUNE_MODES:
    problems.append(f"prune.mode {p.mode!r} is unknown; valid: {list(PRUNE_MODES)}")
  if p.scope not in SCOPES:
    problems.append(f"prune.scope {p.scope!r} is unknown; valid: {list(SCOPES)}")
  for key in ("rounds", "score_batches", "hydra_steps", "min_channels"):
    if not p[key] >= 1:
      problems.append(f"prune.{key} must be >= 1, got {p[key]}")
  if not p.rewind_epoch >= 0:
    problems.append(f"prune.rewind_epoch must be >= 0, got {p.rewind_epoch}")
  elif pruning and p.mode != "finetune" and not p.rewind_epoch < c.train.epochs:
    problems.append(f"prune.rewind_epoch ({p.rewind_epoch}) must be < train.epochs "
                    f"({c.train.epochs}): round 0 must reach the rewind point")
  return problems
