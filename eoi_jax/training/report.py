"""Tables and figures from runs on disk: ``eoi-jax report RUN_OR_SWEEP_DIR``.

:func:`collect` reads every run under a directory (a run directory, a sweep's
``runs/``, or a results directory whose ``sweep.json`` names its sweep): its
``config.json``, ``summary.json``, ``metrics.jsonl`` and ``sparsity.json``.
:func:`write` then writes, next to them:

* ``results.csv``: one row per run: the config fields (``density`` is the
  requested density), the final test accuracy, the best validation accuracy,
  ``realised_density`` (the initialisation's realised overall density,
  ``summary.json``'s ``density``), the Jacobian singular-value statistics at
  initialisation when recorded (``jacobian=true``), the wall time, and whether
  it diverged;
* ``table.md``: mean and standard deviation of the final test accuracy over
  seeds per cell: a column per requested density, a row per method (with its
  options where they vary, :data:`METHOD_OPTIONS`) within each combination of
  the other varying fields; beside each entry the cell's mean realised
  density. The best sparse entry of each column (within each combination) is
  bold, but never one whose realised density exceeds the column's requested
  density by more than :data:`OVER_DENSITY` (10%, relative; marked †): it had
  more weights than its column says;
* with matplotlib (the ``plots`` extra) PNG figures, each titled with the
  experiment (the directory's name), dataset, network and epochs, with one
  legend right of the axes (one colour and marker per method, the same in
  every figure of the project: :mod:`eoi_jax.training.plotting`):
  ``accuracy_vs_density.png`` (final test accuracy against the cell's mean
  realised density), ``loss_curves.png`` (training loss per epoch; colour:
  method, line style: requested density) and ``jacobian_vs_density.png``
  (the Jacobian's singular-value mean and variance at initialisation against
  realised density); a panel per combination of the other varying fields.

A run whose ``summary.json`` is present but cannot be read (or whose
``config.json`` cannot) is never dropped silently: each gets a one-line
warning, a row in ``results.csv`` whose ``unreadable`` column says why, and a
note under ``table.md``'s caption; the table and figures leave it out.

Everything is recomputed from the files, so a report can be regenerated at
any time, also while a sweep runs, and into another directory:
``python -m eoi_jax.training.report RUNS_OR_RESULTS_DIR --out DIR``. Every
file is written under a temporary name of its own and renamed, so reports
written at once (a sweep's and yours) never disturb each other.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import io
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

from eoi_jax.training.rundir import write_atomic

# results.csv column: summary.json key
METRICS = {"test_accuracy": "test_accuracy", "best_val_accuracy": "best_val_accuracy",
           "realised_density": "density", "train_loss": "train_loss",
           "wall_time_s": "wall_time_s", "epochs_done": "epochs_done"}
JACOBIAN = ("jacobian_sv_mean", "jacobian_sv_var", "jacobian_sv_max", "jacobian_sv_min")

OVER_DENSITY = 0.10
"""A cell whose mean realised density exceeds its requested density by more
than this fraction (relative) is never bold in ``table.md``."""

METHOD_OPTIONS = ("allocator", "structured", "center_density", "sao_degree", "ai_steps",
                  "block")
"""Config fields that refine a method: where they vary they are part of a
series' name (``uniform+eoi (structured=True)``), not a panel of their own."""

_NOT_COMPARED = ("run_dir", "quiet", "log_every")
_CELL_FIELDS = ("init", "density", "seed")


def _read_json(path: Path):
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def _read_object(path: Path) -> tuple[dict | None, str | None]:
  """``(the JSON object in path, None)``, or ``(None, why it cannot be read)``."""
  try:
    value = json.loads(path.read_text())
  except FileNotFoundError:
    return None, f"{path.name} is missing"
  except (OSError, UnicodeDecodeError) as e:
    return None, f"{path.name} cannot be read ({type(e).__name__}: {e})"
  except ValueError as e:
    return None, f"{path.name} is not valid JSON ({e})"
  if not isinstance(value, dict):
    return None, f"{path.name} holds {type(value).__name__}, not a JSON object"
  return value, None


