"""Default configuration and its validation (run before anything is written)."""
from __future__ import annotations

import ml_collections

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
  t.kappa_end = 0.0  # clean-loss weight once eps reaches its maximum
  t.rs_weight = 0.0
  t.nrs_weight = 0.0
  t.slim_l1 = 0.0
  t.fgsm_step = 1.25
  t.gradalign_weight = 0.2

  e = c.eval = ml_collections.ConfigDict()
  e.num_test = 1000
  e.batch_size = 200
  e.methods = ("ibp",)

  d = c.distributed = ml_collections.ConfigDict()
  d.coordinator_address = ""
  d.num_processes = 1
  d.process_id = 0
  return c


def validate_config(c) -> None:
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
  if not c.eval.num_test >= 1 or not c.eval.batch_size >= 1:
    problems.append("eval.num_test and eval.batch_size must be >= 1")
  for m in c.eval.methods:
    if m not in bounds.METHODS:
      problems.append(f"eval.methods: {m!r} is unknown; valid: {sorted(bounds.METHODS)}")
  if problems:
    raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
