"""The command line as a user meets it: help, run directories, reruns,
interrupts, and OS errors and out-of-range numbers as one-line errors."""

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eoi_jax.training import cli, interrupts
from eoi_jax.training import train as train_lib
from eoi_jax.training.config import make_config

REPO = Path(__file__).resolve().parents[1]

# A run of a few seconds on generated data (no dataset to provision).
SMALL = ["--dataset", "synthetic", "--depth", "3", "--width", "16", "--batch-size", "32",
         "--devices", "1", "--limit", "640"]


def _one_error_line(err: str) -> str:
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("eoi-jax: error: "), err
  assert "Traceback" not in err and "absl" not in err
  return lines[0]


# ----------------------------------------------------------------------------
# Help.


def test_help_lists_the_named_presets_values_and_every_command_says_what_it_does(capsys):
  for argv, wanted in [
      (["train", "--config", "digits_smoke", "--help"],
       ["digits_smoke: 0.25", "digits_smoke: 'runs/digits_smoke_eoi_0.25'", "resumes"]),
      (["train", "--config=digits_vit", "--help"], ["digits_vit: 'vit'", "digits_vit: 'adamw'"]),
      (["train", "--help"], ["mnist_mlp: 0.1", "mnist_mlp: 'runs/mnist_mlp_eoi_0.1'"]),
      (["sweep", "--config", "digits_smoke", "--help"], ["digits_smoke: 64", "SWEEP_DIR/runs"]),
      (["report", "--help"], ["sweep.json", "--sweep-dir", "one run's directory"]),
      (["data", "fetch", "--help"], ["mnist", "digits"]),
      (["data", "verify", "--help"], ["checksums"]),
  ]:
    with pytest.raises(SystemExit) as stop:
      cli.main(argv)
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for part in wanted:
      assert part in text, (argv, part)


# ----------------------------------------------------------------------------
# Run directories.


def test_default_run_directories_are_distinct_for_distinct_configs():
  named = {
      "smoke": make_config("digits_smoke"),
      "vit": make_config("digits_vit"),
      "main": make_config("mnist_mlp", epochs=20),
      "main_sparser": make_config("mnist_mlp", epochs=100, density=0.05),
      "main_100": make_config("mnist_mlp"),
      "relu": make_config("mnist_mlp", activation="relu"),
      "uniform": make_config("mnist_mlp", init="uniform"),
      "seed": make_config("mnist_mlp", seed=1),
  }
  dirs = {name: config.run_dir for name, config in named.items()}
  assert dirs["smoke"] == "runs/digits_smoke_eoi_0.25"
  assert dirs["main"] == "runs/mnist_mlp_eoi_0.1_epochs=20"
  assert dirs["main_sparser"] == "runs/mnist_mlp_eoi_0.05"  # 100 epochs is the preset's
  assert len(set(dirs.values())) == len(dirs)
  # What a run may change when resumed does not move it.
  assert make_config("mnist_mlp", quiet=True, log_every=7, data_dir="/d").run_dir == \
      dirs["main_100"]
  # Long names keep their start, end in a hash of the differing fields, and stay distinct.
  long = [make_config("mnist_mlp", lr=lr, gain=1.234567891, bias_std=0.01234567, ai_steps=77,
                      weight_decay=1e-5, momentum=0.85, width=77, depth=9).run_dir
          for lr in (0.01234567, 0.01234568)]
  assert long[0] != long[1] and all(len(Path(d).name) <= 120 for d in long)
  assert all(Path(d).name.startswith("mnist_mlp_eoi_0.1_") for d in long)
  assert make_config("mnist_mlp", run_dir="elsewhere").run_dir == "elsewhere"


def test_a_config_file_names_its_runs_by_its_stem_and_fields(tmp_path):
  path = tmp_path / "my_experiment.json"
  path.write_text(json.dumps({"dataset": "digits", "depth": 4}))
  assert make_config(str(path), lr="0.05").run_dir == \
      "runs/my_experiment_eoi_0.1_dataset=digits_depth=4_lr=0.05"


