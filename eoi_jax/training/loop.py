"""The one epoch loop: runs of one architecture as a stacked state on a
``('runs', 'data')`` mesh, driven by hooks.

A single run is a stack of one. :func:`eoi_jax.training.train.train_and_evaluate`
trains one run on a ``(1, devices)`` mesh (its batch sharded over ``data``,
across processes under ``jax.distributed``);
:func:`eoi_jax.training.multirun.train_runs` trains a group on a ``(runs, 1)``
mesh (each device holds whole runs). Both call :func:`run_group`, so a run
writes the same record alone or in a group: config, sparsity, one
``metrics.jsonl`` line per epoch, checkpoints and ``summary.json``.

The stacked :class:`~eoi_jax.training.train.TrainState` has a leading run
axis (sharded over ``runs``); each run has its own data order, parameters,
masks, optimizer state (with its learning rate and weight decay) and
augmentation key; :func:`runs_train_step` vmaps
:func:`eoi_jax.training.train.train_step` over it (a stack of one is
squeezed instead: as fast as the step alone).

Timing in the records: ``step_time_s`` is the group's time per step (the
first step of each leg, which compiles, left out and reported as
``compile_s``); ``run_time_s`` is this run's share of the epoch's wall time
(training and evaluation, divided by ``runs_per_step``), and ``summary.json``'s
``wall_time_s`` is their sum over every epoch done, across resumed legs.

Example:
  >>> results = run_group(configs, mesh=runs_mesh(len(configs)))
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from eoi_jax.training import data, diagnostics, hooks, interrupts
from eoi_jax.training import train as train_lib
from eoi_jax.training.checkpoints import CheckpointStore
from eoi_jax.training.progress import Progress
from eoi_jax.training.rundir import RunDir

JACOBIAN_EXAMPLES = 32
"""Examples of each epoch's first batch whose Jacobians are measured."""


# ----------------------------------------------------------------------------
# Meshes, stacking and batches.


def runs_mesh(num_runs: int, num_devices: int | None = None) -> jax.sharding.Mesh:
  """A ``(runs, 1)`` mesh over the largest number of this process's first
  devices (at most ``num_devices``) that divides ``num_runs``: whole runs
  per device."""
  local = jax.local_devices()
  available = len(local) if num_devices is None else min(num_devices, len(local))
  size = max(d for d in range(1, available + 1) if num_runs % d == 0)
  return jax.sharding.Mesh(np.array(local[:size]).reshape(size, 1), ("runs", "data"))


def data_parallel_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A ``(1, devices)`` mesh over the first ``num_devices`` devices of every
  process (default all): one run, its batch sharded over ``data``."""
  devices = jax.devices()
  if num_devices is not None:
    if num_devices > len(devices):
      raise ValueError(f"devices={num_devices} but only {len(devices)} are available")
    devices = devices[:num_devices]
  return jax.sharding.Mesh(np.array(devices).reshape(1, -1), ("runs", "data"))


@jax.jit
def stack_runs(trees):
  """Trees of equal structure stacked along a new leading run axis (one
  compiled program for the whole tree, not one per leaf shape)."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


