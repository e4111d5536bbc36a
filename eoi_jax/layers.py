"""The layer view of a params tree: which leaves are maskable layers, found once.

A *params tree* is any pytree of arrays: a plain (nested) dict from ``linen``,
or an ``nnx.State`` from ``nnx.state(model, nnx.Param)``. Layers are named by
their path with ``/`` separators, e.g. ``"l1/kernel"`` or
``"blocks/0/conv/kernel"`` (NNX's trailing ``.value`` is dropped). By default a
leaf is maskable when it has at least 2 dimensions and is not a bias or a norm
parameter; pass ``filter=lambda name, leaf: ...`` to choose otherwise.

A leaf may hold a *stack* of same-shape layers along leading axes (a scanned
block of a deep network, e.g. ``(998, 128, 128)``). Say so with ``stacked``,
a mapping ``{name: number_of_stack_axes}`` or a callable ``(name, leaf) ->
int``; each layer of the stack then gets its own mask (and its own EOI
matrix) at the stack's density.

:func:`layout` reads ``filter`` and ``stacked`` once and returns a
:class:`Layout`; every whole-network function of the package (allocators,
mask makers, EOI, SAO, pruning, AI, summaries) works from a ``Layout``. Their
public forms take ``filter``/``stacked`` or a prebuilt ``layout=``.

Example:
  >>> lay = layout(params, stacked={"blocks/kernel": 1})
  >>> [(l.name, l.shape, l.stack) for l in lay.layers]
  >>> dens = allocation.erk(params, 0.1, layout=lay)
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from eoi_jax import _validation

Filter = Callable[[str, jax.Array], bool]
Stacked = Union[Mapping[str, int], Callable[[str, jax.Array], int], None]

NEVER_MASKED = frozenset({"bias", "scale", "mean", "var", "embedding"})


class Layer(NamedTuple):
  """A maskable leaf.

  Attributes:
    name: path name, e.g. ``"l1/kernel"``.
    shape: shape of one layer's kernel (stack axes removed).
    stack: shape of the leading stack axes (``()`` for a single layer).
    dtype: the leaf's dtype.
  """

  name: str
  shape: tuple[int, ...]
  stack: tuple[int, ...]
  dtype: np.dtype = np.dtype(np.float32)

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


def named_leaves(tree) -> list[tuple[str, jax.Array]]:
  """``(name, leaf)`` for every leaf, in flattening order."""
  return [(path_name(p), leaf) for p, leaf in jax.tree_util.tree_leaves_with_path(tree)]


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


class Layout:
  """The maskable layers of a params tree, in flattening order.

  Build it with :func:`layout`. It holds structure only (names, shapes, stack
  axes, dtypes), never values, so one layout serves the params, the masks and
  every tree of the same structure.

  Attributes:
    layers: tuple of :class:`Layer`.
    by_name: ``{name: Layer}``.
  """

  def __init__(self, layer_list):
    self.layers = tuple(layer_list)
    self.by_name = {layer.name: layer for layer in self.layers}
    if len(self.by_name) != len(self.layers):
      raise ValueError("params has several maskable leaves with the same path name")

  def __repr__(self):
    rows = ", ".join(f"{l.name}: {l.stack + l.shape}" for l in self.layers)
    return f"Layout({rows})"

  def __iter__(self):
    return iter(self.layers)

  def __len__(self):
    return len(self.layers)

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(layer.name for layer in self.layers)

  @property
  def total_size(self) -> int:
    """Entries of all maskable layers together."""
    return sum(layer.size for layer in self.layers)

  def leaves(self, tree) -> dict:
    """``{name: leaf}`` of ``tree``'s maskable leaves (matched by path name)."""
    found = {name: leaf for name, leaf in named_leaves(tree) if name in self.by_name}
    missing = [name for name in self.names if name not in found]
    if missing:
      raise ValueError(f"the tree has no leaves for the maskable layers {missing}")
    return found

  def map(self, fn, tree, other=lambda leaf: jnp.bool_(True)):
    """A tree like ``tree``: ``fn(layer, leaf)`` on maskable leaves, ``other(leaf)`` elsewhere."""

    def visit(path, leaf):
      layer = self.by_name.get(path_name(path))
      return other(leaf) if layer is None else fn(layer, leaf)

    return jax.tree_util.tree_map_with_path(visit, tree)

  def replace(self, tree, values: Mapping[str, object]):
    """``tree`` with the maskable leaves named in ``values`` replaced."""
    return self.map(lambda layer, leaf: values.get(layer.name, leaf), tree,
                    other=lambda leaf: leaf)

  def flatten(self, tree) -> jax.Array:
    """The maskable leaves of ``tree`` as one vector, layer after layer."""
    leaves = self.leaves(tree)
    return jnp.concatenate([jnp.reshape(leaves[name], -1) for name in self.names])

  def unflatten(self, vector, tree):
    """Inverse of :meth:`flatten`: a tree like ``tree`` whose maskable leaves
    are the pieces of ``vector`` (``True`` elsewhere, a mask tree for bool)."""
    pieces, start = {}, 0
    for layer in self.layers:
      pieces[layer.name] = vector[start:start + layer.size].reshape(layer.stack + layer.shape)
      start += layer.size
    return self.map(lambda layer, leaf: pieces[layer.name], tree)

  def as_arrays(self, densities: Mapping[str, object]) -> dict:
    """``{name: float64 array of the stack shape}`` of trusted per-layer densities."""
    return {layer.name: np.broadcast_to(np.asarray(densities[layer.name], np.float64),
                                        layer.stack).copy() for layer in self.layers}

  def check_densities(self, densities: Mapping[str, object], *, positive: bool = False,
                      name: str = "densities") -> dict:
    """Validates a ``{name: density}`` mapping against the layers.

    Every layer must be named; a density is a number in [0, 1] (in (0, 1]
    with ``positive``) or, for a stack, an array of the stack's shape.

    Returns:
      ``{name: float64 array of the stack shape}``.
    """
    if not isinstance(densities, Mapping):
      raise TypeError(f"{name} must be a mapping {{layer name: density}}, got "
                      f"{type(densities).__name__}")
    unknown = sorted(set(densities) - set(self.by_name))
    if unknown:
      raise ValueError(f"{name} name unknown layers {unknown}; maskable layers: "
                       f"{sorted(self.by_name)}")
    missing = sorted(set(self.by_name) - set(densities))
    if missing:
      raise ValueError(f"{name} has no entry for layers {missing}")
    low = "(0, 1]" if positive else "[0, 1]"
    out = {}
    for layer in self.layers:
      value = densities[layer.name]
      if _validation.is_tracer(value):
        raise ValueError(f"{name}[{layer.name!r}] must be concrete, not traced")
      if isinstance(value, (bool, str, bytes)) or value is None:
        raise TypeError(f"{name}[{layer.name!r}] must be a number in {low}, got {value!r}")
      try:
        d = np.asarray(value, np.float64)
      except (TypeError, ValueError) as e:
        raise TypeError(f"{name}[{layer.name!r}] must be a number in {low}, "
                        f"got {value!r}") from e
      if d.shape not in ((), layer.stack):
        raise ValueError(
            f"{name}[{layer.name!r}] must be a float or an array of the stack shape "
            f"{layer.stack}, got shape {d.shape}"
        )
      bad = np.any(d <= 0) if positive else np.any(d < 0)
      if not np.all(np.isfinite(d)) or bad or np.any(d > 1):
        raise ValueError(f"{name}[{layer.name!r}] must be in {low}, got {value!r}")
      out[layer.name] = d
    return self.as_arrays(out)


