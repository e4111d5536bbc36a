"""EOI kernels in Flax layouts, and the kernel-shape helpers every generator shares.

Layouts follow Flax: dense kernels are ``(in, out)``, conv kernels
``(*spatial, in, out)``. Every generator is a pure function of its key, works
under ``jax.jit``, ``jax.vmap`` (over keys) and ``jax.eval_shape``, computes in
float32 (float64 when that is requested and x64 is enabled) and casts at the
end, and returns ``(weight, mask)`` with a boolean mask.

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

from eoi_jax import _validation, givens
from eoi_jax.counts import count_for_density

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


@functools.partial(jax.jit, static_argnames=("fan_in", "fan_out", "num_steps", "dtype"))
def _oriented_core(key, fan_in, fan_out, target, undo_above, num_steps, gain, dtype):
  """Dense ``(fan_in, fan_out)`` EOI weight from (possibly traced) targets."""
  rows, cols = min(fan_in, fan_out), max(fan_in, fan_out)
  result = givens.givens_core(
      key, rows, cols, target, undo_above, num_steps, compute_dtype(dtype)
  )
  # The core keeps A transposed, (cols, rows): only wide kernels pay for a
  # transpose here.
  weight = (gain * from_wide(result.matrix, fan_in, fan_out)).astype(dtype)
  return weight, weight != 0


def sparse_orthogonal(
    key: Array, shape, density, *, gain=1.0, dtype=jnp.float32
) -> tuple[Array, Array]:
  """Exactly orthogonal sparse dense kernel (EOI).

  Builds the wide ``min x max`` matrix from random Givens rotations until the
  target density is met (see :mod:`eoi_jax.givens`), scales it by ``gain`` and
  lays it out as Flax's ``(in, out)``.

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

  Returns:
    ``(weight, mask)``: if ``in <= out``, ``weight @ weight.T == gain**2 * I``;
    if ``in >= out``, ``weight.T @ weight == gain**2 * I`` (both when square).
    ``mask`` is the bool array ``weight != 0``.

  Example:
    >>> w, m = sparse_orthogonal(jax.random.key(0), (256, 128), 0.1)
    >>> w.shape, m.dtype
    ((256, 128), dtype('bool'))
  """
  shape = _validation.check_shape(shape, (2,))
  d = _validation.check_density(density)
  _validation.check_gain(gain)
  plan = _plan(shape, np.float64(d))
  return _kernel_core(key, plan.target, plan.undo_above, plan.mask_count, gain,
                      **plan.static(check_float_dtype(dtype), structured=False))


def _conv_mask(key, center_mask, shape, mask_count):
  """Centre support plus uniformly random extra entries up to ``mask_count``.

  Support entries sort first (score -1), the rest by a uniform score; a
  stable argsort breaks ties by position, so exactly
  ``max(mask_count, nnz(centre))`` entries are kept.
  """
  support = place_at_center(center_mask, shape).reshape(-1)
  scores = jnp.where(support, -1.0, jax.random.uniform(key, support.shape))
  order = jnp.argsort(scores, stable=True)
  rank = jnp.zeros(support.shape, jnp.int32).at[order].set(
      jnp.arange(support.size, dtype=jnp.int32)
  )
  keep = jnp.maximum(mask_count, jnp.sum(support, dtype=jnp.int32))
  return (rank < keep).reshape(shape)


def sparse_delta_orthogonal(
    key: Array,
    shape,
    density,
    *,
    gain=1.0,
    center_density=None,
    structured: bool = False,
    dtype=jnp.float32,
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
  support broadcast over all taps.

  Args:
    key: a ``jax.random`` key.
    shape: ``(*spatial, in, out)`` with 1 to 3 odd spatial sizes.
    density: target density of the whole kernel's mask, in (0, 1].
    gain: non-zero scale ``sigma_w``.
    center_density: ``None`` (use ``density``), ``"sqrt"`` (``min(d K, 1,
      sqrt(d))`` for ``K`` taps) or a float in (0, 1].
    structured: broadcast the centre mask over taps (EIS).
    dtype: float dtype of the kernel.

  Returns:
    ``(kernel, mask)``; ``kernel[centre]`` is semi-orthogonal with gain
    ``gain`` and ``kernel == 0`` off the centre; ``mask`` is bool and contains
    ``kernel != 0``.

  Example:
    >>> k, m = sparse_delta_orthogonal(jax.random.key(0), (3, 3, 64, 64), 0.1)
    >>> int(m.sum()) == round(0.1 * k.size)
    True
  """
  shape = check_kernel_shape(shape, (3, 4, 5))
  d = _validation.check_density(density)
  _validation.check_gain(gain)
  center_density = check_center_density(center_density)
  structured = _validation.check_flag(structured, "structured")
  plan = _plan(shape, np.float64(d), center_density)
  return _kernel_core(key, plan.target, plan.undo_above, plan.mask_count, gain,
                      **plan.static(check_float_dtype(dtype), structured=structured))


