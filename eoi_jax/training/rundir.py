"""A run directory: its lock, its files, written so that a kill never leaves a torn one.

==================  =========================================================
``config.json``     the full configuration
``metrics.jsonl``   one JSON line per epoch
``metrics.csv``     the same as a table
``sparsity.txt``    per-layer requested and realised density (also ``.json``)
``summary.json``    final metrics; ``test_accuracy`` is the headline number
``checkpoints/``    Orbax checkpoints (:mod:`eoi_jax.training.checkpoints`)
``.lock``           held (``flock``) by the process training in it
==================  =========================================================

Every file but ``metrics.jsonl`` is written to a temporary name of its own
(:func:`write_atomic`) and renamed into place, so a reader sees the old or the
new file, never half of one. The JSONL log is appended a line at a time, each
line on disk before the epoch's checkpoint; each checkpoint also holds the
record of every epoch up to its own, so on resume the log is checked against
it: lines after the checkpoint (a kill cut them or came before the
checkpoint) are dropped, and missing or altered lines are rewritten from it
with a one-line warning (:meth:`RunDir.history`).

A run is identified by its configuration, not by where it lives: ``run_dir``
(and the fields of :data:`RESUMABLE_FIELDS`) may differ between a run and its
resumption, so a moved folder, a trailing slash or a relative path resumes.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import os
import tempfile
import warnings
from pathlib import Path


class RunDirError(ValueError):
  """The run directory cannot be used (unwritable, in use, or holding another run)."""


RESUMABLE_FIELDS = frozenset({"quiet", "log_every", "resume", "data_dir", "run_dir"})
"""Fields that may differ between a run and its resumption (where the run and
its data live, how it reports): the others are the run's identity."""

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomic(path, contents: str | bytes) -> None:
  """Writes ``contents`` to ``path`` so that a reader sees the old file or the
  new one, never part of one, and concurrent writers never share a temporary.

  The contents go to a temporary file of a unique name in ``path``'s folder
  (``tempfile.mkstemp``), are flushed to disk and renamed over ``path``.

  Args:
    path: the file to write (its folder must exist).
    contents: the new contents (text, or bytes written as they are).

  Example:
    >>> write_atomic(Path("runs/demo/results.csv"), "a,b\n1,2\n")
  """
  path = Path(path)
  handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(handle, "wb" if isinstance(contents, bytes) else "w") as f:
      f.write(contents)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide results from others
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise


def config_changes(saved: dict, config: dict) -> list[str]:
  """The identity fields (all but :data:`RESUMABLE_FIELDS`) in which ``config``
  differs from the ``saved`` config of a run, sorted. ``1`` and ``1.0`` are
  equal; a field the saved config lacks (added to the config since) is no
  change while it is unset (``None``).

  Example:
    >>> config_changes({"density": 0.1, "run_dir": "a"}, {"density": 0.1, "run_dir": "./a/"})
    []
  """
  missing = object()
  return sorted(k for k in config if k not in RESUMABLE_FIELDS
                and saved.get(k, None if config[k] is None else missing) != config[k])


def _free_sibling(path: Path) -> Path:
  """``path`` with the first suffix ``-2``, ``-3``, ... that names nothing yet."""
  n = 2
  while path.with_name(f"{path.name}-{n}").exists():
    n += 1
  return path.with_name(f"{path.name}-{n}")


def _canonical(record) -> str:
  """One text per record (NaN equals NaN, key order aside)."""
  return json.dumps(record, sort_keys=True)


