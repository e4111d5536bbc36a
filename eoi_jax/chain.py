"""The support Markov chain of EOI: what the rotations do to the support, in law.

A rotation on columns ``(i, j)`` changes a row's support only when exactly one
of ``i, j`` is in it; then both enter it. So one row's non-zero count ``X`` is
a pure-birth chain with ``P(X -> X + 1) = 2 X (c - X) / (c (c - 1))`` and
``X_0 = 1``, and ``E[density after t rotations] = E[X_t] / c``. This module
holds that chain's exact law, its hitting times and its mean field, which
sizes the generator's static loops (:func:`eoi_jax.givens.max_rotations`);
:func:`eoi_jax.givens.support_trajectory` gives the simulated non-zero counts
of one key to compare with.

Block EOI (:mod:`eoi_jax.block_givens`) rotates ``b``-wide block columns: its
block support is the scalar chain's on ``c / b`` columns, so every law here
holds for it with ``cols`` replaced by ``cols / b`` (the density then counts
stored blocks, which is the mask's density); :func:`expected_density` takes
``block`` and does the replacement.

Example:
  >>> law = row_chain_distribution(128, 200)      # (201, 129)
  >>> mean_field_rotations(128, 0.125)            # about 190 rotations
  >>> expected_density(1024, 40, block=32)[-1]    # block EOI's mask after 40 steps
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


def expected_density(cols: int, num_rotations: int, block: int = 1) -> np.ndarray:
  """Exact expected density of EOI's support after each number of rotations.

  Every row's non-zero count follows the row chain, so ``E[density after t]
  = E[X_t] / c``. For block EOI with ``b x b`` blocks the mask's density is
  the block support's, whose rows follow the same chain on ``c / b`` block
  columns: the law with ``cols / b``.

  Args:
    cols: columns ``c`` of the wide matrix (``max(in, out)``).
    num_rotations: number of steps ``T`` (rotations, or block steps).
    block: the block size ``b`` (1: scalar EOI); must divide ``cols``.

  Returns:
    float64 ``(T + 1,)``: entry ``t`` is the expected density after ``t`` steps.

  Example:
    >>> expected_density(64, 0)[0]  # [I | 0]: one non-zero per row
    0.015625
  """
  c, b = int(cols), int(block)
  if b < 1 or c % b:
    raise ValueError(f"block must be a positive int dividing cols={c}, got {block}")
  blocks = c // b
  law = row_chain_distribution(blocks, num_rotations)
  return law @ np.arange(blocks + 1) / blocks
