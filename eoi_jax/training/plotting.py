"""One look for every figure of the project: a colour and a marker per method.

Every name of :data:`eoi_jax.methods.registry.METHODS` has one :class:`Style`,
the same in every figure (the report's and the experiments'), so a method is
recognised at a glance from one figure to the next:

* the hue is the method's family, its name before ``+`` (``uniform``,
  ``uniform+eoi`` and ``uniform+ai`` share one): matplotlib's ten ``tab10``
  hues in the registry's order (more families: hues spaced around the colour
  wheel);
* the shade and the marker are its value maker: ``+eoi`` the full hue and a
  star, the mask maker's own values (``keep``) the hue lightened and a circle,
  ``+ai`` the hue darkened and a triangle; a family of one method (``eoi``,
  ``dense``, ``ai``) gets the full hue and its value maker's marker.

No two methods share a colour. The helpers below give every figure the same
frame: a title over the whole figure, one legend right of the axes (outside
the data), integer epoch ticks and density axes with their unit.

Example:
  >>> style = method_style("uniform+eoi")
  >>> ax.plot(x, y, color=style.colour, marker=style.marker, label="uniform+eoi")
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

DENSITY_LABEL = "realised density (fraction of non-zero weights)"
"""The axis label of every density axis (realised at initialisation)."""

# Value maker -> (shade: > 0 mixes with white, < 0 with black; marker).
_VALUE_LOOK = {"eoi": (0.0, "*"), "keep": (0.3, "o"), "ai": (-0.4, "^")}
# Looks for value makers added to the registry later.
_SPARE_LOOKS = ((0.6, "s"), (-0.6, "D"), (0.2, "v"), (-0.2, "P"))
_LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (8, 2)), (0, (1, 3)),
               (0, (3, 1, 1, 1)))
_FILLS = ("full", "none", "left", "right", "bottom", "top")
# A method's option sets (e.g. block sizes) in figures whose line style is free.
VARIANT_LINESTYLES = ("-", "--", ":", "-.")


class Style(NamedTuple):
  """How one method is drawn."""

  colour: str  # "#rrggbb"
  marker: str


def _mix(colour, shade: float) -> str:
  rgb = mcolors.to_rgb(colour)
  if shade >= 0:
    return mcolors.to_hex([c + (1 - c) * shade for c in rgb])
  return mcolors.to_hex([c * (1 + shade) for c in rgb])


def _hues(count: int) -> list:
  if count <= 10:
    return list(plt.get_cmap("tab10").colors[:count])
  return [mcolors.hsv_to_rgb((i / count, 0.75, 0.8)) for i in range(count)]


@functools.cache
def method_styles() -> dict[str, Style]:
  """Every registered method's :class:`Style` (module docstring), by name.

  Returns:
    ``{name: Style}`` for each name of :data:`eoi_jax.methods.registry.METHODS`,
    in the registry's order; the colours are all different.
  """
  from eoi_jax.methods.registry import METHODS, VALUE_MAKERS

  looks = dict(_VALUE_LOOK)
  spare = iter(_SPARE_LOOKS)
  for value_maker in VALUE_MAKERS:
    looks.setdefault(value_maker, next(spare))
  family = {name: name.partition("+")[0] for name in METHODS}
  families = list(dict.fromkeys(family.values()))
  hue = dict(zip(families, _hues(len(families))))
  size = {f: sum(1 for name in METHODS if family[name] == f) for f in families}
  styles = {}
  for name, method in METHODS.items():
    shade, marker = looks[method.values]
    styles[name] = Style(_mix(hue[family[name]], 0.0 if size[family[name]] == 1 else shade),
                         marker)
  return styles


def method_style(name: str) -> Style:
  """The :class:`Style` of one registered method.

  Raises:
    ValueError: ``name`` is not a registered method.
  """
  styles = method_styles()
  if name not in styles:
    raise ValueError(f"method must be one of {list(styles)}, got {name!r}")
  return styles[name]


def method_order(name: str) -> int:
  """The registry position of ``name`` (legends and tables list methods in it)."""
  styles = method_styles()
  return list(styles).index(name) if name in styles else len(styles)


def linestyles(values: Sequence) -> dict:
  """One distinct line style per value (solid first), in the given order.

  Example:
    >>> linestyles([0.05, 0.1])
    {0.05: '-', 0.1: '--'}
  """
  values = list(dict.fromkeys(values))
  out = dict(zip(values, _LINESTYLES))
  for i, value in enumerate(values[len(_LINESTYLES):]):
    out[value] = (0, (2 + i, 2, 1, 2))  # ever longer dashes: still all different
  return out


def fill(variant: int) -> str:
  """The marker fill of a method's ``variant``-th option set (0: filled)."""
  return _FILLS[variant % len(_FILLS)]


