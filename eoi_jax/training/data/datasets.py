"""Datasets by name, read from a local data directory, with deterministic splits.

``load(name)`` returns a :class:`Dataset` of uint8 NHWC images and int32 labels
in three splits: train, validation (``val_fraction`` of the training set, held
out deterministically) and test. Files are looked up under the data directory
(``data_dir``, else ``$EOI_DATA_DIR``, else ``~/.cache/eoi-jax/data``) in the
standard layouts:

==============  ==========================================================
mnist           ``mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``
fashion_mnist   ``fashion_mnist/`` with the same IDX file names
cifar10         ``cifar-10-batches-py/`` (python pickles)
cifar100        ``cifar-100-python/`` (python pickles)
tiny_imagenet   ``tiny-imagenet-200/`` (``wnids.txt``, ``train/``, ``val/``)
digits          ``digits/digits.csv.gz`` (scikit-learn's 8x8 UCI digits)
synthetic       generated in memory (no files), for tests and smoke runs
==============  ==========================================================

With ``source="auto"`` (the default) raw files win; when they are absent and
tensorflow-datasets is installed, data it has already prepared
(``tfds.data_source``, array_record, read without TensorFlow) is used for
mnist, fashion_mnist, cifar10 and cifar100. Nothing is ever downloaded here.
Missing data raises ``FileNotFoundError`` naming the path and the command that
provisions it (``eoi-jax data fetch NAME``). Raw files of a dataset whose
counts (and content checksums) are known are checked before use, once per data
folder (:func:`eoi_jax.training.data.verification.check_once`): files that
decode but hold other data raise
:class:`~eoi_jax.training.data.verification.DatasetMismatch` naming ``eoi-jax
data verify NAME``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from eoi_jax.training.data import verification
from eoi_jax.training.data.formats import CorruptFileError
from eoi_jax.training.data.specs import SPECS, DatasetInfo


class Split(NamedTuple):
  images: np.ndarray  # uint8 (N, H, W, C)
  labels: np.ndarray  # int32 (N,)

  def __len__(self):
    return len(self.labels)


class Dataset(NamedTuple):
  train: Split
  val: Split
  test: Split
  info: DatasetInfo


def default_data_dir() -> Path:
  """``$EOI_DATA_DIR``, else ``$XDG_CACHE_HOME/eoi-jax/data`` (``~/.cache``)."""
  if os.environ.get("EOI_DATA_DIR"):
    return Path(os.environ["EOI_DATA_DIR"]).expanduser()
  cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
  return cache / "eoi-jax" / "data"


def synthetic(num_train=1000, num_test=200, image_shape=(8, 8, 1), num_classes=10, seed=0):
  """A learnable synthetic set: one fixed random template per class plus noise."""
  rng = np.random.default_rng(seed)
  templates = rng.uniform(0, 255, (num_classes,) + tuple(image_shape))

  def make(n):
    labels = rng.integers(0, num_classes, n).astype(np.int32)
    noise = rng.normal(0, 40, (n,) + tuple(image_shape))
    return np.clip(templates[labels] + noise, 0, 255).astype(np.uint8), labels

  return make(num_train), make(num_test)


def _read_tfds(name: str, data_dir, split: str):
  """A prepared tensorflow-datasets split as arrays (``download=False``)."""
  import tensorflow_datasets as tfds

  source = tfds.data_source(SPECS[name].tfds_name, split=split, download=False,
                            data_dir=None if data_dir is None else str(data_dir))
  records = [source[i] for i in range(len(source))]
  images = np.stack([np.asarray(r["image"], np.uint8) for r in records])
  labels = np.asarray([int(r["label"]) for r in records], np.int32)
  return images, labels


def _tfds_available() -> bool:
  try:
    import tensorflow_datasets  # noqa: F401
  except ImportError:
    return False
  return True


def split_train_val(images, labels, val_fraction: float, seed: int = 0):
  """Deterministic hold-out: a seeded permutation's last ``val_fraction``."""
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
  order = np.random.default_rng(seed).permutation(len(labels))
  num_val = int(round(val_fraction * len(labels)))
  train_idx, val_idx = np.sort(order[: len(labels) - num_val]), np.sort(order[len(labels) - num_val:])
  return Split(images[train_idx], labels[train_idx]), Split(images[val_idx], labels[val_idx])


