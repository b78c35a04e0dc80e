"""jaxprune.data: readers of every format, checksums, sources, batching."""
import gzip
import hashlib
import io
import os
import pickle
import re
import struct
import tarfile
import urllib.error
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io

from jaxprune import data
from jaxprune.data import sources

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FMNIST = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
          "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
  """No test may reach the network or the user's cache."""
  monkeypatch.setenv("JAXPRUNE_NO_DOWNLOAD", "1")
  monkeypatch.delenv("JAXPRUNE_DATA", raising=False)

  def no_network(*args, **kwargs):
    pytest.fail("tests must not open URLs")

  monkeypatch.setattr("urllib.request.urlopen", no_network)


def digest(blob: bytes, algo="md5") -> str:
  return hashlib.new(algo, blob).hexdigest()


def images(rng, n, shape):
  return rng.integers(0, 256, (n, *shape), dtype=np.uint8)


def idx_bytes(arr, magic_dtype=0x08, shape=None):
  shape = arr.shape if shape is None else shape
  return (bytes((0, 0, magic_dtype, len(shape))) + struct.pack(f">{len(shape)}I", *shape)
          + arr.tobytes())


def cifar_batch_bytes(x, y):
  """Like the official batches: bytes keys, CHW rows, labels as a list."""
  return pickle.dumps({b"batch_label": b"tiny", b"labels": [int(v) for v in y],
                       b"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1),
                       b"filenames": [b"f%d" % i for i in range(len(x))]})


def cifar_split(rng):
  """Six tiny batches; train = the first five concatenated."""
  xs = [images(rng, 2 + i % 2, (32, 32, 3)) for i in range(6)]
  ys = [rng.integers(0, 10, len(x)) for x in xs]
  expected = (np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5])
  return expected, {b: cifar_batch_bytes(x, y) for b, x, y in zip(CIFAR_BATCHES, xs, ys)}


def write_fashion_mnist(d, rng):
  xtr, xte = images(rng, 5, (28, 28, 1)), images(rng, 3, (28, 28, 1))
  ytr, yte = rng.integers(0, 10, 5, dtype=np.uint8), rng.integers(0, 10, 3, dtype=np.uint8)
  blobs = {n: gzip.compress(idx_bytes(a))
           for n, a in zip(FMNIST, (xtr[..., 0], ytr, xte[..., 0], yte))}
  for n, b in blobs.items():
    (d / n).write_bytes(b)
  return (xtr, ytr, xte, yte), {n: digest(b) for n, b in blobs.items()}


def write_cifar10_dir(d, rng):
  expected, blobs = cifar_split(rng)
  (d / CIFAR_DIR).mkdir()
  for n, b in blobs.items():
    (d / CIFAR_DIR / n).write_bytes(b)
  return expected, {n: digest(b) for n, b in blobs.items()}


def write_tar(path, blobs):
  with tarfile.open(path, "w:gz") as tar:
    for n, b in blobs.items():
      info = tarfile.TarInfo(f"{CIFAR_DIR}/{n}")
      info.size = len(b)
      tar.addfile(info, io.BytesIO(b))


def write_cifar10_tar(d, rng):
  expected, blobs = cifar_split(rng)
  write_tar(d / "cifar-10-python.tar.gz", blobs)
  tar_md5 = digest((d / "cifar-10-python.tar.gz").read_bytes())
  return expected, {"cifar-10-python.tar.gz": tar_md5,
                    **{n: digest(b) for n, b in blobs.items()}}


def write_svhn(d, rng):
  """Labels 1..10 on disk, including 10, which is the digit 0."""
  splits = []
  for name, n in (("train_32x32.mat", 4), ("test_32x32.mat", 3)):
    x, y = images(rng, n, (32, 32, 3)), rng.integers(1, 11, n).astype(np.uint8)
    y[0] = 10
    scipy.io.savemat(d / name, {"X": np.moveaxis(x, 0, 3), "y": y[:, None]})
    splits += [x, y % 10]
  return tuple(splits), {n: digest((d / n).read_bytes())
                         for n in ("train_32x32.mat", "test_32x32.mat")}


def eran_csv_bytes(x, y):
  rows = (",".join(map(str, [int(lab), *img.reshape(-1)])) for img, lab in zip(x, y))
  return ("\n".join(rows) + "\n").encode()


def write_cifar10_eran(d, rng):
  x, y = images(rng, 4, (32, 32, 3)), rng.integers(0, 10, 4)
  blob = eran_csv_bytes(x, y)
  (d / "cifar10_test.csv").write_bytes(blob)
  empty = (np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64))
  return (*empty, x, y), {"cifar10_test.csv": digest(blob, "sha256")}


