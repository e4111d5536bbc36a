"""NNX models whose kernels are stored compressed (:mod:`eoi_jax.block_sparse`).

A block-sparse layer keeps the values of its stored ``b x b`` blocks as its
``blocks`` param and the blocks' positions as a static attribute (a
:class:`eoi_jax.block_sparse.BlockLayout`, part of the graph definition, not
of the state). ``nnx.state(model, nnx.Param)``, its gradients, the optimizer
state built on it and its checkpoints then hold the stored blocks only;
every stored value trains, so an optimizer needs no mask for them (``None``
in :func:`eoi_jax.static_sparse`'s mask tree).

* :class:`BlockSparseLinear`: ``x @ W + b`` with ``W`` compressed.
* :class:`BlockSparseStack`: same-shape square layers with an activation,
  scanned (the hidden stack of a deep MLP).
* :class:`BlockSparseMLP`: :class:`eoi_jax.training.models.MLP` with the
  layers whose masks are block masks compressed; :func:`compress_mlp` and
  :func:`decompress_mlp` convert from and to the dense masked form (bit for
  bit).

Example:
  >>> mlp = models.MLP(4096, 4096, depth=3, width=4096, rngs=nnx.Rngs(0))
  >>> masks = ...  # mask tree of nnx.state(mlp, nnx.Param), block masks of b = 64
  >>> model, block_masks = compress_mlp(mlp, masks, 64)
  >>> tx = eoi_jax.static_sparse(optax.sgd(0.1, momentum=0.9), block_masks)
  >>> optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from eoi_jax import block_sparse, layers
from eoi_jax.block_sparse import BlockSparse
from eoi_jax.training import models


def _lecun(key, shape, dtype=jnp.float32):
  return jax.nn.initializers.lecun_normal()(key, shape, dtype)


class _Compressed:
  """What the compressed layers share: ``blocks`` (an ``nnx.Param`` of the
  stored blocks) and ``layout`` (their static :class:`BlockLayout`)."""

  @property
  def kernel(self) -> BlockSparse:
    """The compressed kernel (a stack's: with a leading layer axis)."""
    return BlockSparse(self.blocks[...], self.layout)

  def dense_kernel(self) -> jax.Array:
    """The dense kernel(s), zeros off the stored blocks."""
    return block_sparse.decompress(self.kernel)

  def block_mask(self) -> np.ndarray:
    return block_sparse.block_mask(self.layout)


class BlockSparseLinear(_Compressed, nnx.Module):
  """``x @ W + bias`` with ``W (in, out)`` stored as its kept ``b x b`` blocks.

  Args:
    in_features, out_features: the kernel's shape; multiples of ``block``.
    block: the block size ``b``.
    block_mask: bool ``(in, out)``, constant on blocks (concrete).
    kernel: the dense kernel whose kept blocks are stored; default: a
      LeCun-normal draw from ``rngs`` (as ``nnx.Linear``'s), then compressed.
    bias: ``(out,)`` initial bias (default zeros); ignored without
      ``use_bias``.
    use_bias: whether the layer has a bias.
    rngs: for the default kernel.

  Example:
    >>> layer = BlockSparseLinear.from_dense(kernel, mask, 64, bias)
    >>> layer.blocks.shape   # (nnzb, 64, 64)
  """

  def __init__(self, in_features: int, out_features: int, block: int, *, block_mask,
               kernel=None, bias=None, use_bias: bool = True, rngs: nnx.Rngs | None = None):
    if kernel is None:
      if rngs is None:
        raise ValueError("BlockSparseLinear needs rngs when no kernel is given")
      kernel = _lecun(rngs.params(), (in_features, out_features))
    if tuple(jnp.shape(kernel)) != (in_features, out_features):
      raise ValueError(f"kernel must have shape {(in_features, out_features)}, got "
                       f"{tuple(jnp.shape(kernel))}")
    compressed = block_sparse.compress(kernel, block_mask, block)
    self.blocks = nnx.Param(compressed.blocks)
    self.layout = compressed.layout
    initial_bias = (jnp.zeros((out_features,), compressed.blocks.dtype) if bias is None
                    else jnp.asarray(bias))
    self.bias = nnx.Param(initial_bias) if use_bias else nnx.data(None)

  @classmethod
  def from_dense(cls, kernel, block_mask, block: int, bias=None) -> "BlockSparseLinear":
    """The layer holding the kept blocks of ``kernel`` (and ``bias``, if
    given; without one the layer has none)."""
    fan_in, fan_out = jnp.shape(kernel)
    return cls(fan_in, fan_out, block, block_mask=block_mask, kernel=kernel, bias=bias,
               use_bias=bias is not None)

  def __call__(self, x):
    y = block_sparse.block_matmul(x, self.kernel)
    return y if self.bias is None else y + self.bias[...]


class BlockSparseStack(_Compressed, nnx.Module):
  """``num_layers`` square ``width x width`` block-sparse layers with an
  activation, scanned (:func:`eoi_jax.block_sparse.block_stack_apply`): the
  compressed counterpart of :class:`eoi_jax.training.models.DenseStack`.

  Layers that keep fewer blocks than the most are padded with unused slots
  (zero, read by nothing: their gradient is zero, they stay zero, and they
  never reach an output), so every layer stores the same number of blocks.

  Args:
    num_layers, width, block: the stack's shape and block size.
    act: an elementwise activation.
    block_masks: bool ``(num_layers, width, width)``, constant on blocks.
    kernels: dense ``(num_layers, width, width)`` kernels to compress;
      default: LeCun-normal draws from ``rngs`` (as ``DenseStack``'s).
    biases: ``(num_layers, width)``; default zeros.
    rngs: for the default kernels.
  """

  def __init__(self, num_layers: int, width: int, block: int, act: Callable, *, block_masks,
               kernels=None, biases=None, rngs: nnx.Rngs | None = None):
    if kernels is None:
      if rngs is None:
        raise ValueError("BlockSparseStack needs rngs when no kernels are given")
      keys = jax.random.split(rngs.params(), num_layers)
      kernels = jax.vmap(lambda k: _lecun(k, (width, width)))(keys)
    if tuple(jnp.shape(kernels)) != (num_layers, width, width):
      raise ValueError(f"kernels must have shape {(num_layers, width, width)}, got "
                       f"{tuple(jnp.shape(kernels))}")
    compressed = block_sparse.compress(kernels, block_masks, block)
    self.blocks = nnx.Param(compressed.blocks)
    self.layout = compressed.layout
    self.bias = nnx.Param(jnp.zeros((num_layers, width), compressed.blocks.dtype)
                          if biases is None else jnp.asarray(biases))
    self.act = act

  def __call__(self, x):
    return block_sparse.block_stack_apply(self.act, self.kernel, self.bias[...], x)


class BlockSparseMLP(nnx.Module):
  """:class:`eoi_jax.training.models.MLP` with compressed layers: ``input_layer``,
  ``hidden_layers`` (a stack, or ``None`` for depth 2) and ``output_layer``,
  each block-sparse or dense (``nnx.Linear`` / ``DenseStack``, trained under
  its mask). Build it with :func:`compress_mlp`."""

  def __init__(self, input_layer, hidden_layers, output_layer, activation_name: str):
    self.activation_name = activation_name
    self.act = models.activation(activation_name)
    self.input_layer = input_layer
    self.hidden_layers = hidden_layers
    self.output_layer = output_layer

  def __call__(self, x):
    x = self.act(self.input_layer(x.reshape(x.shape[0], -1)))
    if self.hidden_layers is not None:
      x = self.hidden_layers(x)
    return self.output_layer(x)


_LAYERS = ("input_layer", "hidden_layers", "output_layer")


def _value(variable):
  return variable.get_value() if isinstance(variable, nnx.Variable) else variable


def _activation_name(act) -> str:
  for name, fn in models.ACTIVATIONS.items():
    if fn is act:
      return name
  raise ValueError("the MLP's activation is not one of models.ACTIVATIONS")


def _is_block_mask(mask, kernel_shape, block: int) -> bool:
  if mask is None or kernel_shape[-2] % block or kernel_shape[-1] % block:
    return False
  try:
    block_sparse.block_grid(mask, block)
  except ValueError:
    return False
  return True


def _masks_for(model, kernel_masks: dict):
  """A mask tree of ``nnx.state(model, nnx.Param)``: ``kernel_masks[name]``
  at ``name/kernel``, ``None`` everywhere else."""
  state = nnx.state(model, nnx.Param)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: kernel_masks.get(layers.path_name(path)), state)


