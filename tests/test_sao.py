"""SAO: degree-regular supports, orthogonal values, conv centre taps, restrictions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import nnx

from eoi_jax import layers, masking
from eoi_jax.methods import sao
from eoi_jax.training import models


def _wide_center(weight, shape):
  center = np.asarray(weight[tuple(k // 2 for k in shape[:-2])], np.float64)
  return center if shape[-2] <= shape[-1] else center.T  # (rows, cols)


def test_valid_degrees_table():
  assert sao.valid_degrees((784, 100)) == (196, 392, 784)
  assert sao.valid_degrees((128, 128)) == (1, 2, 4, 8, 16, 32, 64, 128)
  assert sao.valid_degrees((3, 3, 16, 32)) == (2, 4, 8, 16, 32)
  assert sao.valid_degrees((100, 10)) == (10, 20, 50, 100)
  assert sao.degree_for_density((128, 128), 0.125) == 16
  assert sao.degree_for_density((64, 256), 0.03) == 8  # round(7.68)


@pytest.mark.parametrize("shape,degree", [
    ((128, 128), 16), ((128, 128), 1), ((128, 128), 128), ((256, 64), 8), ((64, 256), 32),
    ((3, 3, 16, 32), 4), ((1, 1, 16, 32), 2), ((3, 3, 32, 16), 8), ((5, 64, 64), 4),
])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_degrees_blocks_and_orthogonality(shape, degree, dtype):
  gain = 1.5
  weight, mask = sao.sao_kernel(jax.random.key(3), shape, degree=degree, gain=gain, dtype=dtype)
  assert weight.shape == shape and weight.dtype == dtype and mask.dtype == jnp.bool_
  a = _wide_center(weight, shape)
  rows, cols = a.shape
  support = a != 0
  # Exact degrees: d per row, rows * d / cols per column.
  assert np.all(support.sum(1) == degree)
  assert np.all(support.sum(0) == rows * degree // cols)
  # Blocks: rows share their support with exactly rows*d/cols rows and are
  # disjoint from every other row's.
  overlap = support.astype(int) @ support.T.astype(int)
  assert set(np.unique(overlap)) <= {0, degree}
  assert np.all((overlap == degree).sum(1) == rows * degree // cols)
  # Orthonormal rows. Rounding each entry to the dtype (unit u) moves every
  # entry of A A^T by at most (2u + u^2) |a_i| |a_j| = (2u + u^2) gain^2;
  # the float32 QR behind the values adds a few degree * 2^-24.
  u = float(jnp.finfo(dtype).eps) / 2
  atol = gain**2 * (2 * u + u**2 + 10 * degree * 2.0**-24)
  np.testing.assert_allclose(a @ a.T, gain**2 * np.eye(rows), atol=atol)
  # The mask is the centre tap's support, broadcast over all taps; only the
  # centre tap has values.
  center_mask = np.asarray(mask[tuple(k // 2 for k in shape[:-2])])
  np.testing.assert_array_equal(center_mask, np.asarray(weight[tuple(k // 2 for k in shape[:-2])]) != 0)
  np.testing.assert_array_equal(np.asarray(mask), np.broadcast_to(center_mask, shape))
  assert np.count_nonzero(np.asarray(weight, np.float32)) == rows * degree
  assert float(np.asarray(mask).mean()) == pytest.approx(degree / cols)


def test_float64_is_orthogonal_to_rounding(x64):
  w, _ = sao.sao_kernel(jax.random.key(0), (96, 192), degree=12, dtype=jnp.float64)
  np.testing.assert_allclose(np.asarray(w) @ np.asarray(w).T, np.eye(96), atol=1e-13)


def test_jit_vmap_eval_shape_and_keys():
  make = lambda k: sao.sao_kernel(k, (3, 3, 32, 32), degree=4)
  w, m = jax.jit(jax.vmap(make))(jax.random.split(jax.random.key(0), 3))
  assert w.shape == (3, 3, 3, 32, 32)
  assert not np.array_equal(np.asarray(m[0]), np.asarray(m[1]))  # each key its own graph
  w0, m0 = make(jax.random.split(jax.random.key(0), 3)[0])
  np.testing.assert_array_equal(np.asarray(w[0]), np.asarray(w0))
  shapes = jax.eval_shape(make, jax.random.key(0))
  assert shapes[0].shape == (3, 3, 32, 32) and shapes[1].dtype == jnp.bool_


def test_errors_name_the_argument_and_valid_degrees():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match=r"degree 78.*Valid degrees: 196 \(density 0.25\)"):
    sao.sao_kernel(key, (784, 100), density=0.1)
  with pytest.raises(ValueError, match="degree=3"):
    sao.sao_kernel(key, (32, 32), degree=3)
  with pytest.raises(ValueError, match="exactly one of degree and density"):
    sao.sao_kernel(key, (32, 32))
  with pytest.raises(ValueError, match="exactly one of degree and density"):
    sao.sao_kernel(key, (32, 32), degree=4, density=0.125)
  with pytest.raises(ValueError, match="degree must be a positive int"):
    sao.sao_kernel(key, (32, 32), degree=4.0)
  with pytest.raises(ValueError, match="density must be in"):
    sao.sao_kernel(key, (32, 32), density=1.5)
  with pytest.raises(ValueError, match="odd spatial"):
    sao.sao_kernel(key, (2, 2, 32, 32), degree=4)
  with pytest.raises(ValueError, match="gain"):
    sao.sao_kernel(key, (32, 32), degree=4, gain=0.0)


def test_whole_network_keeps_the_ends_dense():
  model = models.build("mlp", (28, 28, 1), 10, depth=6, width=128)
  spec = model.sparsity_spec()
  params = nnx.state(model, nnx.Param)
  with pytest.raises(ValueError, match="layer 'input_layer/kernel'.*Valid degrees"):
    sao.sao_params(jax.random.key(0), params, degree=16, stacked=spec.stacked)
  with pytest.raises(ValueError, match="dense names no maskable layers"):
    sao.sao_params(jax.random.key(0), params, degree=16, dense=["nope"], stacked=spec.stacked)
  out = sao.sao_params(jax.random.key(0), params, density=0.125, dense=spec.ends,
                       bias_std=0.01, stacked=spec.stacked)
  leaves = dict(layers.named_leaves(out.params))
  masks = dict(layers.named_leaves(out.masks))
  stack = np.asarray(leaves["hidden_layers/kernel"])
  assert stack.shape == (4, 128, 128)
  for w, m in zip(stack, np.asarray(masks["hidden_layers/kernel"])):
    np.testing.assert_array_equal(m, w != 0)
    assert np.all(m.sum(0) == 16) and np.all(m.sum(1) == 16)
    np.testing.assert_allclose(w.T @ w, np.eye(128), atol=1e-5)
  assert not np.array_equal(stack[0] != 0, stack[1] != 0)
  for end in spec.ends:
    assert np.all(np.asarray(masks[end]))
    w = np.asarray(leaves[end])
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    np.testing.assert_allclose(gram, np.eye(min(w.shape)), atol=1e-5)
  assert 0 < float(np.std(leaves["hidden_layers/bias"])) < 0.02
  rows = {r.name: r for r in out.summary.rows}
  assert rows["hidden_layers/kernel"].realised == pytest.approx(0.125)
  assert rows["input_layer/kernel"].requested == 1.0


def test_whole_network_conv():
  model = models.build("deep_cnn", (8, 8, 3), 10, depth=5, width=16)
  spec = model.sparsity_spec()
  params = nnx.state(model, nnx.Param)
  out = sao.sao_params(jax.random.key(1), params, degree=4, dense=spec.ends, stacked=spec.stacked)
  for layer in layers.layout(params, stacked=spec.stacked).layers:
    w = np.asarray(dict(layers.named_leaves(out.params))[layer.name]).reshape(
        (-1,) + layer.shape)
    m = np.asarray(dict(layers.named_leaves(out.masks))[layer.name]).reshape(w.shape)
    for kernel, kmask in zip(w, m):
      center = kernel[tuple(k // 2 for k in layer.shape[:-2])]
      if layer.name in spec.ends:
        assert kmask.all()
      else:
        assert np.all((center != 0).sum(1) == 4 * center.shape[1] // max(center.shape))
        np.testing.assert_array_equal(kmask, np.broadcast_to(center != 0, kmask.shape))
      off_center = kernel.copy()
      off_center[tuple(k // 2 for k in layer.shape[:-2])] = 0
      assert not off_center.any()
