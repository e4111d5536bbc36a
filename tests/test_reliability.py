"""Reliability: the test suite's own abort, and training under kills, damaged files and bad input."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Evaluates an MLP on 600 batches over 8 CPU devices, as the trainer's eval
# loop does; each eval step ends in an all-reduce over the devices. XLA:CPU
# deadlocks when hundreds of such programs are queued at once and aborts the
# process (SIGABRT) once a collective has waited past its termination timeout
# (shortened here, so that a regression fails in seconds rather than
# minutes). The trainer keeps at most MAX_STEPS_IN_FLIGHT steps queued; with
# no bound (pass a huge number as the argument) this script aborts.
MANY_EVAL_STEPS = """
import functools, sys
import jax
jax.config.update("jax_num_cpu_devices", 8)
import jax.numpy as jnp
from eoi_jax.training import data, train
from eoi_jax.training.config import make_config
if len(sys.argv) > 1:
  train.MAX_STEPS_IN_FLIGHT = int(sys.argv[1])
config = make_config("mnist_mlp", dataset="synthetic", init="dense", depth=3, width=512,
                     epochs=1, batch_size=64, quiet=True, checkpoint=False, run_dir="unused")
(x, y), _ = data.synthetic(num_train=600 * 64, num_test=8)
mesh = train.make_mesh(8)
replicated = jax.sharding.NamedSharding(mesh, jax.P())
loader = data.Loader(data.Split(x, y), 64, mesh, train=False)
spec, state, _ = train.create_train_state(
    config, data.SPECS["synthetic"].info, (jnp.zeros((64, 8, 8, 1)), jnp.zeros(64, jnp.int32)),
    600, replicated)
eval_fn = jax.jit(functools.partial(train.eval_step, spec))
zeros = jax.device_put(train.zero_metrics(), replicated)
out = train.evaluate(eval_fn, state, loader, "test", zeros)
print("EVALUATED", loader.steps_per_epoch, out["test_loss"] > 0)
"""


def test_many_queued_collective_steps_do_not_abort():
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_cpu_collective_call_warn_stuck_timeout_seconds=10 "
                       "--xla_cpu_collective_call_terminate_timeout_seconds=20")
  done = subprocess.run([sys.executable, "-c", MANY_EVAL_STEPS], env=env, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "EVALUATED 600 True" in done.stdout


# ----------------------------------------------------------------------------
# Training under faults: each runs the command line in a subprocess.

import gzip  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from eoi_jax.training import data  # noqa: E402
from eoi_jax.training.data import formats  # noqa: E402

# 1350 training examples of the digits at batch 64: 21 steps an epoch.
RUN_ARGS = ["--config", "digits_smoke", "--epochs", "3", "--quiet", "true"]

# Runs the command line after installing a fault, chosen by name:
#   kill_at_batch N  SIGKILL when the Nth training batch is drawn (mid-epoch);
#   kill_in_commit N SIGKILL while checkpoint N is being committed (its files
#                    written, not yet renamed into place);
#   kill_after_log N SIGKILL right after epoch N's line is logged (before its
#                    checkpoint is written);
#   lose_line_then_kill N  epoch N's line is never written, and SIGKILL comes
#                    once its checkpoint is complete (the window a run that
#                    wrote checkpoints first would have: a checkpoint whose
#                    epoch has no line);
#   nan_from_step N  parameters become NaN from optimizer step N on;
#   pause_in_lock F  once the run directory is locked, wait until file F exists;
#   pause_before_lock F  after the checks made before locking, write F.waiting
#                    and wait until F exists.
DRIVER = """
import json, os, signal, sys, time
fault, arg, argv = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
from eoi_jax.training import cli, data, loop, rundir, train

def die():
  os.kill(os.getpid(), signal.SIGKILL)

if fault == "kill_at_batch":
  epoch_fn, drawn = loop.RunsLoader.epoch, [0]
  def epoch(self, *a, **k):
    for batch in epoch_fn(self, *a, **k):
      drawn[0] += 1
      if drawn[0] == int(arg):
        die()
      yield batch
  loop.RunsLoader.epoch = epoch
elif fault == "kill_in_commit":
  from orbax.checkpoint._src.path import atomicity
  finalize = atomicity.AtomicRenameTemporaryPath.finalize
  async def killing_finalize(self):
    if self._final_path.name == arg:
      die()
    return await finalize(self)
  atomicity.AtomicRenameTemporaryPath.finalize = killing_finalize
