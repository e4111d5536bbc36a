"""Flax/JAX initializers for EOI: ``kernel_init=eoi(density)``.

Both factories return functions with the ``jax.nn.initializers`` signature
``init(key, shape, dtype, out_sharding=None)``. 2-D shapes use the dense rule
(:func:`eoi_jax.sparse_orthogonal`), 3-D to 5-D shapes the conv rule
(:func:`eoi_jax.sparse_delta_orthogonal`). For the same key and arguments,
``eoi_mask`` returns exactly the mask belonging to the kernel ``eoi`` makes.

Example:
  >>> from flax import nnx
  >>> layer = nnx.Linear(784, 128, kernel_init=eoi(0.1), rngs=nnx.Rngs(0))
  >>> mask = eoi_mask(0.1)(jax.random.key(0), (784, 128))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from eoi_jax import _validation, kernels


def _check_options(density, gain, conv_options):
  _validation.check_density(density)
  _validation.check_gain(gain)
  unknown = set(conv_options) - {"center_density", "structured"}
  if unknown:
    raise ValueError(
        f"unknown conv options {sorted(unknown)}; allowed: center_density, structured"
    )
  if "center_density" in conv_options:
    kernels.check_center_density(conv_options["center_density"])
  if "structured" in conv_options:
    _validation.check_flag(conv_options["structured"], "structured")


def _place(value, out_sharding):
  if out_sharding is None:
    return value
  return jax.lax.with_sharding_constraint(value, out_sharding)


def eoi(density, gain=1.0, **conv_options):
  """EOI kernel initializer.

  Args:
    density: target density in (0, 1].
    gain: scale ``sigma_w`` (non-zero).
    **conv_options: ``center_density`` and ``structured`` for conv kernels
      (see :func:`eoi_jax.sparse_delta_orthogonal`).

  Returns:
    ``init(key, shape, dtype=jnp.float32, out_sharding=None) -> kernel``.

  Example:
    >>> from flax import nnx
    >>> conv = nnx.Conv(16, 32, (3, 3), kernel_init=eoi(0.1, center_density="sqrt"),
    ...                 rngs=nnx.Rngs(0))
  """
  _check_options(density, gain, conv_options)

  def init(key, shape, dtype=jnp.float32, out_sharding=None):
    weight, _ = kernels.eoi_init(key, shape, density, gain=gain, dtype=dtype, **conv_options)
    return _place(weight, out_sharding)

  return init


def eoi_mask(density, gain=1.0, **conv_options):
  """Mask initializer matching :func:`eoi` for the same key and arguments.

  Args:
    density, gain, **conv_options: as for :func:`eoi`.

  Returns:
    ``mask_init(key, shape, dtype=jnp.bool_, out_sharding=None) -> mask``
    (``True`` where the weight is trainable).
  """
  _check_options(density, gain, conv_options)

  def mask_init(key, shape, dtype=jnp.bool_, out_sharding=None):
    _, mask = kernels.eoi_init(key, shape, density, gain=gain, **conv_options)
    return _place(mask.astype(dtype), out_sharding)

  return mask_init