# format -> (dataset name, writer, a file it reads, relative to the data dir)
FORMATS = {
    "fashion_mnist": ("fashion_mnist", write_fashion_mnist, "t10k-images-idx3-ubyte.gz"),
    "cifar10_dir": ("cifar10", write_cifar10_dir, f"{CIFAR_DIR}/data_batch_3"),
    "cifar10_tar": ("cifar10", write_cifar10_tar, "cifar-10-python.tar.gz"),
    "svhn": ("svhn", write_svhn, "test_32x32.mat"),
    "cifar10_eran": ("cifar10_eran", write_cifar10_eran, "cifar10_test.csv"),
}


# Normalisation of the paper's code (training and verifier agree on these).
CIFAR = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CONSTANTS = {"fashion_mnist": ((0.0,), (1.0,)), "svhn": ((0.0,) * 3, (1.0,) * 3),
             "cifar10": CIFAR, "cifar10_eran": CIFAR}


def rehash(d, checksums):
  """Checksums matching whatever is now on disk, so format checks get reached."""
  out = dict(checksums)
  for n in checksums:
    for p in (d / n, d / CIFAR_DIR / n):
      if p.is_file():
        out[n] = digest(p.read_bytes(), sources.algorithm(checksums[n]))
  return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_reads_every_format_exactly(tmp_path, fmt):
  name, write, _ = FORMATS[fmt]
  expected, checksums = write(tmp_path, np.random.default_rng(0))
  ds = data.load(name, data_dir=tmp_path, download=False, checksums=checksums)
  for got, want in zip((ds.x_train, ds.x_test), expected[0::2]):
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(np.round(got * 255).astype(np.uint8), want)
  for got, want in zip((ds.y_train, ds.y_test), expected[1::2]):
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)
  assert ds.x_train.shape[1:] == ds.x_test.shape[1:] == ds.input_shape
  assert (ds.mean, ds.std) == CONSTANTS[name]
  assert ds.num_classes == 10 and ds.name == name


def test_svhn_label_10_is_digit_0(tmp_path):
  _, checksums = write_svhn(tmp_path, np.random.default_rng(1))
  ds = data.load("svhn", data_dir=tmp_path, download=False, checksums=checksums)
  raw = scipy.io.loadmat(tmp_path / "train_32x32.mat")["y"].ravel()
  assert (raw == 10).any()
  np.testing.assert_array_equal(ds.y_train[raw == 10], 0)
  np.testing.assert_array_equal(ds.y_train[raw != 10], raw[raw != 10])


