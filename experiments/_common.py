"""What every experiment shares: its command line, its check, its sweep and its record.

An experiment is a base config and a list of grids (:mod:`eoi_jax.training.sweep`)
for the paper's protocol and for ``--quick``. :func:`main` parses ``--quick``,
``--seeds``, ``--epochs``, ``--limit``, ``--max-runs-per-step``, ``--runs-dir``,
``--results-dir``, ``--dataset`` (where an experiment offers several),
``--check``, ``--dry-run`` and ``--record``:

* ``--check`` plans every run of the grid without data or training
  (:mod:`eoi_jax.training.plan`: the real network's layer shapes for the
  dataset's image shape, each layer's density, the method's own feasibility
  check), prints the runs in the grid, the runs that can be built and the
  runs dropped grouped by reason, and exits 0 when some run can be built;
* ``--dry-run`` prints the grid's size;
* otherwise the sweep runs (resumable: the same command continues it; runs
  that cannot be built are dropped before anything trains, each named with
  its reason in ``sweep.json``) and writes ``results.csv``, ``table.md``, the
  figures and ``PROVENANCE.md`` (command, device, JAX version, date, commit,
  dropped runs) beside the runs, in ``runs/experiments/<name>[-dataset][-quick][-epochsN][-seedsN][-limitN]/``
  (or ``--results-dir``);
* ``--record`` then copies those files to
  ``experiments/results/<name>[-dataset][-quick][-epochsN][-seedsN][-limitN]/``, the repository's record
  (files of an earlier record that the run did not write are removed); without
  it nothing under ``experiments/results/`` changes. ``eoi-jax report`` reads
  either directory: the record's ``sweep.json`` names the runs' directory.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, NamedTuple

REPO = Path(__file__).resolve().parents[1]

QUICK_PROBE = ("uniform", "uniform+eoi")
"""The ``--quick`` methods of the deep networks' grids: does the loss move at all?"""


class Experiment(NamedTuple):
  """One paper experiment.

  Attributes:
    name: the module's name (``python -m experiments.<name>``).
    claim: the paper's claim it checks, one sentence.
    base: ``(quick, epochs) -> Config``.
    grids: ``(quick, seeds) -> [grid, ...]``.
    default_seeds: seeds of the full protocol and of ``--quick``.
    datasets: the datasets ``--dataset`` offers, the paper's first; empty:
      the base config's dataset only.
  """

  name: str
  claim: str
  base: Callable
  grids: Callable
  default_seeds: tuple[int, int] = (5, 2)
  datasets: tuple[str, ...] = ()


def parser(experiment: Experiment) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=f"python -m experiments.{experiment.name}",
                              description=experiment.claim)
  p.add_argument("--quick", action="store_true",
                 help="the reduced grid (at most about 10 minutes on a 2-core CPU)")
  p.add_argument("--seeds", type=int, help="seeds per cell (default: "
                 f"{experiment.default_seeds[0]}, --quick {experiment.default_seeds[1]})")
  p.add_argument("--epochs", type=int, help="epochs per run (default: the protocol's)")
  p.add_argument("--limit", type=int,
                 help="train on the first LIMIT training examples (default: all, the protocol's)")
  p.add_argument("--max-runs-per-step", type=int,
                 help="runs trained side by side in one step (default: 16 on CPUs)")
  p.add_argument("--runs-dir", help="where the runs live (default runs/experiments/NAME)")
  p.add_argument("--results-dir",
                 help="where tables and figures go (default: the runs directory)")
  if experiment.datasets:
    p.add_argument("--dataset", choices=experiment.datasets, default=experiment.datasets[0],
                   help=f"the data (default {experiment.datasets[0]}, the paper's; the others "
                   "where it is absent: the table says which was used)")
  p.add_argument("--check", action="store_true",
                 help="plan every run of the grid (no data, no training): runs OK and runs "
                 "dropped by reason; exit 0 when some run can be built")
  p.add_argument("--dry-run", action="store_true", help="print the grid's size and stop")
  add_record_argument(p)
  p.add_argument("--quiet", action="store_true",
                 help="no progress or per-epoch lines (the summary and table still print)")
  return p


