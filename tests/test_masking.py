"""Tests of mask trees, allocators, mask makers and summaries."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from eoi_jax import allocation, layers, masking, summary


def _params():
  return {
      "conv1": {"kernel": jnp.ones((3, 3, 3, 16)), "bias": jnp.ones((16,))},
      "bn": {"scale": jnp.ones((16,)), "bias": jnp.zeros((16,))},
      "dense1": {"kernel": jnp.ones((256, 100)), "bias": jnp.ones((100,))},
      "dense2": {"kernel": jnp.ones((100, 10)), "bias": jnp.ones((10,))},
  }


class _Net(nnx.Module):
  def __init__(self, rngs):
    self.fc1 = nnx.Linear(30, 40, rngs=rngs)
    self.norm = nnx.LayerNorm(40, rngs=rngs)
    self.fc2 = nnx.Linear(40, 5, rngs=rngs)


def test_default_rule_masks_kernels_only():
  names = [l.name for l in layers.layout(_params()).layers]
  assert names == ["conv1/kernel", "dense1/kernel", "dense2/kernel"]
  state = nnx.state(_Net(nnx.Rngs(0)), nnx.Param)
  assert [l.name for l in layers.layout(state).layers] == ["fc1/kernel", "fc2/kernel"]


def test_user_filter_and_stacks():
  params = {"stack": {"kernel": jnp.ones((5, 8, 8))}, "head": {"kernel": jnp.ones((8, 2))}}
  layer_list = layers.layout(params, stacked={"stack/kernel": 1}).layers
  assert layer_list[1] == layers.Layer("stack/kernel", (8, 8), (5,))
  only_head = layers.layout(params, filter=lambda name, leaf: name.startswith("head")).layers
  assert [l.name for l in only_head] == ["head/kernel"]
  with pytest.raises(ValueError, match="stacked"):
    layers.layout(params, stacked={"stack/kernel": 2}).layers


def test_mask_tree_structure_and_none_elsewhere():
  params = _params()
  masks = masking.full_masks(params)
  assert len(masking.check_masks(params, masks)) == len(jax.tree.leaves(params))
  assert masks["conv1"]["kernel"].shape == (3, 3, 3, 16)
  assert masks["bn"]["scale"] is None and masks["dense1"]["bias"] is None


def _check_overall(params, dens, d, stacked=None):
  assert abs(allocation.overall_density(params, dens, stacked=stacked) - d) <= 1e-9


@pytest.mark.parametrize("d", [0.02, 0.1, 0.5, 0.9])
def test_erk_meets_the_overall_density(d):
  params = _params()
  dens = allocation.erk(params, d)
  _check_overall(params, dens, d)
  assert all(0 < v <= 1 for v in dens.values())
  # Proportional to sum(shape) / prod(shape) among the non-dense layers.
  raw = {l.name: sum(l.shape) / np.prod(l.shape) for l in layers.layout(params).layers}
  free = [n for n, v in dens.items() if v < 1]
  ratios = [dens[n] / raw[n] for n in free]
  np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)


def test_erk_makes_small_layers_dense_and_resolves():
  params = {"a": {"kernel": jnp.ones((4, 4))}, "b": {"kernel": jnp.ones((1000, 1000))}}
  dens = allocation.erk(params, 0.3)
  assert dens["a/kernel"] == 1.0
  _check_overall(params, dens, 0.3)
  uniform_like = allocation.erk(params, 0.3, power_scale=0.0)
  assert abs(uniform_like["a/kernel"] - 0.3) < 1e-12


def test_uniform_and_dense_ends():
  params = _params()
  dens = allocation.uniform(params, 0.2)
  assert set(dens.values()) == {0.2}
  ends = allocation.uniform_dense_ends(params, 0.2)
  assert ends["conv1/kernel"] == 1.0 and ends["dense2/kernel"] == 1.0
  _check_overall(params, ends, 0.2)
  with pytest.raises(ValueError, match="too low"):
    allocation.uniform_dense_ends(params, 0.001)
  named = allocation.uniform_dense_ends(params, 0.5, dense=["conv1/kernel"])
  assert named["conv1/kernel"] == 1.0 and named["dense2/kernel"] < 1.0
  _check_overall(params, named, 0.5)


def test_explicit_mapping_is_checked():
  params = _params()
  good = {"conv1/kernel": 0.5, "dense1/kernel": 0.1, "dense2/kernel": 1.0}
  assert allocation.explicit(params, good) == good
  with pytest.raises(ValueError, match="no entry"):
    allocation.explicit(params, {"conv1/kernel": 0.5})
  with pytest.raises(ValueError, match="unknown"):
    allocation.explicit(params, {**good, "nope": 0.1})
  with pytest.raises(ValueError, match=r"\(0, 1\]"):
    allocation.explicit(params, {**good, "dense2/kernel": 0.0})
  with pytest.raises(ValueError, match="allocator must be one of"):
    allocation.allocate("snap", params, 0.1)


def test_allocators_on_stacks():
  params = {"stack": {"kernel": jnp.ones((10, 64, 64))}, "head": {"kernel": jnp.ones((64, 10))}}
  stacked = {"stack/kernel": 1}
  dens = allocation.erk(params, 0.1, stacked=stacked)
  _check_overall(params, dens, 0.1, stacked)


@pytest.mark.parametrize("maker", ["random", "magnitude"])
def test_mask_makers_hit_exact_counts(maker):
  params = jax.tree.map(
      lambda x: jax.random.normal(jax.random.key(0), x.shape), _params()
  )
  dens = allocation.erk(params, 0.1)
  if maker == "random":
    masks = masking.random_masks(jax.random.key(1), params, dens)
  else:
    masks = masking.magnitude_masks(params, dens)
  for layer in layers.layout(params).layers:
    m = masks[layer.name.split("/")[0]]["kernel"]
    assert int(m.sum()) == int(np.floor(dens[layer.name] * layer.size + 0.5))
  if maker == "magnitude":
    w, m = np.abs(np.asarray(params["dense1"]["kernel"])), np.asarray(masks["dense1"]["kernel"])
    assert w[m].min() >= w[~m].max()
  realised = masking.mask_densities(params, masks)
  for name, d in dens.items():
    assert abs(realised[name] - d) <= 0.5 / np.prod(params[name.split("/")[0]]["kernel"].shape)


def test_random_masks_per_stack_layer_and_density_roundtrip():
  params = {"stack": {"kernel": jnp.ones((4, 16, 16))}}
  stacked = {"stack/kernel": 1}
  dens = {"stack/kernel": np.array([0.1, 0.2, 0.3, 0.4])}
  masks = masking.random_masks(jax.random.key(0), params, dens, stacked=stacked)
  counts = np.asarray(masks["stack"]["kernel"]).reshape(4, -1).sum(1)
  np.testing.assert_array_equal(counts, np.floor(dens["stack/kernel"] * 256 + 0.5))
  back = masking.mask_densities(params, masks, stacked=stacked)
  np.testing.assert_allclose(back["stack/kernel"], counts / 256)


def test_apply_masks_zeroes_exactly():
  params = _params()
  masks = masking.random_masks(jax.random.key(0), params, allocation.uniform(params, 0.3))
  out = masking.apply_masks(params, masks)
  k, m = np.asarray(out["dense1"]["kernel"]), np.asarray(masks["dense1"]["kernel"])
  assert np.all(k[~m] == 0) and np.all(k[m] == 1)
  np.testing.assert_array_equal(out["bn"]["scale"], params["bn"]["scale"])


def test_summary_table_and_dict():
  params = _params()
  dens = allocation.uniform(params, 0.25)
  masks = masking.random_masks(jax.random.key(0), params, dens)
  report = summary.sparsity_summary(params, masks, dens)
  assert [r.name for r in report.rows] == ["conv1/kernel", "dense1/kernel", "dense2/kernel"]
  assert report.total_size == 432 + 25600 + 1000
  assert report.total_nnz == sum(int(np.floor(0.25 * r.size + 0.5)) for r in report.rows)
  assert abs(report.requested_density - 0.25) < 1e-12
  text = report.table()
  assert "dense1/kernel" in text and "256x100" in text and text.splitlines()[-1].startswith("total")
  as_dict = report.to_dict()
  assert as_dict["total"]["nnz"] == report.total_nnz
  assert as_dict["layers"][1]["shape"] == [256, 100]


def test_conversions_to_and_from_jaxpruner_and_optax_masked():
  import optax

  from eoi_jax import optim

  params = _params()
  masks = masking.random_masks(jax.random.key(0), params, allocation.uniform(params, 0.3))
  pruner = masking.to_jaxpruner(masks)
  assert pruner["bn"]["scale"] is None and pruner["dense1"]["bias"] is None
  # jaxpruner stores 0/1 arrays; they come back as the same bool masks
  as_ints = jax.tree.map(lambda m: None if m is None else np.asarray(m, np.uint8), pruner,
                         is_leaf=lambda m: m is None)
  back = masking.from_jaxpruner(as_ints)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(masks)):
    np.testing.assert_array_equal(a, b)
  # older scalar-True leaves read as unmasked too
  legacy = jax.tree.map(lambda m: True if m is None else m, masks, is_leaf=lambda m: m is None)
  assert masking.to_jaxpruner(legacy)["bn"]["scale"] is None
  # optax.masked: decay only the masked kernels; static_sparse takes the None tree as it is
  flags = masking.to_optax_masked(masks)
  assert flags["dense1"]["kernel"] is True and flags["bn"]["scale"] is False
  tx = optim.static_sparse(optax.chain(optax.masked(optax.add_decayed_weights(1.0), flags),
                                       optax.sgd(1.0)), masks)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  kernel = np.asarray(updates["dense1"]["kernel"])
  m = np.asarray(masks["dense1"]["kernel"])
  assert np.all(kernel[~m] == 0) and np.all(kernel[m] == -1.0)  # -lr * wd * w, w = 1
  np.testing.assert_array_equal(updates["bn"]["scale"], 0.0)  # not decayed


def test_from_optax_masked_round_trips_and_accepts_prefixes_and_callables():
  params = _params()
  flags = masking.to_optax_masked(
      masking.random_masks(jax.random.key(0), params, allocation.uniform(params, 0.3)))
  dense = masking.from_optax_masked(flags, params)
  assert masking.to_optax_masked(dense) == flags
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    mask = dense
    for k in path:
      mask = mask[k.key]
    flag = flags
    for k in path:
      flag = flag[k.key]
    if flag:
      assert mask.dtype == jnp.bool_ and mask.shape == leaf.shape and bool(mask.all())
    else:
      assert mask is None
  # a prefix flag covers its subtree; a callable is called on the params (as optax.masked does)
  prefix = {k: k == "bn" for k in params}
  by_prefix = masking.from_optax_masked(prefix, params)
  assert by_prefix["bn"]["scale"].shape == params["bn"]["scale"].shape
  assert by_prefix["dense1"]["kernel"] is None
  by_callable = masking.from_optax_masked(lambda p: jax.tree.map(lambda x: x.ndim == 2, p), params)
  assert by_callable["dense1"]["kernel"].shape == params["dense1"]["kernel"].shape
  assert by_callable["dense1"]["bias"] is None
  # the dense masks work with a mask maker's output and the static-sparse transform as they are
  assert jax.tree.structure(masking.apply_masks(params, by_callable)) == jax.tree.structure(params)
  with pytest.raises(TypeError, match="flags"):
    masking.from_optax_masked(jax.tree.map(lambda x: "yes", params), params)
  with pytest.raises(ValueError, match="flags must have the structure"):
    masking.from_optax_masked({"nope": True}, params)
