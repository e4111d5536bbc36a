"""Every sparse initialisation by name: a table of mask makers and value makers.

A method is a *mask maker* (which entries train) followed by a *value maker*
(what they start at):

==================  ===========================================================
mask makers
``dense``           dense (delta-)orthogonal values, full masks
``random``          dense (delta-)orthogonal values under a uniformly random
                    mask at the allocator's per-layer densities
``uniform``/``erk`` ``random`` with that allocator
``snip``,           dense (delta-)orthogonal values pruned by that method
``grasp``,          (:mod:`eoi_jax.methods.pruning`) to the overall density
``synflow``
``sao``             SAO (:mod:`eoi_jax.methods.sao`), the ``ends`` layers dense
``block=b``         an option of ``random``/``uniform``/``erk`` (whole ``b x b``
                    blocks, :func:`eoi_jax.methods.blocks.random_block_masks`)
                    and of ``eoi`` (block EOI) where ``b`` divides a layer's sizes
value makers
``keep``            the mask maker's values
``eoi``             EOI at the mask's per-layer densities (a layer the mask
                    empties gets EOI's sparsest pattern)
``ai``              approximate isometry on the masked values
                    (:mod:`eoi_jax.methods.isometry`)
==================  ===========================================================

:data:`METHODS` names the pairs: ``eoi`` (EOI at the allocator's densities),
``dense``, each mask maker alone, ``ai`` (``random+ai``), and
``<mask>+eoi`` / ``<mask>+ai`` for every mask maker but ``dense``.
:func:`initialize` works on a params tree and an ``apply_fn``;
:func:`initialize_model` takes an NNX model and reads its stacks and end
layers from ``model.sparsity_spec()`` when it has one.

Example:
  >>> out = initialize_model("snip+eoi", jax.random.key(0), model, 0.1, batch=(x, y))
  >>> nnx.update(model, out.params)
  >>> tx = static_sparse(optax.sgd(0.1), out.masks)
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import numpy as np

from eoi_jax import _validation, allocation, givens, layers, masking, summary
from eoi_jax.layers import Filter, Layout, Stacked
from eoi_jax.methods import blocks, dense, isometry, pruning, sao
from eoi_jax.methods.eoi import EOIOptions, eoi_network
from eoi_jax.methods.network import SparseInit

_EMPTY_LAYER_DENSITY = 1e-12  # asks EOI for its sparsest pattern


def _three_keys(key):
  """``jax.random.split(key, 3)`` as three keys (on the host for a concrete key)."""
  return givens.split_into(key, 3)


class Request(NamedTuple):
  """One :func:`initialize` call's arguments, checked once."""

  params: object
  layout: Layout
  density: float | None  # None: SAO with a fixed degree
  allocator: str
  ends: tuple[str, ...]
  apply_fn: Callable | None
  batch: object
  loss_fn: Callable
  input_shape: tuple | None
  eoi: EOIOptions
  ai_steps: int
  ai_learning_rate: float
  sao_degree: int | None
  synflow_float64: bool

  def allocated(self) -> dict:
    """The allocator's per-layer densities."""
    options = {"dense": list(self.ends)} if self.allocator == "uniform_dense_ends" else {}
    return allocation.ALLOCATORS[self.allocator](self.layout, self.density, **options)


class Masked(NamedTuple):
  """A mask maker's output."""

  params: object  # its values, masked
  masks: object  # the mask tree
  requested: dict | None  # per-layer densities asked for (None: the realised ones)


# ----------------------------------------------------------------------------
# Mask makers: (value_key, mask_key, request) -> Masked.


def _dense_values(key, request: Request):
  return dense.orthogonal_network(key, request.params, request.layout, request.eoi.gain,
                                  request.eoi.bias_std)


def _dense(value_key, mask_key, request: Request) -> Masked:
  values = _dense_values(value_key, request)
  return Masked(values, masking.full_masks(values, layout=request.layout), None)


