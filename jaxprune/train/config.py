"""Validation of the config's `train` and `eval` sections (with the data and model keys
they depend on), before anything is written. Defaults live in `jaxprune.config`."""
from __future__ import annotations

from jaxprune import data, models
from jaxprune.data.config import problems as data_problems
from jaxprune.errors import ConfigError
from jaxprune.models.config import problems as model_problems
from jaxprune.registry import unknown

OPTIMIZERS = ("adam", "sgd")


def problems(c) -> list[str]:
  """Every problem of the data, model, train and eval keys of `c`."""
  from jaxprune import bounds
  from jaxprune.train import losses
  from jaxprune.train.schedules import EPS_SCHEDULES
  t, out = c.train, data_problems(c) + model_problems(c)
  if t.mode not in losses.LOSSES:
    out.append(unknown("train.mode", t.mode, losses.LOSSES))
  if not t.eps >= 0:
    out.append(f"train.eps must be >= 0, got {t.eps}")
  for key in ("epochs", "batch_size"):
    if not t[key] >= 1:
      out.append(f"train.{key} must be >= 1, got {t[key]}")
  for key in ("steps_per_epoch", "num_train", "weight_decay", "grad_clip", "rs_weight",
              "nrs_weight", "slim_l1", "gradalign_weight"):
    if not t[key] >= 0:
      out.append(f"train.{key} must be >= 0, got {t[key]}")
  if not t.lr > 0:
    out.append(f"train.lr must be > 0, got {t.lr}")
  if t.augment not in data.AUGMENTATIONS:
    out.append(unknown("train.augment", t.augment, data.AUGMENTATIONS))
  if t.optimizer not in OPTIMIZERS:
    out.append(unknown("train.optimizer", t.optimizer, OPTIMIZERS))
  if t.eps_schedule not in EPS_SCHEDULES:
    out.append(unknown("train.eps_schedule", t.eps_schedule, EPS_SCHEDULES))
  if t.eps_start < 1 or t.eps_length < 1:
    out.append("train.eps_start and train.eps_length must be >= 1 (epochs count from 1)")
  if not 0 <= t.eps_mid <= 1 or not 0 <= t.kappa_end <= 1:
    out.append("train.eps_mid and train.kappa_end must lie in [0, 1]")
  e = c.eval
  if not e.num_test >= 1 or not e.batch_size >= 1:
    out.append("eval.num_test and eval.batch_size must be >= 1")
  if not 0 <= e.crown_num_test <= e.num_test:
    out.append(f"eval.crown_num_test must lie in [0, eval.num_test={e.num_test}], "
               f"got {e.crown_num_test}")
  if not e.crown_every >= 1:
    out.append(f"eval.crown_every must be >= 1, got {e.crown_every}")
  for key in ("pgd_restarts", "pgd_steps"):
    if not e[key] >= 0:
      out.append(f"eval.{key} must be >= 0, got {e[key]}")
  for m in e.methods:
    if m not in bounds.METHODS:
      out.append("eval.methods: " + unknown("bound method", m, bounds.METHODS))
  return out


def dataset_problems(c, ds: data.Dataset, num_devices: int) -> list[str]:
  """Problems only the loaded dataset and the devices reveal (sizes, divisibility)."""
  t, out = c.train, []
  n_train = min(t.num_train, len(ds.x_train)) if t.num_train else len(ds.x_train)
  if t.num_train > len(ds.x_train):
    out.append(f"train.num_train ({t.num_train}) exceeds the {len(ds.x_train)} training "
               f"images of {ds.name}")
  if t.batch_size > n_train:
    out.append(f"train.batch_size ({t.batch_size}) exceeds the {n_train} training images")
  if t.batch_size % num_devices:
    out.append(f"train.batch_size ({t.batch_size}) is not divisible by the {num_devices} "
               "devices")
  if c.eval.num_test > len(ds.x_test):
    out.append(f"eval.num_test ({c.eval.num_test}) exceeds the {len(ds.x_test)} test images "
               f"of {ds.name}")
  return out


def raise_if(found: list[str]) -> None:
  if found:
    raise ConfigError("invalid config: " + "; ".join(found))


def validate(c) -> None:
  """ConfigError naming every problem of the keys training reads."""
  raise_if(problems(c))