def add_record_argument(p: argparse.ArgumentParser) -> None:
  p.add_argument("--record", action="store_true",
                 help="copy the results to experiments/results/NAME, the repository's record "
                 "(default: they stay beside the runs)")


def configs(experiment: Experiment, args) -> tuple:
  """``(base, grids, configs, runs_dir, results_dir)`` for parsed ``args``."""
  from eoi_jax.training import sweep

  seeds = args.seeds if args.seeds is not None else experiment.default_seeds[
      1 if args.quick else 0]
  if seeds < 1:
    raise ValueError(f"--seeds must be >= 1, got {seeds}")
  for flag in ("epochs", "limit"):
    value = getattr(args, flag, None)
    if value is not None and value < 1:
      raise ValueError(f"--{flag} must be >= 1, got {value}")
  dataset = getattr(args, "dataset", None)
  runs_dir = Path(args.runs_dir or Path("runs") / "experiments" / record_name(experiment, args))
  results_dir = Path(args.results_dir or runs_dir)
  base = experiment.base(args.quick, args.epochs)
  if dataset is not None:
    base = replace(base, dataset=dataset)
  if getattr(args, "limit", None) is not None:
    base = replace(base, limit=args.limit)
  grids = experiment.grids(args.quick, seeds)
  return base, grids, sweep.expand(base, grids, runs_dir), runs_dir, results_dir


def record_name(experiment: Experiment, args) -> str:
  """``<name>[-dataset][-quick][-epochsN][-seedsN][-limitN]``: the runs' and
  the record's folder name. Each departure from the protocol (or from
  ``--quick``) that the command line asks for is in the name, so that a
  shortened grid is never recorded as the protocol's."""
  dataset = getattr(args, "dataset", None)
  paper_data = dataset is None or dataset == experiment.datasets[0]
  name = experiment.name + ("" if paper_data else f"-{dataset}") + (
      "-quick" if getattr(args, "quick", False) else "")
  for flag in ("epochs", "seeds", "limit"):
    value = getattr(args, flag, None)
    if value is not None:
      name += f"-{flag}{value}"
  return name


def record(results_dir, name: str, sweep_dir=None) -> Path:
  """Copies the files of ``results_dir`` (not its folders) to
  ``experiments/results/<name>/``, the repository's record, and removes the
  files there that ``results_dir`` does not hold. A ``sweep.json`` is written
  anew naming ``sweep_dir`` relative to the record, for ``eoi-jax report``.

  Returns:
    The record's directory.

  Example:
    >>> record("runs/experiments/mlp_density-quick", "mlp_density-quick",
    ...        sweep_dir="runs/experiments/mlp_density-quick")
  """
  from eoi_jax.training import sweep

  results_dir = Path(results_dir)
  destination = REPO / "experiments" / "results" / name
  files = sorted(path for path in results_dir.iterdir() if path.is_file())
  if destination.resolve() == results_dir.resolve():
    return destination
  destination.mkdir(parents=True, exist_ok=True)
  names = {path.name for path in files}
  for old in destination.iterdir():
    if old.is_file() and old.name not in names:
      old.unlink()
  for path in files:
    if path.name == "sweep.json" and sweep_dir is not None:
      kept = {k: v for k, v in json.loads(path.read_text()).items() if k != "sweep_dir"}
      sweep.write_record(destination, kept, sweep_dir=sweep_dir)
    else:
      shutil.copyfile(path, destination / path.name)
  return destination


def _runs(count: int) -> str:
  return f"{count} run" + ("" if count == 1 else "s")


def _dropped_lines(dropped, built_otherwise=()) -> list[str]:
  from eoi_jax.training import plan

  lines = []
  if dropped:
    counts = collections.Counter(plan.first_sentence(d["reason"]) for d in dropped)
    lines += (["", "## Runs dropped before training", "",
               f"{_runs(len(dropped))} of the grid cannot be built and were not trained "
               "(`sweep.json` names each run and its whole reason):", ""]
              + [f"- {_runs(n)}: {reason}" for reason, n in counts.items()])
  if built_otherwise:
    counts = collections.Counter(note["note"] for note in built_otherwise)
    lines += (["", "## Runs built otherwise than asked", "",
               f"{_runs(len({note['run'] for note in built_otherwise}))} trained as built "
               "(the table shows their realised density; `sweep.json` names each run):", ""]
              + [f"- {_runs(n)}: {note}" for note, n in counts.items()])
  return lines


