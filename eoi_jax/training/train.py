"""Sharded, resumable static sparse training: pure jitted steps and the loop around them.

In the style of the Flax examples: :func:`create_train_state` builds the
model, its sparse initialisation and the masked optimizer; :func:`train_step`
and :func:`eval_step` are pure functions of a :class:`StepSpec` (what all runs
of one architecture share: graph definitions, optimizer, dataset constants)
and a :class:`TrainState` (what changes, or differs between runs: step,
params, batch statistics, optimizer state with the masks, augmentation key);
:func:`train_and_evaluate` runs one experiment end to end and writes its run
directory (:mod:`eoi_jax.training.rundir`): a stack of one run in the one
epoch loop that also trains groups (:mod:`eoi_jax.training.loop`).

The same code runs on one CPU, on several (simulated) devices, on GPUs/TPUs
and across processes (``jax.distributed``): the batch is sharded over a
``data`` mesh axis; parameters, masks and optimizer state are replicated. A
run restarted with the same configuration resumes from its last intact
checkpoint and ends bit-for-bit where an uninterrupted run would (on CPU). A
non-finite loss stops the run with :class:`TrainingDiverged`, keeping the last
good checkpoint.

Example:
  >>> result = train_and_evaluate(make_config("digits_smoke", run_dir="runs/smoke"))
  >>> result.summary["test_accuracy"]
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from eoi_jax import methods, optim, summary as summary_lib
from eoi_jax.training import data, models
from eoi_jax.training.checkpoints import fingerprint
from eoi_jax.training.config import Config
from eoi_jax.training.rundir import RunDir

# Steps dispatched ahead of the host. Each step waits for the metrics of the
# step this many before it: XLA:CPU can deadlock (then aborts the process) when
# many programs with collectives over several devices are queued at once, and
# deeper queues buy nothing on any backend.
MAX_STEPS_IN_FLIGHT = 2


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite."""


class TrainState(NamedTuple):
  """Everything that changes during training or differs between runs.

  Attributes:
    step: int32 scalar, optimizer steps taken.
    params: the ``nnx.Param`` state.
    other: the rest of the model state (batch-norm statistics).
    opt_state: the optimizer state; its :class:`eoi_jax.StaticSparseState`
      holds the masks.
    key: uint32 key data of the augmentation key (step ``s`` augments with
      ``fold_in(key, s)``).
  """

  step: jax.Array
  params: Any
  other: Any
  opt_state: Any
  key: jax.Array

  @property
  def masks(self):
    return self.opt_state.masks


class StepSpec(NamedTuple):
  """What the steps of all runs of one architecture share (static under jit)."""

  train_graph: Any  # nnx.GraphDef in train mode
  eval_graph: Any  # nnx.GraphDef in eval mode
  tx: optax.GradientTransformation
  info: data.DatasetInfo


class TrainResult(NamedTuple):
  """What :func:`train_and_evaluate` returns.

  Attributes:
    summary: the ``summary.json`` record (``test_accuracy`` first).
    state: the final :class:`TrainState`.
    sparsity: the initialisation's :class:`eoi_jax.SparsitySummary`.
    history: the per-epoch records of ``metrics.jsonl``.
    diverged: ``None``, or where the loss became non-finite
      (``{"epoch", "step", "loss", "last_good_epoch"}``).
  """

  summary: dict
  state: TrainState
  sparsity: summary_lib.SparsitySummary
  history: list
  diverged: dict | None = None


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D ``data`` mesh over the first ``num_devices`` devices (default all)."""
  devices = jax.devices()
  if num_devices is not None:
    if num_devices > len(devices):
      raise ValueError(f"devices={num_devices} but only {len(devices)} are available")
    devices = devices[:num_devices]
  return jax.sharding.Mesh(np.array(devices), ("data",))


# ----------------------------------------------------------------------------
# Pure steps.


def _weighted_loss(logits, labels, weights):
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return jnp.sum(losses * weights), jnp.sum(correct * weights), jnp.sum(weights)


def zero_metrics() -> dict:
  """Running sums of loss, correct predictions and examples."""
  return {k: jnp.zeros((), jnp.float32) for k in ("loss", "correct", "count")}


def train_step(spec: StepSpec, state: TrainState, batch: data.Batch, sums: dict):
  """One optimizer step; adds this batch's loss, correct and count to ``sums``.

  Returns:
    ``(new_state, new_sums)``.
  """
  from flax import nnx

  key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
  x = data.preprocess(key, batch.images, spec.info, train=True)

  def loss_fn(params):
    # copy=True: fresh Variables at this trace level, which batch norm may
    # then update (merging without a copy makes NNX refuse the update).
    model = nnx.merge(spec.train_graph, params, state.other, copy=True)
    total, correct, count = _weighted_loss(model(x), batch.labels, batch.weights)
    other = nnx.state(model, nnx.Not(nnx.Param))
    return total / jnp.maximum(count, 1.0), (total, correct, count, other)

  (_, (total, correct, count, other)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = spec.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  sums = jax.tree.map(jnp.add, sums, {"loss": total, "correct": correct, "count": count})
  return state._replace(step=state.step + 1, params=params, other=other,
                        opt_state=opt_state), sums


def eval_step(spec: StepSpec, state: TrainState, batch: data.Batch, sums: dict) -> dict:
  """Adds this batch's loss, correct and count (eval mode) to ``sums``."""
  from flax import nnx

  x = data.preprocess(None, batch.images, spec.info, train=False)
  model = nnx.merge(spec.eval_graph, state.params, state.other)
  total, correct, count = _weighted_loss(model(x), batch.labels, batch.weights)
  return jax.tree.map(jnp.add, sums, {"loss": total, "correct": correct, "count": count})


