"""jaxprune: certified training, pruning and complete verification in JAX/Flax."""

__version__ = "0.1.0"
