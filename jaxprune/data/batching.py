"""Deterministic mini-batches for training."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from jaxprune.registry import UnknownNameError, unknown

AUGMENTATIONS = ("none", "crop", "crop_flip")


def augment(x: np.ndarray, rng: np.random.Generator, kind: str, pad: int = 4) -> np.ndarray:
  """The paper's training augmentation on NHWC pixels.

  "crop": zero-pad by `pad` and crop back at a random offset (torchvision's
  RandomCrop(size, padding=4)); "crop_flip" also flips horizontally with
  probability 1/2.
  """
  if kind == "none":
    return x
  if kind not in AUGMENTATIONS:
    raise UnknownNameError(unknown("augmentation", kind, AUGMENTATIONS))
  n, h, w, _ = x.shape
  padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  dy, dx = rng.integers(0, 2 * pad + 1, (2, n))
  out = np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
  if kind == "crop_flip":
    flip = rng.random(n) < 0.5
    out[flip] = out[flip, :, ::-1]
  return out


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int,
            epoch: int, shuffle: bool = True, drop_remainder: bool = True,
            augmentation: str = "none") -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yield one epoch of `(x, y)` numpy batches, optionally augmented.

  The order and the augmentation draws are functions of `(seed, epoch)`
  alone, never of RNG state carried between epochs, so training resumed at
  any epoch sees exactly the batches an uninterrupted run would have seen.
  """
  if len(x) != len(y):
    raise ValueError(f"{len(x)} inputs but {len(y)} labels")
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  n = len(x)
  order = (np.random.default_rng((seed, epoch)).permutation(n) if shuffle
           else np.arange(n))
  stop = n - n % batch_size if drop_remainder else n
  aug_rng = np.random.default_rng((seed, epoch, 1))
  for start in range(0, stop, batch_size):
    idx = order[start:start + batch_size]
    yield augment(x[idx], aug_rng, augmentation), y[idx]
