"""Models of the paper in Flax NNX, with kernels where sparse training can reach them.

Every model exposes its kernels as ``kernel`` params (dense ``(in, out)``, conv
``(*spatial, in, out)``), so allocators, EOI and masks apply without per-model
code. Repeated same-shape hidden layers of the deep plain networks live in one
*stack* module whose params carry a leading layer axis and run under
``lax.scan``: compile time does not grow with depth, and EOI initialises the
whole stack in one vmapped call. ``model.sparsity_spec()`` says which leaves
are stacks and which layers are first and last.

Models (``build(name, ...)``):
  * ``mlp``: ``in -> width x (depth - 1) -> classes``, ``depth`` linear layers,
    hidden layers scanned (the paper's 784-100x6-10 is ``depth=7, width=100``;
    the 1000-layer MLP is ``depth=1000, width=128``).
  * ``deep_cnn``: the plain deep CNN: conv 3x3 ``in -> width``, two stride-2
    3x3 convs, a scanned stack of 3x3 convs, circular padding, average pool 2,
    linear head; no normalisation, no residuals.
  * ``resnet8`` (smoke tests), ``resnet32``, ``resnet56``, ``resnet110``: CIFAR ResNets (16/32/64
    channels, batch norm, 1x1 conv shortcuts when shapes change).
  * ``vgg16``: VGG-16 variant C (1x1 convs as the third conv of stages 3-5)
    with batch norm and a linear head.
  * ``efficientnet_b0``: EfficientNet-B0 (MBConv blocks with depthwise convs
    and squeeze-and-excitation, batch norm; swish by default).
  * ``vit``: a small Vision Transformer (patch embedding conv, pre-norm
    blocks of ``nnx.MultiHeadAttention`` and a GELU MLP created with
    ``nnx.vmap`` and run with ``nnx.scan``, mean-pooled tokens, linear head):
    attention kernels ``(in, heads, head_dim)`` and ``(heads, head_dim,
    out)`` and a stack axis, read by :func:`eoi_jax.layers.model_layout`.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from eoi_jax import layers

ACTIVATIONS: dict[str, Callable] = {
    "linear": lambda x: x,
    "tanh": jnp.tanh,
    "hard_tanh": lambda x: jnp.clip(x, -1.0, 1.0),
    "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu,
    "selu": jax.nn.selu,
    "swish": jax.nn.silu,
}


def activation(name: str) -> Callable:
  if name not in ACTIVATIONS:
    raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
  return ACTIVATIONS[name]


class SparsitySpec(NamedTuple):
  """How sparse-training code should read a model's params.

  Attributes:
    stacked: ``{leaf name: stack axes}`` for scanned stacks.
    ends: names of the first and last layers' kernels (network order).
  """

  stacked: dict
  ends: tuple[str, str]


def _lecun(key, shape, dtype=jnp.float32):
  return jax.nn.initializers.lecun_normal()(key, shape, dtype)


def _scan_dense(act, kernels, biases, x):
  def layer(h, params):
    kernel, bias = params
    return act(h @ kernel + bias), None

  return jax.lax.scan(layer, x, (kernels, biases))[0]


# Activations whose derivative is a function of their output ``y = act(z)``
# (the values autodiff gives): for these the stack's backward pass needs only
# each layer's input, which is the previous layer's output.
_DERIVATIVE_OF_OUTPUT: dict[Callable, Callable] = {
    ACTIVATIONS["tanh"]: lambda y: (1 - y) * (1 + y),  # exact near |y| = 1, unlike 1 - y * y
    ACTIVATIONS["relu"]: lambda y: (y > 0).astype(y.dtype),
    ACTIVATIONS["linear"]: jnp.ones_like,
}


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def dense_stack(act, kernels, biases, x):
  """``act(... act(act(x @ k_0 + b_0) @ k_1 + b_1) ...)`` over stacked
  ``kernels`` ``(L, w, w)`` and ``biases`` ``(L, w)``, scanned, with a
  hand-written backward pass (reverse mode only: ``jax.grad``, ``jax.vjp``,
  ``jax.jacrev``; not ``jax.jvp``).

  The differentiated pass runs in the transposed layout: it carries
  ``h^T`` (``(w, batch)``), computes ``z^T = k^T h^T + b``, and stores each
  layer's ``h^T`` as it is carried, so no layer transposes anything and the
  backward matmuls (``k dz^T`` and ``h^T dz``) are plain ones (autodiff of
  the scan contracts the stored ``h`` over its first axis, a slower dot on
  XLA:CPU). For tanh, ReLU and the identity nothing else is stored: their
  derivative is read from their output, the next layer's stored input; other
  activations also store ``z^T``. On the 2-core CPU the 1000-layer MLP's
  training step takes about 0.75 x the time of autodiff of the scan, 1.3-1.4 x
  its matmuls' FLOP limit with host memory kept for reuse as the command line
  runs (``benchmarks/deep_mlp_step.py``).
  """
  return _scan_dense(act, kernels, biases, x)


def _unroll(num_layers: int) -> int:
  # Two layers per loop iteration: the 1000-layer MLP's step about 6% faster on
  # the 2-core CPU (XLA copies less of the carried activations). Only where 2
  # divides the layer count: scan's remainder slices would copy the stacks.
  return 2 if num_layers % 2 == 0 else 1


def _dense_stack_fwd(act, kernels, biases, x):
  from_output = act in _DERIVATIVE_OF_OUTPUT

  def layer(h_t, params):
    kernel, bias = params
    z_t = kernel.T @ h_t + bias[:, None]
    return act(z_t), ((h_t,) if from_output else (h_t, z_t))

  y_t, stored = jax.lax.scan(layer, x.T, (kernels, biases), unroll=_unroll(len(kernels)))
  return y_t.T, (kernels, stored, y_t)


def _dense_stack_bwd(act, residuals, grad):
  kernels, stored, y_t = residuals
  derivative = _DERIVATIVE_OF_OUTPUT.get(act)

  def layer(carry, params):
    g_t, out_t = carry  # the gradient at this layer's output, and the output
    if derivative is not None:
      kernel, h_t = params
      dz_t = g_t * derivative(out_t)
      out_t = h_t  # the previous layer's output
    else:
      kernel, h_t, z_t = params
      dz_t, = jax.vjp(act, z_t)[1](g_t)
    return (kernel @ dz_t, out_t), (h_t @ dz_t.T, jnp.sum(dz_t, axis=1))

  (grad_x_t, _), (grad_kernels, grad_biases) = jax.lax.scan(
      layer, (grad.T, y_t), (kernels, *stored), reverse=True, unroll=_unroll(len(kernels)))
  return grad_kernels, grad_biases, grad_x_t.T


dense_stack.defvjp(_dense_stack_fwd, _dense_stack_bwd)


class DenseStack(nnx.Module):
  """``num_layers`` same-shape dense layers with an activation, scanned.

  ``explicit_backward``: differentiate with :func:`dense_stack`'s
  hand-written backward pass (faster; reverse mode only) instead of autodiff
  of the scan (every mode, e.g. GraSP's Hessian-gradient products). The
  trainer turns it on after the sparse initialisation
  (:func:`use_explicit_backward`)."""

  def __init__(self, num_layers: int, width: int, act: Callable, *, rngs: nnx.Rngs):
    keys = jax.random.split(rngs.params(), num_layers)
    self.kernel = nnx.Param(jax.vmap(lambda k: _lecun(k, (width, width)))(keys))
    self.bias = nnx.Param(jnp.zeros((num_layers, width)))
    self.act = act
    self.explicit_backward = False

  def __call__(self, x):
    run = dense_stack if self.explicit_backward else _scan_dense
    return run(self.act, self.kernel[...], self.bias[...], x)


def use_explicit_backward(model: nnx.Module) -> None:
  """Turns on the hand-written backward pass of every :class:`DenseStack`
  of ``model`` (in place)."""
  for _, module in nnx.iter_modules(model):
    if isinstance(module, DenseStack):
      module.explicit_backward = True


def _circular_conv(x, kernel, bias, stride=1):
  pad = [(k // 2, k // 2) for k in kernel.shape[:2]]
  x = jnp.pad(x, [(0, 0), *pad, (0, 0)], mode="wrap")
  y = jax.lax.conv_general_dilated(x, kernel, (stride, stride), "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y + bias


class ConvStack(nnx.Module):
  """``num_layers`` 3x3 circular convs ``channels -> channels``, scanned."""

  def __init__(self, num_layers: int, channels: int, act: Callable, *, rngs: nnx.Rngs):
    keys = jax.random.split(rngs.params(), num_layers)
    self.kernel = nnx.Param(jax.vmap(lambda k: _lecun(k, (3, 3, channels, channels)))(keys))
    self.bias = nnx.Param(jnp.zeros((num_layers, channels)))
    self.act = act

  def __call__(self, x):
    def layer(h, params):
      kernel, bias = params
      return self.act(_circular_conv(h, kernel, bias)), None

    x, _ = jax.lax.scan(layer, x, (self.kernel[...], self.bias[...]))
    return x


class CircularConv(nnx.Module):
  def __init__(self, cin, cout, stride, *, rngs: nnx.Rngs):
    self.kernel = nnx.Param(_lecun(rngs.params(), (3, 3, cin, cout)))
    self.bias = nnx.Param(jnp.zeros((cout,)))
    self.stride = stride

  def __call__(self, x):
    return _circular_conv(x, self.kernel[...], self.bias[...], self.stride)


class MLP(nnx.Module):
  """``depth`` linear layers: ``in -> width``, ``depth - 2`` hidden ``width -> width``
  (one scanned stack), ``width -> classes``."""

  def __init__(self, in_features: int, num_classes: int, *, depth: int = 7, width: int = 100,
               activation_name: str = "tanh", rngs: nnx.Rngs):
    if depth < 2:
      raise ValueError(f"depth must be >= 2, got {depth}")
    self.act = activation(activation_name)
    self.input_layer = nnx.Linear(in_features, width, rngs=rngs)
    self.hidden_layers = DenseStack(depth - 2, width, self.act, rngs=rngs) if depth > 2 else None
    self.output_layer = nnx.Linear(width, num_classes, rngs=rngs)

  def __call__(self, x):
    x = self.act(self.input_layer(x.reshape(x.shape[0], -1)))
    if self.hidden_layers is not None:
      x = self.hidden_layers(x)
    return self.output_layer(x)

  def sparsity_spec(self) -> SparsitySpec:
    stacked = {"hidden_layers/kernel": 1} if self.hidden_layers is not None else {}
    return SparsitySpec(stacked, ("input_layer/kernel", "output_layer/kernel"))


class DeepCNN(nnx.Module):
  """Plain deep CNN: ``depth`` convs in all (3 + a scanned stack of depth - 3),
  circular padding, average pool 2, linear head. No norm, no residuals."""

  def __init__(self, in_channels: int, num_classes: int, image_size: int, *, depth: int = 10,
               width: int = 128, activation_name: str = "tanh", rngs: nnx.Rngs):
    if depth < 3:
      raise ValueError(f"depth must be >= 3, got {depth}")
    if image_size < 8:
      raise ValueError(f"image_size must be >= 8, got {image_size}")
    self.act = activation(activation_name)
    self.stem = CircularConv(in_channels, width, 1, rngs=rngs)
    self.down1 = CircularConv(width, width, 2, rngs=rngs)
    self.down2 = CircularConv(width, width, 2, rngs=rngs)
    self.convs = ConvStack(depth - 3, width, self.act, rngs=rngs) if depth > 3 else None
    # Two stride-2 circular convs (ceil halving), then a 2x2 average pool (floor).
    side = math.ceil(math.ceil(image_size / 2) / 2) // 2
    features = width * side ** 2
    self.head = nnx.Linear(features, num_classes, rngs=rngs)

  def __call__(self, x):
    x = self.act(self.stem(x))
    x = self.act(self.down1(x))
    x = self.act(self.down2(x))
    if self.convs is not None:
      x = self.convs(x)
    x = nnx.avg_pool(x, (2, 2), strides=(2, 2))
    return self.head(x.reshape(x.shape[0], -1))

  def sparsity_spec(self) -> SparsitySpec:
    stacked = {"convs/kernel": 1} if self.convs is not None else {}
    return SparsitySpec(stacked, ("stem/kernel", "head/kernel"))


class BasicBlock(nnx.Module):
  def __init__(self, cin, cout, stride, act, *, rngs):
    self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, padding=1, use_bias=False, rngs=rngs)
    self.bn1 = nnx.BatchNorm(cout, rngs=rngs)
    self.conv2 = nnx.Conv(cout, cout, (3, 3), padding=1, use_bias=False, rngs=rngs)
    self.bn2 = nnx.BatchNorm(cout, rngs=rngs)
    if stride != 1 or cin != cout:
      self.shortcut = nnx.Conv(cin, cout, (1, 1), strides=stride, use_bias=False, rngs=rngs)
      self.shortcut_bn = nnx.BatchNorm(cout, rngs=rngs)
    else:
      self.shortcut, self.shortcut_bn = None, None
    self.act = act

  def __call__(self, x):
    y = self.act(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    skip = x if self.shortcut is None else self.shortcut_bn(self.shortcut(x))
    return self.act(y + skip)


class ResNet(nnx.Module):
  """CIFAR ResNet-(6n+2): 16/32/64 channels, n basic blocks per stage."""

  def __init__(self, in_channels: int, num_classes: int, *, depth: int = 32,
               activation_name: str = "relu", rngs: nnx.Rngs):
    if (depth - 2) % 6:
      raise ValueError(f"ResNet depth must be 6n + 2, got {depth}")
    n = (depth - 2) // 6
    self.act = activation(activation_name)
    self.stem = nnx.Conv(in_channels, 16, (3, 3), padding=1, use_bias=False, rngs=rngs)
    self.stem_bn = nnx.BatchNorm(16, rngs=rngs)
    blocks, cin = [], 16
    for stage, cout in enumerate((16, 32, 64)):
      for i in range(n):
        blocks.append(BasicBlock(cin, cout, 2 if (stage > 0 and i == 0) else 1, self.act,
                                 rngs=rngs))
        cin = cout
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(64, num_classes, rngs=rngs)

  def __call__(self, x):
    x = self.act(self.stem_bn(self.stem(x)))
    for block in self.blocks:
      x = block(x)
    return self.head(x.mean(axis=(1, 2)))

  def sparsity_spec(self) -> SparsitySpec:
    return SparsitySpec({}, ("stem/kernel", "head/kernel"))


class ConvBN(nnx.Module):
  def __init__(self, cin, cout, size, *, stride=1, rngs):
    self.conv = nnx.Conv(cin, cout, size, strides=stride, padding="SAME", use_bias=False,
                         rngs=rngs)
    self.bn = nnx.BatchNorm(cout, rngs=rngs)

  def __call__(self, x):
    return self.bn(self.conv(x))


VGG16_C = (64, 64, "M", 128, 128, "M", 256, 256, "1x1:256", "M", 512, 512, "1x1:512", "M",
           512, 512, "1x1:512", "M")


class VGG(nnx.Module):
  """VGG-16 variant C with batch norm; global average pool and a linear head."""

  def __init__(self, in_channels: int, num_classes: int, *, activation_name: str = "relu",
               rngs: nnx.Rngs):
    self.act = activation(activation_name)
    stages, cin = [], in_channels
    for item in VGG16_C:
      if item == "M":
        stages.append("M")
        continue
      size, cout = ((1, 1), int(item[4:])) if isinstance(item, str) else ((3, 3), item)
      stages.append(ConvBN(cin, cout, size, rngs=rngs))
      cin = cout
    self.layers = nnx.List([l for l in stages if l != "M"])
    self.pools = tuple(i for i, l in enumerate(stages) if l == "M")
    self.head = nnx.Linear(512, num_classes, rngs=rngs)

  def __call__(self, x):
    conv_index = 0
    for i in range(len(self.layers) + len(self.pools)):
      if i in self.pools:
        x = nnx.max_pool(x, (2, 2), strides=(2, 2)) if x.shape[1] > 1 else x
        continue
      x = self.act(self.layers[conv_index](x))
      conv_index += 1
    return self.head(x.mean(axis=(1, 2)))

  def sparsity_spec(self) -> SparsitySpec:
    return SparsitySpec({}, ("layers/0/conv/kernel", "head/kernel"))


# EfficientNet-B0 (Tan & Le 2019, Table 1): per stage (expand ratio, kernel
# size, stride, output channels, repeats).
EFFICIENTNET_B0 = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                   (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


class SqueezeExcite(nnx.Module):
  """Channel gates from the pooled features: ``x * sigmoid(W2 act(W1 mean(x)))``."""

  def __init__(self, channels, reduced, act, *, rngs):
    self.reduce = nnx.Linear(channels, reduced, rngs=rngs)
    self.expand = nnx.Linear(reduced, channels, rngs=rngs)
    self.act = act

  def __call__(self, x):
    gate = self.expand(self.act(self.reduce(x.mean(axis=(1, 2)))))
    return x * jax.nn.sigmoid(gate)[:, None, None, :]


class MBConv(nnx.Module):
  """Inverted residual: 1x1 expansion, depthwise k x k conv (``feature_group_count``
  = channels), squeeze-and-excitation (ratio 0.25 of the block's input), 1x1
  projection; a residual when the shape is kept."""

  def __init__(self, cin, cout, expand, size, stride, act, *, rngs):
    hidden = cin * expand
    self.expand = ConvBN(cin, hidden, (1, 1), rngs=rngs) if expand != 1 else None
    self.depthwise = nnx.Conv(hidden, hidden, (size, size), strides=stride, padding="SAME",
                              feature_group_count=hidden, use_bias=False, rngs=rngs)
    self.depthwise_bn = nnx.BatchNorm(hidden, rngs=rngs)
    self.se = SqueezeExcite(hidden, max(1, cin // 4), act, rngs=rngs)
    self.project = ConvBN(hidden, cout, (1, 1), rngs=rngs)
    self.residual = stride == 1 and cin == cout
    self.act = act

  def __call__(self, x):
    y = self.act(self.expand(x)) if self.expand is not None else x
    y = self.se(self.act(self.depthwise_bn(self.depthwise(y))))
    y = self.project(y)
    return x + y if self.residual else y


class EfficientNet(nnx.Module):
  """EfficientNet-B0: a stride-2 3x3 stem (32 channels), the seven MBConv stages of
  :data:`EFFICIENTNET_B0`, a 1x1 conv to 1280 channels, global average pool and a
  linear head; batch norm after every conv. Stochastic depth and dropout are left
  out (the deterministic train step has no dropout key)."""

  def __init__(self, in_channels: int, num_classes: int, *, activation_name: str = "swish",
               rngs: nnx.Rngs):
    self.act = activation(activation_name)
    self.stem = ConvBN(in_channels, 32, (3, 3), stride=2, rngs=rngs)
    blocks, cin = [], 32
    for expand, size, stride, cout, repeats in EFFICIENTNET_B0:
      for i in range(repeats):
        blocks.append(MBConv(cin, cout, expand, size, stride if i == 0 else 1, self.act,
                             rngs=rngs))
        cin = cout
    self.blocks = nnx.List(blocks)
    self.top = ConvBN(cin, 1280, (1, 1), rngs=rngs)
    self.head = nnx.Linear(1280, num_classes, rngs=rngs)

  def __call__(self, x):
    x = self.act(self.stem(x))
    for block in self.blocks:
      x = block(x)
    x = self.act(self.top(x))
    return self.head(x.mean(axis=(1, 2)))

  def sparsity_spec(self) -> SparsitySpec:
    return SparsitySpec({}, ("stem/conv/kernel", "head/kernel"))


class EncoderBlock(nnx.Module):
  """Pre-norm transformer block: self-attention and a GELU MLP, both residual."""

  def __init__(self, dim: int, heads: int, mlp_dim: int, *, rngs: nnx.Rngs):
    self.attention_norm = nnx.LayerNorm(dim, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(num_heads=heads, in_features=dim, decode=False,
                                            rngs=rngs)
    self.mlp_norm = nnx.LayerNorm(dim, rngs=rngs)
    self.mlp_in = nnx.Linear(dim, mlp_dim, rngs=rngs)
    self.mlp_out = nnx.Linear(mlp_dim, dim, rngs=rngs)

  def __call__(self, x):
    x = x + self.attention(self.attention_norm(x))
    return x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.mlp_norm(x))))


class ViT(nnx.Module):
  """Vision Transformer: ``patch x patch`` patches embedded by a strided conv,
  learned position embeddings, ``depth`` encoder blocks in one stack
  (``nnx.vmap`` to create, ``nnx.scan`` to run), mean pooling, linear head."""

  def __init__(self, image_shape, num_classes: int, *, depth: int = 4, dim: int = 64,
               heads: int = 4, patch: int = 2, rngs: nnx.Rngs):
    h, w, c = image_shape
    if h % patch or w % patch:
      raise ValueError(f"vit: patch size {patch} must divide the image size {h}x{w}")
    if dim % heads:
      raise ValueError(f"vit: heads ({heads}) must divide width ({dim})")
    self.embed = nnx.Conv(c, dim, (patch, patch), strides=(patch, patch), padding="VALID",
                          rngs=rngs)
    self.position = nnx.Param(0.02 * jax.random.normal(rngs.params(),
                                                       ((h // patch) * (w // patch), dim)))

    @nnx.split_rngs(splits=depth)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
      return EncoderBlock(dim, heads, 4 * dim, rngs=rngs)

    self.blocks = make(rngs)
    self.norm = nnx.LayerNorm(dim, rngs=rngs)
    self.head = nnx.Linear(dim, num_classes, rngs=rngs)

  def __call__(self, x):
    x = self.embed(x)
    x = x.reshape(x.shape[0], -1, x.shape[-1]) + self.position[...]

    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    def run(block, x):
      return block(x)

    x = run(self.blocks, x)
    return self.head(self.norm(x).mean(axis=1))

  def sparsity_spec(self) -> SparsitySpec:
    return SparsitySpec({}, ("embed/kernel", "head/kernel"))


def _mlp(image_shape, num_classes, depth, width, activation_name, rngs):
  h, w, c = image_shape
  return MLP(h * w * c, num_classes, depth=depth or 7, width=width or 100,
             activation_name=activation_name or TAKES["mlp"].default_activation, rngs=rngs)


def _deep_cnn(image_shape, num_classes, depth, width, activation_name, rngs):
  h, w, c = image_shape
  if h != w:
    raise ValueError(f"deep_cnn needs square images, got {image_shape}")
  return DeepCNN(c, num_classes, h, depth=depth or 10, width=width or 128,
                 activation_name=activation_name or TAKES["deep_cnn"].default_activation,
                 rngs=rngs)


def _resnet(resnet_depth):
  def make(image_shape, num_classes, depth, width, activation_name, rngs):
    return ResNet(image_shape[-1], num_classes, depth=resnet_depth,
                  activation_name=activation_name or TAKES["resnet32"].default_activation,
                  rngs=rngs)
  return make


def _vgg16(image_shape, num_classes, depth, width, activation_name, rngs):
  return VGG(image_shape[-1], num_classes,
             activation_name=activation_name or TAKES["vgg16"].default_activation, rngs=rngs)


def _efficientnet_b0(image_shape, num_classes, depth, width, activation_name, rngs):
  default = TAKES["efficientnet_b0"].default_activation
  return EfficientNet(image_shape[-1], num_classes, activation_name=activation_name or default,
                      rngs=rngs)


def _vit(image_shape, num_classes, depth, width, activation_name, rngs):
  if activation_name not in (None, "gelu"):
    raise ValueError(f"vit uses GELU; activation must be unset, got {activation_name!r}")
  return ViT(image_shape, num_classes, depth=depth or 4, dim=width or 64,
             patch=2 if image_shape[0] <= 32 else 4, rngs=rngs)


MODELS = {
    "mlp": _mlp,
    "deep_cnn": _deep_cnn,
    "resnet8": _resnet(8),
    "resnet32": _resnet(32),
    "resnet56": _resnet(56),
    "resnet110": _resnet(110),
    "vgg16": _vgg16,
    "vit": _vit,
    "efficientnet_b0": _efficientnet_b0,
}
"""Models by name: ``(image_shape, num_classes, depth, width, activation_name, rngs) -> model``."""


class Takes(NamedTuple):
  """The architecture fields a model takes.

  Attributes:
    depth: the smallest depth it takes, or ``None``: its depth is fixed.
    width: the smallest width it takes, or ``None``: its widths are fixed.
    activation: whether an activation can be chosen.
    default_activation: the activation when none is chosen.
  """

  depth: int | None = None
  width: int | None = None
  activation: bool = True
  default_activation: str = "relu"


TAKES = {
    "mlp": Takes(depth=2, width=1, default_activation="tanh"),
    "deep_cnn": Takes(depth=3, width=1, default_activation="tanh"),
    "resnet8": Takes(),
    "resnet32": Takes(),
    "resnet56": Takes(),
    "resnet110": Takes(),
    "vgg16": Takes(),
    "vit": Takes(depth=1, width=1, activation=False, default_activation="gelu"),
    "efficientnet_b0": Takes(default_activation="swish"),
}
"""Which of ``depth``, ``width`` and ``activation`` each model of :data:`MODELS` takes."""


def check_fields(name: str, *, depth=None, width=None, activation_name=None) -> None:
  """Raises ``ValueError`` naming a field ``name`` does not take or a value below its least.

  Example:
    >>> check_fields("resnet32", depth=20)
    ValueError: model 'resnet32' does not take depth (fixed by the model); it takes: activation
  """
  _check_name(name)
  takes = TAKES[name]
  given = {"depth": depth, "width": width, "activation": activation_name}
  allowed = {"depth": takes.depth is not None, "width": takes.width is not None,
             "activation": takes.activation}
  extra = [field for field, value in given.items() if value is not None and not allowed[field]]
  if extra:
    accepted = ", ".join(field for field, ok in allowed.items() if ok) or "none of them"
    raise ValueError(f"model {name!r} does not take {', '.join(extra)} (fixed by the model); "
                     f"it takes: {accepted}")
  for field, least in (("depth", takes.depth), ("width", takes.width)):
    if given[field] is not None and given[field] < least:
      raise ValueError(f"{field} must be >= {least} for model {name!r}, got {given[field]}")


def build(name: str, image_shape, num_classes: int, *, depth: int | None = None,
          width: int | None = None, activation_name: str | None = None, seed: int = 0):
  """Builds a model by name for inputs of ``image_shape`` (H, W, C).

  Args:
    name: one of :data:`MODELS`.
    image_shape: input ``(H, W, C)``.
    num_classes: outputs.
    depth, width: for ``mlp``, ``deep_cnn`` and ``vit`` (defaults 7 x 100,
      10 x 128 and 4 blocks x 64); another model given one raises
      (:func:`check_fields`).
    activation_name: one of :data:`ACTIVATIONS` (default tanh for the plain
      networks, relu for ResNet and VGG).
    seed: parameter seed of the model's own initialisation.
  """
  check_fields(name, depth=depth, width=width, activation_name=activation_name)
  return MODELS[name](tuple(image_shape), num_classes, depth, width, activation_name,
                      nnx.Rngs(seed))


def _check_name(name: str) -> None:
  if name not in MODELS:
    raise ValueError(f"model must be one of {list(MODELS)}, got {name!r}")


@functools.lru_cache(maxsize=32)
def _sparse_init_builder(name, image_shape, num_classes, depth, width, activation_name):
  @nnx.jit
  def make(seed):
    model = MODELS[name](image_shape, num_classes, depth, width, activation_name,
                         nnx.Rngs(jax.random.key(seed)))
    # Placeholders the method overwrites; their random draws are left out of
    # the program (the bulk of its compile time).
    params = nnx.state(model, nnx.Param)
    nnx.update(model, layers.model_layout(model).map(
        lambda layer, leaf: jnp.zeros(leaf.shape, leaf.dtype), params, other=lambda leaf: leaf))
    return model

  return make


def build_for_sparse_init(name: str, image_shape, num_classes: int, *, depth: int | None = None,
                          width: int | None = None, activation_name: str | None = None,
                          seed: int = 0):
  """The model of :func:`build` with every maskable kernel zero, for a sparse
  initialisation to fill (every method of :mod:`eoi_jax.methods` draws all of
  them anew).

  Everything else (biases, norms, embeddings, ...) has ``build``'s values. The
  model comes from one compiled program per architecture, reused for every
  seed, without the kernels' random draws: building a deep network eagerly
  compiles one small program per distinct parameter shape.

  Args:
    name, image_shape, num_classes, depth, width, activation_name, seed: as
      in :func:`build`.

  Example:
    >>> model = build_for_sparse_init("resnet32", (32, 32, 3), 10, seed=1)
    >>> out = methods.initialize_model("eoi", jax.random.key(1), model, 0.1)
    >>> nnx.update(model, out.params)
  """
  check_fields(name, depth=depth, width=width, activation_name=activation_name)
  make = _sparse_init_builder(name, tuple(image_shape), num_classes, depth, width,
                              activation_name)
  return make(jnp.int32(seed))
