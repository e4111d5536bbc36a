"""Signal-propagation diagnostics: singular values of input-output Jacobians."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def jacobian_singular_values(apply_fn, inputs):
  """Singular values of each example's input-output Jacobian.

  Args:
    apply_fn: maps a batch ``(B, *input_shape)`` to outputs ``(B, K)``,
      examples independently (no batch statistics).
    inputs: ``(B, *input_shape)``.

  Returns:
    ``(B, min(K, prod(input_shape)))`` singular values, descending.

  Example:
    >>> s = jacobian_singular_values(lambda x: x @ w, x)  # w: (784, 10)
  """
  def one(x):
    jac = jax.jacrev(lambda v: apply_fn(v[None])[0])(x)
    return jnp.linalg.svd(jac.reshape(jac.shape[0], -1), compute_uv=False)

  return jax.vmap(one)(inputs)


def singular_value_stats(singular_values) -> dict:
  """Mean, max, min and variance over all examples' singular values (as in the paper)."""
  s = jnp.asarray(singular_values, jnp.float32)
  return {"mean": jnp.mean(s), "max": jnp.max(s), "min": jnp.min(s), "var": jnp.var(s)}
