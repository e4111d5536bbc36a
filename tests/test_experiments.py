"""The experiments: every --quick grid expands and its first run starts, every
full grid passes --check, and results reach experiments/results only with --record."""

import argparse
import dataclasses
import importlib
import json
import time

import pytest

from eoi_jax.training import cli, models, multirun, plan
from eoi_jax.training.config import make_config
from experiments import _common

EXPERIMENTS = ["mlp_density", "mlp_loss_curves", "mlp_1000", "cnn_1000", "cifar_cnns",
               "tiny_imagenet"]
# Smaller members of the same model families for the first-run check: the
# same code paths, a fraction of the compile time.
SMALLER = {"resnet32": "resnet8"}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_quick_grid_expands_and_its_first_run_starts(name, tmp_path, capsys):
  experiment = importlib.import_module(f"experiments.{name}").EXPERIMENT
  assert experiment.name == name
  args = _common.parser(experiment).parse_args(["--quick", "--runs-dir", str(tmp_path / "runs")])
  base, grids, configs, runs_dir, results_dir = _common.configs(experiment, args)
  assert configs and len({c.run_dir for c in configs}) == len(configs)
  assert results_dir == runs_dir and _common.record_name(experiment, args) == f"{name}-quick"
  full = _common.configs(experiment, _common.parser(experiment).parse_args(
      ["--runs-dir", str(tmp_path / "full")]))[2]
  assert len(full) > len(configs)
  assert {c.epochs for c in full} == {{"cifar_cnns": 200, "tiny_imagenet": 120}.get(name, 100)}
  # The first run, a few steps on synthetic 8x8 images (no download): the same
  # model and method (a 1000-layer stack cut to 8 layers: the same scanned
  # code, a minute less).
  model = SMALLER.get(configs[0].model, configs[0].model)
  depth = min(configs[0].depth or 7, 8) if models.TAKES[model].depth else None
  first = dataclasses.replace(configs[0], dataset="synthetic", limit=256, epochs=1,
                              batch_size=64, checkpoint=False, jacobian=False, depth=depth,
                              model=model, run_dir=str(tmp_path / "first"))
  result, = multirun.train_runs([first])
  assert result.summary["epochs_done"] == 1 and result.history[0]["train_loss"] > 0
  assert _common.main(experiment, ["--quick", "--dry-run", "--runs-dir",
                                   str(tmp_path / "runs")]) == 0
  assert f"{len(configs)} runs" in capsys.readouterr().out


def test_bad_arguments_are_one_line_errors(capsys):
  experiment = importlib.import_module("experiments.mlp_density").EXPERIMENT
  for flag in ("--seeds", "--epochs", "--limit"):
    assert _common.main(experiment, [flag, "0", "--dry-run"]) == 2
    assert f"{flag} must be >= 1" in capsys.readouterr().err


def test_a_shortened_grid_is_named_by_what_it_changed_and_trains_that(tmp_path):
  experiment = importlib.import_module("experiments.block_eoi").EXPERIMENT
  argv = ["--epochs", "3", "--limit", "20000", "--seeds", "2", "--runs-dir", str(tmp_path)]
  args = _common.parser(experiment).parse_args(argv)
  assert _common.record_name(experiment, args) == "block_eoi-epochs3-seeds2-limit20000"
  configs = _common.configs(experiment, args)[2]
  assert {(c.epochs, c.limit) for c in configs} == {(3, 20000)}
  assert {c.seed for c in configs} == {0, 1}
  protocol = _common.parser(experiment).parse_args([])
  assert _common.record_name(experiment, protocol) == "block_eoi"
  assert {(c.epochs, c.limit) for c in _common.configs(experiment, protocol)[2]} == {(20, None)}


def test_provenance_names_command_device_version_date_commit(tmp_path):
  _common.provenance(tmp_path, ["experiments.mlp_density", "--quick"])
  text = (tmp_path / "PROVENANCE.md").read_text()
  for part in ("python -m experiments.mlp_density --quick", "device: cpu", "JAX ", "date: ",
               "commit: "):
    assert part in text


def test_init_cost_writes_its_tables_and_figures(tmp_path, capsys):
  from experiments import init_cost

  assert init_cost.main(["--sizes", "16", "--densities", "0.25", "0.5", "--ai-steps", "2",
                         "--keys", "2", "--results-dir", str(tmp_path)]) == 0
  timing = (tmp_path / "timing.csv").read_text().splitlines()
  assert timing[0].startswith("n,density,eoi_first_s,eoi_s") and len(timing) == 1 + 2
  assert "sao_s" in timing[0]  # 16 x 16 at 0.25 and 0.5: SAO degrees 4 and 8 exist
  law = [line.split(",") for line in (tmp_path / "density_law.csv").read_text().splitlines()[1:]]
  # the exact expectation starts at the identity's density and rises; the
  # simulated mean follows it
  assert float(law[0][1]) == pytest.approx(1 / 16) and float(law[-1][1]) > 0.5
  for row in law:
    assert abs(float(row[1]) - float(row[2])) < 0.15
  for name in ("PROVENANCE.md", "timing.png", "density_law.png"):
    assert (tmp_path / name).exists()
  out = capsys.readouterr().out
  assert "| n | density |" in out and "|---|" in out  # a table, not Python dicts
  assert "{" not in out
  # Its folder and record are named by the options given.
  def args(**given):
    return argparse.Namespace(**{"quick": False, "sizes": None, "densities": None,
                                 "ai_steps": None, "keys": None, **given})

  assert init_cost.record_name(args()) == "init_cost"
  assert init_cost.record_name(args(quick=True)) == "init_cost-quick"
  assert init_cost.record_name(args(sizes=[16, 32], keys=2)) == "init_cost-sizes16,32-keys2"


