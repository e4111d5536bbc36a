"""Initialisation plans: what a run's sparse initialisation will build, known before it trains.

A plan reads a config as a run does, without data or weights: the dataset's
image shape and classes from its spec (:data:`eoi_jax.training.data.SPECS`;
nothing is loaded), the network's layers from the real model traced
abstractly (``nnx.eval_shape`` and :func:`eoi_jax.layers.model_layout`: no
weight is materialised, the model's own constructor checks run), the
per-layer densities from the allocator the method uses, and the method's own
feasibility rule, the very check its initialisation runs (SAO:
:func:`eoi_jax.methods.sao.layer_degrees`; an allocator that cannot meet the
density raises as it would at initialisation).

A run that cannot be built raises :class:`Infeasible` with the reason. A run
that is built otherwise than asked carries notes: a layer whose random mask
rounds to no entry at all, or whose density is below EOI's sparsest pattern
(the identity pattern, ``min(in, out)`` non-zeros per matrix; the layer
then gets that pattern, denser than asked).

:func:`check` sorts a sweep's configs into runs that can be built and runs
dropped with their reason. Networks are planned once per (model, image shape,
classes, depth, width) and initialisations once per (network,
method, density, allocator, SAO degree, EIS flag), so a grid of thousands
of runs plans in seconds.

Example:
  >>> plan(make_config("mnist_mlp", init="sao", density=0.3))
  Infeasible: init='sao' at density 0.3: layer 'hidden_layers/kernel': density=0.3 gives
  degree 30, which SAO cannot build for a kernel of shape (100, 100): ...
  >>> checked = check(sweep.expand(base, grid, "sweeps/demo"))
  >>> print(checked.table("demo"))
"""

from __future__ import annotations

import collections
import functools
from pathlib import Path
from typing import NamedTuple

import numpy as np

from eoi_jax.counts import count_for_density
from eoi_jax.kernels import wide_shape
from eoi_jax.layers import Layout
from eoi_jax.training.config import Config

# How each mask maker of eoi_jax.methods.registry.MASK_MAKERS chooses its
# per-layer densities (None: plain ``eoi``, the config's allocator).
MASK_DENSITIES = {
    None: "allocator",
    "dense": "dense",
    "random": "allocator",
    "uniform": "uniform",  # the mask maker's own allocator, whatever the config's
    "erk": "erk",
    "snip": "scored",  # the scores choose them, at the overall density
    "grasp": "scored",
    "synflow": "scored",
    "sao": "sao",
}


class Infeasible(ValueError):
  """A run's initialisation cannot be built; the message says why."""


def _cached(fn):
  """``fn`` with its answers, :class:`Infeasible` ones too, cached per key."""

  @functools.lru_cache(maxsize=None)
  def answer(key):
    try:
      return fn(key), None
    except Infeasible as e:
      return None, str(e)

  @functools.wraps(fn)
  def cached(key):
    value, reason = answer(key)
    if reason is not None:
      raise Infeasible(reason)
    return value

  cached.cache_clear = answer.cache_clear
  return cached


class Plan(NamedTuple):
  """What a run's initialisation builds.

  Attributes:
    layout: the network's maskable layers at their real shapes.
    ends: the first and last layers' names (kept dense by SAO and by the
      ``uniform_dense_ends`` allocator).
    densities: ``{layer name: density}`` the mask maker asks for (an array
      over a stack), or ``None`` where scores choose them (SNIP, GraSP,
      SynFlow).
    degrees: SAO's ``{layer name: degree}`` of its sparse layers, else ``None``.
    notes: how the run is built otherwise than asked (empty when as asked).
  """

  layout: Layout
  ends: tuple[str, ...]
  densities: dict | None
  degrees: dict | None
  notes: tuple[str, ...]


class NetworkKey(NamedTuple):
  """Everything of a config that sets the network's layers (the activation does
  not; config validation checks it)."""

  model: str
  image_shape: tuple[int, int, int]
  num_classes: int
  depth: int | None
  width: int | None

  @classmethod
  def of(cls, config: Config) -> "NetworkKey":
    from eoi_jax.training import data

    info = data.SPECS[config.dataset].info
    return cls(config.model, tuple(info.image_shape), info.num_classes, config.depth,
               config.width)