def apply_fn(spec: StepSpec, state: TrainState):
  """``images (uint8 batch) -> logits`` of ``state``'s model in eval mode."""
  from flax import nnx

  model = nnx.merge(spec.eval_graph, state.params, state.other)
  return lambda images: model(data.normalize(images, spec.info))


# ----------------------------------------------------------------------------
# Building a run.


def create_train_state(config: Config, info: data.DatasetInfo, init_batch, steps_per_epoch: int,
                       sharding) -> tuple[StepSpec, TrainState, summary_lib.SparsitySummary]:
  """Model, sparse initialisation and optimizer for ``config``.

  Args:
    config: the run's configuration.
    info: the dataset's constants.
    init_batch: ``(x, labels)`` scored by the pruning methods (normalised).
    steps_per_epoch: optimizer steps per epoch (sets the schedule).
    sharding: where to place the state (replicated over the mesh).

  Returns:
    ``(spec, state, sparsity)``.
  """
  from flax import nnx

  model = models.build_for_sparse_init(
      config.model, info.image_shape, info.num_classes, depth=config.depth, width=config.width,
      activation_name=config.activation, seed=config.seed)
  root = jax.random.key(config.seed)
  out = methods.initialize_model(
      config.init, jax.random.fold_in(root, 0), model, config.density, batch=init_batch,
      allocator=config.allocator, gain=config.gain, bias_std=config.bias_std,
      center_density=config.center_density, structured=config.structured,
      ai_steps=config.ai_steps, sao_degree=config.sao_degree, block=config.block)
  nnx.update(model, out.params)
  models.use_explicit_backward(model)
  tx = make_optimizer(config, out.masks, steps_per_epoch)
  model.train()
  train_graph, params, other = nnx.split(model, nnx.Param, ...)
  model.eval()
  eval_graph = nnx.split(model, nnx.Param, ...)[0]
  state = TrainState(jnp.int32(0), params, other, tx.init(params),
                     jax.random.key_data(jax.random.fold_in(root, 1)))
  # Fresh buffers: the step donates the state, the model keeps its own.
  state = jax.device_put(jax.tree.map(jnp.array, state), sharding)
  return StepSpec(train_graph, eval_graph, tx, info), state, out.summary


def make_optimizer(config: Config, masks, steps_per_epoch: int) -> optax.GradientTransformation:
  """``config``'s optimizer, masked by :func:`eoi_jax.static_sparse`.

  The learning rate and weight decay are values in the optimizer state
  (``optax.inject_hyperparams``) and the schedule scales the updates by its
  shape (the schedule of learning rate 1), so runs that differ in learning
  rate or weight decay share one transform and train side by side
  (:mod:`eoi_jax.training.multirun`). The updates are those of
  ``optim.sparse_optimizer(name, schedule(lr), ...)`` up to rounding.
  """
  shape = optim.schedule(config.schedule, 1.0, steps_per_epoch * config.epochs)
  inner = optax.inject_hyperparams(optim.OPTIMIZERS[config.optimizer],
                                   static_args=("momentum", "nesterov"))(
      learning_rate=config.lr, momentum=config.momentum, nesterov=True,
      weight_decay=config.weight_decay)
  return optim.static_sparse(optax.chain(inner, optax.scale_by_schedule(shape)), masks)


class BoundedSteps:
  """Keeps at most ``depth`` dispatched steps ahead of the host: pushing the
  metrics of step ``k`` waits for those of step ``k - depth``."""

  def __init__(self, depth: int | None = None):
    self.depth = MAX_STEPS_IN_FLIGHT if depth is None else depth
    self._queue = collections.deque()

  def push(self, value):
    self._queue.append(value)
    if len(self._queue) > self.depth:
      jax.block_until_ready(self._queue.popleft())
    return value


