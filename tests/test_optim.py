"""Tests of the static-sparse optax transform."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import eoi_jax
from eoi_jax import allocation, masking


def _mlp_params(key):
  k1, k2, k3 = jax.random.split(key, 3)
  return {
      "fc1": {"kernel": jax.random.normal(k1, (16, 32)) / 4, "bias": jnp.zeros((32,))},
      "fc2": {"kernel": jax.random.normal(k2, (32, 32)) / 6, "bias": jnp.zeros((32,))},
      "fc3": {"kernel": jax.random.normal(k3, (32, 4)) / 6, "bias": jnp.zeros((4,))},
  }


def _loss(params, x, y):
  h = jnp.tanh(x @ params["fc1"]["kernel"] + params["fc1"]["bias"])
  h = jnp.tanh(h @ params["fc2"]["kernel"] + params["fc2"]["bias"])
  return jnp.mean((h @ params["fc3"]["kernel"] + params["fc3"]["bias"] - y) ** 2)


INNER = {
    "sgd_nesterov_l2": lambda: optax.chain(
        optax.add_decayed_weights(1e-2), optax.sgd(0.05, momentum=0.9, nesterov=True)),
    "adamw": lambda: optax.adamw(1e-2, weight_decay=0.1),
    "adam": lambda: optax.adam(1e-2),
    "muon": lambda: optax.contrib.muon(1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("name", sorted(INNER))
def test_masked_entries_stay_exactly_zero_for_100_steps(name):
  params = _mlp_params(jax.random.key(0))
  dens = allocation.uniform(params, 0.3)
  masks = masking.random_masks(jax.random.key(1), params, dens)
  params = masking.apply_masks(params, masks)
  start = params
  tx = eoi_jax.static_sparse(INNER[name](), masks)
  state = tx.init(params)
  x = jax.random.normal(jax.random.key(2), (64, 16))
  y = jax.random.normal(jax.random.key(3), (64, 4))

  @jax.jit
  def step(params, state):
    grads = jax.grad(_loss)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(100):
    params, state = step(params, state)
  for layer in ("fc1", "fc2", "fc3"):
    w, m = np.asarray(params[layer]["kernel"]), np.asarray(masks[layer]["kernel"])
    w0 = np.asarray(start[layer]["kernel"])
    assert np.all(w[~m] == 0.0)
    # Unmasked entries move (a few can have exactly zero gradient: units
    # whose incoming weights are all pruned output tanh(0) = 0).
    assert np.mean(w[m] != w0[m]) > 0.75
  assert float(_loss(params, x, y)) < float(_loss(start, x, y))


def test_moments_of_pruned_entries_are_zero():
  params = _mlp_params(jax.random.key(0))
  masks = masking.random_masks(jax.random.key(1), params, allocation.uniform(params, 0.2))
  params = masking.apply_masks(params, masks)
  tx = eoi_jax.static_sparse(optax.adam(1e-2), masks)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  _, state = tx.update(grads, state, params)
  adam_state = state.inner_state[0]
  m = np.asarray(masks["fc2"]["kernel"])
  assert np.all(np.asarray(adam_state.mu["fc2"]["kernel"])[~m] == 0)
  assert np.all(np.asarray(adam_state.nu["fc2"]["kernel"])[~m] == 0)
  assert np.all(np.asarray(adam_state.mu["fc2"]["kernel"])[m] != 0)


class _Net(nnx.Module):
  def __init__(self, rngs):
    self.fc1 = nnx.Linear(16, 32, rngs=rngs)
    self.fc2 = nnx.Linear(32, 4, rngs=rngs)

  def __call__(self, x):
    return self.fc2(jnp.tanh(self.fc1(x)))


def test_with_nnx_optimizer_under_jit():
  model = _Net(nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  init = eoi_jax.eoi_params(jax.random.key(0), state, allocation.uniform(state, 0.25))
  nnx.update(model, init.params)
  optimizer = nnx.Optimizer(
      model, eoi_jax.sparse_optimizer("sgd", 0.05, init.masks, weight_decay=1e-3), wrt=nnx.Param
  )
  x, y = jnp.ones((8, 16)), jnp.zeros((8, 4))

  @nnx.jit
  def step(model, optimizer):
    grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads)

  for _ in range(20):
    step(model, optimizer)
  kernel = np.asarray(model.fc1.kernel[...])
  mask = np.asarray(jax.tree.leaves(init.masks["fc1"]["kernel"])[0])
  assert np.all(kernel[~mask] == 0) and np.all(kernel[mask] != 0)


def test_sharded_params_and_masks():
  devices = np.array(jax.devices())
  assert devices.size == 8
  mesh = jax.sharding.Mesh(devices.reshape(2, 4), ("data", "model"))
  params = _mlp_params(jax.random.key(0))
  masks = masking.random_masks(jax.random.key(1), params, allocation.uniform(params, 0.3))
  params = masking.apply_masks(params, masks)

  def shard(tree):
    return jax.tree.map(
        lambda a: jax.device_put(a, jax.sharding.NamedSharding(
            mesh, jax.P(None, "model") if a.ndim == 2 else jax.P())), tree)

  params, masks = shard(params), shard(masks)
  tx = eoi_jax.static_sparse(optax.adamw(1e-2, weight_decay=0.1), masks)
  state = tx.init(params)
  x = jax.device_put(jnp.ones((8, 16)), jax.sharding.NamedSharding(mesh, jax.P("data")))
  y = jnp.zeros((8, 4))

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(_loss)(params, x, y), state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(10):
    params, state = step(params, state)
  kernel = params["fc2"]["kernel"]
  assert kernel.sharding.spec == jax.P(None, "model")
  m = np.asarray(masks["fc2"]["kernel"])
  assert np.all(np.asarray(kernel)[~m] == 0)


def test_masks_live_in_the_state_and_structure_is_checked():
  params = _mlp_params(jax.random.key(0))
  masks = masking.full_masks(params)
  state = eoi_jax.static_sparse(optax.sgd(0.1), masks).init(params)
  assert isinstance(state, eoi_jax.StaticSparseState)
  assert jax.tree.structure(state.masks) == jax.tree.structure(masks)
  with pytest.raises(ValueError):
    eoi_jax.static_sparse(optax.sgd(0.1), {"fc1": masks["fc1"]}).init(params)
  with pytest.raises(ValueError, match="optimizer must be one of"):
    eoi_jax.sparse_optimizer("lion", 0.1, masks)


def test_mask_shapes_and_dtypes_are_checked_at_init_naming_the_layer():
  params = _mlp_params(jax.random.key(0))  # fc1/kernel is (16, 32)
  good = masking.full_masks(params)
  for bad, error, match in [
      (jnp.ones((3, 3), bool), ValueError, r"fc1/kernel.*\(3, 3\).*\(16, 32\)"),
      (jnp.ones((32,), bool), ValueError, r"fc1/kernel.*\(32,\).*\(16, 32\)"),  # no broadcasting
      (jnp.ones((16, 32), jnp.float32), TypeError, r"fc1/kernel.*bool.*float32"),
      (False, ValueError, r"fc1/kernel.*None"),
  ]:
    masks = {**good, "fc1": {**good["fc1"], "kernel": bad}}
    for check in (lambda: eoi_jax.static_sparse(optax.sgd(0.1), masks).init(params),
                  lambda: masking.apply_masks(params, masks),
                  lambda: masking.check_masks(params, masks)):
      with pytest.raises(error, match=match):
        check()


class _ShardedNet(nnx.Module):
  def __init__(self, rngs):
    part = nnx.with_partitioning
    self.fc = nnx.Linear(16, 32, kernel_init=part(nnx.initializers.lecun_normal(), (None, "model")),
                         bias_init=part(nnx.initializers.zeros_init(), ("model",)), rngs=rngs)

  def __call__(self, x):
    return self.fc(x)


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_scalar_true_for_unmasked_leaves_works_on_sharded_models(axis_type):
  # Mask trees hold None for unmasked leaves; a scalar True there (an older
  # convention) is read as None, so the optimizer state holds no mask for a
  # sharded bias (a scalar under the bias's sharding failed to place).
  types = (getattr(jax.sharding.AxisType, axis_type),) * 2
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=types)
  with jax.set_mesh(mesh):
    model = _ShardedNet(nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    init = eoi_jax.eoi_params(jax.random.key(0), state, allocation.uniform(state, 0.25))
    nnx.update(model, init.params)
    legacy = jax.tree.map(lambda m: True if m is None else m, init.masks,
                          is_leaf=lambda m: m is None)
    optimizer = nnx.Optimizer(model, eoi_jax.static_sparse(optax.adam(0.05), legacy),
                              wrt=nnx.Param)
    assert sum(np.ndim(m) for m in jax.tree.leaves(optimizer.opt_state.masks)) == 2  # the kernel
    x = jnp.ones((8, 16))

    @nnx.jit
    def step(model, optimizer):
      grads = nnx.grad(lambda m: jnp.mean((m(x) - 1.0) ** 2))(model)
      optimizer.update(model, grads)

    for _ in range(3):
      step(model, optimizer)
  kernel = np.asarray(model.fc.kernel[...])
  mask = np.asarray(jax.tree.leaves(init.masks["fc"]["kernel"])[0])
  assert model.fc.bias[...].sharding.spec == jax.P("model")
  assert np.all(kernel[~mask] == 0) and np.any(np.asarray(model.fc.bias[...]) != 0)
