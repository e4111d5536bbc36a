"""A persistent compilation cache for the command line and the experiments.

JAX compiles every distinct program once per process. With the cache on, a
second process finds the programs the first one compiled (on disk, keyed by
the program, the JAX version and the device) and skips compiling them. The
command line and the experiments turn it on by default; set
``EOI_JAX_COMPILATION_CACHE=0`` to turn it off, or ``JAX_COMPILATION_CACHE_DIR``
to choose its folder (default ``$XDG_CACHE_HOME/eoi-jax/jax-cache``, i.e.
``~/.cache/eoi-jax/jax-cache``).
"""

from __future__ import annotations

import os
from pathlib import Path

from eoi_jax.training import config


def default_dir() -> Path:
  """``$JAX_COMPILATION_CACHE_DIR``, else ``$XDG_CACHE_HOME/eoi-jax/jax-cache``."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return Path(os.environ["JAX_COMPILATION_CACHE_DIR"]).expanduser()
  cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
  return cache / "eoi-jax" / "jax-cache"


def enable(path=None) -> Path | None:
  """Turns JAX's persistent compilation cache on (unless ``EOI_JAX_COMPILATION_CACHE=0``).

  Every program is cached, however quickly it compiled: a run compiles many
  small ones, and together they are most of a short run's start-up.

  Args:
    path: the cache folder (default :func:`default_dir`).

  Returns:
    The folder in use, or ``None`` when turned off.
  """
  if config.turned_off("EOI_JAX_COMPILATION_CACHE"):
    return None
  import jax

  folder = Path(path) if path is not None else default_dir()
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except OSError:
    return None  # a read-only home: run without the cache
  jax.config.update("jax_compilation_cache_dir", str(folder))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return folder
