"""Deterministic mini-batches for training."""
from __future__ import annotations

from typing import Iterator

import numpy as np


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int,
            epoch: int, shuffle: bool = True,
            drop_remainder: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yield one epoch of `(x, y)` numpy batches.

  The order is a function of `(seed, epoch)` alone, never of RNG state carried
  between epochs, so training resumed at any epoch sees exactly the batches an
  uninterrupted run would have seen.
  """
  if len(x) != len(y):
    raise ValueError(f"{len(x)} inputs but {len(y)} labels")
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  n = len(x)
  order = (np.random.default_rng((seed, epoch)).permutation(n) if shuffle
           else np.arange(n))
  stop = n - n % batch_size if drop_remainder else n
  for start in range(0, stop, batch_size):
    idx = order[start:start + batch_size]
    yield x[idx], y[idx]