def compress_mlp(mlp: models.MLP, masks, block: int, *, compress=None):
  """The block-sparse form of a dense masked MLP.

  Args:
    mlp: a :class:`eoi_jax.training.models.MLP` whose kernels are zero off
      their masks (as after :func:`eoi_jax.apply_masks`; values off a mask
      are dropped).
    masks: its mask tree (the structure of ``nnx.state(mlp, nnx.Param)``,
      e.g. :class:`eoi_jax.SparseInit`'s ``masks``).
    block: the block size ``b``.
    compress: names of the layers to compress (of ``input_layer``,
      ``hidden_layers``, ``output_layer``); default: every layer whose mask
      is a block mask of ``block`` (shape multiple of ``b``, constant on
      blocks). A named layer that cannot be compressed raises.

  Returns:
    ``(model, masks)``: a :class:`BlockSparseMLP` (biases copied, kernels'
    kept blocks copied bit for bit; a compressed hidden stack runs its
    activations block-major) and its mask tree for
    :func:`eoi_jax.static_sparse`: ``None`` for compressed layers, the
    given mask for layers kept dense.

  Raises:
    ValueError: a layer named in ``compress`` without a block mask of
      ``block`` (the message names it), or an unknown name.
  """
  if not isinstance(mlp, models.MLP):
    raise TypeError(f"mlp must be an eoi_jax.training.models.MLP, got {type(mlp).__name__}")
  given = {name: _value(masks[name]["kernel"]) for name in _LAYERS
           if getattr(mlp, name) is not None}
  if compress is None:
    compress = [name for name, m in given.items()
                if _is_block_mask(m, getattr(mlp, name).kernel.shape, block)]
  for name in compress:
    if name not in given:
      raise ValueError(f"compress names {name!r}; the MLP's layers are {sorted(given)}")
    if given[name] is None:
      raise ValueError(f"compress names {name!r}, whose mask is None (dense)")
    try:
      block_sparse.block_grid(given[name], block)
    except (ValueError, TypeError) as e:
      raise type(e)(f"layer {name!r}: {e}") from None
  act = mlp.act
  built, kept = {}, {}
  for name in _LAYERS:
    layer = getattr(mlp, name)
    if layer is None or name not in compress:
      built[name] = None if layer is None else nnx.clone(layer)
      kept[f"{name}/kernel"] = given.get(name)
    elif name == "hidden_layers":
      built[name] = BlockSparseStack(layer.kernel.shape[0], layer.kernel.shape[-1], block, act,
                                     block_masks=given[name], kernels=layer.kernel[...],
                                     biases=layer.bias[...])
    else:
      built[name] = BlockSparseLinear.from_dense(layer.kernel[...], given[name], block,
                                                 None if layer.bias is None else layer.bias[...])
  model = BlockSparseMLP(built["input_layer"], built["hidden_layers"], built["output_layer"],
                         _activation_name(act))
  return model, _masks_for(model, kept)


