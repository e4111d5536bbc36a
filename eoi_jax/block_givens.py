"""Block EOI: exactly orthogonal matrices whose support is a union of ``b x b`` blocks.

The scalar construction (:mod:`eoi_jax.givens`) rotates pairs of columns of
``[I | 0]``. Here the columns come in ``b``-wide *block columns*: each step
picks two block columns ``(i, j)`` exactly as the scalar generator picks two
columns among ``cols / b``, and right-multiplies their ``2 b`` columns by a
random ``2b x 2b`` orthogonal matrix (Haar: the QR factor of a Gaussian
matrix, signs fixed by ``R``'s diagonal). Every step keeps ``A @ A.T == I``
(up to rounding) and, like a Givens rotation, makes a block row non-zero in
both block columns whenever it is non-zero in either. So the block support
is exactly the scalar support of the same key's run on the ``(rows / b) x
(cols / b)`` matrix, and the stopping rule, the density law
(:mod:`eoi_jax.chain` with ``cols / b`` columns) and the number of steps are
the scalar ones at block level.

How it runs. The scalar generator runs at block level
(:func:`eoi_jax.givens.padded_core` on the ``(rows / b) x (cols / b)``
problem, same key, same program as scalar EOI of that size) and gives the
number of steps ``n``; then one loop applies the first ``n`` steps to the
values: two ``b``-row slabs of the transposed matrix read, multiplied by the
step's orthogonal matrix, written back in place, the block support ORed.
Step ``t``'s block columns come from ``fold_in(key, t)`` (those of
:func:`eoi_jax.givens.rotation_sequence` on ``cols / b`` columns) and its
orthogonal matrix from ``fold_in(fold_in(key, 2**32 - 1), t)``, an index no
rotation reaches. The mask is the block support, a union of whole blocks:
an untouched block column keeps its diagonal ``gain * I_b`` block, whose
off-diagonal entries are zeros that train.

Sizes are padded as the scalar generator pads them (:func:`eoi_jax.givens.bucket`
at block level, times ``b``): one compiled program per block-level
:class:`eoi_jax.givens.CoreShape` and block size serves every problem up to
that size at every density. A batch (a network's kernels, ``jax.vmap`` over
keys) runs as one loop over the batch (:func:`_batched_values`).

Example:
  >>> res = block_orthogonal(jax.random.key(0), 256, 512, 32, 0.25)
  >>> res.matrix.shape, res.block_support.shape
  ((256, 512), (8, 16))
"""

from __future__ import annotations

import functools
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from eoi_jax import _validation, givens

Array = jax.Array

# fold_in(key, _VALUE_STREAM) seeds the steps' orthogonal matrices; rotation
# indices are int32, so no step's own key fold_in(key, t) is this one.
_VALUE_STREAM = 0xFFFFFFFF


class BlockGivensResult(NamedTuple):
  """Output of :func:`block_orthogonal`.

  Attributes:
    matrix: ``(rows, cols)`` array with orthonormal rows (``rows <= cols``).
    block_support: bool ``(rows / b, cols / b)``: the stored blocks. Equal
      to the support of ``givens_orthogonal(key, rows / b, cols / b,
      density).matrix`` (the same key's scalar run at block level).
    num_rotations: int32 scalar, block steps applied.
    nnzb: int32 scalar, stored blocks.
  """

  matrix: Array
  block_support: Array
  num_rotations: Array
  nnzb: Array


def check_block(block, name: str = "block") -> int | None:
  """``None`` (scalar EOI) or a positive int; ``1`` is read as ``None``.

  Raises:
    TypeError: not an int (bools and floats included).
    ValueError: an int below 1.
  """
  if block is None:
    return None
  if isinstance(block, (bool, np.bool_)) or not isinstance(block, numbers.Integral):
    raise TypeError(f"{name} must be None or a positive int, got {type(block).__name__} "
                    f"{block!r}")
  if block < 1:
    raise ValueError(f"{name} must be None or a positive int, got {block}")
  return None if block == 1 else int(block)


