"""FashionMNIST, CNN-7L (1 input channel, Dense(1152,100)), CROWN-IBP at eps 0.1.

    python -m jaxprune.experiments.fashion_mnist --workdir=runs/fmnist
    python -m jaxprune.experiments.fashion_mnist --workdir=runs/fmnist_ibp \
        --config=configs/fashion_mnist.py:ibp_cpu --config.data_dir=../shared/data/fashion-mnist

Full run: 200 epochs (hours on one GPU). `ibp_cpu`: IBP training sized for a
2-core CPU, about 30 minutes. `crown_ibp_cpu`: the same with CROWN-IBP
(loss fusion) and NRSLoss 0.01 on 16k images, with per-epoch CROWN-verified
accuracy on 20 test images, 12 minutes measured. `smoke`: one short epoch,
about a minute. `imp_nrs_cpu`: IMP+NRS pruning (`--pruner=imp_nrs` is its
default) with IBP training on 16k training images, round 0 and 3 pruned rounds
of 4 epochs (remain 0.8^3 = 51 %), CROWN-verified accuracy on 40 test images
at the end of each round; 37 minutes measured on an idle 2-core CPU:

    python -m jaxprune.experiments.fashion_mnist --workdir=runs/fmnist_imp_nrs \
        --config=configs/fashion_mnist.py:imp_nrs_cpu --config.data_dir=../shared/data/fashion-mnist
"""
from jaxprune.config import base_config, smoke

PRESETS = {
    "ibp_cpu": "IBP training sized for a 2-core CPU (3 epochs, about 30 minutes)",
    "crown_ibp_cpu": "CROWN-IBP + NRSLoss 0.01 on 16k images, CROWN-verified accuracy per epoch",
    "imp_nrs_cpu": "IMP+NRS pruning: round 0 and 3 pruned rounds of 4 epochs (51 % remain)",
    "smoke": "one short epoch on 512 images",
}


def get_config(preset: str = ""):
  if preset and preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
  c = base_config()
  c.dataset = "fashion_mnist"
  c.model = "cnn7l"
  c.train.augment = "crop_flip"  # as the paper's data loaders
  c.train.eps = 0.1
  c.eval.num_test = 200
  if preset in ("ibp_cpu", "crown_ibp_cpu"):
    # 3 epochs (~1400 steps): eps ramps over the first two, the clean loss keeps
    # weight 0.5 (IBP's kappa), lr x0.1 for the last epoch; no augmentation.
    c.train.mode = "ibp"
    c.train.epochs = 3
    c.train.augment = "none"
    c.train.kappa_end = 0.5
    c.train.eps_schedule = "smoothed"
    c.train.eps_start, c.train.eps_length, c.train.eps_mid = 1, 2, 0.25
    c.train.lr_milestones = (2,)
    c.eval.num_test = 1000
  if preset == "crown_ibp_cpu":
    # The same schedule with CROWN-IBP (loss fusion) + NRSLoss 0.01 on 16k images, and
    # CROWN-verified accuracy on the first 20 test images every epoch (~5 s per image).
    c.train.mode, c.train.nrs_weight, c.train.num_train = "crown_ibp", 0.01, 16000
    c.eval.crown_num_test = 20
  if preset == "imp_nrs_cpu":
    c.train.mode = "ibp"
    c.train.num_train = 16000
    c.train.epochs = 4
    c.train.weight_decay = 0.0  # the paper's RS/NRS runs
    c.train.eps_schedule = "smoothed"
    c.train.eps_start, c.train.eps_length, c.train.eps_mid = 1, 3, 0.25
    c.train.lr_milestones = (3,)
    c.train.augment = "none"
    c.eval.num_test = 1000
    c.eval.crown_num_test, c.eval.crown_every = 40, 4  # ~5 s per image: last epochs only
    c.prune.pruner, c.prune.rounds, c.prune.rewind_epoch = "imp_nrs", 3, 1
  if preset == "smoke":
    smoke(c)
  return c
