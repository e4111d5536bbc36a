"""Sharded, resumable static sparse training.

``train(config)`` runs one experiment end to end: data, model, sparse
initialisation (EOI or a baseline), the masked optimizer, a jitted data-parallel
training step and evaluation, and writes a run directory:

==================  =========================================================
``config.json``     the full configuration
``metrics.jsonl``   one JSON line per epoch (loss, accuracy, lr, step time,
                    examples/s, optional Jacobian singular values)
``metrics.csv``     the same as a table
``sparsity.txt``    per-layer requested and realised density (also ``.json``)
``summary.json``    final metrics; ``test_accuracy`` is the headline number
``checkpoints/``    Orbax checkpoints after each epoch (params, batch stats,
                    optimizer state with the masks, step)
==================  =========================================================

The same code runs on one CPU, on several (simulated) devices, on GPUs/TPUs
and across processes (``jax.distributed``): the batch is sharded over a
``data`` mesh axis, parameters, masks and optimizer state are replicated.
A run restarted with the same configuration resumes from its last checkpoint
and ends bit-for-bit where an uninterrupted run would (on CPU). A non-finite
loss stops the run with :class:`TrainingDiverged`, keeping the last good
checkpoint.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from eoi_jax import data, diagnostics, methods, models, optim
from eoi_jax.config import Config, validate


# Steps dispatched ahead of the host. Each step waits for the metrics of the
# step this many before it: XLA:CPU can deadlock (then aborts the process) when
# many programs with collectives over several devices are queued at once, and
# deeper queues buy nothing on any backend.
MAX_STEPS_IN_FLIGHT = 2


class _Bounded:
  """Keeps at most ``MAX_STEPS_IN_FLIGHT`` dispatched steps ahead of the host:
  pushing the metrics of step ``k`` waits for those of step ``k - depth``."""

  def __init__(self):
    self.depth, self._queue = MAX_STEPS_IN_FLIGHT, collections.deque()

  def push(self, value):
    self._queue.append(value)
    if len(self._queue) > self.depth:
      jax.block_until_ready(self._queue.popleft())
    return value


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite."""


