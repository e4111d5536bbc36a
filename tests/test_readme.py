"""The READMEs' commands, as a new user runs them after the two set-up commands.

Every shell command of ``README.md`` and ``experiments/README.md`` (the
```` ```bash ```` blocks and the inline ones, ``[--option]`` forms expanded)
must parse: flags, presets, config files, experiment options, modules that
exist. Every path they write must be one git ignores. The sweep example runs
as written in the default suite (about 20 s); the longer commands (``bash
scripts/main.sh``, the training and multi-process examples, the experiments'
``--quick`` runs) are marked ``readme_slow`` and run, in order and as written,
only with ``EOI_JAX_README_SLOW=1`` (``.ci/run`` sets it, within a time
budget).
"""

import contextlib
import io
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import NamedTuple

import pytest

from eoi_jax.training import cli, data, sweep
from eoi_jax.training.config import make_config

REPO = Path(__file__).resolve().parents[1]
READMES = (REPO / "README.md", REPO / "experiments" / "README.md")
SLOW = pytest.mark.skipif(os.environ.get("EOI_JAX_README_SLOW") != "1",
                          reason="a README command of minutes: set EOI_JAX_README_SLOW=1")


class Command(NamedTuple):
  """One shell command of a README: its words, the heredoc it writes (if
  any), whether it runs in the background, and where it is."""

  argv: list
  heredoc: str | None
  where: str


def shell_blocks(path: Path) -> list[tuple[int, str]]:
  """``(line, text)`` of each ```` ```bash ```` block of ``path``."""
  blocks, lines = [], path.read_text().splitlines()
  i = 0
  while i < len(lines):
    if lines[i].strip() == "```bash":
      start, body = i + 1, []
      i += 1
      while lines[i].strip() != "```":
        body.append(lines[i])
        i += 1
      blocks.append((start + 1, "\n".join(body)))
    i += 1
  return blocks


def block_commands(text: str, where: str) -> list[Command]:
  """The commands of a shell block: continued lines joined, heredocs attached."""
  lines, out, i = text.splitlines(), [], 0
  while i < len(lines):
    line = lines[i]
    i += 1
    while line.rstrip().endswith("\\") and i < len(lines):
      line = line.rstrip()[:-1] + " " + lines[i].strip()
      i += 1
    heredoc = None
    end = re.search(r"<<\s*'?(\w+)'?", line)
    if end:
      body = []
      while lines[i].strip() != end.group(1):
        body.append(lines[i])
        i += 1
      i += 1
      heredoc, line = "\n".join(body) + "\n", line[:end.start()]
    argv = shlex.split(line, comments=True)
    if argv and argv[-1] == "&":
      argv = argv[:-1]
    if argv:
      out.append(Command(argv, heredoc, where))
  return out


_INLINE = re.compile(r"`((?:eoi-jax|python -m|bash|pip) [^`]*)`")


def inline_commands(path: Path) -> list[Command]:
  """The inline commands of ``path`` (```` `eoi-jax ...` ````, ```` `python -m ...` ````,
  ...), each ``[--option]`` or ``[--option a|b]`` expanded into every choice."""
  out = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    for text in _INLINE.findall(line.replace("\\|", "|")):
      if text.startswith("pip "):  # the set-up command ('eoi-jax[plots]' is no option form)
        continue
      groups = re.findall(r"\[([^\]]+)\]", text)
      plain = re.sub(r"\s*\[[^\]]+\]", "", text)
      choices = []
      for group in groups:
        flag, _, values = group.partition(" ")
        choices.append([""] + ([f"{flag} {v}" for v in values.split("|")] if values else [flag]))
      for picked in itertools.product(*choices):
        out.append(Command(shlex.split(" ".join([plain, *picked])), None,
                           f"{path.name}:{number}"))
  return out


def _runnable(argv) -> bool:
  """An inline command written to be run: no placeholder (``NAME``, ``DIR``,
  ``<name>``) and more than a command's name (``eoi-jax sweep`` in a
  sentence names the command)."""
  return len(argv) >= 3 and not any(re.fullmatch(r"[A-Z_]+|.*<\w+>.*", word) for word in argv)


# ----------------------------------------------------------------------------
# What each command would do: parsed, never run.