def decompress_mlp(model: BlockSparseMLP, masks):
  """The dense masked MLP of a :class:`BlockSparseMLP`: the inverse of
  :func:`compress_mlp`.

  Args:
    model: a :class:`BlockSparseMLP`.
    masks: its mask tree (as :func:`compress_mlp` returns it).

  Returns:
    ``(mlp, masks)``: a :class:`eoi_jax.training.models.MLP` whose kernels
    are the decompressed ones (stored blocks bit for bit, zeros elsewhere)
    and its mask tree (block masks for the compressed layers).
  """
  if not isinstance(model, BlockSparseMLP):
    raise TypeError(f"model must be a BlockSparseMLP, got {type(model).__name__}")
  first, last = model.input_layer, model.output_layer
  fan_in = first.layout.shape[0] if isinstance(first, BlockSparseLinear) else first.in_features
  classes = last.layout.shape[1] if isinstance(last, BlockSparseLinear) else last.out_features
  width = (first.layout.shape[1] if isinstance(first, BlockSparseLinear)
           else first.out_features)
  hidden = model.hidden_layers
  depth = 2 + (0 if hidden is None else hidden.bias.shape[0])
  mlp = models.MLP(fan_in, classes, depth=depth, width=width,
                   activation_name=model.activation_name, rngs=nnx.Rngs(0))
  kernel_masks = {}
  for name in _LAYERS:
    layer, target = getattr(model, name), getattr(mlp, name)
    if layer is None:
      continue
    if isinstance(layer, (BlockSparseLinear, BlockSparseStack)):
      target.kernel.set_value(layer.dense_kernel())
      kernel_masks[f"{name}/kernel"] = jnp.asarray(layer.block_mask())
      if layer.bias is not None:
        target.bias.set_value(layer.bias[...])
    else:
      nnx.update(target, nnx.state(layer, nnx.Param))
      kernel_masks[f"{name}/kernel"] = _value(masks[name]["kernel"])
  return mlp, _masks_for(mlp, kernel_masks)
