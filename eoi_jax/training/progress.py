"""Progress for long work: a live line on a terminal, a plain line at least every
``interval`` seconds elsewhere (logs, CI), nothing when quiet.

The machine-readable record of a run is its ``metrics.jsonl``; this is for people.

Example:
  >>> progress = Progress(total=1000, label="train", quiet=False)
  >>> for step in range(1000):
  ...   progress.update(step + 1, loss=0.5)
  >>> progress.done("epoch 1: test_acc 0.97")
"""

from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
  seconds = max(0, int(round(seconds)))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
  """Reports ``done / total`` units of work with rate, ETA and extra fields.

  Args:
    total: units of the whole job (steps, runs).
    label: what is counted, e.g. ``"step"`` or ``"step (runs 1-16)"``.
    unit: the rate's unit (default ``label``): ``"step"`` shows ``steps/s``.
    quiet: print nothing.
    interval: seconds between lines when not on a terminal (at most 30 by
      default, as long jobs must show they are alive).
    stream: where to print (default ``sys.stderr``).
    done: units already done before this process (a resumed job).
  """

  def __init__(self, total: int, *, label: str = "step", unit: str | None = None,
               quiet: bool = False, interval: float = 30.0, stream=None, done: int = 0):
    self.total, self.label, self.quiet, self.interval = int(total), label, quiet, interval
    self.unit = label if unit is None else unit
    self.stream = sys.stderr if stream is None else stream
    self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
    self._start_done, self._start = int(done), time.perf_counter()
    self._last_print = self._start
    self.gap = min(0.5, interval) if self.tty else interval
    self._shown = ""

  def line(self, done: int, **fields) -> str:
    """The progress text for ``done`` units (without printing it)."""
    elapsed = time.perf_counter() - self._start
    rate = (done - self._start_done) / elapsed if elapsed > 0 else 0.0
    eta = (self.total - done) / rate if rate > 0 else float("nan")
    parts = [f"{self.label} {done}/{self.total}", f"{rate:.2f} {self.unit}s/s",
             f"ETA {_duration(eta) if eta == eta else '?'}"]
    for key, value in fields.items():
      parts.append(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}")
    return "  ".join(parts)

  def due(self) -> bool:
    """Whether :meth:`update` would print now (to fetch its fields only then)."""
    return not self.quiet and time.perf_counter() - self._last_print >= self.gap

  def update(self, done: int, *, force: bool = False, **fields) -> None:
    """Shows progress if due (twice a second on a terminal, every ``interval``
    s elsewhere) or ``force`` (the caller keeps the time)."""
    if self.quiet or not (force or self.due()):
      return
    self._last_print = time.perf_counter()
    text = self.line(done, **fields)
    if self.tty:
      self.stream.write("\r" + text.ljust(len(self._shown)))
      self._shown = text
    else:
      self.stream.write(text + "\n")
    self.stream.flush()

  def done(self, text: str) -> None:
    """Prints a closing line (e.g. an epoch's results)."""
    if self.quiet:
      return
    if self.tty and self._shown:
      self.stream.write("\r" + " " * len(self._shown) + "\r")
      self._shown = ""
    self.stream.write(text + "\n")
    self.stream.flush()
    self._last_print = time.perf_counter()
