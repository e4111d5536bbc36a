"""Checkpoints that a kill or a damaged file cannot turn into a wrong run.

:class:`CheckpointStore` wraps an Orbax ``CheckpointManager``: each checkpoint
holds the training state and a JSON record with the state's *fingerprint*
(two 32-bit position-weighted sums of every word of every array, computed on
device under any sharding). A checkpoint whose files cannot be read, or whose
restored state does not match its fingerprint, is skipped with a warning and
the one before it is used. The record also holds the run's metrics up to the
checkpoint's epoch (the lines of its ``metrics.jsonl``), so a resumed run
restores its record with its state. Each complete checkpoint also gets a manifest
(``checkpoints/manifests/STEP.json``: every file's size and CRC-32), so
truncated or corrupted files are recognised before Orbax reads them. Orbax
writes a checkpoint under a temporary name and renames it when complete, so a
process killed while writing leaves no checkpoint that looks finished.

The store is a context manager; :meth:`CheckpointStore.close` waits for
writes in flight and stops Orbax's background threads.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from eoi_jax.training.rundir import write_atomic


class NoGoodCheckpoint(ValueError):
  """Checkpoints exist but none can be restored."""


class Restored(NamedTuple):
  """A checkpoint read back intact.

  Attributes:
    step: its step (the epoch it ends).
    state: the training state.
    history: the metrics records saved with it (epochs ``0 .. step``), or
      ``None`` when it was saved without them.
  """

  step: int
  state: Any
  history: list[dict] | None


def _words(leaf):
  """``leaf`` as a flat uint32 vector holding every bit of it."""
  leaf = jnp.asarray(leaf)
  if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    leaf = jax.random.key_data(leaf)
  if leaf.dtype == jnp.bool_:
    return leaf.reshape(-1).astype(jnp.uint32)
  size = leaf.dtype.itemsize
  if size == 8:
    return jax.lax.bitcast_convert_type(leaf, jnp.uint32).reshape(-1)
  if size == 4:
    return jax.lax.bitcast_convert_type(leaf, jnp.uint32).reshape(-1)
  if size == 2:
    return jax.lax.bitcast_convert_type(leaf, jnp.uint16).reshape(-1).astype(jnp.uint32)
  return jax.lax.bitcast_convert_type(leaf, jnp.uint8).reshape(-1).astype(jnp.uint32)


@jax.jit
def fingerprint(tree) -> jax.Array:
  """Two 32-bit sums of every word of ``tree``, weighted by odd position-dependent
  multipliers: any change of a single word changes both."""
  total = jnp.zeros((2,), jnp.uint32)
  for i, leaf in enumerate(jax.tree.leaves(tree)):
    words = _words(leaf)
    index = jnp.arange(words.size, dtype=jnp.uint32) + jnp.uint32(i * 7919)
    weights = jnp.stack([index * jnp.uint32(2654435761) | jnp.uint32(1),
                         (index ^ jnp.uint32(0x9E3779B9)) * jnp.uint32(40503) | jnp.uint32(1)])
    total = total + jnp.sum(weights * words[None], axis=1, dtype=jnp.uint32)
  return total


def _fingerprint_list(tree) -> list[int]:
  return [int(v) for v in np.asarray(jax.device_get(fingerprint(tree)))]


@contextlib.contextmanager
def _quiet_orbax():
  """Orbax reports a damaged checkpoint with tracebacks (logged, and from read
  coroutines left unawaited when one read fails); the store reports it itself."""
  logger = logging.getLogger("absl")
  level, hook = logger.level, sys.unraisablehook

  def drop_orbax_reads(unraisable):
    if "orbax" not in getattr(getattr(unraisable.object, "cr_code", None), "co_filename", ""):
      hook(unraisable)

  logger.setLevel(logging.CRITICAL)
  sys.unraisablehook = drop_orbax_reads
  try:
    yield
  finally:
    gc.collect()  # the abandoned reads, while their reports are dropped
    sys.unraisablehook = hook
    logger.setLevel(level)


_MANIFESTS = "manifests"


def _checksums(folder: Path) -> dict:
  """``{relative path: [size, crc32]}`` of every file below ``folder``."""
  out = {}
  for path in sorted(folder.rglob("*")):
    if path.is_file():
      crc = 0
      with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          crc = zlib.crc32(block, crc)
      out[str(path.relative_to(folder))] = [path.stat().st_size, crc]
  return out


class CheckpointStore:
  """Saves and restores the training state in ``directory``.

  Args:
    directory: the checkpoints folder (created on first save).
    max_to_keep: checkpoints kept; at least 2, so that a damaged latest one
      has a fallback.
    process_local: the state lives on this process's devices only and this
      process alone saves and restores it (a run of
      :func:`eoi_jax.training.multirun.train_runs` under ``jax.distributed``);
      otherwise every process takes part and process 0 writes the manifests.
  """

  def __init__(self, directory, max_to_keep: int = 2, *, process_local: bool = False):
    self.directory = Path(directory).absolute()
    self._max_to_keep = max(2, max_to_keep)
    self._writes_manifests = process_local or jax.process_index() == 0
    # In a multi-process job Orbax writes only from process 0 and refuses
    # arrays on one process's devices, so a process-local store there writes
    # host copies itself (one .npz and one JSON record per checkpoint).
    self._on_host = process_local and jax.process_count() > 1
    self._manager = None
    if not self._on_host:
      import orbax.checkpoint as ocp

      self._ocp = ocp
      self._manager = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep, create=True))

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def close(self) -> None:
    """Waits for writes in flight and stops Orbax's threads (idempotent)."""
    if self._manager is not None:
      self._manager.close()
      self._manager = None

  def steps(self) -> list[int]:
    """Steps of the complete checkpoints on disk, oldest first."""
    if self._on_host:
      if not self.directory.exists():
        return []
      return sorted(int(p.name) for p in self.directory.iterdir()
                    if p.name.isdigit() and (p / "meta.json").exists())
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def clear(self) -> None:
    """Deletes every checkpoint (a run that starts over)."""
    for step in self.steps():
      self._delete(step)
    self._prune_manifests()

  def _delete(self, step: int) -> None:
    if self._on_host:
      shutil.rmtree(self.directory / str(step), ignore_errors=True)
    else:
      self._manager.delete(step)

  def save(self, step: int, state, history: list[dict] | None = None) -> None:
    """Writes ``state`` as checkpoint ``step`` and waits until it is complete,
    then records the checksum of each of its files (the manifest).

    Args:
      step: the checkpoint's step (the epoch it ends).
      state: the training state.
      history: the run's metrics records up to ``step``, restored with it
        (:meth:`restore`).
    """
    meta = {"fingerprint": _fingerprint_list(state)}
    if history is not None:
      # One JSON text (NaN and all), stored as written.
      meta["history"] = json.dumps(history)
    if self._on_host:
      self._save_on_host(step, jax.device_get(state), meta)
    else:
      ocp = self._ocp
      self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                       meta=ocp.args.JsonSave(meta)))
      self._manager.wait_until_finished()
    if self._writes_manifests:
      manifest = self._manifest_path(step)
      manifest.parent.mkdir(exist_ok=True)
      write_atomic(manifest, json.dumps(_checksums(self.directory / str(step))))
      self._prune_manifests()

  def _save_on_host(self, step: int, state, meta: dict) -> None:
    final = self.directory / str(step)
    self.directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{step}.", suffix=".tmp", dir=self.directory))
    np.savez(tmp / "state.npz", *[np.asarray(x) for x in jax.tree.leaves(state)])
    (tmp / "meta.json").write_text(json.dumps(meta))  # written last: marks it complete
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in self.steps()[:-self._max_to_keep]:
      self._delete(old)

  # A manifest lists each file of a checkpoint with its size and CRC-32, so a
  # damaged checkpoint is recognised before Orbax reads it.

  def _manifest_path(self, step: int) -> Path:
    return self.directory / _MANIFESTS / f"{step}.json"

  def _prune_manifests(self) -> None:
    """Removes the manifests of checkpoints that have been deleted."""
    if not self._writes_manifests or not (self.directory / _MANIFESTS).exists():
      return
    kept = {str(step) for step in self.steps()}
    for path in (self.directory / _MANIFESTS).glob("*.json"):
      if path.stem not in kept:
        path.unlink(missing_ok=True)

  def _damage(self, step: int) -> str | None:
    """Why checkpoint ``step``'s files differ from its manifest (``None``: they
    match, or it has no manifest)."""
    manifest = self._manifest_path(step)
    if not manifest.exists():
      return None
    try:
      recorded = json.loads(manifest.read_text())
    except (OSError, ValueError):
      return "its manifest cannot be read"
    current = _checksums(self.directory / str(step))
    for name, entry in recorded.items():
      if name not in current:
        return f"{name} is missing"
      if current[name] != entry:
        return f"{name} differs from what was written (size or checksum)"
    return None

  def _restore(self, step: int, like) -> Restored:
    read = self._read_on_host if self._on_host else self._read_with_orbax
    state, meta = read(step, like)
    if _fingerprint_list(state) != list(meta["fingerprint"]):
      raise ValueError("its contents do not match the fingerprint saved with it")
    history = json.loads(meta["history"]) if "history" in meta else None
    if history is not None and [r.get("epoch") for r in history] != list(range(step + 1)):
      raise ValueError(f"its metrics record holds epochs {[r.get('epoch') for r in history]}, "
                       f"not 0..{step}")
    if self._on_host:
      state = jax.tree.map(lambda x, leaf: jax.device_put(x, leaf.sharding), state, like)
    return Restored(step, state, history)

  def _read_with_orbax(self, step: int, like):
    ocp = self._ocp
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                      meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta

  def _read_on_host(self, step: int, like):
    folder = self.directory / str(step)
    meta = json.loads((folder / "meta.json").read_text())
    leaves, treedef = jax.tree.flatten(like)
    with np.load(folder / "state.npz", allow_pickle=False) as stored:
      if len(stored.files) != len(leaves):
        raise ValueError(f"it holds {len(stored.files)} arrays, the state has {len(leaves)}")
      values = [stored[f"arr_{i}"] for i in range(len(leaves))]
    for value, leaf in zip(values, leaves):
      if value.shape != np.shape(leaf) or value.dtype != leaf.dtype:
        raise ValueError(f"an array of {value.shape} {value.dtype} where the state has "
                         f"{np.shape(leaf)} {leaf.dtype}")
    return jax.tree.unflatten(treedef, values), meta

  def restore_latest(self, like):
    """The newest checkpoint that restores intact, as ``(step, state)``
    (:meth:`restore` without the metrics)."""
    restored = self.restore(like)
    return None if restored is None else (restored.step, restored.state)

  def restore(self, like) -> Restored | None:
    """The newest checkpoint that restores intact, with its metrics record.

    Args:
      like: a state with the structure, shapes, dtypes and shardings to
        restore into.

    Returns:
      A :class:`Restored`, or ``None`` when there is no checkpoint.

    Raises:
      NoGoodCheckpoint: checkpoints exist but none restores intact.

    Example:
      >>> with CheckpointStore("runs/demo/checkpoints") as store:
      ...   restored = store.restore(state)
    """
    steps = self.steps()
    problems = []
    for step in reversed(steps):
      reason = self._damage(step)
      if reason is None:
        try:
          with _quiet_orbax():
            return self._restore(step, like)
        except Exception as e:  # Orbax and TensorStore raise many kinds for damaged files
          reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
      problems.append(f"step {step}: {reason}")
      warnings.warn(f"checkpoint {self.directory / str(step)} cannot be restored "
                    f"({reason}); trying the one before it", RuntimeWarning, stacklevel=2)
    if steps:
      raise NoGoodCheckpoint(
          f"no checkpoint in {self.directory} can be restored ({'; '.join(problems)[:600]}); "
          "--resume false (resume=false) starts over, deleting these checkpoints and the "
          "run's metrics")
    return None