elif fault == "kill_after_log":
  log = rundir.RunDir.log
  def killing_log(self, record, history):
    log(self, record, history)
    if record["epoch"] == int(arg):
      die()
  rundir.RunDir.log = killing_log
elif fault == "lose_line_then_kill":
  from eoi_jax.training import checkpoints
  log, save = rundir.RunDir.log, checkpoints.CheckpointStore.save
  def losing_log(self, record, history):
    if record["epoch"] != int(arg):
      log(self, record, history)
  def killing_save(self, step, state, history=None):
    save(self, step, state, history)
    if step == int(arg):
      die()
  rundir.RunDir.log = losing_log
  checkpoints.CheckpointStore.save = killing_save
elif fault == "nan_from_step":
  import jax, jax.numpy as jnp
  step = train.train_step
  def poisoned(spec, state, batch, sums):
    state, sums = step(spec, state, batch, sums)
    bad = state.step >= int(arg)
    params = jax.tree.map(lambda p: jnp.where(bad, jnp.nan, p), state.params)
    return state._replace(params=params), sums
  train.train_step = poisoned
elif fault == "pause_in_lock":
  start_log = rundir.RunDir.start_log
  def paused_start_log(self, history):
    while not os.path.exists(arg):
      time.sleep(0.05)
    return start_log(self, history)
  rundir.RunDir.start_log = paused_start_log
elif fault == "pause_before_lock":
  lock = rundir.RunDir.lock
  def paused_lock(self):
    open(arg + ".waiting", "w").close()
    while not os.path.exists(arg):
      time.sleep(0.05)
    return lock(self)
  rundir.RunDir.lock = paused_lock
sys.exit(cli.main(argv))
"""


_CACHE = {}


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """One persistent compilation cache for this module's runs (the command
  line turns one on): the first run compiles, the others reuse it."""
  _CACHE["dir"] = str(tmp_path_factory.mktemp("jax-cache"))
  yield
  _CACHE.clear()


def _env():
  return dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
              JAX_COMPILATION_CACHE_DIR=_CACHE["dir"])


def _train(run_dir, *extra, fault=None, arg="0", data_dir=None, wait=True, cwd=None):
  argv = ["train", *RUN_ARGS, "--run-dir", str(run_dir), *extra]
  if data_dir is not None:
    argv += ["--data-dir", str(data_dir)]
  if fault is None:
    command = [sys.executable, "-m", "eoi_jax", *argv]
  else:
    command = [sys.executable, "-c", DRIVER, fault, str(arg), json.dumps(argv)]
  proc = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, cwd=cwd)
  if not wait:
    return proc
  out, err = proc.communicate(timeout=600)
  return proc.returncode, out, err


def _summary(run_dir):
  return json.loads((Path(run_dir) / "summary.json").read_text())


def _epochs(run_dir):
  lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line)["epoch"] for line in lines]


REAL_DIGITS = data.default_data_dir() / "digits" / "digits.csv.gz"


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  """A data directory holding a copy of the digits (verified when loaded, so
  they must be scikit-learn's)."""
  if not REAL_DIGITS.exists():
    pytest.skip("digits not provisioned (eoi-jax data fetch digits)")
  root = tmp_path_factory.mktemp("data")
  (root / "digits").mkdir()
  shutil.copyfile(REAL_DIGITS, root / "digits" / "digits.csv.gz")
  return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digits_dir):
  """An uninterrupted run: what every interrupted one must end equal to."""
  run_dir = tmp_path_factory.mktemp("reference") / "run"
  code, _, err = _train(run_dir, data_dir=digits_dir)
  assert code == 0, err[-2000:]
  return _summary(run_dir)


def _assert_equal_to_reference(run_dir, reference):
  summary = _summary(run_dir)
  assert summary["params_fingerprint"] == reference["params_fingerprint"]
  assert summary["test_accuracy"] == reference["test_accuracy"]
  assert _epochs(run_dir) == [0, 1, 2]


