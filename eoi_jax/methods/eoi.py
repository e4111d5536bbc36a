"""EOI over a whole network: weights and masks for every maskable layer.

Given per-layer densities (from an allocator in :mod:`eoi_jax.allocation`, or
from any existing mask through :func:`eoi_jax.masking.mask_densities`), every
maskable leaf gets an EOI kernel and its mask: the dense rule for 2-D kernels,
the conv rule (with its options) for 3-D to 5-D kernels. Same-shape layers,
stacked or not, are generated in one vmapped call. Biases of those layers are
redrawn from ``N(0, bias_std**2)`` (zeros by default); everything else is left
as it was.

Example:
  >>> params = nnx.state(model, nnx.Param)
  >>> dens = allocation.erk(params, 0.1)
  >>> out = eoi_params(jax.random.key(0), params, dens, gain=1.0)
  >>> nnx.update(model, out.params)
  >>> print(out.summary.table())
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np

from eoi_jax import _validation, block_givens, kernels, layers, summary
from eoi_jax.layers import Filter, Layout, Stacked
from eoi_jax.methods import blocks
from eoi_jax.methods.network import SparseInit, regenerate_layers


class EOIOptions(NamedTuple):
  """EOI's options over a network, checked (see :func:`eoi_params`)."""

  gain: object = 1.0
  bias_std: float = 0.0
  center_density: object = None
  structured: bool = False
  block: int | None = None

  @classmethod
  def checked(cls, gain=1.0, bias_std=0.0, center_density=None, structured=False, block=None):
    return cls(_validation.check_gain(gain),
               _validation.check_non_negative(bias_std, "bias_std"),
               kernels.check_center_density(center_density),
               _validation.check_flag(structured, "structured"),
               block_givens.check_block(block))


def eoi_network(key, params, layout: Layout, densities: Mapping[str, np.ndarray],
                options: EOIOptions) -> SparseInit:
  """:func:`eoi_params` on checked arguments (``densities`` as returned by
  :meth:`eoi_jax.layers.Layout.check_densities`)."""

  block_of = blocks.layer_blocks(layout, options.block)

  def generate(keys: dict, layout: Layout) -> dict:
    by_dtype = {}
    for layer in layout.layers:
      by_dtype.setdefault((layer.dtype, block_of[layer.name]), []).append(layer)
    out = {}
    for (dtype, block), group in by_dtype.items():
      requests = [kernels.KernelRequest(layer.stack + layer.shape, keys[layer.name].keys,
                                        densities[layer.name].reshape(-1), layer.leaf_kind(),
                                        len(layer.stack), keys[layer.name].index)
                  for layer in group]
      made = kernels.generate(requests, gain=options.gain,
                              center_density=options.center_density,
                              structured=options.structured, dtype=dtype, block=block)
      out.update(zip([layer.name for layer in group], made))
    return out

  new_params, mask_tree = regenerate_layers(key, params, layout, generate,
                                            bias_std=options.bias_std)
  report = summary.sparsity_summary(new_params, mask_tree, densities, layout=layout)
  return SparseInit(new_params, mask_tree, report)


def eoi_params(key, params, densities: Mapping[str, object], *, gain=1.0, bias_std=0.0,
               center_density=None, structured: bool = False, block: int | None = None,
               filter: Filter | None = None, stacked: Stacked = None, kinds=None,
               layout: Layout | None = None) -> SparseInit:
  """Initialises every maskable layer with EOI at its density.

  Args:
    key: a ``jax.random`` key (kernels and biases as in
      :func:`eoi_jax.methods.network.regenerate_layers`).
    params: params tree (dict or ``nnx.State``).
    densities: ``{name: density}`` for every maskable layer, each in (0, 1]
      (an array over the stack for a stack).
    gain: ``sigma_w`` for every kernel.
    bias_std: ``sigma_b``; biases of the maskable layers (the ``bias`` leaf
      beside each kernel) are drawn from ``N(0, sigma_b**2)``.
    center_density, structured: conv options
      (see :func:`eoi_jax.sparse_delta_orthogonal`).
    block: ``None``, or block EOI with ``b x b`` blocks for every layer whose
      matrices' sizes ``b`` divides (the others get scalar EOI, see
      :mod:`eoi_jax.methods.blocks`; a ``b`` that fits no layer is an error).
    filter, stacked, kinds, layout: as in :func:`eoi_jax.layers.resolve`;
      each layer's kind says which of its axes form the matrices
      (:mod:`eoi_jax.kinds`).

  Returns:
    A :class:`SparseInit` ``(params, masks, summary)``. Each mask is its
    kernel's float32 support (float64 for float64 leaves): for float16 and
    bfloat16 leaves entries the cast rounds to zero stay in the mask (see
    :func:`eoi_jax.sparse_orthogonal`).
  """
  key = _validation.check_key(key)
  layout = layers.resolve(params, filter, stacked, layout, kinds)
  options = EOIOptions.checked(gain, bias_std, center_density, structured, block)
  return eoi_network(key, params, layout, layout.check_densities(densities, positive=True),
                     options)
