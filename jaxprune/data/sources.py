"""Where dataset files live, how they are verified, and how missing ones arrive.

Every file is checked against its officially published digest on every load,
so a truncated download or a different release is an error, never silently
read. A digest's length names its algorithm: 32 hex digits md5 (what the
dataset authors and torchvision publish), 64 sha256 (the ERAN csv, which has
no published md5; its digest is of the file in eth-sri/eran).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import Iterable, Mapping


class DataError(Exception):
  """A dataset file is missing, corrupt, or not in the expected format."""


_FMNIST = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_SVHN = "http://ufldl.stanford.edu/housenumbers/"

CHECKSUMS: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
    "cifar10_test.csv":
        "4cef6cdf54a6b78c7cae5ac7d20dc1d6eda1c9d8a04c6b08b5ecba6029a6f043",
}

URLS: dict[str, str] = {
    **{n: _FMNIST + n for n in (
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")},
    "cifar-10-python.tar.gz":
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "train_32x32.mat": _SVHN + "train_32x32.mat",
    "test_32x32.mat": _SVHN + "test_32x32.mat",
    "cifar10_test.csv": "https://raw.githubusercontent.com/eth-sri/eran/"
                        "master/data/cifar10_test.csv",
}

# Folder names tried under the data root, canonical first; the hyphenated ones
# are the layout of the project's staged `shared/data`, so pointing
# JAXPRUNE_DATA there works without copying.
DIR_NAMES = {
    "fashion_mnist": ("fashion_mnist", "fashion-mnist"),
    "cifar10_eran": ("cifar10_eran", "cifar10-eran-subset"),
}

DOWNLOAD_TIMEOUT_S = 10.0


def algorithm(digest: str) -> str:
  """Hash name for a hex digest, told apart by length."""
  try:
    return {32: "md5", 64: "sha256"}[len(digest)]
  except KeyError:
    raise ValueError(f"digest {digest!r} is neither md5 nor sha256") from None


def _hasher(digest: str):
  return hashlib.new(algorithm(digest), usedforsecurity=False)


def _expected(name: str, checksums: Mapping[str, str]) -> str:
  if name not in checksums:
    raise DataError(f"no checksum known for {name}")
  return checksums[name].lower()


def _compare(where: str, expected: str, actual: str, size: int):
  if actual != expected:
    raise DataError(
        f"{where}: {algorithm(expected)} mismatch: expected {expected}, got "
        f"{actual} ({size} bytes). The file is truncated, corrupt or not the "
        "official release; delete it and load again.")


def check(data: bytes, name: str, checksums: Mapping[str, str],
          where: str) -> bytes:
  """`data` if it has the digest listed for file `name`, else DataError."""
  expected = _expected(name, checksums)
  h = _hasher(expected)
  h.update(data)
  _compare(where, expected, h.hexdigest(), len(data))
  return data


def read_verified(path: Path, checksums: Mapping[str, str]) -> bytes:
  """Whole file, verified: one read serves both hashing and parsing."""
  return check(path.read_bytes(), path.name, checksums, str(path))


def dataset_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
  """`data_dir` itself, else `<JAXPRUNE_DATA or ~/.cache/jaxprune>/<name>`."""
  if data_dir is not None:
    return Path(data_dir).expanduser()
  root = os.environ.get("JAXPRUNE_DATA") or Path.home() / ".cache" / "jaxprune"
  root = Path(root).expanduser()
  names = DIR_NAMES.get(name, (name,))
  return next((root / n for n in names if (root / n).is_dir()), root / names[0])


def download_enabled(download: bool) -> bool:
  """Off when asked, or when JAXPRUNE_NO_DOWNLOAD is set (tests, clusters)."""
  return download and os.environ.get("JAXPRUNE_NO_DOWNLOAD", "") in ("", "0")


def describe(directory: Path, names: Iterable[str],
             checksums: Mapping[str, str]) -> str:
  """One line per expected file: path, digest and where to get it."""
  lines = []
  for n in names:
    digest = checksums[n]
    src = f"  from {URLS[n]}" if n in URLS else ""
    lines.append(f"  {directory / n}  ({algorithm(digest)} {digest}){src}")
  return "\n".join(lines)


def require(directory: Path, names: Iterable[str], download: bool,
            checksums: Mapping[str, str], alternative: str = "") -> dict[str, Path]:
  """Paths of `names` in `directory`, downloading missing ones when allowed.

  Verification happens when the caller reads the file, so a file already on
  disk is checked on every load, not only after a download.
  """
  paths = {n: directory / n for n in names}
  missing = [n for n, p in paths.items() if not p.is_file()]
  if not missing:
    return paths
  if download_enabled(download):
    try:
      for n in missing:
        _download(URLS[n], paths[n], checksums)
      return paths
    except (OSError, http.client.HTTPException, DataError) as e:
      reason = f"download failed: {e}"
  else:
    reason = "download disabled (download=False or JAXPRUNE_NO_DOWNLOAD set)"
  raise DataError(
      f"missing dataset files in {directory} ({reason}). Expected:\n"
      f"{describe(directory, missing, checksums)}{alternative}")


def _download(url: str, dest: Path, checksums: Mapping[str, str]):
  """Fetch to a temporary file beside `dest`; rename only once verified."""
  expected = _expected(dest.name, checksums)
  dest.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".",
                             suffix=".part")
  try:
    h, size = _hasher(expected), 0
    with os.fdopen(fd, "wb") as f, urllib.request.urlopen(
        url, timeout=DOWNLOAD_TIMEOUT_S) as response:
      while chunk := response.read(1 << 20):
        h.update(chunk)
        f.write(chunk)
        size += len(chunk)
    _compare(url, expected, h.hexdigest(), size)
    os.replace(tmp, dest)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
