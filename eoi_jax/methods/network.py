"""What every whole-network initialisation shares: its result type and the
regeneration of every maskable kernel, same-shape kernels in one call.

Example:
  >>> lay = layers.layout(params)
  >>> def generate(keys, shape, dtype, group):
  ...   return jax.vmap(lambda k: my_init(k, shape, dtype))(keys), None
  >>> new_params, _ = regenerate_layers(jax.random.key(0), params, lay, generate)
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from eoi_jax import summary
from eoi_jax.layers import Layout, named_leaves, path_name


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


Generate = Callable[..., tuple]


def _bias_name(kernel_name: str) -> str:
  head, _, _ = kernel_name.rpartition("/")
  return f"{head}/bias" if head else "bias"


def regenerate_layers(key, params, layout: Layout, generate: Generate, *, bias_std=0.0):
  """Replaces every maskable kernel with generated ones, same-shape kernels at once.

  Kernels are grouped by (shape, dtype), stacks unrolled; each group is one
  call ``generate(keys, shape, dtype, group)`` with ``keys`` of shape ``(B,)``
  (kernel ``i`` in flattening order gets ``fold_in(key_kernels, i)``) and the
  group's layers in order. It returns ``(kernels, masks)``, each ``(B,
  *shape)``, ``masks`` bool or ``None``. Biases beside the kernels (the
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
  kernel_key, bias_key = jax.random.split(key)
  first_id = np.cumsum([0] + [layer.num_layers for layer in layout.layers])
  groups = defaultdict(list)  # (shape, dtype) -> [(index, layer)]
  for i, layer in enumerate(layout.layers):
    groups[(layer.shape, layer.dtype)].append((i, layer))

  kernels, masks = {}, {}
  for (shape, dtype), members in groups.items():
    ids = np.concatenate([np.arange(first_id[i], first_id[i + 1]) for i, _ in members])
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
        kernel_key, jnp.asarray(ids, jnp.uint32))
    new_kernels, new_masks = generate(keys, shape, dtype, [layer for _, layer in members])
    start = 0
    for _, layer in members:
      stop = start + layer.num_layers
      kernels[layer.name] = new_kernels[start:stop].reshape(layer.stack + layer.shape)
      if new_masks is not None:
        masks[layer.name] = new_masks[start:stop].reshape(layer.stack + layer.shape)
      start = stop

  present = {name for name, _ in named_leaves(params)}
  biases = sorted({_bias_name(name) for name in layout.names} & present)
  bias_index = {name: i for i, name in enumerate(biases)}

  def new_leaf(path, leaf):
    name = path_name(path)
    if name in kernels:
      return kernels[name]
    if name in bias_index:
      noise = jax.random.normal(jax.random.fold_in(bias_key, bias_index[name]), jnp.shape(leaf))
      return (bias_std * noise).astype(leaf.dtype)
    return leaf

  new_params = jax.tree_util.tree_map_with_path(new_leaf, params)
  mask_tree = layout.map(lambda layer, leaf: masks[layer.name], params) if masks else None
  return new_params, mask_tree
