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
from eoi_jax import kinds as _kinds

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
    kind: how one layer's kernel maps inputs to outputs
      (:class:`eoi_jax.kinds.KernelKind`), or ``None`` for the default shape
      rule of :func:`eoi_jax.kinds.resolve`, applied when a method needs it.
  """

  name: str
  shape: tuple[int, ...]
  stack: tuple[int, ...]
  dtype: np.dtype = np.dtype(np.float32)
  kind: _kinds.KernelKind | None = None

  def resolved_kind(self) -> _kinds.KernelKind:
    """The layer's kind; the default rule's errors name the layer."""
    return self.kind if self.kind is not None else _kinds.resolve(self.shape, name=self.name)

  def leaf_kind(self) -> _kinds.KernelKind:
    """The kind of the whole leaf: the stack axes lead, as independent matrices."""
    kind, n = self.resolved_kind(), len(self.stack)
    shift = lambda axes: tuple(a + n for a in axes)
    return _kinds.KernelKind(shift(kind.in_axes), shift(kind.out_axes),
                            tuple(range(n)) + shift(kind.batch_axes), shift(kind.spatial_axes),
                            kind.groups)

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


def placed_like(leaf, value):
  """``value`` with ``leaf``'s sharding when both are concrete arrays of one
  shape and ``leaf`` is spread over several devices; ``value`` otherwise."""
  if (isinstance(leaf, jax.Array) and isinstance(value, jax.Array)
      and not isinstance(leaf, jax.core.Tracer) and not isinstance(value, jax.core.Tracer)
      and value.shape == leaf.shape and len(leaf.sharding.device_set) > 1
      and value.sharding != leaf.sharding):
    return jax.device_put(value, leaf.sharding)
  return value


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

  # Equal layouts (same layers) are one static argument of a jitted function.
  def __eq__(self, other):
    return isinstance(other, Layout) and self.layers == other.layers

  def __hash__(self):
    return hash(self.layers)

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

  def map(self, fn, tree, other=lambda leaf: None):
    """A tree like ``tree``: ``fn(layer, leaf)`` on maskable leaves, ``other(leaf)``
    elsewhere (default ``None``: a mask tree's "not masked").

    A concrete leaf's sharding carries over to ``fn``'s concrete result of its
    shape, so masks and new kernels of a sharded model are sharded alike.
    """

    def visit(path, leaf):
      layer = self.by_name.get(path_name(path))
      return other(leaf) if layer is None else placed_like(leaf, fn(layer, leaf))

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
    are the pieces of ``vector`` (``None`` elsewhere: a mask tree for bool)."""
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


def layout(params, filter: Filter | None = None, stacked: Stacked = None,
           kinds: Mapping[str, object] | None = None) -> Layout:
  """The maskable layers of ``params``, in flattening order.

  Args:
    params: params tree (dict or ``nnx.State``).
    filter: ``(name, leaf) -> bool``; default :func:`default_filter`.
    stacked: stack axes per leaf (see the module docstring).
    kinds: ``{name: KernelKind or dict of in_axis, out_axis, batch_axis,
      conv, feature_group_count}`` for layers the default shape rule of
      :func:`eoi_jax.kinds.resolve` cannot read (one layer's shape, stack axes
      removed). :func:`model_layout` infers them for NNX models.

  Returns:
    A :class:`Layout`.
  """
  filter = default_filter if filter is None else filter
  given = dict(kinds or {})
  out = []
  for name, leaf in named_leaves(params):
    if filter(name, leaf):
      n = _stack_axes(stacked, name, leaf)
      shape = tuple(int(s) for s in jnp.shape(leaf))
      kind = _kinds.from_spec(shape[n:], given.pop(name), name) if name in given else None
      out.append(Layer(name, shape[n:], shape[:n], np.dtype(jnp.result_type(leaf)), kind))
  if given:
    raise ValueError(f"kinds name no maskable layers: {sorted(given)}")
  return Layout(out)


def _module_kind(module, shape):
  """``(kind, expected kernel shape)`` of a Flax NNX module's ``kernel``, or
  ``None`` for module types whose kernel layout is not known here."""
  from flax import nnx

  if isinstance(module, nnx.Linear):
    expected = (module.in_features, module.out_features)
    return _kinds.KernelKind((0,), (1,)), expected
  if isinstance(module, nnx.LinearGeneral):
    nb, ni = len(module.batch_axis), len(module.in_features)
    expected = tuple(module.batch_axis.values()) + tuple(module.in_features) + tuple(
        module.out_features)
    return _kinds.KernelKind(tuple(range(nb, nb + ni)), tuple(range(nb + ni, len(expected))),
                            tuple(range(nb))), expected
  if isinstance(module, nnx.Einsum):
    return _einsum_kind(module.einsum_str), tuple(module.kernel_shape)
  if isinstance(module, nnx.ConvTranspose):
    expected, ndim = tuple(module.kernel_shape), len(module.kernel_shape)
    ins, outs = ((ndim - 1,), (ndim - 2,)) if module.transpose_kernel else ((ndim - 2,), (ndim - 1,))
    return _kinds.KernelKind(ins, outs, (), tuple(range(ndim - 2))), expected
  if isinstance(module, nnx.Conv):
    expected, ndim = tuple(module.kernel_shape), len(module.kernel_shape)
    window = expected[:-2]
    strides = module.strides
    strides = (strides,) * len(window) if isinstance(strides, int) else tuple(strides or ())
    if strides == window and module.feature_group_count == 1 and math.prod(window) > 1:
      # Non-overlapping patches (a ViT's patch embedding): one matrix from
      # each flattened patch to the output, an isometry patch by patch.
      return _kinds.KernelKind(tuple(range(ndim - 1)), (ndim - 1,)), expected
    return _kinds.KernelKind((ndim - 2,), (ndim - 1,), (), tuple(range(ndim - 2)),
                            int(module.feature_group_count)), expected
  return None


def _einsum_kind(einsum_str: str) -> _kinds.KernelKind:
  """The kernel's kind in ``"input,kernel->output"``: axes shared with the
  input only are inputs, with the output only outputs, with both batch."""
  lhs, out = einsum_str.replace(" ", "").split("->")
  inp, ker = lhs.split(",")
  letters = [c for c in ker if c.isalpha()]
  ins = tuple(i for i, c in enumerate(letters) if c in inp and c not in out)
  outs = tuple(i for i, c in enumerate(letters) if c in out and c not in inp)
  batch = tuple(i for i, c in enumerate(letters) if c in inp and c in out)
  if len(ins) + len(outs) + len(batch) != len(letters) or not ins or not outs:
    raise ValueError(f"cannot read the kernel of einsum {einsum_str!r} as a matrix: an axis is "
                     "summed over alone, or inputs or outputs are missing; pass its kind")
  return _kinds.KernelKind(ins, outs, batch)


def model_layout(model, filter: Filter | None = None, stacked: Stacked = None,
                 kinds: Mapping[str, object] | None = None) -> Layout:
  """The layout of an NNX model's ``nnx.Param`` state, kinds and stacks read
  from the model.

  Each ``Linear``, ``LinearGeneral`` (so every ``MultiHeadAttention``
  projection), ``Einsum``, ``Conv`` (with its ``feature_group_count``) and
  ``ConvTranspose`` gets its kernel's kind (a conv whose strides equal its
  window, a patch embedding, is one matrix from each patch); leading axes beyond the module's
  own kernel shape (``nnx.vmap`` / ``nnx.scan`` stacks) are stack axes. Other
  modules' leaves named ``kernel`` follow ``stacked`` (default:
  ``model.sparsity_spec()``'s, when the model has one) and the default shape
  rule; embedding tables and other params are not masked unless ``filter``
  says so. ``kinds`` and ``stacked`` override what is inferred.

  Args:
    model: an ``nnx.Module``.
    filter, stacked, kinds: as in :func:`layout`.

  Returns:
    A :class:`Layout`.
  """
  from flax import nnx

  if stacked is None and hasattr(model, "sparsity_spec"):
    stacked = model.sparsity_spec().stacked
  inferred_kinds, inferred_stacks = {}, {}
  params = nnx.state(model, nnx.Param)
  leaves = dict(named_leaves(params))
  for path, node in nnx.iter_graph(model):
    if not isinstance(node, nnx.Module):
      continue
    name = "/".join(str(p) for p in path + ("kernel",))
    if name not in leaves:
      continue
    found = _module_kind(node, leaves[name].shape)
    if found is None:
      continue
    kind, expected = found
    extra = jnp.ndim(leaves[name]) - len(expected)
    if extra < 0 or tuple(jnp.shape(leaves[name])[extra:]) != tuple(expected):
      raise ValueError(f"{name}: kernel of shape {jnp.shape(leaves[name])} does not end in its "
                       f"module's kernel shape {tuple(expected)}")
    inferred_kinds[name] = kind
    if extra:
      inferred_stacks[name] = extra
  if callable(stacked):
    stacks = lambda name, leaf: stacked(name, leaf) or inferred_stacks.get(name, 0)
  else:
    stacks = {**inferred_stacks, **dict(stacked or {})}
  if filter is None:  # kernels: no embedding tables or position embeddings
    filter = lambda name, leaf: name in inferred_kinds or (
        name.rsplit("/", 1)[-1] == "kernel" and default_filter(name, leaf))
  return layout(params, filter, stacks, {**inferred_kinds, **dict(kinds or {})})


def resolve(params, filter: Filter | None, stacked: Stacked, layout_: Layout | None,
            kinds: Mapping[str, object] | None = None) -> Layout:
  """The layout a public function works from: ``layout_`` when given, else
  :func:`layout` of ``params`` with ``filter``, ``stacked`` and ``kinds``."""
  if layout_ is None:
    return layout(params, filter, stacked, kinds)
  if filter is not None or stacked is not None or kinds is not None:
    raise ValueError("give either layout= or filter=/stacked=/kinds=, not both")
  if not isinstance(layout_, Layout):
    raise TypeError(f"layout must be an eoi_jax.layers.Layout, got {type(layout_).__name__}")
  return layout_
