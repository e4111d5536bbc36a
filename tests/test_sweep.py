"""Multi-run training, the sweep runner and its reports."""

import csv
import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from eoi_jax import layers
from eoi_jax.training import cli, data, models, multirun, plan, report, sweep
from eoi_jax.training import train as train_lib
from eoi_jax.training.config import make_config
from eoi_jax.training.train import train_and_evaluate


def _config(tmp_path, name, **overrides):
  values = dict(dataset="synthetic", depth=4, width=32, density=0.25, lr=0.05, epochs=2,
                batch_size=64, quiet=True, devices=1, run_dir=str(tmp_path / name))
  values.update(overrides)
  return make_config("mnist_mlp", **values)


def _assert_same_run(together, alone, rtol=2e-4, atol=2e-5):
  """Equal up to float reassociation (vmapped matmuls may sum in another order)."""
  for a, b in zip(jax.tree.leaves(together.state.params), jax.tree.leaves(alone.state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)
  for a, b in zip(jax.tree.leaves(together.state.masks), jax.tree.leaves(alone.state.masks)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for ra, rb in zip(together.history, alone.history):
    jacobian = {k for k in rb if k.startswith("jacobian")}
    assert jacobian == {k for k in ra if k.startswith("jacobian")}
    for key in jacobian:
      assert ra[key] == pytest.approx(rb[key], rel=1e-3)
    assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-4)
    assert ra["test_accuracy"] == pytest.approx(rb["test_accuracy"], abs=0.01)


def test_runs_together_equal_runs_alone_mlp(tmp_path):
  variants = [dict(seed=0, init="eoi", density=0.25, lr=0.05, weight_decay=1e-4),
              dict(seed=1, init="snip", density=0.1, lr=0.02, weight_decay=0.0),
              dict(seed=2, init="uniform", density=0.5, lr=0.1, weight_decay=1e-3,
                   jacobian=True)]
  together = multirun.train_runs([_config(tmp_path, f"t{i}", **v)
                                  for i, v in enumerate(variants)])
  for i, v in enumerate(variants):
    alone = train_and_evaluate(_config(tmp_path, f"a{i}", **v))
    _assert_same_run(together[i], alone)
    run = Path(together[i].summary["run_dir"])
    for name in ("config.json", "metrics.jsonl", "sparsity.json", "summary.json", "checkpoints"):
      assert (run / name).exists(), name
    assert json.loads((run / "config.json").read_text())["seed"] == v["seed"]


def test_runs_together_equal_runs_alone_batch_norm_cnn(tmp_path):
  # Small learning rates: at lr 0.05 this network amplifies a 1e-7 change of
  # its initial weights to 1e-2 within 9 steps, so no two summation orders agree.
  variants = [dict(seed=0, init="eoi", lr=0.01), dict(seed=3, init="erk", lr=0.02)]
  common = dict(model="resnet8", depth=None, width=None, epochs=1, limit=160, batch_size=32,
                checkpoint=False)
  together = multirun.train_runs([_config(tmp_path, f"t{i}", **{**common, **v})
                                  for i, v in enumerate(variants)])
  for i, v in enumerate(variants):
    alone = train_and_evaluate(_config(tmp_path, f"a{i}", **{**common, **v}))
    _assert_same_run(together[i], alone, rtol=1e-3, atol=1e-4)
    for a, b in zip(jax.tree.leaves(together[i].state.other), jax.tree.leaves(alone.state.other)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-4)


def test_a_single_run_trained_as_runs_equals_the_run_alone(tmp_path):
  # One run's step squeezes the run axis instead of vmapping over it.
  config = dict(seed=4, init="eoi", density=0.25, lr=0.05, weight_decay=1e-4)
  together, = multirun.train_runs([_config(tmp_path, "t", **config)])
  _assert_same_run(together, train_and_evaluate(_config(tmp_path, "a", **config)))


def test_groups_are_checked(tmp_path):
  with pytest.raises(ValueError, match="width"):
    multirun.train_runs([_config(tmp_path, "a"), _config(tmp_path, "b", width=16)])
  with pytest.raises(ValueError, match="own run_dir"):
    multirun.train_runs([_config(tmp_path, "a"), _config(tmp_path, "a", seed=1)])


def test_runs_mesh_divides_the_runs():
  assert multirun.runs_mesh(6).devices.size == 6
  assert multirun.runs_mesh(18).devices.size == 6
  assert multirun.runs_mesh(7).devices.size == 7
  assert multirun.runs_mesh(11).devices.size == 1
  assert multirun.runs_mesh(8, num_devices=2).devices.size == 2


def test_sweep_expands_trains_skips_and_reports(tmp_path, capsys):
  base = _config(tmp_path, "unused", epochs=1, checkpoint=False)
  grid = {"init": ["eoi", "uniform"], "density": [0.1, 0.5], "seed": [0, 1]}
  configs = sweep.expand(base, grid, tmp_path / "sweep")
  assert len(configs) == 8 and len({c.run_dir for c in configs}) == 8
  assert configs[0].run_dir.endswith("runs/init=eoi,density=0.1,seed=0")
  groups = sweep.batches(configs, max_runs_per_step=3)
  assert [len(g) for g in groups] == [3, 3, 2]
  # One run already finished (as after a kill): it is not trained again.
  done = configs[5]
  multirun.train_runs([done])
  before = Path(done.run_dir, "summary.json").stat().st_mtime_ns
  results = sweep.run_sweep(base, grid, tmp_path / "sweep", max_runs_per_step=3, figures=False)
  assert Path(done.run_dir, "summary.json").stat().st_mtime_ns == before
  assert "8 runs, 1 done, 7 to train" in capsys.readouterr().err
  rows = list(csv.DictReader(results.open()))
  assert len(rows) == 8
  for key in ("init", "density", "seed", "test_accuracy", "best_val_accuracy", "wall_time_s"):
    assert key in rows[0]
  table = (tmp_path / "sweep" / "table.md").read_text()
  assert "density 0.1" in table and "| eoi |" in table and "(2)" in table
  # A second call trains nothing.
  mtimes = {c.run_dir: Path(c.run_dir, "summary.json").stat().st_mtime_ns for c in configs}
  sweep.run_sweep(base, grid, tmp_path / "sweep", figures=False)
  assert mtimes == {c.run_dir: Path(c.run_dir, "summary.json").stat().st_mtime_ns
                    for c in configs}


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_process_sweep_splits_the_runs_and_each_equals_its_run_alone(tmp_path):
  # Two jax.distributed processes on 127.0.0.1, one CPU device each, run one
  # sweep of three runs in one group: process 0 trains runs 0 and 2 side by
  # side, process 1 run 1; each run ends as it does trained alone.
  common = dict(dataset="synthetic", depth=4, width=32, epochs=2, batch_size=64, limit=512,
                lr=0.05)
  grid_file = tmp_path / "grid.json"
  grid_file.write_text(json.dumps({"base": "mnist_mlp", "overrides": common,
                                   "grid": {"init": ["eoi", "uniform"], "seed": [0, 1]}}))
  grid = {"init": ["eoi", "uniform"], "seed": [0, 1]}
  sweep_dir = tmp_path / "sweep"
  address = f"127.0.0.1:{_free_port()}"
  command = [sys.executable, "-m", "eoi_jax", "sweep", "--grid", str(grid_file), "--sweep-dir",
             str(sweep_dir), "--max-runs-per-step", "3", "--no-figures", "--quiet", "true",
             "--coordinator", address, "--num-processes", "2", "--local-devices", "1"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", EOI_JAX_COMPILATION_CACHE="0",
             PYTHONPATH=str(Path(__file__).resolve().parents[1]))
  procs = [subprocess.Popen(command + ["--process-id", str(i)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
  outputs = [proc.communicate(timeout=300)[0] for proc in procs]
  for proc, out in zip(procs, outputs):
    assert proc.returncode == 0, out[-3000:]
  assert "results:" in outputs[0] and "results:" not in outputs[1]
  rows = list(csv.DictReader((sweep_dir / "results.csv").open()))
  assert len(rows) == 4
  base = make_config("mnist_mlp", quiet=True, devices=1, run_dir="unused", **common)
  configs = sweep.expand(base, grid, sweep_dir)
  trained_by = {}
  for i, config in enumerate(configs):
    summary = json.loads(Path(config.run_dir, "summary.json").read_text())
    trained_by[i] = (summary["process"], summary["processes"])
    history = [json.loads(line)
               for line in Path(config.run_dir, "metrics.jsonl").read_text().splitlines()]
    alone = train_and_evaluate(dataclasses.replace(config, run_dir=str(tmp_path / f"alone{i}")))
    # Equal up to float reassociation, as in _assert_same_run.
    assert summary["params_l2"] == pytest.approx(alone.summary["params_l2"], rel=2e-4)
    assert [r["train_loss"] for r in history] == pytest.approx(
        [r["train_loss"] for r in alone.history], rel=1e-4)
  # Batches of 3: runs 0-2 split over the processes (0, 2 | 1), then run 3 on process 0.
  assert trained_by == {0: (0, 2), 1: (1, 2), 2: (0, 2), 3: (0, 2)}


RESUME_SCRIPT = """
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", 1)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]))
from eoi_jax.training import multirun
from eoi_jax.training.config import make_config
configs = [make_config("mnist_mlp", **json.loads(sys.argv[3]), seed=s,
                       run_dir=f"{sys.argv[4]}/r{s}") for s in range(3)]
mine = multirun.process_share(configs)
multirun.train_runs(configs, stop_after_epoch=1)  # as if killed after epoch 1
# Epoch 0's log line (its step time differs run to run) survives a resume only.
first = [open(c.run_dir + "/metrics.jsonl").readline() for c in mine]
for c, line, result in zip(mine, first, multirun.train_runs(configs)):  # the same call resumes
  kept = open(c.run_dir + "/metrics.jsonl").readline() == line
  print("RESULT " + json.dumps(dict(result.summary, epoch0_kept=kept)))
jax.distributed.shutdown()
"""


def test_two_process_runs_resume_from_their_process_local_checkpoints(tmp_path):
  common = dict(dataset="synthetic", depth=3, width=16, epochs=2, batch_size=64, limit=256,
                lr=0.05, quiet=True)
  address = f"127.0.0.1:{_free_port()}"
  env = dict(os.environ, JAX_PLATFORMS="cpu", EOI_JAX_COMPILATION_CACHE="0",
             PYTHONPATH=str(Path(__file__).resolve().parents[1]))
  procs = [subprocess.Popen([sys.executable, "-c", RESUME_SCRIPT, address, str(i),
                             json.dumps(common), str(tmp_path / "runs")], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
  outputs = [proc.communicate(timeout=300)[0] for proc in procs]
  for proc, out in zip(procs, outputs):
    assert proc.returncode == 0, out[-3000:]
    assert "cannot be restored" not in out, out[-3000:]
  summaries = {Path(r["run_dir"]).name: r for out in outputs for r in
               (json.loads(l[7:]) for l in out.splitlines() if l.startswith("RESULT "))}
  assert {name: r["process"] for name, r in summaries.items()} == {"r0": 0, "r1": 1, "r2": 0}
  assert all(r["epoch0_kept"] for r in summaries.values())
  for seed in range(3):
    run = tmp_path / "runs" / f"r{seed}"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["0", "1", "manifests"]
    assert [json.loads(l)["epoch"] for l in (run / "metrics.jsonl").read_text().splitlines()] \
        == [0, 1]
    alone = train_and_evaluate(make_config("mnist_mlp", **common, seed=seed, devices=1,
                                           run_dir=str(tmp_path / f"alone{seed}")))
    assert summaries[f"r{seed}"]["params_l2"] == pytest.approx(alone.summary["params_l2"],
                                                               rel=2e-4)


def test_sweep_rejects_bad_grids(tmp_path):
  base = _config(tmp_path, "unused")
  with pytest.raises(ValueError, match="unknown field 'densty'"):
    sweep.expand(base, {"densty": [0.1]}, tmp_path)
  with pytest.raises(ValueError, match="list of values"):
    sweep.expand(base, {"density": 0.1}, tmp_path)
  with pytest.raises(ValueError, match="grid point .*density"):
    sweep.expand(base, {"density": [0.1, 2.0]}, tmp_path)
  with pytest.raises(ValueError, match="max_runs_per_step"):
    sweep.run_sweep(base, {"seed": [0]}, tmp_path, max_runs_per_step=0)


def _fixture_runs(root: Path):
  """Finished runs as they lie on disk: 2 methods x 2 densities x 2 seeds,
  a dense run, Jacobian statistics at init."""
  rng = np.random.default_rng(0)
  points = [(m, d, s) for m in ("eoi", "uniform") for d in (0.1, 0.5) for s in (0, 1)]
  points += [("dense", 1.0, 0)]
  for method, density, seed in points:
    run = root / "runs" / f"init={method},density={density},seed={seed}"
    run.mkdir(parents=True)
    accuracy = {"eoi": 0.9, "uniform": 0.8, "dense": 0.95}[method] + 0.01 * density + 0.001 * seed
    config = {"init": method, "density": density, "seed": seed, "epochs": 3,
              "run_dir": str(run), "quiet": True}
    (run / "config.json").write_text(json.dumps(config))
    (run / "summary.json").write_text(json.dumps(
        {"test_accuracy": accuracy, "best_val_accuracy": accuracy, "density": density,
         "epochs_done": 3, "wall_time_s": 1.5, "train_loss": 0.1}))
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "train_loss": float(1.0 / (e + 1) + rng.uniform(0, 0.01)),
                    "jacobian_sv_mean": 1.0 - density / 10, "jacobian_sv_var": density / 10})
        + "\n" for e in range(3)))


def test_report_from_a_fixture_of_results(tmp_path):
  _fixture_runs(tmp_path)
  results = report.write(tmp_path, figures=False)
  rows = list(csv.DictReader(results.open()))
  assert len(rows) == 9
  assert {"jacobian_sv_mean_init", "jacobian_sv_var_init", "diverged"} <= set(rows[0])
  table = (tmp_path / "table.md").read_text()
  # the best sparse entry of each density column is EOI's, in bold; dense is not marked
  assert "**0.9015 ± 0.0007 (2)**" in table and "**0.9055 ± 0.0007 (2)**" in table
  assert "**0.96" not in table
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no finished runs"):
    report.write(tmp_path / "empty", figures=False)
  with pytest.raises(ValueError, match="does not exist"):
    report.write(tmp_path / "missing", figures=False)


def test_report_figures(tmp_path):
  pytest.importorskip("matplotlib")
  _fixture_runs(tmp_path)
  report.write(tmp_path, figures=True)
  for name in ("accuracy_vs_density.png", "loss_curves.png", "jacobian_vs_density.png"):
    data = (tmp_path / name).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name


def test_cli_sweep_and_report(tmp_path, capsys):
  grid = tmp_path / "grid.json"
  grid.write_text(json.dumps({"grid": {"seed": [0, 1]}, "overrides": {"density": 0.5}}))
  sweep_dir = tmp_path / "sweep"
  argv = ["sweep", "--config", "digits_smoke", "--grid", str(grid), "--sweep-dir",
          str(sweep_dir), "--epochs", "1", "--dataset", "synthetic", "--max-runs-per-step",
          "2", "--no-figures", "--devices", "1"]
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  assert "results:" in out and (sweep_dir / "results.csv").exists()
  rows = list(csv.DictReader((sweep_dir / "results.csv").open()))
  assert [r["density"] for r in rows] == ["0.5", "0.5"]
  assert cli.main(["report", str(sweep_dir), "--no-figures"]) == 0
  assert cli.main(["report", str(tmp_path / "nothing")]) == 2
  assert "does not exist" in capsys.readouterr().err
  grid.write_text("{not json")
  assert cli.main(argv) == 2
  assert "not valid JSON" in capsys.readouterr().err


# ----------------------------------------------------------------------------
# Plans: a grid checked before anything trains.


def _initialise(config):
  """The run's real initialisation: model, method and optimizer, as training builds them."""
  info = data.SPECS[config.dataset].info
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return train_lib.create_train_state(config, info, None, 1, sharding)


def test_the_plan_agrees_with_the_real_initialisation(tmp_path):
  # The 16 x 16 hidden layers of a width-16 MLP have SAO degrees 1, 2, 4, 8, 16:
  # density 0.25 is degree 4, density 0.3 asks for degree 5.
  feasible = _config(tmp_path, "ok", width=16, init="sao", density=0.25)
  infeasible = dataclasses.replace(feasible, density=0.3)
  planned = plan.plan(feasible)
  assert planned.degrees == {"hidden_layers/kernel": 4}
  _, _, sparsity = _initialise(feasible)
  assert {row.name: row.requested for row in sparsity.rows} == pytest.approx(planned.densities)
  with pytest.raises(ValueError, match="degree 5") as real:
    _initialise(infeasible)
  with pytest.raises(plan.Infeasible) as checked:
    plan.plan(infeasible)
  assert str(real.value) in str(checked.value)
  result = plan.check([feasible, infeasible])
  assert result.runs == [feasible] and len(result.dropped) == 1


def test_plans_read_the_real_layers_without_building_weights(tmp_path):
  config = _config(tmp_path, "vit", model="vit", depth=2, width=32, activation=None)
  layout, ends = plan.network(plan.NetworkKey.of(config))
  model = models.build("vit", (8, 8, 1), 10, depth=2, width=32)
  assert layout == layers.model_layout(model) and ends == model.sparsity_spec().ends
  # A model's own constructor check, and an allocator that cannot meet the density.
  with pytest.raises(plan.Infeasible, match="heads"):
    plan.plan(_config(tmp_path, "v", model="vit", depth=2, width=30))
  with pytest.raises(plan.Infeasible, match="too low"):
    plan.plan(_config(tmp_path, "e", init="eoi", allocator="uniform_dense_ends", density=0.01))
  # Built, but otherwise than asked: below EOI's sparsest pattern, an empty random mask.
  assert "sparsest pattern" in plan.plan(_config(tmp_path, "s", density=1e-4)).notes[0]
  assert "keep no entry" in plan.plan(_config(tmp_path, "u", init="uniform",
                                              density=1e-4)).notes[0]
  assert plan.plan(_config(tmp_path, "n", init="snip")).densities is None


def test_every_mask_maker_has_a_density_rule():
  from eoi_jax.methods import registry

  assert set(plan.MASK_DENSITIES) - {None} == set(registry.MASK_MAKERS)


def test_sweep_drops_runs_that_cannot_be_built_and_says_why(tmp_path, capsys):
  base = _config(tmp_path, "unused", width=16, epochs=1, checkpoint=False, limit=256)
  grid = {"init": ["sao"], "density": [0.25, 0.3]}
  results = sweep.run_sweep(base, grid, tmp_path / "sweep", figures=False,
                            results_dir=tmp_path / "results")
  assert "1 run dropped" in capsys.readouterr().err
  assert [r["density"] for r in csv.DictReader(results.open())] == ["0.25"]
  record = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
  assert record["runs"] == 2 and record["dropped"][0]["run"] == "init=sao,density=0.3"
  assert "degree 5" in record["dropped"][0]["reason"]
  assert not Path(base.run_dir).exists() and not (tmp_path / "sweep" / "runs" /
                                                  "init=sao,density=0.3").exists()
  # The results directory names the sweep's, so a report of either finds the runs.
  pointer = json.loads((tmp_path / "results" / "sweep.json").read_text())
  assert pointer["sweep_dir"] == "../sweep" and pointer["dropped"] == record["dropped"]
  assert len(report.collect(tmp_path / "results")) == 1
  with pytest.raises(ValueError, match="no run of the grid can be built"):
    sweep.run_sweep(base, {"init": ["sao"], "density": [0.3]}, tmp_path / "none")


def test_a_sweep_records_the_runs_built_otherwise_than_asked(tmp_path, capsys):
  """At 0.03 the 16 x 16 hidden layer is asked for 8 entries, fewer than EOI's
  sparsest pattern (16): the run trains with that pattern, and the sweep says
  so and records which run and why."""
  base = _config(tmp_path, "unused", width=16, epochs=1, checkpoint=False, limit=256)
  sweep.run_sweep(base, {"init": ["eoi"], "density": [0.03, 0.25]}, tmp_path / "sweep",
                  figures=False)
  assert "1 run is built otherwise than asked" in capsys.readouterr().err
  record = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
  assert record["dropped"] == [] and [n["run"] for n in record["built_otherwise"]] == [
      "init=eoi,density=0.03"]
  assert "fewer entries than EOI's sparsest pattern" in record["built_otherwise"][0]["note"]


def test_model_fields_a_model_does_not_take_are_errors(tmp_path, capsys):
  with pytest.raises(ValueError, match="model 'resnet32' does not take depth, width"):
    make_config("cifar10_resnet32", depth=20, width=999)
  with pytest.raises(ValueError, match="model 'vit' does not take activation"):
    make_config("digits_vit", activation="tanh")
  for field, value, message in (("depth", 0, "depth must be >= 1"),
                                ("width", -3, "width must be >= 1"),
                                ("depth", 1, "depth must be >= 2 for model 'mlp'")):
    with pytest.raises(ValueError, match=message):
      make_config("mnist_mlp", **{field: value})
  with pytest.raises(ValueError, match="grid point .*does not take depth"):
    sweep.expand(make_config("digits_smoke"), {"model": ["mlp", "resnet8"]}, tmp_path)
  assert cli.main(["train", "--config", "cifar10_resnet32", "--depth", "20"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "does not take depth" in err


def test_a_run_alone_and_in_a_group_write_the_same_record(tmp_path):
  from eoi_jax.training import loop

  config = dict(seed=5, init="eoi", density=0.25, jacobian=True)
  compiled = loop.jacobian_stats._cache_size()
  alone = train_and_evaluate(_config(tmp_path, "alone", **config))
  together = multirun.train_runs([_config(tmp_path, "t0", **config),
                                  _config(tmp_path, "t1", seed=6, init="uniform")])
  for result in (alone, together[0]):
    lines = [json.loads(l) for l in
             (Path(result.summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert lines == result.history and [r["epoch"] for r in lines] == [0, 1]
    assert "compile_s" in lines[0] and "compile_s" not in lines[1]
    # The run's share of the epochs' wall time, compilation apart.
    assert result.summary["wall_time_s"] == pytest.approx(sum(r["run_time_s"] for r in lines))
    assert result.summary["compile_time_s"] == pytest.approx(lines[0]["compile_s"])
  assert set(alone.history[0]) == set(together[0].history[0])
  assert set(alone.history[1]) == set(together[0].history[1])
  assert set(alone.summary) - {"run_dir"} == set(together[0].summary) - {"run_dir"}
  assert alone.history[0]["runs_per_step"] == 1 and together[0].history[0]["runs_per_step"] == 2
  # The Jacobian program: compiled once for this network shape, whatever the
  # number of runs, epochs or groups.
  assert loop.jacobian_stats._cache_size() - compiled <= 2  # one run squeezed, a group vmapped


def test_hook_triggers_fire_on_steps_seconds_and_epoch_events():
  from eoi_jax.training import hooks

  every = hooks.Trigger(every_steps=3)
  assert [s for s in range(1, 10) if every.due(hooks.STEP, s)] == [3, 6, 9]
  assert not every.due(hooks.EPOCH_END, 4) and not every.due(hooks.EPOCH_START, 4)
  ends = hooks.Trigger(epoch_end=True)
  assert ends.due(hooks.EPOCH_END, 5) and not ends.due(hooks.STEP, 5)
  assert hooks.Trigger(epoch_start=True).due(hooks.EPOCH_START, 0)
  timed = hooks.Trigger(every_secs=0.0)
  assert timed.due(hooks.STEP, 1) and timed.due(hooks.STEP, 2)
  assert not hooks.Trigger(every_secs=3600).due(hooks.STEP, 1)
  with pytest.raises(ValueError, match="every_steps"):
    hooks.Trigger(every_steps=0)
