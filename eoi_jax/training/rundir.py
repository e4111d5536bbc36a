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

Every file but ``metrics.jsonl`` is written to a temporary name and renamed
into place, so a reader sees the old or the new file, never half of one. The
JSONL log is appended a line at a time; a line cut by a kill is dropped when
the run resumes.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import os
import tempfile
from pathlib import Path


class RunDirError(ValueError):
  """The run directory cannot be used (unwritable, in use, or holding another run)."""


# Fields that may differ between a run and its resumption.
RESUMABLE_FIELDS = frozenset({"quiet", "log_every", "resume", "data_dir"})


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
    """Raises :class:`RunDirError` when the directory holds a run with another config."""
    saved = self.saved_config()
    if saved is None:
      return
    changed = sorted(k for k in config if k not in RESUMABLE_FIELDS and saved.get(k) != config[k])
    if changed:
      details = ", ".join(f"{k}: {saved.get(k)!r} -> {config[k]!r}" for k in changed)
      raise RunDirError(f"run_dir: {self.path} holds a run with a different config ({details}); "
                        "use another run_dir, or resume=false to start over in it")

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
    """Writes ``name`` atomically (temporary file, fsync, rename)."""
    target = self.path / name
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, target)

  def write_json(self, name: str, value) -> None:
    self.write(name, json.dumps(value, indent=2) + "\n")

  def history(self, before_epoch: int) -> list[dict]:
    """The logged epochs before ``before_epoch`` (a line cut by a kill is dropped)."""
    path = self.path / "metrics.jsonl"
    if not path.exists():
      return []
    records = []
    for line in path.read_text().splitlines():
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if isinstance(record, dict) and record.get("epoch", before_epoch) < before_epoch:
        records.append(record)
    return records

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
