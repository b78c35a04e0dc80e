"""scikit-learn's embedded 8x8 digits: the whole pipeline offline, on any machine.

    python -m jaxprune.experiments.digits --workdir=runs/quickstart
    python -m jaxprune.experiments.digits --workdir=runs/digits --config=digits:ibp
    python -m jaxprune.experiments.digits --workdir=runs/digits_imp \
        --config=configs/digits.py:prune_smoke [--pruner=NAME]

Default (the quickstart): a small CNN (`cnn_tiny`), IBP training at eps 0.05
for 30 epochs, then three IMP+NRS rounds (each prunes 20 % of the remaining
conv weights, rewinds to epoch 3 and retrains), every round verified
completely (beta-CROWN branch and bound, 5 s per sample) on the first 200
test digits; a few minutes on a 2-core CPU. `ibp`: the training alone
(about 20 seconds). `smoke`: 2 epochs of training. `prune_smoke`: IMP (or
--pruner=NAME), round 0 and 2 pruned rounds of 4 epochs, no verification.
"""
from jaxprune.config import base_config

PRESETS = {
    "ibp": "IBP training alone, 30 epochs (about 20 seconds)",
    "smoke": "2 epochs of training: the command line in seconds after compiling",
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
  if not preset:  # the quickstart: prune, rewind, retrain, verify every round
    c.prune.pruner, c.prune.rounds, c.prune.rewind_epoch = "imp_nrs", 3, 3
    c.verify.method, c.verify.num_samples, c.verify.timeout = "bab", 200, 5.0
  elif preset == "smoke":
    c.train.epochs, c.train.eps_start, c.train.eps_length = 2, 1, 1
  elif preset == "prune_smoke":
    c.train.epochs, c.train.eps_start, c.train.eps_length = 4, 2, 2
    c.prune.pruner, c.prune.rounds, c.prune.rewind_epoch = "imp", 2, 1
  elif preset != "ibp":
    raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
  return c