class _Plan(NamedTuple):
  """Host-side integer form of one or a batch of EOI requests of one shape."""

  shape: tuple[int, ...]
  target: np.ndarray  # int32: non-zeros at which the rotation loop stops
  undo_above: np.ndarray  # int32: closer-of-the-last-two threshold
  mask_count: np.ndarray  # int32: conv mask entries (unused for dense)
  num_steps: int

  def static(self, dtype, structured):
    return dict(shape=self.shape, num_steps=self.num_steps, dtype=dtype,
                structured=structured)


def _plan(shape, densities, center_density=None) -> _Plan:
  """Targets for ``densities`` (scalar or array, already validated)."""
  rows, cols = wide_shape(shape)
  densities = np.asarray(densities, np.float64)
  if len(shape) == 2:
    center = densities
    mask_count = np.zeros(densities.shape, np.int32)
  else:
    taps = math.prod(shape[:-2])
    center = np.vectorize(lambda d: center_density_for(d, taps, center_density))(densities)
    mask_count = np.asarray(count_for_density(densities, math.prod(shape)), np.int32)
  target, undo_above = givens.integer_targets(center, rows, cols)
  num_steps = givens.max_rotations(rows, cols, float(np.max(center)))
  return _Plan(tuple(shape), target, undo_above, mask_count, num_steps)


@functools.partial(
    jax.jit, static_argnames=("shape", "num_steps", "dtype", "structured")
)
def _kernel_core(key, target, undo_above, mask_count, gain, *, shape, num_steps, dtype,
                 structured):
  """Dense or conv EOI kernel and mask from (possibly traced) targets."""
  fan_in, fan_out = shape[-2:]
  if len(shape) == 2:
    return _oriented_core(key, fan_in, fan_out, target, undo_above, num_steps, gain, dtype)
  key_center, key_mask = jax.random.split(key)
  center, center_mask = _oriented_core(
      key_center, fan_in, fan_out, target, undo_above, num_steps, gain, dtype
  )
  kernel = place_at_center(center, shape)
  if structured:
    mask = jnp.broadcast_to(center_mask, shape)
  else:
    mask = _conv_mask(key_mask, center_mask, shape, mask_count)
  return kernel, mask


def eoi_batch(keys, shape, densities, *, gain=1.0, center_density=None, structured=False,
              dtype=jnp.float32):
  """A batch of same-shape EOI kernels in one vmapped call.

  Each kernel has its own key and density; this is how a stack of layers (or
  every same-shape layer of a network) is initialised at once.

  Args:
    keys: ``(B,)`` keys.
    shape: kernel shape (2-D dense or 3-D to 5-D conv, as for :func:`eoi_init`).
    densities: ``(B,)`` densities in (0, 1].
    gain, center_density, structured, dtype: as for the single-kernel functions.

  Returns:
    ``(kernels, masks)`` with a leading axis of size ``B``.
  """
  shape = check_kernel_shape(shape)
  densities = np.asarray(densities, np.float64).reshape(-1)
  for d in densities:
    _validation.check_density(d, name="densities")
  _validation.check_gain(gain)
  if len(shape) == 2 and (center_density is not None or structured):
    raise ValueError(f"conv options do not apply to 2-D shape {shape}")
  center_density = check_center_density(center_density)
  structured = _validation.check_flag(structured, "structured")
  return batch_core(keys, shape, densities, gain, center_density, structured,
                    check_float_dtype(dtype))


def batch_core(keys, shape, densities, gain, center_density, structured, dtype):
  """:func:`eoi_batch` on arguments already checked (for whole-network callers)."""
  plan = _plan(shape, densities, center_density)
  core = functools.partial(_kernel_core, gain=gain, **plan.static(dtype, structured=structured))
  return jax.vmap(core)(keys, plan.target, plan.undo_above, plan.mask_count)


def eoi_init(key, shape, density, *, gain=1.0, dtype=jnp.float32, **conv_options):
  """Dispatches on ``shape``: 2-D to :func:`sparse_orthogonal`, 3-D to 5-D to
  :func:`sparse_delta_orthogonal`. Returns ``(weight, mask)``."""
  try:
    ndim = len(shape)
  except TypeError as e:
    raise ValueError(f"shape must be a sequence of positive ints, got {shape!r}") from e
  if ndim == 2:
    if conv_options:
      names = ", ".join(sorted(conv_options))
      raise ValueError(f"conv options ({names}) do not apply to 2-D shape {tuple(shape)}")
    return sparse_orthogonal(key, shape, density, gain=gain, dtype=dtype)
  if ndim in (3, 4, 5):
    return sparse_delta_orthogonal(key, shape, density, gain=gain, dtype=dtype, **conv_options)
  raise ValueError(
      f"shape must have 2 (dense) or 3 to 5 (conv) dimensions, got {ndim} ({tuple(shape)!r})"
  )
