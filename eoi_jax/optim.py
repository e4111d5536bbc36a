"""An optax transform for static sparse training: masked weights stay exactly zero.

``static_sparse(inner, masks)`` wraps any optax optimizer:

1. gradients are masked *before* the inner transform, so momentum buffers and
   Adam moments of pruned entries stay exactly zero;
2. the inner transform's updates are masked *after* it, so neither weight
   decay nor a non-elementwise optimizer (Muon's orthogonalisation, say) can
   revive a pruned weight.

With parameters that start masked (``masking.apply_masks``), every pruned
entry is exactly ``0.0`` after any number of steps. The masks live in the
optimizer state, so they are jit arguments (not constants baked into the
compiled step), follow the parameters' sharding, and are checkpointed with the
optimizer state.

Example:
  >>> tx = static_sparse(optax.chain(optax.add_decayed_weights(1e-4),
  ...                                optax.sgd(0.01, momentum=0.9, nesterov=True)),
  ...                    masks)
  >>> optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from eoi_jax import masking


class StaticSparseState(NamedTuple):
  """State of :func:`static_sparse`: the masks and the inner optimizer's state."""

  masks: Any
  inner_state: Any


def _mask_tree(tree, masks):
  def mask(x, m):
    if x is None or m is None:  # no update, or not masked
      return x
    return jnp.where(m, x, jnp.zeros_like(x))

  return jax.tree.map(mask, tree, masks, is_leaf=lambda x: x is None)


def static_sparse(inner: optax.GradientTransformation, masks) -> optax.GradientTransformationExtraArgs:
  """Keeps masked entries exactly zero under any inner optimizer.

  Args:
    inner: any optax ``GradientTransformation`` (e.g. ``optax.adamw(...)``,
      ``optax.chain(optax.add_decayed_weights(wd), optax.sgd(...))``).
    masks: a mask tree with the structure of the params (see
      :mod:`eoi_jax.masking`): bool arrays of their parameters' shapes,
      ``True`` where a weight is trainable; ``None`` for unmasked leaves (a
      scalar ``True`` there is read as ``None``).

  Returns:
    An optax ``GradientTransformationExtraArgs``; extra arguments of
    ``update`` are passed on to ``inner``. Its ``init`` checks every mask
    against its parameter (:func:`eoi_jax.masking.check_masks`: shapes,
    bool dtype, errors naming the leaf) and keeps the masks, scalar ``True``
    leaves as ``None``, in the state.
  """
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return StaticSparseState(masks=masking.checked_masks(params, masks),
                             inner_state=inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    updates = _mask_tree(updates, state.masks)
    updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    updates = _mask_tree(updates, state.masks)
    return updates, StaticSparseState(masks=state.masks, inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# The factories never branch on learning_rate or weight_decay, so both may be
# arrays in the optimizer state (optax.inject_hyperparams): runs with their own
# values then share one transform (eoi_jax.training.multirun). A zero decay
# adds 0 * w: the same updates as none.


def _sgd(learning_rate, momentum, nesterov, weight_decay):
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(learning_rate, momentum=momentum or None,
                               nesterov=nesterov and bool(momentum)))


def _adam(learning_rate, momentum, nesterov, weight_decay):
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))


def _adamw(learning_rate, momentum, nesterov, weight_decay):
  return optax.adamw(learning_rate, weight_decay=weight_decay)


OPTIMIZERS = {"sgd": _sgd, "adam": _adam, "adamw": _adamw}
"""Inner optimizers by name: ``(learning_rate, momentum, nesterov, weight_decay) -> transform``.
``sgd`` is momentum SGD with coupled L2 (``weight_decay * w`` added to the
gradient, as in the paper), ``adam`` Adam with coupled L2, ``adamw`` Adam with
decoupled weight decay."""


def _step_schedule(learning_rate, total_steps):
  return optax.piecewise_constant_schedule(
      learning_rate, {int(total_steps * 0.5): 0.1, int(total_steps * 0.75): 0.1})


SCHEDULES = {
    "step": _step_schedule,
    "cosine": lambda learning_rate, total_steps: optax.cosine_decay_schedule(
        learning_rate, max(total_steps, 1)),
    "constant": lambda learning_rate, total_steps: optax.constant_schedule(learning_rate),
}
"""Learning-rate schedules by name: ``(learning_rate, total_steps) -> schedule``.
``step`` multiplies by 0.1 at 50% and at 75% of training (the paper's)."""


def schedule(name: str, learning_rate, total_steps: int):
  """The schedule ``name`` of :data:`SCHEDULES` from ``learning_rate`` over ``total_steps``."""
  if name not in SCHEDULES:
    raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {name!r}")
  return SCHEDULES[name](learning_rate, total_steps)


def sparse_optimizer(name: str, learning_rate, masks, *, momentum: float = 0.9,
                     nesterov: bool = True, weight_decay: float = 0.0):
  """The optimizers of the paper's protocol, wrapped in :func:`static_sparse`.

  Args:
    name: one of :data:`OPTIMIZERS`: ``"sgd"`` (momentum SGD with coupled L2,
      as in the paper), ``"adam"`` (coupled L2 likewise) or ``"adamw"``
      (decoupled weight decay).
    learning_rate: float or optax schedule.
    masks: mask tree.
    momentum, nesterov: for ``"sgd"``.
    weight_decay: L2 / decay coefficient, >= 0.

  Returns:
    An optax transform.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {name!r}")
  if weight_decay < 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
  return static_sparse(OPTIMIZERS[name](learning_rate, momentum, nesterov, weight_decay), masks)