@_cached
def network(key: NetworkKey) -> tuple[Layout, tuple[str, ...]]:
  """``(layout, ends)`` of the real model of ``key``, traced without weights.

  Raises:
    Infeasible: the model cannot be built (its constructor's reason), or a
      layer's kernel cannot be read as matrices.
  """
  from flax import nnx

  from eoi_jax import layers
  from eoi_jax.training import models

  try:
    model = nnx.eval_shape(lambda: models.MODELS[key.model](
        key.image_shape, key.num_classes, key.depth, key.width, None, nnx.Rngs(0)))
    layout = layers.model_layout(model)
    for layer in layout.layers:  # every method reads each kernel as its matrices
      layer.resolved_kind().canonical_shape(layer.shape)
  except (TypeError, ValueError) as e:
    raise Infeasible(f"model {key.model!r} for images {key.image_shape}: {e}") from None
  ends = tuple(model.sparsity_spec().ends) if hasattr(model, "sparsity_spec") else ()
  return layout, ends


class InitKey(NamedTuple):
  """Everything of a config that sets its initialisation's plan."""

  network: NetworkKey
  init: str
  density: float
  allocator: str
  sao_degree: int | None
  structured: bool
  block: int | None = None

  @classmethod
  def of(cls, config: Config) -> "InitKey":
    return cls(NetworkKey.of(config), config.init, config.density, config.allocator,
               config.sao_degree, config.structured, config.block)


def _allocated(layout: Layout, ends, density: float, allocator: str) -> dict:
  """The allocator's densities, computed as the initialisation computes them."""
  from eoi_jax.methods import registry

  request = registry.Request._make([None] * len(registry.Request._fields))._replace(
      layout=layout, density=density, allocator=allocator, ends=tuple(ends))
  return request.allocated()


def _sao(layout: Layout, ends, density: float, sao_degree) -> tuple[dict, dict]:
  """SAO's degrees by its own check (as its mask maker calls it) and their densities."""
  from eoi_jax.methods import sao

  degrees = sao.layer_degrees(layout, dense=ends, density=None if sao_degree else density,
                              degree=sao_degree)
  densities = {layer.name: (degrees[layer.name] / wide_shape(
      layer.resolved_kind().canonical_shape(layer.shape))[1] if layer.name in degrees else 1.0)
               for layer in layout.layers}
  return degrees, densities


def _empty_layers(layout: Layout, densities: dict) -> list[str]:
  """Layers whose random mask at their density keeps no entry (as ``masks_from_scores``
  counts them)."""
  arrays = layout.as_arrays(densities)
  return [layer.name for layer in layout.layers
          if np.any(count_for_density(arrays[layer.name], layer.layer_size) == 0)]


def _below_sparsest(layout: Layout, densities: dict, structured: bool,
                    blocks: dict | None = None) -> list[str]:
  """Layers asked for fewer entries than EOI's sparsest pattern holds: each matrix
  starts from the identity pattern (``min(in, out)`` non-zeros at the centre tap,
  on every tap for structured convs; ``min(in, out) / b`` blocks of ``b x b``
  for a layer of ``blocks``, ``{name: b or None}``)."""
  arrays = layout.as_arrays(densities)
  out = []
  for layer in layout.layers:
    matrix = layer.resolved_kind().canonical_shape(layer.shape)
    taps = int(np.prod(matrix[:-2]))
    least = wide_shape(matrix)[0] * (taps if structured else 1) * ((blocks or {}).get(
        layer.name) or 1)
    asked = count_for_density(np.maximum(arrays[layer.name], 0.0), int(np.prod(matrix)))
    if np.any(asked < least):
      out.append(layer.name)
  return out


