"""Mask trees and mask makers.

A *mask tree* has the structure of its params tree (see :mod:`eoi_jax.layers`):
each maskable leaf holds a bool array of exactly the leaf's shape (``True`` =
trainable weight), every other leaf holds ``None`` (not masked), as in
jaxpruner. A scalar ``True`` in place of ``None`` (an older convention) is
accepted and read as ``None``; anything else (a mask of another shape, to be
broadcast, a 0/1 array, a scalar ``False``) is an error naming the leaf
(:func:`check_masks`). :func:`to_jaxpruner`/:func:`from_jaxpruner` and
:func:`to_optax_masked`/:func:`from_optax_masked` convert to and from the
other conventions.

Example:
  >>> dens = allocation.erk(params, 0.1)
  >>> masks = random_masks(jax.random.key(0), params, dens)
  >>> params = apply_masks(params, masks)
"""

from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from eoi_jax import _validation, layers
from eoi_jax.counts import count_for_density
from eoi_jax.layers import Filter, Layout, Stacked
from eoi_jax.topk import keep_top


def _is_unmasked(mask) -> bool:
  """``None``, or a concrete scalar ``True`` (the older convention)."""
  if mask is None:
    return True
  if isinstance(mask, jax.core.Tracer) or jnp.shape(mask):
    return False
  return bool(mask)


def check_masks(params, masks) -> list:
  """The mask of each leaf of ``params``, in flattening order, after checking it.

  Args:
    params: the params tree.
    masks: its mask tree.

  Returns:
    A list: ``None`` for an unmasked leaf (``None``, or a concrete scalar
    ``True``), else the leaf's mask.

  Raises:
    ValueError: ``masks`` does not have the structure of ``params``, or a
      mask's shape differs from its parameter's (no broadcasting); the
      message names the leaf's path and both shapes.
    TypeError: a mask that is not a bool array.
  """
  try:
    mask_leaves = jax.tree.structure(params).flatten_up_to(masks)
  except (ValueError, TypeError) as e:
    raise ValueError(f"masks must have the structure of the params ({e})") from None
  out = []
  for (path, param), mask in zip(jax.tree_util.tree_leaves_with_path(params), mask_leaves):
    if _is_unmasked(mask):
      out.append(None)
      continue
    name = layers.path_name(path)
    if not (hasattr(mask, "shape") and hasattr(mask, "dtype")) or isinstance(mask, np.bool_):
      if isinstance(mask, (bool, np.bool_)):
        raise ValueError(f"masks[{name!r}] is {mask!r}: a mask leaf is None (not masked) or a "
                         f"bool array of its parameter's shape {tuple(jnp.shape(param))}")
      raise TypeError(f"masks[{name!r}] must be None or a bool array, got "
                      f"{type(mask).__name__}")
    if mask.dtype != np.bool_:
      raise TypeError(f"masks[{name!r}] must be a bool array (True = trainable), got "
                      f"{mask.dtype}; convert 0/1 masks with eoi_jax.masking.from_jaxpruner")
    if tuple(mask.shape) != tuple(jnp.shape(param)):
      raise ValueError(f"masks[{name!r}] has shape {tuple(mask.shape)}, its parameter "
                       f"{tuple(jnp.shape(param))}: a mask must have its parameter's shape "
                       "(masks are not broadcast)")
    out.append(mask)
  return out


def checked_masks(params, masks):
  """``masks`` after :func:`check_masks`, with scalar ``True`` leaves as ``None``
  (returned unchanged when it has none)."""
  mask_leaves = check_masks(params, masks)
  if all((m is None) == (given is None) for m, given in
         zip(mask_leaves, jax.tree.structure(params).flatten_up_to(masks))):
    return masks
  return to_jaxpruner(masks)


def apply_masks(params, masks):
  """Zeroes every masked-out entry: ``where(mask, param, 0)`` leaf by leaf
  (``None`` leaves of ``masks`` leave the param as it is); one compiled
  program for the whole tree. The masks are checked first (:func:`check_masks`)."""
  return _apply_masks(params, checked_masks(params, masks))


@jax.jit
def _apply_masks(params, masks):
  return jax.tree.map(lambda p, m: p if m is None else jnp.where(m, p, jnp.zeros_like(p)),
                      params, masks)


def to_optax_masked(masks):
  """For ``optax.masked``: ``True`` on leaves that have a mask, ``False`` elsewhere
  (e.g. to decay only the masked kernels)."""
  return jax.tree.map(lambda m: not _is_unmasked(m), masks, is_leaf=lambda m: m is None)


def from_optax_masked(flags, params):
  """An ``optax.masked``-style selection as a mask tree: all-``True`` bool arrays
  (dense) on the selected leaves, ``None`` elsewhere.

  ``optax.masked`` trees say *which leaves* a transform touches, not which
  entries, so the result is the dense mask of the selected leaves; a mask
  maker (e.g. :func:`random_masks`) then decides the entries.
  ``to_optax_masked(from_optax_masked(flags, params))`` gives ``flags`` back.

  Args:
    flags: a tree of Python or array booleans with the structure of ``params``
      or a prefix of it (a flag covers its whole subtree), or a callable
      ``params -> flags``, as ``optax.masked`` accepts.
    params: the params tree.

  Returns:
    A mask tree with the structure of ``params``.

  Example:
    >>> flags = {"dense": {"kernel": True, "bias": False}}
    >>> from_optax_masked(flags, params)["dense"]["bias"] is None
    True
  """
  if callable(flags):
    flags = flags(params)

  def expand(flag, subtree):
    if np.ndim(flag) != 0 or np.asarray(flag).dtype != np.bool_:
      raise TypeError(f"flags: optax.masked-style leaves must be booleans, got {flag!r}")
    flag = bool(flag)
    return jax.tree.map(lambda leaf: jnp.ones(jnp.shape(leaf), jnp.bool_) if flag else None,
                        subtree)

  try:
    return jax.tree.map(expand, flags, params)
  except ValueError as e:
    raise ValueError(f"flags must have the structure of the params or a prefix of it ({e})") \
        from None