def test_sigkill_mid_epoch_then_resume_is_bit_for_bit(tmp_path, digits_dir, reference):
  run_dir = tmp_path / "run"
  code, _, _ = _train(run_dir, fault="kill_at_batch", arg=1 + 21 + 7, data_dir=digits_dir)
  assert code == -signal.SIGKILL
  assert _epochs(run_dir) == [0]
  code, _, err = _train(run_dir, data_dir=digits_dir)
  assert code == 0, err[-2000:]
  _assert_equal_to_reference(run_dir, reference)
  # The wall time counts both legs: the first leg's epoch 0 and the second's.
  lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
  assert lines[0]["run_time_s"] > 0
  assert _summary(run_dir)["wall_time_s"] == pytest.approx(sum(r["run_time_s"] for r in lines))


def test_sigkill_during_checkpoint_write_then_resume(tmp_path, digits_dir, reference):
  run_dir = tmp_path / "run"
  code, _, _ = _train(run_dir, fault="kill_in_commit", arg=1, data_dir=digits_dir)
  assert code == -signal.SIGKILL
  complete = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
  assert complete == ["0"]  # the half-written one is not taken for a checkpoint
  code, _, err = _train(run_dir, data_dir=digits_dir)
  assert code == 0, err[-2000:]
  _assert_equal_to_reference(run_dir, reference)


def _damage(checkpoint: Path):
  """Truncates the largest file of a checkpoint to half its size."""
  files = sorted((p for p in checkpoint.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  victim = files[-1]
  victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])


def test_kill_between_an_epochs_line_and_its_checkpoint_resumes_to_a_complete_record(
    tmp_path, digits_dir, reference):
  # An epoch's metrics line is on disk before its checkpoint: a kill between
  # them (here at the last epoch) leaves a line without a checkpoint, which
  # the rerun drops and recomputes from the checkpoint before it.
  run_dir = tmp_path / "run"
  code, _, _ = _train(run_dir, fault="kill_after_log", arg=2, data_dir=digits_dir)
  assert code == -signal.SIGKILL and _epochs(run_dir) == [0, 1, 2]
  assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) \
      == ["0", "1"]
  assert not (run_dir / "summary.json").exists()
  code, _, err = _train(run_dir, data_dir=digits_dir)
  assert code == 0, err[-2000:]
  _assert_equal_to_reference(run_dir, reference)


def test_a_checkpoint_whose_epoch_has_no_line_restores_the_line(tmp_path, digits_dir, reference):
  # The kill window of a run that wrote its checkpoint before its line: the
  # last epoch's checkpoint is complete, its line and summary.json are not.
  # The rerun takes the line from the checkpoint: exit 0, every epoch
  # logged, the summary of the final parameters.
  run_dir = tmp_path / "run"
  code, _, _ = _train(run_dir, fault="lose_line_then_kill", arg=2, data_dir=digits_dir)
  assert code == -signal.SIGKILL and _epochs(run_dir) == [0, 1]
  assert not (run_dir / "summary.json").exists()
  code, _, err = _train(run_dir, data_dir=digits_dir)
  assert code == 0, err[-2000:]
  warnings = [line for line in err.splitlines() if "warning" in line]
  assert warnings == [f"eoi-jax: warning: {run_dir / 'metrics.jsonl'}: the lines of epochs 2 "
                      "were missing or damaged; rewritten from checkpoint 2"]
  _assert_equal_to_reference(run_dir, reference)
  assert _summary(run_dir)["epochs_done"] == 3


def test_a_moved_run_with_a_damaged_record_resumes_and_repairs_it(tmp_path, digits_dir,
                                                                   reference):
  # A finished run moved elsewhere and named by a relative path with a
  # trailing slash is the same run; an altered line and a lost one (and a
  # lost summary.json) are rewritten from its checkpoint, nothing retrained.
  moved = tmp_path / "moved"
  shutil.copytree(Path(reference["run_dir"]), moved)
  lines = (moved / "metrics.jsonl").read_text().splitlines()
  altered = dict(json.loads(lines[0]), test_accuracy=0.0833)
  (moved / "metrics.jsonl").write_text(json.dumps(altered) + "\n" + lines[1] + "\n")
  (moved / "summary.json").unlink()
  code, _, err = _train("./moved/", data_dir=digits_dir, cwd=tmp_path)
  assert code == 0, err[-2000:]
  assert "the lines of epochs 0, 2 were missing or damaged" in err and "config" not in err
  assert (moved / "metrics.jsonl").read_text().splitlines() == lines
  _assert_equal_to_reference(moved, reference)


