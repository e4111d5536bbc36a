"""Readers (and fixture writers) for the standard raw dataset formats.

* IDX (``.gz`` or plain): MNIST and Fashion-MNIST.
* ``cifar-10-batches-py`` / ``cifar-100-python`` pickles.
* Tiny ImageNet's folder layout (``tiny-imagenet-200``), JPEGs read with Pillow.
* scikit-learn's ``digits.csv.gz`` (8x8 UCI digits, values 0..16).

Readers return ``(images, labels)`` as uint8 ``(N, H, W, C)`` and int32 ``(N,)``.
A file that cannot be decoded (truncated, corrupted, not of its format) raises
:class:`CorruptFileError` naming it. The writers exist so tests (and users)
can build files in exactly these formats.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import pickle
import zlib
from pathlib import Path

import numpy as np


class CorruptFileError(ValueError):
  """A dataset file exists but cannot be decoded.

  Attributes:
    path: the file.
    reason: what is wrong with it.
  """

  def __init__(self, path, reason: str):
    self.path, self.reason = Path(path), reason
    super().__init__(f"{path} cannot be read: {reason}")


_DECODE_ERRORS = (EOFError, OSError, zlib.error, pickle.UnpicklingError, ValueError,
                  KeyError, IndexError, TypeError, AttributeError, UnicodeDecodeError)


@contextlib.contextmanager
def _decoding(path):
  """Turns any decoding error while reading ``path`` into :class:`CorruptFileError`."""
  try:
    yield
  except CorruptFileError:
    raise
  except FileNotFoundError:
    raise
  except _DECODE_ERRORS as e:
    raise CorruptFileError(path, f"{type(e).__name__}: {e}") from e

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open(path):
  path = Path(path)
  return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path) -> np.ndarray:
  """Reads an IDX file (optionally gzipped)."""
  with _decoding(path):
    with _open(path) as f:
      data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
      raise CorruptFileError(path, "not an IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    array = np.frombuffer(data, _IDX_DTYPES[data[2]], offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
      raise CorruptFileError(path, f"header says {dims}, file holds {array.size} values")
    return array.reshape(dims)


def write_idx(path, array: np.ndarray) -> None:
  """Writes a uint8 array as IDX (gzipped when ``path`` ends in ``.gz``)."""
  array = np.ascontiguousarray(array, np.uint8)
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(header + array.tobytes())


IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find(folder: Path, stem: str) -> Path:
  for name in (stem + ".gz", stem):
    if (folder / name).exists():
      return folder / name
  raise FileNotFoundError(f"{folder / (stem + '.gz')} not found")


def read_idx_split(folder, split: str):
  """``(images (N, 28, 28, 1), labels)`` of an MNIST-style folder split."""
  folder = Path(folder)
  image_stem, label_stem = IDX_FILES[split]
  images = read_idx(_find(folder, image_stem))
  labels = read_idx(_find(folder, label_stem))
  if images.ndim != 3 or labels.shape != images.shape[:1]:
    raise ValueError(f"{folder}: {split} images {images.shape} do not match labels {labels.shape}")
  return images[..., None], labels.astype(np.int32)


def _unpickle(path):
  with _decoding(path), open(path, "rb") as f:
    return pickle.load(f, encoding="bytes")


def _get(entry: dict, key: str):
  return entry[key.encode()] if key.encode() in entry else entry[key]


def _cifar_images(flat) -> np.ndarray:
  return np.asarray(flat, np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def read_cifar10(folder, split: str):
  """Reads ``cifar-10-batches-py``: ``data_batch_1..5`` (train), ``test_batch``."""
  folder = Path(folder)
  names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
  images, labels = [], []
  for name in names:
    entry = _unpickle(folder / name)
    with _decoding(folder / name):
      images.append(_cifar_images(_get(entry, "data")))
      labels.append(np.asarray(_get(entry, "labels"), np.int32))
  return np.concatenate(images), np.concatenate(labels)


def read_cifar100(folder, split: str):
  """Reads ``cifar-100-python``: ``train`` and ``test`` with fine labels."""
  entry = _unpickle(Path(folder) / split)
  with _decoding(Path(folder) / split):
    return _cifar_images(_get(entry, "data")), np.asarray(_get(entry, "fine_labels"), np.int32)


def write_cifar10(folder, train, test, per_batch=None) -> None:
  """Writes ``(images, labels)`` pairs in the ``cifar-10-batches-py`` layout."""
  folder = Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  x, y = train
  chunks = np.array_split(np.arange(len(x)), 5)
  for i, idx in enumerate(chunks, 1):
    _dump(folder / f"data_batch_{i}", {b"data": _cifar_flat(x[idx]),
                                       b"labels": [int(v) for v in y[idx]]})
  _dump(folder / "test_batch", {b"data": _cifar_flat(test[0]),
                                b"labels": [int(v) for v in test[1]]})
  _dump(folder / "batches.meta", {b"label_names": [str(i).encode() for i in range(10)]})


def write_cifar100(folder, train, test) -> None:
  """Writes ``(images, fine labels)`` pairs in the ``cifar-100-python`` layout."""
  folder = Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  for name, (x, y) in (("train", train), ("test", test)):
    _dump(folder / name, {b"data": _cifar_flat(x), b"fine_labels": [int(v) for v in y],
                          b"coarse_labels": [int(v) // 5 for v in y]})


def _cifar_flat(images):
  return np.asarray(images, np.uint8).transpose(0, 3, 1, 2).reshape(len(images), -1)


def _dump(path, obj):
  with open(path, "wb") as f:
    pickle.dump(obj, f)


def _pil():
  try:
    from PIL import Image
  except ImportError as e:
    raise ImportError("reading Tiny ImageNet needs Pillow: pip install pillow") from e
  return Image


def _read_image(path) -> np.ndarray:
  image_module = _pil()
  with _decoding(path), image_module.open(path) as image:
    return np.asarray(image.convert("RGB"), np.uint8)


def read_tiny_imagenet(folder, split: str):
  """Reads ``tiny-imagenet-200``: ``train/<wnid>/images/*.JPEG`` and
  ``val/images`` with ``val/val_annotations.txt`` (the labelled ``val`` split
  serves as the test set; Tiny ImageNet's own test split has no labels)."""
  folder = Path(folder)
  wnids = [w.strip() for w in (folder / "wnids.txt").read_text().split() if w.strip()]
  index = {w: i for i, w in enumerate(wnids)}
  paths, labels = [], []
  if split == "train":
    for wnid in wnids:
      files = sorted((folder / "train" / wnid / "images").glob("*.JPEG"))
      paths += files
      labels += [index[wnid]] * len(files)
  else:
    for line in (folder / "val" / "val_annotations.txt").read_text().splitlines():
      parts = line.split("\t")
      if len(parts) >= 2:
        paths.append(folder / "val" / "images" / parts[0])
        labels.append(index[parts[1]])
  if not paths:
    raise FileNotFoundError(f"no {split} images under {folder}")
  return np.stack([_read_image(p) for p in paths]), np.asarray(labels, np.int32)


def write_tiny_imagenet(folder, wnids, train, val) -> None:
  """Writes ``(images, labels)`` pairs in the Tiny ImageNet layout (JPEG, quality 95)."""
  image_module = _pil()
  folder = Path(folder)
  (folder / "val" / "images").mkdir(parents=True, exist_ok=True)
  (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
  x, y = train
  for i, (image, label) in enumerate(zip(x, y)):
    target = folder / "train" / wnids[label] / "images"
    target.mkdir(parents=True, exist_ok=True)
    image_module.fromarray(image).save(target / f"{wnids[label]}_{i}.JPEG", quality=95)
  lines = []
  for i, (image, label) in enumerate(zip(*val)):
    name = f"val_{i}.JPEG"
    image_module.fromarray(image).save(folder / "val" / "images" / name, quality=95)
    lines.append(f"{name}\t{wnids[label]}\t0\t0\t63\t63")
  (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def read_digits_csv(path):
  """scikit-learn's ``digits.csv.gz``: 64 pixel values (0..16) and a label per row."""
  with _decoding(path), _open(path) as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.float64)
  if table.ndim != 2 or table.shape[1] != 65:
    raise CorruptFileError(path, f"expected 65 columns, got {table.shape}")
  pixels = np.rint(table[:, :64] * (255.0 / 16.0)).astype(np.uint8)
  return pixels.reshape(-1, 8, 8, 1), table[:, 64].astype(np.int32)


def read_digits_split(folder, split: str):
  """The 1797 UCI digits have no official split: the first 1500 train, the
  rest test (the file's order is fixed)."""
  images, labels = read_digits_csv(Path(folder) / "digits.csv.gz")
  return (images[:1500], labels[:1500]) if split == "train" else (images[1500:], labels[1500:])


def write_digits_csv(path, images16: np.ndarray, labels) -> None:
  """Writes rows of 64 values in 0..16 and a label, as scikit-learn ships them."""
  rows = np.concatenate([np.asarray(images16).reshape(len(labels), 64),
                         np.asarray(labels)[:, None]], axis=1)
  os.makedirs(Path(path).parent, exist_ok=True)
  with gzip.open(path, "wt") as f:
    np.savetxt(f, rows, fmt="%d", delimiter=",")
