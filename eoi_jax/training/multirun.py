"""Many runs of one architecture trained side by side in one jitted step.

Runs that differ only in what :data:`PER_RUN_FIELDS` lists (seed,
initialisation method and its options, density, learning rate, weight decay,
run directory) share a model graph and an optimizer structure, so their
states stack along a leading *run axis* and :func:`eoi_jax.training.train.train_step`
runs under ``jax.vmap``: parameters, masks, optimizer state (with each run's
learning rate and weight decay, see :func:`eoi_jax.training.train.make_optimizer`),
batch-norm statistics, augmentation keys and each run's own data order. The
run axis is sharded over the devices (a ``runs`` mesh axis over the largest
number of devices that divides the number of runs), so the runs need no
communication. Under ``jax.distributed`` it is split over the processes too:
each process trains its share of the runs (:func:`process_share`) on its own
devices and saves their checkpoints itself. A step of a small or
latency-bound network (the 1000-layer MLP on a GPU) then costs little more
for many runs than for one.

Each run keeps its own run directory, exactly as a run trained alone writes
it (config, per-epoch metrics, sparsity, checkpoints, summary), and ends
equal to it up to floating-point reassociation. A group resumes from its
runs' checkpoints when all of them hold the same last epoch; otherwise it
starts over (a kill loses at most the runs in flight). A run whose loss
becomes NaN or infinite stops logging and is reported as diverged; the
others go on.

Example:
  >>> configs = [make_config("digits_smoke", seed=s, run_dir=f"runs/s{s}") for s in range(4)]
  >>> results = train_runs(configs)
  >>> [r.summary["test_accuracy"] for r in results]
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from eoi_jax.training import data
from eoi_jax.training import train as train_lib
from eoi_jax.training.checkpoints import CheckpointStore, NoGoodCheckpoint
from eoi_jax.training.config import Config
from eoi_jax.training.progress import Progress
from eoi_jax.training.rundir import RunDir

PER_RUN_FIELDS = frozenset({
    "seed", "init", "density", "allocator", "gain", "bias_std", "center_density", "structured",
    "ai_steps", "sao_degree", "lr", "weight_decay", "run_dir", "resume", "quiet", "log_every",
    "jacobian",
})
"""Config fields in which runs trained together may differ; all others
(dataset, model, depth, width, activation, optimizer, schedule, momentum,
epochs, batch size, devices, ...) they must share."""


def group_key(config: Config) -> tuple:
  """Runs with equal keys can train in one step (the fields outside
  :data:`PER_RUN_FIELDS`)."""
  return tuple((k, repr(v)) for k, v in sorted(dataclasses.asdict(config).items())
               if k not in PER_RUN_FIELDS)


def _check_group(configs) -> None:
  if not configs:
    raise ValueError("train_runs needs at least one config")
  for c in configs:
    if not isinstance(c, Config):
      raise TypeError(f"train_runs takes Config objects, got {type(c).__name__}")
  first = group_key(configs[0])
  for c in configs[1:]:
    if group_key(c) != first:
      differ = sorted(k for k, v in dataclasses.asdict(c).items()
                      if k not in PER_RUN_FIELDS and getattr(configs[0], k) != v)
      raise ValueError(f"runs trained together must share every field but "
                       f"{sorted(PER_RUN_FIELDS)}; {c.run_dir} differs in {differ}")
  dirs = [str(c.run_dir) for c in configs]
  if len(set(dirs)) != len(dirs):
    raise ValueError(f"each run needs its own run_dir, got {dirs}")


def runs_mesh(num_runs: int, num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D ``runs`` mesh over the largest number of this process's first
  devices (at most ``num_devices``) that divides ``num_runs``."""
  local = jax.local_devices()
  available = len(local) if num_devices is None else min(num_devices, len(local))
  size = max(d for d in range(1, available + 1) if num_runs % d == 0)
  return jax.sharding.Mesh(np.array(local[:size]), ("runs",))


def process_share(configs) -> list:
  """The runs this process trains: ``configs[i]`` for ``i % process_count ==
  process_index`` (all of them in a single process)."""
  return list(configs)[jax.process_index()::jax.process_count()]


