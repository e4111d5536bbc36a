"""Tests of models, the trainer (sharding, resume, NaN guard), diagnostics and the CLI."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from eoi_jax import layers, masking
from eoi_jax.training import cli, diagnostics, models, train as train_lib
from eoi_jax.training.checkpoints import CheckpointStore
from eoi_jax.training.config import make_config
from eoi_jax.training.train import TrainingDiverged, train, train_and_evaluate

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path, name="run", **overrides):
  # One device: the sharded path has tests of its own (8 simulated devices
  # make every step an all-reduce over 8 threads on a 2-core machine).
  values = dict(dataset="synthetic", depth=4, width=32, density=0.25, lr=0.05, epochs=2,
                batch_size=64, quiet=True, devices=1, run_dir=str(tmp_path / name))
  values.update(overrides)
  return make_config("mnist_mlp", **values)


def _params_equal(a, b, exact=True, rtol=1e-5, atol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if exact:
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    else:
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------
# Models.


@pytest.mark.parametrize("name,shape,kwargs", [
    ("mlp", (8, 8, 1), dict(depth=5, width=16)),
    ("mlp", (8, 8, 1), dict(depth=2, width=16)),
    ("deep_cnn", (16, 16, 3), dict(depth=5, width=8)),
    ("resnet32", (16, 16, 3), {}),
    ("vgg16", (32, 32, 3), {}),
    ("vit", (8, 8, 1), dict(depth=2, width=16)),
])
def test_models_build_run_and_expose_kernels(name, shape, kwargs):
  model = models.build(name, shape, 10, **kwargs)
  spec = model.sparsity_spec()
  names = [l.name for l in layers.model_layout(model)]
  assert spec.ends[0] in names and spec.ends[1] in names
  out = nnx.jit(lambda m, x: m(x))(model, jnp.ones((2,) + shape))
  assert out.shape == (2, 10)


@pytest.mark.parametrize("name, shape, kwargs", [
    ("mlp", (8, 8, 1), dict(depth=4, width=16)),
    ("resnet8", (8, 8, 3), {}),
    ("vit", (8, 8, 1), dict(depth=2, width=16)),
])
def test_build_for_sparse_init_is_build_with_zero_kernels(name, shape, kwargs):
  kernels = {l.name for l in layers.model_layout(models.build(name, shape, 10, **kwargs))}
  for seed in (3, 4):  # the second seed reuses the compiled builder
    ours = nnx.to_flat_state(nnx.state(models.build_for_sparse_init(name, shape, 10, seed=seed,
                                                                    **kwargs)))
    eager = dict(nnx.to_flat_state(nnx.state(models.build(name, shape, 10, seed=seed, **kwargs))))
    assert {path for path, _ in ours} == set(eager)
    for path, variable in ours:
      value, expected = variable.get_value(), eager[path].get_value()
      if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        value, expected = jax.random.key_data(value), jax.random.key_data(expected)
      if "/".join(map(str, path)) in kernels:
        assert not np.any(value) and value.shape == expected.shape
      else:  # one program instead of eager ops: the same draws, up to float32 rounding
        np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="model must be one of"):
    models.build_for_sparse_init("resnet18", (8, 8, 3), 10)


def test_efficientnet_b0_blocks_depthwise_convs_and_size():
  model = models.build("efficientnet_b0", (32, 32, 3), 10)
  assert len(model.blocks) == 16
  depthwise = [b.depthwise for b in model.blocks]
  assert all(c.feature_group_count == c.in_features == c.out_features for c in depthwise)
  assert [c.kernel_size for c in depthwise].count((5, 5)) == 2 + 3 + 4
  # Tan & Le 2019: 5.3M parameters with the 1000-class head; 10 classes here
  size = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert size == pytest.approx(5.29e6 - 1281 * 990, rel=0.01)
  kinds = {l.name: l.kind for l in layers.model_layout(model)}
  assert kinds["blocks/3/depthwise/kernel"].groups == 144
  model.eval()
  assert nnx.jit(lambda m, x: m(x))(model, jnp.ones((2, 32, 32, 3))).shape == (2, 10)


def test_resnet_depths_and_errors():
  model = models.build("resnet56", (8, 8, 3), 10)
  assert len(model.blocks) == 27
  shortcuts = [b for b in model.blocks if b.shortcut is not None]
  assert len(shortcuts) == 2  # 16 -> 32 and 32 -> 64
  with pytest.raises(ValueError, match="6n"):
    models.ResNet(3, 10, depth=33, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="model must be one of"):
    models.build("resnet18", (8, 8, 3), 10)
  with pytest.raises(ValueError, match="activation"):
    models.build("mlp", (8, 8, 1), 10, activation_name="gelu")


def test_deep_cnn_is_an_isometry_with_circular_padding():
  # With delta-orthogonal kernels and linear activation, the scanned 3x3 stack
  # with circular padding preserves the norm of every input exactly.
  stack = models.ConvStack(6, 8, lambda x: x, rngs=nnx.Rngs(0))
  keys = jax.random.split(jax.random.key(0), 6)
  from eoi_jax import sparse_delta_orthogonal
  kernels = jax.vmap(lambda k: sparse_delta_orthogonal(k, (3, 3, 8, 8), 0.3)[0])(keys)
  stack.kernel[...] = kernels
  x = jax.random.normal(jax.random.key(1), (2, 6, 6, 8))
  y = stack(x)
  np.testing.assert_allclose(jnp.linalg.norm(y), jnp.linalg.norm(x), rtol=1e-5)


# ----------------------------------------------------------------------------
# Trainer.


def test_training_learns_and_writes_outputs(tmp_path):
  summary = train(_config(tmp_path, epochs=3))
  run = Path(summary["run_dir"])
  assert summary["test_accuracy"] > 0.5 and summary["epochs_done"] == 3
  for name in ("config.json", "metrics.jsonl", "metrics.csv", "sparsity.txt", "sparsity.json",
               "summary.json", "checkpoints"):
    assert (run / name).exists(), name
  records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [0, 1, 2]
  for key in ("train_loss", "val_accuracy", "test_accuracy", "lr", "step_time_s", "examples_per_s"):
    assert key in records[-1]
  assert records[0]["lr"] == pytest.approx(0.05) and records[-1]["lr"] == pytest.approx(0.0005)
  sparsity = json.loads((run / "sparsity.json").read_text())
  assert abs(sparsity["total"]["realised"] - 0.25) < 0.02


@pytest.mark.parametrize("init", ["eoi", "random", "dense", "snip", "grasp+eoi", "synflow",
                                  "synflow+ai", "sao"])
def test_masked_weights_stay_zero_through_training(tmp_path, init):
  result = train_and_evaluate(_config(tmp_path, init=init, optimizer="adamw", epochs=1,
                                      checkpoint=False, ai_steps=20))
  for p, m in zip(jax.tree.leaves(result.state.params),
                  masking.check_masks(result.state.params, result.state.masks)):
    if m is not None:
      assert np.all(np.asarray(p)[~np.asarray(m)] == 0)
  density = result.sparsity.density
  if init == "sao":  # SAO keeps the first and last layer dense
    rows = {r.name: r.realised for r in result.sparsity.rows}
    assert rows["hidden_layers/kernel"] == 0.25 and rows["input_layer/kernel"] == 1.0
  else:
    assert (density == 1.0) if init == "dense" else abs(density - 0.25) < 0.02


def test_sharded_step_matches_single_device(tmp_path):
  one = train_and_evaluate(_config(tmp_path, "one", devices=1, epochs=1, checkpoint=False))
  eight = train_and_evaluate(_config(tmp_path, "eight", devices=8, epochs=1, checkpoint=False))
  assert eight.summary["devices"] == 8 and one.summary["devices"] == 1
  _params_equal(one.state.params, eight.state.params, exact=False, rtol=1e-4, atol=1e-5)


def test_resume_equals_uninterrupted_run_bit_for_bit(tmp_path):
  full = train_and_evaluate(_config(tmp_path, "full", epochs=3))
  train_and_evaluate(_config(tmp_path, "resumed", epochs=3), stop_after_epoch=1)
  resumed = train_and_evaluate(_config(tmp_path, "resumed", epochs=3))
  _params_equal(full.state.params, resumed.state.params, exact=True)
  _params_equal(full.state.opt_state, resumed.state.opt_state, exact=True)
  assert resumed.summary["test_accuracy"] == full.summary["test_accuracy"]
  assert resumed.summary["params_fingerprint"] == full.summary["params_fingerprint"]
  lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["epoch"] for l in lines] == [0, 1, 2]
  # The masks come back from the checkpoint with the optimizer state.
  _params_equal(resumed.state.masks, full.state.masks, exact=True)


def test_resume_refuses_a_different_config(tmp_path):
  train_and_evaluate(_config(tmp_path, "a", epochs=2), stop_after_epoch=1)
  with pytest.raises(ValueError, match="different config"):
    train_and_evaluate(_config(tmp_path, "a", epochs=2, density=0.5))


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  good = train_and_evaluate(_config(tmp_path, "nan", epochs=3), stop_after_epoch=1)
  step = train_lib.train_step

  def poisoned(spec, state, batch, sums):
    state, sums = step(spec, state, batch, sums)
    return state._replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params)), sums

  monkeypatch.setattr(train_lib, "train_step", poisoned)
  with pytest.raises(TrainingDiverged, match=r"epoch 1 .*last good checkpoint \(epoch 0\)"):
    train_and_evaluate(_config(tmp_path, "nan", epochs=3))
  with CheckpointStore(tmp_path / "nan" / "checkpoints") as store:
    assert store.steps() == [0]
    step_restored, restored = store.restore_latest(good.state)
  assert step_restored == 0
  _params_equal(restored.params, good.state.params, exact=True)


def test_jacobian_singular_values():
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(20, 20)))
  w = jnp.asarray(q[:, :5] * 2.0)
  s = diagnostics.jacobian_singular_values(lambda x: x @ w, jnp.ones((3, 20)))
  assert s.shape == (3, 5)
  np.testing.assert_allclose(s, 2.0, rtol=1e-5)
  stats = diagnostics.singular_value_stats(s)
  assert float(stats["var"]) < 1e-8 and float(stats["min"]) == pytest.approx(2.0, rel=1e-5)


def test_jacobian_logging(tmp_path):
  summary = train(_config(tmp_path, epochs=1, jacobian=True, checkpoint=False))
  record = json.loads((Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()[0])
  assert {"jacobian_sv_mean", "jacobian_sv_max", "jacobian_sv_min", "jacobian_sv_var"} <= set(record)


# ----------------------------------------------------------------------------
# Configuration and CLI.


def test_config_overrides_files_and_errors(tmp_path):
  cfg = make_config("mnist_mlp_1000", density="0.05", center_density="sqrt", limit="100",
                    jacobian="true")
  assert cfg.depth == 1000 and cfg.density == 0.05 and cfg.limit == 100 and cfg.jacobian
  assert cfg.center_density == "sqrt"
  path = tmp_path / "c.json"
  path.write_text(json.dumps({"dataset": "digits", "epochs": 2}))
  assert make_config(str(path), lr="0.3").lr == 0.3
  with pytest.raises(ValueError, match="unknown config fields"):
    make_config("mnist_mlp", densty=0.1)
  with pytest.raises(ValueError, match="lr must be"):
    make_config("mnist_mlp", lr="-1")
  with pytest.raises(ValueError, match="cannot parse"):
    make_config("mnist_mlp", epochs="ten")


def test_cli_end_to_end(tmp_path, capsys):
  code = cli.main(["train", "--dataset", "synthetic", "--depth", "3", "--width", "16",
                   "--epochs", "1", "--batch-size", "32", "--quiet", "true", "--devices", "1",
                   "--run-dir", str(tmp_path / "cli")])
  assert code == 0
  out = capsys.readouterr().out
  assert "test accuracy:" in out and str(tmp_path / "cli") in out
  assert cli.main(["train", "--init", "nope"]) == 2
  assert "init must be one of" in capsys.readouterr().err


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


DISTRIBUTED_SCRIPT = """
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]))
from eoi_jax.training.config import make_config
from eoi_jax.training.train import train
cfg = make_config("mnist_mlp", dataset="synthetic", depth=3, width=16, epochs=2, batch_size=64,
                  density=0.25, lr=0.05, quiet=True, run_dir=sys.argv[3])
