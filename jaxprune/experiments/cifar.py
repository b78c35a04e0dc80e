"""`python -m jaxprune.experiments.cifar --workdir=DIR` (defaults: configs/cifar.py)."""
from jaxprune.experiments.main import run

if __name__ == "__main__":
  run("cifar")
