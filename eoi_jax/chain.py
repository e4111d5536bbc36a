"""The support Markov chain of EOI: what the rotations do to the support, in law.

A rotation on columns ``(i, j)`` changes a row's support only when exactly one
of ``i, j`` is in it; then both enter it. So one row's non-zero count ``X`` is
a pure-birth chain with ``P(X -> X + 1) = 2 X (c - X) / (c (c - 1))`` and
``X_0 = 1``, and ``E[density after t rotations] = E[X_t] / c``. This module
holds that chain's exact law, its hitting times and its mean field, which
sizes the generator's static loops (:func:`eoi_jax.givens.max_rotations`);
:func:`eoi_jax.givens.support_trajectory` gives the simulated non-zero counts
of one key to compare with.

Example:
  >>> law = row_chain_distribution(128, 200)      # (201, 129)
  >>> mean_field_rotations(128, 0.125)            # about 190 rotations
"""

from __future__ import annotations

import math

import numpy as np


def mean_field_rotations(cols: int, density: float) -> float:
  """Mean-field number of rotations to reach ``density`` on ``c`` columns.

  A row's non-zero count ``X`` grows with ``P(X -> X + 1) = 2 X (c - X) /
  (c (c - 1))``; its mean-field (logistic) solution gives
  ``t = (c - 1) / 2 * ln((c - 1) d / (1 - d))``, or 0 when ``d <= 1 / c``.
  """
  c = int(cols)
  if c < 2 or density <= 1.0 / c:
    return 0.0
  d = min(float(density), 1.0 - 1e-12)
  return max(0.0, 0.5 * (c - 1) * math.log((c - 1) * d / (1.0 - d)))


def row_chain_distribution(cols: int, num_rotations: int) -> np.ndarray:
  """Exact law of one row's non-zero count after each number of rotations.

  Args:
    cols: number of columns ``c``.
    num_rotations: number of steps ``T``.

  Returns:
    float64 ``(T + 1, c + 1)``; row ``t`` is ``P(X_t = x)`` for ``x = 0..c``.
    ``E[density after t] = sum_x x P(X_t = x) / c`` for every row.
  """
  c = int(cols)
  x = np.arange(c + 1, dtype=np.float64)
  up = np.where(x >= 1, 2 * x * (c - x) / (c * (c - 1)), 0.0) if c > 1 else 0 * x
  prob = np.zeros(c + 1)
  prob[1] = 1.0
  out = [prob]
  for _ in range(int(num_rotations)):
    moved = prob * up
    prob = prob - moved
    prob[1:] += moved[:-1]
    out.append(prob)
  return np.stack(out)


def expected_row_hitting_time(cols: int, count: int) -> tuple[float, float]:
  """Mean and variance of the rotations one row needs to reach ``count`` non-zeros.

  The row's chain is pure birth, so the hitting time is a sum of independent
  geometric waits with success probabilities ``2 x (c - x) / (c (c - 1))``.
  For a ``1 x c`` matrix this is exactly the stopping step of EOI.
  """
  c = int(cols)
  x = np.arange(1, int(count), dtype=np.float64)
  p = 2 * x * (c - x) / (c * (c - 1))
  return float(np.sum(1 / p)), float(np.sum((1 - p) / p**2))
