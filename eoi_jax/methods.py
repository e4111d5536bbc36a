"""Every sparse initialisation by name: one selector returning params and masks.

==================  ===========================================================
``eoi``             EOI at the allocator's per-layer densities
``dense``           dense (delta-)orthogonal values, full masks
``random``          dense (delta-)orthogonal values under a uniformly random
                    mask at the allocator's per-layer densities
``uniform``/``erk`` ``random`` with that allocator
``snip``,           dense (delta-)orthogonal values pruned by that method
``grasp``,          (:mod:`eoi_jax.pruning`) to the overall density
``synflow``
``sao``             SAO (:mod:`eoi_jax.sao`), the ``ends`` layers dense
``ai``              ``random`` followed by approximate isometry
``<mask>+eoi``      that method's per-layer densities, regenerated with EOI
                    (a layer the method empties gets EOI's sparsest pattern)
``<mask>+ai``       that method's mask, then approximate isometry
                    (:mod:`eoi_jax.isometry`)
==================  ===========================================================

``<mask>`` is any of ``random``, ``uniform``, ``erk``, ``snip``, ``grasp``,
``synflow``, ``sao``. :func:`initialize` works on a params tree and an
``apply_fn``; :func:`initialize_model` takes an NNX model and reads its
stacks and end layers from ``model.sparsity_spec()`` when it has one.

Example:
  >>> out = initialize_model("snip+eoi", jax.random.key(0), model, 0.1, batch=(x, y))
  >>> nnx.update(model, out.params)
  >>> tx = static_sparse(optax.sgd(0.1), out.masks)
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np
from flax import nnx

from eoi_jax import _checks, allocation, baselines, isometry, masking, pruning, sao, summary
from eoi_jax.masking import Filter, Stacked
from eoi_jax.sparse_init import SparseInit, eoi_params

MASK_METHODS = ("random", "uniform", "erk", "snip", "grasp", "synflow", "sao")
"""Methods that make a mask, usable alone or before ``+eoi`` / ``+ai``."""

METHODS = (("eoi", "dense", "ai") + MASK_METHODS + tuple(f"{m}+eoi" for m in MASK_METHODS)
           + tuple(f"{m}+ai" for m in MASK_METHODS))
"""Every name :func:`initialize` accepts."""

_EMPTY_LAYER_DENSITY = 1e-12  # asks EOI for its sparsest pattern


def parse(method: str) -> tuple[str, str]:
  """``(mask method or "eoi"/"dense", then)`` with ``then`` in ``""``, ``"eoi"``, ``"ai"``."""
  if method not in METHODS:
    raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
  if method == "ai":
    return "random", "ai"
  first, _, then = method.partition("+")
  return first, then


def initialize(method: str, key, params, density, *, apply_fn: Callable | None = None,
               batch=None, input_shape: Sequence[int] | None = None,
               allocator: str = "uniform", ends: Sequence[str] = (), gain=1.0, bias_std=0.0,
               center_density=None, structured: bool = False, ai_steps: int = 10_000,
               ai_learning_rate=0.1, sao_degree: int | None = None,
               synflow_float64: bool = False, filter: Filter | None = None,
               stacked: Stacked = None) -> SparseInit:
  """Initialises every maskable layer of ``params`` by ``method``.

  Args:
    method: one of :data:`METHODS` (see the module table).
    key: a ``jax.random`` key.
    params: params tree (dict or ``nnx.State``).
    density: overall density of the maskable layers, in (0, 1].
    apply_fn: ``(params, x) -> logits``; needed by ``snip``, ``grasp`` and
      ``synflow``.
    batch: ``(x, labels)`` scored by ``snip`` and ``grasp``.
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
      of ``density`` per layer, :func:`eoi_jax.sao.degree_for_density`).
    synflow_float64: score SynFlow in float64 (needs ``jax_enable_x64``).
    filter, stacked: as in :func:`eoi_jax.masking.layers`.

  Returns:
    A :class:`eoi_jax.sparse_init.SparseInit` ``(params, masks, summary)``:
    masked-out entries of ``params`` are zero, ``summary`` lists requested
    vs realised density per layer.

  Raises:
    ValueError: unknown method or allocator, a density outside (0, 1], a
      missing ``apply_fn``/``batch``/``input_shape`` for a method that needs
      it, or a layer SAO cannot build.
  """
  first, then = parse(method)
  if first in ("uniform", "erk"):
    first, allocator = "random", first
  if first != "sao" or sao_degree is None:
    density = _checks.check_density(density)
  layer_kwargs = {"filter": filter, "stacked": stacked}
  value_key, mask_key, eoi_key = jax.random.split(key, 3)

  def allocated():
    extra = {"dense": list(ends)} if allocator == "uniform_dense_ends" else {}
    return allocation.allocate(allocator, params, density, **extra, **layer_kwargs)

  def with_eoi(densities):
    densities = {k: np.maximum(v, _EMPTY_LAYER_DENSITY) for k, v in densities.items()}
    return eoi_params(eoi_key, params, densities, gain=gain, bias_std=bias_std,
                      center_density=center_density, structured=structured, **layer_kwargs)

  if first == "eoi":
    return with_eoi(allocated())
  if first == "sao":
    out = sao.sao_params(value_key, params, density=None if sao_degree else density,
                         degree=sao_degree, dense=ends, gain=gain, bias_std=bias_std,
                         **layer_kwargs)
    if not then:
      return out
    new_params, masks = out.params, out.masks
  else:
    new_params = baselines.orthogonal_params(value_key, params, gain=gain, bias_std=bias_std,
                                             **layer_kwargs)
    if first == "dense":
      masks = masking.full_masks(new_params, **layer_kwargs)
    elif first == "random":
      requested = allocated()
      masks = masking.random_masks(mask_key, new_params, requested, **layer_kwargs)
    else:
      masks = _prune(first, new_params, density, apply_fn, batch, input_shape, synflow_float64,
                     layer_kwargs)
    new_params = masking.apply_masks(new_params, masks)
  realised = masking.mask_densities(new_params, masks, **layer_kwargs)
  if then == "eoi":
    return with_eoi(realised)
  if first != "random":
    requested = realised
  if then == "ai":
    new_params, _ = isometry.approximate_isometry(new_params, masks, gain=gain, steps=ai_steps,
                                                  learning_rate=ai_learning_rate, **layer_kwargs)
  report = summary.sparsity_summary(new_params, masks, requested, **layer_kwargs)
  return SparseInit(new_params, masks, report)


def _prune(method, params, density, apply_fn, batch, input_shape, float64, layer_kwargs):
  if apply_fn is None:
    raise ValueError(f"method {method!r} needs apply_fn=(params, x) -> logits")
  if method == "synflow":
    if input_shape is None:
      if batch is None:
        raise ValueError("method 'synflow' needs input_shape (or a batch to take it from)")
      input_shape = np.shape(batch[0])[1:]
    return pruning.synflow(params, apply_fn, input_shape, density, float64=float64,
                           **layer_kwargs)
  if batch is None:
    raise ValueError(f"method {method!r} needs batch=(x, labels)")
  prune = pruning.snip if method == "snip" else pruning.grasp
  return prune(params, apply_fn, batch, density, **layer_kwargs)


def initialize_model(method: str, key, model: nnx.Module, density, *, batch=None,
                     **options) -> SparseInit:
  """:func:`initialize` for an NNX model; the model itself is not changed.

  ``apply_fn`` calls the model in eval mode (batch-norm statistics are not
  updated while pruning scores it). ``stacked`` and ``ends`` default to
  ``model.sparsity_spec()`` when the model has one (the models of
  :mod:`eoi_jax.models` do).

  Args:
    method, key, density, batch: as in :func:`initialize`.
    model: an ``nnx.Module``.
    **options: any other keyword of :func:`initialize`.

  Returns:
    A :class:`eoi_jax.sparse_init.SparseInit`; apply it with
    ``nnx.update(model, out.params)``.
  """
  if hasattr(model, "sparsity_spec"):
    spec = model.sparsity_spec()
    options.setdefault("stacked", spec.stacked)
    options.setdefault("ends", tuple(spec.ends))
  scoring_copy = nnx.merge(*nnx.split(model))
  scoring_copy.eval()
  graphdef, params, rest = nnx.split(scoring_copy, nnx.Param, ...)

  def apply_fn(p, x):
    return nnx.merge(graphdef, p, rest, copy=True)(x)

  options.setdefault("apply_fn", apply_fn)
  return initialize(method, key, params, density, batch=batch, **options)