def provenance(results_dir: Path, argv, dropped=(), built_otherwise=()) -> None:
  """``PROVENANCE.md``: the command, device, JAX version, date and commit, the
  runs ``dropped`` before training (``[{"run", "reason"}]``, as in
  ``sweep.json``) grouped by reason, and the runs ``built_otherwise`` than
  asked (``[{"run", "note"}]``) grouped by note."""
  import jax

  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.strip()
    commit += " (with uncommitted changes)" if dirty else ""
  except (OSError, subprocess.CalledProcessError):
    commit = "unknown"
  device = jax.devices()[0]
  lines = [f"- command: `python -m {' '.join(argv)}`",
           f"- device: {device.platform} ({device.device_kind}), {len(jax.devices())} "
           f"device(s), {__import__('os').cpu_count()} CPU cores",
           f"- JAX {jax.__version__}",
           f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
           f"- commit: {commit}"]
  (results_dir / "PROVENANCE.md").write_text("# How these results were made\n\n"
                                             + "\n".join(lines + _dropped_lines(
                                                 dropped, built_otherwise))
                                             + "\n")


def main(experiment: Experiment, argv=None) -> int:
  """Runs ``experiment`` from the command line; returns the exit code."""
  args = parser(experiment).parse_args(argv)
  try:
    base, grids, all_configs, runs_dir, results_dir = configs(experiment, args)
  except ValueError as e:
    print(f"{experiment.name}: error: {e}", file=sys.stderr)
    return 2
  name = record_name(experiment, args)
  if args.check:
    from eoi_jax.training import plan

    checked = plan.check(all_configs)
    print(checked.table(name))
    return 0 if checked.runs else 1
  if args.dry_run:
    print(f"{experiment.name}: {len(all_configs)} runs of {base.epochs} epochs in {runs_dir}")
    return 0
  from eoi_jax.training import compilation_cache, host_memory, sweep

  host_memory.keep_freed_memory()
  compilation_cache.enable()
  try:
    results = sweep.run_sweep(base, grids, runs_dir,
                              max_runs_per_step=args.max_runs_per_step or "auto",
                              quiet=args.quiet, results_dir=results_dir)
  except ValueError as e:
    print(f"{experiment.name}: error: {e}", file=sys.stderr)
    return 2
  planned = json.loads((runs_dir / "sweep.json").read_text())
  provenance(results_dir, [f"experiments.{experiment.name}"] + list(
      sys.argv[1:] if argv is None else argv), planned.get("dropped", []),
      planned.get("built_otherwise", []))
  print(f"results: {results}")
  print((results_dir / "table.md").read_text(), end="")
  if args.record:
    print(f"record: {record(results_dir, name, sweep_dir=runs_dir)}")
  return 0


def method_grids(methods, seeds: int, *, dense: bool = True, **fields) -> list[dict]:
  """The grid of ``methods`` over ``seeds`` seeds (``fields``: other values, one
  or a list each), and with ``dense`` the dense reference (density 1.0) beside it.

  Example:
    >>> method_grids(["uniform", "uniform+eoi"], 2, model="resnet32")
    [{'init': ['uniform', 'uniform+eoi'], 'model': ['resnet32'], 'seed': [0, 1]},
     {'init': ['dense'], 'model': ['resnet32'], 'density': [1.0], 'seed': [0, 1]}]
  """
  fixed = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in fields.items()}
  out = [{"init": list(methods), **fixed, "seed": list(range(seeds))}]
  if dense:
    out.append({"init": ["dense"], **fixed, "density": [1.0], "seed": list(range(seeds))})
  return out


def replace(config, **changes):
  return dataclasses.replace(config, **changes)