class TrainState(NamedTuple):
  step: jax.Array
  params: Any
  other: Any  # non-parameter model state (batch-norm statistics)
  opt_state: Any


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D ``data`` mesh over the first ``num_devices`` devices (default all)."""
  devices = jax.devices()
  if num_devices is not None:
    if num_devices > len(devices):
      raise ValueError(f"devices={num_devices} but only {len(devices)} are available")
    devices = devices[:num_devices]
  return jax.sharding.Mesh(np.array(devices), ("data",))


def make_schedule(config: Config, total_steps: int):
  """``step``: x0.1 at 50% and 75% of training; ``cosine``; ``constant``."""
  if config.schedule == "step":
    return optax.piecewise_constant_schedule(
        config.lr, {int(total_steps * 0.5): 0.1, int(total_steps * 0.75): 0.1})
  if config.schedule == "cosine":
    return optax.cosine_decay_schedule(config.lr, max(total_steps, 1))
  return optax.constant_schedule(config.lr)


def sparse_initialize(config: Config, model, key, batch=None):
  """Initialises ``model`` in place by ``config.init``; returns ``(masks, summary)``.

  ``config.init`` is any name of :data:`eoi_jax.methods.METHODS`, run by
  :func:`eoi_jax.methods.initialize_model` with the config's density,
  allocator, gain, bias and method options; SNIP and GraSP score ``batch``
  ``(x, labels)``, SynFlow an all-ones input of its image shape.
  """
  out = methods.initialize_model(
      config.init, key, model, config.density, batch=batch,
      allocator=config.allocator,
      gain=config.gain, bias_std=config.bias_std, center_density=config.center_density,
      ai_steps=config.ai_steps, sao_degree=config.sao_degree)
  nnx.update(model, out.params)
  return out.masks, out.summary


def _weighted_loss(logits, labels, weights):
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return jnp.sum(losses * weights), jnp.sum(correct * weights), jnp.sum(weights)


class Trainer:
  """Builds and runs one experiment from a :class:`Config`."""

  def __init__(self, config: Config, dataset: data.Dataset | None = None):
    """Args: config; dataset: use these arrays instead of loading ``config.dataset``."""
    self.config = validate(config)
    self.run_dir = Path(config.run_dir)
    self.is_main = jax.process_index() == 0
    self.mesh = make_mesh(config.devices)
    if dataset is None:
      dataset = data.load(config.dataset, config.data_dir, val_fraction=config.val_fraction,
                          limit=config.limit)
    self.dataset = dataset
    info = self.dataset.info
    self.train_loader = data.Loader(self.dataset.train, config.batch_size, self.mesh,
                                    train=True, seed=config.seed)
    self.eval_loaders = {
        name: data.Loader(split, config.batch_size, self.mesh, train=False)
        for name, split in (("val", self.dataset.val), ("test", self.dataset.test)) if len(split)
    }
    self.model = models.build(config.model, info.image_shape, info.num_classes,
                              depth=config.depth, width=config.width,
                              activation_name=config.activation, seed=config.seed)
    root = jax.random.key(config.seed)
    first = next(iter(self.train_loader.epoch(0)))  # the pruning methods' scoring batch
    batch = (data.normalize(first.images, info), first.labels)
    self.masks, self.sparsity = sparse_initialize(config, self.model, jax.random.fold_in(root, 0),
                                                  batch)
    self.augment_key = jax.random.fold_in(root, 1)
    self.steps_per_epoch = self.train_loader.steps_per_epoch
    self.schedule = make_schedule(config, self.steps_per_epoch * config.epochs)
    self.tx = optim.sparse_optimizer(config.optimizer, self.schedule, self.masks,
                                     momentum=config.momentum, weight_decay=config.weight_decay)
    self.model.train()
    self.train_graph, params, other = nnx.split(self.model, nnx.Param, ...)
    self.model.eval()
    self.eval_graph = nnx.split(self.model, nnx.Param, ...)[0]
    replicated = jax.sharding.NamedSharding(self.mesh, jax.P())
    state = TrainState(jnp.int32(0), params, other, self.tx.init(params))
    # The step donates its state: give the state buffers of its own, so the
    # model's variables and ``self.masks`` stay readable.
    self.state = jax.device_put(jax.tree.map(jnp.array, state), replicated)
    # The metric sums are not donated: the loop waits on them to bound the
    # steps in flight.
    self._train_step = jax.jit(self._train_step_fn, donate_argnums=(0,))
    self._eval_step = jax.jit(self._eval_step_fn)
    self.checkpoints = None
    if config.checkpoint:
      import orbax.checkpoint as ocp
      self.checkpoints = ocp.CheckpointManager(
          (self.run_dir / "checkpoints").absolute(),
          options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))

  # -- jitted steps ----------------------------------------------------------

  def _train_step_fn(self, state: TrainState, batch: data.Batch, sums: dict):
    """One step; adds this batch's loss/correct/count to the running ``sums``."""
    info = self.dataset.info
    key = jax.random.fold_in(self.augment_key, state.step)
    x = data.preprocess(key, batch.images, info, train=True)

    def loss_fn(params):
      # copy=True: fresh Variables at this trace level, which batch norm may
      # then update (merging without a copy makes NNX refuse the update).
      model = nnx.merge(self.train_graph, params, state.other, copy=True)
      logits = model(x)
      total, correct, count = _weighted_loss(logits, batch.labels, batch.weights)
      return total / jnp.maximum(count, 1.0), (correct, count, nnx.state(model, nnx.Not(nnx.Param)))

    (loss, (correct, count, other)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss * count, "correct": correct, "count": count}
    sums = jax.tree.map(jnp.add, sums, metrics)
    return TrainState(state.step + 1, params, other, opt_state), sums

  def zero_metrics(self) -> dict:
    """Running sums for :meth:`_train_step_fn`, replicated over the mesh."""
    zeros = {k: jnp.zeros((), jnp.float32) for k in ("loss", "correct", "count")}
    return jax.device_put(zeros, jax.sharding.NamedSharding(self.mesh, jax.P()))

  def _eval_step_fn(self, state: TrainState, batch: data.Batch, sums: dict):
    x = data.preprocess(None, batch.images, self.dataset.info, train=False)
    model = nnx.merge(self.eval_graph, state.params, state.other)
    total, correct, count = _weighted_loss(model(x), batch.labels, batch.weights)
    return jax.tree.map(jnp.add, sums, {"loss": total, "correct": correct, "count": count})

  def apply_fn(self, state: TrainState | None = None):
    """``x (uint8 batch) -> logits`` of the current model in eval mode."""
    state = self.state if state is None else state
    model = nnx.merge(self.eval_graph, state.params, state.other)
    return lambda images: model(data.normalize(images, self.dataset.info))

  # -- evaluation, diagnostics ------------------------------------------------

  def evaluate(self, name: str) -> dict:
    totals, bounded = self.zero_metrics(), _Bounded()
    for batch in self.eval_loaders[name].epoch(0):
      totals = bounded.push(self._eval_step(self.state, batch, totals))
    totals = jax.device_get(totals)
    count = max(float(totals["count"]), 1.0)
    return {f"{name}_loss": float(totals["loss"]) / count,
            f"{name}_accuracy": float(totals["correct"]) / count}

  def jacobian_stats(self, batch: data.Batch) -> dict:
    model = nnx.merge(self.eval_graph, self.state.params, self.state.other)
    x = data.normalize(batch.images[:32], self.dataset.info)
    s = jax.jit(lambda x: diagnostics.jacobian_singular_values(model, x))(x)
    return {f"jacobian_sv_{k}": float(v) for k, v in diagnostics.singular_value_stats(s).items()}

  # -- checkpoints --------------------------------------------------------------

  def _restore(self) -> int:
    """Restores the latest checkpoint; returns the epoch to start from."""
    if self.checkpoints is None or not self.config.resume:
      return 0
    latest = self.checkpoints.latest_step()
    if latest is None:
      return 0
    import orbax.checkpoint as ocp
    saved = self.run_dir / "config.json"
    if saved.exists():
      previous = json.loads(saved.read_text())
      mine = dataclasses.asdict(self.config)
      changed = sorted(k for k in mine if k not in ("quiet", "log_every", "resume")
                       and previous.get(k) != mine[k])
      if changed:
        raise ValueError(f"{self.run_dir} holds a run with a different config ({changed}); "
                         f"use another run_dir or resume=false")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, self.state)
    self.state = self.checkpoints.restore(latest, args=ocp.args.StandardRestore(abstract))
    return latest + 1

  def _save(self, epoch: int):
    if self.checkpoints is None:
      return
    import orbax.checkpoint as ocp
    self.checkpoints.save(epoch, args=ocp.args.StandardSave(self.state))
    self.checkpoints.wait_until_finished()

  # -- outputs ------------------------------------------------------------------

  def _write_static_outputs(self, start_epoch: int):
    self._history = []
    if not self.is_main:
      return
    self.run_dir.mkdir(parents=True, exist_ok=True)
    (self.run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(self.config), indent=2))
    (self.run_dir / "sparsity.txt").write_text(self.sparsity.table() + "\n")
    (self.run_dir / "sparsity.json").write_text(json.dumps(self.sparsity.to_dict(), indent=2))
    jsonl = self.run_dir / "metrics.jsonl"
    kept = []
    if start_epoch > 0 and jsonl.exists():  # drop epochs after the checkpoint
      kept = [json.loads(l) for l in jsonl.read_text().splitlines() if l.strip()]
      kept = [r for r in kept if r["epoch"] < start_epoch]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in kept))
    self._history = kept

  def _log_epoch(self, record: dict):
    self._history.append(record)
    if not self.is_main:
      return
    with open(self.run_dir / "metrics.jsonl", "a") as f:
      f.write(json.dumps(record) + "\n")
    fields = sorted({k for r in self._history for k in r}, key=lambda k: (k != "epoch", k))
    with open(self.run_dir / "metrics.csv", "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=fields)
      writer.writeheader()
      writer.writerows(self._history)

  def _progress(self, text: str, final: bool = False):
    if self.config.quiet or not self.is_main:
      return
    if sys.stderr.isatty():
      sys.stderr.write("\r" + text.ljust(100) + ("\n" if final else ""))
    elif final:
      sys.stderr.write(text + "\n")
    sys.stderr.flush()

  # -- the loop -------------------------------------------------------------------

  def run(self, stop_after_epoch: int | None = None) -> dict:
    """Trains to ``config.epochs`` (or stops after ``stop_after_epoch`` epochs,
    as an interruption would). Returns the summary dict."""
    config = self.config
    start_epoch = self._restore()
    self._write_static_outputs(start_epoch)
    last_good = start_epoch - 1
    for epoch in range(start_epoch, config.epochs):
      if stop_after_epoch is not None and epoch >= stop_after_epoch:
        break
      record = {"epoch": epoch}
      sums, compile_s, started = self.zero_metrics(), 0.0, time.perf_counter()
      bounded = _Bounded()
      for i, batch in enumerate(self.train_loader.epoch(epoch)):
        if i == 0 and config.jacobian:
          record.update(self.jacobian_stats(batch))
        t0 = time.perf_counter()
        self.state, sums = self._train_step(self.state, batch, sums)
        bounded.push(sums)
        if i == 0 and epoch == start_epoch:
          jax.block_until_ready(sums)
          compile_s = time.perf_counter() - t0
          started = time.perf_counter()
        if (i + 1) % config.log_every == 0 or i + 1 == self.steps_per_epoch:
          host = jax.device_get(sums)
          loss = float(host["loss"]) / max(float(host["count"]), 1.0)
          if not np.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss} in epoch {epoch} (step {i + 1}); stopped. The last good "
                f"checkpoint ({'epoch ' + str(last_good) if last_good >= 0 else 'none'}) "
                f"is kept in {self.run_dir / 'checkpoints'}")
          elapsed = time.perf_counter() - started
          steps_timed = i + 1 - (1 if epoch == start_epoch else 0)
          rate = steps_timed * config.batch_size / max(elapsed, 1e-9)
          self._progress(f"epoch {epoch + 1}/{config.epochs} step {i + 1}/{self.steps_per_epoch} "
                         f"loss {loss:.4f} acc {float(host['correct']) / float(host['count']):.4f} "
                         f"{rate:,.0f} ex/s")
      elapsed = time.perf_counter() - started
      steps_timed = self.steps_per_epoch - (1 if epoch == start_epoch else 0)
      host = jax.device_get(sums)
      record.update({
          "train_loss": float(host["loss"]) / float(host["count"]),
          "train_accuracy": float(host["correct"]) / float(host["count"]),
          "lr": float(self.schedule(int(self.state.step) - 1)),
          "step_time_s": elapsed / max(steps_timed, 1),
          "examples_per_s": steps_timed * config.batch_size / max(elapsed, 1e-9),
      })
      if compile_s:
        record["compile_s"] = compile_s
      for name in self.eval_loaders:
        record.update(self.evaluate(name))
      self._save(epoch)
      last_good = epoch
      self._log_epoch(record)
      self._progress(f"epoch {epoch + 1}/{config.epochs} train_loss {record['train_loss']:.4f} "
                     f"val_acc {record.get('val_accuracy', float('nan')):.4f} "
                     f"test_acc {record.get('test_accuracy', float('nan')):.4f}", final=True)
    return self._finish()

  def _finish(self) -> dict:
    last = self._history[-1] if self._history else {}
    summary = {
        "test_accuracy": last.get("test_accuracy"),
        "val_accuracy": last.get("val_accuracy"),
        "train_loss": last.get("train_loss"),
        "epochs_done": len(self._history),
        "density": self.sparsity.density,
        "run_dir": str(self.run_dir.absolute()),
        "devices": int(self.mesh.devices.size),
        "processes": jax.process_count(),
        "params_l2": float(optax.tree.norm(self.state.params)),
    }
    if self.is_main:
      (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def train(config: Config, stop_after_epoch: int | None = None) -> dict:
  """Runs ``config`` end to end; returns the summary (``test_accuracy`` first)."""
  return Trainer(config).run(stop_after_epoch)