summary = train(cfg)
print("RESULT " + json.dumps(dict(summary, process=jax.process_index())))
"""


def test_two_process_distributed_run_agrees(tmp_path):
  address = f"127.0.0.1:{_free_port()}"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  procs = [subprocess.Popen([sys.executable, "-c", DISTRIBUTED_SCRIPT, address, str(i),
                             str(tmp_path / "dist")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  results = []
  for proc in procs:
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    results += [json.loads(l[7:]) for l in out.splitlines() if l.startswith("RESULT ")]
  assert sorted(r["process"] for r in results) == [0, 1]
  assert all(r["devices"] == 4 and r["processes"] == 2 for r in results)
  assert results[0]["params_l2"] == results[1]["params_l2"]  # replicated params agree
  assert results[0]["test_accuracy"] > 0.5
  assert (tmp_path / "dist" / "summary.json").exists()


from eoi_jax.training import data as _data  # noqa: E402

_REAL = Path(os.environ.get("EOI_DATA_DIR", _data.default_data_dir()))


@pytest.mark.skipif(not (_REAL / "mnist").exists(),
                    reason="real MNIST not provisioned (eoi-jax data fetch mnist)")
def test_main_job_on_real_mnist(tmp_path):
  # The README's main job (EOI MLP 784-100x6-10 at density 0.1), one epoch.
  summary = train(make_config("mnist_mlp", epochs=1, quiet=True, data_dir=str(_REAL),
                              run_dir=str(tmp_path / "mnist")))
  assert summary["test_accuracy"] > 0.85
  assert abs(summary["density"] - 0.1) < 0.005


def test_batch_norm_model_trains_and_updates_statistics(tmp_path):
  result = train_and_evaluate(_config(tmp_path, model="resnet32", depth=None, width=None,
                                      activation="relu", epochs=1, init="dense", limit=300,
                                      checkpoint=False, lr=0.05))
  fresh = nnx.state(models.build("resnet32", (8, 8, 1), 10), nnx.Not(nnx.Param))
  changed = [not np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(result.state.other))]
  assert any(changed)  # running statistics moved
  assert np.isfinite(result.summary["train_loss"])


def test_runs_close_their_checkpoint_managers_and_threads(tmp_path):
  import threading

  train(_config(tmp_path, "warm", epochs=1))
  baseline = {t.name for t in threading.enumerate()}
  for i in range(3):  # a sweep's worth of runs in one process
    train(_config(tmp_path, f"run{i}", epochs=1))
  alive = [t.name for t in threading.enumerate() if t.name not in baseline]
  assert alive == []
  assert not any("metadata_store" in t.name for t in threading.enumerate())


def test_console_script_entry_point_resolves():
  """The `eoi-jax` command pip installs must point at the CLI's main."""
  import importlib
  import tomllib

  scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
  module, attr = scripts["eoi-jax"].split(":")
  assert getattr(importlib.import_module(module), attr) is cli.main