def _parse_eoi_jax(words, where: str) -> list[str]:
  """Parses ``eoi-jax WORDS`` as the command line does; returns the paths it writes."""
  stdout = io.StringIO()
  try:
    with contextlib.redirect_stdout(stdout):
      args = cli.build_parser(words).parse_args(words)
  except SystemExit as stop:
    assert stop.code == 0 and ("--help" in words or "-h" in words), f"{where}: {words}"
    return []
  if args.command == "train":
    config = make_config(args.config or cli.DEFAULT_CONFIG, **cli._overrides(args))
    return [config.run_dir]
  if args.command == "sweep":
    preset, overrides, grid = sweep.load_grid_file(args.grid)
    base = make_config(args.config or preset or cli.DEFAULT_CONFIG,
                       **{**overrides, **cli._overrides(args)})
    assert sweep.expand(base, grid, args.sweep_dir), where
    return [args.sweep_dir]
  if args.command == "report":
    return [args.out or args.directory]
  assert args.name in data.SPECS, f"{where}: no dataset {args.name!r}"
  return []


def _parse_experiment(name: str, words, where: str) -> list[str]:
  """Parses ``python -m experiments.NAME WORDS``; returns the paths it writes."""
  import importlib

  module = importlib.import_module(f"experiments.{name}")
  experiment = getattr(module, "EXPERIMENT", None)
  if experiment is None:  # init_cost, vit_digits: their own parsers; --check plans only
    with contextlib.redirect_stdout(io.StringIO()):
      assert module.main([*words, "--check"]) == 0, where
    return ["runs/experiments"]
  from experiments import _common

  args = _common.parser(experiment).parse_args(words)
  runs_dir = Path(args.runs_dir or Path("runs") / "experiments"
                  / _common.record_name(experiment, args))
  if args.quick:  # full grids (thousands of configs) are planned by tests/test_experiments.py
    _, _, configs, runs_dir, _ = _common.configs(experiment, args)
    assert configs, where
  return [str(runs_dir), args.results_dir or str(runs_dir)]


def check(command: Command, cwd: Path) -> list[str]:
  """Parses (or, for ``mkdir`` and heredocs, does in ``cwd``) one README
  command; returns the paths it writes, relative to the repository root
  where the README runs it. Fails for a command of a kind it does not know."""
  argv, where = command.argv, command.where
  if argv[0] == "cat" and argv[1] == ">":
    target = cwd / argv[2]
    target.write_text(command.heredoc)
    return [argv[2]]
  if argv[0] == "mkdir":
    folders = [p for p in argv[1:] if not p.startswith("-")]
    for path in folders:
      (cwd / path).mkdir(parents=True, exist_ok=True)
    return [f"{p.rstrip('/')}/" for p in folders]  # a folder: git's "runs/" rules apply
  if argv[0] == "eoi-jax" or argv[:3] == ["python", "-m", "eoi_jax"]:
    with contextlib.chdir(cwd):
      return _parse_eoi_jax(argv[1 if argv[0] == "eoi-jax" else 3:], where)
  if argv[:2] == ["bash", "scripts/main.sh"]:
    assert (REPO / "scripts" / "main.sh").exists(), where
    with contextlib.chdir(cwd):
      return _parse_eoi_jax(["train", "--config", "mnist_mlp", "--epochs", "20", *argv[2:]],
                            where)
  if argv[:2] == ["bash", ".ci/run"]:
    assert (REPO / ".ci" / "run").exists(), where
    return []
  if argv[0] == "pip" or argv[:3] == ["python", "-m", "pytest"]:
    return []  # the set-up commands themselves
  if argv[:2] == ["python", "-m"] and argv[2].startswith("experiments."):
    return _parse_experiment(argv[2].split(".", 1)[1], argv[3:], where)
  if argv[:2] == ["python", "-m"]:
    import importlib.util

    module = REPO.joinpath(*argv[2].split("."))
    assert (module.with_suffix(".py").exists() or (module / "__init__.py").exists()
            or importlib.util.find_spec(argv[2]) is not None), f"{where}: no module {argv[2]}"
    return []
  raise AssertionError(f"{where}: a README command of an unknown kind: {argv}")


def _every_command():
  """``(readme, blocks: [(line, [Command])], inline: [Command])`` per README."""
  for path in READMES:
    blocks = [(line, block_commands(text, f"{path.name}:{line}"))
              for line, text in shell_blocks(path)]
    yield path, blocks, inline_commands(path)


def _ignored(paths) -> list[str]:
  """The paths of ``paths`` git does not ignore (relative to the repository)."""
  done = subprocess.run(["git", "check-ignore", "--no-index", "--stdin", "-n", "-v"], cwd=REPO,
                        input="\n".join(paths) + "\n", capture_output=True, text=True)
  if done.returncode not in (0, 1):
    pytest.skip(f"git check-ignore failed here: {done.stderr.strip()}")
  not_ignored = []
  for line in done.stdout.splitlines():
    rule, _, path = line.partition("\t")
    if rule.strip() == "::" or rule.split(":")[2].startswith("!"):
      not_ignored.append(path)
  return not_ignored


