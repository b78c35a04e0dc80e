"""Datasets as verified numpy arrays, and deterministic batching.

`load(name)` reads the standard files (IDX, CIFAR python batches, SVHN .mat,
ERAN csv), checks their official checksums on every load and returns a
`Dataset` with pixels in [0, 1]; `normalize` is applied by the model.
"""
from jaxprune.data.batching import AUGMENTATIONS, augment, batches
from jaxprune.data.datasets import (CIFAR10_MEAN, CIFAR10_SHAPE, CIFAR10_STD, NAMES,
                                    NUM_CLASSES, Dataset, first_n_test, load, normalize)
from jaxprune.data.sources import CHECKSUMS, DataError

__all__ = ["AUGMENTATIONS", "augment", "CHECKSUMS", "CIFAR10_MEAN", "CIFAR10_SHAPE", "CIFAR10_STD",
           "NAMES", "NUM_CLASSES", "DataError", "Dataset", "batches", "first_n_test", "load",
           "normalize"]
