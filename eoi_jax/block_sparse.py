"""Block-sparse kernels stored compressed: the values of the stored blocks only.

A kernel ``(in, out)`` whose mask is constant on every ``b x b`` block (block
EOI, or any block mask) is kept as a :class:`BlockSparse`: the stored blocks'
values ``(nnzb, b, b)``, its only array leaf, and a static
:class:`BlockLayout` saying which block row and column each sits at.
Gradients, optimizer state and checkpoints of a compressed tree hold the
stored blocks alone: density x the dense bytes. :func:`block_matmul` computes
``x @ W`` from gathers and batched dense matmuls over the stored blocks.

The layout is pytree aux data, not a leaf. The gathers' indices are then
constants of the compiled program (a static mask never changes, so there is
nothing to retrace), ``jax.grad``, optax and checkpoints see the values alone
(no integer leaves to keep out of gradients and optimizer state, no masks:
every stored value trains), ``jax.vmap`` batches the values of runs that share
a layout, and the matmul's structure is known when it is traced. Runs with
different masks have different tree structures and do not stack.

How ``x @ W`` runs: the activations are laid out block-major, ``(in / b,
batch, b)``; the input block of every stored block is gathered (one
contiguous ``(batch, b)`` slab each), all stored blocks multiply in one
batched matmul ``(nnzb, batch, b) @ (nnzb, b, b)``, and a segment sum over
the output block columns (slots sorted by column) adds the products into
``(out / b, batch, b)``. Autodiff differentiates it (forward and reverse
mode): the segment sum's transpose is a gather, the gather's a scatter-add,
and XLA:CPU runs both about as fast as a reshape-sum. Two alternatives were
slower on the 2-core CPU (``python -m benchmarks.block_step --formulations``):
the same with batch-major activations (transposes around each batched
matmul), and blocks grouped by output column with every column padded to
the most blocks of any column, summed by a reshape (random masks pad 1.5-2x
the products). The cost is the gathered activations, ``nnzb x batch x b``
floats (``density x out / b`` times the input): large blocks pay best.

A stack of layers (values ``(L, nnzb, b, b)``) has one layout per layer;
layers that keep fewer blocks than the most are padded with unused slots
(zero values whose products the segment sum drops: their gradient is exactly
zero, so they stay zero under any elementwise optimizer and never reach an
output). :func:`block_stack_apply` scans such a stack, the gather and segment
indices then per-layer arrays of the scan.

Example:
  >>> mask = random_block_mask(jax.random.key(0), (256, 256), 16, 0.1)
  >>> w = compress(kernel * mask, mask, 16)      # w.blocks: (26, 16, 16)
  >>> y = block_matmul(x, w)                     # == x @ (kernel * mask)
  >>> jnp.array_equal(decompress(w), kernel * mask)
  Array(True, dtype=bool)
"""

from __future__ import annotations

import functools
import numbers
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from eoi_jax import _validation
from eoi_jax.counts import count_for_density

_IN_RANGE = "clip"  # every index is in range; "clip" is XLA gather's own semantics (no extra ops)


