"""Sparsity-aware orthogonal initialisation (SAO, Esguerra et al. 2023).

SAO fixes a degree-regular bipartite graph between a layer's inputs and
outputs and puts orthogonal values on its edges. For the wide ``rows x cols``
matrix (``rows = min(in, out)``, ``cols = max(in, out)``) at degree ``d``:

* the columns are split at random into ``cols / d`` groups of ``d``;
* the rows are split at random into as many groups of ``a = rows * d / cols``;
* row group ``g`` is supported on column group ``g`` alone, with the ``a``
  orthonormal rows of a Haar-random ``a x d`` matrix as its values.

Every row then has exactly ``d`` non-zeros and every column exactly ``a``
(the graph is ``(d, a)``-biregular, a disjoint union of complete bipartite
blocks, as in the authors' construction), and rows in different groups have
disjoint supports, so the matrix has orthonormal rows. The density is
``d / cols``.

Restrictions, as in the method: ``d`` must divide ``cols`` and ``rows * d``
must be a multiple of ``cols``, so only some densities exist for a shape
(:func:`valid_degrees`); a 784 -> 100 layer, say, admits only densities 0.25,
0.5 and 1. The authors keep the input layer and the classifier dense and
orthogonal; :func:`sao_params` does the same for the layers named in
``dense``, and raises for any other layer that admits no requested degree.

Conv kernels (``(*spatial, in, out)``, odd spatial sizes) get the SAO matrix
at the centre tap, zeros elsewhere, and the mask broadcast over all taps (each
``(in, out)`` pair is kept at every tap or at none).

Example:
  >>> w, m = sao_kernel(jax.random.key(0), (128, 128), degree=16)  # density 0.125
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from eoi_jax import _validation, kernels, layers, summary
from eoi_jax.counts import count_for_density
from eoi_jax.kernels import check_kernel_shape, wide_shape
from eoi_jax.layers import Filter, Layout, Stacked
from eoi_jax.methods.dense import delta_orthogonal_batch
from eoi_jax.methods.network import SparseInit, per_matrix, regenerate_layers


def _check_one_of(degree, density):
  if (degree is None) == (density is None):
    raise ValueError(f"give exactly one of degree and density, got degree={degree!r}, "
                     f"density={density!r}")


def valid_degrees(shape) -> tuple[int, ...]:
  """Degrees SAO can build for a kernel of ``shape`` (``(..., in, out)``).

  A degree ``d`` (non-zeros per row of the wide matrix) is valid when it
  divides ``cols = max(in, out)`` and ``min(in, out) * d`` is a multiple of
  ``cols``. The density of degree ``d`` is ``d / cols``.
  """
  rows, cols = wide_shape(check_kernel_shape(shape))
  return tuple(d for d in range(1, cols + 1) if cols % d == 0 and (rows * d) % cols == 0)


def _invalid_degree_message(shape, degree, what):
  rows, cols = wide_shape(shape)
  options = ", ".join(f"{d} (density {d / cols:.4g})" for d in valid_degrees(shape))
  return (f"{what} gives degree {degree}, which SAO cannot build for a kernel of shape "
          f"{tuple(shape)}: the degree must divide max(in, out) = {cols} and "
          f"min(in, out) * degree must be a multiple of it. Valid degrees: {options}. "
          "Keep such a layer dense (sao_params' `dense`) or pick a valid degree.")


def check_degree(shape, degree) -> int:
  """Returns ``degree`` as an int after checking SAO can build it for ``shape``."""
  shape = check_kernel_shape(shape)
  if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)):
    raise ValueError(f"degree must be a positive int, got {degree!r}")
  degree = int(degree)
  if degree not in valid_degrees(shape):
    raise ValueError(_invalid_degree_message(shape, degree, f"degree={degree}"))
  return degree


def degree_for_density(shape, density) -> int:
  """The SAO degree nearest ``density * max(in, out)`` (half rounds up).

  Raises:
    ValueError: the density is outside (0, 1], or the nearest degree is not
      valid for ``shape`` (the message lists the valid ones).
  """
  shape = check_kernel_shape(shape)
  d = _validation.check_density(density)
  _, cols = wide_shape(shape)
  degree = count_for_density(d, cols)
  if degree not in valid_degrees(shape):
    raise ValueError(_invalid_degree_message(shape, degree, f"density={density!r}"))
  return degree


def _wide_matrix(key, rows, cols, degree, dtype):
  """The ``rows x cols`` SAO matrix with orthonormal rows at ``degree``."""
  groups, per_group = cols // degree, rows * degree // cols
  key_cols, key_rows, key_values = jax.random.split(key, 3)
  col_groups = jax.random.permutation(key_cols, cols).reshape(groups, 1, degree)
  row_groups = jax.random.permutation(key_rows, rows).reshape(groups, per_group, 1)
  orthonormal_rows = jax.nn.initializers.orthogonal()
  values = jax.vmap(lambda k: orthonormal_rows(k, (per_group, degree), dtype))(
      jax.random.split(key_values, groups))
  return jnp.zeros((rows, cols), dtype).at[row_groups, col_groups].set(values)


def sao_kernel(key, shape, *, degree: int | None = None, density=None, gain=1.0,
               dtype=jnp.float32):
  """SAO weight and mask for a dense or conv kernel.

  Args:
    key: a ``jax.random`` key.
    shape: ``(in, out)`` or ``(*spatial, in, out)`` with odd spatial sizes.
    degree: non-zeros per row of the wide ``min(in, out) x max(in, out)``
      matrix; see :func:`valid_degrees`. Give ``degree`` or ``density``.
    density: converted by :func:`degree_for_density`.
    gain: non-zero scale ``sigma_w``.
    dtype: float dtype of the weight.

  Returns:
    ``(weight, mask)``. The centre tap ``W`` (the whole kernel for 2-D)
    satisfies ``W @ W.T == gain**2 I`` if ``in <= out`` and
    ``W.T @ W == gain**2 I`` if ``in >= out``; every row of the wide matrix
    has ``degree`` non-zeros and every column ``min * degree / max``. The
    bool mask is that support, broadcast over all spatial taps.

  Example:
    >>> w, m = sao_kernel(jax.random.key(0), (3, 3, 64, 128), density=0.125)
  """
  key = _validation.check_key(key)
  shape = check_kernel_shape(shape)
  _check_one_of(degree, density)
  degree = check_degree(shape, degree) if degree is not None else degree_for_density(shape,
                                                                                     density)
  _validation.check_gain(gain)
  return _sao_kernel(key, shape, degree, gain, kernels.check_float_dtype(dtype))


def _sao_kernel(key, shape, degree, gain, dtype):
  rows, cols = wide_shape(shape)
  wide = _wide_matrix(key, rows, cols, degree, kernels.compute_dtype(dtype))
  center = (gain * kernels.from_wide(wide, *shape[-2:])).astype(dtype)
  return kernels.place_at_center(center, shape), jnp.broadcast_to(center != 0, shape)


@functools.partial(jax.jit, static_argnames=("shape", "degree", "dtype"))
def _sao_batch(keys, shape, degree, gain, dtype):
  return jax.vmap(lambda k: _sao_kernel(k, shape, degree, gain, dtype))(keys)


def sao_params(key, params, *, density=None, degree: int | None = None,
               dense: Sequence[str] = (), gain=1.0, bias_std=0.0,
               filter: Filter | None = None, stacked: Stacked = None,
               kinds=None, layout: Layout | None = None) -> SparseInit:
  """SAO for every maskable layer of a network, the ``dense`` layers kept dense.

  Args:
    key: a ``jax.random`` key (kernels and biases as in
      :func:`eoi_jax.methods.network.regenerate_layers`).
    params: params tree (dict or ``nnx.State``).
    density: one density for all sparse layers, converted per layer by
      :func:`degree_for_density`; or
    degree: one degree for all sparse layers (the authors' setting, e.g. 16
      for width 128).
    dense: layer names kept dense with (delta-)orthogonal values and a full
      mask; the authors keep the first and the last layer dense.
    gain: ``sigma_w``.
    bias_std: biases beside the kernels are drawn from ``N(0, bias_std**2)``.
    filter, stacked, kinds, layout: as in :func:`eoi_jax.layers.resolve`.

  Returns:
    A :class:`eoi_jax.methods.SparseInit`; its summary's requested density is
    each sparse layer's ``degree / max(in, out)`` (1 for dense layers).

  Raises:
    ValueError: a sparse layer admits no such degree (the message names the
      layer and lists its valid degrees), or ``dense`` names no maskable layer.
  """
  key = _validation.check_key(key)
  _check_one_of(degree, density)
  layout = layers.resolve(params, filter, stacked, layout, kinds)
  degrees = layer_degrees(layout, density=density, degree=degree, dense=dense)
  return sao_network(key, params, layout, degrees, _validation.check_gain(gain),
                     _validation.check_non_negative(bias_std, "bias_std"))


def layer_degrees(layout: Layout, *, density=None, degree=None, dense: Sequence[str] = ()):
  """``{name: degree}`` of every layer not in ``dense``; errors name the layer."""
  unknown = sorted(set(dense) - set(layout.names))
  if unknown:
    raise ValueError(f"dense names no maskable layers: {unknown}; maskable: "
                     f"{sorted(layout.names)}")
  degrees = {}
  for layer in layout.layers:
    if layer.name in dense:
      continue
    try:
      matrix = layer.resolved_kind().canonical_shape(layer.shape)
      degrees[layer.name] = (check_degree(matrix, degree) if degree is not None
                             else degree_for_density(matrix, density))
    except ValueError as e:
      raise ValueError(f"layer {layer.name!r}: {e}") from None
  return degrees


def sao_network(key, params, layout: Layout, degrees, gain, bias_std) -> SparseInit:
  """:func:`sao_params` on checked arguments (``degrees`` from :func:`layer_degrees`;
  layers without a degree are kept dense)."""

  def generate(keys, shape, dtype, members):
    weights, masks, start = [], [], 0
    for layer, count in members:
      layer_keys = keys[start:start + count]
      start += count
      if layer.name in degrees:
        w, m = _sao_batch(layer_keys, shape, degrees[layer.name], gain, dtype)
      else:
        w = delta_orthogonal_batch(layer_keys, shape, gain, dtype)
        m = jnp.ones(w.shape, bool)
      weights.append(w)
      masks.append(m)
    return jnp.concatenate(weights), jnp.concatenate(masks)

  new_params, mask_tree = regenerate_layers(key, params, layout, per_matrix(generate),
                                            bias_std=bias_std)
  requested = {
      l.name: (degrees[l.name] / wide_shape(l.resolved_kind().canonical_shape(l.shape))[1]
               if l.name in degrees else 1.0)
      for l in layout.layers
  }
  report = summary.sparsity_summary(new_params, mask_tree, requested, layout=layout)
  return SparseInit(new_params, mask_tree, report)