def _random(allocator: str | None):
  def make(value_key, mask_key, request: Request) -> Masked:
    if allocator is not None:
      request = request._replace(allocator=allocator)
    values = _dense_values(value_key, request)
    densities = request.allocated()
    if request.eoi.block is not None:
      masks = blocks.random_block_masks(mask_key, request.layout, values,
                                        request.layout.as_arrays(densities), request.eoi.block)
    else:
      masks = masking.masks_from_scores(request.layout, values,
                                        masking.random_scores(mask_key, request.layout),
                                        request.layout.as_arrays(densities))
    return Masked(masking.apply_masks(values, masks), masks, densities)
  return make


def _pruned(name: str):
  def make(value_key, mask_key, request: Request) -> Masked:
    if request.apply_fn is None:
      raise ValueError(f"method {name!r} needs apply_fn=(params, x) -> logits")
    values = _dense_values(value_key, request)
    if name == "synflow":
      input_shape = request.input_shape
      if input_shape is None:
        if request.batch is None:
          raise ValueError("method 'synflow' needs input_shape (or a batch to take it from)")
        input_shape = np.shape(request.batch[0])[1:]
      masks = pruning.synflow_network(values, request.apply_fn, input_shape, request.density,
                                      request.layout, float64=request.synflow_float64)
    else:
      if request.batch is None:
        raise ValueError(f"method {name!r} needs batch=(inputs, targets)")
      if name == "snip":
        masks = pruning.snip_network(values, request.apply_fn, request.batch, request.density,
                                     request.layout, request.loss_fn)
      else:
        masks = pruning.grasp_network(values, request.apply_fn, request.batch, request.density,
                                      request.layout, loss_fn=request.loss_fn)
    return Masked(masking.apply_masks(values, masks), masks, None)
  return make


def _sao(value_key, mask_key, request: Request) -> Masked:
  degrees = sao.layer_degrees(request.layout, dense=request.ends,
                              density=None if request.sao_degree else request.density,
                              degree=request.sao_degree)
  out = sao.sao_network(value_key, request.params, request.layout, degrees, request.eoi.gain,
                        request.eoi.bias_std)
  requested = {row.name: row.requested for row in out.summary.rows}
  return Masked(out.params, out.masks, requested)


MASK_MAKERS = {
    "dense": _dense,
    "random": _random(None),
    "uniform": _random("uniform"),
    "erk": _random("erk"),
    "snip": _pruned("snip"),
    "grasp": _pruned("grasp"),
    "synflow": _pruned("synflow"),
    "sao": _sao,
}
"""Mask makers by name: ``(value_key, mask_key, request) -> Masked``."""


# ----------------------------------------------------------------------------
# Value makers: (key, request, masked) -> SparseInit; masked is None for
# plain ``eoi`` (the allocator's densities, no mask maker).


def _realised(request: Request, masked: Masked) -> dict:
  return masking.mask_densities(masked.params, masked.masks, layout=request.layout)


def _keep(key, request: Request, masked: Masked) -> SparseInit:
  requested = masked.requested if masked.requested is not None else _realised(request, masked)
  report = summary.sparsity_summary(masked.params, masked.masks, requested,
                                    layout=request.layout)
  return SparseInit(masked.params, masked.masks, report)


def _eoi(key, request: Request, masked: Masked | None) -> SparseInit:
  densities = request.allocated() if masked is None else _realised(request, masked)
  arrays = request.layout.as_arrays(densities)
  nonzero = {name: np.maximum(d, _EMPTY_LAYER_DENSITY) for name, d in arrays.items()}
  return eoi_network(key, request.params, request.layout, nonzero, request.eoi)


def _ai(key, request: Request, masked: Masked) -> SparseInit:
  params, _ = isometry.isometry_network(masked.params, masked.masks, request.layout,
                                        request.eoi.gain, request.ai_steps,
                                        request.ai_learning_rate)
  return _keep(key, request, masked._replace(params=params))


VALUE_MAKERS = {"keep": _keep, "eoi": _eoi, "ai": _ai}
"""Value makers by name: ``(key, request, masked) -> SparseInit``."""


class Method(NamedTuple):
  """A method: a mask maker (``None`` for plain ``eoi``) and a value maker."""

  masks: str | None
  values: str


