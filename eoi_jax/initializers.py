"""Flax/JAX initializers for EOI: ``kernel_init=eoi(density)``.

Both factories return functions with the ``jax.nn.initializers`` signature
``init(key, shape, dtype=None, out_sharding=None)`` and follow
``jax.nn.initializers.variance_scaling`` in naming a kernel's axes:
``in_axis``/``out_axis`` (ints or tuples) span the matrix, ``batch_axis``
indexes independent matrices (heads, stacked layers), and ``conv=True`` /
``feature_group_count`` say that the remaining axes are conv taps (see
:mod:`eoi_jax.kinds`). Without them a 2-D kernel is dense ``(in, out)`` and a
4-D or 5-D kernel with equal odd leading sizes is a conv kernel; any other
shape is an error that says which argument to pass. For the same key and
arguments, ``eoi_mask`` returns exactly the mask belonging to the kernel
``eoi`` makes.

Example:
  >>> from flax import nnx
  >>> layer = nnx.Linear(784, 128, kernel_init=eoi(0.1), rngs=nnx.Rngs(0))
  >>> mask = eoi_mask(0.1)(jax.random.key(0), (784, 128))
  >>> heads = nnx.LinearGeneral(512, (8, 64), kernel_init=eoi(0.1, out_axis=(-2, -1)),
  ...                           rngs=nnx.Rngs(0))
  >>> depthwise = nnx.Conv(64, 64, (3, 3), feature_group_count=64,
  ...                      kernel_init=eoi(0.5, feature_group_count=64), rngs=nnx.Rngs(0))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from eoi_jax import _validation, block_givens, kernels, kinds


def _place(value, out_sharding):
  """``value`` with ``out_sharding`` (a ``NamedSharding`` or a ``PartitionSpec``
  of the current mesh), eagerly or under a transformation, on Auto and
  Explicit meshes alike: ``with_sharding_constraint`` only constrains Auto
  axes and ``device_put`` only places traced values on Explicit ones."""
  if out_sharding is None:
    return value
  if isinstance(value, jax.core.Tracer):
    mesh = getattr(out_sharding, "mesh", None) or jax.sharding.get_abstract_mesh()
    explicit = jax.sharding.AxisType.Explicit
    if not (mesh.axis_names and all(t == explicit for t in mesh.axis_types)):
      return jax.lax.with_sharding_constraint(value, out_sharding)
  return jax.device_put(value, out_sharding)


class _Options:
  """The checked arguments of :func:`eoi` and :func:`eoi_mask`."""

  def __init__(self, density, gain, in_axis, out_axis, batch_axis, conv, feature_group_count,
               center_density, structured, block=None):
    self.density = _validation.check_density(density)
    self.block = block_givens.check_block(block)
    self.gain = _validation.check_gain(gain)
    self.center_density = kernels.check_center_density(center_density)
    self.structured = _validation.check_flag(structured, "structured")
    self.axes = dict(in_axis=in_axis, out_axis=out_axis, batch_axis=batch_axis, conv=conv,
                     feature_group_count=feature_group_count)
    if conv is False and (center_density is not None or structured):
      raise ValueError("center_density and structured apply to conv kernels; conv=False "
                       "says there are none")
    kinds.check_arguments(**self.axes)

  def generate(self, key, shape, dtype=jnp.float32):
    key = _validation.check_key(key)
    shape = _validation.check_shape(shape, range(2, 9))
    kind = kinds.resolve(shape, **self.axes)
    if self.axes["feature_group_count"] is None:
      kinds.warn_if_ambiguous(shape, kind, stacklevel=3)  # at the initializer's caller
    if not kind.conv and (self.center_density is not None or self.structured):
      raise ValueError(f"center_density and structured apply to conv kernels; shape {shape} "
                       f"is not one (pass conv=True if its extra axes are conv taps)")
    return kernels.eoi_kernel(key, shape, self.density, kind, gain=self.gain,
                              center_density=self.center_density, structured=self.structured,
                              dtype=dtype, block=self.block)


def eoi(density, gain=1.0, *, in_axis=None, out_axis=None, batch_axis=(), conv=None,
        feature_group_count: int | None = None, center_density=None, structured: bool = False,
        block: int | None = None):
  """EOI kernel initializer.

  Args:
    density: target density in (0, 1] (of each matrix; of the whole kernel's
      mask for conv kernels).
    gain: scale ``sigma_w`` (non-zero).
    in_axis, out_axis: the matrix's axes (int or tuple; default ``-2``, ``-1``).
    batch_axis: axes of independent matrices (int or tuple), e.g. heads or
      the layer axis of an ``nnx.vmap``/``nnx.scan`` stack.
    conv: ``True`` if the other axes are conv taps (needed for 3-D conv
      kernels), ``False`` if there must be none, ``None`` for the default rule.
    feature_group_count: a grouped conv's groups, as passed to ``nnx.Conv``:
      each group's centre block is its own exact orthogonal matrix; a
      depthwise kernel (``feature_group_count == in_features``) is an isometry
      channel by channel. ``None`` (the default) is 1; a conv kernel with one
      input channel, ``(k, k, 1, out)``, then gets a
      :class:`eoi_jax.kinds.AmbiguousConvWarning`: the initializer cannot tell
      a depthwise conv (pass its groups) from a conv on one input channel
      (pass 1).
    center_density, structured: conv options (see
      :func:`eoi_jax.sparse_delta_orthogonal`).
    block: ``None`` (scalar EOI) or a block size ``b``: block EOI, the
      support whole ``b x b`` blocks of each matrix (its in and out must be
      multiples of ``b``; see :func:`eoi_jax.sparse_orthogonal`).

  Returns:
    ``init(key, shape, dtype=None, out_sharding=None) -> kernel`` (``dtype``
    ``None`` is JAX's default float dtype).

  Raises:
    TypeError, ValueError: at once for bad arguments; at the call for a shape
      that the axes do not fit.

  Example:
    >>> from flax import nnx
    >>> conv = nnx.Conv(16, 32, (3, 3), kernel_init=eoi(0.1, center_density="sqrt"),
    ...                 rngs=nnx.Rngs(0))
  """
  options = _Options(density, gain, in_axis, out_axis, batch_axis, conv, feature_group_count,
                     center_density, structured, block)

  def init(key, shape, dtype=None, out_sharding=None):
    dtype = jax.dtypes.canonicalize_dtype(jnp.float_ if dtype is None else
                                          kernels.check_float_dtype(dtype))
    weight, _ = options.generate(key, shape, dtype)
    return _place(weight, out_sharding)

  return init


def eoi_mask(density, gain=1.0, *, in_axis=None, out_axis=None, batch_axis=(), conv=None,
             feature_group_count: int | None = None, center_density=None,
             structured: bool = False, block: int | None = None):
  """Mask initializer matching :func:`eoi` for the same key and arguments.

  Args:
    As for :func:`eoi`.

  Returns:
    ``mask_init(key, shape, dtype=None, out_sharding=None) -> mask``
    (``True`` where the weight is trainable; ``dtype`` ``None`` is bool). The
    mask is the kernel's support in float32 (float64 for float64 kernels):
    entries that a float16 or bfloat16 kernel rounds to zero stay trainable.
    With ``block`` it is the block support: whole ``b x b`` blocks.
  """
  options = _Options(density, gain, in_axis, out_axis, batch_axis, conv, feature_group_count,
                     center_density, structured, block)

  def mask_init(key, shape, dtype=None, out_sharding=None):
    _, mask = options.generate(key, shape)
    return _place(mask if dtype is None else mask.astype(dtype), out_sharding)

  return mask_init

