"""Tests of the dense baseline initialisers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoi_jax import allocation, masking
from eoi_jax.methods import dense as baselines


def _circular_conv(x, kernel):
  k = kernel.shape[0]
  x = jnp.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)), mode="wrap")
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("shape", [(3, 3, 8, 8), (3, 3, 4, 8), (5, 5, 6, 6), (1, 1, 3, 5)])
def test_block_orthogonal_conv_is_an_isometry(shape):
  kernel = baselines.block_orthogonal_conv(jax.random.key(0), shape, gain=1.5)
  assert kernel.shape == shape
  x = jax.random.normal(jax.random.key(1), (4, 10, 10, shape[2]))
  y = _circular_conv(x, kernel)
  norms = lambda a: np.sqrt((np.asarray(a, np.float64) ** 2).sum(axis=(1, 2, 3)))
  np.testing.assert_allclose(norms(y), 1.5 * norms(x), rtol=1e-4)
  if shape[0] > 1:  # unlike delta-orthogonal, the outer taps are used
    assert float(jnp.abs(kernel[0, 0]).max()) > 0


def test_block_orthogonal_conv_rejects_bad_shapes():
  with pytest.raises(ValueError, match="in <= out"):
    baselines.block_orthogonal_conv(jax.random.key(0), (3, 3, 8, 4))
  with pytest.raises(ValueError, match="square"):
    baselines.block_orthogonal_conv(jax.random.key(0), (3, 5, 4, 4))


def test_delta_orthogonal_and_orthogonal_params():
  kernel = baselines.delta_orthogonal(jax.random.key(0), (3, 3, 16, 8), gain=2.0)
  center = np.asarray(kernel[1, 1], np.float64)
  np.testing.assert_allclose(center.T @ center, 4.0 * np.eye(8), atol=1e-5)
  assert np.count_nonzero(kernel) == np.count_nonzero(center)
  params = {"a": {"kernel": jnp.zeros((4, 32, 32)), "bias": jnp.ones((4, 32))}}
  out = baselines.orthogonal_params(jax.random.key(0), params, stacked={"a/kernel": 1})
  k = np.asarray(out["a"]["kernel"], np.float64)
  for i in range(4):
    np.testing.assert_allclose(k[i] @ k[i].T, np.eye(32), atol=1e-5)
  assert np.all(np.asarray(out["a"]["bias"]) == 0)


def test_sparse_kaiming_scales_by_sparse_fan_in():
  params = {"fc": {"kernel": jnp.zeros((400, 300))}}
  masks = masking.random_masks(jax.random.key(0), params, allocation.uniform(params, 0.1))
  out = baselines.sparse_kaiming(jax.random.key(1), params, masks, gain=1.0)
  w, m = np.asarray(out["fc"]["kernel"]), np.asarray(masks["fc"]["kernel"])
  assert np.all(w[~m] == 0)
  # Each output unit's incoming weights have variance 1 / fan_in: summed
  # squares over a column are about 1 (mean over 300 columns within 10%).
  col_energy = (w**2).sum(axis=0)
  assert abs(col_energy.mean() - 1.0) < 0.1
