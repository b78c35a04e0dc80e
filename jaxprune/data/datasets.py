"""Datasets by name: float32 NHWC pixels in [0, 1], int32 labels.

Normalisation constants follow the paper's released code, whose training and
verification agree except where noted:

* cifar10 / cifar10_eran: mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435,
  0.2616) in both; auto_LiRPA's examples round the first std to 0.2471.
* svhn: mean 0, std 1 in both (CROWN-IBP's SVHN statistics are commented out).
* fashion_mnist: mean 0, std 1 as in the verifier and the paper's "no
  normalisation"; the released training loader has (0.286, 0.315) instead.
* digits: mean 0, std 1.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from jaxprune.data import readers, sources
from jaxprune.data.sources import DataError
from jaxprune.registry import lookup

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_SHAPE = (32, 32, 3)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """Train and test splits plus the per-channel constants the model applies.

  Pixels stay in [0, 1] because the certified eps ball is defined there; the
  model input pipeline normalises (`normalize`), storage never does.
  """

  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  mean: tuple[float, ...]
  std: tuple[float, ...]
  num_classes: int
  input_shape: tuple[int, int, int]


def normalize(x, ds: Dataset):
  """`(x - mean) / std` per channel (last axis); numpy or jax arrays."""
  return (x - np.asarray(ds.mean, np.float32)) / np.asarray(ds.std, np.float32)


def first_n_test(ds: Dataset, n: int) -> tuple[np.ndarray, np.ndarray]:
  """The first `n` test images and labels, as the paper evaluates.

  Asking for more than exist is an error, so a 200-image evaluation on the
  100-image ERAN subset cannot silently shrink.
  """
  if not 0 <= n <= len(ds.x_test):
    raise ValueError(f"{ds.name} has {len(ds.x_test)} test images, asked for {n}")
  return ds.x_test[:n], ds.y_test[:n]


_Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

_FMNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
_CIFAR_TAR = "cifar-10-python.tar.gz"
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")


def _fashion_mnist(directory: Path, download: bool, checksums) -> _Arrays:
  paths = sources.require(directory, _FMNIST_FILES, download, checksums)

  def read(name, ndim):
    where = str(paths[name])
    raw = readers.gunzip(sources.read_verified(paths[name], checksums), where)
    return readers.idx(raw, ndim, where)

  x_tr, y_tr, x_te, y_te = (read(n, 3 if "images" in n else 1)
                            for n in _FMNIST_FILES)
  return x_tr[..., None], y_tr, x_te[..., None], y_te


def _cifar10(directory: Path, download: bool, checksums) -> _Arrays:
  """The extracted batches when all are present, else the official tarball.

  Batches are verified with their own md5 either way, and the tarball is read
  in memory rather than extracted, so no half-extracted state can exist.
  """
  extracted = directory / _CIFAR_DIR
  if all((extracted / b).is_file() for b in _CIFAR_BATCHES):
    parsed = [readers.cifar_batch(sources.read_verified(extracted / b, checksums),
                                  str(extracted / b)) for b in _CIFAR_BATCHES]
  else:
    alternative = (f"\nor the extracted batches instead of the tarball:\n"
                   f"{sources.describe(extracted, _CIFAR_BATCHES, checksums)}")
    tar_path = sources.require(directory, (_CIFAR_TAR,), download, checksums,
                               alternative)[_CIFAR_TAR]
    with readers.open_tar(sources.read_verified(tar_path, checksums),
                          str(tar_path)) as archive:
      parsed = []
      for b in _CIFAR_BATCHES:
        member = f"{_CIFAR_DIR}/{b}"
        where = f"{tar_path}:{member}"
        blob = readers.tar_member(archive, member, str(tar_path))
        parsed.append(readers.cifar_batch(
            sources.check(blob, b, checksums, where), where))
  x_tr = np.concatenate([x for x, _ in parsed[:-1]])
  y_tr = np.concatenate([y for _, y in parsed[:-1]])
  return x_tr, y_tr, *parsed[-1]


def _svhn(directory: Path, download: bool, checksums) -> _Arrays:
  names = ("train_32x32.mat", "test_32x32.mat")
  paths = sources.require(directory, names, download, checksums)
  (x_tr, y_tr), (x_te, y_te) = (
      readers.svhn_mat(sources.read_verified(paths[n], checksums), str(paths[n]))
      for n in names)
  return x_tr, y_tr, x_te, y_te


def _cifar10_eran(directory: Path, download: bool, checksums) -> _Arrays:
  """The 100-image ERAN csv (the first official test images); no train split.

  alpha-beta-CROWN's 1000-label file is not needed. For more than 100 images,
  the first test images of `cifar10` are the same subset.
  """
  path = sources.require(directory, ("cifar10_test.csv",), download,
                         checksums)["cifar10_test.csv"]
  x, y = readers.eran_csv(sources.read_verified(path, checksums), str(path))
  return np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64), x, y


def _digits() -> _Arrays:
  """scikit-learn's 8x8 digits (ships with it, so works offline).

  Kept at 8x8x1, pixels /16 (exact in float32). Split without any RNG, so it
  can never change with a NumPy release: first 1437 train, last 360 test
  (about 80/20; every class has 33-37 test images).
  """
  from sklearn.datasets import load_digits
  bunch = load_digits()
  images = bunch.images.astype(np.float32)[..., None] / np.float32(16)
  return images[:1437], bunch.target[:1437], images[1437:], bunch.target[1437:]


@dataclasses.dataclass(frozen=True)
class _Spec:
  input_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  reader: Callable[..., _Arrays] | None  # None: in-package data, no files


_SPECS = {
    "fashion_mnist": _Spec((28, 28, 1), (0.0,), (1.0,), _fashion_mnist),
    "svhn": _Spec((32, 32, 3), (0.0,) * 3, (1.0,) * 3, _svhn),
    "cifar10": _Spec(CIFAR10_SHAPE, CIFAR10_MEAN, CIFAR10_STD, _cifar10),
    "cifar10_eran": _Spec(CIFAR10_SHAPE, CIFAR10_MEAN, CIFAR10_STD, _cifar10_eran),
    "digits": _Spec((8, 8, 1), (0.0,), (1.0,), None),
}
NAMES = tuple(_SPECS)
NUM_CLASSES = 10


def _pixels(x: np.ndarray) -> np.ndarray:
  """uint8 -> float32 in [0, 1], C-contiguous, exactly x / 255 in float32."""
  if x.dtype != np.uint8:
    return np.ascontiguousarray(x, np.float32)
  out = x.astype(np.float32, order="C")
  out /= np.float32(255)
  return out


def _labels(y: np.ndarray, name: str, split: str) -> np.ndarray:
  if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
    raise DataError(f"{name} {split}: labels outside 0..{NUM_CLASSES - 1}")
  return y.astype(np.int32)


def load(name: str, data_dir: str | os.PathLike | None = None,
         download: bool = True,
         checksums: Mapping[str, str] | None = None) -> Dataset:
  """Load dataset `name` (one of `NAMES`), verifying every file.

  Files are looked up in `data_dir`, else `$JAXPRUNE_DATA/<name>`, else
  `~/.cache/jaxprune/<name>`; missing ones are downloaded unless `download` is
  False or JAXPRUNE_NO_DOWNLOAD is set. `checksums` overrides entries of the
  official table (`sources.CHECKSUMS`) by file name, for files you made.
  `digits` ships with scikit-learn and needs none of these arguments.
  """
  spec = lookup(_SPECS, name, "dataset")
  if spec.reader is None:
    x_tr, y_tr, x_te, y_te = _digits()
  else:
    table = {**sources.CHECKSUMS, **(checksums or {})}
    x_tr, y_tr, x_te, y_te = spec.reader(
        sources.dataset_dir(name, data_dir), download, table)
  for split, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
    if x.shape[1:] != spec.input_shape or len(y) != len(x):
      raise DataError(f"{name} {split}: images {x.shape} with {len(y)} labels, "
                      f"expected (N, {', '.join(map(str, spec.input_shape))})")
  return Dataset(name=name, x_train=_pixels(x_tr),
                 y_train=_labels(y_tr, name, "train"), x_test=_pixels(x_te),
                 y_test=_labels(y_te, name, "test"), mean=spec.mean,
                 std=spec.std, num_classes=NUM_CLASSES,
                 input_shape=spec.input_shape)
