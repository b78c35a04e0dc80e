"""jaxprune: certified training, pruning and complete verification in JAX/Flax.

Importing it changes no process-wide setting; a program's entry point calls
`jaxprune.runtime.configure()` for the CPU settings that make it faster.
"""

__version__ = "0.1.0"
