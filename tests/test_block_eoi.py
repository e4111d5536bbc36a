"""Tests of block EOI: exactly orthogonal kernels whose support is whole b x b blocks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eoi_jax
from eoi_jax import block_givens, chain, givens

EPS32 = float(np.finfo(np.float32).eps)


def _gram_error(weight, gain=1.0):
  w = np.asarray(weight, np.float64)
  gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
  return np.abs(gram - gain**2 * np.eye(gram.shape[0])).max()


def _tolerance(block, num_rotations, gain=1.0):
  """Each step's Q is orthogonal to within about eps sqrt(2b) (its columns'
  dot products have 2b terms), and applying it rounds every entry by eps
  relative over 2b-term sums; independent steps' errors add as a random walk:
  2 eps sqrt(2b (n + 1)) (measured: at most a fifth of it)."""
  return 2 * EPS32 * math.sqrt(2 * block * (num_rotations + 1)) * gain**2


def _blocks(mask, block):
  """The block grid of a mask, after checking it is constant on blocks."""
  mask = np.asarray(mask)
  tiles = mask.reshape(*mask.shape[:-2], mask.shape[-2] // block, block,
                       mask.shape[-1] // block, block)
  grid = tiles.any(axis=(-3, -1))
  np.testing.assert_array_equal(grid, tiles.all(axis=(-3, -1)))
  return grid


@pytest.mark.parametrize("shape,block,density", [
    ((128, 128), 16, 0.25),  # square
    ((256, 64), 32, 0.5),  # tall
    ((96, 160), 16, 0.4),  # wide, block counts 6 x 10
    ((64, 512), 8, 0.05),
    ((64, 64), 8, 1.0),
    ((32, 32), 32, 0.5),  # one block: the identity
])
def test_orthogonal_block_support_is_the_block_level_scalar_run(shape, block, density):
  key, gain = jax.random.key(0), 1.5
  weight, mask = eoi_jax.sparse_orthogonal(key, shape, density, gain=gain, block=block)
  assert weight.shape == shape and mask.shape == shape and mask.dtype == jnp.bool_
  rows, cols = min(shape), max(shape)
  scalar = givens.givens_orthogonal(key, rows // block, cols // block, density)
  n = int(scalar.num_rotations)
  assert _gram_error(weight, gain) <= _tolerance(block, n, gain)
  # The mask is whole blocks, holds every non-zero, and its block grid is the
  # support of the same key's scalar run at block level.
  grid = _blocks(mask, block)
  assert np.all(np.asarray(mask)[np.asarray(weight) != 0])
  assert np.all(np.asarray(weight)[~np.asarray(mask)] == 0)
  scalar_support = np.asarray(scalar.matrix) != 0
  np.testing.assert_array_equal(grid, scalar_support.T if shape[0] >= shape[1] else scalar_support)


@pytest.mark.parametrize("rows,cols,block,density", [(64, 256, 8, 0.1), (96, 96, 8, 0.3)])
def test_block_density_within_half_a_step_of_the_target(rows, cols, block, density):
  # The stopping rule of scalar EOI at block level: the realised block count
  # is within half of the deciding step's growth of density x blocks.
  key = jax.random.key(2)
  result = block_givens.block_orthogonal(key, rows, cols, block, density)
  rb, cb, n = rows // block, cols // block, int(result.num_rotations)
  traj = np.asarray(givens.support_trajectory(key, rb, cb, n + 1))
  nnzb = int(result.nnzb)
  assert traj[n] == nnzb
  target = math.ceil(density * rb * cb - 1e-9)
  jump = traj[n] - traj[n - 1] if n > 0 and traj[n] >= target else traj[n + 1] - traj[n]
  assert abs(nnzb - density * rb * cb) <= jump / 2 + 1e-9


def test_matrix_is_its_block_steps_replayed():
  key = jax.random.key(7)
  result = block_givens.block_orthogonal(key, 96, 160, 16, 0.4)
  matrix, support = block_givens.apply_block_steps(key, 96, 160, 16, int(result.num_rotations))
  np.testing.assert_array_equal(matrix, result.matrix)
  np.testing.assert_array_equal(support, result.block_support)


def test_mean_block_density_follows_the_chain_on_block_columns():
  # The block support's rows follow the row chain on cols / b columns, so the
  # mean mask density after t steps is chain.expected_density(cols, t, block).
  rows, cols, block, n_keys = 32, 96, 8, 200
  keys = jax.random.split(jax.random.key(5), n_keys)
  for steps in (4, 12, 30):
    _, support = jax.vmap(
        lambda k: block_givens.apply_block_steps(k, rows, cols, block, steps))(keys)
    density = np.asarray(support, np.float64).mean(axis=(1, 2))
    expected = chain.expected_density(cols, steps, block)[-1]
    stderr = density.std(ddof=1) / math.sqrt(n_keys)
    assert abs(density.mean() - expected) <= 5 * stderr + 1e-12
  # The scalar law at the element count would be far off: blocks matter.
  assert abs(chain.expected_density(cols, 30)[-1] - chain.expected_density(cols, 30, block)[-1]) > 0.2


def test_mean_step_count_is_the_block_level_hitting_time():
  # One block row: the stopping step is the row chain's hitting time of
  # ceil(d c / b) on c / b columns.
  block, cols, density, n_keys = 4, 64, 0.5, 300
  mean, var = chain.expected_row_hitting_time(cols // block, 8)
  keys = jax.random.split(jax.random.key(11), n_keys)
  used = jax.vmap(lambda k: block_givens.block_orthogonal(
      k, block, cols, block, density).num_rotations)(keys)
  used = np.asarray(used, np.float64)
  assert abs(used.mean() - mean) <= 5 * math.sqrt(var / n_keys)


def test_haar_blocks_are_orthogonal_and_unbiased():
  # Without the sign fix the QR factor's diagonal is biased (LAPACK makes
  # R's diagonal negative, or positive): its mean would be far from 0.
  keys = jax.random.split(jax.random.key(1), 400)
  qs = np.asarray(jax.vmap(lambda k: block_givens.haar_orthogonal(k, 8))(keys), np.float64)
  gram = np.einsum("kij,kil->kjl", qs, qs)
  assert np.abs(gram - np.eye(8)).max() <= 8 * EPS32 * 8
  diagonal = qs[:, np.arange(8), np.arange(8)].ravel()
  # Each Haar entry has mean 0 and variance 1/8.
  assert abs(diagonal.mean()) <= 5 * math.sqrt(1 / 8 / diagonal.size)
  assert abs((qs**2).mean() - 1 / 8) <= 0.01


def test_block_one_is_scalar_eoi():
  key = jax.random.key(4)
  scalar = eoi_jax.sparse_orthogonal(key, (48, 80), 0.3)
  one = eoi_jax.sparse_orthogonal(key, (48, 80), 0.3, block=1)
  for a, b in zip(scalar, one):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape,block", [((784, 1024), 32), ((100, 64), 8), ((3, 3, 24, 20), 8)])
def test_sizes_not_multiples_of_the_block_are_refused(shape, block):
  with pytest.raises(ValueError, match=rf"block={block}.*\({shape[-2]}, {shape[-1]}\)"):
    if len(shape) == 2:
      eoi_jax.sparse_orthogonal(jax.random.key(0), shape, 0.1, block=block)
    else:
      eoi_jax.sparse_delta_orthogonal(jax.random.key(0), shape, 0.1, block=block)


@pytest.mark.parametrize("block,error", [(0, ValueError), (-8, ValueError), (8.0, TypeError),
                                         (True, TypeError), ("8", TypeError)])
def test_bad_block_values_are_refused(block, error):
  with pytest.raises(error, match="block"):
    eoi_jax.sparse_orthogonal(jax.random.key(0), (64, 64), 0.1, block=block)


def test_jit_vmap_and_eval_shape():
  shape, density, block = (128, 128), 0.25, 16
  make = lambda k: eoi_jax.sparse_orthogonal(k, shape, density, block=block)
  keys = jax.random.split(jax.random.key(0), 3)
  weights, masks = jax.jit(jax.vmap(make))(keys)
  for i in range(3):
    w, m = make(keys[i])
    np.testing.assert_allclose(weights[i], w, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(masks[i], m)
  out = jax.eval_shape(lambda k: eoi_jax.sparse_orthogonal(k, (4096, 2048), 0.1, block=64),
                       keys[0])
  assert out[0].shape == (4096, 2048) and out[1].dtype == jnp.bool_


def test_one_program_serves_a_size_bucket():
  compiled = []

  def listener(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      compiled.append(event)

  # 12 x 16 and 14 x 16 blocks share the 16 x 16 bucket, at any density of
  # one step bucket; a shape only this test uses.
  eoi_jax.sparse_orthogonal(jax.random.key(0), (72, 96), 0.3, block=6)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    w, _ = eoi_jax.sparse_orthogonal(jax.random.key(1), (96, 84), 0.35, block=6)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiled == []
  assert _gram_error(w) <= 1e-5


@pytest.mark.parametrize("shape,density,center_density", [
    ((3, 3, 64, 32), 0.1, 0.5),
    ((3, 3, 32, 32), 0.2, None),
    ((5, 64, 48), 0.3, "sqrt"),
])
def test_conv_centre_is_block_eoi_and_mask_is_blocks_per_tap(shape, density, center_density):
  key, block = jax.random.key(5), 16
  kernel, mask = eoi_jax.sparse_delta_orthogonal(key, shape, density, gain=1.3, block=block,
                                                 center_density=center_density)
  kernel, mask = np.asarray(kernel), np.asarray(mask)
  centre = tuple(k // 2 for k in shape[:-2])
  off_centre = kernel.copy()
  off_centre[centre] = 0
  assert np.all(off_centre == 0)
  assert np.all(mask[kernel != 0])
  grid = _blocks(mask, block)
  taps = math.prod(shape[:-2])
  d_center = eoi_jax.center_density_for(density, taps, center_density)
  ref, ref_mask = eoi_jax.sparse_orthogonal(jax.random.split(key)[0], shape[-2:], d_center,
                                            gain=1.3, block=block)
  np.testing.assert_array_equal(kernel[centre], ref)
  assert np.all(mask[centre][np.asarray(ref_mask)])  # added blocks may land on the centre too
  blocks = taps * (shape[-2] // block) * (shape[-1] // block)
  centre_blocks = int(_blocks(ref_mask, block).sum())
  assert int(grid.sum()) == max(round(density * blocks), centre_blocks)
  assert _gram_error(kernel[centre], 1.3) <= 1e-5


def test_structured_conv_mask_is_the_centre_blocks_on_every_tap():
  kernel, mask = eoi_jax.sparse_delta_orthogonal(jax.random.key(1), (3, 3, 32, 48), 0.3,
                                                 structured=True, block=8)
  np.testing.assert_array_equal(mask, np.broadcast_to(np.asarray(mask)[1, 1], mask.shape))
  _blocks(mask, 8)


def test_batch_of_layers_each_its_own_key_and_density():
  keys = jax.random.split(jax.random.key(9), 3)
  densities = np.array([0.2, 0.25, 0.3])
  kernels, masks = eoi_jax.eoi_batch(keys, (64, 128), densities, block=8)
  for i in range(3):
    w, m = eoi_jax.sparse_orthogonal(keys[i], (64, 128), densities[i], block=8)
    np.testing.assert_allclose(kernels[i], w, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(masks[i], m)


def test_initializers_kernel_and_mask_match_per_matrix():
  key = jax.random.key(3)
  # Four heads of (64, 32): each its own block EOI matrix.
  init = eoi_jax.initializers.eoi(0.25, batch_axis=1, block=16)
  mask_init = eoi_jax.initializers.eoi_mask(0.25, batch_axis=1, block=16)
  kernel, mask = init(key, (64, 4, 32)), mask_init(key, (64, 4, 32))
  assert kernel.shape == mask.shape == (64, 4, 32) and mask.dtype == jnp.bool_
  for head in range(4):
    assert _gram_error(np.asarray(kernel)[:, head]) <= 1e-5
    _blocks(np.asarray(mask)[:, head], 16)
  assert np.all(np.asarray(mask)[np.asarray(kernel) != 0])
  with pytest.raises(ValueError, match=r"block=16.*\(64, 30\).*\(64, 4, 30\)"):
    init(key, (64, 4, 30))
  with pytest.raises(TypeError, match="block"):
    eoi_jax.initializers.eoi(0.25, block=16.0)


def _mlp_params():
  zeros = lambda *shape: jnp.zeros(shape, jnp.float32)
  return {"l1": {"kernel": zeros(24, 64), "bias": zeros(64)},
          "l2": {"kernel": zeros(64, 64), "bias": zeros(64)},
          "out": {"kernel": zeros(64, 10), "bias": zeros(10)}}


def test_network_block_eoi_where_the_block_divides_the_layer():
  out = eoi_jax.initialize("eoi", jax.random.key(0), _mlp_params(), 0.25, block=16)
  weights, masks = out.params, out.masks
  # l2 (64 x 64) takes 16 x 16 blocks; l1 (24 in) and out (10 out) stay scalar EOI.
  grid = _blocks(masks["l2"]["kernel"], 16)
  assert int(grid.sum()) == 4  # a quarter of 4 x 4 blocks
  assert _gram_error(weights["l2"]["kernel"]) <= 1e-5
  for name in ("l1", "out"):
    np.testing.assert_array_equal(masks[name]["kernel"], np.asarray(weights[name]["kernel"]) != 0)
    assert _gram_error(weights[name]["kernel"]) <= 2e-5
  assert masks["l1"]["bias"] is None


def test_random_block_masks_and_their_eoi_values():
  key, params = jax.random.key(1), _mlp_params()
  plain = eoi_jax.initialize("uniform", key, params, 0.25)
  blocked = eoi_jax.initialize("uniform", key, params, 0.25, block=16)
  assert int(_blocks(blocked.masks["l2"]["kernel"], 16).sum()) == 4
  for name in ("l1", "out"):  # the element layers get the plain method's masks
    np.testing.assert_array_equal(blocked.masks[name]["kernel"], plain.masks[name]["kernel"])
  both = eoi_jax.initialize("uniform+eoi", key, params, 0.25, block=16)
  assert int(_blocks(both.masks["l2"]["kernel"], 16).sum()) == 4
  assert _gram_error(both.params["l2"]["kernel"]) <= 1e-5


def test_network_block_errors():
  params = _mlp_params()
  with pytest.raises(ValueError, match="block applies to"):
    eoi_jax.initialize("snip", jax.random.key(0), params, 0.25, block=16,
                       apply_fn=lambda p, x: x, batch=(jnp.zeros((2, 24)), jnp.zeros(2, int)))
  with pytest.raises(ValueError, match=r"block=7 divides .* no layer"):
    eoi_jax.initialize("eoi", jax.random.key(0), params, 0.25, block=7)


def test_config_block_field():
  from eoi_jax.training.config import make_config

  config = make_config("digits_smoke", init="uniform", block="8")
  assert config.block == 8 and "block=8" in config.run_dir
  with pytest.raises(ValueError, match="block needs an init"):
    make_config("digits_smoke", init="snip", block=8)
  with pytest.raises(ValueError, match="block must be >= 1"):
    make_config("digits_smoke", block=0)


def test_block_experiment_grid_plans_without_data(capsys):
  from experiments import _common, block_eoi

  assert _common.main(block_eoi.EXPERIMENT, ["--check"]) == 0
  assert "114 runs in the grid, 114 OK, 0 dropped" in capsys.readouterr().out
  quick = block_eoi.grids(True, 1)
  assert quick[0]["block"] == [None, 8, 32] and quick[0]["init"] == ["eoi", "uniform"]


def test_runs_saved_before_the_block_field_are_the_same_runs():
  from eoi_jax.training import rundir

  saved = {"density": 0.1, "init": "eoi"}  # a config.json written before `block` existed
  assert rundir.config_changes(saved, {"density": 0.1, "init": "eoi", "block": None}) == []
  assert rundir.config_changes(saved, {"density": 0.1, "init": "eoi", "block": 8}) == ["block"]


def test_plan_refuses_a_block_that_fits_no_layer():
  from eoi_jax.training import plan
  from eoi_jax.training.config import make_config

  fits = make_config("digits_smoke", init="eoi", block=16)  # 64-wide hidden layers
  assert plan.plan(fits).densities is not None
  with pytest.raises(plan.Infeasible, match="block=7"):
    plan.plan(make_config("digits_smoke", init="eoi", block=7))


def test_block_eoi_kernels_compress_to_their_blocks():
  # The mask is a block mask, so the kernel stores as its blocks alone and
  # multiplies as the dense kernel does.
  from eoi_jax import block_sparse

  weight, mask = eoi_jax.sparse_orthogonal(jax.random.key(6), (128, 64), 0.25, block=16)
  compressed = block_sparse.compress(weight, mask, 16)
  assert compressed.nnzb == int(mask.sum()) // 16**2 == 8
  np.testing.assert_array_equal(block_sparse.decompress(compressed), weight)
  x = jax.random.normal(jax.random.key(7), (4, 128))
  np.testing.assert_allclose(block_sparse.block_matmul(x, compressed), x @ weight, atol=1e-5)