def _history(run: Path) -> list[dict]:
  records = []
  try:
    lines = (run / "metrics.jsonl").read_text().splitlines()
  except OSError:
    return records
  for line in lines:
    try:
      records.append(json.loads(line))
    except ValueError:
      continue
  return records


def scan(directory) -> tuple[list[dict], list[dict]]:
  """The finished runs under ``directory`` and those that cannot be read.

  A run is finished when it has a ``summary.json``; it cannot be read when
  that file, or its ``config.json``, is missing, unreadable or not a JSON
  object. Each unreadable run gets a one-line ``RuntimeWarning``.

  Args:
    directory: a run, sweep or results directory (:func:`collect`).

  Returns:
    ``(runs, unreadable)``: ``runs`` as :func:`collect` returns them;
    ``unreadable`` as ``{"name", "reason", "config"}`` (``config``: the
    run's ``config.json`` when it can be read, else ``None``), both sorted
    by name.

  Raises:
    ValueError: ``directory`` does not exist.
  """
  directory = Path(directory)
  sweep = _read_json(directory / "sweep.json")
  if isinstance(sweep, dict) and "sweep_dir" in sweep:  # a results directory: the sweep's runs
    directory = directory / sweep["sweep_dir"]
  if not directory.exists():
    raise ValueError(f"report: {directory} does not exist")
  candidates = [directory] if (directory / "config.json").exists() else sorted(
      p.parent for p in directory.glob("**/summary.json"))
  runs, unreadable = [], []
  for path in candidates:
    name = str(path.relative_to(directory)) if path != directory else path.name
    name = name.removeprefix("runs/")
    config, config_problem = _read_object(path / "config.json")
    summary, summary_problem = _read_object(path / "summary.json")
    if path == directory and summary_problem == "summary.json is missing":
      continue  # a run directory whose run has not finished
    problem = summary_problem or config_problem
    if problem is not None:
      unreadable.append({"name": name, "reason": problem, "config": config})
      warnings.warn(f"report: run {path} is left out: {problem}; train it again with the same "
                    "command (it resumes and rewrites its files) or remove it",
                    RuntimeWarning, stacklevel=2)
      continue
    runs.append({"name": name, "config": config, "summary": summary,
                 "history": _history(path), "sparsity": _read_json(path / "sparsity.json")})
  return runs, unreadable


def collect(directory) -> list[dict]:
  """Every finished run under ``directory`` as ``{"name", "config", "summary",
  "history", "sparsity"}`` (sorted by name; ``sparsity``: ``sparsity.json`` or
  ``None``); a results directory whose ``sweep.json`` names its sweep's
  directory reads the runs there. Runs that cannot be read are left out with
  a warning each (:func:`scan`)."""
  return scan(directory)[0]


def varying_fields(runs) -> list[str]:
  """Config fields whose values differ between runs (``run_dir`` aside)."""
  if not runs:
    return []
  keys = [k for k in runs[0]["config"] if k not in _NOT_COMPARED]
  return [k for k in keys if len({json.dumps(r["config"].get(k)) for r in runs}) > 1]


def rows(runs, unreadable=()) -> list[dict]:
  """The ``results.csv`` rows (``density``: requested; ``realised_density``:
  the initialisation's); with ``unreadable`` (:func:`scan`), a row for each
  of those runs too, its ``unreadable`` column saying why, its metrics
  empty."""
  out = []
  for r in runs:
    row = {"run": r["name"]}
    row.update({k: v for k, v in r["config"].items() if k != "run_dir"})
    for column, key in METRICS.items():
      row[column] = r["summary"].get(key)
    first = r["history"][0] if r["history"] else {}
    for k in JACOBIAN:
      if k in first:
        row[f"{k}_init"] = first[k]
    row["diverged"] = "diverged_at_epoch" in r["summary"]
    if unreadable:
      row["unreadable"] = ""
    out.append(row)
  for r in unreadable:
    row = {"run": r["name"]}
    row.update({k: v for k, v in (r["config"] or {}).items() if k != "run_dir"})
    row["unreadable"] = r["reason"]
    out.append(row)
  return out