def evaluate(step_fn, state: TrainState, loader: data.Loader, name: str, sums: dict) -> dict:
  """Loss and accuracy of ``state`` on every batch of ``loader``.

  Args:
    step_fn: the jitted :func:`eval_step` bound to its spec.
    state: the state to evaluate.
    loader: an eval :class:`eoi_jax.training.data.Loader`.
    name: the split's name (keys of the result).
    sums: zero metrics placed like the state.

  Returns:
    ``{f"{name}_loss": ..., f"{name}_accuracy": ...}``.
  """
  bounded = BoundedSteps()
  for batch in loader.epoch(0):
    sums = bounded.push(step_fn(state, batch, sums))
  totals = jax.device_get(sums)
  count = max(float(totals["count"]), 1.0)
  return {f"{name}_loss": float(totals["loss"]) / count,
          f"{name}_accuracy": float(totals["correct"]) / count}


# ----------------------------------------------------------------------------
# The loop.


def check_run_dir(run: RunDir, config: Config) -> None:
  """Before anything is written: the run directory is writable and holds no
  run of another config (when resuming)."""
  run.check_writable()
  if config.resume:
    run.check_config(dataclasses.asdict(config))


def load_dataset(config: Config) -> data.Dataset:
  return data.load(config.dataset, config.data_dir, val_fraction=config.val_fraction,
                   limit=config.limit)


def train_and_evaluate(config: Config, *, dataset: data.Dataset | None = None,
                       stop_after_epoch: int | None = None) -> TrainResult:
  """Runs ``config`` end to end and writes its run directory.

  Everything that can be checked is checked before anything is written: the
  run directory's permissions and any run already in it, the data, the batch
  size, the model and its initialisation. Then the directory is locked
  (another process training in it gets a clear error), the last intact
  checkpoint is restored (``config.resume``), and epochs run, each ending
  with evaluation on the validation and test splits, a checkpoint and a log
  line.

  Args:
    config: a validated :class:`Config`.
    dataset: use these arrays instead of loading ``config.dataset``.
    stop_after_epoch: stop after this many epochs in all (as an
      interruption would), keeping the checkpoints.

  Returns:
    A :class:`TrainResult`.

  Raises:
    ValueError: bad input (names the field), including
      :class:`eoi_jax.training.rundir.RunDirError` and
      :class:`eoi_jax.training.checkpoints.NoGoodCheckpoint`.
    TrainingDiverged: the loss became NaN or infinite.
  """
  from eoi_jax.training import loop

  result, = loop.run_group([config], mesh=loop.data_parallel_mesh(config.devices),
                           dataset=dataset, stop_after_epoch=stop_after_epoch)
  if result.diverged is not None:
    d = result.diverged
    where = f"epoch {d['last_good_epoch']}" if d["last_good_epoch"] >= 0 else "none"
    location = (RunDir(config.run_dir).path / "checkpoints" if config.checkpoint
                else "(checkpoints off)")
    raise TrainingDiverged(
        f"loss became {d['loss']} in epoch {d['epoch']} (step {d['step']}); stopped. The last "
        f"good checkpoint ({where}) is kept in {location}")
  return result


@jax.jit
def params_l2(params) -> jax.Array:
  """The l2 norm of all parameters together (one program for the whole tree)."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(p.astype(jnp.float32)))
                      for p in jax.tree.leaves(params)))


def run_summary(history: list[dict], sparsity, run: RunDir, state: TrainState, *,
                devices: int) -> dict:
  """The ``summary.json`` record of a run (``test_accuracy`` first).

  ``wall_time_s`` is the run's share of the wall time of every epoch done
  (across resumed legs, compilation excluded); ``compile_time_s`` the
  compilation of its legs."""
  last = history[-1] if history else {}
  return {
      "test_accuracy": last.get("test_accuracy"),
      "val_accuracy": last.get("val_accuracy"),
      "best_val_accuracy": max((r["val_accuracy"] for r in history if "val_accuracy" in r),
                               default=None),
      "train_loss": last.get("train_loss"),
      "epochs_done": len(history),
      "density": sparsity.density,
      "run_dir": str(run.path.absolute()),
      "devices": devices,
      "processes": jax.process_count(),
      "wall_time_s": sum(r.get("run_time_s", 0.0) for r in history),
      "compile_time_s": sum(r.get("compile_s", 0.0) for r in history),
      "process": jax.process_index(),
      "params_l2": float(params_l2(state.params)),
      "params_fingerprint": [int(v) for v in jax.device_get(fingerprint(state.params))],
  }


def learning_rate(config: Config, steps_per_epoch: int, step: int) -> float:
  """``config``'s learning rate after ``step`` steps (``steps_per_epoch`` set the schedule)."""
  schedule = optim.schedule(config.schedule, config.lr, steps_per_epoch * config.epochs)
  return float(schedule(max(step, 0)))


def train(config: Config, stop_after_epoch: int | None = None) -> dict:
  """Runs ``config`` end to end; returns the summary (``test_accuracy`` first)."""
  return train_and_evaluate(config, stop_after_epoch=stop_after_epoch).summary
