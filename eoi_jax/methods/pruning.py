"""Pruning at initialisation: SNIP, GraSP and SynFlow masks, jitted.

Each method scores every entry of the maskable layers (see
:mod:`eoi_jax.layers`) and keeps a global top-k: exactly
``round(density * N)`` entries over all ``N`` maskable entries, ties broken by
position. They take a params tree and ``apply_fn(params, x) -> logits``, so
they work with any model, e.g. for NNX:

  >>> graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  >>> apply_fn = lambda p, x: nnx.merge(graphdef, p, rest)(x)
  >>> masks = snip(params, apply_fn, (x, y), 0.1)  # y: int labels or one-hot
  >>> masks = snip(params, apply_fn, (x, t), 0.1,
  ...              loss_fn=lambda out, batch: ((out - batch[1]) ** 2).mean())

The per-layer densities a method realises can then be regenerated with EOI
("method + EOI"): ``eoi_params(key, params, mask_densities(params, masks))``.

Methods, as the paper runs them:
  * SNIP (Lee et al. 2019): connection sensitivity ``|dL/dm| = |g * w|`` on one
    batch, keep the largest.
  * GraSP (Wang et al. 2020): ``-w * (H g)`` with the loss at temperature 200,
    the Hessian-gradient product by forward-over-reverse differentiation;
    keep the smallest (removing weights that most reduce gradient flow).
  * SynFlow (Tanaka et al. 2020): ``R = sum(f_|w|(1))`` on an all-ones input
    with absolute-valued parameters, score ``|dR/dw * w|``, pruned in
    ``iterations`` rounds to densities ``d**((t + 1) / iterations)``; optional
    float64 (needs ``jax_enable_x64``) against overflow in deep networks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from eoi_jax import _validation, layers, masking
from eoi_jax.counts import count_for_density
from eoi_jax.layers import Filter, Layout, Stacked
from eoi_jax.topk import keep_top


def _maskable(params, filter, stacked, layout) -> Layout:
  layout = layers.resolve(params, filter, stacked, layout)
  if not layout.layers:
    raise ValueError("params has no maskable layers")
  return layout


def classification_loss(logits, batch):
  """Mean softmax cross-entropy of ``logits`` against ``batch[1]``: integer
  class labels ``(batch,)`` or one-hot / soft targets of ``logits``' shape.
  The default ``loss_fn`` of :func:`snip` and :func:`grasp`."""
  targets = batch[1]
  if jnp.issubdtype(targets.dtype, jnp.integer):
    if targets.shape != logits.shape[:-1]:
      raise ValueError(f"integer labels must have shape {logits.shape[:-1]} (one per example), "
                       f"got {targets.shape}; pass loss_fn for other targets")
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
  if jnp.issubdtype(targets.dtype, jnp.floating) and targets.shape == logits.shape:
    return optax.softmax_cross_entropy(logits, targets).mean()
  raise TypeError(f"targets must be integer labels of shape {logits.shape[:-1]} or one-hot "
                  f"floats of shape {logits.shape}, got {targets.dtype}{list(targets.shape)}; "
                  "pass loss_fn=(logits, batch) -> scalar for other losses (e.g. regression)")


def check_loss_fn(loss_fn):
  """``loss_fn`` or the default :func:`classification_loss`."""
  if loss_fn is None:
    return classification_loss
  if not callable(loss_fn):
    raise TypeError(f"loss_fn must be a callable (logits, batch) -> scalar, got {loss_fn!r}")
  return loss_fn


def check_batch(batch):
  if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
    raise TypeError(f"batch must be a pair (inputs, targets), got {type(batch).__name__}")
  return tuple(batch)


def snip(params, apply_fn, batch, density, *, loss_fn=None, filter: Filter | None = None,
         stacked: Stacked = None, layout: Layout | None = None):
  """SNIP masks: keep the ``density`` share of entries with the largest ``|g * w|``.

  Args:
    params: params tree.
    apply_fn: ``(params, x) -> logits``.
    batch: ``(inputs, targets)``; the paper uses one batch of 128.
    density: overall density of the maskable layers, in (0, 1].
    loss_fn: ``(logits, batch) -> scalar``; default
      :func:`classification_loss` (integer labels or one-hot targets).
    filter, stacked, layout: as in :func:`eoi_jax.layers.resolve`.

  Returns:
    A mask tree.
  """
  return snip_network(params, apply_fn, check_batch(batch), _validation.check_density(density),
                      _maskable(params, filter, stacked, layout), check_loss_fn(loss_fn))


def snip_network(params, apply_fn, batch, d: float, layout: Layout,
                 loss_fn=classification_loss):
  """:func:`snip` on checked arguments."""

  @jax.jit
  def scores(params, x, y):
    grads = jax.grad(lambda p: loss_fn(apply_fn(p, x), (x, y)))(params)
    return layout.flatten(jax.tree.map(lambda g, w: jnp.abs(g * w), grads, params))

  keep = keep_top(scores(params, *batch), count_for_density(d, layout.total_size))
  return layout.unflatten(keep, params)


def grasp(params, apply_fn, batch, density, *, temperature: float = 200.0, loss_fn=None,
          filter: Filter | None = None, stacked: Stacked = None, layout: Layout | None = None):
  """GraSP masks: keep the ``density`` share with the smallest ``-w * (H g)``.

  ``g`` is the gradient of ``loss_fn(logits / temperature, batch)`` (the
  paper: cross-entropy at temperature 200) and ``H g`` its Hessian-gradient
  product (forward-over-reverse: the JVP of the gradient along ``g``).
  Arguments as for :func:`snip`.
  """
  d = _validation.check_density(density)
  temperature = _validation.check_non_negative(temperature, "temperature")
  if temperature == 0:
    raise ValueError("temperature must be > 0, got 0")
  return grasp_network(params, apply_fn, check_batch(batch), d,
                       _maskable(params, filter, stacked, layout), temperature,
                       check_loss_fn(loss_fn))


def grasp_network(params, apply_fn, batch, d: float, layout: Layout, temperature=200.0,
                  loss_fn=classification_loss):
  """:func:`grasp` on checked arguments."""

  @jax.jit
  def scores(params, x, y):
    loss = lambda p: loss_fn(apply_fn(p, x) / temperature, (x, y))
    grad_fn = jax.grad(loss)
    g = jax.lax.stop_gradient(grad_fn(params))
    _, hg = jax.jvp(grad_fn, (params,), (g,))
    return layout.flatten(jax.tree.map(lambda w, h: -w * h, params, hg))

  keep = keep_top(scores(params, *batch), count_for_density(d, layout.total_size),
                  largest=False)
  return layout.unflatten(keep, params)


def synflow(params, apply_fn, input_shape, density, *, iterations: int = 100,
            float64: bool = False, filter: Filter | None = None, stacked: Stacked = None,
            layout: Layout | None = None):
  """SynFlow masks, pruned iteratively without data.

  Args:
    params: params tree.
    apply_fn: ``(params, x) -> outputs``; called with absolute-valued params
      and an all-ones input of ``(1, *input_shape)``.
    input_shape: shape of one input example.
    density: final overall density, in (0, 1].
    iterations: rounds; round ``t`` keeps ``density ** ((t + 1) / iterations)``.
    float64: score in float64 (requires ``jax_enable_x64``).
    filter, stacked, layout: as in :func:`eoi_jax.layers.resolve`.

  Returns:
    A mask tree.
  """
  d = _validation.check_density(density)
  if int(iterations) < 1:
    raise ValueError(f"iterations must be >= 1, got {iterations}")
  if float64 and not jax.config.jax_enable_x64:
    raise ValueError("float64=True needs jax.config.update('jax_enable_x64', True)")
  return synflow_network(params, apply_fn, input_shape, d,
                         _maskable(params, filter, stacked, layout), int(iterations), float64)


def synflow_network(params, apply_fn, input_shape, d: float, layout: Layout,
                    iterations: int = 100, float64: bool = False):
  """:func:`synflow` on checked arguments."""
  total = layout.total_size
  dtype = jnp.float64 if float64 else jnp.float32
  counts = jnp.asarray([count_for_density(d ** ((t + 1) / iterations), total)
                        for t in range(int(iterations))], jnp.int32)
  ones = jnp.ones((1,) + tuple(input_shape), dtype)
  abs_params = jax.tree.map(lambda w: jnp.abs(w).astype(dtype), params)

  @jax.jit
  def run(abs_params):
    def round_(t, keep):
      masked = masking.apply_masks(abs_params, layout.unflatten(keep, params))
      grads = jax.grad(lambda p: jnp.sum(apply_fn(p, ones)))(masked)
      scores = layout.flatten(jax.tree.map(lambda g, w: jnp.abs(g * w), grads, masked))
      return keep_top(jnp.where(keep, scores, -1.0), counts[t])

    return jax.lax.fori_loop(0, int(iterations), round_, jnp.ones((total,), jnp.bool_))

  keep = run(abs_params)
  return layout.unflatten(keep, params)