def test_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, digits_dir, reference):
  run_dir = tmp_path / "run"
  code, _, _ = _train(run_dir, fault="kill_after_log", arg=2, data_dir=digits_dir)
  assert code == -signal.SIGKILL and _epochs(run_dir) == [0, 1, 2]
  _damage(run_dir / "checkpoints" / "1")
  code, _, err = _train(run_dir, data_dir=digits_dir)
  assert code == 0, err[-2000:]
  assert "checkpoints/1 cannot be restored" in err and "trying the one before it" in err
  _assert_equal_to_reference(run_dir, reference)


def test_no_intact_checkpoint_stops_until_asked_to_start_over(tmp_path, digits_dir, reference):
  run_dir = tmp_path / "run"
  code, _, _ = _train(run_dir, fault="kill_after_log", arg=2, data_dir=digits_dir)
  assert code == -signal.SIGKILL
  for step in ("0", "1"):
    _damage(run_dir / "checkpoints" / step)
  before = sorted(p.name for p in run_dir.iterdir())
  code, out, err = _train(run_dir, data_dir=digits_dir)
  assert code == 2 and "Traceback" not in err
  assert "no checkpoint in" in err and "--resume false" in err
  assert sorted(p.name for p in run_dir.iterdir()) == before and _epochs(run_dir) == [0, 1, 2]
  code, _, err = _train(run_dir, "--resume", "false", data_dir=digits_dir)
  assert code == 0, err[-2000:]
  _assert_equal_to_reference(run_dir, reference)


def test_nan_mid_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, digits_dir):
  run_dir = tmp_path / "run"
  code, _, err = _train(run_dir, fault="nan_from_step", arg=21 + 5, data_dir=digits_dir)
  assert code == 1 and "Traceback" not in err
  assert "loss became nan in epoch 1" in err and "last good checkpoint (epoch 0)" in err
  complete = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
  assert complete == ["0"] and _epochs(run_dir) == [0]


def test_damaged_dataset_file_names_the_file_and_touches_nothing(tmp_path, digits_dir):
  data_dir = tmp_path / "data"
  shutil.copytree(digits_dir, data_dir)
  target = data_dir / "digits" / "digits.csv.gz"
  target.write_bytes(target.read_bytes()[:3000])
  (data_dir / "digits" / "notes.txt").write_text("mine")
  before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in data_dir.rglob("*") if p.is_file()}
  code, _, err = _train(tmp_path / "run", data_dir=data_dir)
  assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
  assert str(target) in err and "eoi-jax data verify digits" in err
  after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in data_dir.rglob("*") if p.is_file()}
  assert after == before
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("damage", ["shuffled_test_labels", "train_set_cut"])
def test_data_that_decodes_but_is_not_the_dataset_is_refused(tmp_path, digits_dir, damage):
  data_dir = tmp_path / "data"
  shutil.copytree(digits_dir, data_dir)
  target = data_dir / "digits" / "digits.csv.gz"
  with gzip.open(target, "rt") as f:
    table = np.loadtxt(f, delimiter=",").astype(np.int64)
  if damage == "shuffled_test_labels":
    table[1500:, 64] = np.random.default_rng(0).permutation(table[1500:, 64])
    expected = "digits test: content checksum mismatch"
  else:
    table = table[:1200]  # the digits split by position: 1200 train, no test
    expected = "digits: 1200/0 train/test examples, expected (1500, 297)"
  formats.write_digits_csv(target, table[:, :64], table[:, 64])
  code, _, err = _train(tmp_path / "run", data_dir=data_dir)
  assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
  assert expected in err and "eoi-jax data verify digits" in err
  assert not (tmp_path / "run").exists()


def _config_file(tmp_path, **fields):
  path = tmp_path / "config.json"
  path.write_text(json.dumps(dict(dataset="digits", depth=4, width=64, **fields)))
  return str(path)