def fits(matrix_shape, block: int | None) -> bool:
  """Whether ``block`` divides both sizes of an ``(in, out)`` matrix (``None`` fits all)."""
  return block is None or all(int(n) % block == 0 for n in matrix_shape[-2:])


def check_fits(matrix_shape, block: int | None, shape=None, name: str = "shape") -> None:
  """``ValueError`` naming ``block`` and the shape unless ``block`` divides both
  sizes of the ``(in, out)`` matrix ``matrix_shape`` (of kernel ``shape``)."""
  if fits(matrix_shape, block):
    return
  fan_in, fan_out = (int(n) for n in matrix_shape[-2:])
  of = "" if shape is None or tuple(shape) == tuple(matrix_shape) else (
      f" (each matrix of {name} {tuple(shape)})")
  raise ValueError(f"block={block} must divide both sizes of the (in, out) matrix "
                   f"({fan_in}, {fan_out}){of}: in and out must be multiples of block "
                   f"(or pass block=None for scalar EOI)")


def haar_orthogonal(key, size: int, dtype=jnp.float32) -> Array:
  """A Haar-random ``size x size`` orthogonal matrix: ``Q`` of the QR of a
  standard Gaussian matrix, each column's sign set by ``R``'s diagonal (without
  the fix ``Q`` is not Haar-distributed).

  The Gaussian is ``sqrt(2) erfinv(2 u - 1)`` of ``u =
  jax.random.uniform(key, (size * size,))`` (float32 draws, computed by
  :func:`eoi_jax.givens.uniform`: no slow-compiling hash inside the loop).
  """
  u = givens.uniform(key, size * size).reshape(size, size)
  gaussian = np.sqrt(2.0) * jax.scipy.special.erfinv(
      jnp.maximum(2.0 * u - 1.0, np.float32(-1.0 + 2.0**-23)))
  q, r = jnp.linalg.qr(gaussian.astype(dtype))
  signs = jnp.where(jnp.diagonal(r) < 0, -1, 1).astype(dtype)
  return q * signs[None, :]


def _fold_in(key, data):
  """``jax.random.fold_in(key, data)`` (``data`` uint32), computed by
  :func:`eoi_jax.givens._threefry2x32` for threefry keys (raw key words out)."""
  words = givens._threefry_key(key)
  if words is None:
    return jax.random.fold_in(key, data)
  data = jnp.asarray(data, jnp.uint32)
  return jnp.stack(givens._threefry2x32(words[0], words[1], jnp.zeros_like(data), data))


def _step(key, value_key, t, num_cols, block: int, dtype):
  """Step ``t``: its block columns ``(i, j)`` and ``2b x 2b`` orthogonal matrix."""
  pairs, _ = givens._sample_rotations(key, t[None], num_cols, dtype)
  return pairs[0], haar_orthogonal(_fold_in(value_key, t), 2 * block, dtype)


