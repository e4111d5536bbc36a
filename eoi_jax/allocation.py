"""Density allocators: per-layer densities for an overall density.

Each allocator takes a params tree and an overall density ``d`` and returns
``{layer name: density}`` for every maskable layer (see
:mod:`eoi_jax.layers`), with the parameter-weighted mean of the densities
equal to ``d`` up to float rounding (``|sum_i d_i n_i / N - d| <= 1e-9``).
Mask makers then round each layer to a whole count, which moves the overall
density by at most half an entry per layer.

Example:
  >>> dens = erk(params, 0.1)
  >>> masks = masking.random_masks(key, params, dens)
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from eoi_jax import _validation, layers
from eoi_jax.layers import Filter, Layout, Stacked


def _overall(layer_list, densities) -> float:
  total = sum(layer.size for layer in layer_list)
  kept = sum(float(np.sum(densities[l.name])) * l.layer_size for l in layer_list)
  return kept / total


def overall_density(params, densities, filter: Filter | None = None,
                    stacked: Stacked = None, *, layout: Layout | None = None) -> float:
  """Parameter-weighted mean of per-layer densities over the maskable layers."""
  layout = layers.resolve(params, filter, stacked, layout)
  return _overall(layout.layers, layout.check_densities(densities))


def _as_output(layer_list, densities):
  return {
      l.name: float(densities[l.name]) if l.stack == () else np.asarray(densities[l.name])
      for l in layer_list
  }


def uniform(params, density, filter: Filter | None = None, stacked: Stacked = None, *,
            layout: Layout | None = None) -> dict:
  """Every maskable layer at ``density``."""
  d = _validation.check_density(density)
  return _uniform(layers.resolve(params, filter, stacked, layout), d)


def _uniform(layout: Layout, d: float) -> dict:
  return {layer.name: d for layer in layout.layers}


def _solve_with_dense(layer_list, density, dense_names, weights):
  """Densities ``eps * weight`` for non-dense layers meeting ``density`` overall.

  Layers whose density would exceed 1 join the dense set and the rest is
  solved again (the ERK procedure).
  """
  total = sum(l.size for l in layer_list)
  dense = set(dense_names)
  while True:
    free = [l for l in layer_list if l.name not in dense]
    budget = density * total - sum(l.size for l in layer_list if l.name in dense)
    if budget < -1e-9 * total:
      raise ValueError(
          f"density={density} is too low: the dense layers {sorted(dense)} alone "
          f"exceed it"
      )
    if not free:
      if abs(budget) > 1e-9 * total:
        raise ValueError(f"density={density} cannot be met with every layer dense")
      return {l.name: 1.0 for l in layer_list}
    divisor = sum(weights[l.name] * l.size for l in free)
    eps = max(budget, 0.0) / divisor
    over = [l.name for l in free if eps * weights[l.name] > 1.0]
    if not over:
      out = {l.name: 1.0 for l in layer_list if l.name in dense}
      out.update({l.name: eps * weights[l.name] for l in free})
      return out
    dense.update(over)


def uniform_dense_ends(params, density, filter: Filter | None = None, stacked: Stacked = None,
                       dense: Sequence[str] | None = None, *,
                       layout: Layout | None = None) -> dict:
  """Uniform density with the first and last maskable layers kept dense.

  The other layers share one density, solved so the overall density is
  ``density``.

  Args:
    params: params tree.
    density: overall density in (0, 1].
    filter, stacked, layout: as in :func:`eoi_jax.layers.resolve`.
    dense: names of the layers to keep dense; default the first and last
      maskable layers in flattening order (name layers so that order is the
      network's, or pass the names).

  Raises:
    ValueError: when the dense layers alone exceed ``density``.
  """
  d = _validation.check_density(density)
  return _uniform_dense_ends(layers.resolve(params, filter, stacked, layout), d, dense)


def _uniform_dense_ends(layout: Layout, d: float, dense=None) -> dict:
  layer_list = layout.layers
  names = [layer_list[0].name, layer_list[-1].name] if dense is None else list(dense)
  unknown = sorted(set(names) - {l.name for l in layer_list})
  if unknown:
    raise ValueError(f"dense names unknown layers {unknown}")
  weights = {l.name: 1.0 for l in layer_list}
  out = _solve_with_dense(layer_list, d, names, weights)
  too_dense = [n for n in out if n not in names and out[n] > 1.0 + 1e-12]
  if too_dense:
    raise ValueError(f"density={d} needs layers {too_dense} above 1")
  return out


def erk(params, density, filter: Filter | None = None, stacked: Stacked = None,
        power_scale: float = 1.0, *, layout: Layout | None = None) -> dict:
  """Erdos-Renyi-Kernel densities (Evci et al. 2020).

  A layer's density is proportional to ``(sum(shape) / prod(shape)) **
  power_scale`` (conv kernel dims included); layers that would exceed 1 are
  made dense and the rest is solved again, so the overall density is met.

  Args:
    params: params tree.
    density: overall density in (0, 1].
    filter, stacked, layout: as in :func:`eoi_jax.layers.resolve`.
    power_scale: exponent; 0 gives uniform.
  """
  d = _validation.check_density(density)
  power_scale = _validation.check_non_negative(power_scale, "power_scale")
  return _erk(layers.resolve(params, filter, stacked, layout), d, power_scale)


def _erk(layout: Layout, d: float, power_scale: float = 1.0) -> dict:
  layer_list = layout.layers
  weights = {
      l.name: (sum(l.shape) / float(np.prod(l.shape))) ** power_scale for l in layer_list
  }
  return _solve_with_dense(layer_list, d, [], weights)


def explicit(params, mapping: Mapping[str, object], filter: Filter | None = None,
             stacked: Stacked = None, *, layout: Layout | None = None) -> dict:
  """A user-given ``{name: density}`` mapping, checked against the layers.

  Every maskable layer must be named, with a density in (0, 1] (an array of
  the stack's shape for a stack).
  """
  layout = layers.resolve(params, filter, stacked, layout)
  return _as_output(layout.layers, layout.check_densities(mapping, positive=True))


ALLOCATORS = {
    "uniform": _uniform,
    "erk": _erk,
    "uniform_dense_ends": _uniform_dense_ends,
}
"""Allocators by name; each entry maps ``(layout, density, **options)`` (checked) to densities."""


def allocate(name: str, params, density, filter: Filter | None = None,
             stacked: Stacked = None, *, layout: Layout | None = None, **options) -> dict:
  """Allocator by name: ``uniform``, ``erk`` (``power_scale``) or
  ``uniform_dense_ends`` (``dense``)."""
  if name not in ALLOCATORS:
    raise ValueError(f"allocator must be one of {sorted(ALLOCATORS)}, got {name!r}")
  d = _validation.check_density(density)
  if "power_scale" in options:
    options["power_scale"] = _validation.check_non_negative(options["power_scale"],
                                                            "power_scale")
  return ALLOCATORS[name](layers.resolve(params, filter, stacked, layout), d, **options)