def layout(params, filter: Filter | None = None, stacked: Stacked = None) -> Layout:
  """The maskable layers of ``params``, in flattening order.

  Args:
    params: params tree (dict or ``nnx.State``).
    filter: ``(name, leaf) -> bool``; default :func:`default_filter`.
    stacked: stack axes per leaf (see the module docstring).

  Returns:
    A :class:`Layout`.
  """
  filter = default_filter if filter is None else filter
  out = []
  for name, leaf in named_leaves(params):
    if filter(name, leaf):
      n = _stack_axes(stacked, name, leaf)
      shape = tuple(int(s) for s in jnp.shape(leaf))
      out.append(Layer(name, shape[n:], shape[:n], np.dtype(jnp.result_type(leaf))))
  return Layout(out)


def resolve(params, filter: Filter | None, stacked: Stacked, layout_: Layout | None) -> Layout:
  """The layout a public function works from: ``layout_`` when given, else
  :func:`layout` of ``params`` with ``filter`` and ``stacked``."""
  if layout_ is None:
    return layout(params, filter, stacked)
  if filter is not None or stacked is not None:
    raise ValueError("give either layout= or filter=/stacked=, not both")
  if not isinstance(layout_, Layout):
    raise TypeError(f"layout must be an eoi_jax.layers.Layout, got {type(layout_).__name__}")
  return layout_
