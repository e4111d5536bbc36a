"""Exact integer counts from float densities.

Densities such as 0.1 are not representable in binary, so ``0.1 * 100`` is
``10.000000000000002`` and a plain ``ceil`` would ask for 11 entries. Every
density-to-count conversion in the package goes through :func:`snap`, which
rounds products that lie within floating-point noise of an integer.
"""

from __future__ import annotations

import numpy as np


def snap(x):
  """Rounds values within 1e-9 (relative) of an integer to that integer."""
  x = np.asarray(x, dtype=np.float64)
  nearest = np.round(x)
  close = np.abs(x - nearest) <= 1e-9 * np.maximum(1.0, np.abs(x))
  return np.where(close, nearest, x)


def count_for_density(density, size):
  """Number of kept entries for ``density`` of ``size`` entries.

  Rounds half up, so a request is met as closely as an integer count allows.

  Args:
    density: float or array of floats in [0, 1].
    size: total number of entries (int or array broadcasting with density).

  Returns:
    ``int`` (or int64 array) in [0, size].
  """
  count = np.floor(snap(np.asarray(density, np.float64) * size) + 0.5)
  count = np.clip(count, 0, size).astype(np.int64)
  return count.item() if count.ndim == 0 else count
