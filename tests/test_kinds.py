"""EOI for every kernel kind: attention and Einsum kernels, grouped and
depthwise convs, stacked layers, sharded models."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import eoi_jax
from eoi_jax import kinds, layers, methods
from eoi_jax.initializers import eoi, eoi_mask
from eoi_jax.training import models

# (name, shape, initializer arguments, the kind they must resolve to)
KIND_TABLE = [
    ("dense", (48, 32), {}, kinds.KernelKind((0,), (1,))),
    ("attention qkv (in, heads, head_dim)", (64, 4, 16), dict(out_axis=(-2, -1)),
     kinds.KernelKind((0,), (1, 2))),
    ("attention out (heads, head_dim, out)", (4, 16, 64), dict(in_axis=(0, 1)),
     kinds.KernelKind((0, 1), (2,))),
    ("per-head matrices (heads, in, out)", (4, 32, 16), dict(batch_axis=0),
     kinds.KernelKind((1,), (2,), (0,))),
    ("stacked layers", (5, 24, 24), dict(batch_axis=0), kinds.KernelKind((1,), (2,), (0,))),
    ("1-D conv", (3, 16, 24), dict(conv=True), kinds.KernelKind((1,), (2,), (), (0,))),
    ("2-D conv", (3, 3, 16, 24), {}, kinds.KernelKind((2,), (3,), (), (0, 1))),
    ("3-D conv", (3, 3, 3, 8, 8), {}, kinds.KernelKind((3,), (4,), (), (0, 1, 2))),
    ("grouped conv", (3, 3, 8, 32), dict(feature_group_count=4),
     kinds.KernelKind((2,), (3,), (), (0, 1), 4)),
    ("depthwise conv", (3, 3, 1, 16), dict(feature_group_count=16),
     kinds.KernelKind((2,), (3,), (), (0, 1), 16)),
    ("depthwise multiplier 2", (3, 3, 1, 32), dict(feature_group_count=16),
     kinds.KernelKind((2,), (3,), (), (0, 1), 16)),
    ("stacked convs", (2, 3, 3, 8, 8), dict(batch_axis=0, conv=True),
     kinds.KernelKind((3,), (4,), (0,), (1, 2))),
]
IDS = [row[0] for row in KIND_TABLE]


def _tolerance(dtype, n):
  """Round-off of a Gram entry: the generator's float32 error (about n
  rotations' worth) plus the cast to ``dtype`` (half an ulp per entry)."""
  return 4 * n * 2.0 ** -23 + 4 * float(jnp.finfo(dtype).eps)