def test_rerun_of_a_finished_run_says_so_and_keeps_its_record(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)
  argv = ["train", *SMALL, "--epochs", "2", "--quiet", "false"]
  assert cli.main(argv) == 0
  first = capsys.readouterr()
  run_dir = tmp_path / "runs" / "mnist_mlp_eoi_0.1_dataset=synthetic_limit=640_depth=3_width=16_" \
                                "epochs=2_batch_size=32_devices=1"
  assert f"run outputs: {run_dir}" in first.out
  summary = json.loads((run_dir / "summary.json").read_text())
  assert cli.main(argv) == 0
  again = capsys.readouterr()
  assert "already finished (2/2 epochs); nothing to train, its record is kept" in again.err
  assert "epoch 1/2" not in again.err  # nothing trained
  kept = json.loads((run_dir / "summary.json").read_text())
  assert kept["wall_time_s"] == summary["wall_time_s"] > 0
  assert kept["params_fingerprint"] == summary["params_fingerprint"]


def test_a_directory_holding_another_config_names_the_command_to_start_fresh(tmp_path, capsys):
  run_dir = str(tmp_path / "run")
  assert cli.main(["train", *SMALL, "--epochs", "1", "--quiet", "true",
                   "--run-dir", run_dir]) == 0
  capsys.readouterr()
  argv = ["train", *SMALL, "--epochs", "1", "--quiet", "true", "--density", "0.2",
          "--run-dir", run_dir]
  assert cli.main(argv) == 2
  line = _one_error_line(capsys.readouterr().err)
  assert "density: 0.1 -> 0.2" in line
  fresh = line.split("To start fresh beside it: ")[1]
  assert fresh.startswith("eoi-jax train ") and fresh.endswith(f"--run-dir {run_dir}-2")
  # The command named runs as given.
  assert cli.main(fresh.split()[1:]) == 0
  assert (tmp_path / "run-2" / "summary.json").exists()


# ----------------------------------------------------------------------------
# Numbers and OS errors: one line, exit code 2.


@pytest.mark.parametrize("argv, field", [
    (["--seed", str(2**70)], "seed"),
    (["--seed", "10000000000"], "seed"),
    (["--epochs", str(2**40)], "epochs"),
    (["--lr", "inf"], "lr"),
    (["--gain", "nan"], "gain"),
])
def test_out_of_range_numbers_are_one_line_errors(tmp_path, capsys, argv, field):
  assert cli.main(["train", *SMALL, "--run-dir", str(tmp_path / "run"), *argv]) == 2
  line = _one_error_line(capsys.readouterr().err)
  assert line.startswith(f"eoi-jax: error: {field} ")
  assert not (tmp_path / "run").exists()


def test_a_run_directory_name_too_long_is_a_one_line_error(tmp_path, capsys):
  run_dir = tmp_path / ("x" * 300)
  assert cli.main(["train", *SMALL, "--run-dir", str(run_dir)]) == 2
  line = _one_error_line(capsys.readouterr().err)
  assert "File name too long" in line and str(run_dir) in line


ORBAX_NO_SPACE = (
    'RESOURCE_EXHAUSTED: Error writing local file "{path}/checkpoints/0.orbax-checkpoint-tmp/'
    'state.orbax-checkpoint-tmp/_sharding": Failed writing: "x.__lock": Failed to write 6024 '
    "bytes to file 5: No space left on device [os_error_code='28']")