# ----------------------------------------------------------------------------
# Cells: runs that differ only in their seed.


class Cell(NamedTuple):
  """Where a run belongs in the table and the figures."""

  panel: tuple  # ((field, value), ...): the other varying fields
  series: tuple  # (method, ((option, value), ...)): the method and its varying options
  density: float  # requested


class Stats(NamedTuple):
  """A cell's value over its seeds and its realised density."""

  mean: float | None
  std: float | None
  n: int
  realised: float | None  # mean realised density of the cell's runs


class Grouping(NamedTuple):
  panels: tuple[str, ...]  # fields whose value combinations make panels (table sections)
  options: tuple[str, ...]  # METHOD_OPTIONS that vary


def grouping(runs) -> Grouping:
  """Which varying fields make panels and which name a method's variant."""
  varying = [f for f in varying_fields(runs) if f not in _CELL_FIELDS]
  return Grouping(tuple(f for f in varying if f not in METHOD_OPTIONS),
                  tuple(f for f in varying if f in METHOD_OPTIONS))


def cell_of(run: dict, groups: Grouping) -> Cell:
  config = run["config"]
  return Cell(tuple((f, config.get(f)) for f in groups.panels),
              (config.get("init"), tuple((f, config.get(f)) for f in groups.options)),
              config.get("density"))


def _finite(value) -> float | None:
  return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _mean_std(values):
  values = [v for v in map(_finite, values) if v is not None]
  if not values:
    return None, None, 0
  mean = sum(values) / len(values)
  std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 \
      else 0.0
  return mean, std, len(values)


@functools.cache
def _method_rank() -> dict:
  from eoi_jax.methods.registry import METHODS

  return {name: i for i, name in enumerate(METHODS)}


def _series_key(series) -> tuple:
  """The registry's order of methods; a method's option sets unset first, then by
  value, numbers in numeric order (block 8 before block 32)."""
  method, options = series

  def value_key(value):
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (value is not None, not number, value if number else 0, json.dumps(value, default=str))

  return (_method_rank().get(method, len(_method_rank())),
          tuple((field, value_key(value)) for field, value in options))


def cells(runs, value: str | Callable = "test_accuracy") -> dict[Cell, Stats]:
  """Every cell's :class:`Stats` of ``value`` (a ``summary.json`` key, or a
  function of a run), ordered by panel (first seen), method (the registry's
  order) and requested density."""
  groups = grouping(runs)
  get = value if callable(value) else (lambda run: run["summary"].get(value))
  members: dict = {}
  for r in runs:
    members.setdefault(cell_of(r, groups), []).append(r)
  panels = list(dict.fromkeys(c.panel for c in members))
  order = sorted(members, key=lambda c: (panels.index(c.panel), _series_key(c.series),
                                         c.density is None, c.density))
  out = {}
  for c in order:
    mean, std, n = _mean_std(get(r) for r in members[c])
    realised = _mean_std(r["summary"].get("density") for r in members[c])[0]
    out[c] = Stats(mean, std, n, realised)
  return out


@functools.cache
def _config_defaults() -> dict:
  from eoi_jax.training.config import Config

  return {f.name: f.default for f in dataclasses.fields(Config)}


def series_label(series) -> str:
  """``method`` or ``method (option=value, ...)`` for its options that are not
  the config's defaults."""
  method, options = series
  extra = [f"{k}={v}" for k, v in options if v != _config_defaults().get(k, object())]
  return f"{method} ({', '.join(extra)})" if extra else str(method)


def panel_label(panel) -> str:
  return ", ".join(f"{k}={v}" for k, v in panel)


def over_density(stats: Stats, density) -> bool:
  """Whether the cell's mean realised density exceeds its requested
  ``density`` by more than :data:`OVER_DENSITY` (relative)."""
  return (stats.realised is not None and density is not None
          and stats.realised > density * (1 + OVER_DENSITY))


