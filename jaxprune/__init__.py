"""jaxprune: certified training, pruning and complete verification in JAX/Flax."""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# XLA:CPU runs convolutions with YNNPACK by default; for CNN-7L's training convolutions
# (and their gradients, see `models.spec.conv2d`) its Eigen convolutions are faster
# (benchmarks/train_step.py, benchmarks/RESULTS.md). Set before JAX creates its CPU
# backend, and only when the user has not chosen this flag or JAXPRUNE_XLA_DEFAULTS=0.
_XLA_CPU_DEFAULTS = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def _backends_initialized() -> bool:
  if "jax" not in _sys.modules:
    return False
  try:
    from jax._src import xla_bridge
    return bool(xla_bridge.backends_are_initialized())
  except Exception:  # pylint: disable=broad-except
    return True  # unknown: leave XLA_FLAGS alone


if (_os.environ.get("JAXPRUNE_XLA_DEFAULTS", "1") != "0"
    and "xla_cpu_experimental_ynn_fusion_type" not in _os.environ.get("XLA_FLAGS", "")
    and not _backends_initialized()):
  _os.environ["XLA_FLAGS"] = (_os.environ.get("XLA_FLAGS", "") + " " + _XLA_CPU_DEFAULTS).strip()
