"""Sweeps: a grid of runs over a base config, trained in groups, resumable.

A sweep is a base :class:`~eoi_jax.training.config.Config` and a grid
``{field: [values]}``; :func:`expand` makes one config per point (the
cartesian product, in the grid's order), each with its own run directory
``SWEEP_DIR/runs/<field=value,...>``. Before anything trains,
:func:`run_sweep` plans every run's initialisation at the network's real layer
shapes (:mod:`eoi_jax.training.plan`) and drops the runs that cannot be built,
each named with its reason in ``sweep.json``. It then groups the runs that
can share a step (:func:`eoi_jax.training.multirun.group_key`), splits groups
into batches of at most ``max_runs_per_step`` runs, trains each batch with
:func:`eoi_jax.training.multirun.train_runs` and skips every run whose
directory already holds a finished run of the same full config. Killing a
sweep loses at most the batch in flight; the same command continues it.
After each batch, ``results.csv`` and ``table.md`` are rewritten
(:mod:`eoi_jax.training.report`).

Under ``jax.distributed`` every process runs the same sweep: each trains its
share of every batch (:func:`eoi_jax.training.multirun.process_share`) on its
own devices, and process 0 writes ``sweep.json`` and the results. The run
directories must be on a file system all processes see.

The sweep file (``--grid``) is JSON: ``{"grid": {...}}`` with optional
``"base"`` (a preset name) and ``"overrides"`` (fields of the base), or just
the grid mapping.

Example:
  >>> base = make_config("digits_smoke", epochs=2)
  >>> run_sweep(base, {"init": ["eoi", "uniform"], "seed": [0, 1]}, "sweeps/demo")
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import time
import typing
from pathlib import Path

import jax

from eoi_jax.training import multirun, plan, report, rundir
from eoi_jax.training.config import Config, validate
from eoi_jax.training.progress import Progress


def _check_grid(base: Config, grid) -> dict:
  if not isinstance(grid, dict) or not grid:
    raise ValueError(f"grid must be a non-empty mapping {{field: [values]}}, got {grid!r}")
  fields = {f.name for f in dataclasses.fields(Config)}
  out = {}
  for name, values in grid.items():
    if name not in fields:
      raise ValueError(f"grid: unknown field {name!r}; fields: {sorted(fields)}")
    if name in ("run_dir",):
      raise ValueError("grid: run_dir is set by the sweep (SWEEP_DIR/runs/...)")
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
      raise ValueError(f"grid[{name!r}] must be a list of values, got {values!r}")
    values = list(values)
    if not values:
      raise ValueError(f"grid[{name!r}] is empty")
    out[name] = values
  return out


@functools.cache
def _float_fields() -> frozenset:
  """The config fields that take a float (read once: type hints are slow)."""
  return frozenset(name for name, kind in typing.get_type_hints(Config).items()
                   if kind is float or float in typing.get_args(kind))


def _normalised(name: str, value):
  """``value`` of field ``name`` as the config holds it canonically: an int
  where the field takes a float becomes that float (``1`` -> ``1.0``)."""
  if name in _float_fields() and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  return value


def _identity(config: Config) -> tuple:
  """What makes a run itself (:func:`eoi_jax.training.rundir.config_changes`):
  every field outside :data:`~eoi_jax.training.rundir.RESUMABLE_FIELDS`."""
  return tuple((k, json.dumps(_normalised(k, v)))
               for k, v in sorted(dataclasses.asdict(config).items())
               if k not in rundir.RESUMABLE_FIELDS)


def run_name(point: dict) -> str:
  """A run directory name for a grid point: ``field=value,...`` in grid order."""
  return ",".join(f"{k}={v}" for k, v in point.items()).replace("/", "_").replace(" ", "")


def expand(base: Config, grid, sweep_dir) -> list[Config]:
  """One validated config per point of ``grid`` (cartesian product over ``base``).

  Args:
    base: the base config.
    grid: ``{field: [values]}``, or a list of such grids (their union: e.g.
      one grid of methods over densities and one for the dense baseline).
    sweep_dir: the sweep's directory; run ``p`` lives in
      ``sweep_dir/runs/<run_name(p)>``.

  Points that make the same run (``1`` and ``1.0``, a value equal to the
  base's given in two grids of a union) give one config, the first.

  Raises:
    ValueError: an unknown field, an empty value list, a point whose config
      is invalid (names the point), or two points with one run name.
  """
  grids = grid if isinstance(grid, (list, tuple)) else [grid]
  if not grids:
    raise ValueError("grid: an empty list of grids")
  configs, names, seen = [], {}, set()
  for one in grids:
    one = _check_grid(base, one)
    for values in itertools.product(*one.values()):
      point = {k: _normalised(k, v) for k, v in zip(one, values)}
      name = run_name(point)
      try:
        config = dataclasses.replace(base, **point,
                                     run_dir=str(Path(sweep_dir) / "runs" / name))
      except (TypeError, ValueError) as e:
        raise ValueError(f"grid point {point}: {e}") from None
      if name in names:
        if names[name] != config:
          raise ValueError(f"grid: two points are named {name!r} with different configs")
        continue
      if _identity(config) in seen:
        continue
      seen.add(_identity(config))
      names[name] = config
      configs.append(config)
  return configs


def finished(config: Config) -> bool:
  """Whether ``config.run_dir`` holds a finished run of ``config`` (the same
  run: :func:`eoi_jax.training.rundir.config_changes`, so a moved sweep's runs
  stay finished)."""
  run = Path(config.run_dir)
  try:
    saved = json.loads((run / "config.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
  except (OSError, ValueError):
    return False
  if not isinstance(saved, dict) or not isinstance(summary, dict):
    return False
  same = not rundir.config_changes(saved, dataclasses.asdict(config))
  return same and summary.get("epochs_done") == config.epochs


def batches(configs, max_runs_per_step: int | None) -> list[list[Config]]:
  """Groups of configs that share a step, each cut to ``max_runs_per_step``."""
  groups: dict[tuple, list[Config]] = {}
  for config in configs:
    groups.setdefault(multirun.group_key(config), []).append(config)
  out = []
  for group in groups.values():
    size = len(group) if max_runs_per_step is None else max_runs_per_step
    out.extend(group[i:i + size] for i in range(0, len(group), size))
  return out


def run_sweep(base: Config, grid: dict, sweep_dir, *, max_runs_per_step: int | None | str = "auto",
              quiet: bool = False, figures: bool = True, results_dir=None) -> Path:
  """Trains every run of the sweep not yet finished; writes the results.

  Args:
    base: the base config (its ``run_dir`` is ignored).
    grid: ``{field: [values]}`` or a list of them (see :func:`expand`).
    sweep_dir: the sweep's directory (``sweep.json``, ``runs/``, results).
    max_runs_per_step: at most this many runs in one step (bounds memory);
      ``None``: every run of a group; ``"auto"``:
      :func:`eoi_jax.training.multirun.default_runs_per_step` (16 on CPUs,
      where more lose throughput; no limit on accelerators).
    quiet: no progress lines.
    figures: write PNG figures too (needs matplotlib).
    results_dir: where to write the results (default ``sweep_dir``); a
      ``sweep.json`` there names the sweep's directory, so that
      ``eoi-jax report RESULTS_DIR`` finds the runs.

  Returns:
    The path of ``results.csv``.

  Raises:
    ValueError: a bad grid (:func:`expand`), or no run of it can be built.
  """
  if max_runs_per_step == "auto":
    max_runs_per_step = multirun.default_runs_per_step()
  if max_runs_per_step is not None and (isinstance(max_runs_per_step, bool) or not isinstance(
      max_runs_per_step, int) or max_runs_per_step < 1):
    raise ValueError(f"max_runs_per_step must be a positive int, got {max_runs_per_step!r}")
  sweep_dir = Path(sweep_dir)
  base = dataclasses.replace(base, quiet=True)
  validate(base)
  checked = plan.check(expand(base, grid, sweep_dir))
  if not checked.runs:
    raise ValueError(f"sweep: no run of the grid can be built; {checked.dropped[0][1]}")
  configs = checked.runs
  main = jax.process_index() == 0
  quiet = quiet or not main
  if main:
    record = {"base": dataclasses.asdict(base), "grid": grid,
              "runs": len(checked.runs) + len(checked.dropped), "dropped": checked.records(),
              "built_otherwise": checked.note_records()}
    write_record(sweep_dir, record)
    if results_dir is not None and Path(results_dir).resolve() != sweep_dir.resolve():
      write_record(results_dir, record, sweep_dir=sweep_dir)
  # Every process reads which runs are finished before any trains, so that
  # all of them form the same batches.
  multirun.sync_processes("eoi_jax.sweep.start")
  todo = [c for c in configs if not finished(c)]
  multirun.sync_processes("eoi_jax.sweep.todo")
  progress = Progress(len(configs), label="run", quiet=quiet, done=len(configs) - len(todo),
                      interval=30.0)
  if not quiet:
    if checked.dropped:
      progress.done(f"sweep {sweep_dir}: {len(checked.dropped)} run"
                    f"{'' if len(checked.dropped) == 1 else 's'} dropped, they cannot be built "
                    "(reasons in sweep.json)")
    if checked.notes:
      count = len({c.run_dir for c, _ in checked.notes})
      progress.done(f"sweep {sweep_dir}: {count} run{' is' if count == 1 else 's are'} built "
                    "otherwise than asked (denser than asked, or with empty layers; notes in "
                    "sweep.json)")
    progress.done(f"sweep {sweep_dir}: {len(configs)} runs, {len(configs) - len(todo)} done, "
                  f"{len(todo)} to train")
  done = len(configs) - len(todo)
  for batch in batches(todo, max_runs_per_step):
    started = time.perf_counter()
    multirun.train_runs([dataclasses.replace(c, quiet=quiet) for c in batch],
                        progress_label=f"step (runs {done + 1}-{done + len(batch)})")
    done += len(batch)
    if main:
      report.write(sweep_dir, figures=False, out=results_dir)
    progress.update(done)
    if not quiet:
      progress.done(f"{done}/{len(configs)} runs done ({len(batch)} in "
                    f"{time.perf_counter() - started:.0f} s)")
  if not main:
    return (sweep_dir if results_dir is None else Path(results_dir)) / "results.csv"
  return report.write(sweep_dir, figures=figures, out=results_dir)


def write_record(directory, record: dict, *, sweep_dir=None) -> Path:
  """Writes ``sweep.json`` (the base, the grid, the number of runs and the
  dropped ones) into ``directory``; with ``sweep_dir``, a results directory
  apart from the sweep's, it also names the sweep's directory relative to
  ``directory``, where :func:`eoi_jax.training.report.collect` finds the runs.

  Returns:
    The path written.
  """
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  if sweep_dir is not None:
    record = {**record, "sweep_dir": os.path.relpath(Path(sweep_dir).resolve(),
                                                     directory.resolve())}
  path = directory / "sweep.json"
  rundir.write_atomic(path, json.dumps(record, indent=2) + "\n")
  return path


def load_grid_file(path) -> tuple[str | None, dict, dict]:
  """``(base preset or None, overrides, grid)`` from a sweep file (module docstring)."""
  try:
    spec = json.loads(Path(path).read_text())
  except OSError as e:
    raise ValueError(f"grid: cannot read {path} ({e.strerror})") from None
  except ValueError as e:
    raise ValueError(f"grid: {path} is not valid JSON ({e})") from None
  if isinstance(spec, dict) and "grid" in spec:
    unknown = set(spec) - {"grid", "base", "overrides"}
    if unknown:
      raise ValueError(f"grid: {path} has unknown keys {sorted(unknown)}; allowed: grid, base, "
                       "overrides")
    return spec.get("base"), dict(spec.get("overrides", {})), spec["grid"]
  return None, {}, spec