def _check_matrices(kernel, kind, density, gain, *, mask=None, tol):
  """Each matrix of ``kernel``: semi-orthogonal with ``gain`` at the centre
  tap, zero elsewhere, at about ``density``; matrices differ."""
  matrices = np.asarray(kinds.to_matrices(np, np.asarray(kernel, np.float64), kind))
  taps = matrices.shape[1:-2]
  centre = matrices[(slice(None),) + tuple(t // 2 for t in taps)]
  fan_in, fan_out = centre.shape[-2:]
  for m in centre:
    gram = m.T @ m if fan_in >= fan_out else m @ m.T
    np.testing.assert_allclose(gram, gain**2 * np.eye(min(fan_in, fan_out)), atol=tol * gain**2)
  if taps:
    off = matrices.copy()
    off[(slice(None),) + tuple(t // 2 for t in taps)] = 0
    assert not off.any()
  if min(fan_in, fan_out) > 1 and density < 1:
    realised = np.count_nonzero(centre) / centre.size
    # within one rotation's growth (at most 2 * max(fan) entries) of the target
    assert abs(realised - density) <= 2 * max(fan_in, fan_out) / centre[0].size + 1e-9
  if len(centre) > 1 and min(fan_in, fan_out) > 1:
    assert len({m.tobytes() for m in centre}) == len(centre)
  if mask is not None:
    assert np.all(np.asarray(mask)[np.asarray(kernel) != 0])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name,shape,arguments,expected", KIND_TABLE, ids=IDS)
def test_every_kind_is_exactly_orthogonal_per_matrix(name, shape, arguments, expected, dtype):
  key, density, gain = jax.random.key(7), 0.3, 1.5
  assert kinds.resolve(shape, **arguments) == expected
  kernel = eoi(density, gain, **arguments)(key, shape, dtype)
  mask = eoi_mask(density, gain, **arguments)(key, shape)
  assert kernel.shape == shape and kernel.dtype == dtype
  assert mask.shape == shape and mask.dtype == jnp.bool_
  n = max(expected.matrix_shape(shape))
  _check_matrices(kernel, expected, density if not expected.conv else
                  kernels_centre_density(density), gain, mask=mask, tol=_tolerance(dtype, n))
  if not expected.conv:
    np.testing.assert_array_equal(mask, np.asarray(kernel, np.float32) != 0)


def kernels_centre_density(density):
  return eoi_jax.center_density_for(density, 9)  # no rule given: the kernel's density


def test_canonical_kinds_give_todays_matrices():
  """A plain dense or conv kernel is the matrix sparse_(delta_)orthogonal makes."""
  key = jax.random.key(3)
  np.testing.assert_array_equal(eoi(0.2)(key, (40, 24)),
                                eoi_jax.sparse_orthogonal(key, (40, 24), 0.2)[0])
  np.testing.assert_array_equal(eoi(0.2, conv=True)(key, (3, 16, 8)),
                                eoi_jax.sparse_delta_orthogonal(key, (3, 16, 8), 0.2)[0])


def test_attention_projection_equals_its_flat_matrix():
  """(in, heads, head_dim) with out_axis=(-2, -1) is the (in, heads * head_dim)
  kernel that nnx.LinearGeneral's flattened initializer call gets."""
  key = jax.random.key(4)
  np.testing.assert_array_equal(eoi(0.2, out_axis=(-2, -1))(key, (64, 4, 16)).reshape(64, 64),
                                eoi(0.2)(key, (64, 64)))


def _circular_conv(x, kernel, groups):
  pads = [(k // 2, k // 2) for k in kernel.shape[:-2]]
  x = jnp.pad(x, [(0, 0)] + pads + [(0, 0)], mode="wrap")
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=groups,
                                      precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("channels,groups,multiplier", [(16, 16, 1), (16, 4, 1), (8, 8, 2)])
def test_grouped_and_depthwise_convs_are_isometries(channels, groups, multiplier):
  """With circular padding, a grouped conv whose group blocks are orthogonal
  keeps every input's norm (times the gain), channel group by group."""
  gain = 1.3
  shape = (3, 3, channels // groups, channels * multiplier)
  kernel = eoi(0.5, gain, feature_group_count=groups)(jax.random.key(0), shape)
  x = jax.random.normal(jax.random.key(1), (4, 6, 6, channels))
  y = _circular_conv(x, kernel, groups)
  np.testing.assert_allclose(jnp.linalg.norm(y.reshape(4, -1), axis=1),
                             gain * jnp.linalg.norm(x.reshape(4, -1), axis=1), rtol=1e-5)
  if groups == channels:  # depthwise: channel by channel
    for c in range(channels):
      out = y[..., c * multiplier:(c + 1) * multiplier]
      np.testing.assert_allclose(jnp.linalg.norm(out), gain * jnp.linalg.norm(x[..., c]),
                                 rtol=1e-5)


# ---------------------------------------------------------------------------
# Whole models: the kinds read from NNX modules.


class GPTBlock(nnx.Module):
  """Causal self-attention written with nnx.Einsum, then an MLP."""

  def __init__(self, dim, heads, *, rngs):
    head_dim = dim // heads
    self.qkv = nnx.Einsum("btd,ndhk->nbthk", (3, dim, heads, head_dim), rngs=rngs)
    self.out = nnx.Einsum("bthk,hkd->btd", (heads, head_dim, dim), rngs=rngs)
    self.norm1, self.norm2 = nnx.LayerNorm(dim, rngs=rngs), nnx.LayerNorm(dim, rngs=rngs)
    self.up, self.down = nnx.Linear(dim, 4 * dim, rngs=rngs), nnx.Linear(4 * dim, dim, rngs=rngs)

  def __call__(self, x):
    q, k, v = self.qkv(self.norm1(x))
    scores = jnp.einsum("bthk,bshk->bhts", q, k) / math.sqrt(q.shape[-1])
    causal = jnp.tril(jnp.ones((x.shape[1], x.shape[1]), bool))
    attention = jax.nn.softmax(jnp.where(causal, scores, -1e9), axis=-1)
    x = x + self.out(jnp.einsum("bhts,bshk->bthk", attention, v))
    return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class GPT(nnx.Module):
  def __init__(self, vocab=32, dim=32, heads=4, depth=3, *, rngs):
    self.embed = nnx.Embed(vocab, dim, rngs=rngs)

    @nnx.split_rngs(splits=depth)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
      return GPTBlock(dim, heads, rngs=rngs)

    self.blocks = make(rngs)
    self.head = nnx.Linear(dim, vocab, rngs=rngs)

  def __call__(self, tokens):
    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    def run(block, x):
      return block(x)

    return self.head(run(self.blocks, self.embed(tokens)))


class SeparableCNN(nnx.Module):
  """MobileNet-style: a stem, depthwise 3x3 + pointwise 1x1, a 4-group conv."""

  def __init__(self, *, rngs):
    self.stem = nnx.Conv(3, 16, (3, 3), rngs=rngs)
    self.depthwise = nnx.Conv(16, 16, (3, 3), feature_group_count=16, rngs=rngs)
    self.pointwise = nnx.Conv(16, 32, (1, 1), rngs=rngs)
    self.grouped = nnx.Conv(32, 32, (3, 3), feature_group_count=4, rngs=rngs)
    self.head = nnx.Linear(32, 10, rngs=rngs)

  def __call__(self, x):
    for conv in (self.stem, self.depthwise, self.pointwise, self.grouped):
      x = jnp.tanh(conv(x))
    return self.head(x.mean(axis=(1, 2)))


def _vit():
  return models.build("vit", (8, 8, 1), 10, depth=2, width=32)


MODEL_TABLE = [
    ("vit", _vit, {
        "blocks/attention/query/kernel": (1, kinds.KernelKind((0,), (1, 2))),
        "blocks/attention/out/kernel": (1, kinds.KernelKind((0, 1), (2,))),
        "blocks/mlp_in/kernel": (1, kinds.KernelKind((0,), (1,))),
        "embed/kernel": (0, kinds.KernelKind((0, 1, 2), (3,))),  # patches
        "head/kernel": (0, kinds.KernelKind((0,), (1,))),
    }),
    ("gpt", lambda: GPT(rngs=nnx.Rngs(0)), {
        # a fused projection d -> (q|k|v, heads, head_dim): one wide matrix,
        # as a fused nnx.Linear(dim, 3 * dim) would be
        "blocks/qkv/kernel": (1, kinds.KernelKind((1,), (0, 2, 3))),
        "blocks/out/kernel": (1, kinds.KernelKind((0, 1), (2,))),
        "blocks/up/kernel": (1, kinds.KernelKind((0,), (1,))),
        "head/kernel": (0, kinds.KernelKind((0,), (1,))),
    }),
    ("separable cnn", lambda: SeparableCNN(rngs=nnx.Rngs(0)), {
        "stem/kernel": (0, kinds.KernelKind((2,), (3,), (), (0, 1))),
        "depthwise/kernel": (0, kinds.KernelKind((2,), (3,), (), (0, 1), 16)),
        "pointwise/kernel": (0, kinds.KernelKind((2,), (3,), (), (0, 1))),
        "grouped/kernel": (0, kinds.KernelKind((2,), (3,), (), (0, 1), 4)),
    }),
]


@pytest.mark.parametrize("name,make,expected", MODEL_TABLE, ids=[r[0] for r in MODEL_TABLE])
def test_models_layouts_and_eoi(name, make, expected):
  model = make()
  layout = layers.model_layout(model)
  by_name = {layer.name: layer for layer in layout}
  assert "embed/embedding" not in by_name and "position" not in by_name
  for layer_name, (stack, kind) in expected.items():
    layer = by_name[layer_name]
    assert len(layer.stack) == stack, layer_name
    assert layer.leaf_kind() == kinds.KernelKind(
        tuple(a + stack for a in kind.in_axes), tuple(a + stack for a in kind.out_axes),
        tuple(range(stack)) + tuple(a + stack for a in kind.batch_axes),
        tuple(a + stack for a in kind.spatial_axes), kind.groups), layer_name
  out = methods.initialize_model("eoi", jax.random.key(0), model, 0.25)
  params = dict(layers.named_leaves(out.params))
  masks = dict(layers.named_leaves(out.masks))
  for layer in layout:
    kernel = params[layer.name]
    _check_matrices(kernel, layer.leaf_kind(), 0.25 if not layer.leaf_kind().conv else
                    kernels_centre_density(0.25), 1.0, mask=masks[layer.name], tol=1e-5)
  nnx.update(model, out.params)
  x = jnp.zeros((2, 8), jnp.int32) if name == "gpt" else jnp.ones((2, 8, 8, 1 if name == "vit"
                                                                                else 3))
  assert np.isfinite(np.asarray(model(x))).all()


def test_snip_with_one_hot_labels_and_a_custom_loss():
  model = models.build("mlp", (8, 8, 1), 10, depth=2, width=16)
  x = jax.random.normal(jax.random.key(0), (8, 8, 8, 1))
  labels = jnp.arange(8) % 10
  by_int = methods.initialize_model("snip", jax.random.key(1), model, 0.2, batch=(x, labels))
  by_one_hot = methods.initialize_model("snip", jax.random.key(1), model, 0.2,
                                        batch=(x, jax.nn.one_hot(labels, 10)))
  for a, b in zip(jax.tree.leaves(by_int.masks), jax.tree.leaves(by_one_hot.masks)):
    np.testing.assert_array_equal(a, b)
  regression = methods.initialize_model(
      "grasp", jax.random.key(1), model, 0.2, batch=(x, jnp.ones((8, 10))),
      loss_fn=lambda out, batch: jnp.mean((out - batch[1]) ** 2))
  assert regression.summary.total_nnz == round(0.2 * regression.summary.total_size)
  with pytest.raises(TypeError, match="loss_fn"):
    methods.initialize_model("snip", jax.random.key(1), model, 0.2, batch=(x, jnp.ones((8, 3))))
  with pytest.raises(TypeError, match="loss_fn"):
    methods.initialize_model("snip", jax.random.key(1), model, 0.2, batch=(x, labels),
                             loss_fn="mse")


# ---------------------------------------------------------------------------
# Sharded models.


class ShardedMLP(nnx.Module):
  """Megatron-style tensor parallelism plus FSDP over 'data'."""

  def __init__(self, *, rngs):
    self.up = nnx.Linear(32, 64, kernel_init=nnx.with_partitioning(
        nnx.initializers.lecun_normal(), ("data", "model")),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("model",)), rngs=rngs)
    self.down = nnx.Linear(64, 10, kernel_init=nnx.with_partitioning(
        nnx.initializers.lecun_normal(), ("model", None)), rngs=rngs)

  def __call__(self, x):
    # On an Explicit mesh the row-parallel layer must say how its output is
    # sharded; on an Auto mesh the compiler decides.
    explicit = jax.sharding.get_abstract_mesh().are_all_axes_explicit
    return self.down(jnp.tanh(self.up(x)),
                     out_sharding=jax.P("data", None) if explicit else None)


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_sharded_model_keeps_its_shardings_and_trains(axis_type):
  types = (getattr(jax.sharding.AxisType, axis_type),) * 2
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=types)
  with jax.set_mesh(mesh):
    model = nnx.jit(lambda: ShardedMLP(rngs=nnx.Rngs(0)))()
    before = {n: leaf.sharding for n, leaf in layers.named_leaves(nnx.state(model, nnx.Param))}
    out = methods.initialize_model("eoi", jax.random.key(0), model, 0.25)
    for name, leaf in layers.named_leaves(out.params):
      assert leaf.sharding.is_equivalent_to(before[name], leaf.ndim), name
    unsharded = methods.initialize(
        "eoi", jax.random.key(0),
        jax.tree.map(np.asarray, nnx.state(model, nnx.Param)), 0.25)
    for a, b in zip(jax.tree.leaves(out.params), jax.tree.leaves(unsharded.params)):
      np.testing.assert_array_equal(a, b)
    nnx.update(model, out.params)
    assert nnx.state(model, nnx.Param)["up"]["kernel"][...].sharding.spec == jax.P("data", "model")
    assert jax.tree.leaves(out.masks["up"]["bias"]) == []  # None: not masked
    optimizer = nnx.Optimizer(model, eoi_jax.static_sparse(optax.adam(1e-2), out.masks),
                              wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
      loss, grads = nnx.value_and_grad(
          lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean())(model)
      optimizer.update(model, grads)
      return loss

    x = jax.device_put(jax.random.normal(jax.random.key(1), (16, 32)), jax.P("data", None))
    y = jax.device_put(jnp.arange(16) % 10, jax.P("data"))
    for _ in range(3):
      step(model, optimizer, x, y)
    kernel = nnx.state(model, nnx.Param)["up"]["kernel"][...]
    assert kernel.sharding.spec == jax.P("data", "model")
    assert not np.asarray(kernel)[~np.asarray(out.masks["up"]["kernel"])].any()
    assert not np.array_equal(kernel, out.params["up"]["kernel"])


def test_linen_params_with_a_kinds_mapping():
  """Linen stores attention kernels unflattened and has no module to read kinds
  from: a per-path mapping says which axes are which; without it the error
  names the layer and the argument to pass."""
  import flax.linen as nn

  class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=32)(x)
      return nn.Dense(10)(x.mean(axis=1))

  params = Block().init(jax.random.key(0), jnp.ones((2, 5, 32)))["params"]
  attention = "MultiHeadDotProductAttention_0"
  with pytest.raises(ValueError, match=f"{attention}/key/kernel.*out_axis"):
    methods.initialize("eoi", jax.random.key(1), params, 0.25)
  kinds_by_path = {f"{attention}/{name}/kernel": {"out_axis": (-2, -1)}
                   for name in ("query", "key", "value")}
  kinds_by_path[f"{attention}/out/kernel"] = {"in_axis": (0, 1)}
  out = methods.initialize("eoi", jax.random.key(1), params, 0.25, kinds=kinds_by_path)
  query = np.asarray(out.params[attention]["query"]["kernel"]).reshape(32, 32)
  np.testing.assert_allclose(query.T @ query, np.eye(32), atol=1e-5)
  assert abs(np.asarray(out.masks[attention]["query"]["kernel"]).mean() - 0.25) < 0.05
  y = Block().apply({"params": out.params}, jnp.ones((2, 5, 32)))
  assert y.shape == (2, 10)


class GrayscaleSeparableCNN(nnx.Module):
  """A first conv on one input channel (legitimately in = 1) and a depthwise conv."""

  def __init__(self, *, rngs):
    self.stem = nnx.Conv(1, 8, (3, 3), rngs=rngs)
    self.depthwise = nnx.Conv(8, 8, (3, 3), feature_group_count=8, rngs=rngs)
    self.head = nnx.Linear(8, 10, rngs=rngs)

  def __call__(self, x):
    x = jnp.tanh(self.depthwise(jnp.tanh(self.stem(x))))
    return self.head(x.mean(axis=(1, 2)))


def test_a_depthwise_shaped_conv_without_feature_group_count_warns():
  import warnings
  key = jax.random.key(0)
  # The shape (3, 3, 1, 64) is a depthwise conv's or a one-channel conv's:
  # without feature_group_count it is one 1 x 64 matrix, so say which.
  for make in (lambda: eoi(0.1)(key, (3, 3, 1, 64)), lambda: eoi_mask(0.1)(key, (3, 3, 1, 64)),
               lambda: eoi(0.1, conv=True)(key, (3, 1, 64)),
               lambda: nnx.Conv(64, 64, (3, 3), feature_group_count=64,
                                kernel_init=eoi(0.1), rngs=nnx.Rngs(0))):
    with pytest.warns(kinds.AmbiguousConvWarning, match="feature_group_count"):
      make()
  with warnings.catch_warnings():
    warnings.simplefilter("error", kinds.AmbiguousConvWarning)
    for groups in (1, 64):  # said either way
      eoi(0.1, feature_group_count=groups)(key, (3, 3, 1, 64))
    eoi(0.1)(key, (3, 3, 16, 64))
    eoi(0.1)(key, (1, 64))
    # A params tree's default rule stays silent (a custom module's one-channel
    # stem is common; a depthwise layer's groups go in kinds=).
    layers.layout({"conv": {"kernel": jnp.zeros((3, 3, 1, 8))}}).layers[0].resolved_kind()
    # initialize_model reads every conv's groups from its module.
    model = GrayscaleSeparableCNN(rngs=nnx.Rngs(0))
    out = methods.initialize_model("eoi", key, model, 0.1)
    depthwise = np.asarray(out.params["depthwise"]["kernel"][...])[1, 1, 0]
    assert np.all(depthwise != 0)  # each channel its own 1 x 1 isometry: none dead
