"""Whether a dataset's files hold that dataset: example counts, every class
present, and for datasets of known content the SHA-256 of the decoded arrays.

``eoi-jax data verify NAME`` checks on every call (:func:`check_content`).
Loading checks once per data folder (:func:`check_once`): a folder that
passed is remembered with each file's size and modification time, in
``$XDG_CACHE_HOME/eoi-jax/verified-data.json`` (never in the data folder,
which may be shared or read-only), so loading it again costs one ``stat``
per file; a file replaced, rewritten or touched is checked again.

Example:
  >>> check_content("mnist", (train_images, train_labels), (test_images, test_labels))
  {'train': 60000, 'test': 10000}
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from eoi_jax.training.data.specs import SPECS
from eoi_jax.training.rundir import write_atomic


class DatasetMismatch(ValueError):
  """A dataset's files decode, but do not hold the dataset (counts, classes or
  content differ from what is known of it)."""


def digest(array) -> str:
  """SHA-256 of an array's bytes (C order)."""
  return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def checked(name: str) -> bool:
  """Whether anything is known of ``name``'s content to check (its counts)."""
  return name in SPECS and SPECS[name].counts is not None


def check_content(name: str, train, test) -> dict:
  """Checks decoded arrays against what is known of dataset ``name``.

  Args:
    name: a dataset of :data:`eoi_jax.training.data.SPECS` with known counts.
    train: ``(images, labels)`` of the whole training split, uint8 NHWC and
      integer labels.
    test: the same for the test split.

  Returns:
    ``{"train": count, "test": count}``.

  Raises:
    DatasetMismatch: the counts differ, a class is absent, or the content's
      SHA-256 differs (corrupt, cut or reordered files).
  """
  spec = SPECS[name]
  counts = len(train[1]), len(test[1])
  if counts != spec.counts:
    raise DatasetMismatch(f"{name}: {counts[0]}/{counts[1]} train/test examples, expected "
                          f"{spec.counts}")
  for split_name, (images, labels) in (("train", train), ("test", test)):
    present = len(np.unique(labels))
    if present != spec.info.num_classes:
      raise DatasetMismatch(f"{name} {split_name}: {present} classes present, expected "
                            f"{spec.info.num_classes}")
    if spec.content_sha256 is not None:
      got = digest(np.asarray(images)[..., 0]), digest(np.asarray(labels).astype(np.uint8))
      if got != spec.content_sha256[split_name]:
        raise DatasetMismatch(f"{name} {split_name}: content checksum mismatch (corrupt or "
                              "reordered files)")
  return {"train": counts[0], "test": counts[1]}


def record_path() -> Path:
  """Where folders that passed are remembered:
  ``$XDG_CACHE_HOME/eoi-jax/verified-data.json`` (``~/.cache``)."""
  cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
  return cache / "eoi-jax" / "verified-data.json"


def _stamps(folder: Path) -> dict:
  """``{relative path: [size, mtime_ns]}`` of every file below ``folder``."""
  out = {}
  for path in sorted(folder.rglob("*")):
    if path.is_file():
      stat = path.stat()
      out[str(path.relative_to(folder))] = [stat.st_size, stat.st_mtime_ns]
  return out


def _expected(name: str) -> str:
  """What a check of ``name`` compares with (a changed spec checks again)."""
  spec = SPECS[name]
  return hashlib.sha256(json.dumps([spec.counts, spec.content_sha256]).encode()).hexdigest()


def _read_records(path: Path) -> dict:
  try:
    records = json.loads(path.read_text())
  except (OSError, ValueError):
    return {}
  return records if isinstance(records, dict) else {}


def check_once(name: str, folder, train, test) -> bool:
  """:func:`check_content`, unless ``folder`` passed it before and none of
  its files changed since (same names, sizes and modification times).

  Args:
    name: the dataset.
    folder: its folder (the files ``train`` and ``test`` were read from).
    train: ``(images, labels)`` of the whole training split.
    test: the same for the test split.

  Returns:
    Whether the content was checked now (``False``: it passed before).

  Raises:
    DatasetMismatch: as :func:`check_content` (nothing is remembered).
  """
  folder = Path(folder).resolve()
  entry = {"dataset": name, "expected": _expected(name), "files": _stamps(folder)}
  path = record_path()
  if _read_records(path).get(str(folder)) == entry:
    return False
  check_content(name, train, test)
  # Folders that are gone are forgotten; two processes writing at once lose
  # at most an entry (that folder is checked once more).
  records = {k: v for k, v in _read_records(path).items() if Path(k).is_dir()}
  records[str(folder)] = entry
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(records))
  except OSError:
    pass  # an unwritable cache costs a check per load, nothing else
  return True
