"""scikit-learn's embedded 8x8 digits: the whole pipeline offline, on any machine.

    python -m jaxprune.experiments.digits --workdir=runs/digits
    python -m jaxprune.experiments.digits --workdir=runs/digits_imp \
        --config=configs/digits.py:prune_smoke [--pruner=NAME]

Default: a small CNN (`cnn_tiny`), IBP training at eps 0.05 for 30 epochs,
about 20 seconds on a 2-core CPU (measured: 91 % clean, 75 % IBP-verified on
the 360 test digits). `smoke`: 2 epochs, a few seconds after compile.
`prune_smoke`: IMP (or --pruner=NAME), round 0 and 2 pruned rounds of 4 epochs each.
"""
from jaxprune.config import base_config

PRESETS = {
    "smoke": "2 epochs: the whole pipeline in seconds after compiling",
    "prune_smoke": "IMP (or --pruner=NAME): round 0 and 2 pruned rounds of 4 epochs",
}


def get_config(preset: str = ""):
  c = base_config()
  c.dataset = "digits"
  c.model = "cnn_tiny"
  c.train.mode = "ibp"
  c.train.eps = 0.05
  c.train.epochs = 30
  c.train.batch_size = 32
  c.train.lr = 3e-3
  c.train.eps_schedule = "linear"
  c.train.eps_start, c.train.eps_length = 3, 15
  c.train.lr_milestones = (25,)
  c.eval.num_test = 360
  c.eval.batch_size = 120
  if preset == "smoke":
    c.train.epochs, c.train.eps_start, c.train.eps_length = 2, 1, 1
  elif preset == "prune_smoke":
    c.train.epochs, c.train.eps_start, c.train.eps_length = 4, 2, 2
    c.prune.pruner, c.prune.rounds, c.prune.rewind_epoch = "imp", 2, 1
  elif preset:
    raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
  return c
