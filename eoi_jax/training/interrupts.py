"""Ctrl-C and SIGTERM: training stops where it is, says so in one line, and
never inside a checkpoint write.

Within :func:`handling_signals` (the command line's), SIGINT and SIGTERM
raise :class:`Interrupted`, a ``KeyboardInterrupt`` that knows its signal
(exit code ``128 + signal``: 130 and 143). Inside :func:`deferred` (a
checkpoint being written) a signal is held until the block ends, so the
checkpoint is written whole and Orbax's threads finish their work; a second
signal while one is held stops at once. The epoch loop
(:mod:`eoi_jax.training.loop`) turns an interrupt into an :class:`Interrupted`
whose message says where it stopped (:func:`stopped`) and closes its
checkpoint stores and locks; the same command then resumes.

Example:
  >>> with handling_signals():
  ...   with deferred():
  ...     store.save(epoch, state)   # Ctrl-C here stops after the save
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
  """Training was stopped by a signal.

  Args:
    signum: the signal (``SIGINT`` for Ctrl-C).
    message: where it stopped and what to do, one line (:func:`where`).
  """

  def __init__(self, signum: int = signal.SIGINT, message: str = ""):
    super().__init__(message or f"interrupted ({signal.Signals(signum).name})")
    self.signum = int(signum)
    self.message = message

  @property
  def exit_code(self) -> int:
    """The shell's code for a process ended by the signal: 130 (SIGINT), 143 (SIGTERM)."""
    return 128 + self.signum


def _raise(signum, frame):
  raise Interrupted(signum)


@contextlib.contextmanager
def handling_signals():
  """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` in the
  main thread; the handlers before it are restored at its end (a no-op
  outside the main thread: only it may set handlers)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = {signum: signal.signal(signum, _raise) for signum in SIGNALS}
  try:
    yield
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)


def _exit_quietly(signum, frame):
  for stream in (sys.stdout, sys.stderr):
    with contextlib.suppress(Exception):
      stream.flush()
  os._exit(128 + signum)


def exit_quietly_on_signals() -> None:
  """From now on SIGINT and SIGTERM end the process at once (exit code
  ``128 + signal``, output flushed, no traceback): for a program whose work
  is done and that is exiting (JAX's and Orbax's exit handlers run after
  it). Only in the main thread."""
  if threading.current_thread() is threading.main_thread():
    for signum in SIGNALS:
      signal.signal(signum, _exit_quietly)


@contextlib.contextmanager
def deferred():
  """Holds SIGINT and SIGTERM until the block ends, then delivers the first
  one to the handler in place before (a second one while holding stops at
  once). Outside the main thread, a no-op."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  held: list[int] = []

  def hold(signum, frame):
    if held:
      raise Interrupted(held[0])
    held.append(signum)

  previous = {signum: signal.signal(signum, hold) for signum in SIGNALS}
  try:
    yield
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)
    if held:
      _deliver(held[0], previous[held[0]])


def _deliver(signum: int, handler) -> None:
  """What ``handler`` (a handler :func:`signal.signal` returned) does with ``signum``."""
  if callable(handler):
    handler(signum, None)
  elif handler == signal.SIG_DFL:
    os.kill(os.getpid(), signum)


def stopped(error: KeyboardInterrupt, loop) -> Interrupted:
  """``error`` (an interrupt of ``loop``'s training) as an :class:`Interrupted`
  saying where (:func:`where`), with ``error``'s signal (SIGINT if it has none)."""
  return Interrupted(getattr(error, "signum", signal.SIGINT), where(loop))


def where(loop) -> str:
  """One line: where ``loop`` (a :class:`~eoi_jax.training.loop.Loop`)
  stopped, where its last checkpoint is and how to resume.

  Example:
    ``interrupted at epoch 13/30 step 200/422; checkpoint after epoch 12 in
    runs/b/checkpoints; rerun the same command to resume``
  """
  runs = [loop.runs[r] for r in loop.live()] or loop.runs
  if len(runs) == 1:
    what = ""
    folder = runs[0].path / "checkpoints"
  else:
    parent = Path(os.path.commonpath([str(run.path) for run in runs]))
    what = f" ({len(runs)} runs under {parent})"
    folder = parent / "*" / "checkpoints"
  text = (f"interrupted at epoch {loop.epoch + 1}/{loop.epochs} step "
          f"{loop.step_in_epoch}/{loop.steps_per_epoch}{what}")
  saved = min(loop.last_saved[r] for r in loop.live()) if loop.live() else -1
  if not loop.stores:
    return text + "; checkpoints are off, so rerunning starts over"
  if saved + 1 >= loop.epochs:
    return (f"interrupted after the last epoch ({loop.epochs}/{loop.epochs}, checkpointed in "
            f"{folder}); rerun the same command to write its summary")
  if saved < 0:
    return text + "; no checkpoint yet (none before the first epoch ends); rerun the same " \
                  "command to start again"
  return text + f"; checkpoint after epoch {saved + 1} in {folder}; rerun the same command " \
                "to resume"
