"""EOI kernels in Flax layouts, and the kernel-shape helpers every generator shares.

Layouts follow Flax: dense kernels are ``(in, out)``, conv kernels
``(*spatial, in, out)``. Every generator is a pure function of its key, works
under ``jax.jit``, ``jax.vmap`` (over keys) and ``jax.eval_shape``, computes in
float32 (float64 when that is requested and x64 is enabled) and casts at the
end, and returns ``(weight, mask)`` with a boolean mask: the support of the
weight as computed, before the cast. For float32 and float64 weights that is
``weight != 0``; a float16 or bfloat16 cast can round tiny entries to zero
(float16 below about 6e-8: small gains, large dense kernels), and those
entries stay in the mask (trainable, starting at zero), so the mask contains
``weight != 0`` and may be larger.

The helpers (:func:`wide_shape`, :func:`from_wide`, :func:`place_at_center`,
:func:`check_kernel_shape`, :func:`compute_dtype`) say how a kernel maps to
the wide ``min(in, out) x max(in, out)`` matrix the constructions build; SAO
and the dense baselines (:mod:`eoi_jax.methods`) use them too.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from eoi_jax import _validation, block_givens, givens, kinds
from eoi_jax.counts import count_for_density
from eoi_jax.topk import keep_top

Array = jax.Array


# ----------------------------------------------------------------------------
# Kernel-shape helpers.


def compute_dtype(dtype):
  """Float dtype to generate in: float64 if requested (and enabled), else float32."""
  if jnp.dtype(dtype) == jnp.float64:
    return jax.dtypes.canonicalize_dtype(jnp.float64)
  return jnp.dtype(jnp.float32)


def check_float_dtype(dtype, name: str = "dtype"):
  """Returns ``jnp.dtype(dtype)`` after checking it is a floating dtype."""
  try:
    dtype = jnp.dtype(dtype)
  except TypeError as e:
    raise TypeError(f"{name} must be a floating dtype, got {dtype!r}") from e
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"{name} must be a floating dtype, got {dtype}")
  return dtype


def check_kernel_shape(shape, ndims=(2, 3, 4, 5), name: str = "shape") -> tuple[int, ...]:
  """A dense ``(in, out)`` or conv ``(*spatial, in, out)`` shape with odd spatial sizes."""
  shape = _validation.check_shape(shape, ndims, name)
  if any(k % 2 == 0 for k in shape[:-2]):
    raise ValueError(f"{name} must have odd spatial sizes (a centre tap), got {shape}")
  return shape


def wide_shape(shape) -> tuple[int, int]:
  """``(rows, cols) = (min(in, out), max(in, out))`` of a kernel's ``(in, out)`` matrix."""
  fan_in, fan_out = shape[-2:]
  return min(fan_in, fan_out), max(fan_in, fan_out)


def from_wide(wide, fan_in: int, fan_out: int):
  """The wide ``rows x cols`` matrix (orthonormal rows) in Flax's ``(in, out)`` layout.

  Flax's kernel is the transpose of PyTorch's ``(out, in)`` weight, so the
  reference construction (``A`` for ``out <= in``, ``A.T`` for ``out > in``
  in PyTorch's layout) is ``A.T`` for ``in >= out`` and ``A`` for ``in < out``.
  """
  return wide.T if fan_in >= fan_out else wide