# ----------------------------------------------------------------------------
# The default suite.


def test_python_floor_is_one_version_everywhere():
  """requires-python is what installs (jaxlib >= 0.7.1: Python 3.11+), the
  READMEs, main.sh and CI say the same, and this interpreter meets it."""
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  floor = re.fullmatch(r">=(\d+)\.(\d+)", project["requires-python"]).groups()
  floor_text = ".".join(floor)
  assert sys.version_info[:2] >= tuple(map(int, floor))
  assert floor_text == "3.11"  # the oldest Python with a jaxlib >= 0.7.1 wheel
  assert "jaxlib>=0.7.1" in project["dependencies"]
  readme = (REPO / "README.md").read_text()
  stated = set(re.findall(r"Python (\d+\.\d+)(?:\+| or newer)", readme))
  assert stated == {floor_text}, stated
  assert f"sys.version_info < ({', '.join(floor)})" in (REPO / "scripts" / "main.sh").read_text()
  assert "requires-python" in (REPO / ".ci" / "run").read_text()


def test_every_readme_command_parses_and_writes_only_ignored_paths(tmp_path):
  written, counts = [], {}
  for path, blocks, inline in _every_command():
    name = str(path.relative_to(REPO))
    session = tmp_path / name.replace("/", "_")  # one README's blocks share a folder, in order
    session.mkdir()
    for _, commands in blocks:
      for command in commands:
        written += check(command, session)
        counts[name] = counts.get(name, 0) + 1
    for command in inline:
      if _runnable(command.argv):
        written += check(command, session)
        counts[name] = counts.get(name, 0) + 1
  # The extraction found the commands (a README reshaped beyond it fails here).
  assert counts["README.md"] >= 30 and counts["experiments/README.md"] >= 20, counts
  assert written and not any(Path(p).is_absolute() for p in written), written
  assert _ignored(sorted(set(written))) == []


def test_block_extraction_joins_lines_and_keeps_heredocs():
  commands = block_commands("mkdir -p runs\ncat > runs/g.json <<'JSON'\n{\"grid\": {}}\nJSON\n"
                            "eoi-jax sweep --grid runs/g.json \\\n    --sweep-dir x &  # note\n",
                            "here")
  assert [c.argv for c in commands] == [["mkdir", "-p", "runs"], ["cat", ">", "runs/g.json"],
                                        ["eoi-jax", "sweep", "--grid", "runs/g.json",
                                         "--sweep-dir", "x"]]
  assert commands[1].heredoc == '{"grid": {}}\n'
  expanded = inline_commands_of("`python -m experiments.cnn_1000 [--quick] [--dataset a\\|b]`")
  assert len(expanded) == 6 and ["python", "-m", "experiments.cnn_1000", "--quick", "--dataset",
                                 "b"] in expanded


def inline_commands_of(text: str) -> list[list[str]]:
  path = Path(os.environ.get("TMPDIR", "/tmp")) / f"eoi-jax-readme-{os.getpid()}.md"
  path.write_text(text)
  try:
    return [c.argv for c in inline_commands(path)]
  finally:
    path.unlink()


def _env() -> dict:
  """The environment of a README command: this interpreter's ``eoi-jax`` and
  ``python`` first on the path, the repository importable (``python -m
  experiments...`` from any folder)."""
  bin_dir = str(Path(sys.executable).parent)
  # The suite's XLA level 0 (tests/conftest.py) left out: the user's programs run optimised.
  flags = re.sub(r"--xla_backend_optimization_level=0", "", os.environ.get("XLA_FLAGS", ""))
  return dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""),
              PYTHONPATH=str(REPO), JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
              XLA_FLAGS=flags.strip())


