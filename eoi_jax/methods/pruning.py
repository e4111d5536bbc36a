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

The default loss is softmax cross-entropy; targets it cannot score (one
output, labels out of range, float targets that are not distributions) raise
an error asking for ``loss_fn``, and all-zero or non-finite scores are an
error, never a mask.

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
import numpy as np
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


_PASS_LOSS_FN = ("pass loss_fn=(logits, batch) -> scalar for other targets (e.g. the mean "
                 "squared error for regression)")


def _check_target_shapes(logits_shape, targets):
  """The checks of :func:`classification_loss` that shapes and dtypes decide."""
  if logits_shape[-1:] == (1,):
    raise ValueError(f"the default loss (softmax cross-entropy) is identically zero for a model "
                     f"with one output (logits {tuple(logits_shape)}): every score would be 0; "
                     f"{_PASS_LOSS_FN}")
  if jnp.issubdtype(targets.dtype, jnp.integer):
    if targets.shape != logits_shape[:-1]:
      raise ValueError(f"integer labels must have shape {logits_shape[:-1]} (one per example), "
                       f"got {targets.shape}; {_PASS_LOSS_FN}")
    return
  if not (jnp.issubdtype(targets.dtype, jnp.floating) and targets.shape == logits_shape):
    raise TypeError(f"targets must be integer labels of shape {logits_shape[:-1]} or one-hot "
                    f"floats of shape {logits_shape}, got {targets.dtype}{list(targets.shape)}; "
                    f"{_PASS_LOSS_FN}")


def check_classification_targets(logits_shape, targets):
  """Checks that :func:`classification_loss` can score ``targets`` against
  logits of ``logits_shape``: more than one output, and integer labels in
  ``[0, classes)`` or float rows that are distributions (non-negative, summing
  to 1: one-hot or soft labels). ``ValueError``/``TypeError`` asking for
  ``loss_fn`` otherwise. Values are read only when ``targets`` is concrete."""
  _check_target_shapes(tuple(logits_shape), targets)
  if _validation.is_tracer(targets):
    return
  values = np.asarray(targets)
  classes = logits_shape[-1]
  if np.issubdtype(values.dtype, np.integer):
    if values.size and (values.min() < 0 or values.max() >= classes):
      raise ValueError(f"the default loss needs integer labels in [0, {classes}), got labels in "
                       f"[{values.min()}, {values.max()}]; {_PASS_LOSS_FN}")
    return
  rows = values.astype(np.float64).reshape(-1, classes)
  # A float32 sum of `classes` terms is within classes * 2**-24 of the exact one.
  if rows.size and (np.any(rows < 0) or not np.all(np.isfinite(rows)) or np.any(
      np.abs(rows.sum(axis=1) - 1.0) > 1e-6 + classes * 2.0**-23)):
    raise ValueError("the default loss needs float targets that are distributions over the "
                     "classes (non-negative rows summing to 1: one-hot or soft labels); got "
                     f"other values; {_PASS_LOSS_FN}")


def classification_loss(logits, batch):
  """Mean softmax cross-entropy of ``logits`` against ``batch[1]``: integer
  class labels ``(batch,)`` or one-hot / soft targets of ``logits``' shape,
  for a model with more than one output. The default ``loss_fn`` of
  :func:`snip` and :func:`grasp` (which check the targets' values first,
  :func:`check_classification_targets`)."""
  targets = batch[1]
  _check_target_shapes(logits.shape, targets)
  if jnp.issubdtype(targets.dtype, jnp.integer):
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
  return optax.softmax_cross_entropy(logits, targets).mean()


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


def _checked_default_targets(params, apply_fn, batch, loss_fn):
  """Checks the targets when ``loss_fn`` is the default :func:`classification_loss`."""
  if loss_fn is classification_loss:
    logits = jax.eval_shape(apply_fn, params, batch[0])
    check_classification_targets(logits.shape, batch[1])


def _score_summary(scores):
  """``(scores, all zero, all finite)``: what :func:`_checked_scores` reads."""
  return scores, jnp.all(scores == 0), jnp.all(jnp.isfinite(scores))


def _checked_scores(method: str, scored):
  """The scores of :func:`_score_summary`'s output; ``ValueError`` when every
  score is zero (the mask would be the first entries in order) or one is
  not finite."""
  scores, all_zero, finite = scored
  if not bool(finite):
    raise ValueError(f"{method}: some scores are not finite (NaN or infinity): the loss or its "
                     "gradient overflows on this batch; check the batch and loss_fn")
  if bool(all_zero):
    raise ValueError(f"{method}: every score is zero: the loss does not change with the "
                     "maskable weights on this batch, so any mask would be arbitrary; pass a "
                     "loss_fn=(logits, batch) -> scalar that depends on the model's outputs")
  return scores


def snip_network(params, apply_fn, batch, d: float, layout: Layout,
                 loss_fn=classification_loss):
  """:func:`snip` on checked arguments."""
  _checked_default_targets(params, apply_fn, batch, loss_fn)

  @jax.jit
  def scores(params, x, y):
    grads = jax.grad(lambda p: loss_fn(apply_fn(p, x), (x, y)))(params)
    return _score_summary(layout.flatten(jax.tree.map(lambda g, w: jnp.abs(g * w), grads,
                                                      params)))

  keep = keep_top(_checked_scores("snip", scores(params, *batch)),
                  count_for_density(d, layout.total_size))
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
  _checked_default_targets(params, apply_fn, batch, loss_fn)

  @jax.jit
  def scores(params, x, y):
    loss = lambda p: loss_fn(apply_fn(p, x) / temperature, (x, y))
    grad_fn = jax.grad(loss)
    g = jax.lax.stop_gradient(grad_fn(params))
    _, hg = jax.jvp(grad_fn, (params,), (g,))
    return _score_summary(layout.flatten(jax.tree.map(lambda w, h: -w * h, params, hg)))

  keep = keep_top(_checked_scores("grasp", scores(params, *batch)),
                  count_for_density(d, layout.total_size), largest=False)
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
