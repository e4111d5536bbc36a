"""Sparse orthogonal matrices from sequences of random Givens rotations.

This is the core of Exact Orthogonal Initialization (Nowak et al., ICML 2024).
Start from the wide ``rows x cols`` matrix ``A = [I | 0]`` (``rows <= cols``)
and repeatedly rotate a random pair of its columns ``(i, j)`` by a random angle.
Every rotation keeps ``A @ A.T == I`` exactly (up to rounding) and can only
grow the support, so the density rises from ``1 / cols`` towards 1. The loop
stops at the first rotation whose density reaches the target and returns
whichever of the last two matrices is closer to it.

How it runs. The matrix is held transposed, ``(cols, rows)``, so a column pair
of ``A`` is two contiguous rows. Two ``lax.scan`` passes share the rotations:

1. The support pass simulates the supports alone, as bit-packed rows (32 rows
   of ``A`` per uint32 word). A rotation ORs two columns' bit sets and adds the
   popcount of their XOR to the non-zero count: O(rows / 32) work, no
   trigonometry. The stopping rotation follows from the running count.
2. The value pass applies exactly that many rotations (later steps rotate by
   angle 0), each a two-row read, a 2x2 product and a two-row write, updated
   in place by XLA: O(rows) per rotation, never a recount of the matrix.

Both scans run a static number of steps chosen from the support Markov chain
(:func:`max_rotations`); when the target is not reached by then, a
``lax.while_loop`` continues in chunks, so the result is exact for every key.

Rotation ``t`` depends only on ``(key, t)`` (through ``jax.random.fold_in``),
so the sequence for a denser target extends the one for a sparser target, and
:func:`rotation_sequence` reproduces the rotations any call used. Angles are
drawn from the open interval ``(0, 2 pi)`` at odd multiples of the dtype's
resolution, so no computed ``sin`` or ``cos`` is exactly zero and the support
of the values follows the support pass; only an exact floating-point
cancellation (about 1e-8 per overlapping entry and rotation) can leave an
entry of the support at zero, and the returned mask is always ``matrix != 0``.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from eoi_jax import _validation, chain
from eoi_jax.counts import snap

Array = jax.Array

_TWO_PI = 2.0 * math.pi
_WORD_BITS = 32


class GivensResult(NamedTuple):
  """Output of :func:`givens_orthogonal`.

  Attributes:
    matrix: ``(rows, cols)`` array with orthonormal rows (``rows <= cols``).
    num_rotations: int32 scalar, number of rotations applied; the matrix equals
      ``apply_rotations(*rotation_sequence(key, cols, num_rotations), rows, cols)``.
    nnz: int32 scalar, number of non-zero entries of ``matrix``.
  """

  matrix: Array
  num_rotations: Array
  nnz: Array


class _SupportState(NamedTuple):
  support: Array  # (cols, words) uint32: bit b of word w of column k is row 32 w + b.
  nnz: Array  # non-zeros after the rotations simulated so far.
  next_index: Array  # index of the next rotation to draw.
  done: Array  # the stopping rotation is known.
  num_rotations: Array  # rotations to apply (valid once done).


class _ValueState(NamedTuple):
  columns: Array  # (cols, rows): A transposed, one row per column of A.
  next_index: Array


# ----------------------------------------------------------------------------
# Rotation sequences.


def _below(bits, n):
  """Maps uint32 ``bits`` to ``[0, n)`` as ``floor(bits * n / 2**32)``.

  The 64-bit product is formed from 16-bit limbs in uint32 arithmetic, so it
  is exact without x64. Each value has probability within ``n / 2**32`` of
  ``1 / n`` (below 1e-6 relative for ``n <= 4096``).
  """
  n = jnp.uint32(n)
  mask = jnp.uint32(0xFFFF)
  x_lo, x_hi = bits & mask, bits >> 16
  n_lo, n_hi = n & mask, n >> 16
  lo_lo, lo_hi, hi_lo = x_lo * n_lo, x_lo * n_hi, x_hi * n_lo
  middle = (lo_lo >> 16) + (lo_hi & mask) + (hi_lo & mask)
  high = x_hi * n_hi + (lo_hi >> 16) + (hi_lo >> 16) + (middle >> 16)
  return high.astype(jnp.int32)


def _open_unit_interval(hi_bits, lo_bits, dtype):
  """Uniform on odd multiples of ``2**-p`` in (0, 1), p the dtype's precision."""
  if jnp.dtype(dtype).itemsize >= 8:
    top = (hi_bits >> 12).astype(dtype) * 2.0**32 + lo_bits.astype(dtype)
    return (2.0 * top + 1.0) * 2.0**-53
  return (2.0 * (hi_bits >> 9).astype(dtype) + 1.0) * 2.0**-24