@pytest.mark.parametrize("case", ["no_space_in_orbax", "read_only", "permission_denied"])
def test_os_errors_while_training_are_one_line_naming_the_path(tmp_path, capsys, monkeypatch,
                                                               case):
  run_dir = tmp_path / "run"
  where = run_dir / "checkpoints"
  error, reason = {
      "no_space_in_orbax": (ValueError(ORBAX_NO_SPACE.format(path=run_dir)),
                            "No space left on device"),
      "read_only": (OSError(errno.EROFS, "Read-only file system", str(where)),
                    "Read-only file system"),
      "permission_denied": (PermissionError(errno.EACCES, "Permission denied", str(where)),
                            "Permission denied"),
  }[case]

  def failing(config, **kwargs):
    import logging
    # Orbax logs its thread's failure (with a traceback) before raising.
    logging.getLogger("absl").error("Save Finalize thread failed", exc_info=error)
    raise error

  monkeypatch.setattr(train_lib, "train_and_evaluate", failing)
  assert cli.main(["train", *SMALL, "--run-dir", str(run_dir)]) == 2
  line = _one_error_line(capsys.readouterr().err)
  assert f"{where}: {reason}" in line  # Orbax's temporary folders left out
  log = (run_dir / cli.LOG_NAME).read_text()
  assert "Save Finalize thread failed" in log and "Traceback" in log


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
  """A real file system of ``size`` mounted at ``path`` for the block (the
  test skips where it cannot be mounted: root and ``mount`` are needed)."""
  path.mkdir()
  if shutil.which("mount") is None or os.geteuid() != 0 or subprocess.run(
      ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
      capture_output=True).returncode != 0:
    pytest.skip("needs root to mount a small file system")
  try:
    yield path
  finally:
    subprocess.run(["umount", str(path)], capture_output=True)


def _eoi_jax(*argv) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, "-m", "eoi_jax", *argv], env=env, capture_output=True,
                        text=True, timeout=300)


def test_a_read_only_file_system_is_one_line_for_train_and_report(tmp_path):
  """A real read-only mount (not a simulated error): a report that cannot
  write its results and a run that cannot make its directory end in one line
  naming the path, exit code 2."""
  with _tmpfs(tmp_path / "disk", "8m") as disk:
    run = _eoi_jax("train", *SMALL, "--epochs", "1", "--quiet", "true", "--checkpoint", "false",
                   "--run-dir", str(disk / "runs" / "a"))
    assert run.returncode == 0, run.stderr[-3000:]
    remount = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True)
    if remount.returncode != 0:
      pytest.skip("cannot remount the file system read-only here")
    for argv, path in ((["report", str(disk / "runs"), "--no-figures"], disk / "runs"),
                       (["train", *SMALL, "--run-dir", str(disk / "runs" / "b")],
                        disk / "runs" / "b")):
      done = _eoi_jax(*argv)
      assert done.returncode == 2, done.stderr[-3000:]
      line = _one_error_line(done.stderr)
      assert str(path) in line and "Read-only file system" in line, line


def test_a_full_disk_while_checkpointing_is_one_line_and_orbax_logs_stay_in_the_log(tmp_path):
  with _tmpfs(tmp_path / "disk", "120k") as disk:
    done = _eoi_jax("train", *SMALL, "--epochs", "1", "--width", "256", "--quiet", "true",
                    "--run-dir", str(disk / "run"))
    assert done.returncode == 2, done.stderr[-3000:]
    line = _one_error_line(done.stderr)
    # The file that did not fit, or the run directory when the error names none.
    assert f"{disk / 'run'}" in line and ": No space left on device; free some space" in line


# ----------------------------------------------------------------------------
# Ctrl-C and SIGTERM.


def test_signals_are_held_while_deferred_then_delivered_once():
  done, before = [], signal.getsignal(signal.SIGTERM)
  with interrupts.handling_signals():
    with pytest.raises(interrupts.Interrupted) as stop:
      with interrupts.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        done.append("finished")  # the block ran to its end
    assert stop.value.exit_code == 143 and done == ["finished"]
    # A second signal while one is held stops at once.
    with pytest.raises(interrupts.Interrupted) as stop:
      with interrupts.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        done.append("not reached")
    assert stop.value.exit_code == 130 and done == ["finished"]
  assert signal.getsignal(signal.SIGTERM) == before  # handlers restored


def test_a_signal_while_the_program_exits_ends_it_quietly():
  """After its command, the program only cleans up (JAX's exit handlers): a
  Ctrl-C then ends it with 130, its output flushed, and no traceback."""
  script = ("import os, signal, time\n"
            "from eoi_jax.training import interrupts\n"
            "interrupts.exit_quietly_on_signals()\n"
            "print('done', end='')\n"
            "os.kill(os.getpid(), signal.SIGINT)\n"
            "time.sleep(30)\n")
  done = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=str(REPO)),
                        capture_output=True, text=True, timeout=120)
  assert (done.returncode, done.stdout, done.stderr) == (130, "done", "")