class BlockLayout:
  """Where the stored blocks of a block-sparse kernel, or of a stack of them, sit.

  Static: hashable and compared by value, so it can be pytree aux data and a
  static attribute of an NNX module. Build it with :func:`compress` (or
  :meth:`from_grid`).

  Attributes:
    shape: the dense kernel's ``(in, out)``.
    block: the block size ``b``.
    rows, cols: ``(..., nnzb)`` int32 block row and column of each stored
      slot, stack axes first; ``-1`` for unused slots of a stack's layers
      that hold fewer blocks than the most.
  """

  def __init__(self, shape, block: int, rows, cols):
    self.shape = (int(shape[0]), int(shape[1]))
    self.block = _check_block(block)
    _check_divides(self.shape, self.block, "shape")
    self.rows = np.array(rows, np.int32)
    self.cols = np.array(cols, np.int32)
    _check_slots(self.rows, self.cols, self.grid)
    self.rows.flags.writeable = False
    self.cols.flags.writeable = False
    self._key = (self.shape, self.block, self.rows.shape, self.rows.tobytes(),
                 self.cols.tobytes())
    self._hash = hash(self._key)

  @classmethod
  def from_grid(cls, grid, block: int) -> "BlockLayout":
    """The layout of a block grid ``(..., in / b, out / b)`` (bool: stored
    blocks ``True``): slots in column-major block order (by output block
    column, then row), each layer padded to the most blocks of any layer."""
    grid = np.asarray(grid, bool)
    stack, (nbi, nbo) = grid.shape[:-2], grid.shape[-2:]
    flat = grid.reshape(-1, nbi, nbo)
    slots = max(1, int(flat.sum(axis=(1, 2)).max(initial=0)))
    rows = np.full((flat.shape[0], slots), -1, np.int32)
    cols = np.full((flat.shape[0], slots), -1, np.int32)
    for layer, g in enumerate(flat):
      c, r = np.nonzero(g.T)  # column-major order
      rows[layer, :r.size], cols[layer, :c.size] = r, c
    return cls((nbi * block, nbo * block), block, rows.reshape(*stack, slots),
               cols.reshape(*stack, slots))

  def __hash__(self):
    return self._hash

  def __eq__(self, other):
    return self is other or (isinstance(other, BlockLayout) and self._key == other._key)

  def __repr__(self):
    stack = f", stack={self.stack_shape}" if self.stack_shape else ""
    return (f"BlockLayout(shape={self.shape}, block={self.block}, "
            f"slots={self.num_slots}{stack})")

  @property
  def stack_shape(self) -> tuple[int, ...]:
    """Leading stack axes (``()`` for one kernel)."""
    return self.rows.shape[:-1]

  @property
  def num_slots(self) -> int:
    """Stored blocks per layer (the most of any layer, for a stack)."""
    return self.rows.shape[-1]

  @property
  def grid(self) -> tuple[int, int]:
    """``(in / b, out / b)``."""
    return self.shape[0] // self.block, self.shape[1] // self.block

  @property
  def counts(self) -> np.ndarray:
    """Stored blocks of each layer, ``stack_shape`` (a 0-d array for one kernel)."""
    return (self.rows >= 0).sum(axis=-1)

  @property
  def density(self) -> float:
    """Stored blocks over all blocks (over every layer of a stack)."""
    return float(self.counts.sum() / (max(1, self.counts.size) * np.prod(self.grid)))

  def grid_mask(self) -> np.ndarray:
    """Bool ``(..., in / b, out / b)``: which blocks are stored."""
    return (self.dense_slots < self.num_slots).reshape(*self.stack_shape, *self.grid)

  @functools.cached_property
  def gather_rows(self) -> np.ndarray:
    """``rows`` with unused slots reading block row 0 (their products are dropped)."""
    return np.where(self.rows >= 0, self.rows, 0).astype(np.int32)

  @functools.cached_property
  def segment_cols(self) -> np.ndarray:
    """``cols`` with unused slots sent to segment ``out / b``, past the last
    output block: the segment sum drops them."""
    return np.where(self.rows >= 0, self.cols, self.grid[1]).astype(np.int32)

  @functools.cached_property
  def cols_sorted(self) -> bool:
    """Whether every layer's :attr:`segment_cols` are non-decreasing (they are
    from :meth:`from_grid`): the segment sum is then told so."""
    return bool(np.all(np.diff(self.segment_cols, axis=-1) >= 0))

  @functools.cached_property
  def dense_slots(self) -> np.ndarray:
    """``(..., in / b * out / b)``: the slot stored at each block of the dense
    kernel, row-major; ``num_slots`` (an appended zero block) where none is."""
    nbi, nbo = self.grid
    slots = self.num_slots
    rows, cols = self.rows.reshape(-1, slots), self.cols.reshape(-1, slots)
    dense = np.full((rows.shape[0], nbi * nbo), slots, np.int32)
    for layer, (r, c) in enumerate(zip(rows, cols)):
      used = np.flatnonzero(r >= 0)
      dense[layer, r[used] * nbo + c[used]] = used
    return dense.reshape(*self.stack_shape, nbi * nbo)


