"""Kernel kinds: how a kernel's axes map inputs to outputs.

EOI makes matrices orthogonal; a kernel is one or more matrices laid out in
some of its axes. A :class:`KernelKind` names them, in the conventions of
``jax.nn.initializers.variance_scaling``:

* ``in_axes`` and ``out_axes``: the matrix is ``prod(in) x prod(out)``
  (several axes each, e.g. an attention projection ``(in, heads, head_dim)``
  has ``out_axes=(1, 2)``);
* ``batch_axes``: independent matrices (per head, per stacked layer);
* ``spatial_axes``: conv taps; the matrix sits at the centre tap
  (delta-orthogonal), every other tap is zero;
* ``groups``: a grouped conv's ``feature_group_count``: its out axis splits
  into ``groups`` blocks, block ``g`` fed by the ``in`` inputs of group ``g``
  (the kernel's in axis holds ``in_features / groups``); each block is its own
  matrix. A depthwise conv (``groups == in_features``) is then an isometry
  channel by channel.

:func:`resolve` turns initializer arguments into a kind, with a default rule
for plain shapes: 2-D is a dense kernel ``(in, out)``; 4-D and 5-D kernels
whose leading sizes are equal and odd (``(3, 3, in, out)``, ``(1, 1, 1, in,
out)``) are conv kernels; anything else (a 3-D kernel is a 1-D conv, an
attention projection or a stack alike) needs the caller to say which, and the
error says how. :func:`to_matrices` and :func:`from_matrices` move between a
kernel and its stack of ``(*taps, fan_in, fan_out)`` matrices.

Example:
  >>> kind = resolve((512, 8, 64), in_axis=0, out_axis=(1, 2))
  >>> kind.matrix_shape((512, 8, 64)), kind.num_matrices((512, 8, 64))
  ((512, 512), 1)
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import NamedTuple, Sequence

import numpy as np


class AmbiguousConvWarning(UserWarning):
  """A conv kernel with one input channel and no ``feature_group_count``: the
  shape of a depthwise conv's kernel (``(k, k, 1, channels * multiplier)``) and
  of a conv on one input channel (a grayscale image's first layer) alike."""


class KernelKind(NamedTuple):
  """How a kernel's axes map inputs to outputs (non-negative axis numbers).

  Attributes:
    in_axes: axes whose sizes multiply to the matrix's rows (fan-in).
    out_axes: axes whose sizes multiply to its columns (fan-out).
    batch_axes: axes indexing independent matrices.
    spatial_axes: conv taps; the matrix sits at the centre tap.
    groups: conv feature groups (the out axis splits into this many blocks).
  """

  in_axes: tuple[int, ...]
  out_axes: tuple[int, ...]
  batch_axes: tuple[int, ...] = ()
  spatial_axes: tuple[int, ...] = ()
  groups: int = 1

  @property
  def conv(self) -> bool:
    return bool(self.spatial_axes)

  def num_matrices(self, shape) -> int:
    """Independent matrices in a kernel of ``shape`` (batch entries x groups)."""
    return math.prod(shape[a] for a in self.batch_axes) * self.groups

  def matrix_shape(self, shape) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of each matrix."""
    return (math.prod(shape[a] for a in self.in_axes),
            math.prod(shape[a] for a in self.out_axes) // self.groups)

  def canonical_shape(self, shape) -> tuple[int, ...]:
    """Each matrix as a kernel: ``(*taps, fan_in, fan_out)``."""
    return tuple(shape[a] for a in self.spatial_axes) + self.matrix_shape(shape)


def _axes(value, ndim: int, name: str) -> tuple[int, ...]:
  """``value`` (an int or a sequence of ints, negative from the end) as sorted
  non-negative axes of an ``ndim``-D kernel."""
  values = (value,) if isinstance(value, numbers.Integral) else value
  try:
    values = tuple(values)
  except TypeError:
    raise TypeError(f"{name} must be an int or a tuple of ints, got {value!r}") from None
  out = []
  for v in values:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
      raise TypeError(f"{name} must be an int or a tuple of ints, got {value!r}")
    if not -ndim <= v < ndim:
      raise ValueError(f"{name}={value!r} is out of range for a {ndim}-D kernel")
    out.append(int(v) % ndim)
  if len(set(out)) != len(out):
    raise ValueError(f"{name}={value!r} names an axis twice")
  return tuple(sorted(out))


def _looks_like_conv(shape) -> bool:
  """The shape of a Flax conv kernel with a square or cubic odd window."""
  spatial = shape[:-2]
  return len(shape) in (4, 5) and len(set(spatial)) == 1 and spatial[0] % 2 == 1


def check_arguments(in_axis=None, out_axis=None, batch_axis=(), conv=None,
                    feature_group_count: int | None = None):
  """Checks the types of :func:`resolve`'s arguments (before any shape is known)."""
  for value, name in [(in_axis, "in_axis"), (out_axis, "out_axis"), (batch_axis, "batch_axis")]:
    if value is not None:
      _axes(value, 1 << 16, name)
  if feature_group_count is None:
    pass
  elif isinstance(feature_group_count, bool) or not isinstance(feature_group_count,
                                                             numbers.Integral):
    raise TypeError(f"feature_group_count must be a positive int or None, got "
                    f"{feature_group_count!r}")
  elif feature_group_count < 1:
    raise ValueError(f"feature_group_count must be a positive int, got {feature_group_count!r}")
  if conv is not None and not isinstance(conv, (bool, np.bool_)):
    raise TypeError(f"conv must be True, False or None, got {conv!r}")


def resolve(shape, *, in_axis=None, out_axis=None, batch_axis=(), conv=None,
            feature_group_count: int | None = None, name: str = "kernel") -> KernelKind:
  """The :class:`KernelKind` of a kernel of ``shape``.

  Args:
    shape: the kernel's shape.
    in_axis, out_axis: the matrix's input and output axes (int or tuple).
      By default the output is the last axis not named otherwise and the
      input the free axis before the first output axis: ``-2`` and ``-1`` for
      plain kernels, ``0`` for ``(in, heads, head_dim)`` with
      ``out_axis=(-2, -1)``.
    batch_axis: axes of independent matrices (heads, stacked layers).
    conv: ``True`` when the remaining axes are conv taps, ``False`` when there
      must be none, ``None`` to apply the default rule (module docstring).
    feature_group_count: a grouped conv's groups (implies ``conv`` when
      above 1); ``None`` (not said) is 1 (see :func:`warn_if_ambiguous`).
    name: how errors name the kernel (a layer path).

  Returns:
    A :class:`KernelKind`.

  Raises:
    ValueError: an axis out of range or named twice, a shape the default rule
      cannot read (the message says which argument to pass), even conv taps,
      or groups that do not divide the out axis.
  """
  shape = tuple(int(s) for s in shape)
  ndim = len(shape)
  if ndim < 2:
    raise ValueError(f"{name}: a kernel needs at least 2 dimensions, got shape {shape}")
  check_arguments(in_axis, out_axis, batch_axis, conv, feature_group_count)
  feature_group_count = 1 if feature_group_count is None else feature_group_count
  explicit = in_axis is not None or out_axis is not None or tuple(np.atleast_1d(batch_axis))
  batch = _axes(batch_axis, ndim, "batch_axis")
  outs = None if out_axis is None else _axes(out_axis, ndim, "out_axis")
  ins = None if in_axis is None else _axes(in_axis, ndim, "in_axis")
  # Defaults: the last free axis is the output, the one before it the input.
  if outs is None:
    free = sorted(set(range(ndim)) - set(batch) - set(ins or ()))
    if not free:
      raise ValueError(f"{name}: no axis of shape {shape} is left for out_axis")
    outs = (free[-1],)
  if ins is None:
    free = sorted(set(range(ndim)) - set(batch) - set(outs))
    if not free:
      raise ValueError(f"{name}: no axis of shape {shape} is left for in_axis (out_axis="
                       f"{out_axis!r}, batch_axis={batch_axis!r})")
    before = [a for a in free if a < min(outs)]
    ins = (before[-1] if before else free[0],)
  if set(ins) & set(outs) or set(batch) & (set(ins) | set(outs)):
    raise ValueError(f"{name}: in_axis, out_axis and batch_axis must name different axes, got "
                     f"{in_axis!r}, {out_axis!r}, {batch_axis!r} for shape {shape}")
  if feature_group_count > 1:
    conv = True
  rest = tuple(a for a in range(ndim) if a not in set(ins) | set(outs) | set(batch))
  if rest and conv is None and not explicit and _looks_like_conv(shape):
    conv = True
  if rest and not conv:
    options = (f"conv=True if axes {rest} are conv taps (e.g. a 1-D conv kernel (k, in, out)), "
               "in_axis/out_axis if they belong to the matrix (e.g. an attention projection "
               "(in, heads, head_dim): out_axis=(-2, -1)), or batch_axis if they index "
               "independent matrices (e.g. stacked layers: batch_axis=0)")
    raise ValueError(f"{name}: shape {shape} has axes {rest} outside the matrix; pass "
                     f"{options}")
  if any(shape[a] % 2 == 0 for a in rest):
    raise ValueError(f"{name}: conv taps must have odd sizes (a centre tap), got shape {shape} "
                     f"with tap axes {rest}")
  if feature_group_count > 1:
    if len(outs) != 1 or shape[outs[0]] % feature_group_count:
      raise ValueError(f"{name}: feature_group_count={feature_group_count} must divide the "
                       f"out axis of shape {shape}")
  return KernelKind(ins, outs, batch, rest, int(feature_group_count))


def warn_if_ambiguous(shape, kind: KernelKind, stacklevel: int = 2):
  """Warns (:class:`AmbiguousConvWarning`) when ``kind``, resolved without a
  ``feature_group_count``, is a conv whose matrix has one input and several
  outputs: a depthwise conv's kernel (which needs its groups: as one
  ``1 x out`` matrix most of its channels would start dead) and a conv on one
  input channel (right as it is) have that same shape."""
  fan_in, fan_out = kind.matrix_shape(shape)
  if kind.conv and kind.groups == 1 and fan_in == 1 and fan_out > 1:
    warnings.warn(
        f"conv kernel of shape {tuple(shape)} has one input channel and no "
        "feature_group_count. If it belongs to a depthwise conv, pass the layer's "
        f"feature_group_count (its in_features; {fan_out} without a channel multiplier): "
        f"without it the kernel is one 1 x {fan_out} matrix, not an isometry channel by "
        "channel, and most channels start dead. A conv on one input channel (a grayscale "
        "image's first layer) is right as it is: pass feature_group_count=1 to say so.",
        AmbiguousConvWarning, stacklevel=stacklevel + 1)


def to_matrices(xp, kernel, kind: KernelKind):
  """A kernel as its stack of matrices ``(num_matrices, *taps, fan_in, fan_out)``.

  ``xp`` is ``numpy`` or ``jax.numpy``.
  """
  shape = tuple(kernel.shape)
  order = kind.batch_axes + kind.spatial_axes + kind.in_axes + kind.out_axes
  moved = xp.transpose(kernel, order)
  batch = math.prod(shape[a] for a in kind.batch_axes)
  taps = tuple(shape[a] for a in kind.spatial_axes)
  fan_in, fan_out = kind.matrix_shape(shape)
  grouped = moved.reshape((batch,) + taps + (fan_in, kind.groups, fan_out))
  grouped = xp.moveaxis(grouped, -2, 1)  # (batch, groups, *taps, fan_in, fan_out)
  return grouped.reshape((batch * kind.groups,) + taps + (fan_in, fan_out))


def from_matrices(xp, matrices, shape, kind: KernelKind):
  """Inverse of :func:`to_matrices`: the kernel of ``shape``."""
  shape = tuple(shape)
  batch = math.prod(shape[a] for a in kind.batch_axes)
  taps = tuple(shape[a] for a in kind.spatial_axes)
  fan_in, fan_out = kind.matrix_shape(shape)
  grouped = matrices.reshape((batch, kind.groups) + taps + (fan_in, fan_out))
  grouped = xp.moveaxis(grouped, 1, -2).reshape(
      tuple(shape[a] for a in kind.batch_axes + kind.spatial_axes + kind.in_axes
            + kind.out_axes))
  order = kind.batch_axes + kind.spatial_axes + kind.in_axes + kind.out_axes
  return xp.transpose(grouped, np.argsort(order))


def canonical(kind: KernelKind, shape) -> bool:
  """Whether ``shape`` already is its one matrix, ``(*taps, in, out)``, in order."""
  ndim = len(shape)
  return (kind.groups == 1 and not kind.batch_axes and kind.in_axes == (ndim - 2,)
          and kind.out_axes == (ndim - 1,) and kind.spatial_axes == tuple(range(ndim - 2)))


def check_kind(shape, kind: KernelKind, name: str = "kernel") -> KernelKind:
  """Checks a given :class:`KernelKind` against ``shape`` (as :func:`resolve` would)."""
  if not isinstance(kind, KernelKind):
    raise TypeError(f"{name}: a kind must be an eoi_jax.kinds.KernelKind, got {kind!r}")
  return resolve(shape, in_axis=kind.in_axes, out_axis=kind.out_axes, batch_axis=kind.batch_axes,
                 conv=bool(kind.spatial_axes), feature_group_count=kind.groups, name=name)


def from_spec(shape, spec, name: str = "kernel") -> KernelKind:
  """A kind from a :class:`KernelKind` or a mapping of :func:`resolve`'s arguments."""
  if isinstance(spec, KernelKind):
    return check_kind(shape, spec, name)
  if isinstance(spec, dict):
    unknown = set(spec) - {"in_axis", "out_axis", "batch_axis", "conv", "feature_group_count"}
    if unknown:
      raise ValueError(f"{name}: unknown kind arguments {sorted(unknown)}; allowed: in_axis, "
                       "out_axis, batch_axis, conv, feature_group_count")
    return resolve(shape, name=name, **spec)
  raise TypeError(f"{name}: a kind must be a KernelKind or a dict of in_axis, out_axis, "
                  f"batch_axis, conv, feature_group_count; got {spec!r}")


def dims(kind: KernelKind, shape: Sequence[int]) -> dict:
  """``{"in": ..., "out": ..., "taps": ..., "matrices": ...}`` for reports."""
  fan_in, fan_out = kind.matrix_shape(shape)
  return {"in": fan_in, "out": fan_out, "taps": math.prod(shape[a] for a in kind.spatial_axes),
          "matrices": kind.num_matrices(shape)}
