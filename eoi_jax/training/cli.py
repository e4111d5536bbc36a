"""Command-line interface: ``eoi-jax train``, ``sweep``, ``report`` and ``data``.

Examples:
  eoi-jax data fetch mnist
  eoi-jax train --config mnist_mlp --density 0.05 --epochs 20 --run-dir runs/mlp_d005
  eoi-jax train --config mnist_mlp --devices 8            # 8 devices (simulated on CPU)
  eoi-jax train --config my_config.json --lr 0.05
  python -m eoi_jax train --config digits_smoke
  eoi-jax sweep --config digits_smoke --grid grid.json --sweep-dir sweeps/demo
  eoi-jax report sweeps/demo

Multi-process (each process runs the same command with its own --process-id):
  eoi-jax train --config mnist_mlp --coordinator 127.0.0.1:12345 --num-processes 2 \\
      --process-id 0
  eoi-jax sweep --grid grid.json --sweep-dir sweeps/demo --coordinator 127.0.0.1:12345 \\
      --num-processes 2 --process-id 0     # each process trains its share of the runs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings

from eoi_jax.training.config import PRESETS, Config


def _flag(name: str) -> str:
  return "--" + name.replace("_", "-")


def _train_parser(sub):
  parser = sub.add_parser("train", help="train a model with a sparse initialisation",
                          description="Train with a preset or JSON config plus overrides.")
  _config_arguments(parser)
  _process_arguments(parser)


def _process_arguments(parser):
  group = parser.add_argument_group("multi-process (jax.distributed)")
  group.add_argument("--coordinator", help="address:port of process 0, e.g. 127.0.0.1:12345")
  group.add_argument("--num-processes", type=int)
  group.add_argument("--process-id", type=int)
  group.add_argument("--local-devices", type=int,
                     help="CPU devices this process simulates (sets jax_num_cpu_devices)")


def _config_arguments(parser):
  parser.add_argument("--config", default="mnist_mlp",
                      help=f"preset ({', '.join(sorted(PRESETS))}) or a JSON file")
  for field in dataclasses.fields(Config):
    parser.add_argument(_flag(field.name), dest=field.name, default=None, metavar="VALUE",
                        help=f"override {field.name} (default {field.default!r})")


def _sweep_parser(sub):
  parser = sub.add_parser(
      "sweep", help="train a grid of runs, many per step, resumable",
      description="Expand a grid over a base config, train the runs not yet finished (runs "
                  "of one architecture side by side in one vmapped step) and write "
                  "results.csv, table.md and figures.")
  parser.add_argument("--grid", required=True,
                      help='JSON file: {"grid": {field: [values]}, "base": preset, '
                           '"overrides": {...}} or just the grid')
  parser.add_argument("--sweep-dir", required=True, help="the sweep's directory")
  parser.add_argument("--max-runs-per-step", type=int,
                      help="at most this many runs in one step (bounds memory; default 16 "
                           "on CPUs, all of a group on accelerators)")
  parser.add_argument("--no-figures", action="store_true", help="tables only")
  _config_arguments(parser)
  _process_arguments(parser)


def _report_parser(sub):
  parser = sub.add_parser("report", help="tables and figures from a run or sweep directory")
  parser.add_argument("directory")
  parser.add_argument("--no-figures", action="store_true", help="tables only")


def _data_parser(sub):
  parser = sub.add_parser("data", help="provision or verify datasets")
  dsub = parser.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
  fetch = dsub.add_parser("fetch", help="download or convert a dataset into the data directory")
  fetch.add_argument("name")
  fetch.add_argument("--data-dir")
  fetch.add_argument("--timeout", type=float, default=30.0)
  fetch.add_argument("--no-network", action="store_true",
                     help="skip the standard download addresses (registry-only machines)")
  fetch.add_argument("--force", action="store_true")
  verify = dsub.add_parser("verify", help="check a provisioned dataset")
  verify.add_argument("name")
  verify.add_argument("--data-dir")


class _Parser(argparse.ArgumentParser):
  """Usage errors as one line (``eoi-jax: error: ...``) and exit code 2."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="eoi-jax", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
  _train_parser(sub)
  _sweep_parser(sub)
  _report_parser(sub)
  _data_parser(sub)
  return parser