@pytest.mark.parametrize("case", [
    "run_dir_under_a_file", "run_dir_unwritable", "unknown_preset", "unknown_field_in_file",
    "unknown_flag", "zero_epochs", "negative_epochs", "zero_depth", "negative_width",
    "batch_larger_than_the_data", "density_sao_cannot_build", "bad_value_type"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, digits_dir, case):
  run_dir = tmp_path / "run"
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  args, field = {
      "run_dir_under_a_file": lambda: (["--run-dir", str(blocker / "run")], "run_dir"),
      "run_dir_unwritable": lambda: (["--run-dir", "/proc/eoi-jax-run"], "run_dir"),
      "unknown_preset": lambda: (["--config", "no_such_preset"], "config"),
      "unknown_field_in_file": lambda: (["--config", _config_file(tmp_path, densty=0.1)],
                                        "densty"),
      "unknown_flag": lambda: (["--densty", "0.1"], "--densty"),
      "zero_epochs": lambda: (["--epochs", "0"], "epochs"),
      "negative_epochs": lambda: (["--epochs", "-3"], "epochs"),
      "zero_depth": lambda: (["--depth", "0"], "depth"),
      "negative_width": lambda: (["--width", "-8"], "width"),
      "batch_larger_than_the_data": lambda: (["--batch-size", "5000"], "batch_size"),
      "density_sao_cannot_build": lambda: (["--init", "sao", "--density", "0.1"], "density"),
      "bad_value_type": lambda: (["--config", _config_file(tmp_path, lr="fast")], "lr"),
  }[case]()
  code, _, err = _train(run_dir, *args, data_dir=digits_dir)
  lines = err.strip().splitlines()
  assert code == 2, err[-2000:]
  assert len(lines) == 1 and lines[0].startswith("eoi-jax") and "error:" in lines[0], err
  assert field in lines[0]
  assert not run_dir.exists() and sorted(p.name for p in tmp_path.iterdir()) <= [
      "a_file", "config.json"]


def test_config_mismatch_on_resume_is_refused_and_changes_nothing(tmp_path, digits_dir):
  run_dir = tmp_path / "run"
  code, _, _ = _train(run_dir, "--epochs", "1", data_dir=digits_dir)
  assert code == 0
  before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
  code, _, err = _train(run_dir, "--epochs", "1", "--density", "0.5", data_dir=digits_dir)
  assert code == 2 and len(err.strip().splitlines()) == 1
  assert "different config" in err and "density: 0.25 -> 0.5" in err
  # A way to keep the run, and what starting over would delete.
  assert f"--run-dir {run_dir}-2" in err and "--resume false starts over in this one, deleting" in err
  assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_runs_started_together_without_checkpoints_never_overwrite_each_other(tmp_path,
                                                                               digits_dir):
  # The second run passes the checks made before locking while the folder is
  # empty, then waits; the first trains and finishes. Under the lock the
  # second finds the first's config and is refused; the first's files stay.
  run_dir, go = tmp_path / "run", tmp_path / "go"
  args = ["--checkpoint", "false", "--epochs", "1"]
  second = _train(run_dir, *args, "--density", "0.5", fault="pause_before_lock", arg=go,
                  data_dir=digits_dir, wait=False)
  try:
    deadline = time.time() + 300
    while not Path(f"{go}.waiting").exists():
      assert second.poll() is None and time.time() < deadline
      time.sleep(0.1)
    code, _, err = _train(run_dir, *args, data_dir=digits_dir)
    assert code == 0, err[-2000:]
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
  finally:
    go.write_text("go")
    _, err = second.communicate(timeout=600)
  assert second.returncode == 2 and len(err.strip().splitlines()) == 1, err[-2000:]
  assert "different config (density: 0.25 -> 0.5)" in err
  assert {p: p.read_bytes() for p in run_dir.rglob("*")
          if p.is_file() and p.name != ".lock"} == before


def test_a_second_run_on_the_same_directory_is_refused(tmp_path, digits_dir, reference):
  run_dir, go = tmp_path / "run", tmp_path / "go"
  first = _train(run_dir, fault="pause_in_lock", arg=go, data_dir=digits_dir, wait=False)
  try:
    deadline = __import__("time").time() + 300
    while not (run_dir / ".lock").exists() or not (run_dir / ".lock").read_text().strip():
      assert first.poll() is None and __import__("time").time() < deadline
      __import__("time").sleep(0.1)
    code, _, err = _train(run_dir, data_dir=digits_dir)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "in use by another training process" in err and str(first.pid) in err
  finally:
    go.write_text("go")
    out, err = first.communicate(timeout=600)
  assert first.returncode == 0, err[-2000:]
  _assert_equal_to_reference(run_dir, reference)