MASK_METHODS = ("random", "uniform", "erk", "snip", "grasp", "synflow", "sao")
"""Mask makers usable alone or before ``+eoi`` / ``+ai``."""

METHODS = {
    "eoi": Method(None, "eoi"),
    "dense": Method("dense", "keep"),
    "ai": Method("random", "ai"),
    **{m: Method(m, "keep") for m in MASK_METHODS},
    **{f"{m}+eoi": Method(m, "eoi") for m in MASK_METHODS},
    **{f"{m}+ai": Method(m, "ai") for m in MASK_METHODS},
}
"""Every name :func:`initialize` accepts, with its mask and value makers."""


BLOCK_MASKS = ("random", "uniform", "erk")
"""Mask makers with a block form (``block=b``: random masks of whole blocks)."""


def takes_block(method: str) -> bool:
  """Whether ``method`` has a block form: its values are EOI's (block EOI) or
  its masks are random (:data:`BLOCK_MASKS`)."""
  chosen = parse(method)
  return chosen.values == "eoi" or chosen.masks in BLOCK_MASKS


def parse(method: str) -> Method:
  """The :class:`Method` of a name; ``ValueError`` listing the names otherwise."""
  if not isinstance(method, str) or method not in METHODS:
    raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
  return METHODS[method]


def initialize(method: str, key, params, density, *, apply_fn: Callable | None = None,
               batch=None, loss_fn: Callable | None = None,
               input_shape: Sequence[int] | None = None, allocator: str = "uniform", ends: Sequence[str] = (), gain=1.0, bias_std=0.0,
               center_density=None, structured: bool = False, ai_steps: int = 10_000,
               ai_learning_rate=0.1, sao_degree: int | None = None,
               synflow_float64: bool = False, block: int | None = None,
               filter: Filter | None = None, stacked: Stacked = None, kinds=None,
               layout: Layout | None = None) -> SparseInit:
  """Initialises every maskable layer of ``params`` by ``method``.

  Args:
    method: one of :data:`METHODS` (see the module table).
    key: a ``jax.random`` key.
    params: params tree (dict or ``nnx.State``).
    density: overall density of the maskable layers, in (0, 1].
    apply_fn: ``(params, x) -> logits``; needed by ``snip``, ``grasp`` and
      ``synflow``.
    batch: ``(inputs, targets)`` scored by ``snip`` and ``grasp``.
    loss_fn: ``(logits, batch) -> scalar`` for ``snip`` and ``grasp``
      (default: cross-entropy on integer labels or one-hot targets,
      :func:`eoi_jax.methods.pruning.classification_loss`).
    input_shape: one example's shape, for ``synflow`` (default
      ``batch[0].shape[1:]``).
    allocator: per-layer densities for ``eoi``, ``random`` and ``ai``
      (:data:`eoi_jax.allocation.ALLOCATORS`).
    ends: the first and last layer names: kept dense by ``sao`` and by the
      ``uniform_dense_ends`` allocator.
    gain: ``sigma_w``.
    bias_std: ``sigma_b``; biases beside the kernels ~ ``N(0, sigma_b**2)``.
    center_density, structured: EOI's conv options
      (:func:`eoi_jax.sparse_delta_orthogonal`).
    ai_steps, ai_learning_rate: approximate isometry's steps and step size.
    sao_degree: one SAO degree for every sparse layer (default: the degree
      of ``density`` per layer, :func:`eoi_jax.methods.sao.degree_for_density`).
    synflow_float64: score SynFlow in float64 (needs ``jax_enable_x64``).
    block: ``None``, or ``b x b`` blocks (:func:`takes_block` methods only):
      block EOI for ``eoi`` values, random block masks for ``random``,
      ``uniform`` and ``erk`` masks, on every layer whose matrices' sizes
      ``b`` divides; the other layers stay element-level
      (:mod:`eoi_jax.methods.blocks`).
    filter, stacked, kinds, layout: as in :func:`eoi_jax.layers.resolve`; the
      layout is built once and serves every step.

  Returns:
    A :class:`eoi_jax.methods.SparseInit` ``(params, masks, summary)``:
    masked-out entries of ``params`` are zero, ``summary`` lists requested
    vs realised density per layer.

  Raises:
    ValueError: unknown method or allocator, a density outside (0, 1], a
      missing ``apply_fn``/``batch``/``input_shape`` for a method that needs
      it, or a layer SAO cannot build.
  """
  chosen = parse(method)
  key = _validation.check_key(key)
  if allocator not in allocation.ALLOCATORS:
    raise ValueError(f"allocator must be one of {sorted(allocation.ALLOCATORS)}, "
                     f"got {allocator!r}")
  fixed_degree = chosen.masks == "sao" and sao_degree is not None
  if int(ai_steps) < 1:
    raise ValueError(f"ai_steps must be >= 1, got {ai_steps}")
  if not ai_learning_rate > 0:
    raise ValueError(f"ai_learning_rate must be > 0, got {ai_learning_rate}")
  if block is not None and not takes_block(method):
    raise ValueError(f"block applies to methods with EOI values or random masks "
                     f"({[m for m in METHODS if takes_block(m)]}), not {method!r}")
  if synflow_float64 and not jax.config.jax_enable_x64:
    raise ValueError("synflow_float64=True needs jax.config.update('jax_enable_x64', True)")
  request = Request(
      params=params,
      layout=layers.resolve(params, filter, stacked, layout, kinds),
      density=None if fixed_degree else _validation.check_density(density),
      allocator=allocator,
      ends=tuple(ends),
      apply_fn=apply_fn,
      batch=None if batch is None else pruning.check_batch(batch),
      loss_fn=pruning.check_loss_fn(loss_fn),
      input_shape=None if input_shape is None else tuple(input_shape),
      eoi=EOIOptions.checked(gain, bias_std, center_density, structured, block),
      ai_steps=int(ai_steps),
      ai_learning_rate=ai_learning_rate,
      sao_degree=sao_degree,
      synflow_float64=bool(synflow_float64),
  )
  value_key, mask_key, eoi_key = _three_keys(key)
  masked = None
  if chosen.masks is not None:
    masked = MASK_MAKERS[chosen.masks](value_key, mask_key, request)
  return VALUE_MAKERS[chosen.values](eoi_key, request, masked)