@jax.jit
def _unstacked(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


def unstack(tree, i: int):
  """Run ``i`` of a stacked tree (``i`` traced: one program serves every run)."""
  return _unstacked(tree, jnp.int32(i))


@functools.partial(jax.jit, static_argnames=("batch_size", "sharding"))
def _gather_runs(images, labels, orders, start, batch_size, sharding):
  """Each run's batch: ``orders`` is ``(runs, length)``; returns a
  :class:`~eoi_jax.training.data.Batch` with a leading run axis."""
  idx = jax.lax.dynamic_slice_in_dim(orders, start, batch_size, axis=1)
  valid = idx >= 0
  safe = jnp.where(valid, idx, 0)
  batch = data.Batch(images[safe], labels[safe], valid.astype(jnp.float32))
  return jax.lax.with_sharding_constraint(batch, data.Batch(sharding, sharding, sharding))


class RunsLoader:
  """The training batches of several runs, each in its own seed's order
  (exactly the batches :class:`eoi_jax.training.data.Loader` gives that run
  alone), stacked along a run axis: ``(runs, batch, ...)`` sharded
  ``P('runs', 'data')``. In one process the split is placed on the devices
  once for all runs; when the mesh spans processes (one run, data-parallel
  under ``jax.distributed``) each process serves its own shard of it, as
  :class:`~eoi_jax.training.data.Loader` does."""

  def __init__(self, split, batch_size: int, seeds, mesh):
    shards = mesh.shape["data"]
    if batch_size <= 0 or batch_size % shards:
      raise ValueError(f"batch_size must be a positive multiple of the {shards} devices "
                       f"on the data axis, got {batch_size}")
    if len(split) < batch_size:
      raise ValueError(f"batch_size {batch_size} exceeds the {len(split)} examples of the "
                       "training split")
    self.seeds, self.batch_size = list(seeds), batch_size
    self.sharding = jax.sharding.NamedSharding(mesh, jax.P("runs", "data"))
    self.processes = len({d.process_index for d in mesh.devices.flat})
    if self.processes == 1:
      self.size = len(split)
      self.local_batch = batch_size
      replicated = jax.sharding.NamedSharding(mesh, jax.P())
      self._images = jax.device_put(split.images, replicated)
      self._labels = jax.device_put(split.labels.astype(np.int32), replicated)
    else:
      if len(self.seeds) != 1:
        raise ValueError("a mesh across processes trains one run (data-parallel)")
      rank = jax.process_index()
      self._host_images = split.images[rank::self.processes]
      self._host_labels = split.labels[rank::self.processes].astype(np.int32)
      self.size = len(self._host_labels)
      self.local_batch = batch_size // self.processes
    self.steps_per_epoch = self.size // self.local_batch

  def epoch(self, epoch: int):
    steps, per = self.steps_per_epoch, self.local_batch
    rank = 0 if self.processes == 1 else jax.process_index()
    orders = np.stack([data.example_order(self.size, steps * per, s, epoch, rank)
                       for s in self.seeds])
    if self.processes == 1:
      orders = jnp.asarray(orders, jnp.int32)
      for step in range(steps):
        yield _gather_runs(self._images, self._labels, orders, step * per, per, self.sharding)
      return
    for step in range(steps):
      idx = orders[:, step * per:(step + 1) * per]
      valid = idx >= 0
      safe = np.where(valid, idx, 0)
      parts = (self._host_images[safe], self._host_labels[safe], valid.astype(np.float32))
      yield data.Batch(*(jax.make_array_from_process_local_data(self.sharding, p)
                         for p in parts))


# ----------------------------------------------------------------------------
# Steps over the run axis.


def _over_runs(step, in_axes=0):
  """``step`` vmapped over a leading run axis (``in_axes`` as for
  ``jax.vmap``); a single run's axis is squeezed instead (as fast as the step
  alone: the 1000-layer MLP's step vmapped over one run took 11% longer on
  the 2-core CPU)."""
  def over_runs(*args):
    axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
    if jax.tree.leaves(args[0])[0].shape[0] == 1:
      out = step(*(a if ax is None else jax.tree.map(lambda x: x[0], a)
                   for a, ax in zip(args, axes)))
      return jax.tree.map(lambda x: x[None], out)
    return jax.vmap(step, in_axes=axes)(*args)
  return over_runs


def runs_train_step(spec: train_lib.StepSpec, out_shardings=None):
  """:func:`eoi_jax.training.train.train_step` over a leading run axis,
  jitted (the states donated): ``(states, batches, sums) -> (states, sums)``.

  ``out_shardings``: ``(state shardings, sums sharding)``; the inputs' own,
  so that the next step (and every program taking the state) sees the same
  shardings and reuses its compiled program."""
  step = functools.partial(lambda *a: train_lib.train_step(*a), spec)
  return jax.jit(_over_runs(step), donate_argnums=(0,), out_shardings=out_shardings)


def runs_eval_step(spec: train_lib.StepSpec):
  """:func:`eoi_jax.training.train.eval_step` over a leading run axis, one
  batch for all runs: ``(states, batch, sums) -> sums``."""
  return jax.jit(_over_runs(functools.partial(train_lib.eval_step, spec), in_axes=(0, None, 0)))


@functools.partial(jax.jit, static_argnums=(0, 1))
def jacobian_stats(eval_graph, info, params, other, images) -> dict:
  """Each run's Jacobian singular-value statistics (``mean``, ``max``,
  ``min``, ``var``; arrays over the run axis) on the first
  :data:`JACOBIAN_EXAMPLES` of its ``images``. Compiled once per network
  shape: the graph and dataset constants are the static key."""
  from flax import nnx

  def one(params, other, images):
    model = nnx.merge(eval_graph, params, other)
    x = data.normalize(images[:JACOBIAN_EXAMPLES], info)
    return diagnostics.singular_value_stats(diagnostics.jacobian_singular_values(model, x))

  return _over_runs(one)(params, other, images)


# ----------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class Loop:
  """What hooks see and change: the group's configs, run directories,
  checkpoint stores and stacked state, the running sums of the epoch, and
  each run's records.

  Attributes:
    event: the event being handled (:data:`eoi_jax.training.hooks.STEP`, ...).
    epoch: the epoch (0-based).
    step: steps done in all (of the whole run, resumed legs included).
    step_in_epoch: steps done in this epoch.
    batch: the batch of the step about to run (at epoch start).
    records: this epoch's record of each run.
    diverged: per run, ``None`` or where its loss became non-finite.
    last_saved: per run, the last epoch checkpointed (-1: none).
    stop: set by a hook to end the loop after this event.
    epoch_started: when this epoch's work began (its compilation excluded).
    zeros: zero running sums, placed like the state's run axis.
  """

  configs: list
  runs: list
  stores: list
  spec: train_lib.StepSpec
  state: train_lib.TrainState
  sums: dict
  eval_fn: object
  eval_loaders: dict
  histories: list
  writes: bool
  steps_per_epoch: int
  epochs: int
  event: str = ""
  epoch: int = 0
  step: int = 0
  step_in_epoch: int = 0
  batch: object = None
  records: list = dataclasses.field(default_factory=list)
  diverged: list = dataclasses.field(default_factory=list)
  last_saved: list = dataclasses.field(default_factory=list)
  stop: bool = False
  epoch_started: float = 0.0
  zeros: dict | None = None
  _host: dict | None = None

  def live(self) -> list[int]:
    """The runs whose loss is still finite."""
    return [r for r, d in enumerate(self.diverged) if d is None]

  def host_sums(self) -> dict:
    """This epoch's running sums on the host (fetched once per step)."""
    if self._host is None:
      self._host = jax.device_get(self.sums)
    return self._host

  def losses(self) -> np.ndarray:
    host = self.host_sums()
    return host["loss"] / np.maximum(host["count"], 1.0)

  def run_state(self, r: int):
    return unstack(self.state, r)

  def evaluate(self, loader, name: str) -> list[dict]:
    """Each run's loss and accuracy on ``loader`` (one batch serves all runs)."""
    bounded = train_lib.BoundedSteps()
    sums = self.zeros
    for batch in loader.epoch(0):
      sums = bounded.push(self.eval_fn(self.state, batch, sums))
    totals = jax.device_get(sums)
    count = np.maximum(totals["count"], 1.0)
    return [{f"{name}_loss": float(totals["loss"][r] / count[r]),
             f"{name}_accuracy": float(totals["correct"][r] / count[r])}
            for r in range(len(count))]

  def epoch_line(self) -> str:
    """The closing line of an epoch, naming the run (or the group's size)."""
    live = self.live()
    what = (f"{self.runs[0].path.name}: " if len(self.configs) == 1
            else f"{len(live)} runs (means): ")
    records = [self.records[r] for r in live]

    def mean(key):
      values = [r[key] for r in records if key in r]
      return sum(values) / len(values) if values else float("nan")

    return (f"{what}epoch {self.epoch + 1}/{self.epochs} train_loss {mean('train_loss'):.4f} "
            f"val_acc {mean('val_accuracy'):.4f} test_acc {mean('test_accuracy'):.4f}")


def default_hooks(configs, progress: Progress) -> list[hooks.Hook]:
  """The hooks of a run or group, in the order they run at each event."""
  out = [hooks.JacobianStats(), hooks.NanGuard(min(c.log_every for c in configs)),
         hooks.Evaluate(), hooks.EpochTime(), hooks.LogMetrics()]
  if configs[0].checkpoint:
    out.append(hooks.SaveCheckpoint())
  out.append(hooks.ShowProgress(progress))
  return out


def _restore(configs, runs, stores, state):
  """``(start_epoch, state, histories)`` from the runs' checkpoints when all
  resume at one epoch with a complete record (the one saved with the
  checkpoint, the log checked against it: :meth:`RunDir.history`);
  ``(0, state, [[], ...])`` (checkpoints cleared) otherwise. A run whose
  checkpoints are all damaged raises
  :class:`~eoi_jax.training.checkpoints.NoGoodCheckpoint`."""
  fresh = 0, state, [[] for _ in configs]
  if not stores or not all(c.resume for c in configs):
    for store in stores:
      store.clear()
    return fresh
  restored = [store.restore(unstack(state, i)) for i, store in enumerate(stores)]
  if all(r is not None for r in restored) and len({r.step for r in restored}) == 1:
    start = restored[0].step + 1
    histories = [run.history(start, r.history) for run, r in zip(runs, restored)]
    if all(h is not None for h in histories):
      shardings = jax.tree.map(lambda x: x.sharding, state)
      return start, jax.device_put(stack_runs([r.state for r in restored]), shardings), histories
  for store in stores:
    store.clear()
  return fresh


def run_group(configs, *, mesh: jax.sharding.Mesh, dataset: data.Dataset | None = None,
              process_local: bool = False, stop_after_epoch: int | None = None,
              progress_label: str = "step") -> list[train_lib.TrainResult]:
  """Trains ``configs`` (one architecture, checked by the caller) side by side.

  Everything that can be checked is checked before anything is written: the
  run directories (writable, no run of another config when resuming), the
  data, the batch size, the models and their initialisations. Then every
  run directory is locked, checkpoints restored, and epochs run with
  :func:`default_hooks`.

  Args:
    configs: validated configs that may differ in
      :data:`eoi_jax.training.multirun.PER_RUN_FIELDS` only.
    mesh: a ``('runs', 'data')`` mesh: :func:`runs_mesh` or
      :func:`data_parallel_mesh`.
    dataset: use these arrays instead of loading ``configs[0].dataset``.
    process_local: every process trains its own runs and writes their
      directories and checkpoints (a group under ``jax.distributed``);
      otherwise process 0 writes for all.
    stop_after_epoch: stop after this many epochs in all (as an interruption).
    progress_label: what the progress line counts.

  Returns:
    One :class:`~eoi_jax.training.train.TrainResult` per config.
  """
  base = configs[0]
  writes = process_local or jax.process_index() == 0
  runs = [RunDir(c.run_dir) for c in configs]
  if writes:
    for run, c in zip(runs, configs):
      train_lib.check_run_dir(run, c)
  if dataset is None:
    dataset = train_lib.load_dataset(base)
  by_run = jax.sharding.NamedSharding(mesh, jax.P("runs"))
  loader = RunsLoader(dataset.train, base.batch_size, [c.seed for c in configs], mesh)
  eval_loaders = {name: data.Loader(split, base.batch_size, mesh, data_axis="data", train=False)
                  for name, split in (("val", dataset.val), ("test", dataset.test)) if len(split)}
  # Each run is built where a run of one would live: replicated over the
  # data axis for one run, on one device for a group (stacked, then spread).
  build = (jax.sharding.NamedSharding(mesh, jax.P()) if len(configs) == 1 else
           jax.sharding.SingleDeviceSharding(mesh.devices.flat[0]))
  first = next(iter(loader.epoch(0)))  # each run's scoring batch
  built = []
  for r, c in enumerate(configs):
    images, labels = (first.images, first.labels) if len(configs) == 1 else (
        jax.device_put((first.images, first.labels), build))
    built.append(train_lib.create_train_state(
        c, dataset.info, (data.normalize(images[r], dataset.info), labels[r]),
        loader.steps_per_epoch, build))
  spec = built[0][0]
  states = [b[1] for b in built]
  _same_structure(states, configs)
  state = jax.device_put(stack_runs(states), by_run)
  sparsities = [b[2] for b in built]

  locked, stores, current = [], [], []  # current: the Loop, once training starts
  try:
    if writes:
      for run, config in zip(runs, configs):
        locked.append(run.lock())
        # Again, under the lock: no other process wrote another config since.
        if run.path.exists() and config.resume:
          run.check_config(dataclasses.asdict(config))
    if base.checkpoint:
      stores = [CheckpointStore(run.path / "checkpoints", process_local=process_local)
                for run in runs]
    return _train(configs, runs, stores, spec, state, sparsities, loader, eval_loaders, mesh,
                  writes, stop_after_epoch, progress_label, current)
  except KeyboardInterrupt as e:
    if not current:
      raise
    # Said before the stores close: no checkpoint is in flight (interrupts.deferred).
    raise interrupts.stopped(e, current[0]) from None
  finally:
    for store in stores:
      store.close()
    for run in locked:
      run.unlock()


def _same_structure(states, configs) -> None:
  first = jax.tree.structure(states[0])
  shapes = [jax.tree.map(lambda x: (x.shape, x.dtype), s) for s in states]
  for s, shape, c in zip(states[1:], shapes[1:], configs[1:]):
    if jax.tree.structure(s) != first or shape != shapes[0]:
      raise ValueError(f"run {c.run_dir} (init={c.init!r}) has a training state of another "
                       f"structure than run {configs[0].run_dir} (init={configs[0].init!r}); "
                       "train them in separate groups")


def _train(configs, runs, stores, spec, state, sparsities, loader, eval_loaders, mesh, writes,
           stop_after_epoch, progress_label, current):
  base = configs[0]
  by_run = jax.sharding.NamedSharding(mesh, jax.P("runs"))
  with interrupts.deferred():  # Orbax's reads are not to be cut off (their threads then fail)
    start_epoch, state, histories = _restore(configs, runs, stores, state)
  if writes:
    for run, c, sparsity, history in zip(runs, configs, sparsities, histories):
      run.write_json("config.json", dataclasses.asdict(c))
      run.write("sparsity.txt", sparsity.table() + "\n")
      run.write_json("sparsity.json", sparsity.to_dict())
      run.start_log(history)

  steps = loader.steps_per_epoch
  zeros = jax.device_put(stack_runs([train_lib.zero_metrics()] * len(configs)), by_run)
  loop = Loop(configs=configs, runs=runs, stores=stores, spec=spec, state=state, sums=zeros,
              eval_fn=runs_eval_step(spec), eval_loaders=eval_loaders, histories=histories,
              writes=writes, steps_per_epoch=steps, epochs=base.epochs,
              step=start_epoch * steps, diverged=[None] * len(configs),
              last_saved=[start_epoch - 1] * len(configs), zeros=zeros)
  current.append(loop)
  progress = Progress(steps * base.epochs, label=progress_label, unit="step",
                      quiet=all(c.quiet for c in configs) or not writes,
                      done=start_epoch * steps)
  what = runs[0].path if len(runs) == 1 else f"{len(runs)} runs"
  if start_epoch >= base.epochs and not progress.quiet:
    kept = "its record is" if len(runs) == 1 else "their records are"
    progress.done(f"{what} already finished ({base.epochs}/{base.epochs} epochs); nothing to "
                  f"train, {kept} kept")
  elif start_epoch and not progress.quiet:
    progress.done(f"resuming {what}: {start_epoch}/{base.epochs} epochs done, from epoch "
                  f"{start_epoch + 1}")
  all_hooks = default_hooks(configs, progress)
  step_fn = runs_train_step(spec, (jax.tree.map(lambda x: x.sharding, state), by_run))

  def fire(event):
    loop.event = event
    for hook in all_hooks:
      if hook.trigger.due(event, loop.step):
        hook(loop)

  compile_s = None
  for epoch in range(start_epoch, base.epochs):
    if loop.stop or (stop_after_epoch is not None and epoch >= stop_after_epoch):
      break
    loop.epoch, loop.sums, loop.step_in_epoch = epoch, zeros, 0
    loop.records = [{"epoch": epoch} for _ in configs]
    bounded = train_lib.BoundedSteps()
    started = time.perf_counter()
    timed_from, timed_steps = started, steps
    for i, batch in enumerate(loader.epoch(epoch)):
      if i == 0:
        loop.batch = batch
        fire(hooks.EPOCH_START)
        loop.batch = None
        timed_from = time.perf_counter()
      loop.state, loop.sums = step_fn(loop.state, batch, loop.sums)
      bounded.push(loop.sums)
      if compile_s is None:  # the leg's first step compiles: timed apart
        jax.block_until_ready(loop.sums)
        compile_s = time.perf_counter() - timed_from
        timed_from, timed_steps = time.perf_counter(), steps - 1
      loop.step += 1
      loop.step_in_epoch = i + 1
      loop._host = None
      if i + 1 < steps:
        fire(hooks.STEP)
      if loop.stop:
        break
    host = loop.host_sums()
    train_s = time.perf_counter() - timed_from
    for r, c in enumerate(configs):
      count = max(float(host["count"][r]), 1.0)
      loop.records[r].update({
          "train_loss": float(host["loss"][r]) / count,
          "train_accuracy": float(host["correct"][r]) / count,
          "lr": train_lib.learning_rate(c, steps, loop.step - 1),
          "step_time_s": train_s / max(timed_steps, 1),
          "examples_per_s": max(timed_steps, 1) * c.batch_size / max(train_s, 1e-9),
          "runs_per_step": len(configs)})
      if epoch == start_epoch:
        loop.records[r]["compile_s"] = compile_s
    loop.epoch_started = started + (compile_s if epoch == start_epoch else 0.0)
    fire(hooks.EPOCH_END)

  results = []
  for r, (run, c) in enumerate(zip(runs, configs)):
    run_state = unstack(loop.state, r)
    summary = train_lib.run_summary(loop.histories[r], sparsities[r], run, run_state,
                                    devices=int(mesh.shape["data"]))
    if loop.diverged[r] is not None:
      summary["diverged_at_epoch"] = loop.diverged[r]["epoch"]
    if writes:
      run.write_json("summary.json", summary)
    results.append(train_lib.TrainResult(summary, run_state, sparsities[r], loop.histories[r],
                                         loop.diverged[r]))
  return results
