"""SVHN, CNN-7L, CROWN-IBP at eps 2/255: the paper's defaults.

    python -m jaxprune.experiments.svhn --workdir=runs/svhn
    python -m jaxprune.experiments.svhn --workdir=runs/svhn_smoke --config=configs/svhn.py:smoke

Full run: 200 epochs (hours on one GPU). `smoke`: one short epoch on 512
images, about a minute on a CPU. Needs `train_32x32.mat` and `test_32x32.mat`
in --config.data_dir or $JAXPRUNE_DATA.
"""
from jaxprune.config import base_config, smoke

PRESETS = {"smoke": "one short epoch on 512 images"}


def get_config(preset: str = ""):
  c = base_config()
  c.dataset = "svhn"
  c.model = "cnn7l"
  c.train.augment = "crop"  # as the paper's data loaders
  c.train.eps = 2 / 255
  c.eval.num_test = 200
  if preset == "smoke":
    smoke(c)
  elif preset:
    raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
  return c
