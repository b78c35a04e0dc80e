"""`python -m jaxprune.experiments.fashion_mnist --workdir=DIR` (defaults: configs/fashion_mnist.py)."""
from jaxprune.experiments.main import run

if __name__ == "__main__":
  run("fashion_mnist")
