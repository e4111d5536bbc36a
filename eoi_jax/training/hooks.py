"""What the training loop does besides stepping: small hooks, each with a trigger.

The epoch loop (:mod:`eoi_jax.training.loop`) raises three kinds of events:
the start of an epoch (before its first step), the end of a step, and the end
of an epoch. At each it calls, in order, every hook whose :class:`Trigger`
is due; a hook reads and updates the :class:`~eoi_jax.training.loop.Loop` it
is given (the stacked state, the step's running sums, this epoch's records).
The model is clu's ``PeriodicAction``: a trigger in steps and/or seconds.

The hooks of a run, in order: :class:`JacobianStats` (epoch start),
:class:`NanGuard` (every ``log_every`` steps and epoch end),
:class:`Evaluate`, :class:`EpochTime`, :class:`LogMetrics` (epoch end; the
metrics line is on disk before the checkpoint), :class:`SaveCheckpoint` and
:class:`ShowProgress`.

Example:
  >>> class PrintLoss(Hook):
  ...   def __init__(self):
  ...     self.trigger = Trigger(every_steps=100)
  ...   def __call__(self, loop):
  ...     print(loop.step, loop.mean_loss())
"""

from __future__ import annotations

import time

import jax
import numpy as np

EPOCH_START, STEP, EPOCH_END = "epoch_start", "step", "epoch_end"


class Trigger:
  """When a hook runs: every ``every_steps`` steps, every ``every_secs``
  seconds (checked after each step), and/or at each epoch's start or end.

  Args:
    every_steps: after each step whose global count divides by this.
    every_secs: after a step at least this long after the last firing.
    epoch_start: before each epoch's first step.
    epoch_end: after each epoch's last step.
  """

  def __init__(self, *, every_steps: int | None = None, every_secs: float | None = None,
               epoch_start: bool = False, epoch_end: bool = False):
    if every_steps is not None and every_steps < 1:
      raise ValueError(f"every_steps must be >= 1, got {every_steps}")
    if every_secs is not None and every_secs < 0:
      raise ValueError(f"every_secs must be >= 0, got {every_secs}")
    self.every_steps, self.every_secs = every_steps, every_secs
    self.epoch_start, self.epoch_end = epoch_start, epoch_end
    self._last = time.perf_counter()

  def due(self, event: str, step: int) -> bool:
    """Whether the hook runs at ``event`` (after ``step`` steps in all)."""
    if event == EPOCH_START:
      return self.epoch_start
    if event == EPOCH_END:
      fire = self.epoch_end
    else:
      fire = bool(self.every_steps and step % self.every_steps == 0)
      if self.every_secs is not None and time.perf_counter() - self._last >= self.every_secs:
        fire = True
    if fire:
      self._last = time.perf_counter()
    return fire


class Hook:
  """A step of the loop besides training: ``trigger`` says when, ``__call__``
  does it with the :class:`~eoi_jax.training.loop.Loop`."""

  trigger: Trigger

  def __call__(self, loop) -> None:
    raise NotImplementedError


class JacobianStats(Hook):
  """Singular-value statistics of the input-output Jacobians of 32 examples
  of each epoch's first batch, before its step (the first epoch's: at
  initialisation), for the runs with ``jacobian=True``; one compiled program
  per network shape (:func:`eoi_jax.training.loop.jacobian_stats`)."""

  def __init__(self):
    self.trigger = Trigger(epoch_start=True)

  def __call__(self, loop) -> None:
    from eoi_jax.training import loop as loop_lib

    wanted = [c.jacobian and loop.diverged[r] is None for r, c in enumerate(loop.configs)]
    if not any(wanted):
      return
    stats = jax.device_get(loop_lib.jacobian_stats(
        loop.spec.eval_graph, loop.spec.info, loop.state.params, loop.state.other,
        loop.batch.images))
    for r in np.flatnonzero(wanted):
      loop.records[r].update({f"jacobian_sv_{k}": float(v[r]) for k, v in stats.items()})


class NanGuard(Hook):
  """Marks a run whose running training loss is NaN or infinite as diverged
  (it stops logging and saving; the others go on); stops the loop when no
  run is left."""

  def __init__(self, every_steps: int):
    self.trigger = Trigger(every_steps=every_steps, epoch_end=True)

  def __call__(self, loop) -> None:
    losses = loop.losses()
    for r, loss in enumerate(losses):
      if loop.diverged[r] is None and not np.isfinite(loss):
        loop.diverged[r] = {"epoch": loop.epoch, "step": loop.step_in_epoch, "loss": float(loss),
                            "last_good_epoch": loop.last_saved[r]}
    if all(d is not None for d in loop.diverged):
      loop.stop = True


class ShowProgress(Hook):
  """The live progress line (time-triggered) and one line per epoch."""

  def __init__(self, progress):
    self.progress = progress
    self.trigger = Trigger(every_secs=progress.gap, epoch_end=True)

  def __call__(self, loop) -> None:
    if self.progress.quiet:
      return
    live = loop.live()
    if not live:
      return
    if loop.event == EPOCH_END:
      self.progress.done(loop.epoch_line())
      return
    host = loop.host_sums()
    count = np.maximum(host["count"][live], 1.0)
    fields = {"epoch": loop.epoch + 1, "loss": float(np.mean(host["loss"][live] / count)),
              "acc": float(np.mean(host["correct"][live] / count))}
    if len(loop.configs) > 1:
      fields["runs"] = len(live)
    self.progress.update(loop.step, force=True, **fields)


class Evaluate(Hook):
  """Loss and accuracy of every run on the validation and test splits."""

  def __init__(self):
    self.trigger = Trigger(epoch_end=True)

  def __call__(self, loop) -> None:
    if not loop.live():
      return
    for name, loader in loop.eval_loaders.items():
      for r, values in enumerate(loop.evaluate(loader, name)):
        loop.records[r].update(values)


class EpochTime(Hook):
  """``run_time_s``: each run's share of the epoch's wall time (training and
  evaluation, compilation excluded) when ``runs_per_step`` runs share it."""

  def __init__(self):
    self.trigger = Trigger(epoch_end=True)

  def __call__(self, loop) -> None:
    seconds = max(time.perf_counter() - loop.epoch_started, 0.0) / len(loop.configs)
    for record in loop.records:
      record["run_time_s"] = seconds


class LogMetrics(Hook):
  """Each live run's epoch record: appended to its ``metrics.jsonl`` (on
  disk before the checkpoint of the epoch) and its history."""

  def __init__(self):
    self.trigger = Trigger(epoch_end=True)

  def __call__(self, loop) -> None:
    for r in loop.live():
      loop.histories[r].append(loop.records[r])
      if loop.writes:
        loop.runs[r].log(loop.records[r], loop.histories[r])


class SaveCheckpoint(Hook):
  """Each live run's state, as checkpoint ``epoch`` of its run directory, with
  its metrics record up to this epoch (restored with it on resume)."""

  def __init__(self):
    self.trigger = Trigger(epoch_end=True)

  def __call__(self, loop) -> None:
    from eoi_jax.training import interrupts

    with interrupts.deferred():  # a checkpoint is written whole, or not begun
      for r in loop.live():
        loop.stores[r].save(loop.epoch, loop.run_state(r), history=loop.histories[r])
        loop.last_saved[r] = loop.epoch