@jax.tree_util.register_pytree_with_keys_class
class BlockSparse:
  """A compressed block-sparse kernel (or stack of kernels): a pytree whose
  only leaf is ``blocks``, its :class:`BlockLayout` static aux data.

  Build it with :func:`compress`; ``BlockSparse(blocks, layout)`` itself
  does not check its arguments (pytree transformations rebuild it with
  placeholders in ``blocks``).

  Attributes:
    blocks: ``(..., nnzb, b, b)`` values of the stored blocks: ``blocks[s]``
      is the dense kernel's ``[rows[s] * b:(rows[s] + 1) * b, cols[s] * b:
      (cols[s] + 1) * b]``. Runs sharing a layout stack their values on a
      leading axis and ``jax.vmap`` over it.
    layout: the static :class:`BlockLayout`.
  """

  def __init__(self, blocks, layout: BlockLayout):
    self.blocks = blocks
    self.layout = layout

  def tree_flatten_with_keys(self):
    return ((jax.tree_util.GetAttrKey("blocks"), self.blocks),), self.layout

  def tree_flatten(self):
    return (self.blocks,), self.layout

  @classmethod
  def tree_unflatten(cls, layout, children):
    return cls(children[0], layout)

  def __repr__(self):
    shape = getattr(self.blocks, "shape", None)
    return f"BlockSparse(blocks={shape}, {self.layout})"

  @property
  def shape(self) -> tuple[int, int]:
    """The dense kernel's ``(in, out)``."""
    return self.layout.shape

  @property
  def block(self) -> int:
    return self.layout.block

  @property
  def rows(self) -> np.ndarray:
    return self.layout.rows

  @property
  def cols(self) -> np.ndarray:
    return self.layout.cols

  @property
  def nnzb(self) -> int:
    """Stored blocks (slots per layer, for a stack)."""
    return self.layout.num_slots

  def __getitem__(self, layer: int) -> "BlockSparse":
    """Layer ``layer`` (a static int) of a stack with one stack axis: a
    single-kernel BlockSparse of that layer's used slots."""
    stack = self.layout.stack_shape
    if len(stack) != 1:
      raise ValueError(f"indexing a BlockSparse takes a layer of a stack with one stack axis; "
                       f"this one has stack axes {stack}")
    if not isinstance(layer, numbers.Integral) or not -stack[0] <= layer < stack[0]:
      raise ValueError(f"layer must be an int in [{-stack[0]}, {stack[0]}), got {layer!r}")
    rows, cols = self.layout.rows[layer], self.layout.cols[layer]
    used = np.flatnonzero(rows >= 0)
    used = used if used.size else np.arange(1)  # an empty layer keeps one unused slot
    return BlockSparse(self.blocks[layer][used],
                       BlockLayout(self.shape, self.block, rows[used], cols[used]))


def _check_slots(rows: np.ndarray, cols: np.ndarray, grid) -> None:
  if rows.shape != cols.shape or rows.ndim < 1:
    raise ValueError(f"rows and cols must have one shape (..., nnzb), got {rows.shape} and "
                     f"{cols.shape}")
  unused = rows < 0
  if np.any(unused != (cols < 0)) or np.any(rows < -1) or np.any(cols < -1):
    raise ValueError("rows and cols must be -1 together (unused slots) or block indices")
  if np.any(rows >= grid[0]) or np.any(cols >= grid[1]):
    raise ValueError(f"rows and cols must be below the block grid {grid}")
  ids = np.where(unused, -1 - np.arange(rows.shape[-1]), rows * grid[1] + cols)
  if np.any(np.diff(np.sort(ids, axis=-1), axis=-1) == 0):
    raise ValueError("a layer stores one block twice (repeated (row, col) in rows and cols)")


def _check_block(block) -> int:
  if isinstance(block, (bool, np.bool_)) or not isinstance(block, numbers.Integral):
    raise TypeError(f"block must be a positive int, got {type(block).__name__} {block!r}")
  if block < 1:
    raise ValueError(f"block must be a positive int, got {block}")
  return int(block)


def _check_divides(shape, block: int, name: str) -> tuple[int, int]:
  if len(shape) < 2:
    raise ValueError(f"{name} must have shape (..., in, out), got {tuple(shape)}")
  fan_in, fan_out = shape[-2:]
  if fan_in % block or fan_out % block:
    described = "shape" if name == "shape" else f"{name} has shape"
    raise ValueError(f"{described} {tuple(shape)}: its last two axes (in, out) must be "
                     f"multiples of block={block}")
  return fan_in // block, fan_out // block