def _values_batch(keys, rows, cols, num_rotations, scale, *, shape: givens.CoreShape,
                  block: int, dtype):
  """Applies the first ``num_rotations[k]`` block steps of ``keys[k]`` to
  ``scale[k] * [I | 0]`` (``rows[k] x cols[k]`` blocks) for a batch.

  Returns ``(columns, support)``: ``(B, shape.cols * b, shape.rows * b)``
  values (the matrix transposed, zero-padded) and bool ``(B, shape.cols,
  shape.rows)`` block supports (transposed).
  """
  batch, b = keys.shape[0], block
  value_rows, value_cols = shape.rows * b, shape.cols * b
  k = jnp.arange(value_rows)
  on = k[None, :] < rows[:, None] * b
  diagonal = (jnp.arange(value_cols)[None, :, None] == k[None, None, :]) & on[:, None, :]
  columns = jnp.where(diagonal, scale[:, None, None].astype(dtype), jnp.zeros((), dtype))
  kb = jnp.arange(shape.rows)
  support = (jnp.arange(shape.cols)[None, :, None] == kb[None, None, :]) & (
      kb[None, None, :] < rows[:, None, None])
  lanes = jnp.arange(batch)[:, None]
  within = jnp.arange(b)

  value_keys = jax.vmap(lambda key: _fold_in(key, _VALUE_STREAM))(keys)

  def step(t, carry):
    columns, support = carry
    pairs, q = jax.vmap(lambda key, value_key, c: _step(key, value_key, t, c, b, dtype))(
        keys, value_keys, cols)
    apply = t < num_rotations
    slab_rows = jnp.concatenate([pairs[:, :1] * b + within, pairs[:, 1:] * b + within], axis=1)
    # The reads are materialised before the writes, so XLA updates in place.
    old = lax.optimization_barrier(columns[lanes, slab_rows])  # (B, 2b, R)
    new = jnp.einsum("bkl,bkr->blr", q, old, precision=lax.Precision.HIGHEST)
    columns = columns.at[lanes, slab_rows].set(
        jnp.where(apply[:, None, None], new, old), unique_indices=True)
    old_support = lax.optimization_barrier(support[lanes, pairs])  # (B, 2, rows)
    union = old_support[:, :1] | old_support[:, 1:]
    grown = jnp.where(apply[:, None, None], union, old_support)
    return columns, support.at[lanes, pairs].set(grown, unique_indices=True)

  return lax.fori_loop(0, jnp.max(num_rotations, initial=0), step, (columns, support))


@functools.lru_cache(maxsize=None)
def _batched_values(shape: givens.CoreShape, block: int, dtype):
  """:func:`_values_batch` with a batching rule: ``jax.vmap`` of it is the
  same loop over the merged batch (not a loop whose every step selects the
  whole carried matrix, as a vmapped loop of per-problem lengths would)."""

  def loop(keys, rows, cols, num_rotations, scale):
    return _values_batch(keys, rows, cols, num_rotations, scale, shape=shape, block=block,
                         dtype=dtype)

  return givens.merged_batch(loop)


@functools.partial(jax.jit, static_argnames=("shape", "block", "dtype", "rounds"))
def padded_block_core(key: Array, rows, cols, target_nnz, undo_above, scale=1.0, *,
                      shape: givens.CoreShape, block: int, dtype=jnp.float32,
                      rounds: bool = False):
  """Block EOI for a ``(rows b) x (cols b)`` problem (block counts traced) in a
  ``shape`` buffer of blocks.

  Args:
    key: a ``jax.random`` key.
    rows, cols: int32 block counts, ``rows <= cols``, at most the shape's.
    target_nnz, undo_above: int32 block targets from
      :func:`eoi_jax.givens.integer_targets` at block level.
    scale: the non-zeros of the starting ``[I | 0]`` (a kernel's gain).
    shape: the static block-level :class:`eoi_jax.givens.CoreShape`.
    block: the static block size ``b``.
    dtype: float dtype of the computation.
    rounds: the block-level scalar run in parallel rounds (same result).

  Returns:
    ``(columns, support, num_rotations)``: ``columns[:cols b, :rows b]`` is
    the matrix transposed (zeros elsewhere), ``support[:cols, :rows]`` its
    block support transposed, ``num_rotations`` int32.
  """
  args = [jnp.asarray(x, jnp.int32) for x in (rows, cols, target_nnz, undo_above)]
  _, num_rotations = givens.padded_core(key, *args, shape=shape, dtype=dtype, rounds=rounds)
  loop = _batched_values(shape, int(block), jnp.dtype(dtype))
  columns, support = loop(key[None], args[0][None], args[1][None], num_rotations[None],
                          jnp.asarray(scale, dtype)[None])
  return columns[0], support[0], num_rotations


