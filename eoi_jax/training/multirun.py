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

Groups and single runs share one epoch loop (:func:`eoi_jax.training.loop.run_group`),
so each run keeps its own run directory, exactly as a run trained alone
writes it (config, per-epoch metrics with the same fields, sparsity,
checkpoints, summary), and ends equal to it up to floating-point
reassociation. A group resumes from its
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

import jax

from eoi_jax.training import data, loop
from eoi_jax.training import train as train_lib
from eoi_jax.training.config import Config
from eoi_jax.training.loop import (RunsLoader, runs_eval_step, runs_mesh,  # noqa: F401
                                   runs_train_step, stack_runs, unstack)

PER_RUN_FIELDS = frozenset({
    "seed", "init", "density", "allocator", "gain", "bias_std", "center_density", "structured",
    "ai_steps", "sao_degree", "block", "lr", "weight_decay", "run_dir", "resume", "quiet",
    "log_every", "jacobian",
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


CPU_RUNS_PER_STEP = 16
"""Runs per step a sweep trains together on a CPU by default
(``benchmarks/multirun.py``, 2-core CPU, 7-layer MLP: up to 16 runs side by
side keep the throughput of one run after another; 64 in one step reach only
0.62-0.69 of it, their parameters, gradients and momenta streaming through
memory at every step, while 64 runs as four groups of 16 keep 1.0-1.08)."""


def default_runs_per_step() -> int | None:
  """:data:`CPU_RUNS_PER_STEP` on CPUs; no limit on accelerators."""
  return CPU_RUNS_PER_STEP if jax.default_backend() == "cpu" else None


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
  return loop.run_group(configs, mesh=runs_mesh(len(configs), configs[0].devices),
                        dataset=dataset, process_local=jax.process_count() > 1,
                        stop_after_epoch=stop_after_epoch, progress_label=progress_label)