def _sample_rotation(key, index, num_cols, dtype):
  bits = jax.random.bits(jax.random.fold_in(key, index), (4,), jnp.uint32)
  i = _below(bits[0], num_cols)
  j = _below(bits[1], num_cols - 1)
  j = j + (j >= i).astype(jnp.int32)  # uniform over j != i
  angle = _TWO_PI * _open_unit_interval(bits[2], bits[3], dtype)
  return jnp.stack([i, j]), angle.astype(dtype)


def _sample_rotations(key, indices, num_cols, dtype):
  return jax.vmap(_sample_rotation, in_axes=(None, 0, None, None))(
      key, indices, num_cols, dtype
  )


def rotation_sequence(
    key: Array, num_cols: int, num_rotations: int, *, dtype=jnp.float32
) -> tuple[Array, Array]:
  """The first ``num_rotations`` Givens rotations drawn from ``key``.

  These are exactly the rotations :func:`givens_orthogonal` (and so every EOI
  generator) applies for the same key and column count.

  Args:
    key: a ``jax.random`` key.
    num_cols: number of columns ``c`` of the wide matrix (``>= 2``).
    num_rotations: how many rotations to return (static).
    dtype: float dtype of the angles.

  Returns:
    ``(pairs, angles)``: int32 ``(n, 2)`` column pairs with distinct entries,
    uniform over ordered pairs, and ``(n,)`` angles uniform in ``(0, 2 pi)``.

  Example:
    >>> pairs, angles = rotation_sequence(jax.random.key(0), 8, 3)
    >>> pairs.shape, angles.shape
    ((3, 2), (3,))
  """
  if int(num_cols) < 2:
    raise ValueError(f"num_cols must be >= 2, got {num_cols}")
  if int(num_rotations) < 0:
    raise ValueError(f"num_rotations must be >= 0, got {num_rotations}")
  return _rotation_sequence(key, int(num_cols), int(num_rotations), jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _rotation_sequence(key, num_cols, num_rotations, dtype):
  indices = jnp.arange(num_rotations, dtype=jnp.int32)
  return _sample_rotations(key, indices, num_cols, dtype)


# ----------------------------------------------------------------------------
# Loop bodies. Reads are two dynamic slices, not a gather (3-4x slower on CPU),
# and writes are two dynamic updates; XLA then updates the carried matrix in
# place. Anything that keeps the read rows alive across the write, or fuses
# the read into the written value, makes XLA copy the whole matrix every
# step: the support pass therefore materialises its reads behind an
# optimization barrier, and the value pass rotates with a 2x2 product (the
# equivalent elementwise expression fused into a loop about 5x slower).


def _read_pair(columns, pair):
  return jnp.concatenate([
      lax.dynamic_slice_in_dim(columns, pair[0], 1),
      lax.dynamic_slice_in_dim(columns, pair[1], 1),
  ])


def _write_pair(columns, pair, new):
  columns = lax.dynamic_update_slice_in_dim(columns, new[:1], pair[0], 0)
  return lax.dynamic_update_slice_in_dim(columns, new[1:], pair[1], 0)


def _rotate_pair(columns, pair, cos, sin):
  """Rotates columns ``pair`` of ``A`` (rows of ``columns``) by (cos, sin)."""
  rotation = jnp.stack([jnp.stack([cos, sin]), jnp.stack([-sin, cos])])
  return _write_pair(columns, pair, rotation @ _read_pair(columns, pair))


def _support_step(support, pair):
  old = lax.optimization_barrier(_read_pair(support, pair))
  grown = jnp.sum(lax.population_count(old[0] ^ old[1]), dtype=jnp.int32)
  union = (old[0] | old[1])[None]
  return _write_pair(support, pair, jnp.concatenate([union, union])), grown


def _packed_identity(rows, cols):
  """Bit-packed support of ``[I | 0]`` in the ``(cols, words)`` layout."""
  words = -(-rows // _WORD_BITS)
  k = jnp.arange(rows)
  bits = jnp.left_shift(jnp.uint32(1), (k % _WORD_BITS).astype(jnp.uint32))
  return jnp.zeros((cols, words), jnp.uint32).at[k, k // _WORD_BITS].set(bits)


@functools.partial(jax.jit, static_argnames=("rows", "cols", "dtype"))
def apply_rotations(
    pairs: Array, angles: Array, rows: int, cols: int, *, dtype=jnp.float32
) -> Array:
  """Applies Givens rotations one by one to the wide matrix ``[I | 0]``.

  Rotation ``(i, j, a)`` replaces columns ``(A_i, A_j)`` by
  ``(cos a A_i + sin a A_j, -sin a A_i + cos a A_j)``.

  Args:
    pairs: int ``(n, 2)`` column pairs.
    angles: ``(n,)`` angles.
    rows: number of rows ``r``.
    cols: number of columns ``c >= r``.
    dtype: float dtype of the result.

  Returns:
    The ``(rows, cols)`` matrix; its rows are orthonormal.
  """
  columns = jnp.eye(cols, rows, dtype=dtype)

  def step(columns, rotation):
    pair, angle = rotation
    angle = angle.astype(dtype)
    return _rotate_pair(columns, pair, jnp.cos(angle), jnp.sin(angle)), None

  columns, _ = lax.scan(step, columns, (pairs.astype(jnp.int32), angles))
  return columns.T


@functools.partial(jax.jit, static_argnames=("rows", "cols", "num_rotations"))
def support_trajectory(key: Array, rows: int, cols: int, num_rotations: int) -> Array:
  """Number of non-zeros after each of the first ``num_rotations`` rotations.

  Runs the support pass alone: a rotation on ``(i, j)`` makes both columns
  non-zero in every row that holds either. Its mean over keys follows the
  row chain of :mod:`eoi_jax.chain`.

  Args:
    key: a ``jax.random`` key (same rotations as :func:`givens_orthogonal`).
    rows: ``r``; cols: ``c >= r``; num_rotations: static length.

  Returns:
    int32 ``(num_rotations + 1,)``; entry ``t`` is the non-zero count after
    ``t`` rotations (entry 0 is ``rows``).
  """
  pairs, _ = _rotation_sequence(key, cols, num_rotations, jnp.dtype(jnp.float32))
  _, grown = lax.scan(_support_step, _packed_identity(rows, cols), pairs)
  return jnp.concatenate([jnp.array([rows], jnp.int32), rows + jnp.cumsum(grown)])


# ----------------------------------------------------------------------------
# Planning.


def _chunk_length(cols: int) -> int:
  return max(16, int(cols) // 8)


def max_rotations(rows: int, cols: int, density: float) -> int:
  """Static scan length used for a ``rows x cols`` target of ``density``.

  The mean-field time plus a margin for the chain's early-phase spread, which
  shrinks like ``1 / sqrt(rows)`` (about 0.2 ``c`` for 100 rows). Generators
  stay exact beyond it (they continue in a while loop); this only sets how
  much work is done without a data-dependent loop. It is rounded up to a
  multiple of the continuation chunk so that nearby densities share one
  compiled program.
  """
  r, c = int(rows), int(cols)
  if c < 2:
    return 0
  d = min(float(density), 1.0 - 1.0 / (2.0 * r * c))
  steps = chain.mean_field_rotations(c, d) + c * (0.25 + 1.5 / math.sqrt(r))
  chunk = _chunk_length(c)
  return int(math.ceil(steps / chunk)) * chunk


def integer_targets(density, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
  """Host-side integer form of the stopping rule.

  Returns:
    ``(target_nnz, undo_above)`` as int32 arrays shaped like ``density``:
    stop at the first rotation with ``nnz >= target_nnz``
    (``= ceil(d r c)``); then go back one rotation when
    ``nnz_prev + nnz > undo_above`` (``= floor(2 d r c)``), which is exactly
    ``|nnz_prev - d r c| < |nnz - d r c|``.
  """
  size = float(rows) * float(cols)
  if size >= 2**31:
    raise ValueError(f"rows * cols must be below 2**31, got {rows} x {cols}")
  scaled = np.asarray(density, np.float64) * size
  target = np.ceil(snap(scaled)).astype(np.int32)
  undo_above = np.floor(snap(2.0 * scaled)).astype(np.int32)
  return target, undo_above


# ----------------------------------------------------------------------------
# The generator.


@functools.partial(jax.jit, static_argnames=("rows", "cols", "num_steps", "dtype"))
def givens_core(
    key: Array,
    rows: int,
    cols: int,
    target_nnz: Array,
    undo_above: Array,
    num_steps: int,
    dtype=jnp.float32,
) -> GivensResult:
  """Traceable EOI loop; the targets may be traced (for ``vmap`` over layers).

  Args:
    key: a ``jax.random`` key.
    rows, cols: static sizes, ``rows <= cols``.
    target_nnz, undo_above: int32 scalars from :func:`integer_targets`.
    num_steps: static scan length, e.g. :func:`max_rotations`.
    dtype: float dtype of the computation.

  Returns:
    A :class:`GivensResult`.
  """
  r, c = int(rows), int(cols)
  if r > c:
    raise ValueError(f"rows must be <= cols, got {rows} x {cols}")
  dtype = jnp.dtype(dtype)
  if c == 1:
    return GivensResult(jnp.ones((1, 1), dtype), jnp.int32(0), jnp.int32(1))
  target_nnz = jnp.asarray(target_nnz, jnp.int32)
  undo_above = jnp.asarray(undo_above, jnp.int32)
  chunk = _chunk_length(c)

  def sample(start, length):
    indices = start + jnp.arange(length, dtype=jnp.int32)
    return _sample_rotations(key, indices, c, dtype)

  # Pass 1: supports only, to find the number of rotations.
  def advance_support(state: _SupportState, pairs) -> _SupportState:
    support, grown = lax.scan(_support_step, state.support, pairs)
    after = state.nnz + jnp.cumsum(grown)
    before = jnp.concatenate([state.nnz[None], after[:-1]])
    hit = after >= target_nnz
    first = jnp.argmax(hit)
    # At the first rotation reaching the target, stop before it when the
    # previous matrix is strictly closer: |before - d r c| < |after - d r c|.
    closer_before = before[first] + after[first] > undo_above
    stop = state.next_index + first + 1 - closer_before.astype(jnp.int32)
    newly_done = ~state.done & jnp.any(hit)
    return _SupportState(
        support=support,
        nnz=after[-1],
        next_index=state.next_index + pairs.shape[0],
        done=state.done | newly_done,
        num_rotations=jnp.where(newly_done, stop, state.num_rotations),
    )

  pairs, angles = sample(jnp.int32(0), num_steps)
  state = _SupportState(
      support=_packed_identity(r, c),
      nnz=jnp.int32(r),
      next_index=jnp.int32(0),
      done=jnp.int32(r) >= target_nnz,
      num_rotations=jnp.int32(0),
  )
  if num_steps > 0:
    state = advance_support(state, pairs)
  state = lax.while_loop(
      lambda s: ~s.done,
      lambda s: advance_support(s, sample(s.next_index, chunk)[0]),
      state,
  )
  num_rotations = state.num_rotations

  # Pass 2: values; rotations past the stopping one turn by angle 0.
  def advance_values(state: _ValueState, rotations) -> _ValueState:
    def step(carry, rotation):
      columns, index = carry
      pair, angle = rotation
      apply = index < num_rotations
      cos = jnp.where(apply, jnp.cos(angle), jnp.ones_like(angle))
      sin = jnp.where(apply, jnp.sin(angle), jnp.zeros_like(angle))
      return (_rotate_pair(columns, pair, cos, sin), index + 1), None

    (columns, index), _ = lax.scan(step, (state.columns, state.next_index), rotations)
    return _ValueState(columns, index)

  values = _ValueState(jnp.eye(c, r, dtype=dtype), jnp.int32(0))
  if num_steps > 0:
    values = advance_values(values, (pairs, angles))
  values = lax.while_loop(
      lambda s: s.next_index < num_rotations,
      lambda s: advance_values(s, sample(s.next_index, chunk)),
      values,
  )
  nnz = jnp.count_nonzero(values.columns).astype(jnp.int32)
  return GivensResult(values.columns.T, num_rotations, nnz)




def givens_orthogonal(
    key: Array, rows: int, cols: int, density: float, *, dtype=jnp.float32
) -> GivensResult:
  """Sparse ``rows x cols`` matrix with orthonormal rows at a target density.

  The EOI construction on the wide matrix; :func:`eoi_jax.sparse_orthogonal`
  wraps it for Flax layouts, gains and dtypes.

  Args:
    key: a ``jax.random`` key.
    rows: ``r >= 1``.
    cols: ``c >= r``.
    density: target fraction of non-zeros in (0, 1]. A density at or below
      ``1 / cols`` returns ``[I | 0]`` (no rotation).
    dtype: float dtype of the computation and result.

  Returns:
    A :class:`GivensResult` (matrix, rotations used, non-zeros).

  Example:
    >>> res = givens_orthogonal(jax.random.key(0), 64, 128, 0.1)
    >>> res.matrix.shape
    (64, 128)
  """
  r, c = _validation.check_shape((rows, cols), (2,), name="(rows, cols)")
  if r > c:
    raise ValueError(f"rows must be <= cols, got rows={r}, cols={c}")
  d = _validation.check_density(density)
  target, undo_above = integer_targets(d, r, c)
  return givens_core(key, r, c, target, undo_above, max_rotations(r, c, d), dtype)