def block_grid(block_mask, block: int) -> np.ndarray:
  """The block grid of a block mask, after checking it.

  Args:
    block_mask: bool ``(..., in, out)``, constant on every ``b x b`` block;
      concrete (not traced: it fixes the layout).
    block: the block size ``b``.

  Returns:
    Bool NumPy ``(..., in / b, out / b)``: ``True`` where the block is kept.

  Raises:
    TypeError: a traced or non-bool ``block_mask``, or a ``block`` that is
      not an int.
    ValueError: sizes that are not multiples of ``block``, or a mask not
      constant on a block (the message names the first such block).
  """
  block = _check_block(block)
  if _validation.is_tracer(block_mask):
    raise TypeError("block_mask must be concrete, not traced: it fixes the stored blocks "
                    "(build the compressed form outside jit)")
  if not (hasattr(block_mask, "shape") and hasattr(block_mask, "dtype")):
    raise TypeError(f"block_mask must be a bool array, got {type(block_mask).__name__}")
  if block_mask.dtype != np.bool_:
    raise TypeError(f"block_mask must be a bool array (True = stored), got {block_mask.dtype}")
  nbi, nbo = _check_divides(block_mask.shape, block, "block_mask")
  mask = np.asarray(block_mask)
  tiles = mask.reshape(*mask.shape[:-2], nbi, block, nbo, block)
  anywhere, everywhere = tiles.any(axis=(-3, -1)), tiles.all(axis=(-3, -1))
  if not np.array_equal(anywhere, everywhere):
    where = tuple(int(i) for i in np.argwhere(anywhere != everywhere)[0])
    raise ValueError(
        f"block_mask is not constant on {block}x{block} blocks: block {where} (stack axes, "
        f"block row, block column) is partly True; a block mask keeps or drops whole blocks")
  return anywhere


def random_block_mask(key, shape, block: int, density) -> jax.Array:
  """A uniformly random block mask: each layer keeps ``round(density * blocks)``
  of its ``b x b`` blocks (at least one).

  Args:
    key: a JAX PRNG key.
    shape: ``(..., in, out)``, ``in`` and ``out`` multiples of ``block``; one
      independent mask per leading index.
    block: the block size ``b``.
    density: in (0, 1].

  Returns:
    Bool ``shape``, constant on blocks.

  Example:
    >>> random_block_mask(jax.random.key(0), (64, 64), 16, 0.25).sum() // 256
    Array(4, dtype=int32)
  """
  key = _validation.check_key(key)
  block = _check_block(block)
  density = _validation.check_density(density)
  shape = tuple(int(n) for n in shape)
  nbi, nbo = _check_divides(shape, block, "shape")
  stack = shape[:-2]
  kept = max(1, count_for_density(density, nbi * nbo))
  keys = jax.random.split(key, int(np.prod(stack, dtype=np.int64)))
  scores = jax.vmap(lambda k: jax.random.uniform(k, (nbi * nbo,)))(keys)
  threshold = jnp.sort(scores, axis=-1)[:, nbi * nbo - kept]
  grid = (scores >= threshold[:, None]).reshape(*stack, nbi, 1, nbo, 1)
  return jnp.broadcast_to(grid, (*stack, nbi, block, nbo, block)).reshape(shape)


def compress(dense_kernel, block_mask, block: int) -> BlockSparse:
  """The stored blocks of ``dense_kernel`` under ``block_mask``.

  Args:
    dense_kernel: ``(..., in, out)`` (leading axes: a stack of layers, one
      layout each); may be traced.
    block_mask: bool of ``dense_kernel``'s shape, constant on ``b x b``
      blocks, concrete (:func:`block_grid`).
    block: the block size ``b``; divides ``in`` and ``out``.

  Returns:
    A :class:`BlockSparse` with the values of the kept blocks, copied bit
    for bit (entries outside the mask are dropped: :func:`decompress` gives
    ``where(block_mask, dense_kernel, 0)``).

  Raises:
    ValueError: shapes that differ or are not multiples of ``block``, or a
      mask not constant on blocks; ``TypeError`` for a traced or non-bool
      mask.

  Example:
    >>> w = compress(kernel, mask, 32)
    >>> w.blocks.shape, w.rows.shape
    ((nnzb, 32, 32), (nnzb,))
  """
  block = _check_block(block)
  shape = tuple(jnp.shape(dense_kernel))
  _check_divides(shape, block, "dense_kernel")
  if tuple(getattr(block_mask, "shape", ())) != shape:
    raise ValueError(f"block_mask must have dense_kernel's shape {shape}, got "
                     f"{tuple(getattr(block_mask, 'shape', ()))}")
  layout = BlockLayout.from_grid(block_grid(block_mask, block), block)
  return BlockSparse(_gather_blocks(jnp.asarray(dense_kernel), layout), layout)


