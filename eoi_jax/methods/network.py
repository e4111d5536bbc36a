"""What every whole-network initialisation shares: its result type and the
regeneration of every maskable kernel, same-shape kernels in one call.

Example:
  >>> lay = layers.layout(params)
  >>> make = lambda keys, shape, dtype, members: (
  ...     jax.vmap(lambda k: my_init(k, shape, dtype))(keys), None)
  >>> new_params, _ = regenerate_layers(jax.random.key(0), params, lay, per_matrix(make))
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from eoi_jax import _validation, givens, kinds, summary
from eoi_jax.layers import Layout, named_leaves, path_name, placed_like


class SparseInit(NamedTuple):
  """Output of every whole-network initialisation (:func:`eoi_jax.eoi_params`,
  :func:`eoi_jax.methods.initialize`, ...).

  Attributes:
    params: the params tree with the new kernels (and redrawn biases); masked
      entries are zero.
    masks: the mask tree (see :mod:`eoi_jax.masking`).
    summary: requested vs realised density per layer
      (:class:`eoi_jax.summary.SparsitySummary`). EOI's sparsest pattern has
      density ``1 / max(in, out)``, which can exceed a very low request.
  """

  params: object
  masks: object
  summary: summary.SparsitySummary


Generate = Callable[[dict], dict]


def _bias_name(kernel_name: str) -> str:
  head, _, _ = kernel_name.rpartition("/")
  return f"{head}/bias" if head else "bias"


def _network_keys(key, num_kernels: int):
  """``(kernel keys, bias key)``: ``kernel_key, bias_key = split(key)``, then
  kernel ``i`` in flattening order gets ``fold_in(kernel_key, i)``
  (``= split(kernel_key, n)[i]``); on the host for a concrete key."""
  kernel_key, bias_key = givens.split_into(key, 2)
  return givens.split(kernel_key, num_kernels), bias_key


class LayerKeys(NamedTuple):
  """The keys of one layer's kernels: entries ``index`` of ``keys`` (one array
  for the whole network, so that no per-layer slice is compiled)."""

  keys: jax.Array
  index: np.ndarray

  def get(self) -> jax.Array:
    """The layer's ``(num_layers,)`` keys."""
    return self.keys[self.index]


def _as_leaf(matrices, layer):
  """A layer's matrices ``(M, *taps, in, out)`` in its leaf's layout."""
  leaf, kind = layer.stack + layer.shape, layer.resolved_kind()
  if kinds.canonical(kind, layer.shape):
    return matrices if matrices.shape == leaf else matrices.reshape(leaf)
  return kinds.from_matrices(jnp, matrices, leaf, layer.leaf_kind())


def per_matrix(make: Callable) -> Generate:
  """A :data:`Generate` from a maker of matrices.

  Every layer is taken apart into its matrices (:func:`eoi_jax.kinds.to_matrices`:
  each a ``(*taps, in, out)`` kernel; a layer of several, such as one per
  head or feature group, gives each ``split(layer key, n)``), matrices of one
  (shape, dtype) go to one call ``make(keys, shape, dtype, members)`` (members:
  ``[(layer, number of matrices)]`` in order) returning ``(kernels, masks or
  None)`` of ``(B, *shape)``, and the results are laid back out in the
  layers' shapes.
  """

  def generate(keys: dict, layout: Layout) -> dict:
    groups = defaultdict(list)  # (matrix shape, dtype) -> [(layer, keys)]
    for layer in layout.layers:
      kind = layer.resolved_kind()
      per_layer = kind.num_matrices(layer.shape)
      layer_keys = keys[layer.name]
      matrix_keys = (layer_keys.get() if per_layer == 1 else givens.split_each(
          layer_keys.keys, np.asarray(layer_keys.index, np.int32), per_layer))
      groups[(kind.canonical_shape(layer.shape), layer.dtype)].append((layer, matrix_keys))
    out = {}
    for (shape, dtype), members in groups.items():
      kernels, masks = make(jnp.concatenate([k for _, k in members]), shape, dtype,
                            [(layer, len(k)) for layer, k in members])
      start = 0
      for layer, matrix_keys in members:
        stop = start + len(matrix_keys)
        out[layer.name] = tuple(None if x is None else _as_leaf(x[start:stop], layer)
                                for x in (kernels, masks))
        start = stop
    return out

  return generate


def regenerate_layers(key, params, layout: Layout, generate: Generate, *, bias_std=0.0):
  """Replaces every maskable kernel with generated ones.

  ``generate(keys, layout)`` receives ``{name: LayerKeys}`` (kernel ``i`` in
  flattening order, stacks unrolled, gets ``fold_in(kernel_key, i)`` with
  ``kernel_key, bias_key = split(key)``) and returns ``{name: (kernels, masks)}``, each
  shaped like the leaf, ``masks`` bool or ``None``; :func:`per_matrix`
  makes one from a maker of matrices. Biases beside the kernels (the
  ``bias`` leaf next to each ``kernel``) are drawn from ``N(0, bias_std**2)``.

  Args:
    key: a ``jax.random`` key.
    params: params tree.
    layout: its :class:`eoi_jax.layers.Layout`.
    generate: the kernel maker described above.
    bias_std: ``sigma_b`` (checked by the caller).

  Returns:
    ``(new_params, masks)``: ``masks`` is a mask tree when ``generate``
    returned masks, else ``None``.
  """
  counts = [layer.num_layers for layer in layout.layers]
  keys, bias_key = _network_keys(_validation.check_key(key), sum(counts))
  starts = np.cumsum([0] + counts)
  generated = generate({name: LayerKeys(keys, np.arange(a, a + n))
                        for name, a, n in zip(layout.names, starts, counts)}, layout)
  kernels, masks = {}, {}

  def leaf_shaped(x, layer):  # a stack's leaf shape (no op when it already is)
    return x if x.shape == layer.stack + layer.shape else x.reshape(layer.stack + layer.shape)

  for layer in layout.layers:
    new_kernels, new_masks = generated[layer.name]
    kernels[layer.name] = leaf_shaped(new_kernels, layer)
    if new_masks is not None:
      masks[layer.name] = leaf_shaped(new_masks, layer)

  present = {name for name, _ in named_leaves(params)}
  biases = sorted({_bias_name(name) for name in layout.names} & present)
  bias_index = {name: i for i, name in enumerate(biases)}

  def drawn(name, leaf):
    if name in kernels:
      return kernels[name]
    if not bias_std:  # N(0, 0): zeros, without a draw to compile
      return jax.device_put(np.zeros(jnp.shape(leaf), leaf.dtype))
    noise = jax.random.normal(jax.random.fold_in(bias_key, bias_index[name]), jnp.shape(leaf))
    return (bias_std * noise).astype(leaf.dtype)

  def new_leaf(path, leaf):  # new leaves keep a sharded model's shardings
    name = path_name(path)
    return placed_like(leaf, drawn(name, leaf)) if name in kernels or name in bias_index else leaf

  new_params = jax.tree_util.tree_map_with_path(new_leaf, params)
  mask_tree = layout.map(lambda layer, leaf: masks[layer.name], params) if masks else None
  return new_params, mask_tree
