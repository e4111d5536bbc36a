"""Tests of the Flax initializers ``eoi`` and ``eoi_mask``."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import eoi_jax
from eoi_jax.initializers import eoi, eoi_mask

SHAPE_DTYPE_TABLE = [
    ((64, 32), jnp.float32),
    ((32, 64), jnp.bfloat16),
    ((3, 3, 8, 16), jnp.float32),
    ((5, 4, 4), jnp.bfloat16),  # a 1-D conv: conv=True
    ((3, 3, 3, 4, 4), jnp.float32),
]


@pytest.mark.parametrize("shape,dtype", SHAPE_DTYPE_TABLE)
def test_init_and_mask_init_agree(shape, dtype):
  key = jax.random.key(0)
  options = {} if len(shape) == 2 else {"center_density": "sqrt", "conv": True}
  kernel = eoi(0.2, gain=1.1, **options)(key, shape, dtype)
  mask = eoi_mask(0.2, gain=1.1, **options)(key, shape)
  assert kernel.shape == shape and kernel.dtype == dtype
  assert mask.shape == shape and mask.dtype == jnp.bool_
  if len(shape) == 2:
    np.testing.assert_array_equal(mask, kernel != 0)
    _, ref_mask = eoi_jax.sparse_orthogonal(key, shape, 0.2, gain=1.1)
  else:
    options.pop("conv")
    _, ref_mask = eoi_jax.sparse_delta_orthogonal(key, shape, 0.2, gain=1.1, **options)
    assert np.all(np.asarray(mask)[np.asarray(kernel) != 0])
  np.testing.assert_array_equal(mask, ref_mask)


def test_mask_init_dtype_and_float64(x64):
  key = jax.random.key(1)
  kernel = eoi(0.3)(key, (20, 30), jnp.float64)
  assert kernel.dtype == jnp.float64
  mask = eoi_mask(0.3)(key, (20, 30), jnp.float32)
  assert mask.dtype == jnp.float32
  np.testing.assert_array_equal(mask, (kernel != 0).astype(np.float32))


@pytest.mark.parametrize("arguments,error,match", [
    (dict(density=0.0), ValueError, "density"),
    (dict(density=True), TypeError, "density"),
    (dict(density="0.1"), TypeError, "density"),
    (dict(density=[0.1]), TypeError, "density"),
    (dict(density=0.5, gain=0), ValueError, "gain"),
    (dict(density=0.5, gain="2"), TypeError, "gain"),
    (dict(density=0.5, structured="no"), TypeError, "structured"),
    (dict(density=0.5, center_density="cube"), ValueError, "center_density"),
    (dict(density=0.5, in_axis=1.5), TypeError, "in_axis"),
    (dict(density=0.5, out_axis=(1, 1)), ValueError, "out_axis"),
    (dict(density=0.5, feature_group_count=0), ValueError, "feature_group_count"),
    (dict(density=0.5, feature_group_count=2.0), TypeError, "feature_group_count"),
    (dict(density=0.5, conv="yes"), TypeError, "conv"),
    (dict(density=0.5, conv=False, structured=True), ValueError, "conv"),
])
def test_factories_validate_eagerly(arguments, error, match):
  for factory in (eoi, eoi_mask):
    with pytest.raises(error, match=match):
      factory(**arguments)


def test_unknown_keywords_are_rejected():
  with pytest.raises(TypeError, match="centre_density"):
    eoi(0.5, centre_density="sqrt")


@pytest.mark.parametrize("arguments,shape,match", [
    ({}, (4,), "shape"),
    (dict(structured=True), (4, 4), "conv kernels"),
    ({}, (512, 8, 64), "out_axis=\\(-2, -1\\)"),  # attention: never a 1-D conv
    ({}, (5, 64, 16), "conv=True"),  # a 1-D conv: never its middle slice only
    ({}, (4, 128, 128), "batch_axis"),  # a stack of 4 layers
    ({}, (5, 3, 3, 64, 64), "batch_axis"),  # a stack of 3x3 convs
    (dict(conv=True), (4, 3, 3), "odd"),
    (dict(feature_group_count=3), (3, 3, 4, 64), "divide"),
    (dict(in_axis=3), (4, 4), "in_axis"),
    (dict(dtype=jnp.int32), (4, 4), "floating"),
])
def test_shapes_the_arguments_do_not_fit(arguments, shape, match):
  dtype = arguments.pop("dtype", None)
  with pytest.raises(ValueError, match=match):
    eoi(0.5, **arguments)(jax.random.key(0), shape, dtype)


def test_default_dtypes():
  key = jax.random.key(0)
  assert eoi(0.3)(key, (8, 8)).dtype == jnp.float32
  assert eoi(0.3)(key, (8, 8), None).dtype == jnp.float32
  assert eoi_mask(0.3)(key, (8, 8)).dtype == jnp.bool_


def test_float16_mask_is_the_float32_support():
  """Entries a float16 kernel rounds to zero stay in the mask (trainable)."""
  key = jax.random.key(3)
  kernel = eoi(0.9, gain=1e-4)(key, (64, 64), jnp.float16)
  mask = eoi_mask(0.9, gain=1e-4)(key, (64, 64))
  reference = eoi(0.9, gain=1e-4)(key, (64, 64), jnp.float32)
  np.testing.assert_array_equal(mask, np.asarray(reference) != 0)
  assert np.all(np.asarray(mask)[np.asarray(kernel) != 0])
  assert np.count_nonzero(kernel) < np.count_nonzero(mask)  # some underflowed


def test_nnx_linear_and_conv():
  rngs = nnx.Rngs(0)
  linear = nnx.Linear(784, 128, kernel_init=eoi(0.1), rngs=rngs)
  kernel = np.asarray(linear.kernel[...])
  assert kernel.shape == (784, 128)
  assert np.abs(kernel.T @ kernel - np.eye(128)).max() <= 2e-5
  assert abs((kernel != 0).mean() - 0.1) < 0.01
  conv = nnx.Conv(16, 32, (3, 3), kernel_init=eoi(0.1, center_density="sqrt"), rngs=rngs)
  ck = np.asarray(conv.kernel[...])
  assert ck.shape == (3, 3, 16, 32)
  assert np.count_nonzero(ck) == np.count_nonzero(ck[1, 1])
  y = conv(jnp.ones((2, 8, 8, 16)))
  assert y.shape == (2, 8, 8, 32)


def test_linen_dense_and_conv_under_jit():
  x = jnp.ones((2, 8, 8, 3))

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Conv(8, (3, 3), kernel_init=eoi(0.3))(x)
      x = x.reshape(x.shape[0], -1)
      return nn.Dense(10, kernel_init=eoi(0.2))(x)

  params = jax.jit(Net().init)(jax.random.key(0), x)["params"]
  dense = np.asarray(params["Dense_0"]["kernel"])
  assert dense.shape == (512, 10)
  assert np.abs(dense.T @ dense - np.eye(10)).max() <= 2e-5
  assert params["Conv_0"]["kernel"].shape == (3, 3, 3, 8)


def test_vmap_builds_a_stack_of_layers():
  init = eoi(0.125, gain=1.0247)
  keys = jax.random.split(jax.random.key(0), 50)
  stack = jax.jit(jax.vmap(lambda k: init(k, (128, 128))))(keys)
  assert stack.shape == (50, 128, 128)
  gram = jnp.einsum("lij,lkj->lik", stack, stack)
  assert float(jnp.abs(gram - 1.0247**2 * jnp.eye(128)).max()) <= 2e-5 * 1.0247**2
  assert len({np.asarray(stack[i]).tobytes() for i in range(50)}) == 50


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
@pytest.mark.parametrize("jit", [False, True])
def test_out_sharding_on_auto_and_explicit_meshes(axis_type, jit):
  """As ``jax.nn.initializers`` do: a NamedSharding, or a PartitionSpec of the
  mesh set with ``jax.set_mesh``, eagerly and under jit; Flax's
  ``with_partitioning`` too."""
  types = (getattr(jax.sharding.AxisType, axis_type),) * 2
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=types)
  key = jax.random.key(0)
  expected = eoi(0.2)(key, (16, 32))
  maybe_jit = jax.jit if jit else (lambda f: f)
  named = jax.sharding.NamedSharding(mesh, jax.P("data", "model"))
  for init in (eoi(0.2), eoi_mask(0.2)):
    out = maybe_jit(lambda k: init(k, (16, 32), out_sharding=named))(key)
    assert out.sharding.spec == jax.P("data", "model")
  # Same rotations and arithmetic, jitted or not: the same kernel.
  placed = maybe_jit(lambda k: eoi(0.2)(k, (16, 32), out_sharding=named))(key)
  np.testing.assert_array_equal(placed, expected)
  with jax.set_mesh(mesh):
    out = maybe_jit(lambda k: eoi(0.2)(k, (16, 32), out_sharding=jax.P(None, "model")))(key)
    assert out.sharding.spec == jax.P(None, "model")
    make = lambda: nnx.Linear(16, 32, kernel_init=nnx.with_partitioning(eoi(0.2), (None, "model")),
                              rngs=nnx.Rngs(0))
    linear = nnx.jit(make)() if jit else make()
    assert linear.kernel[...].sharding.spec == jax.P(None, "model")