def sync_processes(name: str) -> None:
  """Waits until every process of a ``jax.distributed`` job gets here (no-op
  in a single process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


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
  alone), stacked along a run axis sharded over ``mesh``'s ``runs`` axis. The
  split is placed on the devices once for all runs."""

  def __init__(self, split, batch_size: int, seeds, mesh):
    if batch_size <= 0 or len(split) < batch_size:
      raise ValueError(f"batch_size {batch_size} exceeds the {len(split)} examples of the "
                       "training split")
    self.seeds, self.size, self.batch_size = list(seeds), len(split), batch_size
    self.steps_per_epoch = self.size // batch_size
    self.sharding = jax.sharding.NamedSharding(mesh, jax.P("runs"))
    replicated = jax.sharding.NamedSharding(mesh, jax.P())
    self._images = jax.device_put(split.images, replicated)
    self._labels = jax.device_put(split.labels.astype(np.int32), replicated)

  def epoch(self, epoch: int):
    length = self.steps_per_epoch * self.batch_size
    orders = jnp.asarray(np.stack([data.example_order(self.size, length, s, epoch)
                                   for s in self.seeds]), jnp.int32)
    for step in range(self.steps_per_epoch):
      yield _gather_runs(self._images, self._labels, orders, step * self.batch_size,
                         self.batch_size, self.sharding)


def _one_device_mesh():
  return jax.sharding.Mesh(np.array(jax.local_devices()[:1]), ("data",))