def center_index(shape) -> tuple[int, ...]:
  """Index of the centre tap of a ``(*spatial, in, out)`` kernel."""
  return tuple(k // 2 for k in shape[:-2])


def place_at_center(center, shape):
  """A ``shape`` kernel holding ``center`` at its centre tap and zeros elsewhere."""
  if len(shape) == 2:
    return center
  return jnp.zeros(shape, center.dtype).at[center_index(shape)].set(center)


# ----------------------------------------------------------------------------
# EOI kernels.


def check_center_density(center_density, name: str = "center_density"):
  """``None``, ``"sqrt"`` or a density in (0, 1] (returned as a float)."""
  if center_density is None or (isinstance(center_density, str) and center_density == "sqrt"):
    return center_density
  if isinstance(center_density, str):
    raise ValueError(
        f"{name} must be None, 'sqrt' or a float in (0, 1], got {center_density!r}")
  return _validation.check_density(center_density, name=name)


def center_density_for(density: float, num_taps: int, center_density=None) -> float:
  """Density of the centre tap of an EOI conv kernel.

  Args:
    density: target density of the whole kernel, in (0, 1].
    num_taps: number of spatial taps ``K`` (9 for 3x3).
    center_density: ``None`` (the kernel's density), ``"sqrt"`` (the "more
      non-zeros" rule ``min(d K, 1, sqrt(d))``) or a float in (0, 1].

  Returns:
    The centre density as a float.
  """
  d = _validation.check_density(density)
  rule = check_center_density(center_density)
  if rule is None:
    return d
  if rule == "sqrt":
    return min(d * num_taps, 1.0, math.sqrt(d))
  return rule


def sparse_orthogonal(
    key: Array, shape, density, *, gain=1.0, dtype=jnp.float32, block: int | None = None
) -> tuple[Array, Array]:
  """Exactly orthogonal sparse dense kernel (EOI).

  Builds the wide ``min x max`` matrix from random Givens rotations until the
  target density is met (see :mod:`eoi_jax.givens`), scales it by ``gain`` and
  lays it out as Flax's ``(in, out)``. With ``block=b`` the rotations act on
  ``b``-wide block columns (:mod:`eoi_jax.block_givens`) and the support is
  a union of whole ``b x b`` blocks (for compressed storage,
  :mod:`eoi_jax.block_sparse`).

  Args:
    key: a ``jax.random`` key.
    shape: ``(in, out)``.
    density: target fraction of non-zeros, in (0, 1]. The realised density is
      the closest one the rotation sequence passes through: within one
      rotation's growth of the target. A density at or below ``1 / max(in,
      out)`` (the sparsest orthogonal pattern) gives the identity pattern
      ``gain * [I | 0]`` (or its transpose).
    gain: non-zero scale ``sigma_w``.
    dtype: float dtype of the weight.
    block: ``None`` (or 1): scalar EOI. An int ``b >= 2`` dividing ``in``
      and ``out``: block EOI, ``density`` then the fraction of stored blocks
      (realised as the closest block density the block-level run reaches).

  Returns:
    ``(weight, mask)``: if ``in <= out``, ``weight @ weight.T == gain**2 * I``;
    if ``in >= out``, ``weight.T @ weight == gain**2 * I`` (both when square).
    ``mask`` is the bool support of the weight as computed, in float32
    (float64 for float64): ``weight != 0`` for float32 and float64 weights;
    for float16 and bfloat16 it is the float32 support, so entries the cast
    rounds to zero stay in the mask (it contains ``weight != 0``). With
    ``block`` the mask is the block support, whole ``b x b`` blocks (it
    contains ``weight != 0``; a block column no step touched keeps its
    diagonal ``gain * I_b`` block, whose other entries train from zero).

  Raises:
    ValueError: ``block`` does not divide ``in`` and ``out`` (and the other
      arguments' errors).

  Example:
    >>> w, m = sparse_orthogonal(jax.random.key(0), (256, 128), 0.1)
    >>> w.shape, m.dtype
    ((256, 128), dtype('bool'))
    >>> w, m = sparse_orthogonal(jax.random.key(0), (256, 128), 0.25, block=32)
    >>> int(m.sum()) // 32**2  # stored 32 x 32 blocks, a quarter of 8 x 4
    8
  """
  key = _validation.check_key(key)
  shape = _validation.check_shape(shape, (2,))
  d = _validation.check_density(density)
  _validation.check_gain(gain)
  (weight, mask), = generate([KernelRequest(shape, key[None], np.array([d]))], gain=gain,
                             dtype=check_float_dtype(dtype), block=block)
  return weight, mask


def sparse_delta_orthogonal(
    key: Array,
    shape,
    density,
    *,
    gain=1.0,
    center_density=None,
    structured: bool = False,
    dtype=jnp.float32,
    block: int | None = None,
) -> tuple[Array, Array]:
  """Sparse delta-orthogonal conv kernel (EOI for convolutions).

  The centre tap holds an EOI matrix ``H`` (``(in, out)``, density
  ``center_density``), every other tap is zero, so with circular padding the
  layer is an exact isometry at init (Xiao et al. 2018).

  The mask is the support of ``H`` plus entries chosen uniformly at random
  among the rest of the kernel until it holds ``round(density * size)``
  entries (nothing is added when ``H``'s support already exceeds that). The
  added entries hold zeros, so the kernel stays orthogonal, but are trainable.
  With ``structured=True`` (the "EIS" variant) the mask is instead ``H``'s
  support broadcast over all taps. With ``block=b`` the centre is a block EOI
  matrix (see :func:`sparse_orthogonal`) and the mask's added entries are
  whole ``b x b`` blocks of the other taps, chosen uniformly at random among
  the kernel's ``taps x in / b x out / b`` blocks until it holds
  ``round(density * blocks)``: every tap's mask is a block mask.

  Args:
    key: a ``jax.random`` key.
    shape: ``(*spatial, in, out)`` with 1 to 3 odd spatial sizes.
    density: target density of the whole kernel's mask, in (0, 1].
    gain: non-zero scale ``sigma_w``.
    center_density: ``None`` (use ``density``), ``"sqrt"`` (``min(d K, 1,
      sqrt(d))`` for ``K`` taps) or a float in (0, 1].
    structured: broadcast the centre mask over taps (EIS).
    dtype: float dtype of the kernel.
    block: ``None`` (or 1) or a block size ``b`` dividing ``in`` and ``out``.

  Returns:
    ``(kernel, mask)``; ``kernel[centre]`` is semi-orthogonal with gain
    ``gain`` and ``kernel == 0`` off the centre; ``mask`` is bool and contains
    ``kernel != 0`` (its centre is the float32 support, see
    :func:`sparse_orthogonal`, also for float16 and bfloat16 kernels).

  Example:
    >>> k, m = sparse_delta_orthogonal(jax.random.key(0), (3, 3, 64, 64), 0.1)
    >>> int(m.sum()) == round(0.1 * k.size)
    True
  """
  key = _validation.check_key(key)
  shape = check_kernel_shape(shape, (3, 4, 5))
  d = _validation.check_density(density)
  _validation.check_gain(gain)
  center_density = check_center_density(center_density)
  structured = _validation.check_flag(structured, "structured")
  (kernel, mask), = generate([KernelRequest(shape, key[None], np.array([d]))], gain=gain,
                             center_density=center_density, structured=structured,
                             dtype=check_float_dtype(dtype), block=block)
  return kernel, mask


class KernelRequest(NamedTuple):
  """EOI for one kernel array of ``shape``, checked arguments.

  Attributes:
    shape: the array's shape (a kernel, or a stack of them).
    keys: one key per layer (see ``layer_axes``), or a network's keys of which
      entries ``key_index`` are the layers'.
    densities: ``(layers,)`` float densities.
    kind: the array's :class:`eoi_jax.kinds.KernelKind` (default: its leading
      ``layer_axes`` axes are layers, the rest one dense or conv kernel).
    layer_axes: leading axes that are layers, each with its own key and
      density (they must be batch axes of ``kind``).
    key_index: see ``keys``.
  """

  shape: tuple[int, ...]
  keys: Array
  densities: np.ndarray
  kind: kinds.KernelKind | None = None
  layer_axes: int = 0
  key_index: np.ndarray | None = None

  @property
  def index(self) -> np.ndarray:
    return np.arange(len(self.keys)) if self.key_index is None else self.key_index

  def resolved_kind(self) -> kinds.KernelKind:
    if self.kind is not None:
      return self.kind
    n, ndim = self.layer_axes, len(self.shape)
    return kinds.KernelKind((ndim - 2,), (ndim - 1,), tuple(range(n)), tuple(range(n, ndim - 2)))


class _Matrices(NamedTuple):
  """A request as the stack of its matrices, each a ``(*taps, in, out)`` kernel."""

  shape: tuple[int, ...]  # one matrix's kernel shape
  keys: Array
  index: np.ndarray  # (M,) entries of keys, one per matrix
  densities: np.ndarray  # (M,)


def _matrices(request: KernelRequest) -> _Matrices:
  kind = request.resolved_kind()
  layers = math.prod(request.shape[:request.layer_axes])
  per_layer = kind.num_matrices(request.shape) // layers
  densities = np.repeat(np.asarray(request.densities, np.float64).reshape(-1), per_layer)
  if per_layer == 1:
    keys, index = request.keys, request.index
  else:  # several matrices per layer (heads, feature groups): each its own key
    keys = givens.split_each(request.keys, np.asarray(request.index, np.int32), per_layer)
    index = np.arange(len(densities))
  return _Matrices(kind.canonical_shape(request.shape), keys, index, densities)


def _batch_size(n: int) -> int:
  """Batch sizes share compiled programs in the buckets of :func:`givens.bucket`."""
  return 1 << (n - 1).bit_length() if n <= 128 else givens.bucket(n)


# Calls are merged when that wastes at most this many element operations
# (about a millisecond on one CPU core): a small network then runs in one
# compiled generator.
_MERGE_SLACK = 1 << 23


def _merged_calls(items, block: int = 1):
  """Groups ``(CoreShape, batch)`` items into generator calls, largest first,
  each joining the first call it can share at a cost of at most
  :data:`_MERGE_SLACK` element operations over running alone (block EOI's
  shapes count blocks: a step costs ``b**2`` times a rotation's work).

  Returns:
    ``[(CoreShape, member indices)]``.
  """
  def cost(shape: givens.CoreShape, batch: int) -> int:  # rotations x rows + set-up
    return _batch_size(batch) * shape.rows * (shape.chunk + shape.cols) * block**2

  calls = []  # [shape, members, batch]
  for i in sorted(range(len(items)), key=lambda i: -cost(*items[i])):
    shape, batch = items[i]
    for call in calls:
      joined = call[0].merge(shape)
      if cost(joined, call[2] + batch) <= cost(call[0], call[2]) + cost(shape, batch) + _MERGE_SLACK:
        call[0], call[2] = joined, call[2] + batch
        call[1].append(i)
        break
    else:
      calls.append([shape, [i], batch])
  return [(shape, sorted(members)) for shape, members, _ in calls]


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "any_conv", "rounds", "block"))
def _cores(keys, index, conv, sizes, gain, *, shape, dtype, any_conv, rounds, block=None):
  """:func:`givens.padded_core`'s columns for a batch with ``keys[index]``, scaled
  by ``gain``: ``sizes`` is ``(B, 4)`` int32 (rows, cols, target non-zeros, undo
  threshold). A conv kernel's key is split first: the generator takes the
  first half, the mask the second.

  Returns ``(columns, None)``; with ``block`` (sizes and ``shape`` then in
  blocks) :func:`block_givens.padded_block_core`'s ``(columns, block supports)``.
  """
  keys = keys[index]
  if any_conv:
    keys = jnp.where(conv, jax.vmap(lambda k: givens.split(k, 2)[0])(keys), keys)
  if block is not None:
    core = functools.partial(block_givens.padded_block_core, shape=shape, block=block,
                             dtype=dtype, rounds=rounds)
    columns, supports, _ = jax.vmap(core, in_axes=(0,) * 5 + (None,))(keys, *sizes.T, gain)
    return columns, supports
  core = functools.partial(givens.padded_core, shape=shape, dtype=dtype, rounds=rounds)
  columns, _ = jax.vmap(core, in_axes=(0,) * 5 + (None,))(keys, *sizes.T, gain)
  return columns, None