def test_vit_digits_learns_and_keeps_pruned_entries_zero(tmp_path):
  """EOI on the attention, MLP and patch kernels of a ViT at 25%, AdamW."""
  from experiments import vit_digits

  assert vit_digits.main(["--epochs", "5", "--dataset", "synthetic",
                          "--runs-dir", str(tmp_path / "run"),
                          "--results-dir", str(tmp_path / "out")]) == 0
  summary = json.loads((tmp_path / "out" / "summary.json").read_text())
  assert summary["largest_pruned_entry_after_training"] == 0.0
  assert abs(summary["density"] - 0.25) < 0.01
  assert summary["test_accuracy"] > 0.6  # chance: 0.1
  # Its folder and record are named by what departs from the defaults.
  args = argparse.Namespace(dataset="synthetic", epochs=5, seed=0, density=0.25)
  assert vit_digits.record_name(args) == "vit_digits-synthetic-epochs5"
  args = argparse.Namespace(**vit_digits.DEFAULTS)
  assert vit_digits.record_name(args) == "vit_digits"


def test_dataset_option_changes_the_data_the_directories_and_the_table(tmp_path):
  from eoi_jax.training import report

  experiment = importlib.import_module("experiments.cnn_1000").EXPERIMENT
  default = _common.configs(experiment, _common.parser(experiment).parse_args(["--quick"]))
  assert default[0].dataset == "cifar10" and default[4].name == "cnn_1000-quick"
  args = _common.parser(experiment).parse_args(["--quick", "--dataset", "mnist"])
  base, _, configs, runs_dir, results_dir = _common.configs(experiment, args)
  assert {c.dataset for c in configs} == {"mnist"}
  assert runs_dir.name == results_dir.name == "cnn_1000-mnist-quick"
  with pytest.raises(SystemExit):
    _common.parser(experiment).parse_args(["--dataset", "imagenet"])
  runs = [{"name": "a", "config": {"dataset": "mnist", "init": "eoi", "density": 0.1, "seed": 0},
           "summary": {"test_accuracy": 0.5}, "history": []}]
  assert "test accuracy on mnist" in report.table(runs)


def test_full_grids_hold_the_paper_variants():
  def expand(name):
    experiment = importlib.import_module(f"experiments.{name}").EXPERIMENT
    return _common.configs(experiment, _common.parser(experiment).parse_args(["--seeds", "1"]))[2]

  cnn = expand("cnn_1000")
  assert {(c.init, c.allocator, c.structured) for c in cnn} >= {
      ("eoi", "uniform_dense_ends", False), ("uniform+eoi", "uniform", True),
      ("erk+eoi", "uniform", True), ("sao", "uniform", False), ("dense", "uniform", False)}
  assert len(cnn) == 15 + 1 + 2 + 1 + 1
  cifar = expand("cifar_cnns")
  assert {c.model for c in cifar} == {"resnet32", "resnet56", "resnet110", "vgg16"}
  assert {(c.model, c.activation) for c in cifar if c.activation != "relu"} == {
      (m, a) for m in ("resnet32", "vgg16") for a in ("tanh", "leaky_relu", "selu")}
  assert {c.density for c in cifar} == {0.05, 0.1, 1.0}
  tiny = expand("tiny_imagenet")
  assert {(c.model, c.dataset, c.lr, c.weight_decay, c.epochs) for c in tiny} == {
      ("efficientnet_b0", "tiny_imagenet", 0.01, 1e-3, 120)}


# Runs of every full grid (5 seeds), each --dataset choice included: all can be built.
FULL_GRIDS = {
    ("mlp_density",): 3400, ("mlp_loss_curves",): 165, ("mlp_1000",): 85,
    ("cnn_1000",): 100, ("cnn_1000", "--dataset", "mnist"): 100,
    ("cnn_1000", "--dataset", "fashion_mnist"): 100,
    ("cifar_cnns",): 1100, ("cifar_cnns", "--dataset", "cifar100"): 1100,
    ("tiny_imagenet",): 80, ("tiny_imagenet", "--dataset", "cifar100"): 80,
}