def to_jaxpruner(masks):
  """A mask tree in jaxpruner's convention: ``None`` where unmasked (also for
  scalar ``True`` leaves), bool arrays where masked."""
  return jax.tree.map(lambda m: None if _is_unmasked(m) else m, masks,
                      is_leaf=lambda m: m is None)


def from_jaxpruner(masks):
  """A jaxpruner mask tree (``None`` where unmasked, 0/1 arrays where masked) as a
  mask tree of bool arrays."""
  return jax.tree.map(lambda m: None if m is None else jnp.asarray(m).astype(jnp.bool_), masks,
                      is_leaf=lambda m: m is None)


def full_masks(params, filter: Filter | None = None, stacked: Stacked = None, *,
               layout: Layout | None = None):
  """All-``True`` masks (a dense network in the mask-tree format)."""
  layout = layers.resolve(params, filter, stacked, layout)
  return layout.map(lambda layer, leaf: jnp.ones(jnp.shape(leaf), jnp.bool_), params)


def masks_from_scores(layout: Layout, params, scores: Mapping[str, jax.Array], densities):
  """Per layer, keeps the ``round(d * size)`` highest ``scores`` (ties: earlier entry).

  Args:
    layout: the layers.
    params: params tree (the structure of the result).
    scores: ``{name: scores shaped like the leaf}``.
    densities: ``{name: float64 array of the stack shape}`` (checked).

  Returns:
    A mask tree.
  """

  counts = {layer.name: np.asarray(count_for_density(densities[layer.name], layer.layer_size),
                                  np.int32).reshape(layer.num_layers) for layer in layout.layers}
  masks = _top_masks(layout, scores, counts)
  return layout.map(lambda layer, leaf: masks[layer.name], params)


@functools.partial(jax.jit, static_argnums=0)
def _top_masks(layout: Layout, scores, counts) -> dict:
  """``{name: mask}`` of :func:`masks_from_scores`: one program per network."""
  return {layer.name: jax.vmap(keep_top)(
      scores[layer.name].reshape((layer.num_layers, layer.layer_size)),
      counts[layer.name]).reshape(layer.stack + layer.shape) for layer in layout.layers}


def random_masks(key, params, densities, filter: Filter | None = None, stacked: Stacked = None,
                 *, layout: Layout | None = None):
  """Uniformly random masks with exactly ``round(d * size)`` entries per layer.

  Args:
    key: a ``jax.random`` key; layer ``i`` uses ``fold_in(key, i)``.
    params: params tree.
    densities: ``{name: density}`` for every maskable layer (see
      :mod:`eoi_jax.allocation`).
    filter, stacked, layout: as in :func:`eoi_jax.layers.resolve`.

  Returns:
    A mask tree.
  """
  key = _validation.check_key(key)
  layout = layers.resolve(params, filter, stacked, layout)
  dens = layout.check_densities(densities)
  return masks_from_scores(layout, params, random_scores(key, layout), dens)


@functools.partial(jax.jit, static_argnums=1)
def random_scores(key, layout: Layout) -> dict:
  """Uniform scores for every layer: layer ``i`` draws from ``fold_in(key, i)``."""
  return {layer.name: jax.random.uniform(jax.random.fold_in(key, i), layer.stack + layer.shape)
          for i, layer in enumerate(layout.layers)}


def magnitude_masks(params, densities, filter: Filter | None = None, stacked: Stacked = None,
                    *, layout: Layout | None = None):
  """Keeps the ``round(d * size)`` largest-magnitude entries of each layer."""
  layout = layers.resolve(params, filter, stacked, layout)
  dens = layout.check_densities(densities)
  scores = {name: jnp.abs(leaf).astype(jnp.float32)
            for name, leaf in layout.leaves(params).items()}
  return masks_from_scores(layout, params, scores, dens)


def mask_densities(params, masks, filter: Filter | None = None, stacked: Stacked = None, *,
                   layout: Layout | None = None) -> dict:
  """Realised per-layer densities of a mask tree: ``{name: float or array}``.

  For a stack the value is an array over its layers, so the result can be
  passed back as ``densities`` (e.g. to regenerate a pruning method's
  densities with EOI).
  """
  layout = layers.resolve(params, filter, stacked, layout)
  mask_leaves = layout.leaves(masks)
  out = {}
  for layer in layout.layers:
    mask = np.broadcast_to(np.asarray(mask_leaves[layer.name]), layer.stack + layer.shape)
    d = mask.reshape(layer.stack + (layer.layer_size,)).sum(axis=-1) / layer.layer_size
    out[layer.name] = float(d) if layer.stack == () else d
  return out