@functools.partial(jax.jit, static_argnames="size")
def _conv_masks(outputs, positions, keys, key_index, geometry, *, size):
  """Conv masks, flattened and padded to ``size``, for entries ``positions``
  of a batch of generator outputs (their keys are ``keys[key_index]``).

  A kernel's mask is its centre support plus uniformly random entries up to
  its count (nothing added when the support is larger): support entries come
  first (score -1), the rest by a uniform score, ties by position (as a
  stable sort orders them). ``geometry`` rows are ``(in, out, centre offset,
  size, count)``; entries at or past a kernel's size are padding, never
  chosen. Element ``k`` of the uniform draw does not depend on the draw's
  length (:func:`eoi_jax.givens.uniform`), so padding changes nothing.
  """
  def one(columns, key, fan_in, fan_out, offset, numel, count):
    k = jnp.arange(size) - offset
    i, o = k // fan_out, k % fan_out  # (in, out) index of entry k of the centre tap
    inside = (k >= 0) & (k < fan_in * fan_out)
    # Flax's (in, out) kernel is columns[i, o] when in >= out, columns[o, i] else.
    first, second = jnp.where(fan_in >= fan_out, i, o), jnp.where(fan_in >= fan_out, o, i)
    value = columns[jnp.clip(first, 0, columns.shape[0] - 1),
                    jnp.clip(second, 0, columns.shape[1] - 1)]
    support = inside & (value != 0)
    scores = jnp.where(support, -1.0, givens.uniform(key, size))
    scores = jnp.where(jnp.arange(size) < numel, scores, jnp.inf)
    return keep_top(scores, jnp.maximum(count, jnp.sum(support, dtype=jnp.int32)),
                    largest=False)

  mask_keys = jax.vmap(lambda k: givens.split(k, 2)[1])(keys[key_index])
  return jax.vmap(one)(outputs[positions], mask_keys, *geometry.T)