def initialize_model(method: str, key, model, density, *, batch=None,
                     **options) -> SparseInit:
  """:func:`initialize` for an NNX model; the model itself is not changed.

  The layer view comes from the model (:func:`eoi_jax.layers.model_layout`):
  each ``Linear``, ``LinearGeneral`` (attention projections), ``Einsum`` and
  ``Conv`` (with its feature groups) gets its kernel's kind, and
  ``nnx.vmap``/``nnx.scan`` stacks their layer axes; ``filter``, ``stacked``
  and ``kinds`` in ``options`` refine it. ``apply_fn`` calls the model in eval
  mode (batch-norm statistics are not updated while pruning scores it).
  ``ends`` defaults to ``model.sparsity_spec().ends`` when the model has one
  (the models of :mod:`eoi_jax.training.models` do).

  Args:
    method, key, density, batch: as in :func:`initialize`.
    model: an ``nnx.Module``.
    **options: any other keyword of :func:`initialize`.

  Returns:
    A :class:`eoi_jax.methods.SparseInit`; apply it with
    ``nnx.update(model, out.params)``.
  """
  from flax import nnx

  if hasattr(model, "sparsity_spec"):
    options.setdefault("ends", tuple(model.sparsity_spec().ends))
  if options.get("layout") is None:
    options["layout"] = layers.model_layout(model, options.pop("filter", None),
                                            options.pop("stacked", None),
                                            options.pop("kinds", None))
  scoring_copy = nnx.merge(*nnx.split(model))
  scoring_copy.eval()
  graphdef, params, rest = nnx.split(scoring_copy, nnx.Param, ...)

  def apply_fn(p, x):
    return nnx.merge(graphdef, p, rest, copy=True)(x)

  options.setdefault("apply_fn", apply_fn)
  return initialize(method, key, params, density, batch=batch, **options)