class RunDir:
  """The outputs of one training run.

  Args:
    path: the directory (created on :meth:`lock`).
  """

  def __init__(self, path):
    self.path = Path(path)
    self._lock_file = None

  # -- checks that write nothing ----------------------------------------------

  def check_writable(self) -> None:
    """Raises :class:`RunDirError` when the directory cannot be created or written.

    Probes the directory (or its nearest existing parent) with a temporary
    file that is removed at once, so permissions, read-only file systems and
    a file in the way are all caught before anything is written.
    """
    existing = self.path
    while not existing.exists() and existing.parent != existing:
      existing = existing.parent
    if not existing.is_dir():
      raise RunDirError(f"run_dir: {existing} is a file, not a directory (run_dir={self.path})")
    try:
      handle, probe = tempfile.mkstemp(prefix=".eoi-jax-probe-", dir=existing)
      os.close(handle)
      os.remove(probe)
    except OSError as e:
      raise RunDirError(f"run_dir: {existing} is not writable ({e.strerror}); cannot create "
                        f"{self.path}") from None

  def saved_config(self) -> dict | None:
    """The ``config.json`` of a run already here, or ``None``."""
    path = self.path / "config.json"
    if not path.exists():
      return None
    try:
      return json.loads(path.read_text())
    except (OSError, ValueError) as e:
      raise RunDirError(f"run_dir: {path} cannot be read ({e}); use another run_dir or "
                        "remove it") from e

  def check_config(self, config: dict) -> None:
    """Raises :class:`RunDirError` when the directory holds a run with another
    config (:func:`config_changes`); the message offers a run directory that
    keeps it and says what starting over deletes."""
    saved = self.saved_config()
    if saved is None:
      return
    changed = config_changes(saved, config)
    if changed:
      details = ", ".join(f"{k}: {saved.get(k)!r} -> {config[k]!r}" for k in changed)
      raise RunDirError(
          f"run_dir: {self.path} holds a run with a different config ({details}); to keep "
          f"it, train in another directory (--run-dir {_free_sibling(self.path.absolute())}); "
          "--resume false starts over in this one, deleting its checkpoints and metrics")

  # -- the lock ------------------------------------------------------------------

  def lock(self) -> "RunDir":
    """Creates the directory and takes its lock; :class:`RunDirError` if another
    process holds it. The lock goes with the process (also when it is killed)."""
    self.path.mkdir(parents=True, exist_ok=True)
    handle = open(self.path / ".lock", "a+")
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      handle.seek(0)
      holder = handle.read().strip() or "unknown"
      handle.close()
      if e.errno in (errno.EAGAIN, errno.EACCES):
        raise RunDirError(f"run_dir: {self.path} is in use by another training process "
                          f"(pid {holder}); wait for it or use another run_dir") from None
      raise
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    self._lock_file = handle
    return self

  def unlock(self) -> None:
    if self._lock_file is not None:
      fcntl.flock(self._lock_file, fcntl.LOCK_UN)
      self._lock_file.close()
      self._lock_file = None

  def __enter__(self):
    return self.lock()

  def __exit__(self, *exc):
    self.unlock()

  # -- files ----------------------------------------------------------------------

  def write(self, name: str, text: str) -> None:
    """Writes ``name`` atomically (:func:`write_atomic`)."""
    write_atomic(self.path / name, text)

  def write_json(self, name: str, value) -> None:
    self.write(name, json.dumps(value, indent=2) + "\n")

  def logged(self) -> dict[int, list[dict]]:
    """The records of ``metrics.jsonl`` by epoch (lines that are not a record
    of an epoch, such as one cut by a kill, are left out)."""
    try:
      lines = (self.path / "metrics.jsonl").read_text().splitlines()
    except (OSError, UnicodeDecodeError):  # absent, unreadable or not text: no lines
      return {}
    out: dict[int, list[dict]] = {}
    for line in lines:
      try:
        record = json.loads(line)
      except ValueError:
        continue
      epoch = record.get("epoch") if isinstance(record, dict) else None
      if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0:
        out.setdefault(epoch, []).append(record)
    return out

  def history(self, before_epoch: int, saved: list[dict] | None = None) -> list[dict] | None:
    """The record of the epochs before ``before_epoch`` (the run resumes there).

    Args:
      before_epoch: the epoch the run resumes at (its checkpoint's epoch + 1).
      saved: the record stored with that checkpoint (one record per epoch
        ``0 .. before_epoch - 1``), or ``None`` for a checkpoint that holds
        none.

    Returns:
      ``saved`` when given: the log's lines for those epochs are compared
      with it, and any that are missing, repeated or altered are named in a
      one-line warning (:meth:`start_log` then rewrites them). Without it,
      the log's lines when they hold each epoch once, else ``None`` (a
      warning says the run starts over). Lines of later epochs are dropped
      either way: a kill came before their checkpoint.
    """
    logged = self.logged()
    if saved is not None:
      bad = [e for e, record in enumerate(saved)
             if [_canonical(r) for r in logged.get(e, [])] != [_canonical(record)]]
      if bad:
        warnings.warn(f"{self.path / 'metrics.jsonl'}: the lines of epochs {_epochs_text(bad)} "
                      f"were missing or damaged; rewritten from checkpoint {before_epoch - 1}",
                      RuntimeWarning, stacklevel=2)
      return list(saved)
    missing = [e for e in range(before_epoch) if len(logged.get(e, [])) != 1]
    if missing:
      warnings.warn(f"{self.path / 'metrics.jsonl'}: the lines of epochs {_epochs_text(missing)} "
                    f"are missing or repeated and checkpoint {before_epoch - 1} holds no record "
                    "of them; the run starts over", RuntimeWarning, stacklevel=2)
      return None
    return [logged[e][0] for e in range(before_epoch)]

  def start_log(self, history: list[dict]) -> None:
    """Rewrites the logs to hold exactly ``history`` (the epochs being resumed from)."""
    self.write("metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    self._write_csv(history)

  def log(self, record: dict, history: list[dict]) -> None:
    """Appends ``record`` to ``metrics.jsonl`` and rewrites ``metrics.csv`` from ``history``."""
    with open(self.path / "metrics.jsonl", "a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()
      os.fsync(f.fileno())
    self._write_csv(history)

  def _write_csv(self, history: list[dict]) -> None:
    fields = sorted({k for r in history for k in r}, key=lambda k: (k != "epoch", k))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    writer.writerows(history)
    self.write("metrics.csv", out.getvalue())


def _epochs_text(epochs: list[int]) -> str:
  """``0, 1, 2`` (at most ten, then ``...``)."""
  shown = ", ".join(str(e) for e in epochs[:10])
  return shown + (", ..." if len(epochs) > 10 else "")