def _repeat_blocks(xp, grids, block: int):
  """Bool ``(..., m, n)`` block grids as ``(..., m b, n b)`` masks."""
  return xp.repeat(xp.repeat(grids, block, axis=-2), block, axis=-1)


def _lay_out(xp, outputs, positions: slice, masks, mask_rows: slice, shape, dtype, structured,
             supports=None, block=None):
  """Kernels of ``shape`` (and their masks) from entries ``positions`` of a
  batch of generator outputs (already scaled by the gain); conv masks are rows
  ``mask_rows`` of ``masks`` unless ``structured``. ``xp`` is ``numpy`` for
  concrete arrays (no program to compile) or ``jax.numpy`` under a
  transformation: the same arithmetic. With ``block`` the masks come from the
  block ``supports`` (and block-level conv ``masks``), each block repeated."""
  fan_in, fan_out = shape[-2:]
  rows, cols = wide_shape(shape)
  transposed = outputs[positions, :cols, :rows]  # A.T: Flax's layout when in >= out
  matrices = transposed if fan_in >= fan_out else xp.swapaxes(transposed, 1, 2)
  if block is None:
    # The mask is the support in the compute dtype: entries a low-precision
    # cast rounds to zero stay trainable.
    support = matrices != 0
  else:
    grids = supports[positions, :cols // block, :rows // block]
    support = _repeat_blocks(xp, grids if fan_in >= fan_out else xp.swapaxes(grids, 1, 2),
                             block)
  weights = matrices.astype(dtype) if matrices.dtype != dtype else matrices
  if len(shape) == 2:
    return weights, support
  centre = weights.reshape((len(weights),) + (1,) * (len(shape) - 2) + shape[-2:])
  kernels = xp.pad(centre, [(0, 0)] + [(k // 2, k // 2) for k in shape[:-2]] + [(0, 0)] * 2)
  if structured:  # the centre support on every tap
    taps = (len(weights),) + (1,) * (len(shape) - 2) + shape[-2:]
    return kernels, xp.broadcast_to(support.reshape(taps), kernels.shape)
  if block is None:
    return kernels, masks[mask_rows, :math.prod(shape)].reshape(kernels.shape)
  grid_shape = kernels.shape[:-2] + (fan_in // block, fan_out // block)
  return kernels, _repeat_blocks(
      xp, masks[mask_rows, :math.prod(grid_shape[1:])].reshape(grid_shape), block)


class _Plan(NamedTuple):
  """The generator's inputs for one :class:`KernelRequest`."""

  sizes: np.ndarray  # int32 (B, 4): rows, cols, target non-zeros, undo threshold
  geometry: np.ndarray  # int32 (B, 5): in, out, centre offset, size, mask count (convs)
  core_shape: givens.CoreShape


def _plan(request: _Matrices, center_density, block: int | None = None) -> _Plan:
  """The plan of a request; with ``block`` every size in it counts ``b x b``
  blocks (the block-level problem)."""
  shape, densities = tuple(request.shape), np.asarray(request.densities, np.float64)
  if block is not None:
    shape = shape[:-2] + (shape[-2] // block, shape[-1] // block)
  rows, cols = wide_shape(shape)
  numel = math.prod(shape)
  if len(shape) == 2:
    center, mask_counts = densities, np.zeros(densities.shape, np.int64)
  else:
    taps = math.prod(shape[:-2])
    center = np.asarray([center_density_for(d, taps, center_density) for d in densities])
    mask_counts = np.asarray(count_for_density(densities, numel)).reshape(-1)
  target, undo_above = givens.integer_targets(center, rows, cols)
  batch = len(densities)
  sizes = np.stack([np.full(batch, rows), np.full(batch, cols), target, undo_above],
                   axis=1).astype(np.int32)
  offset = np.ravel_multi_index(center_index(shape), shape[:-2]) * shape[-2] * shape[-1] if (
      len(shape) > 2) else 0
  geometry = np.stack([np.full(batch, shape[-2]), np.full(batch, shape[-1]),
                       np.full(batch, offset), np.full(batch, numel), mask_counts],
                      axis=1).astype(np.int32)
  return _Plan(sizes, geometry, givens.CoreShape.of(rows, cols, center))


# A padding entry: a 1 x 1 problem whose target is met before any rotation.
_IDLE = np.array([1, 1, 1, 2], np.int32)


def generate(requests, *, gain=1.0, center_density=None, structured=False,
             dtype=jnp.float32, rounds=None, block=None) -> list[tuple[Array, Array]]:
  """EOI kernels and masks for several shapes at once, on checked arguments.

  Requests run together in vmapped calls of compiled generators
  (:func:`eoi_jax.givens.padded_core`) padded to a shared size: requests of
  one size bucket always, others when padding them costs little. A small
  network then needs one generator program (and one conv-mask program), a
  deep one two or three, however many kernel shapes it has; each shape needs
  only a small program that lays its kernels out.

  Args:
    requests: :class:`KernelRequest` s (conv shapes get ``center_density``
      and ``structured``; dense shapes ignore them).
    gain: ``sigma_w``.
    center_density, structured: the conv options (checked).
    dtype: float dtype of the kernels.
    rounds: apply the rotations in parallel rounds or one by one (same
      kernels); ``None``: :func:`eoi_jax.givens.default_rounds`.
    block: ``None`` (or 1) for scalar EOI, or the block size of block EOI
      (:mod:`eoi_jax.block_givens`) for every request; it must divide each
      matrix's ``in`` and ``out``.

  Returns:
    ``[(kernels, masks)]`` in the order of ``requests``, each of the request's
    shape.

  Raises:
    ValueError: ``block`` does not divide a matrix's sizes (naming the shape).
  """
  block = block_givens.check_block(block)
  kernel_requests, requests = requests, [_matrices(r) for r in requests]
  for kernel_request, request in zip(kernel_requests, requests):
    block_givens.check_fits(request.shape, block, kernel_request.shape)
  plans = [_plan(request, center_density, block) for request in requests]
  # Without partitionable threefry a uniform draw depends on its length, so
  # conv masks are not padded.
  partitionable = jax.config.jax_threefry_partitionable
  rounds = givens.default_rounds() if rounds is None else bool(rounds)
  outputs, masks, layouts = [], [], [None] * len(requests)
  supports = []
  for core_shape, members in _merged_calls([(p.core_shape, len(p.sizes)) for p in plans],
                                           block or 1):
    counts = [len(plans[i].sizes) for i in members]
    starts = np.cumsum([0] + counts)
    idle = _batch_size(sum(counts)) - sum(counts)
    sizes = np.concatenate([plans[i].sizes for i in members] + [np.broadcast_to(_IDLE, (idle, 4))])
    conv = np.concatenate([np.full(c, len(requests[i].shape) > 2) for i, c in zip(members, counts)]
                          + [np.zeros(idle, bool)])
    # One key array for the call (a network's requests share one), entries by index.
    sources = list({id(requests[i].keys): requests[i].keys for i in members}.values())
    offsets = {id(k): o for k, o in zip(sources, np.cumsum([0] + [len(k) for k in sources]))}
    keys = sources[0] if len(sources) == 1 else jnp.concatenate(sources)
    index = np.concatenate([offsets[id(requests[i].keys)] + requests[i].index for i in members]
                           + [np.zeros(idle, np.int64)]).astype(np.int32)
    columns, block_supports = _cores(keys, index, conv, sizes, gain, shape=core_shape,
                                     dtype=compute_dtype(dtype), any_conv=bool(conv.any()),
                                     rounds=rounds, block=block)
    outputs.append(columns)
    supports.append(block_supports)

    random = [j for j, i in enumerate(members) if len(requests[i].shape) > 2 and not structured]
    groups = {}
    for j in random:
      numel = math.prod(requests[members[j]].shape)
      groups.setdefault(0 if partitionable else numel, []).append(j)
    group_of = {}
    # Block EOI picks a conv mask's added entries among whole blocks: the
    # scalar rule on the block-level kernel and its block support.
    scale = 1 if block is None else block**2
    for group in groups.values():
      numel = max(math.prod(requests[members[j]].shape) // scale for j in group)
      positions = np.concatenate([np.arange(starts[j], starts[j + 1]) for j in group])
      masks.append(_conv_masks(
          columns if block is None else block_supports, positions.astype(np.int32), keys,
          index[positions],
          np.concatenate([plans[members[j]].geometry for j in group]),
          size=givens.bucket(numel) if partitionable else numel))
      row = 0
      for j in group:
        group_of[j] = (len(masks) - 1, slice(row, row + counts[j]))
        row += counts[j]
    for j, i in enumerate(members):
      group, rows = group_of.get(j, (None, None))
      layouts[i] = (tuple(requests[i].shape), len(outputs) - 1,
                    slice(int(starts[j]), int(starts[j + 1])), group, rows)
  concrete = not any(isinstance(x, jax.core.Tracer) for x in [*outputs, *masks, *supports])
  xp = np if concrete else jnp
  if concrete:  # lay out on the host: nothing more to compile
    outputs, masks = [np.asarray(x) for x in outputs], [np.asarray(x) for x in masks]
    supports = [None if x is None else np.asarray(x) for x in supports]
  results = []
  for request, (shape, call, positions, group, rows) in zip(kernel_requests, layouts):
    kernels, kernel_masks = _lay_out(
        xp, outputs[call], positions, None if group is None else masks[group], rows, shape,
        jnp.dtype(dtype), bool(structured) and len(shape) > 2, supports[call], block)
    kind = request.resolved_kind()
    if kinds.canonical(kind, request.shape[request.layer_axes:]) and (
        kind.batch_axes == tuple(range(request.layer_axes))):
      kernels, kernel_masks = kernels.reshape(request.shape), kernel_masks.reshape(request.shape)
    else:
      kernels = kinds.from_matrices(xp, kernels, request.shape, kind)
      kernel_masks = kinds.from_matrices(xp, kernel_masks, request.shape, kind)
    results.append((_to_device(kernels), _to_device(kernel_masks)) if concrete
                   else (kernels, kernel_masks))
  return results


def _to_device(value: np.ndarray) -> Array:
  """A host array on the device, replicated over the mesh set with
  ``jax.set_mesh`` if any (as ``jax.random`` places its results), so Flax can
  constrain it to a layer's sharding. ``device_put``, not ``jnp.asarray``: the
  latter compiles a staging program per shape."""
  mesh = jax.sharding.get_mesh()
  if mesh.empty:
    return jax.device_put(value)
  return jax.device_put(value, jax.sharding.NamedSharding(mesh, jax.P()))


def eoi_batch(keys, shape, densities, *, gain=1.0, center_density=None, structured=False,
              dtype=jnp.float32, block=None):
  """A batch of same-shape EOI kernels in one vmapped call.

  Each kernel has its own key and density; this is how a stack of layers (or
  every same-shape layer of a network) is initialised at once.

  Args:
    keys: ``(B,)`` keys.
    shape: kernel shape (2-D dense or 3-D to 5-D conv: ``(*taps, in, out)``).
    densities: ``(B,)`` densities in (0, 1].
    gain, center_density, structured, dtype, block: as for the single-kernel
      functions.

  Returns:
    ``(kernels, masks)`` with a leading axis of size ``B``; the masks are the
    float32 supports, as for :func:`sparse_orthogonal` (float16 and bfloat16
    kernels included).
  """
  shape = check_kernel_shape(shape)
  densities = np.asarray(densities, np.float64).reshape(-1)
  for d in densities:
    _validation.check_density(d, name="densities")
  keys = _validation.check_keys(keys, len(densities))
  _validation.check_gain(gain)
  if len(shape) == 2 and (center_density is not None or structured):
    raise ValueError(f"conv options do not apply to 2-D shape {shape}")
  center_density = check_center_density(center_density)
  structured = _validation.check_flag(structured, "structured")
  (kernels, masks), = generate([KernelRequest((len(densities),) + shape, keys, densities,
                                              layer_axes=1)], gain=gain,
                               center_density=center_density, structured=structured,
                               dtype=check_float_dtype(dtype), block=block)
  return kernels, masks


def eoi_kernel(key, shape, density: float, kind: kinds.KernelKind, *, gain=1.0,
               center_density=None, structured=False, dtype=jnp.float32, block=None):
  """The EOI kernel of ``shape`` and ``kind`` for one key, on checked arguments
  (see :func:`eoi_jax.initializers.eoi`). Returns ``(kernel, mask)``; a kernel
  of several matrices (heads, groups, stacked layers) splits ``key`` per matrix."""
  (kernel, mask), = generate([KernelRequest(tuple(shape), key[None], np.array([density]),
                                            kind=kind)],
                             gain=gain, center_density=center_density, structured=structured,
                             dtype=dtype, block=block)
  return kernel, mask