@pytest.mark.parametrize("activation,depth", [("tanh", 6), ("tanh", 7), ("relu", 6),
                                              ("relu", 7), ("linear", 6), ("hard_tanh", 6),
                                              ("selu", 7)])
def test_dense_stack_explicit_backward_equals_autodiff(activation, depth):
  """Both backward forms (derivative from the output: tanh, ReLU; from the
  stored pre-activation: the others), over an even and an odd number of
  stacked layers (two layers per loop iteration, or one)."""
  from flax import nnx

  model = models.build("mlp", (8, 8, 1), 10, depth=depth, width=16,
                       activation_name=activation, seed=0)
  x = jax.random.normal(jax.random.key(1), (5, 8, 8, 1))
  graph, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params, graph):
    return jnp.sum(jnp.sin(nnx.merge(graph, params, rest)(x)))

  auto = jax.grad(loss)(params, graph)
  models.use_explicit_backward(model)
  # tanh, ReLU and linear take the derivative from the output; the others store z.
  from_output = model.hidden_layers.act in models._DERIVATIVE_OF_OUTPUT
  assert from_output == (activation in ("tanh", "relu", "linear"))
  explicit_graph = nnx.split(model, nnx.Param, ...)[0]
  explicit = jax.jit(jax.grad(loss), static_argnums=1)(params, explicit_graph)
  # Two runs' parameters vmapped (as sweeps train them): each run's gradient.
  second = jax.tree.map(lambda p: 0.9 * p, params)
  both = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, second)
  vmapped = jax.jit(jax.vmap(jax.grad(loss), in_axes=(0, None)), static_argnums=1)(
      both, explicit_graph)
  runs = [(auto, jax.tree.map(lambda v: v[0], vmapped)),
          (jax.grad(loss)(second, graph), jax.tree.map(lambda v: v[1], vmapped))]
  # The same products and sums, in another order (and batched under vmap):
  # float32 rounding of 16-term sums, compounded over the layers a gradient
  # passes through; at most depth x width x eps of each leaf's scale.
  bound = depth * 16 * float(np.finfo(np.float32).eps)
  for reference, got in [(auto, explicit), *runs]:
    for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(got)):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5,
                                 atol=bound * float(jnp.max(jnp.abs(a))))
  # Autodiff of the scan (the default) keeps forward mode for GraSP's
  # Hessian-gradient products.
  assert model.hidden_layers.explicit_backward
  jax.jvp(lambda p: jax.grad(loss)(p, graph), (params,), (auto,))