def run_block(text: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
  """Runs a README block as written with bash in ``cwd``, stopping at the
  first failure, background commands waited for (and failing it)."""
  script = ("set -euo pipefail\n" + text
            + '\nfor job in $(jobs -p); do wait "$job"; done\n')
  return subprocess.run(["bash", "-c", script], cwd=cwd, env=_env(), capture_output=True,
                        text=True, timeout=timeout)


def _digits_provisioned() -> bool:
  return (Path(os.environ.get("EOI_DATA_DIR", data.default_data_dir())) / "digits").exists()


def _cheap(commands) -> bool:
  """A block of the default suite: it trains only the digits smoke preset, in one process."""
  trains = [c.argv for c in commands if c.argv[0] == "eoi-jax" and c.argv[1] in ("train",
                                                                                  "sweep")]
  return bool(trains) and all("digits_smoke" in argv and "--coordinator" not in argv
                              and "--help" not in argv for argv in trains) and all(
      c.argv[0] in ("eoi-jax", "mkdir", "cat") for c in commands)


def test_the_readme_sweep_example_runs_as_written(tmp_path):
  if not _digits_provisioned():
    pytest.skip("the digits are not provisioned (eoi-jax data fetch digits)")
  cheap = [(line, text) for line, text in shell_blocks(REPO / "README.md")
           if _cheap(block_commands(text, str(line)))]
  assert cheap, "the README's sweep example is gone"
  for line, text in cheap:
    done = run_block(text, tmp_path, timeout=600)
    assert done.returncode == 0, f"README.md:{line}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing outside runs/
  rows = (tmp_path / "runs" / "sweeps" / "demo" / "results.csv").read_text().splitlines()
  assert len(rows) == 1 + 12  # 3 methods x 2 densities x 2 seeds
  assert "| method |" in (tmp_path / "runs" / "sweeps" / "demo" / "table.md").read_text()


# ----------------------------------------------------------------------------
# The longer commands: EOI_JAX_README_SLOW=1 (CI).


def _git_status() -> str:
  return subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True,
                        text=True).stdout


@SLOW
@pytest.mark.readme_slow
def test_main_sh_as_written():
  """``bash scripts/main.sh`` from the repository root: installs, fetches,
  trains, prints the accuracy and the run directory; writes nothing git
  sees; run again, it says the run is finished and keeps its record."""
  before = _git_status()
  done = subprocess.run(["bash", "scripts/main.sh"], cwd=REPO, env=_env(), capture_output=True,
                        text=True, timeout=3600)
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
  run_dir = REPO / "runs" / "mnist_mlp_eoi_0.1_epochs=20"
  assert "test accuracy: 0.9" in done.stdout and f"run outputs: {run_dir}" in done.stdout
  # The steps on stderr, pip's progress lines (what it fetches and installs) on stdout.
  assert "[1/3] installing" in done.stderr and "Successfully installed" in done.stdout
  summary = json.loads((run_dir / "summary.json").read_text())
  assert summary["epochs_done"] == 20
  again = subprocess.run([sys.executable, "-m", "eoi_jax", "train", "--config", "mnist_mlp",
                          "--epochs", "20", "--quiet", "false"], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=600)
  assert again.returncode == 0 and "already finished (20/20 epochs)" in again.stderr
  assert json.loads((run_dir / "summary.json").read_text())["wall_time_s"] == \
      summary["wall_time_s"]
  assert _git_status() == before


@SLOW
@pytest.mark.readme_slow
@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(REPO)))
def test_readme_commands_run_as_written(readme, tmp_path):
  """Each README's blocks in order, in one fresh directory (main.sh, pip and
  pytest aside: the set-up commands), then its concrete inline experiment
  commands; nothing is written outside ``runs/`` and the repository is
  unchanged."""
  before = _git_status()
  for line, text in shell_blocks(readme):
    commands = block_commands(text, str(line))
    if any(c.argv[:2] == ["bash", "scripts/main.sh"] or c.argv[0] == "pip"
           or c.argv[:3] == ["python", "-m", "pytest"] for c in commands):
      continue
    done = run_block(text, tmp_path, timeout=1800)
    assert done.returncode == 0, f"{readme.name}:{line}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, f"{readme.name}:{line}\n{done.stderr[-3000:]}"
  # The concrete commands (no [--option] forms: those are the full grids or need CIFAR).
  concrete = sorted({tuple(c.argv) for c in _concrete_experiment_commands(readme)})
  for argv in concrete:
    done = subprocess.run(list(argv), cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, f"{argv}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr
  assert {p.name for p in tmp_path.iterdir()} <= {"runs"}
  assert _git_status() == before


def _concrete_experiment_commands(readme: Path) -> list[Command]:
  """The inline ``python -m experiments.NAME ...`` commands of ``readme`` that
  a CI can run: written without ``[--option]`` forms or placeholders, and
  either ``--quick`` or of an experiment that has no ``--quick`` (one run:
  ``vit_digits``). Full grids take CPU-days; they are planned, not run
  (``--check``, tests/test_experiments.py)."""
  out = []
  for number, line in enumerate(readme.read_text().splitlines(), 1):
    for text in _INLINE.findall(line):
      if not text.startswith("python -m experiments.") or "[" in text or "<" in text:
        continue
      argv = shlex.split(text)
      module = REPO.joinpath(*argv[2].split(".")).with_suffix(".py")
      grid = "--quick" in module.read_text() or "_common.main(" in module.read_text()
      if "--quick" in argv or not grid:
        out.append(Command(argv, None, f"{readme.name}:{number}"))
  return out