def _setup_jax(args):
  """Device, process and cache setup; must run before JAX starts a backend."""
  import jax

  from eoi_jax.training import compilation_cache

  compilation_cache.enable()
  wanted = args.local_devices
  if wanted is None and args.devices is not None and int(args.devices) > 1:
    wanted = int(args.devices)  # on CPU, simulate as many devices as asked for
  if wanted is not None and os.environ.get("JAX_PLATFORMS", "cpu") in ("", "cpu"):
    jax.config.update("jax_num_cpu_devices", int(wanted))
  if getattr(args, "coordinator", None):
    if args.num_processes is None or args.process_id is None:
      raise ValueError("--coordinator needs --num-processes and --process-id")
    if os.environ.get("JAX_PLATFORMS", "cpu") in ("", "cpu"):
      # CPU devices of different processes talk through gloo.
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes, process_id=args.process_id)


def _run_train(args) -> int:
  from eoi_jax.training.config import make_config

  config = make_config(args.config, **_overrides(args))
  _setup_jax(args)
  from eoi_jax.training.train import train_and_evaluate

  summary = train_and_evaluate(config).summary
  import jax
  if jax.process_index() == 0:
    accuracy = summary["test_accuracy"]
    shown = "n/a" if accuracy is None else f"{accuracy:.4f}"
    print(f"test accuracy: {shown}")
    print(f"run outputs: {summary['run_dir']}")
    print(json.dumps(summary))
  return 0


def _overrides(args) -> dict:
  overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
               if getattr(args, f.name) is not None}
  if os.environ.get("CI") and "quiet" not in overrides:
    overrides["quiet"] = "true"
  return overrides


def _run_sweep(args) -> int:
  from eoi_jax.training import sweep
  from eoi_jax.training.config import make_config

  preset, file_overrides, grid = sweep.load_grid_file(args.grid)
  overrides = {**file_overrides, **_overrides(args)}
  quiet = str(overrides.pop("quiet", "false")).lower() in ("1", "true", "yes", "on")
  base = make_config(preset if preset and args.config == "mnist_mlp" else args.config,
                     **overrides)
  sweep.expand(base, grid, args.sweep_dir)  # a bad grid fails before JAX starts
  _setup_jax(args)
  results = sweep.run_sweep(base, grid, args.sweep_dir,
                            max_runs_per_step=args.max_runs_per_step or "auto",
                            quiet=quiet, figures=not args.no_figures)
  import jax
  if jax.process_index() == 0:
    print(f"results: {results}")
    print(f"table: {results.parent / 'table.md'}")
  return 0


def _run_report(args) -> int:
  from eoi_jax.training import report

  results = report.write(args.directory, figures=not args.no_figures)
  print(f"results: {results}")
  print((results.parent / "table.md").read_text(), end="")
  return 0


def _run_data(args) -> int:
  from eoi_jax.training import data

  if args.data_command == "fetch":
    how = data.fetch(args.name, args.data_dir, timeout=args.timeout,
                     network=not args.no_network, force=args.force)
    print(f"{args.name}: {how}")
  counts = data.verify(args.name, args.data_dir)
  print(f"{args.name}: verified {counts['train']} train / {counts['test']} test examples")
  return 0


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
  print(f"eoi-jax: warning: {message}", file=sys.stderr if file is None else file)


def main(argv=None) -> int:
  warnings.showwarning = _one_line_warning
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    commands = {"train": _run_train, "sweep": _run_sweep, "report": _run_report,
                "data": _run_data}
    return commands[args.command](args)
  except (ValueError, TypeError, FileNotFoundError) as e:
    print(f"eoi-jax: error: {e}", file=sys.stderr)
    return 2
  except Exception as e:  # a clear one-line reason for known failures
    from eoi_jax.training.data import FetchError
    from eoi_jax.training.train import TrainingDiverged
    if isinstance(e, (FetchError, TrainingDiverged)):
      print(f"eoi-jax: error: {e}", file=sys.stderr)
      return 1
    raise


if __name__ == "__main__":
  sys.exit(main())