def _bold_cells(table_cells: dict[Cell, Stats]) -> set[Cell]:
  """The best sparse cells of each (panel, requested density) whose realised
  density is known and within :data:`OVER_DENSITY` of the requested one."""
  eligible = {c: s.mean for c, s in table_cells.items()
              if c.series[0] != "dense" and c.density is not None and c.density < 1
              and s.mean is not None and s.realised is not None
              and not over_density(s, c.density)}
  best: dict = {}
  for c, mean in eligible.items():
    best[(c.panel, c.density)] = max(mean, best.get((c.panel, c.density), -math.inf))
  return {c for c, mean in eligible.items() if mean == best[(c.panel, c.density)]}


def _values(runs, field: str) -> list:
  return list(dict.fromkeys(r["config"].get(field) for r in runs))


def describe(runs, name: str | None = None) -> str:
  """One line saying what the runs are: ``name: dataset, network, epochs``.

  Example:
    >>> describe(runs, "mlp_1000-quick")
    'mlp_1000-quick: mnist (first 2560 examples), mlp, depth 1000, width 128, tanh, 2 epochs'
  """
  datasets = "/".join(str(v) for v in _values(runs, "dataset"))
  limits = [v for v in _values(runs, "limit") if v is not None]
  if limits:
    datasets += f" (first {'/'.join(map(str, limits))} examples)"
  network = ["/".join(str(v) for v in _values(runs, "model"))]
  for field in ("depth", "width"):
    values = _values(runs, field)
    if values != [None]:
      network.append(f"{field} {'/'.join(str(v) for v in values)}")
  activations = _values(runs, "activation")
  models_used = _values(runs, "model")
  if len(activations) == 1 and (activations[0] or len(models_used) == 1):
    from eoi_jax.training.models import TAKES

    default = TAKES[models_used[0]].default_activation if models_used[0] in TAKES else None
    network.append(activations[0] or default or "its default activation")
  sizes = [r["sparsity"]["total"]["size"] for r in runs
           if isinstance(r.get("sparsity"), dict) and "total" in r["sparsity"]]
  if sizes:
    network.append(f"{sizes[0]:,} maskable weights")
  epochs = sorted(v for v in _values(runs, "epochs") if v is not None)
  epoch_text = (f"{epochs[0]}" if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]}") \
      if epochs else "?"
  return f"{name + ': ' if name else ''}{datasets}, {', '.join(network)}, {epoch_text} epochs"


def _format(stats: Stats, density, bold: bool) -> str:
  if stats.mean is None:
    return ""
  text = f"{stats.mean:.4f} ± {stats.std:.4f} ({stats.n})"
  text = f"**{text}**" if bold else text
  if stats.realised is not None:
    text += f"; realised {stats.realised:.4f}" + (" †" if over_density(stats, density) else "")
  return text


