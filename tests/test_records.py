"""Records that never lie: metrics restored with checkpoints, runs known by
their config wherever they live, the lock around every config check, reports
that name the runs they cannot read, sweeps that train each run once."""

import csv
import dataclasses
import json
import shutil
import threading
from pathlib import Path

import jax
import numpy as np
import pytest

from eoi_jax.training import multirun, report, rundir, sweep
from eoi_jax.training.checkpoints import CheckpointStore
from eoi_jax.training.config import make_config
from eoi_jax.training.train import train_and_evaluate


def _config(run_dir, **overrides):
  values = dict(dataset="synthetic", depth=3, width=16, density=0.25, lr=0.05, epochs=2,
                batch_size=64, quiet=True, devices=1, run_dir=str(run_dir))
  values.update(overrides)
  return make_config("mnist_mlp", **values)


def _lines(run_dir) -> list[str]:
  return (Path(run_dir) / "metrics.jsonl").read_text().splitlines()


def _assert_same_params(a, b):
  for x, y in zip(jax.tree.leaves(a.state.params), jax.tree.leaves(b.state.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def full(tmp_path_factory):
  """An uninterrupted run of two epochs."""
  return train_and_evaluate(_config(tmp_path_factory.mktemp("full") / "run"))


# ----------------------------------------------------------------------------
# The metrics record is restored with the checkpoint.


def test_a_deleted_record_is_restored_from_the_checkpoint(tmp_path, full):
  run_dir = tmp_path / "run"
  train_and_evaluate(_config(run_dir), stop_after_epoch=1)
  first_line = _lines(run_dir)
  (run_dir / "metrics.jsonl").unlink()
  with pytest.warns(RuntimeWarning, match=r"epochs 0 were missing or damaged; rewritten from "
                                          r"checkpoint 0"):
    resumed = train_and_evaluate(_config(run_dir))
  lines = _lines(run_dir)
  assert lines[:1] == first_line and [json.loads(l)["epoch"] for l in lines] == [0, 1]
  assert resumed.history == [json.loads(l) for l in lines]
  _assert_same_params(resumed, full)
  summary = json.loads((run_dir / "summary.json").read_text())
  assert summary["epochs_done"] == 2 and summary["test_accuracy"] == full.summary["test_accuracy"]
  assert summary["params_fingerprint"] == full.summary["params_fingerprint"]


def test_altered_or_lost_lines_of_a_finished_run_are_repaired_and_the_summary_rebuilt(tmp_path,
                                                                                      full):
  # The worst case: the last epoch's line and summary.json lost (a
  # kill after the checkpoint), an earlier line altered. The rerun restores
  # the last checkpoint, trains nothing, and writes the true record.
  run_dir = tmp_path / "run"
  shutil.copytree(Path(full.summary["run_dir"]), run_dir)
  original = _lines(run_dir)
  summary = json.loads((run_dir / "summary.json").read_text())
  altered = json.loads(original[0])
  altered["test_accuracy"] = 0.0833
  (run_dir / "metrics.jsonl").write_text(json.dumps(altered) + "\n")
  (run_dir / "summary.json").unlink()
  with pytest.warns(RuntimeWarning, match=r"epochs 0, 1 were missing or damaged"):
    again = train_and_evaluate(_config(run_dir))
  assert _lines(run_dir) == original
  rebuilt = json.loads((run_dir / "summary.json").read_text())
  assert rebuilt == {**summary, "run_dir": str(run_dir.absolute())}
  assert again.summary["test_accuracy"] == json.loads(original[-1])["test_accuracy"]


def test_a_group_restores_each_runs_record(tmp_path):
  configs = [_config(tmp_path / f"r{seed}", seed=seed) for seed in (0, 1)]
  multirun.train_runs(configs, stop_after_epoch=1)
  kept = _lines(tmp_path / "r1")
  (tmp_path / "r0" / "metrics.jsonl").write_text("{not json\n")
  with pytest.warns(RuntimeWarning, match="r0/metrics.jsonl: the lines of epochs 0"):
    results = multirun.train_runs(configs)
  for result, config in zip(results, configs):
    lines = _lines(config.run_dir)
    assert [json.loads(l)["epoch"] for l in lines] == [0, 1]
    assert result.history == [json.loads(l) for l in lines]
  assert _lines(tmp_path / "r1")[:1] == kept


def test_a_checkpoint_without_a_record_and_an_incomplete_log_starts_over(tmp_path, monkeypatch,
                                                                         full):
  # Checkpoints written before records were stored with them: the log is the
  # only record; when it lacks an epoch the run retrains from the start.
  save = CheckpointStore.save
  monkeypatch.setattr(CheckpointStore, "save",
                      lambda self, step, state, history=None: save(self, step, state))
  run_dir = tmp_path / "run"
  train_and_evaluate(_config(run_dir), stop_after_epoch=1)
  (run_dir / "metrics.jsonl").write_text("")
  with pytest.warns(RuntimeWarning, match="holds no record of them; the run starts over"):
    resumed = train_and_evaluate(_config(run_dir))
  assert [json.loads(l)["epoch"] for l in _lines(run_dir)] == [0, 1]
  _assert_same_params(resumed, full)


# ----------------------------------------------------------------------------
# A run is its config, wherever it lives.


def test_a_moved_run_resumes_under_any_spelling_of_its_path(tmp_path, monkeypatch, full):
  train_and_evaluate(_config(tmp_path / "a"), stop_after_epoch=1)
  (tmp_path / "a").rename(tmp_path / "b")
  monkeypatch.chdir(tmp_path)
  resumed = train_and_evaluate(_config("./b/"))
  _assert_same_params(resumed, full)
  assert [r["epoch"] for r in resumed.history] == [0, 1]
  saved = json.loads((tmp_path / "b" / "config.json").read_text())
  assert saved["run_dir"] == "./b/"  # the config now names where it lives


def test_another_config_is_refused_with_a_way_to_keep_it(tmp_path):
  run = rundir.RunDir(tmp_path / "run")
  run.path.mkdir()
  (tmp_path / "run-2").mkdir()
  saved = {"density": 1.0, "seed": 0, "run_dir": "elsewhere/run", "quiet": False}
  run.write_json("config.json", saved)
  run.check_config({**saved, "density": 1, "run_dir": "./run/", "quiet": True})
  run.check_config({**saved, "run_dir": str(tmp_path / "run")})
  with pytest.raises(rundir.RunDirError) as error:
    run.check_config({**saved, "density": 0.5})
  message = str(error.value)
  assert "different config (density: 1.0 -> 0.5)" in message
  assert f"--run-dir {tmp_path / 'run-3'}" in message  # a directory that is free
  assert "--resume false starts over in this one, deleting its checkpoints and metrics" in message


def test_a_moved_sweeps_runs_stay_finished(tmp_path):
  config = _config(tmp_path / "sweep" / "runs" / "seed=0", epochs=3)
  run = rundir.RunDir(config.run_dir)
  run.path.mkdir(parents=True)
  run.write_json("config.json", {**dataclasses.asdict(config),
                                 "run_dir": "/old/place/runs/seed=0", "quiet": False})
  run.write_json("summary.json", {"epochs_done": 3})
  assert sweep.finished(config)
  assert not sweep.finished(_config(config.run_dir, epochs=3, seed=1))


# ----------------------------------------------------------------------------
# The config is checked and written under the lock, checkpoints or not.


@pytest.mark.parametrize("checkpoint", [False, True])
def test_a_locked_run_directory_is_refused_and_left_alone(tmp_path, checkpoint):
  holder = rundir.RunDir(tmp_path / "run").lock()
  try:
    with pytest.raises(rundir.RunDirError, match="in use by another training process"):
      train_and_evaluate(_config(tmp_path / "run", checkpoint=checkpoint))
  finally:
    holder.unlock()
  assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]


def test_a_config_written_between_the_check_and_the_lock_is_refused(tmp_path, monkeypatch):
  # Another process wrote its run after this one's first check: the check
  # under the lock refuses, checkpoints off as on, and its files stay.
  other = _config(tmp_path / "run", density=0.5, checkpoint=False)
  lock = rundir.RunDir.lock

  def late_lock(self):
    if not (self.path / "config.json").exists():
      self.path.mkdir(parents=True, exist_ok=True)
      self.write_json("config.json", dataclasses.asdict(other))
    return lock(self)

  monkeypatch.setattr(rundir.RunDir, "lock", late_lock)
  with pytest.raises(rundir.RunDirError, match=r"different config \(density: 0.5 -> 0.25\)"):
    train_and_evaluate(_config(tmp_path / "run", checkpoint=False))
  assert json.loads((tmp_path / "run" / "config.json").read_text()) == dataclasses.asdict(other)
  assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock", "config.json"]


# ----------------------------------------------------------------------------
# Reports and sweeps.


def _finished_run(root: Path, name: str, accuracy: float) -> Path:
  run = root / "runs" / name
  run.mkdir(parents=True)
  (run / "config.json").write_text(json.dumps({"init": "eoi", "density": 0.1, "seed": int(name[-1]),
                                               "run_dir": str(run)}))
  (run / "summary.json").write_text(json.dumps({"test_accuracy": accuracy, "density": 0.1,
                                                "epochs_done": 1}))
  return run


def test_report_marks_and_warns_about_every_run_it_cannot_read(tmp_path):
  for seed in range(4):
    _finished_run(tmp_path, f"seed={seed}", 0.9 + seed / 100)
  (tmp_path / "runs" / "seed=1" / "summary.json").write_text('{"test_accuracy": 0.9')
  (tmp_path / "runs" / "seed=2" / "config.json").unlink()
  with pytest.warns(RuntimeWarning) as caught:
    results = report.write(tmp_path, figures=False)
  messages = [str(w.message) for w in caught]
  assert len(messages) == 2
  assert "seed=1 is left out: summary.json is not valid JSON" in messages[0]
  assert "seed=2 is left out: config.json is missing" in messages[1]
  rows = {r["run"]: r for r in csv.DictReader(results.open())}
  assert len(rows) == 4
  assert rows["seed=1"]["unreadable"].startswith("summary.json is not valid JSON")
  assert rows["seed=1"]["seed"] == "1" and rows["seed=1"]["test_accuracy"] == ""
  assert rows["seed=2"]["unreadable"] == "config.json is missing"
  assert rows["seed=0"]["unreadable"] == "" and rows["seed=3"]["test_accuracy"] == "0.93"
  table = (tmp_path / "table.md").read_text()
  assert "2 finished runs cannot be read and are left out (seed=1, seed=2" in table
  assert "(2)" in table  # the mean is over the two readable runs only


def test_reports_never_share_a_temporary_file(tmp_path):
  for seed in range(2):
    _finished_run(tmp_path, f"seed={seed}", 0.9)
  # Names a fixed temporary would take are in the way; reports still write.
  for blocker in ("results.tmp", ".results.csv.tmp", "table.tmp", "results.csv.tmp"):
    (tmp_path / blocker).mkdir()
  errors = []

  def reports():
    try:
      for _ in range(15):
        report.write(tmp_path, figures=False)
    except Exception as e:  # noqa: BLE001: any failure is the test's
      errors.append(e)

  threads = [threading.Thread(target=reports) for _ in range(3)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert errors == []
  assert len(list(csv.DictReader((tmp_path / "results.csv").open()))) == 2
  left = sorted(p.name for p in tmp_path.iterdir())
  assert left == sorted(["runs", "results.csv", "table.md", "results.tmp", ".results.csv.tmp",
                         "table.tmp", "results.csv.tmp"])


def test_grid_points_that_make_one_run_train_once(tmp_path):
  base = _config(tmp_path / "unused", lr=0.05)
  configs = sweep.expand(base, {"density": [1, 1.0, 0.5], "lr": [0.05, 5e-2]}, tmp_path)
  assert [(c.density, c.lr) for c in configs] == [(1.0, 0.05), (0.5, 0.05)]
  assert Path(configs[0].run_dir).name == "density=1.0,lr=0.05"
  union = sweep.expand(base, [{"density": [0.25], "seed": [0]}, {"seed": [0, 1]}], tmp_path)
  assert [(Path(c.run_dir).name, c.seed) for c in union] == [("density=0.25,seed=0", 0),
                                                             ("seed=1", 1)]


@pytest.mark.parametrize("field,value", [("depth", 0), ("width", 0), ("depth", -2),
                                         ("width", -16)])
def test_zero_or_negative_model_sizes_are_errors(field, value):
  with pytest.raises(ValueError, match=rf"{field} must be >= 1 .*got {value}"):
    make_config("mnist_mlp", **{field: value})
