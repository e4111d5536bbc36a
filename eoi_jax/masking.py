"""Masks over whole models: which parameters are maskable, mask trees, mask makers.

A *params tree* is any pytree of arrays: a plain (nested) dict from
``linen``, or an ``nnx.State`` from ``nnx.state(model, nnx.Param)``. A *mask
tree* has the same structure; each maskable leaf holds a bool array of the
leaf's shape (``True`` = trainable weight), every other leaf holds the scalar
``True`` (nothing masked, broadcasts against any update).

Layers are named by their path with ``/`` separators, e.g. ``"l1/kernel"`` or
``"blocks/0/conv/kernel"`` (NNX's trailing ``.value`` is dropped). By default a
leaf is maskable when it has at least 2 dimensions and is not a bias or a norm
parameter; pass ``filter=lambda name, leaf: ...`` to choose otherwise.

A leaf may hold a *stack* of same-shape layers along leading axes (a scanned
block of a deep network, e.g. ``(998, 128, 128)``). Say so with ``stacked``,
a mapping ``{name: number_of_stack_axes}`` or a callable ``(name, leaf) ->
int``; each layer of the stack then gets its own mask (and its own EOI
matrix) at the stack's density.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from eoi_jax import _checks
from eoi_jax._counts import count_for_density
from eoi_jax._select import keep_top

Filter = Callable[[str, jax.Array], bool]
Stacked = Union[Mapping[str, int], Callable[[str, jax.Array], int], None]

NEVER_MASKED = frozenset({"bias", "scale", "mean", "var", "embedding"})


class Layer(NamedTuple):
  """A maskable leaf.

  Attributes:
    name: path name, e.g. ``"l1/kernel"``.
    shape: shape of one layer's kernel (stack axes removed).
    stack: shape of the leading stack axes (``()`` for a single layer).
  """

  name: str
  shape: tuple[int, ...]
  stack: tuple[int, ...]

  @property
  def num_layers(self) -> int:
    return math.prod(self.stack)

  @property
  def layer_size(self) -> int:
    return math.prod(self.shape)

  @property
  def size(self) -> int:
    return self.num_layers * self.layer_size


def path_name(path) -> str:
  """``/``-joined name of a pytree path (NNX's trailing ``.value`` dropped)."""
  parts = []
  for entry in path:
    if isinstance(entry, jax.tree_util.DictKey):
      parts.append(str(entry.key))
    elif isinstance(entry, jax.tree_util.SequenceKey):
      parts.append(str(entry.idx))
    elif isinstance(entry, jax.tree_util.GetAttrKey):
      parts.append(entry.name)
    elif isinstance(entry, jax.tree_util.FlattenedIndexKey):
      parts.append(str(entry.key))
    else:
      parts.append(str(entry))
  if len(parts) > 1 and parts[-1] == "value":
    parts.pop()
  return "/".join(parts)


def default_filter(name: str, leaf) -> bool:
  """Dense and conv kernels: ``ndim >= 2``, not a bias or norm parameter."""
  return jnp.ndim(leaf) >= 2 and name.rsplit("/", 1)[-1] not in NEVER_MASKED


def _stack_axes(stacked: Stacked, name: str, leaf) -> int:
  if stacked is None:
    return 0
  n = stacked(name, leaf) if callable(stacked) else stacked.get(name, 0)
  n = int(n)
  if not 0 <= n <= jnp.ndim(leaf) - 2:
    raise ValueError(
        f"stacked[{name!r}] must be in [0, {jnp.ndim(leaf) - 2}] for shape "
        f"{jnp.shape(leaf)}, got {n}"
    )
  return n


def named_leaves(tree) -> list[tuple[str, jax.Array]]:
  """``(name, leaf)`` for every leaf, in flattening order."""
  return [(path_name(p), leaf) for p, leaf in jax.tree_util.tree_leaves_with_path(tree)]


def layers(params, filter: Filter | None = None, stacked: Stacked = None) -> list[Layer]:
  """The maskable layers of ``params``, in flattening order.

  Args:
    params: params tree (dict or ``nnx.State``).
    filter: ``(name, leaf) -> bool``; default :func:`default_filter`.
    stacked: stack axes per leaf (see module docstring).

  Returns:
    A list of :class:`Layer`.
  """
  filter = default_filter if filter is None else filter
  out = []
  for name, leaf in named_leaves(params):
    if filter(name, leaf):
      n = _stack_axes(stacked, name, leaf)
      shape = tuple(int(s) for s in jnp.shape(leaf))
      out.append(Layer(name, shape[n:], shape[:n]))
  if len({layer.name for layer in out}) != len(out):
    raise ValueError("params has several maskable leaves with the same path name")
  return out


def map_layers(fn, params, filter: Filter | None = None, stacked: Stacked = None,
               other=lambda leaf: jnp.bool_(True)):
  """Builds a tree like ``params``: ``fn(layer, leaf)`` on maskable leaves,
  ``other(leaf)`` elsewhere."""
  by_name = {layer.name: layer for layer in layers(params, filter, stacked)}

  def visit(path, leaf):
    layer = by_name.get(path_name(path))
    return other(leaf) if layer is None else fn(layer, leaf)

  return jax.tree_util.tree_map_with_path(visit, params)


def apply_masks(params, masks):
  """Zeroes every masked-out entry: ``where(mask, param, 0)`` leaf by leaf."""
  return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, masks)