def _check_problem(key, rows, cols, block):
  key = _validation.check_key(key)
  r, c = _validation.check_shape((rows, cols), (2,), name="(rows, cols)")
  b = check_block(block)
  if b is None:
    raise ValueError("block must be a positive int above 1 here (scalar EOI is "
                     "eoi_jax.givens_orthogonal)")
  check_fits((r, c), b, name="(rows, cols)")
  if r > c:
    raise ValueError(f"rows must be <= cols, got rows={r}, cols={c}")
  return key, r, c, b


def block_orthogonal(key: Array, rows: int, cols: int, block: int, density: float, *,
                     dtype=jnp.float32, rounds: bool | None = None) -> BlockGivensResult:
  """Sparse ``rows x cols`` matrix with orthonormal rows, its support whole ``b x b`` blocks.

  :func:`eoi_jax.sparse_orthogonal` with ``block=`` wraps it for Flax
  layouts, gains and dtypes.

  Args:
    key: a ``jax.random`` key.
    rows, cols: multiples of ``block``, ``rows <= cols``.
    block: ``b >= 2``.
    density: target fraction of stored blocks in (0, 1]: the realised
      block density is the closest the block-level run passes through (within
      half of one step's growth), at or below ``b / cols`` the block
      identity pattern.
    dtype: float dtype of the computation and result.
    rounds: the block-level scalar run in parallel rounds or one by one
      (``None``: :func:`eoi_jax.givens.default_rounds`); the same result.

  Returns:
    A :class:`BlockGivensResult`.

  Example:
    >>> res = block_orthogonal(jax.random.key(0), 64, 128, 16, 0.25)
    >>> int(res.nnzb)
    8
  """
  key, r, c, b = _check_problem(key, rows, cols, block)
  d = _validation.check_density(density)
  rb, cb = r // b, c // b
  target, undo_above = givens.integer_targets(d, rb, cb)
  shape = givens.CoreShape.of(rb, cb, d)
  columns, support, num_rotations = padded_block_core(
      key, rb, cb, target, undo_above, shape=shape, block=b, dtype=jnp.dtype(dtype),
      rounds=givens._check_rounds(rounds))
  block_support = support[:cb, :rb].T
  return BlockGivensResult(columns[:c, :r].T, block_support, num_rotations,
                           jnp.sum(block_support, dtype=jnp.int32))


def apply_block_steps(key: Array, rows: int, cols: int, block: int, num_rotations: int, *,
                      dtype=jnp.float32) -> tuple[Array, Array]:
  """The first ``num_rotations`` block steps of ``key`` applied to ``[I | 0]``.

  :func:`block_orthogonal` applies exactly these steps, ``num_rotations`` of
  them; this replays any number (e.g. to follow the block density step by
  step, :func:`eoi_jax.chain.expected_density`).

  Args:
    key: a ``jax.random`` key.
    rows, cols, block: as for :func:`block_orthogonal`.
    num_rotations: steps to apply (an int, or an int32 scalar under ``vmap``).
    dtype: float dtype of the result.

  Returns:
    ``(matrix, block_support)``: ``(rows, cols)`` and bool ``(rows / b, cols / b)``.
  """
  key, r, c, b = _check_problem(key, rows, cols, block)
  shape = givens.CoreShape(givens.bucket(r // b), givens.bucket(c // b), 16)
  columns, support = _replay(key, r // b, c // b, jnp.asarray(num_rotations, jnp.int32),
                             shape=shape, block=b, dtype=jnp.dtype(dtype))
  return columns[:c, :r].T, support[:c // b, :r // b].T


@functools.partial(jax.jit, static_argnames=("shape", "block", "dtype"))
def _replay(key, rows, cols, num_rotations, *, shape, block, dtype):
  loop = _batched_values(shape, block, dtype)
  columns, support = loop(key[None], jnp.int32(rows)[None], jnp.int32(cols)[None],
                          num_rotations[None], jnp.ones((1,), dtype))
  return columns[0], support[0]
