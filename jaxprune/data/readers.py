"""Parsers for the standard dataset file formats, from already-verified bytes.

Parsing never touches the disk, so verification (`sources`) and format checks
(here) stay separate. Images come back as uint8 NHWC, labels as given by the
format; each reader checks the format's own invariants and raises `DataError`
naming the file instead of reading garbage.
"""
from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
import zlib

import numpy as np

from jaxprune.data.sources import DataError


def gunzip(data: bytes, where: str) -> bytes:
  try:
    return gzip.decompress(data)
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(f"{where}: not a valid gzip stream ({e})") from e


def idx(data: bytes, ndim: int, where: str) -> np.ndarray:
  """An unsigned-byte IDX array (magic 0x0000 08 <ndim>), shape from its header."""
  magic = bytes((0, 0, 0x08, ndim))
  if data[:4] != magic:
    raise DataError(f"{where}: IDX magic {data[:4].hex()}, expected {magic.hex()} "
                    f"(uint8, {ndim} dims)")
  header = 4 + 4 * ndim
  if len(data) < header:
    raise DataError(f"{where}: IDX header truncated")
  shape = struct.unpack(f">{ndim}I", data[4:header])
  if len(data) - header != int(np.prod(shape)):
    raise DataError(f"{where}: IDX header says shape {shape} "
                    f"({int(np.prod(shape))} bytes), body has {len(data) - header}")
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def tar_member(archive: tarfile.TarFile, member: str, where: str) -> bytes:
  """A regular file read from the archive in memory, never extracted to disk."""
  try:
    f = archive.extractfile(member)
  except KeyError:
    f = None
  if f is None:
    raise DataError(f"{where}: no regular file {member} in the archive")
  with f:
    return f.read()


def open_tar(data: bytes, where: str) -> tarfile.TarFile:
  try:
    return tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")
  except (tarfile.TarError, OSError, EOFError) as e:
    raise DataError(f"{where}: not a readable .tar.gz ({e})") from e


_RECONSTRUCT = np.zeros(0).__reduce__()[0]
# The only globals a CIFAR batch references: numpy's array reconstruction
# under its NumPy 1 (official py2 files) and NumPy 2 module names.
_NUMPY_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Refuses every global but numpy's array constructors, so a swapped file
  cannot run code even where a caller supplied its own checksums."""

  def find_class(self, module, name):
    try:
      return _NUMPY_GLOBALS[module, name]
    except KeyError:
      raise pickle.UnpicklingError(f"forbidden global {module}.{name}") from None


def cifar_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
  """A CIFAR python batch: dict with b"data" (N, 3072) CHW rows, b"labels"."""
  try:
    d = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
  except Exception as e:  # any failure of the unpickler means a bad file
    raise DataError(f"{where}: not a CIFAR python batch ({e})") from e
  if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
    raise DataError(f"{where}: CIFAR batch lacks b'data'/b'labels'")
  x, y = d[b"data"], np.asarray(d[b"labels"])
  if (not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2
      or x.shape[1] != 3 * 32 * 32 or y.shape != (len(x),)):
    raise DataError(f"{where}: CIFAR batch data {getattr(x, 'shape', None)} "
                    f"{getattr(x, 'dtype', None)} with labels {y.shape}, expected "
                    "uint8 (N, 3072) with N labels")
  return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y


def svhn_mat(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
  """SVHN cropped digits: X is (32, 32, 3, N); label 10 is the digit 0."""
  import scipy.io
  try:
    m = scipy.io.loadmat(io.BytesIO(data))
  except Exception as e:  # scipy raises assorted types on malformed input
    raise DataError(f"{where}: not a readable MATLAB file ({e})") from e
  x, y = m.get("X"), m.get("y")
  if (x is None or y is None or x.dtype != np.uint8 or x.ndim != 4
      or x.shape[:3] != (32, 32, 3) or y.size != x.shape[3]):
    raise DataError(f"{where}: expected X uint8 (32, 32, 3, N) and N labels y")
  y = y.reshape(-1).astype(np.int64)
  if y.min(initial=1) < 1 or y.max(initial=10) > 10:
    raise DataError(f"{where}: SVHN labels must be 1..10")
  return np.moveaxis(x, 3, 0), y % 10


def eran_csv(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
  """ERAN csv: label, then 3072 pixels of a 32x32 RGB image in HWC order."""
  try:
    a = np.loadtxt(io.StringIO(data.decode("ascii")), delimiter=",",
                   dtype=np.int64, ndmin=2)
  except (ValueError, UnicodeDecodeError) as e:
    raise DataError(f"{where}: not an integer csv ({e})") from e
  if (a.shape[1] != 1 + 32 * 32 * 3 or a[:, 1:].min(initial=0) < 0
      or a[:, 1:].max(initial=0) > 255):
    raise DataError(f"{where}: expected rows of a label and 3072 pixels 0..255, "
                    f"got shape {a.shape}")
  return a[:, 1:].astype(np.uint8).reshape(-1, 32, 32, 3), a[:, 0]