def test_a_progress_line_counts_its_label_and_gives_the_rate_in_its_unit():
  from eoi_jax.training.progress import Progress

  line = Progress(420, label="step (runs 1-16)", unit="step", stream=io.StringIO()).line(0)
  assert line.startswith("step (runs 1-16) 0/420  0.00 steps/s  ETA ?"), line
  assert Progress(8, label="run", stream=io.StringIO()).line(0).startswith("run 0/8  0.00 runs/s")


def _train_until(argv, cwd, marker: str, signum):
  """Starts ``eoi-jax ARGV``, sends ``signum`` once ``marker`` is on stderr;
  returns ``(exit code, stderr)``."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
  env.pop("CI", None)  # progress lines on
  proc = subprocess.Popen([sys.executable, "-m", "eoi_jax", *argv], cwd=cwd, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  lines, sent = [], False
  for line in proc.stderr:
    lines.append(line)
    if not sent and marker in line:
      proc.send_signal(signum)
      sent = True
  return proc.wait(timeout=300), "".join(lines)


def test_ctrl_c_and_sigterm_stop_with_one_line_and_the_same_command_resumes(tmp_path):
  argv = ["train", *SMALL, "--limit", "6400", "--epochs", "400", "--run-dir", "run"]
  code, err = _train_until(argv, tmp_path, "epoch 2/400", signal.SIGINT)
  last = err.strip().splitlines()[-1]
  assert code == 130, err[-3000:]
  assert "run: epoch 1/400 train_loss " in err  # epoch lines name the run
  assert last.startswith("eoi-jax: interrupted at epoch ") and "rerun the same command" in last
  assert "checkpoint after epoch" in last and "run/checkpoints" in last
  assert "Traceback" not in err and "absl" not in err
  code, err = _train_until(argv, tmp_path, "epoch ", signal.SIGTERM)
  assert code == 143, err[-3000:]
  assert "resuming run: " in err and "/400 epochs done" in err
  assert err.strip().splitlines()[-1].startswith("eoi-jax: interrupted at epoch ")
  assert "Traceback" not in err and "absl" not in err


def test_ctrl_c_and_sigterm_stop_a_sweep_with_one_line_and_the_same_command_resumes(tmp_path):
  """A sweep interrupted while a group of runs trains ends with the one line
  naming the group and its checkpoints (no traceback, no checkpoint thread's
  error); rerun, it says what it resumes before training."""
  (tmp_path / "grid.json").write_text(json.dumps({"grid": {"seed": [0, 1, 2]}}))
  argv = ["sweep", "--grid", "grid.json", "--sweep-dir", "sweep", *SMALL, "--epochs", "400",
          "--max-runs-per-step", "2", "--no-figures"]
  code, err = _train_until(argv, tmp_path, "epoch 2/400", signal.SIGINT)
  last = err.strip().splitlines()[-1]
  assert code == 130, err[-3000:]
  assert last.startswith("eoi-jax: interrupted at epoch ") and "(2 runs under sweep/runs)" in last
  assert "2 runs (means): epoch 1/400 train_loss " in err  # a group's lines say so
  assert "sweep/runs/*/checkpoints" in last and "rerun the same command" in last
  assert "Traceback" not in err and "absl" not in err and "Finalize" not in err
  code, err = _train_until(argv, tmp_path, "resuming 2 runs: ", signal.SIGTERM)
  assert code == 143, err[-3000:]
  assert "resuming the sweep in sweep: " in err and "sweep sweep: 3 runs, 0 done, 3 to train" in err
  assert "epochs done, from epoch " in err
  assert err.strip().splitlines()[-1].startswith("eoi-jax: interrupted ")
  assert "Traceback" not in err and "absl" not in err and "Finalize" not in err
