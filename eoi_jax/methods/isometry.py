"""Approximate isometry (AI, Lee et al. 2020): optimise masked weights towards orthogonality.

Minimises, over all maskable layers jointly,
``sum_matrices || C C^T - sigma_w^2 I ||_F`` (not squared), where ``C`` is a
masked matrix of a kernel (:mod:`eoi_jax.kinds`: one per layer, head or
feature group) reshaped to ``(out, in * taps)`` and the smaller Gram side is
used (``C^T C`` when ``C`` is taller than wide). Plain gradient descent with a
fixed learning rate, as one jitted ``lax.scan``; gradients are masked so
pruned entries stay exactly zero and the masks never change.

Example:
  >>> params, losses = approximate_isometry(params, masks, gain=1.0, steps=10_000)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from eoi_jax import _validation, layers
from eoi_jax.kinds import to_matrices
from eoi_jax.layers import Filter, Layout, Stacked


def _layer_loss(kernel, gain):
  """``||G - gain^2 I||_F`` for one kernel in Flax layout (``(..., in, out)``)."""
  c = kernel.reshape(-1, kernel.shape[-1]).T  # (out, in * taps)
  gram = c @ c.T if c.shape[0] <= c.shape[1] else c.T @ c
  eye = jnp.eye(gram.shape[0], dtype=gram.dtype)
  return jnp.sqrt(jnp.sum((gram - gain**2 * eye) ** 2))


def _objective(kernels, layout: Layout, gain):
  """Sum of :func:`_layer_loss` over the matrices of ``{name: leaf}`` (each layer
  of a stack, head or feature group counted; :mod:`eoi_jax.kinds`)."""
  return sum(jnp.sum(jax.vmap(lambda k: _layer_loss(k, gain))(
      to_matrices(jnp, kernels[l.name], l.leaf_kind()))) for l in layout.layers)


def isometry_loss(params, *, gain=1.0, filter: Filter | None = None, stacked: Stacked = None,
                  kinds=None, layout: Layout | None = None):
  """The AI objective of a params tree (each layer of a stack counted)."""
  layout = layers.resolve(params, filter, stacked, layout, kinds)
  return _objective(layout.leaves(params), layout, gain)


def approximate_isometry(params, masks, *, gain=1.0, steps: int = 10_000, learning_rate=0.1,
                         filter: Filter | None = None, stacked: Stacked = None,
                         kinds=None, layout: Layout | None = None):
  """Runs AI on the masked kernels of ``params``.

  Args:
    params: params tree whose masked-out entries are zero.
    masks: mask tree (see :mod:`eoi_jax.masking`); unchanged.
    gain: ``sigma_w``.
    steps: gradient steps (the paper: 10,000; 1,000 for 1000-layer networks).
    learning_rate: plain SGD step size (the paper: 0.1).
    filter, stacked, kinds, layout: as in :func:`eoi_jax.layers.resolve`.

  Returns:
    ``(params, losses)``: the optimised params and the objective before each
    step (``(steps,)``).
  """
  _validation.check_gain(gain)
  if int(steps) < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  if not learning_rate > 0:
    raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
  layout = layers.resolve(params, filter, stacked, layout, kinds)
  return isometry_network(params, masks, layout, gain, int(steps), learning_rate)


def isometry_network(params, masks, layout: Layout, gain, steps: int, learning_rate):
  """:func:`approximate_isometry` on checked arguments."""
  leaves = layout.leaves(params)
  mask_leaves = layout.leaves(masks)
  kernels = {n: leaves[n] * mask_leaves[n] for n in layout.names}
  kernel_masks = {n: jnp.broadcast_to(mask_leaves[n], jnp.shape(leaves[n])) for n in layout.names}

  @jax.jit
  def run(kernels):
    def step(kernels, _):
      loss, grads = jax.value_and_grad(lambda k: _objective(k, layout, gain))(kernels)
      kernels = jax.tree.map(lambda k, g, m: jnp.where(m, k - learning_rate * g, 0),
                             kernels, grads, kernel_masks)
      return kernels, loss
    return jax.lax.scan(step, kernels, None, length=steps)

  kernels, losses = run(kernels)
  return layout.replace(params, kernels), losses
