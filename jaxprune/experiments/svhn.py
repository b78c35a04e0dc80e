"""`python -m jaxprune.experiments.svhn --workdir=DIR` (defaults: configs/svhn.py)."""
from jaxprune.experiments.main import run

if __name__ == "__main__":
  run("svhn")