def handle(colour="black", marker=None, linestyle="-", fillstyle="full") -> Line2D:
  """A legend entry's line (not drawn on any axes)."""
  return Line2D([], [], color=colour, marker=marker, linestyle=linestyle, fillstyle=fillstyle,
                markersize=8 if marker == "*" else 6)


LEGEND_WIDTH = 2.8
"""Inches to the right of the panels kept for the legend."""


def figure(panels: int, title: str, *, columns: int = 4, panel_size=(4.2, 3.3),
           sharey: bool = False):
  """A figure of ``panels`` axes in a grid of at most ``columns`` columns,
  titled ``title`` over everything, with a column right of the panels for
  :func:`legend`; returns ``(fig, [ax, ...])`` (unused grid cells removed).

  Example:
    >>> fig, axes = figure(2, "experiment: dataset, network, 5 epochs")
    >>> legend(fig, handles, labels)
    >>> save(fig, "out.png")
  """
  columns = max(1, min(columns, panels))
  rows = math.ceil(panels / columns)
  width = panel_size[0] * columns
  fig = plt.figure(figsize=(width + LEGEND_WIDTH, panel_size[1] * rows + 0.7),
                   layout="constrained")
  body, _ = fig.subfigures(1, 2, width_ratios=[width, LEGEND_WIDTH])
  grid = body.subplots(rows, columns, squeeze=False, sharey=sharey)
  axes = list(grid.ravel())
  for ax in axes[panels:]:
    body.delaxes(ax)
  fig.suptitle(title, fontsize=10)
  return fig, axes[:panels]


def legend(fig, handles, labels, title: str | None = None):
  """One legend for the whole figure, in the column right of the panels (never
  over the data or the title); returns it."""
  return fig.subfigs[-1].legend(handles, labels, loc="upper left", fontsize=8, title=title,
                                title_fontsize=8, frameon=False, alignment="left")


def legends(fig) -> list:
  """Every legend of ``fig``: its own, its panels' and its legend column's."""
  found = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
  return found + [l for sub in getattr(fig, "subfigs", ()) for l in sub.legends]


def integer_ticks(axis) -> None:
  """Whole-number ticks on ``axis`` (``ax.xaxis``: epochs, sizes)."""
  axis.set_major_locator(MaxNLocator(integer=True))


def log_y(ax) -> None:
  """A logarithmic y axis with ticks written as plain numbers (0.3, 2), not
  powers of ten; minor ticks at 2 and 5 labelled too where the axis spans
  less than two decades (beyond that, the labels would touch)."""
  ax.set_yscale("log")
  ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))

  def minor(value, _):
    low, high = ax.get_ylim()
    if high / max(low, 1e-300) > 100:
      return ""
    return f"{value:.3g}" if f"{value:.1e}"[0] in "25" else ""

  ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def density_axis(ax, densities: Sequence[float], label: str = DENSITY_LABEL) -> None:
  """``ax``'s x axis for densities in (0, 1]: logarithmic where they span a
  decade or more, ticks at the given densities (thinned where they would touch),
  written as plain numbers."""
  values = sorted({float(d) for d in densities if d is not None and d > 0})
  if not values:
    return
  log = values[-1] / values[0] >= 10
  if log:
    ax.set_xscale("log")
  position = (lambda v: math.log10(v)) if log else (lambda v: v)
  span = (position(values[-1]) - position(values[0])) or 1.0
  ticks = [values[0]]
  for v in values[1:]:
    if position(v) - position(ticks[-1]) >= 0.07 * span:
      ticks.append(v)
  if ticks[-1] != values[-1]:  # the largest (often dense, 1.0) is always labelled
    ticks = (ticks[:-1] if len(ticks) > 1 else ticks) + [values[-1]]
  ax.set_xticks(ticks)
  ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
  ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
  ax.set_xlabel(label)


def save(fig, path) -> None:
  """Writes ``fig`` as a PNG and closes it."""
  fig.savefig(path, dpi=120, bbox_inches="tight")  # a long legend label stays whole
  plt.close(fig)