def full_masks(params, filter: Filter | None = None, stacked: Stacked = None):
  """All-``True`` masks (a dense network in the mask-tree format)."""
  return map_layers(lambda layer, leaf: jnp.ones(jnp.shape(leaf), jnp.bool_), params,
                    filter, stacked)


def check_densities(layer_list: list[Layer], densities: Mapping[str, object]) -> dict:
  """Validates a ``{name: density}`` mapping against the layers.

  Every layer must be named; a density is a float in [0, 1] (0 only where a
  mask maker allows an empty layer) or, for a stack, an array of the stack's
  shape. Returns ``{name: float64 array of the stack shape}``.
  """
  names = {layer.name for layer in layer_list}
  unknown = sorted(set(densities) - names)
  if unknown:
    raise ValueError(f"densities name unknown layers {unknown}; maskable layers: {sorted(names)}")
  missing = sorted(names - set(densities))
  if missing:
    raise ValueError(f"densities has no entry for layers {missing}")
  out = {}
  for layer in layer_list:
    value = densities[layer.name]
    if _checks.is_tracer(value):
      raise ValueError(f"densities[{layer.name!r}] must be concrete, not traced")
    d = np.asarray(value, np.float64)
    if d.shape not in ((), layer.stack):
      raise ValueError(
          f"densities[{layer.name!r}] must be a float or an array of the stack shape "
          f"{layer.stack}, got shape {d.shape}"
      )
    if not np.all(np.isfinite(d)) or np.any(d < 0) or np.any(d > 1):
      raise ValueError(f"densities[{layer.name!r}] must be in [0, 1], got {value!r}")
    out[layer.name] = np.broadcast_to(d, layer.stack).copy()
  return out


def _top_count_mask(scores, count):
  """Bool mask of the ``count`` largest ``scores`` (ties: earlier position)."""
  return keep_top(scores.reshape(-1), count).reshape(scores.shape)


def _masks_by_score(score_fn, params, densities, filter, stacked):
  layer_list = layers(params, filter, stacked)
  dens = check_densities(layer_list, densities)
  index = {layer.name: i for i, layer in enumerate(layer_list)}

  def make(layer, leaf):
    counts = jnp.asarray(count_for_density(dens[layer.name], layer.layer_size), jnp.int32)
    scores = score_fn(index[layer.name], leaf)
    flat_scores = scores.reshape((layer.num_layers,) + layer.shape)
    flat_counts = counts.reshape(layer.num_layers)
    masks = jax.vmap(_top_count_mask)(flat_scores, flat_counts)
    return masks.reshape(jnp.shape(leaf))

  return map_layers(make, params, filter, stacked)


def random_masks(key, params, densities, filter: Filter | None = None, stacked: Stacked = None):
  """Uniformly random masks with exactly ``round(d * size)`` entries per layer.

  Args:
    key: a ``jax.random`` key; layer ``i`` uses ``fold_in(key, i)``.
    params: params tree.
    densities: ``{name: density}`` for every maskable layer (see
      :mod:`eoi_jax.allocation`).
    filter, stacked: as in :func:`layers`.

  Returns:
    A mask tree.
  """
  return _masks_by_score(
      lambda i, leaf: jax.random.uniform(jax.random.fold_in(key, i), jnp.shape(leaf)),
      params, densities, filter, stacked,
  )


def magnitude_masks(params, densities, filter: Filter | None = None, stacked: Stacked = None):
  """Keeps the ``round(d * size)`` largest-magnitude entries of each layer."""
  return _masks_by_score(
      lambda i, leaf: jnp.abs(leaf).astype(jnp.float32), params, densities, filter, stacked
  )


def mask_densities(params, masks, filter: Filter | None = None, stacked: Stacked = None) -> dict:
  """Realised per-layer densities of a mask tree: ``{name: float or array}``.

  For a stack the value is an array over its layers, so the result can be
  passed back as ``densities`` (e.g. to regenerate a pruning method's
  densities with EOI).
  """
  layer_list = layers(params, filter, stacked)
  mask_by_name = dict(named_leaves(masks))
  out = {}
  for layer in layer_list:
    mask = np.asarray(mask_by_name[layer.name]).reshape(layer.stack + (layer.layer_size,))
    d = mask.sum(axis=-1) / layer.layer_size
    out[layer.name] = float(d) if layer.stack == () else d
  return out
