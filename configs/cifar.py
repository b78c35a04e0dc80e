"""CIFAR10, CNN-7L, CROWN-IBP at eps 2/255: the paper's defaults.

    python -m jaxprune.experiments.cifar --workdir=runs/cifar
    python -m jaxprune.experiments.cifar --workdir=runs/cifar_smoke --config=configs/cifar.py:smoke

Full run: 200 epochs (days on a 2-core CPU; hours on one GPU). `smoke`: one
short epoch on 512 images, about a minute on a CPU. Needs the CIFAR10 files
(`cifar-10-python.tar.gz`) in --config.data_dir or $JAXPRUNE_DATA.
"""
from jaxprune.config import base_config, smoke

PRESETS = {
    "eps8": "eps 8/255 for 300 epochs (the paper's Table 3)",
    "smoke": "one short epoch on 512 images",
}


def get_config(preset: str = ""):
  c = base_config()
  c.dataset = "cifar10"
  c.model = "cnn7l"
  c.train.augment = "crop_flip"  # as the paper's data loaders
  c.train.eps = 2 / 255
  c.verify.dataset, c.verify.num_samples = "cifar10_eran", 100  # as the paper's code
  if preset == "eps8":
    c.train.eps = 8 / 255
    c.train.epochs = 300
  elif preset == "smoke":
    smoke(c)
  elif preset:
    raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
  return c