def _block_view(kernel, block: int):
  """``(..., in, out)`` as ``(..., in / b * out / b, b, b)``, blocks row-major."""
  *stack, fan_in, fan_out = kernel.shape
  nbi, nbo = fan_in // block, fan_out // block
  tiles = kernel.reshape(*stack, nbi, block, nbo, block)
  return jnp.swapaxes(tiles, -3, -2).reshape(*stack, nbi * nbo, block, block)


def _gather_blocks(kernel, layout: BlockLayout):
  nbi, nbo = layout.grid
  positions = np.where(layout.rows >= 0, layout.rows * nbo + layout.cols, 0)
  tiles = _block_view(kernel, layout.block)
  blocks = jnp.take_along_axis(tiles, jnp.asarray(positions)[..., None, None], axis=-3,
                               mode=_IN_RANGE)
  return jnp.where(jnp.asarray(layout.rows >= 0)[..., None, None], blocks,
                   jnp.zeros((), blocks.dtype))


def _with_zero_block(blocks):
  return jnp.concatenate([blocks, jnp.zeros((*blocks.shape[:-3], 1, *blocks.shape[-2:]),
                                            blocks.dtype)], axis=-3)


def decompress(kernel: BlockSparse) -> jax.Array:
  """The dense kernel ``(..., in, out)`` of ``kernel``: its stored blocks in
  place (bit for bit), zeros elsewhere. ``decompress(compress(w, m, b))`` is
  ``where(m, w, 0)``."""
  _check_block_sparse(kernel, "kernel")
  layout = kernel.layout
  nbi, nbo = layout.grid
  b = layout.block
  tiles = jnp.take_along_axis(_with_zero_block(kernel.blocks),
                              jnp.asarray(layout.dense_slots)[..., None, None], axis=-3,
                              mode=_IN_RANGE)
  stack = tiles.shape[:-3]
  tiles = tiles.reshape(*stack, nbi, nbo, b, b)
  return jnp.swapaxes(tiles, -3, -2).reshape(*stack, nbi * b, nbo * b)


def block_mask(kernel: BlockSparse) -> np.ndarray:
  """Bool NumPy ``(..., in, out)``: ``True`` on the stored blocks of ``kernel``
  (a :class:`BlockSparse` or a :class:`BlockLayout`)."""
  layout = kernel.layout if isinstance(kernel, BlockSparse) else kernel
  b = layout.block
  grid = layout.grid_mask()
  return np.repeat(np.repeat(grid, b, axis=-2), b, axis=-1)


def _check_block_sparse(kernel, name: str) -> None:
  if not isinstance(kernel, BlockSparse):
    raise TypeError(f"{name} must be a BlockSparse (eoi_jax.block_sparse.compress), got "
                    f"{type(kernel).__name__}")


# x @ W on the stored blocks, activations block-major: ``(n / b, batch, b)``,
# so that each gathered input block is one contiguous (batch, b) slab and the
# batched matmul runs over the leading axis without transposes.


def _to_blocks(x, block: int):
  """``(batch, n) -> (n / b, batch, b)``."""
  return jnp.swapaxes(x.reshape(x.shape[0], -1, block), 0, 1)


def _from_blocks(x):
  """``(n / b, batch, b) -> (batch, n)``."""
  return jnp.swapaxes(x, 0, 1).reshape(x.shape[1], -1)


def _matmul_blocks(x, blocks, gather_rows, segment_cols, num_out: int, cols_sorted: bool):
  """``x (in / b, batch, b) @ W -> (out / b, batch, b)``: gather the input
  block of each stored block, multiply all stored blocks in one batched
  matmul, sum the products into their output blocks."""
  inputs = jnp.take(x, gather_rows, axis=0, mode=_IN_RANGE)
  products = jnp.einsum("snc,scj->snj", inputs, blocks)
  return jax.ops.segment_sum(products, segment_cols, num_out, indices_are_sorted=cols_sorted)


