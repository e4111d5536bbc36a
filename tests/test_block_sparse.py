"""Tests of compressed block-sparse kernels, their layers and their training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import eoi_jax
from eoi_jax import block_sparse, layers
from eoi_jax.block_sparse import BlockSparse
from eoi_jax.training import block_models, models
from eoi_jax.training.checkpoints import CheckpointStore

EPS = float(np.finfo(np.float32).eps) / 2  # unit roundoff u of float32


def gamma(n: int) -> float:
  """gamma_n = n u / (1 - n u): the relative error bound of an n-term float32 sum."""
  return n * EPS / (1 - n * EPS)


def bits(x) -> np.ndarray:
  return np.asarray(x, np.float32).view(np.uint32)


def bernoulli_block_mask(key, shape, block, density):
  """Each b x b block kept with probability ``density`` (counts vary per layer)."""
  *stack, fan_in, fan_out = shape
  grid = jax.random.bernoulli(key, density, (*stack, fan_in // block, 1, fan_out // block, 1))
  return jnp.broadcast_to(grid, (*stack, fan_in // block, block, fan_out // block,
                                 block)).reshape(shape)


def permuted_orthogonal_blocks(key, n, block):
  """``kron(P, Q)``: P a random permutation, Q a random orthogonal b x b block;
  exactly orthogonal up to Q's rounding, one block per block row and column."""
  k1, k2 = jax.random.split(key)
  perm = np.asarray(jax.random.permutation(k1, n // block))
  p = np.eye(n // block, dtype=np.float32)[perm]
  q, _ = np.linalg.qr(np.asarray(jax.random.normal(k2, (block, block)), np.float64))
  return jnp.asarray(np.kron(p, q.astype(np.float32))), jnp.asarray(np.kron(p, np.ones((block, block))) > 0)


MASKS = {
    "exact count": lambda key, shape, b: block_sparse.random_block_mask(key, shape, b, 0.3),
    "bernoulli": lambda key, shape, b: bernoulli_block_mask(key, shape, b, 0.3),
}


@pytest.mark.parametrize("kind", sorted(MASKS))
def test_compress_decompress_round_trip_is_bitwise(kind):
  k1, k2 = jax.random.split(jax.random.key(0))
  shape = (3, 48, 64)  # a stack: layers keep different numbers of blocks
  mask = MASKS[kind](k1, shape, 16)
  kernel = jax.random.normal(k2, shape)
  compressed = block_sparse.compress(kernel, mask, 16)
  grid = np.asarray(mask)[:, ::16, ::16]
  assert compressed.blocks.shape == (3, grid.sum(axis=(1, 2)).max(), 16, 16)
  np.testing.assert_array_equal(compressed.layout.counts, grid.sum(axis=(1, 2)))
  np.testing.assert_array_equal(bits(block_sparse.decompress(compressed)),
                                bits(jnp.where(mask, kernel, 0.0)))
  np.testing.assert_array_equal(block_sparse.block_mask(compressed), np.asarray(mask))
  again = block_sparse.compress(block_sparse.decompress(compressed), mask, 16)
  assert again.layout == compressed.layout and hash(again.layout) == hash(compressed.layout)
  np.testing.assert_array_equal(bits(again.blocks), bits(compressed.blocks))
  for layer in range(3):  # a layer of the stack on its own
    np.testing.assert_array_equal(bits(block_sparse.decompress(compressed[layer])),
                                  bits(jnp.where(mask[layer], kernel[layer], 0.0)))


def test_permuted_orthogonal_blocks_stay_orthogonal_compressed():
  kernel, mask = permuted_orthogonal_blocks(jax.random.key(1), 64, 16)
  compressed = block_sparse.compress(kernel, mask, 16)
  assert compressed.nnzb == 4
  # Bit for bit on the blocks; +0.0 off them (kron writes -0.0 there).
  np.testing.assert_array_equal(bits(block_sparse.decompress(compressed)),
                                bits(jnp.where(mask, kernel, 0.0)))
  x = jax.random.normal(jax.random.key(2), (8, 64))
  y = block_sparse.block_matmul(x, compressed)
  # Q is orthogonal to float32 rounding: norms kept to a few ulps of b-term sums.
  np.testing.assert_allclose(jnp.linalg.norm(y, axis=1), jnp.linalg.norm(x, axis=1),
                             rtol=4 * gamma(16))


@pytest.mark.parametrize("kind", sorted(MASKS))
def test_block_matmul_equals_the_dense_matmul(kind):
  k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
  mask = MASKS[kind](k1, (96, 64), 16)
  kernel = jnp.where(mask, jax.random.normal(k2, (96, 64)), 0.0)
  compressed = block_sparse.compress(kernel, mask, 16)
  x = jax.random.normal(k3, (2, 5, 96))  # leading axes are kept
  y = block_sparse.block_matmul(x, compressed)
  reference = np.asarray(x, np.float64) @ np.asarray(kernel, np.float64)
  # Both are float32 sums of the same 96 products: within gamma_96 |x| |W| of
  # the exact result.
  bound = gamma(96) * (np.abs(np.asarray(x)) @ np.abs(np.asarray(kernel)))
  assert y.shape == (2, 5, 64)
  assert np.all(np.abs(np.asarray(y, np.float64) - reference) <= bound)
  assert np.all(np.abs(np.asarray(x @ kernel, np.float64) - reference) <= bound)


def test_gradients_are_the_masked_dense_gradients_on_the_blocks():
  k1, k2, k3, k4 = jax.random.split(jax.random.key(4), 4)
  mask = bernoulli_block_mask(k1, (64, 96), 16, 0.4)
  kernel = jnp.where(mask, jax.random.normal(k2, (64, 96)), 0.0)
  compressed = block_sparse.compress(kernel, mask, 16)
  x = jax.random.normal(k3, (12, 64))
  target = jax.random.normal(k4, (12, 96))  # a linear loss: dL/dy = target, exactly

  def loss(x, blocks):
    return jnp.sum(block_sparse.block_matmul(x, BlockSparse(blocks, compressed.layout)) * target)

  grad_x, grad_blocks = jax.jit(jax.grad(loss, (0, 1)))(x, compressed.blocks)
  ref_x = np.asarray(target, np.float64) @ np.asarray(kernel, np.float64).T
  ref_w = np.asarray(x, np.float64).T @ np.asarray(target, np.float64)
  # dL/dx sums 96 products per entry, dL/dW 12; only the stored blocks get one.
  assert np.all(np.abs(grad_x - ref_x) <= gamma(96) * (np.abs(target) @ np.abs(kernel).T))
  dense_grad_w = block_sparse.decompress(BlockSparse(grad_blocks, compressed.layout))
  bound = gamma(12) * (np.abs(x).T @ np.abs(target))
  assert np.all(np.abs(np.asarray(dense_grad_w) - np.where(mask, ref_w, 0.0)) <= bound)
  # Forward mode (autodiff throughout): a JVP in x is the matmul of the tangent.
  _, tangent = jax.jvp(lambda x: block_sparse.block_matmul(x, compressed), (x,), (target[:, :64],))
  np.testing.assert_array_equal(tangent, block_sparse.block_matmul(target[:, :64], compressed))


def _dense_stack(kernels, biases, x):
  for kernel, bias in zip(kernels, biases):
    x = jnp.tanh(x @ kernel + bias)
  return x


def test_stack_forward_and_gradients_equal_the_masked_dense_stack():
  k1, k2, k3 = jax.random.split(jax.random.key(5), 3)
  mask = bernoulli_block_mask(k1, (4, 32, 32), 8, 0.4)
  mask = mask.at[2].set(False)  # a layer without blocks: all its slots unused
  kernels = jnp.where(mask, jax.random.normal(k2, (4, 32, 32)) / 2, 0.0)
  biases = jnp.linspace(-0.1, 0.1, 4 * 32).reshape(4, 32)
  compressed = block_sparse.compress(kernels, mask, 8)
  x = jax.random.normal(k3, (6, 32))

  def block_loss(blocks, biases):
    return jnp.sum(block_sparse.block_stack_apply(
        jnp.tanh, BlockSparse(blocks, compressed.layout), biases, x) ** 2)

  def dense_loss(kernels, biases):
    return jnp.sum(_dense_stack(kernels, biases, x) ** 2)

  (value, (grad_blocks, grad_biases)) = jax.jit(jax.value_and_grad(block_loss, (0, 1)))(
      compressed.blocks, biases)
  (ref_value, (ref_kernels, ref_biases)) = jax.jit(jax.value_and_grad(dense_loss, (0, 1)))(
      kernels, biases)
  # Four layers of 32-term sums through tanh (1-Lipschitz) and kernels of
  # norm ~2: each step adds gamma_32-relative rounding, amplified at most 2x.
  tol = 4 * 2 ** 4 * gamma(32)
  np.testing.assert_allclose(value, ref_value, rtol=tol)
  scale = float(jnp.max(jnp.abs(ref_kernels)))
  grad_dense = block_sparse.decompress(BlockSparse(grad_blocks, compressed.layout))
  np.testing.assert_allclose(grad_dense, jnp.where(mask, ref_kernels, 0.0), atol=tol * scale)
  np.testing.assert_allclose(grad_biases, ref_biases, atol=tol * scale)
  unused = compressed.layout.rows < 0
  assert unused[2].all() and np.all(np.asarray(grad_blocks)[unused] == 0)


def test_jit_vmap_and_eval_shape():
  k1, k2, k3 = jax.random.split(jax.random.key(6), 3)
  mask = block_sparse.random_block_mask(k1, (32, 48), 16, 0.5)
  runs = jnp.where(mask, jax.random.normal(k2, (3, 32, 48)), 0.0)  # 3 runs, one layout
  layout = block_sparse.compress(runs[0], mask, 16).layout
  blocks = jax.vmap(lambda k: block_sparse.compress(k, mask, 16).blocks)(runs)
  x = jax.random.normal(k3, (5, 32))
  batched = jax.jit(jax.vmap(block_sparse.block_matmul, in_axes=(None, 0)))(
      x, BlockSparse(blocks, layout))
  for run in range(3):
    alone = block_sparse.block_matmul(x, BlockSparse(blocks[run], layout))
    np.testing.assert_allclose(batched[run], alone, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(alone, x @ runs[run], atol=4 * gamma(32) * 32)
  one = BlockSparse(blocks[0], layout)
  np.testing.assert_array_equal(jax.jit(block_sparse.block_matmul)(x, one),
                                block_sparse.block_matmul(x, one))
  over_x = jax.vmap(block_sparse.block_matmul, in_axes=(0, None))(x[:, None], one)
  np.testing.assert_allclose(over_x[:, 0], block_sparse.block_matmul(x, one), atol=1e-6)
  shape = jax.eval_shape(block_sparse.block_matmul, x, one)
  assert (shape.shape, shape.dtype) == ((5, 48), jnp.float32)
  abstract = jax.eval_shape(lambda k: block_sparse.compress(k, mask, 16), runs[0])
  assert abstract.layout == layout and abstract.blocks.shape == blocks.shape[1:]
  assert jax.tree.leaves(one) == [one.blocks]  # the layout is static, not a leaf


def test_errors_name_the_argument():
  kernel = jnp.zeros((32, 48))
  mask = jnp.ones((32, 48), bool)
  with pytest.raises(ValueError, match=r"dense_kernel has shape \(30, 48\).*multiples of block=16"):
    block_sparse.compress(jnp.zeros((30, 48)), jnp.ones((30, 48), bool), 16)
  with pytest.raises(ValueError, match=r"block_mask is not constant on 16x16 blocks: block \(1, 2\)"):
    block_sparse.compress(kernel, mask.at[20, 40].set(False), 16)
  with pytest.raises(ValueError, match="block_mask must have dense_kernel's shape"):
    block_sparse.compress(kernel, jnp.ones((32, 32), bool), 16)
  with pytest.raises(TypeError, match="block_mask must be a bool array"):
    block_sparse.compress(kernel, jnp.ones((32, 48)), 16)
  with pytest.raises(TypeError, match="block_mask must be concrete"):
    jax.jit(lambda m: block_sparse.compress(kernel, m, 16))(mask)
  with pytest.raises(ValueError, match="block must be a positive int"):
    block_sparse.compress(kernel, mask, 0)
  with pytest.raises(TypeError, match="block must be a positive int"):
    block_sparse.compress(kernel, mask, 16.0)
  compressed = block_sparse.compress(kernel, mask, 16)
  with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 32\)"):
    block_sparse.block_matmul(jnp.zeros((4, 48)), compressed)
  with pytest.raises(TypeError, match="kernel must be a BlockSparse"):
    block_sparse.block_matmul(jnp.zeros((4, 32)), kernel)
  stack = block_sparse.compress(jnp.zeros((2, 32, 32)), jnp.ones((2, 32, 32), bool), 16)
  with pytest.raises(ValueError, match="kernel is a stack"):
    block_sparse.block_matmul(jnp.zeros((4, 32)), stack)
  with pytest.raises(ValueError, match=r"shape \(30, 48\): its last two axes"):
    block_sparse.random_block_mask(jax.random.key(0), (30, 48), 16, 0.5)


# The compressed MLP against the dense masked MLP of the trainer.


def _masked_mlp(key, *, depth=4, width=32, block=8, density=0.4):
  """A dense MLP 32 -> width x (depth - 1) -> 10 masked as the trainer masks:
  block masks on the input layer and the hidden stack (its first layer keeps
  one block, fewer than the others: unused slots), an element mask on the
  output layer (10 outputs: no blocks of 8)."""
  mlp = models.MLP(32, 10, depth=depth, width=width, rngs=nnx.Rngs(0))
  k1, k2, k3 = jax.random.split(key, 3)
  hidden = bernoulli_block_mask(k2, (depth - 2, width, width), block, density)
  hidden = hidden.at[0].set(False).at[0, :block, :block].set(True)  # one block: unused slots
  kernel_masks = {
      "input_layer/kernel": bernoulli_block_mask(k1, (32, width), block, density),
      "hidden_layers/kernel": hidden,
      "output_layer/kernel": jax.random.bernoulli(k3, 0.5, (width, 10)),
  }
  params = nnx.state(mlp, nnx.Param)
  masks = jax.tree_util.tree_map_with_path(
      lambda path, _: kernel_masks.get(layers.path_name(path)), params)
  nnx.update(mlp, eoi_jax.apply_masks(params, masks))
  return mlp, masks


def _train(model, masks, batches, inner):
  graphdef, params = nnx.split(model, nnx.Param)
  tx = eoi_jax.static_sparse(inner, masks)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss(params):
      logits = nnx.merge(graphdef, params)(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  for x, y in batches:
    params, opt_state = step(params, opt_state, x, y)
  return nnx.merge(graphdef, params), params, opt_state


def test_layers_draw_the_dense_layers_kernels_on_their_blocks():
  mask = block_sparse.random_block_mask(jax.random.key(16), (32, 48), 16, 0.5)
  layer = block_models.BlockSparseLinear(32, 48, 16, block_mask=mask, rngs=nnx.Rngs(0))
  dense = nnx.Linear(32, 48, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(layer.dense_kernel(), jnp.where(mask, dense.kernel[...], 0.0))
  masks = block_sparse.random_block_mask(jax.random.key(17), (3, 32, 32), 16, 0.5)
  stack = block_models.BlockSparseStack(3, 32, 16, jnp.tanh, block_masks=masks,
                                        rngs=nnx.Rngs(1))
  dense_stack = models.DenseStack(3, 32, jnp.tanh, rngs=nnx.Rngs(1))
  np.testing.assert_array_equal(stack.dense_kernel(), jnp.where(masks, dense_stack.kernel[...], 0.0))
  with pytest.raises(ValueError, match="needs rngs"):
    block_models.BlockSparseLinear(32, 48, 16, block_mask=mask)


def test_compress_mlp_round_trip_is_bitwise():
  mlp, masks = _masked_mlp(jax.random.key(7))
  model, block_masks = block_models.compress_mlp(mlp, masks, 8)
  assert isinstance(model.input_layer, block_models.BlockSparseLinear)
  assert isinstance(model.hidden_layers, block_models.BlockSparseStack)
  assert isinstance(model.output_layer, nnx.Linear)  # element mask: stays dense
  assert block_masks["input_layer"]["blocks"].get_value() is None
  assert block_masks["hidden_layers"]["blocks"].get_value() is None
  np.testing.assert_array_equal(block_masks["output_layer"]["kernel"].get_value(),
                                masks["output_layer"]["kernel"].get_value())
  x = jax.random.normal(jax.random.key(8), (6, 32))
  np.testing.assert_allclose(model(x), mlp(x), atol=1e-5)
  back, back_masks = block_models.decompress_mlp(model, block_masks)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(bits(a), bits(b)),
               nnx.state(back, nnx.Param), nnx.state(mlp, nnx.Param))
  jax.tree.map(np.testing.assert_array_equal, back_masks, masks)
  with pytest.raises(ValueError, match="layer 'output_layer'"):
    block_models.compress_mlp(mlp, masks, 8, compress=["output_layer"])


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_optimizer_steps_match_the_dense_masked_mlp(name):
  mlp, masks = _masked_mlp(jax.random.key(9), density=0.5)
  model, block_masks = block_models.compress_mlp(mlp, masks, 8)
  keys = jax.random.split(jax.random.key(10), 3)
  batches = [(jax.random.normal(k, (16, 32)), jax.random.randint(k, (16,), 0, 10)) for k in keys]
  inner = {"sgd": optax.chain(optax.add_decayed_weights(1e-2),
                              optax.sgd(0.1, momentum=0.9, nesterov=True)),
           "adamw": optax.adamw(1e-2, weight_decay=0.1)}[name]
  dense_model, _, dense_state = _train(mlp, masks, batches, inner)
  block_model, _, block_state = _train(model, block_masks, batches, inner)
  trained, _ = block_models.decompress_mlp(block_model, block_masks)
  # Three steps from the same weights on the same data: the gradients agree
  # to float32 rounding (32-term sums, ~1e-6 relative); AdamW's normalised
  # steps of 1e-2 and SGD's of 0.1 x gradient keep the weights within 1e-5.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               nnx.state(trained, nnx.Param), nnx.state(dense_model, nnx.Param))
  # Optimizer state only for the stored blocks: the hidden stack's momentum
  # (and Adam's second moment) have the blocks' shape, none the dense kernels'.
  shapes = [jnp.shape(leaf) for leaf in jax.tree.leaves(block_state.inner_state)]
  assert shapes.count(block_model.hidden_layers.blocks.shape) == {"sgd": 1, "adamw": 2}[name]
  assert mlp.hidden_layers.kernel.shape not in shapes
  assert jax.tree.leaves(dense_state.inner_state)[0].size  # the dense run trained too
  # Unused slots (layer 0 keeps one block) get no gradient: zero after
  # momentum, Adam and weight decay.
  unused = block_model.hidden_layers.layout.rows < 0
  assert unused[0].sum() == unused.shape[1] - 1
  assert np.all(np.asarray(block_model.hidden_layers.blocks[...])[unused] == 0)


def test_checkpoint_round_trip_of_a_compressed_state(tmp_path):
  mlp, masks = _masked_mlp(jax.random.key(13))
  model, block_masks = block_models.compress_mlp(mlp, masks, 8)
  params = nnx.state(model, nnx.Param)
  opt_state = eoi_jax.static_sparse(optax.adam(1e-2), block_masks).init(params)
  opt_state = jax.tree.map(lambda x: x + 0.5, opt_state)  # not all zeros
  kernel = block_sparse.compress(jnp.arange(32.0 * 32).reshape(32, 32),
                                 block_sparse.random_block_mask(jax.random.key(15), (32, 32),
                                                                16, 0.5), 16)
  state = {"params": params, "opt_state": opt_state, "kernel": kernel}
  with CheckpointStore(tmp_path / "checkpoints") as store:
    store.save(3, state)
    like = jax.tree.map(jnp.zeros_like, state)
    step, restored = store.restore_latest(like)
  assert step == 3
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               restored, state)
  assert restored["kernel"].layout == kernel.layout