def test_every_full_grid_passes_check_without_data_or_training(tmp_path, capsys):
  # CIFAR and Tiny ImageNet are not on disk: the plans read the datasets' specs.
  assert {name for name, *_ in FULL_GRIDS} == set(EXPERIMENTS)
  started = time.perf_counter()
  for (name, *options), runs in FULL_GRIDS.items():
    experiment = importlib.import_module(f"experiments.{name}").EXPERIMENT
    assert _common.main(experiment, ["--check", "--runs-dir", str(tmp_path / name),
                                     *options]) == 0
    out = capsys.readouterr().out
    assert f"{runs} runs in the grid, {runs} OK, 0 dropped" in out, out
  from experiments import vit_digits
  assert vit_digits.main(["--check", "--runs-dir", str(tmp_path / "vit")]) == 0
  assert "1 OK, 0 dropped" in capsys.readouterr().out
  assert not (tmp_path / "mlp_density").exists()  # nothing written, nothing trained
  assert time.perf_counter() - started < 120


def test_mlp_density_keeps_sao_where_its_degrees_exist():
  from experiments import mlp_density

  base = mlp_density.base(False, None)
  assert mlp_density.sao_densities(base, mlp_density.DENSITIES) == [0.05, 0.1, 0.2, 0.5]
  # 0.3 asks the 100 x 100 hidden layers for degree 30, which does not divide 100
  with pytest.raises(plan.Infeasible, match="degree 30"):
    plan.plan(_common.replace(base, init="sao", density=0.3))


def test_check_reports_dropped_runs_by_reason_and_fails_when_none_can_be_built(capsys):
  base = make_config("mnist_mlp", quiet=True)
  shaky = _common.Experiment("shaky", "SAO where its degree does not exist.", lambda q, e: base,
                             lambda q, s: [{"init": ["sao", "eoi"], "density": [0.1, 0.3],
                                            "seed": list(range(s))}])
  assert _common.main(shaky, ["--check", "--seeds", "2"]) == 0
  out = capsys.readouterr().out
  assert "8 runs in the grid, 6 OK, 2 dropped" in out
  assert "2  init='sao' at density 0.3: layer 'hidden_layers/kernel'" in out
  hopeless = shaky._replace(grids=lambda q, s: [{"init": ["sao"], "density": [0.3]}])
  assert _common.main(hopeless, ["--check"]) == 1


def _tiny_experiment():
  base = make_config("digits_smoke", dataset="synthetic", limit=256, depth=3, width=16,
                     epochs=1, quiet=True, checkpoint=False)
  # SAO at 0.3 asks the 16 x 16 hidden layer for degree 5: dropped, the rest trains.
  return _common.Experiment("tiny", "A two-run grid.", lambda quick, epochs: base,
                            lambda quick, seeds: [{"init": ["eoi", "sao"],
                                                   "density": [0.25, 0.3]}],
                            default_seeds=(1, 1))


def test_results_stay_beside_the_runs_unless_recorded(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(_common, "REPO", tmp_path / "repo")
  record = tmp_path / "repo" / "experiments" / "results" / "tiny"
  record.mkdir(parents=True)
  (record / "table.md").write_text("the committed record\n")
  (record / "stale.png").write_text("a figure the new run does not draw\n")
  runs = tmp_path / "runs"
  experiment = _tiny_experiment()
  assert _common.main(experiment, ["--runs-dir", str(runs), "--quiet"]) == 0
  assert (record / "table.md").read_text() == "the committed record\n"
  assert sorted(p.name for p in record.iterdir()) == ["stale.png", "table.md"]
  for name in ("results.csv", "table.md", "PROVENANCE.md", "sweep.json",
               "accuracy_vs_density.png"):
    assert (runs / name).exists(), name
  sweep = json.loads((runs / "sweep.json").read_text())
  assert sweep["runs"] == 4 and [d["run"] for d in sweep["dropped"]] == [
      "init=sao,density=0.3"]
  assert "degree 5" in sweep["dropped"][0]["reason"]
  provenance = (runs / "PROVENANCE.md").read_text()
  assert "1 run of the grid cannot be built" in provenance and "density 0.3" in provenance
  assert "built otherwise than asked" not in provenance
  notes = [{"run": "init=eoi,density=0.01", "note": "layers ['a'] get EOI's sparsest pattern"}]
  _common.provenance(tmp_path, ["experiments.tiny"], [], notes)
  assert "## Runs built otherwise than asked" in (tmp_path / "PROVENANCE.md").read_text()
  assert "- 1 run: layers ['a'] get EOI's sparsest pattern" in (
      tmp_path / "PROVENANCE.md").read_text()
  capsys.readouterr()
  # The same command with --record: nothing trains again, the record is replaced.
  assert _common.main(experiment, ["--runs-dir", str(runs), "--quiet", "--record"]) == 0
  assert f"record: {record}" in capsys.readouterr().out
  assert sorted(p.name for p in record.iterdir()) == sorted(
      p.name for p in runs.iterdir() if p.is_file())
  assert (record / "table.md").read_text() == (runs / "table.md").read_text()
  assert len((record / "results.csv").read_text().splitlines()) == 1 + 3
  # `eoi-jax report` takes the record as it takes the runs' directory.
  (record / "results.csv").unlink()
  assert cli.main(["report", str(record), "--no-figures"]) == 0
  assert len((record / "results.csv").read_text().splitlines()) == 1 + 3
  assert cli.main(["report", str(runs), "--no-figures"]) == 0