def table(runs, metric: str = "test_accuracy", *, name: str | None = None,
          dropped: int = 0, unreadable=()) -> str:
  """The Markdown table of ``metric`` (module docstring).

  Args:
    runs: as :func:`collect` returns them.
    metric: a ``summary.json`` key.
    name: the experiment's name, for the caption.
    dropped: runs of the grid dropped before training (they cannot be built).
    unreadable: runs whose files cannot be read (:func:`scan`), named in the
      caption.
  """
  table_cells = cells(runs, metric)
  bold = _bold_cells(table_cells)
  groups = grouping(runs)
  densities = sorted({c.density for c in table_cells}, key=lambda d: (d is None, d))
  seeds = sorted({r["config"].get("seed") for r in runs}, key=str)
  datasets = ", ".join(sorted({str(r["config"].get("dataset")) for r in runs}))
  within = f" within each {', '.join(groups.panels)}" if groups.panels else ""
  caption = (f"Final {metric.replace('_', ' ')} on {datasets} ({describe(runs, name)}): mean ± "
             f"standard deviation over seeds {seeds} (n runs), one column per requested "
             "density; *realised*: the cell's mean realised density at initialisation. "
             f"**Bold**: the best sparse entry of each column{within}. An entry whose realised "
             f"density exceeds its column's requested density by more than "
             f"{OVER_DENSITY:.0%} (marked †) is never bold: it trained with more weights than "
             "its column says.")
  if dropped:
    caption += (f" {dropped} runs of the grid were dropped before training: they cannot be "
                "built (reasons in sweep.json).")
  if unreadable:
    names = ", ".join(r["name"] for r in unreadable[:5]) + (", ..." if len(unreadable) > 5 else "")
    caption += (f" {len(unreadable)} finished runs cannot be read and are left out ({names}; "
                "reasons in results.csv's unreadable column).")
  header = [*groups.panels, "method", *(f"requested density {d}" for d in densities)]
  lines = [caption, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  row_keys = list(dict.fromkeys((c.panel, c.series) for c in table_cells))
  for panel, series in row_keys:
    entries = [_format(table_cells[Cell(panel, series, d)], d, Cell(panel, series, d) in bold)
               if Cell(panel, series, d) in table_cells else "" for d in densities]
    lines.append("| " + " | ".join([*(str(v) for _, v in panel), series_label(series),
                                    *entries]) + " |")
  return "\n".join(lines) + "\n"


def _write_csv(path: Path, table_rows) -> None:
  fields = list(dict.fromkeys(k for row in table_rows for k in row))
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=fields)
  writer.writeheader()
  writer.writerows(table_rows)
  write_atomic(path, out.getvalue())


# ----------------------------------------------------------------------------
# Figures.


def _series_in_order(cell_keys) -> list:
  """The series of ``cell_keys`` in the registry's order of their methods."""
  return sorted(dict.fromkeys(c.series for c in cell_keys), key=_series_key)


def _series_looks(series_list, *, variant_lines: bool = False) -> dict:
  """``{series: plot keywords}``: the method's colour and marker; a method's
  further option sets get other marker fills and, with ``variant_lines``
  (figures whose line style is free), other line styles, so that lines that
  coincide stay told apart."""
  from eoi_jax.training import plotting

  looks, seen = {}, {}
  for series in series_list:
    style = plotting.method_style(series[0])
    variant = seen.setdefault(series[0], [])
    looks[series] = dict(color=style.colour, marker=style.marker,
                         fillstyle=plotting.fill(len(variant)),
                         markersize=9 if style.marker == "*" else 6)
    if variant_lines:
      looks[series]["linestyle"] = plotting.VARIANT_LINESTYLES[
          len(variant) % len(plotting.VARIANT_LINESTYLES)]
    variant.append(series)
  return looks


def _handles(looks: dict, labels: dict):
  from eoi_jax.training import plotting

  handles = [plotting.handle(look["color"], look["marker"], fillstyle=look["fillstyle"],
                             linestyle=look.get("linestyle", "-"))
             for look in looks.values()]
  return handles, [labels.get(s, series_label(s)) for s in looks]


def _log_if_spread(plotting, ax, values) -> None:
  values = [v for v in values if v is not None]
  if values and min(values) > 0 and max(values) / min(values) >= 10:
    plotting.log_y(ax)


def _seeds_text(seeds: int) -> str:
  return f"{seeds} seed" + ("" if seeds == 1 else "s")


def _accuracy_figure(plotting, acc, title, densities, seeds):
  panels = list(dict.fromkeys(c.panel for c in acc))
  series = _series_in_order(acc)
  looks = _series_looks(series, variant_lines=True)
  fig, axes = plotting.figure(len(panels), f"{title}\nfinal test accuracy (mean ± std over "
                              f"{_seeds_text(seeds)}) against realised density", sharey=True)
  drawn = {}
  for ax, panel in zip(axes, panels):
    for s in series:
      points = sorted((st.realised, st.mean, st.std) for c, st in acc.items()
                      if c.panel == panel and c.series == s and st.mean is not None
                      and st.realised is not None)
      if points:
        x, y, err = zip(*points)
        ax.errorbar(x, y, err, capsize=3, label=series_label(s), **looks[s])
        drawn[s] = looks[s]
    plotting.density_axis(ax, densities)
    ax.set_ylabel("final test accuracy")
    ax.set_title(panel_label(panel), fontsize=9)
  plotting.legend(fig, *_handles(drawn, {}), title="method")
  return fig