@jax.jit
def stack_runs(trees):
  """Trees of equal structure stacked along a new leading run axis (one
  compiled program for the whole tree, not one per leaf shape)."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


@jax.jit
def _unstacked(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


def _unstack(tree, i: int):
  """Run ``i`` of a stacked tree (``i`` traced: one program serves every run)."""
  return _unstacked(tree, jnp.int32(i))


def _same_structure(states, configs) -> None:
  first = jax.tree.structure(states[0])
  shapes = [jax.tree.map(lambda x: (x.shape, x.dtype), s) for s in states]
  for s, shape, c in zip(states[1:], shapes[1:], configs[1:]):
    if jax.tree.structure(s) != first or shape != shapes[0]:
      raise ValueError(f"run {c.run_dir} (init={c.init!r}) has a training state of another "
                       f"structure than run {configs[0].run_dir} (init={configs[0].init!r}); "
                       "train them in separate groups")


CPU_RUNS_PER_STEP = 16
"""Runs per step a sweep trains together on a CPU by default
(``benchmarks/multirun.py``, 2-core CPU, 7-layer MLP: up to 16 runs side by
side keep the throughput of one run after another; 64 in one step reach only
0.62-0.69 of it, their parameters, gradients and momenta streaming through
memory at every step, while 64 runs as four groups of 16 keep 1.0-1.08)."""


def default_runs_per_step() -> int | None:
  """:data:`CPU_RUNS_PER_STEP` on CPUs; no limit on accelerators."""
  return CPU_RUNS_PER_STEP if jax.default_backend() == "cpu" else None


def _over_runs(step):
  """``step`` vmapped over a leading run axis; a single run's axis is
  squeezed instead (as fast as the step alone: the 1000-layer MLP's step
  vmapped over one run took 11% longer on the 2-core CPU)."""
  def over_runs(*args):
    if jax.tree.leaves(args)[0].shape[0] == 1:
      out = step(*jax.tree.map(lambda x: x[0], args))
      return jax.tree.map(lambda x: x[None], out)
    return jax.vmap(step)(*args)
  return over_runs


def runs_train_step(spec: train_lib.StepSpec):
  """:func:`eoi_jax.training.train.train_step` vmapped over a leading run
  axis, jitted (the states donated): ``(states, batches, sums) -> (states, sums)``."""
  return jax.jit(_over_runs(functools.partial(train_lib.train_step, spec)), donate_argnums=(0,))


def runs_eval_step(spec: train_lib.StepSpec):
  """:func:`eoi_jax.training.train.eval_step` vmapped over a leading run axis,
  one batch for all runs: ``(states, batch, sums) -> sums``."""
  return jax.jit(jax.vmap(functools.partial(train_lib.eval_step, spec), in_axes=(0, None, 0)))


def train_runs(configs, *, dataset: data.Dataset | None = None,
               stop_after_epoch: int | None = None,
               progress_label: str = "step") -> list[train_lib.TrainResult]:
  """Trains several runs of one architecture together (see the module docstring).

  Args:
    configs: validated :class:`Config` s that differ only in
      :data:`PER_RUN_FIELDS`, each with its own ``run_dir``.
    dataset: use these arrays instead of loading ``configs[0].dataset``.
    stop_after_epoch: stop after this many epochs in all (as an interruption).
    progress_label: what the progress line counts.

  Returns:
    A :class:`eoi_jax.training.train.TrainResult` per run this process
    trained, in order: every run in a single process; under
    ``jax.distributed``, the runs of :func:`process_share` (each process
    trains its share on its own devices; all return once every run is done,
    and every run directory is complete).

  Raises:
    ValueError: configs that cannot share a step, bad input (as for
      :func:`eoi_jax.training.train.train_and_evaluate`).
  """
  configs = list(configs)
  _check_group(configs)
  configs = process_share(configs)
  try:
    return _train_share(configs, dataset, stop_after_epoch, progress_label) if configs else []
  finally:
    sync_processes("eoi_jax.train_runs")


def _train_share(configs, dataset, stop_after_epoch, progress_label):
  base = configs[0]
  runs = [RunDir(c.run_dir) for c in configs]
  for run, c in zip(runs, configs):
    train_lib.check_run_dir(run, c)
  if dataset is None:
    dataset = train_lib.load_dataset(base)
  mesh = runs_mesh(len(configs), base.devices)
  by_run = jax.sharding.NamedSharding(mesh, jax.P("runs"))
  replicated = jax.sharding.NamedSharding(mesh, jax.P())
  loader = RunsLoader(dataset.train, base.batch_size, [c.seed for c in configs], mesh)
  eval_loaders = {name: data.Loader(split, base.batch_size, _one_device_mesh(), train=False)
                  for name, split in (("val", dataset.val), ("test", dataset.test)) if len(split)}
  one = jax.sharding.NamedSharding(_one_device_mesh(), jax.P())
  first = jax.device_put(next(iter(loader.epoch(0))), one)  # each run's scoring batch
  built = [train_lib.create_train_state(
      c, dataset.info, (data.normalize(first.images[r], dataset.info), first.labels[r]),
      loader.steps_per_epoch, one) for r, c in enumerate(configs)]
  spec = built[0][0]
  states = [b[1] for b in built]
  _same_structure(states, configs)
  state = jax.device_put(stack_runs(states), by_run)
  sparsities = [b[2] for b in built]

  step_fn = runs_train_step(spec)
  eval_fn = runs_eval_step(spec)
  zeros = jax.device_put(stack_runs([train_lib.zero_metrics()] * len(configs)), by_run)

  locked = []
  stores = []
  try:
    for run in runs:
      locked.append(run.lock())
    if base.checkpoint:
      stores = [CheckpointStore(run.path / "checkpoints", process_local=True) for run in runs]
    return _run_epochs(configs, runs, stores, spec, state, sparsities, step_fn, eval_fn, zeros,
                       loader, eval_loaders, replicated, stop_after_epoch, progress_label)
  finally:
    for store in stores:
      store.close()
    for run in locked:
      run.unlock()


def _restore(configs, runs, stores, state):
  """``(start_epoch, state)`` from the runs' checkpoints when all resume at
  one epoch; ``(0, state)`` (checkpoints cleared) otherwise."""
  if not stores or not all(c.resume for c in configs):
    for store in stores:
      store.clear()
    return 0, state
  restored = []
  for i, store in enumerate(stores):
    try:
      restored.append(store.restore_latest(_unstack(state, i)))
    except NoGoodCheckpoint:
      restored.append(None)
  if all(r is not None for r in restored) and len({r[0] for r in restored}) == 1:
    shardings = jax.tree.map(lambda x: x.sharding, state)
    return restored[0][0] + 1, jax.device_put(stack_runs([r[1] for r in restored]), shardings)
  for store in stores:
    store.clear()
  return 0, state


def _run_epochs(configs, runs, stores, spec, state, sparsities, step_fn, eval_fn, zeros,
                loader, eval_loaders, replicated, stop_after_epoch, progress_label):
  base = configs[0]
  start_epoch, state = _restore(configs, runs, stores, state)
  histories = [run.history(start_epoch) if start_epoch else [] for run in runs]
  for run, c, sparsity, history in zip(runs, configs, sparsities, histories):
    run.write_json("config.json", dataclasses.asdict(c))
    run.write("sparsity.txt", sparsity.table() + "\n")
    run.write_json("sparsity.json", sparsity.to_dict())
    run.start_log(history)
  steps = loader.steps_per_epoch
  quiet = all(c.quiet for c in configs)
  progress = Progress(steps * base.epochs, label=progress_label, quiet=quiet,
                      done=start_epoch * steps)
  diverged = [None] * len(configs)  # the epoch each run's loss became non-finite
  started_all = time.perf_counter()
  for epoch in range(start_epoch, base.epochs):
    if stop_after_epoch is not None and epoch >= stop_after_epoch:
      break
    sums, bounded = zeros, train_lib.BoundedSteps()
    started = time.perf_counter()
    jacobian = [{} for _ in configs]
    for i, batch in enumerate(loader.epoch(epoch)):
      if i == 0:  # at each epoch's first batch, before its step (as a run alone)
        for r, c in enumerate(configs):
          if c.jacobian and diverged[r] is None:
            jacobian[r] = train_lib._jacobian_stats(spec, _unstack(state, r), _unstack(batch, r))
      state, sums = step_fn(state, batch, sums)
      bounded.push(sums)
      if progress.due():
        host = jax.device_get(sums)
        losses = host["loss"] / np.maximum(host["count"], 1.0)
        progress.update(epoch * steps + i + 1, epoch=epoch + 1, runs=len(configs),
                        loss=float(np.nanmean(losses)))
    host = jax.device_get(sums)
    elapsed = time.perf_counter() - started
    evaluated = {name: _evaluate_runs(eval_fn, state, l, name, zeros, replicated)
                 for name, l in eval_loaders.items()}
    step = int(jax.device_get(state.step)[0])
    for r, (run, c) in enumerate(zip(runs, configs)):
      if diverged[r] is not None:
        continue
      loss = float(host["loss"][r]) / float(host["count"][r])
      if not np.isfinite(loss):
        diverged[r] = epoch
        continue
      record = {"epoch": epoch, **jacobian[r], "train_loss": loss,
                "train_accuracy": float(host["correct"][r]) / float(host["count"][r]),
                "lr": train_lib._learning_rate(c, steps, step - 1),
                "step_time_s": elapsed / steps,
                "examples_per_s": steps * c.batch_size * len(configs) / max(elapsed, 1e-9)}
      for name in evaluated:
        record.update(evaluated[name][r])
      if stores:
        stores[r].save(epoch, _unstack(state, r))
      histories[r].append(record)
      run.log(record, histories[r])
    progress.done(f"epoch {epoch + 1}/{base.epochs} runs {len(configs)} train_loss "
                  f"{np.nanmean(host['loss'] / np.maximum(host['count'], 1)):.4f} test_acc "
                  + " ".join(f"{evaluated['test'][r]['test_accuracy']:.3f}"
                             for r in range(len(configs)) if "test" in evaluated))
  wall = time.perf_counter() - started_all
  results = []
  for r, (run, c) in enumerate(zip(runs, configs)):
    run_state = _unstack(state, r)
    summary = train_lib.run_summary(histories[r], sparsities[r], run, run_state,
                                    devices=1, wall_time_s=wall / len(configs))
    summary["process"] = jax.process_index()
    if diverged[r] is not None:
      summary["diverged_at_epoch"] = diverged[r]
    run.write_json("summary.json", summary)
    results.append(train_lib.TrainResult(summary, run_state, sparsities[r], histories[r]))
  return results


def _evaluate_runs(eval_fn, state, loader, name, zeros, replicated) -> list[dict]:
  """Each run's loss and accuracy on ``loader`` (one batch, replicated over
  the runs' devices, serves all runs)."""
  bounded = train_lib.BoundedSteps()
  sums = zeros
  for batch in loader.epoch(0):
    sums = bounded.push(eval_fn(state, jax.device_put(batch, replicated), sums))
  totals = jax.device_get(sums)
  count = np.maximum(totals["count"], 1.0)
  return [{f"{name}_loss": float(totals["loss"][r] / count[r]),
           f"{name}_accuracy": float(totals["correct"][r] / count[r])}
          for r in range(len(count))]
