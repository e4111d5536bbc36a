"""Block structure over a whole network: which layers take ``b x b`` blocks,
and uniformly random block masks.

A network's layers rarely all have sizes that one block size divides (the
784 inputs of MNIST at ``b = 32``, a 10-class output layer at any ``b > 2``).
``block=b`` therefore applies to every layer whose matrices' ``in`` and
``out`` are multiples of ``b`` (:func:`layer_blocks`), and the others keep
element-level masks: scalar EOI, or element-level random masks. A ``block``
that fits no layer is an error.

Example:
  >>> layer_blocks(layout, 32)   # an MLP 784-1024x4-10
  {'input_layer/kernel': None, 'hidden_layers/kernel': 32, 'output_layer/kernel': None}
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from eoi_jax import block_givens, kinds, masking
from eoi_jax.counts import count_for_density
from eoi_jax.layers import Layer, Layout
from eoi_jax.topk import keep_top


def layer_block(layer: Layer, block: int | None) -> int | None:
  """``block`` if it divides both sizes of ``layer``'s matrices, else ``None``."""
  if block is None:
    return None
  matrix = layer.resolved_kind().matrix_shape(layer.shape)
  return block if block_givens.fits(matrix, block) else None


def layer_blocks(layout: Layout, block: int | None) -> dict:
  """``{name: b or None}``: the block size each layer takes.

  Raises:
    ValueError: ``block`` divides the matrices of no layer (the message lists
      each layer's ``(in, out)``).
  """
  out = {layer.name: layer_block(layer, block) for layer in layout.layers}
  if block is not None and not any(out.values()):
    sizes = {layer.name: layer.resolved_kind().matrix_shape(layer.shape)
             for layer in layout.layers}
    raise ValueError(f"block={block} divides the (in, out) sizes of no layer: {sizes}")
  return out


def random_block_masks(key, layout: Layout, params, densities: dict, block: int | None):
  """Uniformly random masks of whole ``b x b`` blocks at per-layer densities.

  Each layer (each layer of a stack) keeps ``round(d * blocks)`` of its
  blocks, uniformly at random among all its matrices' blocks and taps
  together (every tap's mask is then a block mask). Layers that ``block``
  does not fit get element masks: exactly the masks of the ``uniform``
  method for the same key (:func:`eoi_jax.masking.random_scores`).

  Args:
    key: a ``jax.random`` key; layer ``i`` draws from ``fold_in(key, i)``.
    layout: the layers.
    params: the params tree (the structure of the result).
    densities: ``{name: float64 array of the stack shape}``.
    block: the block size ``b`` (``None``: element masks everywhere).

  Returns:
    A mask tree.
  """
  blocks = layer_blocks(layout, block)
  masks = masking.masks_from_scores(layout, params, masking.random_scores(key, layout),
                                    densities)
  replaced = {}
  for i, layer in enumerate(layout.layers):
    b = blocks[layer.name]
    if b is None:
      continue
    kind, shape = layer.leaf_kind(), layer.stack + layer.shape
    taps = tuple(shape[a] for a in kind.spatial_axes)
    fan_in, fan_out = kind.matrix_shape(shape)
    grid = (kind.num_matrices(shape),) + taps + (fan_in // b, fan_out // b)
    per_layer = math.prod(grid) // layer.num_layers
    counts = np.asarray(count_for_density(densities[layer.name], per_layer),
                        np.int32).reshape(layer.num_layers)
    replaced[layer.name] = _block_mask(jax.random.fold_in(key, i), counts, grid=grid,
                                       shape=shape, kind=kind, block=b)
  return layout.replace(masks, replaced)


@functools.partial(jax.jit, static_argnames=("grid", "shape", "kind", "block"))
def _block_mask(key, counts, *, grid, shape, kind: kinds.KernelKind, block: int):
  """A leaf's mask: ``counts[l]`` random blocks kept in each layer ``l``."""
  scores = jax.random.uniform(key, (len(counts), math.prod(grid) // len(counts)))
  kept = jax.vmap(keep_top)(scores, counts).reshape(grid)
  matrices = jnp.repeat(jnp.repeat(kept, block, axis=-2), block, axis=-1)
  return kinds.from_matrices(jnp, matrices, shape, kind)