def block_matmul(x, kernel: BlockSparse) -> jax.Array:
  """``x @ W`` for a compressed kernel ``W``, paying for its stored blocks only.

  A gather of the input blocks, one batched ``(batch, b) @ (b, b)`` matmul
  per stored block and a sorted segment sum into the output blocks;
  differentiable in ``x`` and ``kernel.blocks`` by plain autodiff (forward
  and reverse mode). Works under ``jit``, ``vmap`` (over ``x``, or over the
  values of kernels sharing a layout) and ``eval_shape``.

  Args:
    x: ``(..., in)``.
    kernel: a single-kernel :class:`BlockSparse` (:func:`compress`; a
      stack's layer is ``kernel[i]``, a whole stack runs with
      :func:`block_stack_apply`).

  Returns:
    ``(..., out)``, equal to ``x @ decompress(kernel)`` up to float rounding
    (each output sums its ``b``-long block products, block by block).

  Example:
    >>> y = block_matmul(x, compress(kernel, mask, 16))
  """
  _check_block_sparse(kernel, "kernel")
  layout = kernel.layout
  if layout.stack_shape:
    raise ValueError(f"kernel is a stack of {layout.stack_shape} layers; block_matmul takes "
                     "one kernel (kernel[i], or block_stack_apply for the stack)")
  fan_in, fan_out = layout.shape
  if jnp.shape(x)[-1:] != (fan_in,):
    raise ValueError(f"x must have shape (..., {fan_in}) for a ({fan_in}, {fan_out}) kernel, "
                     f"got {tuple(jnp.shape(x))}")
  lead = jnp.shape(x)[:-1]
  x_blocks = _to_blocks(jnp.reshape(x, (-1, fan_in)), layout.block)
  out = _matmul_blocks(x_blocks, kernel.blocks, jnp.asarray(layout.gather_rows),
                       jnp.asarray(layout.segment_cols), layout.grid[1], layout.cols_sorted)
  return _from_blocks(out).reshape(*lead, fan_out)


def block_stack_apply(act: Callable, kernels: BlockSparse, biases, x) -> jax.Array:
  """``act(... act(act(x @ W_0 + b_0) @ W_1 + b_1) ...)`` over a stack of
  square compressed kernels, scanned (compile time does not grow with depth;
  the activations stay block-major from the first layer to the last).

  Args:
    act: an elementwise activation.
    kernels: a :class:`BlockSparse` with one stack axis: ``(L, nnzb, b, b)``
      values of ``(w, w)`` kernels.
    biases: ``(L, w)``.
    x: ``(batch, w)``.

  Returns:
    ``(batch, w)``.

  Example:
    >>> masks = random_block_mask(jax.random.key(0), (998, 128, 128), 16, 0.125)
    >>> h = block_stack_apply(jnp.tanh, compress(kernels, masks, 16), biases, x)
  """
  _check_block_sparse(kernels, "kernels")
  layout = kernels.layout
  if len(layout.stack_shape) != 1 or layout.shape[0] != layout.shape[1]:
    raise ValueError(f"kernels must be a stack of square kernels (one stack axis), got "
                     f"stack {layout.stack_shape} of {layout.shape}")
  width, b = layout.shape[0], layout.block
  if jnp.ndim(x) != 2 or jnp.shape(x)[-1] != width:
    raise ValueError(f"x must have shape (batch, {width}), got {tuple(jnp.shape(x))}")
  if jnp.shape(biases) != (*layout.stack_shape, width):
    raise ValueError(f"biases must have shape {(*layout.stack_shape, width)}, got "
                     f"{tuple(jnp.shape(biases))}")
  num_out, cols_sorted = layout.grid[1], layout.cols_sorted

  def layer(h, params):
    blocks, bias, gather_rows, segment_cols = params
    z = _matmul_blocks(h, blocks, gather_rows, segment_cols, num_out, cols_sorted)
    return act(z + bias.reshape(-1, 1, b)), None

  h, _ = jax.lax.scan(layer, _to_blocks(x, b),
                      (kernels.blocks, biases, jnp.asarray(layout.gather_rows),
                       jnp.asarray(layout.segment_cols)))
  return _from_blocks(h)