def _loss_figure(plotting, runs, acc, title, seeds):
  groups = grouping(runs)
  curves: dict = {}
  for r in runs:
    for record in r["history"]:
      loss = _finite(record.get("train_loss"))
      if loss is not None and "epoch" in record:
        curves.setdefault(cell_of(r, groups), {}).setdefault(record["epoch"], []).append(loss)
  if not curves:
    return None
  ordered = [c for c in acc if c in curves] + [c for c in curves if c not in acc]
  panels = list(dict.fromkeys(c.panel for c in ordered))
  looks = _series_looks(_series_in_order(ordered))
  styles = plotting.linestyles(sorted({c.density for c in ordered}))
  fig, axes = plotting.figure(len(panels), f"{title}\ntraining loss per epoch (mean over "
                              f"{_seeds_text(seeds)}); colour: method, line style: requested "
                              "density")
  for ax, panel in zip(axes, panels):
    for c in ordered:
      if c.panel != panel:
        continue
      epochs = sorted(curves[c])
      ax.plot([e + 1 for e in epochs], [sum(curves[c][e]) / len(curves[c][e]) for e in epochs],
              linestyle=styles[c.density], markevery=max(1, len(epochs) // 8),
              label=f"{series_label(c.series)}, density {c.density}", **looks[c.series])
    plotting.log_y(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (cross-entropy, log scale)")
    plotting.integer_ticks(ax.xaxis)
    ax.set_title(panel_label(panel), fontsize=9)
  # A method's realised density, where it is far from the one its line style names.
  notes = {}
  for c, st in acc.items():
    if over_density(st, c.density):
      notes.setdefault(c.series, {})[f"{st.realised:.2g} at {c.density}"] = None
  labels = {s: f"{series_label(s)} (realised {', '.join(n)})" for s, n in notes.items()}
  handles, texts = _handles(looks, labels)
  handles += [plotting.handle("black", None, linestyle=styles[d]) for d in styles]
  texts += [f"requested density {d}" for d in styles]
  plotting.legend(fig, handles, texts, title="method; requested density")
  return fig


def _jacobian_figure(plotting, runs, title, densities, seeds):
  jacobian = [r for r in runs if r["history"] and "jacobian_sv_mean" in r["history"][0]]
  if not jacobian:
    return None
  stats = {key: cells(jacobian, lambda r, key=key: r["history"][0].get(key))
           for key in ("jacobian_sv_mean", "jacobian_sv_var")}
  panels = list(dict.fromkeys(c.panel for c in stats["jacobian_sv_mean"]))
  series = _series_in_order(stats["jacobian_sv_mean"])
  looks = _series_looks(series, variant_lines=True)
  fig, axes = plotting.figure(2 * len(panels), f"{title}\ninput-output Jacobian's singular "
                              f"values at initialisation (mean over {_seeds_text(seeds)}) against "
                              "realised density", columns=2)
  for i, panel in enumerate(panels):
    for ax, key, name in ((axes[2 * i], "jacobian_sv_mean", "mean singular value"),
                          (axes[2 * i + 1], "jacobian_sv_var", "variance of the singular values")):
      values = []
      for s in series:
        points = sorted((st.realised, st.mean) for c, st in stats[key].items()
                        if c.panel == panel and c.series == s and st.mean is not None
                        and st.realised is not None)
        if points:
          ax.plot(*zip(*points), **looks[s])
          values += [p[1] for p in points]
      _log_if_spread(plotting, ax, values)
      plotting.density_axis(ax, densities)
      ax.set_ylabel(f"{name} at init")
      ax.set_title(panel_label(panel), fontsize=9)
  plotting.legend(fig, *_handles(looks, {}), title="method")
  return fig


def figures(runs, name: str | None = None) -> dict:
  """The report's figures as matplotlib figures (needs matplotlib), not yet
  saved: ``{file name: Figure}``. Accuracy and Jacobian figures need more than
  one requested density.

  Example:
    >>> figs = figures(collect("runs/experiments/mlp_density-quick"), "mlp_density-quick")
    >>> figs["loss_curves.png"].axes[0].get_xlabel()
    'epoch'
  """
  from eoi_jax.training import plotting

  title = describe(runs, name)
  acc = cells(runs)
  densities = sorted({c.density for c in acc if c.density is not None})
  seeds = len({r["config"].get("seed") for r in runs})
  out = {}
  if len(densities) > 1:
    out["accuracy_vs_density.png"] = _accuracy_figure(plotting, acc, title, densities, seeds)
  loss = _loss_figure(plotting, runs, acc, title, seeds)
  if loss is not None:
    out["loss_curves.png"] = loss
  if len(densities) > 1:
    jacobian = _jacobian_figure(plotting, runs, title, densities, seeds)
    if jacobian is not None:
      out["jacobian_vs_density.png"] = jacobian
  return out


def draw_figures(runs, directory: Path, name: str | None = None) -> list[Path]:
  """Writes the PNG figures of :func:`figures` into ``directory``; returns
  their paths."""
  from eoi_jax.training import plotting

  written = []
  for file_name, fig in figures(runs, name).items():
    path = Path(directory) / file_name
    png = io.BytesIO()
    plotting.save(fig, png)
    write_atomic(path, png.getvalue())
    written.append(path)
  return written


def write(directory, *, figures: bool = True, out=None, name: str | None = None) -> Path:
  """Writes ``results.csv`` and ``table.md`` (and the figures) for the runs
  under ``directory`` into ``out`` (default ``directory``); returns the path
  of ``results.csv``.

  Args:
    directory: a run, sweep or results directory (:func:`collect`).
    figures: draw the PNG figures too (needs matplotlib; warns without it).
    out: where to write (default ``directory``).
    name: the experiment's name in titles and captions (default the name of
      ``directory``).

  Raises:
    ValueError: ``directory`` does not exist or holds no finished run.
  """
  directory = Path(directory)
  runs, unreadable = scan(directory)
  if not runs:
    reasons = "".join(f"; {r['name']}: {r['reason']}" for r in unreadable[:3])
    raise ValueError(f"report: no finished runs (config.json and summary.json) under "
                     f"{directory}{reasons}")
  name = name or directory.resolve().name
  out = directory if out is None else Path(out)
  out.mkdir(parents=True, exist_ok=True)
  results = out / "results.csv"
  _write_csv(results, rows(runs, unreadable))
  sweep = _read_json(directory / "sweep.json")
  dropped = len(sweep.get("dropped") or []) if isinstance(sweep, dict) else 0
  write_atomic(out / "table.md", table(runs, name=name, dropped=dropped, unreadable=unreadable))
  if figures:
    try:
      draw_figures(runs, out, name)
    except ImportError:
      warnings.warn("report: matplotlib is not installed, so no figures were drawn "
                    "(pip install 'eoi-jax[plots]')", RuntimeWarning, stacklevel=2)
  return results


def main(argv=None) -> int:
  """``python -m eoi_jax.training.report DIRECTORY [--out DIR] [--name NAME]
  [--no-figures]``: rebuilds the tables and figures of finished runs."""
  parser = argparse.ArgumentParser(prog="python -m eoi_jax.training.report",
                                   description="Tables and figures from finished runs.")
  parser.add_argument("directory", help="a run, sweep or results directory")
  parser.add_argument("--out", help="where to write (default: DIRECTORY)")
  parser.add_argument("--name", help="the experiment's name in titles (default: DIRECTORY's)")
  parser.add_argument("--no-figures", action="store_true", help="tables only")
  args = parser.parse_args(argv)
  try:
    results = write(args.directory, figures=not args.no_figures, out=args.out, name=args.name)
  except ValueError as e:
    print(f"report: error: {e}", file=sys.stderr)
    return 2
  print(f"results: {results}")
  print((results.parent / "table.md").read_text(), end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
