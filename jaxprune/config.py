"""The top-level config: every stage's defaults, composed validation, packaged configs.

    config = jaxprune.config.load("digits:smoke")      # a packaged name or a path[:preset]
    jaxprune.config.validate(config, pruning=True)     # ConfigError naming every problem

Each package validates its own section (`data.config`, `models.config`,
`train.config`, `prune.config`); this module composes them, so nothing below
it depends on a stage after it. Dataset configs (`configs/<name>.py`, shipped
in the wheel as `jaxprune.configs`) start from `base_config()` and describe
their presets in a `PRESETS` dict.
"""
from __future__ import annotations

import importlib.util
import os

import ml_collections
from ml_collections import config_dict

from jaxprune.errors import ConfigError

__all__ = ["ConfigError", "base_config", "smoke", "validate", "config_path", "load",
           "packaged_names", "presets"]


def base_config() -> ml_collections.ConfigDict:
  """The paper's defaults (Sec. 5.1 and its appendix); dataset configs override."""
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
  t.eps_start = 11  # epoch (counting from 1) where the ramp starts
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
  e.pgd_restarts = 1  # PGD accuracy on the num_test images at train.eps (0 of either: none),
  e.pgd_steps = 10  # ... kept cheap; it selects "best" for fgsm_gradalign (verified stays 0)

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

  v = c.verify = ml_collections.ConfigDict()  # jaxprune.verify: complete verification
  v.method = ""  # "" (the pipeline verifies nothing) | ibp | crown | alpha | bab
  v.num_samples = 200  # the first test images (the paper: 200; CIFAR10: its ERAN subset)
  v.timeout = 300.0  # seconds per sample (the paper's)
  v.eps = config_dict.placeholder(float)  # None: train.eps
  v.dataset = ""  # "": the training dataset (the paper verifies CIFAR10 on the ERAN subset)
  v.data_dir = ""
  v.slot = "best"  # the checkpoint of each stage that is verified: best | last

  d = c.distributed = ml_collections.ConfigDict()
  d.coordinator_address = ""
  d.num_processes = 1
  d.process_id = 0
  return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `smoke` preset of every dataset: one short epoch on 512 images."""
  c.train.epochs, c.train.num_train, c.train.batch_size = 1, 512, 64
  c.train.eps_schedule, c.eval.num_test = "linear", 100
  c.train.eps_start, c.train.eps_length = 1, 1
  return c


def validate(c, pruning: bool = False) -> None:
  """ConfigError naming every bad value; `pruning`: the pruning driver will run."""
  from jaxprune.prune import config as prune_config
  from jaxprune.train import config as train_config
  from jaxprune.verify import config as verify_config
  train_config.raise_if(train_config.problems(c) + prune_config.problems(c, pruning)
                        + verify_config.problems(c))


# --- packaged configs ------------------------------------------------------------------

PACKAGE = "jaxprune.configs"


def _packaged_dir() -> str:
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise ConfigError(f"the packaged configs ({PACKAGE}) are not installed")
  return list(spec.submodule_search_locations)[0]


def packaged_names() -> list[str]:
  """Names of the shipped dataset configs (digits, fashion_mnist, ...)."""
  return sorted(f[:-3] for f in os.listdir(_packaged_dir())
                if f.endswith(".py") and not f.startswith("_"))


def config_path(spec: str) -> tuple[str, str]:
  """(file path, preset) of "path[:preset]" or of a packaged "name[:preset]".

  An existing file wins; otherwise "digits" and "configs/digits.py" both name
  the packaged copy, so the repository's commands also run from a wheel.
  """
  name, _, preset = spec.partition(":")
  if os.path.isfile(name):
    return name, preset
  folder, base = os.path.split(name)
  stem = base[:-3] if base.endswith(".py") else base
  if folder in ("", "configs"):
    packaged = os.path.join(_packaged_dir(), f"{stem}.py")
    if os.path.isfile(packaged):
      return packaged, preset
  raise ConfigError(f"config {name!r} is neither a file nor a packaged config; "
                    f"packaged: {', '.join(packaged_names())}")


def _module(path: str):
  spec = importlib.util.spec_from_file_location(
      f"jaxprune_config_{os.path.basename(path)[:-3]}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def presets(spec: str) -> dict[str, str]:
  """{preset: one-line description} of a config file or packaged name."""
  return dict(getattr(_module(config_path(spec)[0]), "PRESETS", {}))


def load(spec: str) -> ml_collections.ConfigDict:
  """The ConfigDict of "path[:preset]" or "name[:preset]"; an unknown preset is a ConfigError."""
  path, preset = config_path(spec)
  mod = _module(path)
  known = getattr(mod, "PRESETS", None)
  if known is not None and preset and preset not in known:
    raise ConfigError(f"unknown preset {preset!r} for {os.path.basename(path)}; "
                      f"valid: {', '.join(known)}")
  return mod.get_config(preset)
