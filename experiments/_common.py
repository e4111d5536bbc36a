"""What every experiment shares: its command line, its sweep and its record.

An experiment is a base config and a list of grids (:mod:`eoi_jax.training.sweep`)
for the paper's protocol and for ``--quick``. :func:`main` parses
``--quick``, ``--seeds``, ``--epochs``, ``--max-runs-per-step``, ``--runs-dir``
and ``--results-dir``, runs the sweep (resumable: the same command continues
it), writes ``results.csv``, ``table.md`` and the figures under
``experiments/results/<name>[-quick]/`` and a ``PROVENANCE.md`` beside them
(command, device, JAX version, date, commit). The runs themselves (checkpoints,
per-epoch logs) stay under ``runs/experiments/``, outside the repository's
record.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
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
  p.add_argument("--max-runs-per-step", type=int,
                 help="runs trained side by side in one step (default: 16 on CPUs)")
  p.add_argument("--runs-dir", help="where the runs live (default runs/experiments/NAME)")
  p.add_argument("--results-dir",
                 help="where tables and figures go (default experiments/results/NAME)")
  if experiment.datasets:
    p.add_argument("--dataset", choices=experiment.datasets, default=experiment.datasets[0],
                   help=f"the data (default {experiment.datasets[0]}, the paper's; the others "
                   "where it is absent: the table says which was used)")
  p.add_argument("--dry-run", action="store_true", help="print the grid's size and stop")
  p.add_argument("--quiet", action="store_true")
  return p


def configs(experiment: Experiment, args) -> tuple:
  """``(base, grids, configs, runs_dir, results_dir)`` for parsed ``args``."""
  from eoi_jax.training import sweep

  seeds = args.seeds if args.seeds is not None else experiment.default_seeds[
      1 if args.quick else 0]
  if seeds < 1:
    raise ValueError(f"--seeds must be >= 1, got {seeds}")
  if args.epochs is not None and args.epochs < 1:
    raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
  dataset = getattr(args, "dataset", None)
  paper_data = dataset is None or dataset == experiment.datasets[0]
  suffix = ("" if paper_data else f"-{dataset}") + ("-quick" if args.quick else "")
  runs_dir = Path(args.runs_dir or Path("runs") / "experiments" / (experiment.name + suffix))
  results_dir = Path(args.results_dir or REPO / "experiments" / "results" /
                     (experiment.name + suffix))
  base = experiment.base(args.quick, args.epochs)
  if dataset is not None:
    base = replace(base, dataset=dataset)
  grids = experiment.grids(args.quick, seeds)
  return base, grids, sweep.expand(base, grids, runs_dir), runs_dir, results_dir


def provenance(results_dir: Path, argv) -> None:
  """``PROVENANCE.md``: the command, device, JAX version, date and commit."""
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
                                             + "\n".join(lines) + "\n")


def main(experiment: Experiment, argv=None) -> int:
  """Runs ``experiment`` from the command line; returns the exit code."""
  args = parser(experiment).parse_args(argv)
  try:
    base, grids, all_configs, runs_dir, results_dir = configs(experiment, args)
  except ValueError as e:
    print(f"{experiment.name}: error: {e}", file=sys.stderr)
    return 2
  if args.dry_run:
    print(f"{experiment.name}: {len(all_configs)} runs of {base.epochs} epochs in {runs_dir}")
    return 0
  from eoi_jax.training import compilation_cache, sweep

  compilation_cache.enable()
  results = sweep.run_sweep(base, grids, runs_dir,
                            max_runs_per_step=args.max_runs_per_step or "auto",
                            quiet=args.quiet, results_dir=results_dir)
  provenance(results_dir, [f"experiments.{experiment.name}"] + list(
      sys.argv[1:] if argv is None else argv))
  print(f"results: {results}")
  print((results_dir / "table.md").read_text(), end="")
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
