"""The method selector: every name, its densities, its masks and its errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from eoi_jax import allocation, layers, masking, methods
from eoi_jax.methods import dense, isometry, pruning
from eoi_jax.training import models


def _mlp():
  return models.build("mlp", (4, 4, 1), 10, depth=5, width=32)


def _batch(shape):
  x = jax.random.normal(jax.random.key(0), (16,) + shape)
  return x, jnp.arange(16) % 10


def _kept(masks):
  return sum(int(np.asarray(m).sum()) for m in jax.tree.leaves(masks) if np.ndim(m))


def _masked_entries_zero(out):
  for p, m in zip(jax.tree.leaves(out.params), masking.check_masks(out.params, out.masks)):
    if m is not None:
      assert not np.any(np.asarray(p)[~np.broadcast_to(np.asarray(m), p.shape)])


def test_names():
  for name in ("eoi", "dense", "uniform", "erk", "snip", "grasp", "synflow", "ai", "sao",
               "snip+eoi", "erk+eoi", "synflow+ai", "uniform+ai"):
    assert name in methods.METHODS
  assert methods.parse("ai") == ("random", "ai")
  assert methods.parse("grasp+eoi") == ("grasp", "eoi")
  with pytest.raises(ValueError, match="method must be one of"):
    methods.parse("magnitude")
  with pytest.raises(ValueError, match="method must be one of"):
    methods.parse("eoi+ai")


def test_allocator_methods_follow_their_allocator():
  model = _mlp()
  spec = model.sparsity_spec()
  params = nnx.state(model, nnx.Param)
  for name in ("uniform", "erk"):
    out = methods.initialize_model(name, jax.random.key(0), model, 0.2)
    expected = getattr(allocation, name)(params, 0.2, stacked=spec.stacked)
    realised = masking.mask_densities(params, out.masks, stacked=spec.stacked)
    for layer in layers.layout(params, stacked=spec.stacked).layers:
      # One whole entry of rounding per layer.
      assert np.all(np.abs(realised[layer.name] - expected[layer.name]) <= 0.5 / np.prod(layer.shape) + 1e-12)
    _masked_entries_zero(out)
    assert out.summary.requested_density == pytest.approx(0.2)


def test_eoi_and_dense():
  model = _mlp()
  out = methods.initialize_model("eoi", jax.random.key(0), model, 0.2)
  _masked_entries_zero(out)
  for p, m in zip(jax.tree.leaves(out.params), masking.check_masks(out.params, out.masks)):
    if m is not None:
      np.testing.assert_array_equal(np.asarray(m), np.asarray(p) != 0)  # mask == EOI support
  dense = methods.initialize_model("dense", jax.random.key(0), model, 0.2)
  assert dense.summary.density == 1.0


def test_pruning_methods_match_the_pruners_and_feed_eoi():
  model = _mlp()
  spec = model.sparsity_spec()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  batch = _batch((4, 4, 1))
  out = methods.initialize_model("snip", jax.random.key(0), model, 0.15, batch=batch)
  # Same masks and values as SNIP on the dense orthogonal values it scores
  # (drawn from the first of three subkeys).
  apply_fn = lambda p, x: nnx.merge(graphdef, p, rest)(x)
  values = dense.orthogonal_params(jax.random.split(jax.random.key(0), 3)[0], params,
                                       stacked=spec.stacked)
  direct = pruning.snip(values, apply_fn, batch, 0.15, stacked=spec.stacked)
  for a, b in zip(jax.tree.leaves(out.masks), jax.tree.leaves(direct)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for a, b in zip(jax.tree.leaves(out.params),
                  jax.tree.leaves(masking.apply_masks(values, direct))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  total = sum(l.size for l in layers.layout(params, stacked=spec.stacked).layers)
  assert _kept(out.masks) == int(np.floor(0.15 * total + 0.5))

  plus = methods.initialize_model("snip+eoi", jax.random.key(0), model, 0.15, batch=batch)
  snip_dens = masking.mask_densities(params, out.masks, stacked=spec.stacked)
  eoi_dens = masking.mask_densities(params, plus.masks, stacked=spec.stacked)
  for layer in layers.layout(params, stacked=spec.stacked).layers:
    # EOI stops within one rotation (at most 2 * max(in, out) new entries
    # per step, usually far fewer) of the pruner's density.
    step = 2 * max(layer.shape[-2:]) / np.prod(layer.shape)
    assert np.all(np.abs(eoi_dens[layer.name] - np.maximum(snip_dens[layer.name], 0)) <= step)
  _masked_entries_zero(plus)

  with pytest.raises(ValueError, match="needs batch"):
    methods.initialize_model("grasp", jax.random.key(0), model, 0.15)
  with pytest.raises(ValueError, match="needs apply_fn"):
    methods.initialize("snip", jax.random.key(0), params, 0.15, batch=batch)
  with pytest.raises(ValueError, match="needs input_shape"):
    methods.initialize("synflow", jax.random.key(0), params, 0.15,
                       apply_fn=apply_fn, stacked=spec.stacked)


def test_ai_keeps_the_mask_and_lowers_the_isometry_loss():
  model = _mlp()
  spec = model.sparsity_spec()
  masked = methods.initialize_model("erk", jax.random.key(2), model, 0.3)
  tuned = methods.initialize_model("erk+ai", jax.random.key(2), model, 0.3, ai_steps=50)
  for a, b in zip(jax.tree.leaves(masked.masks), jax.tree.leaves(tuned.masks)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  _masked_entries_zero(tuned)
  loss = lambda p: float(isometry.isometry_loss(p, stacked=spec.stacked))
  assert loss(tuned.params) < 0.9 * loss(masked.params)


def test_sao_on_an_mlp_and_a_cnn():
  model = models.build("mlp", (4, 4, 1), 10, depth=5, width=32)
  out = methods.initialize_model("sao", jax.random.key(0), model, 0.25)
  rows = {r.name: r for r in out.summary.rows}
  assert rows["hidden_layers/kernel"].realised == pytest.approx(0.25)
  assert rows["input_layer/kernel"].realised == 1.0 and rows["output_layer/kernel"].realised == 1.0
  _masked_entries_zero(out)
  degree8 = methods.initialize_model("sao", jax.random.key(0), model, 0.25, sao_degree=4)
  assert {r.name: r for r in degree8.summary.rows}["hidden_layers/kernel"].realised == 0.125
  cnn = models.build("deep_cnn", (8, 8, 3), 10, depth=5, width=8)
  conv = methods.initialize_model("sao+eoi", jax.random.key(0), cnn, 0.25)
  _masked_entries_zero(conv)
  with pytest.raises(ValueError, match="layer 'hidden_layers/kernel'.*Valid degrees"):
    methods.initialize_model("sao", jax.random.key(0), model, 0.1)


def test_selector_on_a_plain_params_dict():
  k = jax.random.split(jax.random.key(0), 2)
  params = {"fc1": {"kernel": jax.random.normal(k[0], (6, 8)), "bias": jnp.zeros(8)},
            "fc2": {"kernel": jax.random.normal(k[1], (8, 3)), "bias": jnp.zeros(3)}}
  apply_fn = lambda p, x: jnp.tanh(x @ p["fc1"]["kernel"]) @ p["fc2"]["kernel"]
  out = methods.initialize("synflow", jax.random.key(1), params, 0.5, apply_fn=apply_fn,
                           input_shape=(6,))
  assert _kept(out.masks) == int(np.floor(0.5 * 72 + 0.5))
  with pytest.raises(ValueError, match="density must be in"):
    methods.initialize("eoi", jax.random.key(1), params, 0.0)
  with pytest.raises(ValueError, match="allocator must be one of"):
    methods.initialize("random", jax.random.key(1), params, 0.5, allocator="magic")


def test_the_layer_view_is_built_once_per_call(monkeypatch):
  from eoi_jax import layers as layers_module

  built = []
  original = layers_module.Layout.__init__

  def counting(self, layer_list):
    built.append(len(layer_list))
    original(self, layer_list)

  monkeypatch.setattr(layers_module.Layout, "__init__", counting)
  model = _mlp()
  batch = _batch((4, 4, 1))
  for method in ("snip+eoi", "erk+ai", "sao+eoi", "eoi"):
    built.clear()
    methods.initialize_model(method, jax.random.key(0), model, 0.25, batch=batch, ai_steps=2)
    assert built == [3], method


@pytest.mark.parametrize("bad,error,match", [
    (jnp.zeros(3, jnp.uint32), ValueError, r"key.*uint32\[3\]"),
    (7, TypeError, r"key.*int 7"),
    (None, TypeError, r"key.*None"),
    (jax.random.split(jax.random.key(0), 2), ValueError, r"key.*batch of 2 keys"),
])
def test_every_network_entry_checks_its_key(bad, error, match):
  from eoi_jax.methods import sao
  model = _mlp()
  params = nnx.state(model, nnx.Param)
  dens = allocation.uniform(params, 0.3)
  masks = masking.full_masks(params)
  calls = [lambda k: methods.eoi_params(k, params, dens),
           lambda k: methods.initialize("erk", k, params, 0.3),
           lambda k: methods.initialize_model("eoi", k, model, 0.3),
           lambda k: masking.random_masks(k, params, dens),
           lambda k: dense.orthogonal_params(k, params),
           lambda k: dense.sparse_kaiming(k, params, masks),
           lambda k: dense.delta_orthogonal(k, (3, 3, 4, 4)),
           lambda k: dense.block_orthogonal_conv(k, (3, 3, 4, 4)),
           lambda k: sao.sao_kernel(k, (8, 8), degree=2),
           lambda k: sao.sao_params(k, params, degree=8)]
  for call in calls:
    with pytest.raises(error, match=match):
      call(bad)