@pytest.mark.parametrize("mutation", ["truncate", "flip_byte"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_corrupt_file_names_file_and_checksums(tmp_path, fmt, mutation):
  name, write, rel = FORMATS[fmt]
  _, checksums = write(tmp_path, np.random.default_rng(2))
  path = tmp_path / rel
  blob = bytearray(path.read_bytes())
  if mutation == "truncate":
    del blob[len(blob) // 2:]
  else:
    blob[len(blob) // 2] ^= 0xFF
  path.write_bytes(bytes(blob))
  expected = checksums[path.name]
  actual = digest(bytes(blob), sources.algorithm(expected))
  with pytest.raises(data.DataError) as e:
    data.load(name, data_dir=tmp_path, download=False, checksums=checksums)
  assert str(path) in str(e.value)
  assert expected in str(e.value) and actual in str(e.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_production_path_verifies_official_checksums(tmp_path, fmt):
  name, write, _ = FORMATS[fmt]
  _, mine = write(tmp_path, np.random.default_rng(3))
  with pytest.raises(data.DataError, match="mismatch") as e:
    data.load(name, data_dir=tmp_path, download=False)
  msg = str(e.value)
  assert any(sources.CHECKSUMS[n] in msg and mine[n] in msg for n in mine)


def _recompress(path, fn):
  path.write_bytes(gzip.compress(fn(gzip.decompress(path.read_bytes()))))


def _drop_member(d, name):
  path = d / "cifar-10-python.tar.gz"
  with tarfile.open(path) as tar:
    blobs = {Path(m.name).name: tar.extractfile(m).read() for m in tar.getmembers()}
  write_tar(path, {n: b for n, b in blobs.items() if n != name})


def _rewrite_batch(d, name, fn):
  p = d / CIFAR_DIR / name
  p.write_bytes(pickle.dumps(fn(pickle.loads(p.read_bytes()))))


def _eran_rows(d, fn):
  a = np.loadtxt(d / "cifar10_test.csv", delimiter=",", dtype=np.int64)
  (d / "cifar10_test.csv").write_text(
      "\n".join(",".join(map(str, r)) for r in fn(a)) + "\n")


# (format, mangle(data_dir), fragment of the error): files that pass their
# checksum but break the format must still be rejected.
MALFORMED = {
    "idx_magic": ("fashion_mnist", lambda d: _recompress(
        d / FMNIST[1], lambda b: b[:2] + b"\x09" + b[3:]), "magic"),
    "idx_length": ("fashion_mnist", lambda d: _recompress(
        d / FMNIST[0], lambda b: b[:-1]), "IDX header says"),
    "idx_label_range": ("fashion_mnist", lambda d: _recompress(
        d / FMNIST[3], lambda b: b[:-1] + b"\x0a"), "labels outside 0..9"),
    "idx_image_shape": ("fashion_mnist", lambda d: (d / FMNIST[2]).write_bytes(
        gzip.compress(idx_bytes(np.zeros((3, 27, 28), np.uint8)))),
        "expected (N, 28, 28, 1)"),
    "not_gzip": ("fashion_mnist", lambda d: (d / FMNIST[0]).write_bytes(
        b"not gzip"), "gzip"),
    "not_tar": ("cifar10_tar", lambda d: (d / "cifar-10-python.tar.gz").write_bytes(
        b"not a tar"), "tar.gz"),
    "tar_member_missing": ("cifar10_tar", lambda d: _drop_member(d, "test_batch"),
                           "no regular file cifar-10-batches-py/test_batch"),
    "batch_no_labels": ("cifar10_dir", lambda d: _rewrite_batch(
        d, "data_batch_2", lambda b: {b"data": b[b"data"]}), "lacks"),
    "batch_shape": ("cifar10_dir", lambda d: _rewrite_batch(
        d, "test_batch", lambda b: {**b, b"data": b[b"data"][:, :100]}),
        "uint8 (N, 3072)"),
    "svhn_label_0": ("svhn", lambda d: scipy.io.savemat(
        d / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8),
                               "y": np.array([[0], [1]], np.uint8)}), "1..10"),
    "not_mat": ("svhn", lambda d: (d / "train_32x32.mat").write_bytes(b"x" * 200),
                "MATLAB"),
    "eran_columns": ("cifar10_eran", lambda d: _eran_rows(d, lambda a: a[:, :-1]),
                     "3072 pixels"),
    "eran_pixel": ("cifar10_eran", lambda d: _eran_rows(
        d, lambda a: np.where(np.arange(a.shape[1]) == 5, 256, a)), "0..255"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_file_with_matching_checksum_is_rejected(tmp_path, case):
  fmt, mangle, fragment = MALFORMED[case]
  name, write, _ = FORMATS[fmt]
  _, checksums = write(tmp_path, np.random.default_rng(4))
  mangle(tmp_path)
  with pytest.raises(data.DataError, match=re.escape(fragment)):
    data.load(name, data_dir=tmp_path, download=False,
              checksums=rehash(tmp_path, checksums))


class _Payload:
  def __init__(self, victim):
    self.victim = victim

  def __reduce__(self):
    return os.remove, (self.victim,)


def test_cifar_pickle_cannot_run_code(tmp_path):
  _, checksums = write_cifar10_dir(tmp_path, np.random.default_rng(5))
  victim = tmp_path / "victim"
  victim.touch()
  (tmp_path / CIFAR_DIR / "data_batch_1").write_bytes(
      pickle.dumps({b"data": _Payload(str(victim)), b"labels": []}))
  with pytest.raises(data.DataError, match="forbidden global"):
    data.load("cifar10", data_dir=tmp_path, download=False,
              checksums=rehash(tmp_path, checksums))
  assert victim.exists()


MISSING = {
    "fashion_mnist": FMNIST,
    "cifar10": ("cifar-10-python.tar.gz", *CIFAR_BATCHES),
    "svhn": ("train_32x32.mat", "test_32x32.mat"),
    "cifar10_eran": ("cifar10_test.csv",),
}


@pytest.mark.parametrize("download", [False, True])
@pytest.mark.parametrize("name", MISSING)
def test_missing_files_name_files_dir_and_checksums(tmp_path, name, download):
  """download=True still must not fetch: JAXPRUNE_NO_DOWNLOAD is set."""
  with pytest.raises(data.DataError, match="download disabled") as e:
    data.load(name, data_dir=tmp_path, download=download)
  for f in MISSING[name]:
    assert str(tmp_path / f) in str(e.value) or str(tmp_path / CIFAR_DIR / f) in str(e.value)
    assert sources.CHECKSUMS[f] in str(e.value)


class _Server:
  """Stands in for urlopen, serving fixed bodies by URL."""

  def __init__(self, bodies):
    self.bodies, self.requested = bodies, []

  def __call__(self, url, timeout):
    assert 0 < timeout <= 60
    self.requested.append(url)
    if url not in self.bodies:
      raise urllib.error.URLError("unreachable")
    return io.BytesIO(self.bodies[url])


def _serve(monkeypatch, bodies):
  server = _Server(bodies)
  monkeypatch.setenv("JAXPRUNE_NO_DOWNLOAD", "0")
  monkeypatch.setattr("urllib.request.urlopen", server)
  return server


def test_download_writes_verified_file(tmp_path, monkeypatch):
  x, y = images(np.random.default_rng(6), 2, (32, 32, 3)), np.array([4, 9])
  blob = eran_csv_bytes(x, y)
  url = sources.URLS["cifar10_test.csv"]
  server = _serve(monkeypatch, {url: blob})
  target = tmp_path / "new"
  ds = data.load("cifar10_eran", data_dir=target,
                 checksums={"cifar10_test.csv": digest(blob, "sha256")})
  assert server.requested == [url]
  assert (target / "cifar10_test.csv").read_bytes() == blob
  assert sorted(p.name for p in target.iterdir()) == ["cifar10_test.csv"]
  np.testing.assert_array_equal(ds.y_test, y)


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, monkeypatch):
  url = sources.URLS["cifar10_test.csv"]
  _serve(monkeypatch, {url: b"tampered"})
  with pytest.raises(data.DataError, match="download failed") as e:
    data.load("cifar10_eran", data_dir=tmp_path)
  assert sources.CHECKSUMS["cifar10_test.csv"] in str(e.value)
  assert digest(b"tampered", "sha256") in str(e.value)
  assert list(tmp_path.iterdir()) == []


def test_unreachable_download_names_missing_files(tmp_path, monkeypatch):
  server = _serve(monkeypatch, {})
  with pytest.raises(data.DataError, match="download failed.*unreachable") as e:
    data.load("svhn", data_dir=tmp_path)
  assert server.requested == [sources.URLS["train_32x32.mat"]]
  assert "test_32x32.mat" in str(e.value) and sources.CHECKSUMS["test_32x32.mat"] in str(e.value)


@pytest.mark.parametrize("layout", ["fashion_mnist", "fashion-mnist"])
def test_env_root_and_folder_names(tmp_path, monkeypatch, layout):
  (tmp_path / layout).mkdir()
  expected, checksums = write_fashion_mnist(tmp_path / layout, np.random.default_rng(7))
  monkeypatch.setenv("JAXPRUNE_DATA", str(tmp_path))
  ds = data.load("fashion_mnist", checksums=checksums)
  np.testing.assert_array_equal(ds.y_test, expected[3])
  with pytest.raises(data.DataError, match="missing"):
    data.load("fashion_mnist", data_dir=tmp_path / "elsewhere", checksums=checksums)


def test_home_cache_is_the_default(tmp_path, monkeypatch):
  cache = tmp_path / ".cache" / "jaxprune" / "cifar10_eran"
  cache.mkdir(parents=True)
  expected, checksums = write_cifar10_eran(cache, np.random.default_rng(8))
  monkeypatch.setenv("HOME", str(tmp_path))
  ds = data.load("cifar10_eran", checksums=checksums)
  np.testing.assert_array_equal(ds.y_test, expected[3])


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match="unknown dataset 'mnist'") as e:
    data.load("mnist")
  for n in ("fashion_mnist", "svhn", "cifar10", "cifar10_eran", "digits"):
    assert n in str(e.value)


def test_digits_offline():
  ds = data.load("digits", download=False)
  assert ds.x_train.shape == (1437, 8, 8, 1) and ds.x_test.shape == (360, 8, 8, 1)
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  for x in (ds.x_train, ds.x_test):
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(x * 16, np.round(x * 16))
  assert set(ds.y_test) == set(ds.y_train) == set(range(10))
  assert ds.mean == (0.0,) and ds.std == (1.0,)
  np.testing.assert_array_equal(data.load("digits").x_test, ds.x_test)


def test_normalize_uses_dataset_constants():
  ds = data.Dataset("c", *(np.zeros(0),) * 4, mean=(0.5, 0.25, 0.0),
                    std=(0.5, 0.25, 2.0), num_classes=10, input_shape=(1, 1, 3))
  x = np.ones((2, 1, 1, 3), np.float32)
  out = data.normalize(x, ds)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out[0, 0, 0], [1.0, 3.0, 0.5])
  traced = jax.jit(lambda v: data.normalize(v, ds))(jnp.asarray(x))
  assert isinstance(traced, jax.Array)
  np.testing.assert_allclose(traced, out)


def test_first_n_test():
  ds = data.load("digits")
  x, y = data.first_n_test(ds, 200)
  np.testing.assert_array_equal(x, ds.x_test[:200])
  np.testing.assert_array_equal(y, ds.y_test[:200])
  with pytest.raises(ValueError, match="360 test images, asked for 361"):
    data.first_n_test(ds, 361)


def _epoch(x, y, **kw):
  return list(data.batches(x, y, **kw))


def test_batches_depend_only_on_seed_and_epoch():
  x = np.arange(103, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
  y = np.arange(103)
  a = _epoch(x, y, batch_size=10, seed=1, epoch=4)
  b = _epoch(x, y, batch_size=10, seed=1, epoch=4)
  assert len(a) == 10
  for (xa, ya), (xb, yb) in zip(a, b):
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(xa[:, 0], ya)  # pairs stay together
  order = np.concatenate([yb for _, yb in a])
  assert len(set(order)) == 100  # no sample twice within an epoch
  for other in ({"seed": 1, "epoch": 5}, {"seed": 2, "epoch": 4}):
    order2 = np.concatenate([yb for _, yb in _epoch(x, y, batch_size=10, **other)])
    assert not np.array_equal(order, order2)


def test_batches_remainder_and_order():
  x, y = np.arange(25), np.arange(25)
  kept = _epoch(x, y, batch_size=10, seed=0, epoch=0, drop_remainder=False)
  assert [len(b) for _, b in kept] == [10, 10, 5]
  assert sorted(np.concatenate([b for _, b in kept])) == list(range(25))
  plain = _epoch(x, y, batch_size=10, seed=0, epoch=0, shuffle=False)
  np.testing.assert_array_equal(np.concatenate([b for _, b in plain]), np.arange(20))
  with pytest.raises(ValueError, match="labels"):
    _epoch(x, y[:-1], batch_size=5, seed=0, epoch=0)


@pytest.mark.integration
@pytest.mark.skipif(not (SHARED / "fashion-mnist").is_dir(), reason="no staged data")
def test_real_fashion_mnist():
  ds = data.load("fashion_mnist", data_dir=SHARED / "fashion-mnist", download=False)
  assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(ds.y_train), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.y_test), [1000] * 10)
  assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
  assert abs(ds.x_train.mean() * 255 - 72.94) < 0.01


@pytest.mark.integration
@pytest.mark.skipif(not (SHARED / "cifar10-eran-subset").is_dir(), reason="no staged data")
def test_real_eran_csv(monkeypatch):
  monkeypatch.setenv("JAXPRUNE_DATA", str(SHARED))
  ds = data.load("cifar10_eran", download=False)
  assert ds.x_test.shape == (100, 32, 32, 3)
  np.testing.assert_array_equal(ds.y_test[:10], [3, 8, 8, 0, 6, 6, 1, 6, 3, 1])
  np.testing.assert_array_equal(np.round(ds.x_test[0, 0, 0] * 255), [158, 112, 49])
  np.testing.assert_array_equal(
      ds.y_test, np.load(SHARED / "cifar10-eran-subset" / "y_eran_cifar_first1000.npy")[:100])


@pytest.mark.parametrize("kind", ["crop", "crop_flip"])
def test_augment_crops_within_padding_and_is_deterministic(kind):
  rng = np.random.default_rng(0)
  x = rng.random((16, 8, 8, 3)).astype(np.float32)
  a = data.augment(x, np.random.default_rng(5), kind, pad=2)
  b = data.augment(x, np.random.default_rng(5), kind, pad=2)
  np.testing.assert_array_equal(a, b)
  assert a.shape == x.shape and a.dtype == x.dtype
  padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
  for i in range(16):  # each output is some crop of the padded image, flipped or not
    crops = [padded[i, r:r + 8, c:c + 8] for r in range(5) for c in range(5)]
    crops += [c[:, ::-1] for c in crops] if kind == "crop_flip" else []
    assert any(np.array_equal(a[i], c) for c in crops)
  assert not np.array_equal(a, x)


def test_batches_augmentation_depends_only_on_seed_and_epoch():
  x = np.random.default_rng(0).random((40, 6, 6, 1)).astype(np.float32)
  y = np.arange(40)
  run = lambda e: [b for b, _ in data.batches(x, y, 8, 3, e, augmentation="crop")]
  assert all(np.array_equal(p, q) for p, q in zip(run(1), run(1)))
  assert not all(np.array_equal(p, q) for p, q in zip(run(1), run(2)))
