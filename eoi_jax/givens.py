"""Sparse orthogonal matrices from sequences of random Givens rotations.

This is the core of Exact Orthogonal Initialization (Nowak et al., ICML 2024).
Start from the wide ``rows x cols`` matrix ``A = [I | 0]`` (``rows <= cols``)
and repeatedly rotate a random pair of its columns ``(i, j)`` by a random angle.
Every rotation keeps ``A @ A.T == I`` exactly (up to rounding) and can only
grow the support, so the density rises from ``1 / cols`` towards 1. The loop
stops at the first rotation whose density reaches the target and returns
whichever of the last two matrices is closer to it.

How it runs. The matrix is held transposed, ``(cols, rows)``, so a column pair
of ``A`` is two contiguous rows. One loop applies the rotations: each first
updates the supports, held bit-packed (32 rows of ``A`` per uint32 word; a
rotation ORs two columns' bit sets and adds the popcount of their XOR to the
non-zero count: O(rows / 32) work, no trigonometry), which decides whether it
is the stopping rotation, then the values (a two-row read, the rotation and
a two-row write, updated in place by XLA: O(rows), never a recount). The
loop runs in chunks of rotations sized from the support Markov chain
(:func:`max_rotations`) and ends at the stopping rotation, so the result is
exact for every key.

A batch of problems (a network's kernels, a stack of layers, ``jax.vmap``
over keys) runs as one loop over the batch held flattened, each step
rotating every matrix once with two row gathers and two row scatters: a
batching rule (:func:`_batched_loop`) makes ``jax.vmap`` of the loop this
loop rather than a vmapped one-matrix loop, whose per-matrix dynamic slices
become gathers with batch dimensions, about twice as slow on the CPU.

On accelerators, where a loop of thousands of tiny steps is latency-bound,
each chunk is applied in parallel rounds instead (:func:`rotation_rounds`):
rotations on disjoint columns commute, so a chunk packs into a few dozen
rounds, each one vectorised step over all columns, with the same supports,
the same stopping rotation and the same values. On the CPU the one-by-one
loop is faster (:func:`default_rounds`; ``rounds=`` chooses).

Every path computes a rotated entry with the same arithmetic
(:func:`_rotated`, immune to XLA's multiply-add fusion), so a key gives the
same bits alone, under ``jit``, in any ``vmap`` batch and in rounds or one
by one.

One compiled program serves many problems. Sizes are padded to buckets
(:func:`bucket`) and the true sizes and targets are traced values
(:func:`padded_core`): every matrix up to ``R x C`` at every density shares the
program of that :class:`CoreShape`, and a whole network's kernels of one
bucket run in one vmapped call.

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


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _threefry2x32(k1, k2, x1, x2):
  """The Threefry-2x32 hash (20 rounds) as ``jax.random`` computes it, unrolled.

  JAX lowers its own hash on CPU to a rolled loop, which XLA compiles slowly
  when it sits inside another loop; this is the same function in plain
  uint32 arithmetic, so every bit equals ``jax.random``'s. On NumPy uint32
  arrays it runs on the host (wrapping around, as uint32 arithmetic does).
  """
  ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
  x1, x2 = x1 + ks[0], x2 + ks[1]
  for block in range(5):
    for r in _ROTATIONS[block % 2]:
      x1 = x1 + x2
      x2 = (x2 << np.uint32(r)) | (x2 >> np.uint32(32 - r))
      x2 = x1 ^ x2
    x1 = x1 + ks[(block + 1) % 3]
    x2 = x2 + ks[(block + 2) % 3] + np.uint32(block + 1)
  return x1, x2


def _rotation_bits(key, indices):
  """``jax.random.bits(jax.random.fold_in(key, t), (4,), uint32)`` for each ``t``
  of ``indices``: ``(n, 4)`` uint32.

  For threefry keys with partitionable random bits (JAX's defaults) this is
  computed by :func:`_threefry2x32`, bit for bit the same; other keys go
  through ``jax.random``.
  """
  data = _threefry_key(key)
  if data is not None:
    indices = indices.astype(jnp.uint32)
    # fold_in(key, t) hashes the count (0, t); bits(k, (4,)) hashes counts
    # (0, 0..3) and xors the two output words.
    y1, y2 = _threefry2x32(data[0], data[1], jnp.zeros_like(indices), indices)
    counts = jnp.arange(4, dtype=jnp.uint32)
    b1, b2 = _threefry2x32(y1[:, None], y2[:, None], jnp.zeros_like(counts), counts)
    return b1 ^ b2
  return jax.vmap(lambda t: jax.random.bits(jax.random.fold_in(key, t), (4,), jnp.uint32))(
      indices)


def _threefry_key(key):
  """The key's two uint32 words when :func:`_threefry2x32` reproduces its
  ``jax.random`` draws (threefry, partitionable bits: JAX's defaults), else ``None``."""
  if not jax.config.jax_threefry_partitionable:
    return None
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    if str(jax.random.key_impl(key)) != "threefry2x32":
      return None
    return jax.random.key_data(key)
  return key


def _split(key, num: int):
  """``jax.random.split(key, num)``, traceable, compiled fast (threefry keys)."""
  data = _threefry_key(key)
  if data is None:
    return jax.random.split(key, num)
  counts = jnp.arange(num, dtype=jnp.uint32)
  # With partitionable bits, split key i hashes the count (0, i), as fold_in(key, i).
  y1, y2 = _threefry2x32(data[0], data[1], jnp.zeros_like(counts), counts)
  # The barrier keeps XLA from fusing this hash into a consumer's hash: one
  # fused chain of both compiles several times slower than the two apart.
  pairs = lax.optimization_barrier(jnp.stack([y1, y2], axis=1))
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(pairs, impl=jax.random.key_impl(key))
  return pairs


_split_compiled = jax.jit(_split, static_argnums=1)


def _host_key_data(keys):
  """The uint32 words of concrete threefry keys as a NumPy ``(..., 2)`` array,
  or ``None`` for traced keys and keys :func:`_threefry2x32` does not reproduce."""
  if isinstance(keys, jax.core.Tracer):
    return None
  data = _threefry_key(keys)
  return None if data is None else np.asarray(data, np.uint32)


def _host_split(data, num: int) -> np.ndarray:
  """``split`` of each key of ``data`` (``(n, 2)`` words) on the host: ``(n, num, 2)``."""
  counts = np.arange(num, dtype=np.uint32)[None, :]
  with np.errstate(over="ignore"):
    y1, y2 = _threefry2x32(data[:, :1], data[:, 1:], np.zeros_like(counts), counts)
  return np.stack([y1, y2], axis=-1)


def _keys_like(data: np.ndarray, like):
  """Key words ``data`` as keys of ``like``'s kind (typed or raw uint32), on the device."""
  if jnp.issubdtype(like.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(like))
  return jax.device_put(data)


def split(key, num: int):
  """``jax.random.split(key, num)``, bit for bit, without JAX's slow-compiling hash.

  A concrete threefry key (JAX's default) is split on the host with NumPy:
  nothing to compile. A traced one is split in a program that compiles in
  tens of milliseconds (JAX's own hash lowers on CPU to a rolled loop that
  takes XLA a few hundred for each new shape). Other keys go through
  ``jax.random.split``.
  """
  data = _host_key_data(key)
  if data is None:
    return _split_compiled(key, num)
  return _keys_like(_host_split(data.reshape(1, 2), num)[0], key)


def split_into(key, num: int) -> tuple:
  """``tuple(split(key, num))``: ``num`` separate keys (on the host for a
  concrete key, so not even the unstacking compiles)."""
  data = _host_key_data(key)
  if data is None:
    keys = _split_compiled(key, num)
    return tuple(keys[i] for i in range(num))
  return tuple(_keys_like(pair, key) for pair in _host_split(data.reshape(1, 2), num)[0])


@functools.partial(jax.jit, static_argnums=2)
def _split_each_compiled(keys, index, num: int):
  split_keys = jax.vmap(lambda k: _split(k, num))(keys[index])
  return split_keys.reshape((-1,) + split_keys.shape[2:])  # uint32 keys keep their (2,) words


def split_each(keys, index, num: int):
  """``split(keys[i], num)`` for each ``i`` of ``index``, concatenated
  (layer-major); on the host for concrete keys, as :func:`split`."""
  data = _host_key_data(keys)
  if data is None:
    return _split_each_compiled(keys, index, num)
  return _keys_like(_host_split(data[np.asarray(index)], num).reshape(-1, 2), keys)


def uniform(key, size: int):
  """``jax.random.uniform(key, (size,))`` (float32, bit for bit), compiled fast.

  With partitionable threefry, element ``k`` does not depend on ``size``: a
  longer draw extends a shorter one.
  """
  data = _threefry_key(key)
  if data is None:
    return jax.random.uniform(key, (size,))
  counts = jnp.arange(size, dtype=jnp.uint32)
  b1, b2 = _threefry2x32(data[0], data[1], jnp.zeros_like(counts), counts)
  floats = lax.bitcast_convert_type(((b1 ^ b2) >> jnp.uint32(9)) | jnp.uint32(0x3F800000),
                                    jnp.float32) - jnp.float32(1.0)
  return jnp.maximum(jnp.float32(0.0), floats)


def _sample_rotations(key, indices, num_cols, dtype):
  bits = _rotation_bits(key, indices)
  i = _below(bits[:, 0], num_cols)
  j = _below(bits[:, 1], num_cols - 1)
  j = j + (j >= i).astype(jnp.int32)  # uniform over j != i
  angle = _TWO_PI * _open_unit_interval(bits[:, 2], bits[:, 3], dtype)
  return jnp.stack([i, j], axis=1), angle.astype(dtype)


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
  key = _validation.check_key(key)
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
# step: the reads are therefore materialised behind an optimization barrier.


_UINTS = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def _halves(x):
  """``(hi, lo)`` with ``x == hi + lo`` exactly, each holding at most half of
  the dtype's ``p`` significand bits (``hi`` ``floor(p / 2)``, ``lo`` at most
  ``ceil(p / 2) - 1``: 12 and 11 of float32's 24), so the product of any two
  halves is exact (unless it falls below the dtype's smallest normal number,
  1e-38 in float32). ``hi`` is ``x`` rounded to nearest at the ``ceil(p / 2)``
  dropped bits (in integer arithmetic, exact), ``lo`` the remainder."""
  drop = -(-(jnp.finfo(x.dtype).nmant + 1) // 2)
  uint = _UINTS[x.dtype.itemsize]
  bits = lax.bitcast_convert_type(x, uint)
  rounded = (bits + uint(1 << (drop - 1))) & ~uint((1 << drop) - 1)
  hi = lax.bitcast_convert_type(rounded, x.dtype)
  return hi, x - hi


def _rotated(values, partners, cos, sin):
  """``cos * values + sin * partners``: the arithmetic of every rotation.

  Every path (one matrix, a batch, parallel rounds, the replay of
  :func:`apply_rotations`) computes a rotated entry with this function, so a
  key gives the same bits alone, under ``jit`` and in any ``vmap``. A plain
  ``cos * v + sin * p`` would not: XLA fuses one of its products into a
  multiply-add (skipping that product's rounding) or not, and which one,
  depending on the shape, the program and the optimisation level. Here
  every factor is split into halves (:func:`_halves`), so all eight partial
  products are exact and fusing any of them changes nothing; the sums run in
  a fixed order (within two roundings of the exact ``cos v + sin p``).
  """
  (vh, vl), (ph, pl) = _halves(values), _halves(partners)
  (ch, cl), (sh, sl) = _halves(cos), _halves(sin)
  return ((ch * vh + sh * ph) + ((ch * vl + cl * vh) + (sh * pl + sl * ph))) + (
      cl * vl + sl * pl)


def _read_pair(columns, pair):
  return jnp.concatenate([
      lax.dynamic_slice_in_dim(columns, pair[0], 1),
      lax.dynamic_slice_in_dim(columns, pair[1], 1),
  ])


def _write_pair(columns, pair, new):
  columns = lax.dynamic_update_slice_in_dim(columns, new[:1], pair[0], 0)
  return lax.dynamic_update_slice_in_dim(columns, new[1:], pair[1], 0)


def _rotate_pair(columns, pair, cos, sin, apply=True):
  """Rotates columns ``pair`` of ``A`` (rows of ``columns``) by (cos, sin):
  ``(cos a + sin b, cos b - sin a)``; leaves them as they are unless ``apply``."""
  old = lax.optimization_barrier(_read_pair(columns, pair))
  new = _rotated(old, old[::-1], cos, jnp.stack([sin, -sin])[:, None])
  return _write_pair(columns, pair, jnp.where(apply, new, old))


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
  return _support_trajectory(_validation.check_key(key), int(rows), int(cols),
                             int(num_rotations))


@functools.partial(jax.jit, static_argnames=("rows", "cols", "num_rotations"))
def _support_trajectory(key, rows, cols, num_rotations):
  pairs, _ = _rotation_sequence(key, cols, num_rotations, jnp.dtype(jnp.float32))
  _, grown = lax.scan(_support_step, _packed_identity(rows, cols), pairs)
  return jnp.concatenate([jnp.array([rows], jnp.int32), rows + jnp.cumsum(grown)])


# ----------------------------------------------------------------------------
# Planning.


def bucket(n: int) -> int:
  """The padded size ``n`` shares a compiled program with.

  Powers of two from 8 to 128, then the next ``m * 2**e`` with ``m`` in 4 to 8
  (at most 25% padding): 100 -> 128, 784 -> 896, 1000 -> 1024, 3000 -> 3072.
  """
  n = max(int(n), 1)
  if n <= 128:
    return max(8, 1 << (n - 1).bit_length())
  step = 1 << ((n - 1).bit_length() - 3)
  return -(-n // step) * step


def max_rotations(rows: int, cols: int, density: float) -> int:
  """Rotations a ``rows x cols`` target of ``density`` is planned for.

  The mean-field time plus a margin for the chain's early-phase spread, which
  shrinks like ``1 / sqrt(rows)`` (about 0.2 ``c`` for 100 rows). The
  generator draws and applies rotations in chunks of at least this many
  (:class:`CoreShape`) and continues while the target is not reached, so the
  result is exact for every key; this only sets how much work one chunk does.
  """
  r, c = int(rows), int(cols)
  if c < 2:
    return 0
  d = min(float(density), 1.0 - 1.0 / (2.0 * r * c))
  return int(math.ceil(chain.mean_field_rotations(c, d) + c * (0.25 + 1.5 / math.sqrt(r))))


class CoreShape(NamedTuple):
  """The static shape of one compiled generator: every problem up to
  ``rows x cols`` runs in it, ``chunk`` rotations per loop iteration."""

  rows: int
  cols: int
  chunk: int

  @classmethod
  def of(cls, rows: int, cols: int, density) -> "CoreShape":
    """The bucketed shape for ``rows x cols`` at ``density`` (scalar or array)."""
    steps = max(max_rotations(rows, cols, float(d)) for d in np.ravel(density))
    return cls(bucket(rows), bucket(cols), bucket(max(16, steps)))

  def merge(self, other: "CoreShape") -> "CoreShape":
    """The smallest shape that runs both."""
    return CoreShape(*(max(a, b) for a, b in zip(self, other)))


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


class _State(NamedTuple):
  """One problem's loop state, or a batch's with the ``B`` matrices'
  columns (and supports) stacked into ``B * C`` rows and ``(B,)`` counts."""

  columns: Array  # (C, R): A transposed, zero-padded; one row per column of A.
  support: Array  # (C, words) uint32: bit b of word w of column k is row 32 w + b.
  nnz: Array  # non-zeros after the rotations applied so far.
  done: Array  # the stopping rotation has been decided.
  num_rotations: Array  # rotations applied.
  next_index: Array  # index of the next rotation to draw (shared by a batch).


def _identity(rows, shape: CoreShape, dtype, scale=1.0):
  """``scale * [I | 0]`` with ``rows`` rows, transposed and padded to
  ``shape``, and its bit-packed support."""
  k = jnp.arange(shape.rows)
  on = k < rows
  diagonal = (jnp.arange(shape.cols)[:, None] == k[None, :]) & on[None, :]
  columns = jnp.where(diagonal, jnp.asarray(scale, dtype), jnp.zeros((), dtype))
  bits = jnp.where(on, jnp.left_shift(jnp.uint32(1), (k % _WORD_BITS).astype(jnp.uint32)),
                   jnp.uint32(0))
  words = -(-shape.rows // _WORD_BITS)
  support = jnp.zeros((shape.cols, words), jnp.uint32).at[k, k // _WORD_BITS].set(bits)
  return columns, support


def rotation_rounds(pairs: Array) -> Array:
  """The round of each rotation when a sequence is applied in parallel rounds.

  Rotation ``t`` goes one round after the last earlier rotation that shares a
  column with it (round 0 if none). Rotations of one round then touch
  disjoint columns, and everything each depends on lies in earlier rounds, so
  applying the rounds in order, each as one vectorised step, gives exactly
  the matrix of applying the rotations one by one. Computed without a
  sequential loop over rotations: a sort finds each rotation's predecessors
  on its two columns, and a relaxation over the dependency graph (one
  vectorised gather per round) finds the longest chain ending at each.

  Args:
    pairs: int ``(n, 2)`` column pairs with distinct entries.

  Returns:
    int32 ``(n,)`` rounds.

  Example:
    >>> rotation_rounds(jnp.array([[0, 1], [2, 3], [1, 2], [0, 3]]))
    Array([0, 0, 1, 1], dtype=int32)
  """
  num = pairs.shape[0]
  if num == 0:
    return jnp.zeros((0,), jnp.int32)
  # Event 2 t + s is rotation t touching column pairs[t, s]; sorted by
  # (column, event), each event follows its column's previous event.
  columns, events = lax.sort(
      (pairs.reshape(-1).astype(jnp.int32), jnp.arange(2 * num, dtype=jnp.int32)), num_keys=2)
  previous = jnp.where(columns[1:] == columns[:-1], events[:-1] // 2, -1)
  previous = jnp.concatenate([jnp.full((1,), -1, jnp.int32), previous])
  predecessors = jnp.zeros(2 * num, jnp.int32).at[events].set(previous).reshape(num, 2)
  has = predecessors >= 0
  safe = jnp.maximum(predecessors, 0)

  def relax(state):
    rounds, _ = state
    longer = jnp.max(jnp.where(has, rounds[safe] + 1, 0), axis=1)
    return longer, jnp.any(longer != rounds)

  rounds, _ = lax.while_loop(lambda s: s[1], relax, (jnp.zeros(num, jnp.int32), jnp.bool_(True)))
  return rounds


def _round_partners(pairs, selected, num_cols):
  """Each column's partner in the selected (disjoint) rotations, itself if
  none, and the scatter indices of the rotations' two columns (out of range,
  so dropped, for rotations not selected)."""
  first = jnp.where(selected, pairs[:, 0], num_cols)
  second = jnp.where(selected, pairs[:, 1], num_cols)
  partner = (jnp.arange(num_cols, dtype=jnp.int32)
             .at[first].set(pairs[:, 1], mode="drop")
             .at[second].set(pairs[:, 0], mode="drop"))
  return partner, first, second


def _chunk_in_rounds(state: "_State", pairs, angles, target_nnz, undo_above, shape, dtype):
  """One chunk of rotations applied in parallel rounds (:func:`rotation_rounds`).

  A first pass over the rounds grows the bit-packed supports and records each
  rotation's non-zero growth, exactly as one-by-one application would see it;
  the stopping rule then picks how many of the chunk's rotations apply, and
  a second pass rotates the values of those, round by round: column ``k``
  becomes ``c_k A_k + s_k A_partner(k)``.
  """
  chunk = pairs.shape[0]
  rounds = rotation_rounds(pairs)
  num_rounds = jnp.max(rounds) + 1

  def support_round(r, carry):
    support, growth = carry
    selected = rounds == r
    partner, _, _ = _round_partners(pairs, selected, shape.cols)
    other = support[partner]
    grown = jnp.sum(lax.population_count(support ^ other), axis=1, dtype=jnp.int32)
    return support | other, jnp.where(selected, grown[pairs[:, 0]], growth)

  support, growth = lax.fori_loop(0, num_rounds, support_round,
                                  (state.support, jnp.zeros(chunk, jnp.int32)))
  after = state.nnz + jnp.cumsum(growth)
  stop = jnp.sum(after < target_nnz, dtype=jnp.int32)  # the first rotation reaching the target
  reached = stop < chunk
  last = jnp.minimum(stop, chunk - 1)
  # Stop before it when the previous matrix is strictly closer to the target.
  undo = after[last] - growth[last] + after[last] > undo_above
  num_applied = stop + (reached & ~undo).astype(jnp.int32)
  applied = jnp.arange(chunk) < num_applied
  cos, sin = jnp.cos(angles), jnp.sin(angles)

  def value_round(r, columns):
    # Column k becomes cos_k A_k + sin_k A_partner(k), sin_k = sin for the
    # first column of its rotation and -sin for the second: the arithmetic
    # of the one-by-one loop (:func:`_rotated`); untouched columns stay.
    partner, first, second = _round_partners(pairs, applied & (rounds == r), shape.cols)
    touched = jnp.zeros(shape.cols, bool).at[first].set(True, mode="drop").at[second].set(
        True, mode="drop")[:, None]
    cos_k = jnp.ones(shape.cols, dtype).at[first].set(cos, mode="drop").at[second].set(
        cos, mode="drop")[:, None]
    sin_k = jnp.zeros(shape.cols, dtype).at[first].set(sin, mode="drop").at[second].set(
        -sin, mode="drop")[:, None]
    return jnp.where(touched, _rotated(columns, columns[partner], cos_k, sin_k), columns)

  return _State(
      columns=lax.fori_loop(0, num_rounds, value_round, state.columns),
      support=support,
      nnz=state.nnz + jnp.sum(jnp.where(applied, growth, 0), dtype=jnp.int32),
      done=reached,
      num_rotations=state.num_rotations + num_applied,
      next_index=state.next_index + chunk,
  )


def default_rounds() -> bool:
  """Whether the generators apply rotations in parallel rounds by default:
  on accelerators, where a sequential loop of tiny steps is latency-bound;
  the CPU applies them one by one (faster there, see ``benchmarks/init_speed.py``)."""
  return jax.default_backend() != "cpu"


def _check_rounds(rounds) -> bool:
  if rounds is None:
    return default_rounds()
  if not isinstance(rounds, (bool, np.bool_)):
    raise TypeError(f"rounds must be True, False or None, got {rounds!r}")
  return bool(rounds)


def _stop_rule(state: _State, after, target_nnz, undo_above):
  """Which rotations apply, given the non-zeros ``after`` them: ``(apply, reach)``.

  ``reach`` marks the first rotation reaching the target; it applies unless
  the previous matrix is strictly closer: ``|before - d r c| < |after - d r c|``.
  """
  reach = ~state.done & (after >= target_nnz)
  return ~state.done & ~(reach & (state.nnz + after > undo_above)), reach


def _grow_supports(support, first, second):
  """ORs the bit-packed supports of rows ``first[b]`` and ``second[b]`` of the
  flattened ``(B * C, words)`` supports; returns them and each pair's growth."""
  if first.shape[0] == 1:
    support, grown = _support_step(support, jnp.stack([first[0], second[0]]))
    return support, grown[None]
  a, b = lax.optimization_barrier((support[first], support[second]))
  grown = jnp.sum(lax.population_count(a ^ b), axis=1, dtype=jnp.int32)
  union = a | b
  support = support.at[first].set(union, unique_indices=True)
  return support.at[second].set(union, unique_indices=True), grown


def _rotate_rows(columns, first, second, cos, sin, apply):
  """Rotates rows ``first[b]``, ``second[b]`` of the flattened ``(B * C, R)``
  columns by ``(cos[b], sin[b])`` where ``apply[b]``, in place."""
  if first.shape[0] == 1:
    return _rotate_pair(columns, jnp.stack([first[0], second[0]]), cos[0], sin[0], apply[0])
  # A batch reads its rows with one gather per column of the pairs: for 1000
  # matrices about twice as fast on the CPU as the gathers with batch
  # dimensions that vmapping the one-matrix loop's dynamic slices gives.
  old = jnp.stack(lax.optimization_barrier((columns[first], columns[second])))  # (2, B, R)
  new = _rotated(old, old[::-1], cos[None, :, None], jnp.stack([sin, -sin])[:, :, None])
  new = jnp.where(apply[None, :, None], new, old)
  columns = columns.at[first].set(new[0], unique_indices=True)
  return columns.at[second].set(new[1], unique_indices=True)


def _loop_batch(keys, rows, cols, target_nnz, undo_above, scale, *, shape: CoreShape, dtype):
  """The one-by-one loop for a batch of ``B`` problems (all arguments ``(B,)``).

  The batch is held flattened, ``(B * C, R)`` values and ``(B * C, words)``
  supports, and each step applies one rotation to every matrix of it: two
  gathers and two scatters of whole rows. Each chunk draws ``shape.chunk``
  rotations per matrix; the steps stop at the last matrix's stopping
  rotation, so no rotation past it is applied.
  """
  batch = keys.shape[0]
  columns, support = jax.vmap(lambda r, s: _identity(r, shape, dtype, s))(rows, scale)
  offsets = jnp.arange(batch, dtype=jnp.int32) * shape.cols
  state = _State(columns.reshape(batch * shape.cols, shape.rows),
                 support.reshape(batch * shape.cols, -1), rows, rows >= target_nnz,
                 jnp.zeros(batch, jnp.int32), jnp.int32(0))

  def chunk(state: _State) -> _State:
    indices = state.next_index + jnp.arange(shape.chunk, dtype=jnp.int32)
    pairs, angles = jax.vmap(lambda k, c: _sample_rotations(k, indices, c, dtype))(keys, cols)
    firsts = (pairs[..., 0] + offsets[:, None]).T  # (chunk, B) rows of the flattened batch
    seconds = (pairs[..., 1] + offsets[:, None]).T
    coss, sins = jnp.cos(angles).T, jnp.sin(angles).T

    def rotate(carry):
      state, t = carry
      support, grown = _grow_supports(state.support, firsts[t], seconds[t])
      after = state.nnz + grown
      apply, reach = _stop_rule(state, after, target_nnz, undo_above)
      return _State(
          columns=_rotate_rows(state.columns, firsts[t], seconds[t], coss[t], sins[t], apply),
          support=support,
          nnz=jnp.where(apply, after, state.nnz),
          done=state.done | reach,
          num_rotations=state.num_rotations + apply.astype(jnp.int32),
          next_index=state.next_index,
      ), t + 1

    state, _ = lax.while_loop(lambda c: (c[1] < shape.chunk) & ~jnp.all(c[0].done), rotate,
                              (state, jnp.int32(0)))
    return state._replace(next_index=state.next_index + shape.chunk)

  state = lax.while_loop(lambda s: ~jnp.all(s.done), chunk, state)
  return state.columns.reshape(batch, shape.cols, shape.rows), state.num_rotations


def merged_batch(batch_loop):
  """``batch_loop`` (arguments with a leading batch axis, the second of them
  ``(B,)``-shaped; two outputs with that batch axis) with a batching rule:
  ``jax.vmap`` of it, nested or not, is one call on the merged batch."""
  loop = jax.custom_batching.custom_vmap(batch_loop)

  @loop.def_vmap
  def merged(axis_size, in_batched, *args):
    rows = args[1]  # (B,), or (axis_size, B) when batched; keys may be raw uint32
    batch = rows.shape[1] if in_batched[1] else rows.shape[0]
    args = [x if batched else jnp.broadcast_to(x, (axis_size,) + x.shape)
            for x, batched in zip(args, in_batched)]
    outputs = loop(*[x.reshape((axis_size * batch,) + x.shape[2:]) for x in args])
    return tuple(x.reshape((axis_size, batch) + x.shape[1:]) for x in outputs), (True, True)

  return loop


@functools.lru_cache(maxsize=None)
def _batched_loop(shape: CoreShape, dtype):
  """:func:`_loop_batch` for ``shape`` and ``dtype``, with a batching rule:
  ``jax.vmap`` of it (over a network's kernels, a stack of layers, or a
  user's keys, nested or not) is the same loop over the merged batch."""

  def loop(keys, rows, cols, target_nnz, undo_above, scale):
    return _loop_batch(keys, rows, cols, target_nnz, undo_above, scale, shape=shape, dtype=dtype)

  return merged_batch(loop)


def _rounds_core(key, rows, cols, target_nnz, undo_above, scale, *, shape: CoreShape, dtype):
  """The loop for one problem with each chunk applied in parallel rounds."""
  columns, support = _identity(rows, shape, dtype, scale)

  def chunk(state: _State) -> _State:
    indices = state.next_index + jnp.arange(shape.chunk, dtype=jnp.int32)
    pairs, angles = _sample_rotations(key, indices, cols, dtype)
    return _chunk_in_rounds(state, pairs, angles, target_nnz, undo_above, shape, dtype)

  state = _State(columns, support, rows, rows >= target_nnz, jnp.int32(0), jnp.int32(0))
  state = lax.while_loop(lambda s: ~s.done, chunk, state)
  return state.columns, state.num_rotations


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "rounds"))
def padded_core(key: Array, rows, cols, target_nnz, undo_above, scale=1.0, *,
                shape: CoreShape, dtype=jnp.float32, rounds: bool = False):
  """The EOI loop for a ``rows x cols`` problem (traced) in a ``shape`` buffer.

  One compiled program serves every problem up to ``shape.rows x
  shape.cols`` and every density: the sizes and targets are traced values.
  Each chunk draws ``shape.chunk`` rotations; a rotation first updates the
  bit-packed supports (its growth is the popcount of the two columns' XOR),
  which decides whether it is the stopping one, then the values, in place.
  The loop ends at the stopping rotation, so the result is exact for every
  key, and equal to applying the first ``num_rotations`` rotations of
  :func:`rotation_sequence` one by one.

  ``jax.vmap`` of this function runs one loop over the whole batch (each
  step rotates every matrix once, see :func:`_loop_batch`) rather than
  vmapping one matrix's loop: the same rotations, stop and bits.

  With ``rounds`` each chunk is applied in parallel rounds instead
  (:func:`rotation_rounds`): the same rotations, the same stopping rotation
  and the same matrix bit for bit (each entry goes through the same
  :func:`_rotated` steps), in a few dozen vectorised steps instead of one
  step per rotation.

  Args:
    key: a ``jax.random`` key.
    rows, cols: int32 sizes, ``rows <= cols``, at most the shape's.
    target_nnz, undo_above: int32 from :func:`integer_targets`.
    scale: the non-zeros of the starting ``[I | 0]``, e.g. a kernel's gain:
      the rotations are linear, so the result is ``scale`` times the matrix
      (within rounding), with no pass over it to scale it afterwards.
    shape: the static :class:`CoreShape`.
    dtype: float dtype of the computation.
    rounds: apply each chunk in parallel rounds (static).

  Returns:
    ``(columns, num_rotations)``: ``columns[:cols, :rows]`` is the matrix
    transposed (zeros elsewhere); ``num_rotations`` is int32.
  """
  args = [jnp.asarray(x, jnp.int32) for x in (rows, cols, target_nnz, undo_above)]
  args.append(jnp.asarray(scale, dtype))
  if rounds:
    return _rounds_core(key, *args, shape=shape, dtype=dtype)
  outputs = _batched_loop(shape, jnp.dtype(dtype))(key[None], *[x[None] for x in args])
  return tuple(x[0] for x in outputs)


def givens_core(
    key: Array,
    rows: int,
    cols: int,
    target_nnz: Array,
    undo_above: Array,
    num_steps: int,
    dtype=jnp.float32,
    rounds: bool | None = None,
) -> GivensResult:
  """Traceable EOI loop; the targets may be traced (for ``vmap`` over layers).

  Args:
    key: a ``jax.random`` key.
    rows, cols: static sizes, ``rows <= cols``.
    target_nnz, undo_above: int32 scalars from :func:`integer_targets`.
    num_steps: rotations planned for, e.g. :func:`max_rotations` (sets the
      chunk of the compiled loop, never the result).
    dtype: float dtype of the computation.
    rounds: apply the rotations in parallel rounds (``True``), one by one
      (``False``) or as :func:`default_rounds` says (``None``); same result.

  Returns:
    A :class:`GivensResult`.
  """
  key = _validation.check_key(key)
  r, c = int(rows), int(cols)
  if r > c:
    raise ValueError(f"rows must be <= cols, got {rows} x {cols}")
  shape = CoreShape(bucket(r), bucket(c), bucket(max(16, int(num_steps))))
  columns, num_rotations = padded_core(key, r, c, target_nnz, undo_above, shape=shape,
                                       dtype=jnp.dtype(dtype), rounds=_check_rounds(rounds))
  matrix = columns[:c, :r].T
  return GivensResult(matrix, num_rotations, jnp.count_nonzero(matrix).astype(jnp.int32))


def givens_orthogonal(
    key: Array, rows: int, cols: int, density: float, *, dtype=jnp.float32,
    rounds: bool | None = None
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
    rounds: apply the rotations in parallel rounds (``True``), one by one
      (``False``) or as :func:`default_rounds` says (``None``: rounds on
      accelerators). The result is the same.

  Returns:
    A :class:`GivensResult` (matrix, rotations used, non-zeros).

  Example:
    >>> res = givens_orthogonal(jax.random.key(0), 64, 128, 0.1)
    >>> res.matrix.shape
    (64, 128)
  """
  key = _validation.check_key(key)
  r, c = _validation.check_shape((rows, cols), (2,), name="(rows, cols)")
  if r > c:
    raise ValueError(f"rows must be <= cols, got rows={r}, cols={c}")
  d = _validation.check_density(density)
  target, undo_above = integer_targets(d, r, c)
  return givens_core(key, r, c, target, undo_above, max_rotations(r, c, d), dtype,
                     _check_rounds(rounds))