def _advice(name: str, root: Path) -> str:
  return (f"Check the dataset with `eoi-jax data verify {name} --data-dir {root}`; "
          f"`eoi-jax data fetch {name} --force` replaces it")


def load(name: str, data_dir=None, *, val_fraction: float = 0.1, split_seed: int = 0,
         limit: int | None = None, source: str = "auto", verify: bool = True) -> Dataset:
  """Loads a dataset as uint8 NHWC arrays in train / val / test splits.

  Args:
    name: one of :data:`eoi_jax.training.data.DATASETS`.
    data_dir: folder holding the raw files (see module docstring).
    val_fraction: share of the training set held out for validation, [0, 1).
    split_seed: seed of the deterministic hold-out permutation.
    limit: keep only the first ``limit`` examples of train and of test
      (smoke runs).
    source: ``"auto"`` (raw files, else prepared tensorflow-datasets data),
      ``"raw"`` or ``"tfds"``.
    verify: check raw files against the dataset's known counts and content
      (:mod:`~eoi_jax.training.data.verification`; once per data folder
      until a file changes). Generated data and tensorflow-datasets data
      (verified by tensorflow-datasets) are not checked.

  Returns:
    A :class:`Dataset` ``(train, val, test, info)``.

  Raises:
    FileNotFoundError: no data (names the folder and ``eoi-jax data fetch``).
    CorruptFileError: a file that cannot be decoded (names it).
    DatasetMismatch: files that decode but hold other data (names
      ``eoi-jax data verify``).

  Example:
    >>> ds = load("mnist")
    >>> ds.train.images.shape, ds.info.num_classes
    ((54000, 28, 28, 1), 10)
  """
  if name not in SPECS:
    raise ValueError(f"dataset must be one of {list(SPECS)}, got {name!r}")
  if limit is not None and limit <= 0:
    raise ValueError(f"limit must be positive, got {limit}")
  if source not in ("auto", "raw", "tfds"):
    raise ValueError(f"source must be 'auto', 'raw' or 'tfds', got {source!r}")
  spec = SPECS[name]
  info = spec.info
  if spec.read is None:
    train, test = synthetic(image_shape=info.image_shape, num_classes=info.num_classes)
  else:
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    folder = root / info.folder
    use_tfds = source == "tfds" or (
        source == "auto" and not folder.exists() and spec.tfds_name and _tfds_available())
    if use_tfds:
      if not spec.tfds_name:
        supported = sorted(n for n, s in SPECS.items() if s.tfds_name)
        raise ValueError(f"source='tfds' supports {supported}, not {name!r}")
      try:
        train, test = (_read_tfds(name, data_dir, "train"), _read_tfds(name, data_dir, "test"))
      except Exception as e:  # tfds raises various errors for absent data
        raise FileNotFoundError(
            f"{name}: no raw files in {folder} and no prepared tensorflow-datasets data "
            f"({type(e).__name__}: {e}). Provision it with `eoi-jax data fetch {name} "
            f"--data-dir {root}`.") from e
    else:
      if not folder.exists():
        raise FileNotFoundError(
            f"{name}: {folder} not found. Provision it with `eoi-jax data fetch {name} "
            f"--data-dir {root}` or place the files there (see eoi_jax.training.data)."
        )
      try:
        train, test = spec.read(folder, "train"), spec.read(folder, "test")
      except CorruptFileError as e:
        raise CorruptFileError(e.path, f"{e.reason}. {_advice(name, root)}") from e
      if verify and verification.checked(name):
        try:
          verification.check_once(name, folder, train, test)
        except verification.DatasetMismatch as e:
          raise verification.DatasetMismatch(f"{e} in {folder}. {_advice(name, root)}") from None
  if limit is not None:
    train, test = (train[0][:limit], train[1][:limit]), (test[0][:limit], test[1][:limit])
  for split_name, (x, y) in (("train", train), ("test", test)):
    if x.shape[1:] != info.image_shape or x.dtype != np.uint8:
      raise ValueError(f"{name} {split_name}: images {x.shape} {x.dtype}, expected "
                       f"(N,) + {info.image_shape} uint8")
    if len(y) and (y.min() < 0 or y.max() >= info.num_classes):
      raise ValueError(f"{name} {split_name}: labels outside [0, {info.num_classes})")
  train_split, val_split = split_train_val(*train, val_fraction, split_seed)
  return Dataset(train_split, val_split, Split(*test), info)
