"""Dense initialisers the baselines use.

* :func:`delta_orthogonal`: an orthogonal ``(in, out)`` matrix at the centre
  tap, zeros elsewhere (Xiao et al. 2018); a plain orthogonal matrix for 2-D.
* :func:`block_orthogonal_conv`: the orthogonal convolution of Xiao et al.
  2018, Algorithm 1, whose every tap can be non-zero and which is an exact
  isometry as a circular convolution.
* :func:`orthogonal_params`: every maskable kernel of a params tree
  re-initialised (delta-)orthogonal, same-shape kernels in one vmapped call.
* :func:`sparse_kaiming`: Kaiming-normal values scaled by each output unit's
  sparse fan-in (the unmasked incoming connections).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from eoi_jax import _validation, kernels, layers
from eoi_jax.kinds import from_matrices, to_matrices
from eoi_jax.layers import Filter, Layout, Stacked
from eoi_jax.methods.network import per_matrix, regenerate_layers


def delta_orthogonal(key, shape, gain=1.0, dtype=jnp.float32):
  """Orthogonal ``(in, out)`` matrix at the centre tap of ``(*spatial, in, out)``."""
  key = _validation.check_key(key)
  shape = tuple(shape)
  center = jax.nn.initializers.orthogonal(gain)(key, shape[-2:], jnp.float32)
  return kernels.place_at_center(center.astype(dtype), shape)


@functools.partial(jax.jit, static_argnames=("shape", "dtype"))
def delta_orthogonal_batch(keys, shape, gain=1.0, dtype=jnp.float32):
  """:func:`delta_orthogonal` for each key of ``keys`` (``(B,)``), in one call."""
  return jax.vmap(lambda k: delta_orthogonal(k, shape, gain, dtype))(keys)


def _haar(key, n, dtype=jnp.float32):
  return jax.nn.initializers.orthogonal()(key, (n, n), dtype)


def _symmetric_projection(key, n):
  """``Q diag(c) Q^T`` with ``Q`` Haar-orthogonal and ``c`` a random 0/1 vector."""
  key_q, key_c = jax.random.split(key)
  q = _haar(key_q, n)
  c = jax.random.bernoulli(key_c, 0.5, (n,)).astype(q.dtype)
  return (q * c) @ q.T


def _block_orth(p1, p2):
  """2x2 kernel ``{(0,0): p1 p2, (0,1): p1 (I - p2), (1,0): (I - p1) p2, (1,1): (I - p1)(I - p2)}``."""
  eye = jnp.eye(p1.shape[0], dtype=p1.dtype)
  q1, q2 = eye - p1, eye - p2
  return jnp.stack([jnp.stack([p1 @ p2, p1 @ q2]), jnp.stack([q1 @ p2, q1 @ q2])])


def _matrix_conv(a, b):
  """Polynomial product of two kernels of matrices ``(k, k, n, n)``: full 2-D
  convolution of the taps with matrix products."""
  ka, kb = a.shape[0], b.shape[0]
  out = jnp.zeros((ka + kb - 1, ka + kb - 1) + a.shape[2:], a.dtype)
  for i in range(ka):
    for j in range(ka):
      for k in range(kb):
        for l in range(kb):
          out = out.at[i + k, j + l].add(a[i, j] @ b[k, l])
  return out


def block_orthogonal_conv(key, shape, gain=1.0, dtype=jnp.float32):
  """Orthogonal 2-D convolution kernel (Xiao et al. 2018, Algorithm 1).

  Products of block-orthogonal 2x2 kernels built from random symmetric
  projections give a ``k x k`` kernel of ``out x out`` matrices that is
  orthogonal as a circular convolution; a random ``in x out`` matrix with
  orthonormal rows maps it to ``in`` input channels.

  Args:
    key: a ``jax.random`` key.
    shape: ``(k, k, in, out)`` with ``in <= out``.
    gain: scale.
    dtype: output dtype.

  Returns:
    The kernel; with circular padding, ``||conv(x)|| = gain * ||x||``.
  """
  key = _validation.check_key(key)
  shape = _validation.check_shape(shape, (4,))
  k, k2, cin, cout = shape
  if k != k2:
    raise ValueError(f"shape must have square spatial size, got {shape}")
  if cin > cout:
    raise ValueError(f"shape must have in <= out for an orthogonal convolution, got {shape}")
  key_orth, *keys = jax.random.split(key, 2 * k)
  rows = _haar(key_orth, cout)[:cin]  # (in, out) with orthonormal rows
  if k == 1:
    return (gain * rows)[None, None].astype(dtype)
  kernel = _block_orth(_symmetric_projection(keys[0], cout), _symmetric_projection(keys[1], cout))
  for i in range(k - 2):
    kernel = _matrix_conv(kernel, _block_orth(_symmetric_projection(keys[2 + 2 * i], cout),
                                              _symmetric_projection(keys[3 + 2 * i], cout)))
  # Tap (i, j) maps input channels through rows, then the (out x out) tap.
  return (gain * jnp.einsum("ab,ijbc->ijac", rows, kernel)).astype(dtype)


def sparse_kaiming(key, params, masks, *, gain=2.0 ** 0.5, filter: Filter | None = None,
                   stacked: Stacked = None, kinds=None, layout: Layout | None = None):
  """Kaiming-normal values scaled to each output unit's sparse fan-in.

  Entry ``(..., i, o)`` of each of a kernel's matrices (:mod:`eoi_jax.kinds`)
  is ``N(0, gain**2 / fan_in(o))`` where ``fan_in(o)`` counts the unmasked
  entries feeding output ``o`` (taps and inputs); masked-out entries are zero.

  Args:
    key: a ``jax.random`` key (layer ``i`` uses ``fold_in(key, i)``).
    params: params tree; masks: its mask tree.
    gain: ``sqrt(2)`` for ReLU (Kaiming), 1 for linear/tanh.
    filter, stacked, kinds, layout: as in :func:`eoi_jax.layers.resolve`.
  """
  key = _validation.check_key(key)
  _validation.check_gain(gain)
  layout = layers.resolve(params, filter, stacked, layout, kinds)
  index = {name: i for i, name in enumerate(layout.names)}
  mask_leaves = layout.leaves(masks)

  def make(layer, leaf):
    kind = layer.leaf_kind()
    mask = to_matrices(jnp, jnp.broadcast_to(mask_leaves[layer.name], jnp.shape(leaf)),
                             kind)  # (M, *taps, in, out)
    per_out = mask.reshape((mask.shape[0], -1, mask.shape[-1]))
    fan_in = jnp.maximum(per_out.sum(axis=1, keepdims=True), 1).astype(jnp.float32)
    noise = jax.random.normal(jax.random.fold_in(key, index[layer.name]), per_out.shape)
    values = jnp.where(per_out, gain * noise / jnp.sqrt(fan_in), 0).reshape(mask.shape)
    return from_matrices(jnp, values, jnp.shape(leaf), kind).astype(leaf.dtype)

  return layout.map(make, params, other=lambda leaf: leaf)


def orthogonal_params(key, params, *, gain=1.0, bias_std=0.0, filter: Filter | None = None,
                      stacked: Stacked = None, kinds=None, layout: Layout | None = None):
  """Dense (delta-)orthogonal kernels for every maskable layer.

  Args:
    key: a ``jax.random`` key (kernels and biases as in
      :func:`eoi_jax.methods.network.regenerate_layers`).
    params: params tree.
    gain: ``sigma_w``.
    bias_std: biases beside the kernels are drawn from ``N(0, bias_std**2)``.
    filter, stacked, kinds, layout: as in :func:`eoi_jax.layers.resolve`.

  Returns:
    The new params tree.
  """
  key = _validation.check_key(key)
  layout = layers.resolve(params, filter, stacked, layout, kinds)
  return orthogonal_network(key, params, layout, _validation.check_gain(gain),
                            _validation.check_non_negative(bias_std, "bias_std"))


def orthogonal_network(key, params, layout: Layout, gain, bias_std):
  """:func:`orthogonal_params` on checked arguments."""

  def generate(keys, shape, dtype, group):
    return delta_orthogonal_batch(keys, shape, gain, dtype), None

  new_params, _ = regenerate_layers(key, params, layout, per_matrix(generate),
                                    bias_std=bias_std)
  return new_params
