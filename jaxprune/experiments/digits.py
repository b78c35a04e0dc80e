"""`python -m jaxprune.experiments.digits --workdir=DIR` (defaults: configs/digits.py)."""
from jaxprune.experiments.main import run

if __name__ == "__main__":
  run("digits")