@_cached
def _init_plan(key: InitKey) -> Plan:
  from eoi_jax.methods import registry
  from eoi_jax.methods.blocks import layer_blocks

  layout, ends = network(key.network)
  method = registry.parse(key.init)
  rule = MASK_DENSITIES[method.masks]
  what = f"init={key.init!r} at density {key.density}"
  degrees, notes = None, []
  try:
    if rule == "dense":
      densities = {name: 1.0 for name in layout.names}
    elif rule == "sao":
      degrees, densities = _sao(layout, ends, key.density, key.sao_degree)
    elif rule == "scored":
      densities = None
    else:
      allocator = key.allocator if rule == "allocator" else rule
      densities = _allocated(layout, ends, key.density, allocator)
    blocks = layer_blocks(layout, key.block)
  except (TypeError, ValueError) as e:
    raise Infeasible(f"{what}: {e}") from None
  if densities is not None and method.masks is not None:
    empty = _empty_layers(layout, densities)
    if empty and method.values == "eoi":
      notes.append(f"{what}: layers {empty} keep no entry of their mask; EOI gives them its "
                   "sparsest pattern")
    elif empty:
      notes.append(f"{what}: layers {empty} keep no entry (all zero, they pass no signal)")
  if densities is not None and method.values == "eoi":
    sparse = _below_sparsest(layout, densities, key.structured, blocks)
    if sparse:
      notes.append(f"{what}: layers {sparse} are asked for fewer entries than EOI's sparsest "
                   "pattern (min(in, out) per matrix) and get that pattern, denser than asked")
  return Plan(layout, ends, densities, degrees, tuple(notes))


def plan(config: Config) -> Plan:
  """The plan of ``config``'s initialisation (cached per network and method).

  Raises:
    Infeasible: the run cannot be built; the message names the method, the
      density and the layer or model at fault.
  """
  return _init_plan(InitKey.of(config))


class Checked(NamedTuple):
  """A sweep's configs sorted by :func:`check`.

  Attributes:
    runs: the configs that can be built, in order.
    dropped: ``[(config, reason)]`` of those that cannot.
    notes: ``[(config, note)]``: runs built otherwise than asked.
  """

  runs: list
  dropped: list
  notes: list

  def records(self) -> list[dict]:
    """``[{"run": run directory name, "reason": ...}]`` of the dropped runs."""
    return [{"run": Path(c.run_dir).name, "reason": reason} for c, reason in self.dropped]

  def note_records(self) -> list[dict]:
    """``[{"run": run directory name, "note": ...}]`` of the runs built otherwise
    than asked (kept and trained)."""
    return [{"run": Path(c.run_dir).name, "note": note} for c, note in self.notes]

  def table(self, title: str) -> str:
    """A short text table: runs in the grid, runs OK, runs dropped by reason (each
    reason's first sentence; :meth:`records` has them whole)."""
    total = len(self.runs) + len(self.dropped)
    lines = [f"{title}: {total} runs in the grid, {len(self.runs)} OK, {len(self.dropped)} "
             "dropped"]
    for heading, pairs in (("dropped (cannot be built)", self.dropped),
                           ("kept, built otherwise than asked", self.notes)):
      if pairs:
        lines.append(f"  {'runs':>6}  {heading}")
        counts = collections.Counter(reason for _, reason in pairs)
        lines += [f"  {n:>6}  {first_sentence(reason)}" for reason, n in counts.items()]
    return "\n".join(lines)


def first_sentence(text: str) -> str:
  """``text`` up to its first full stop (reasons of SAO list every valid degree after it)."""
  head, stop, _ = text.partition(". ")
  return head + "." if stop else text


def check(configs) -> Checked:
  """Plans every config; sorts them into buildable runs and dropped ones.

  Args:
    configs: validated configs (e.g. :func:`eoi_jax.training.sweep.expand`'s).

  Returns:
    A :class:`Checked`.

  Example:
    >>> checked = check(sweep.expand(base, {"init": ["sao"], "density": [0.1, 0.3]}, "s"))
    >>> [reason for _, reason in checked.dropped]
    ["init='sao' at density 0.3: layer 'hidden_layers/kernel': density=0.3 gives degree 30 ..."]
  """
  runs, dropped, notes = [], [], []
  for config in configs:
    try:
      planned = plan(config)
    except Infeasible as e:
      dropped.append((config, str(e)))
      continue
    runs.append(config)
    notes.extend((config, note) for note in planned.notes)
  return Checked(runs, dropped, notes)
