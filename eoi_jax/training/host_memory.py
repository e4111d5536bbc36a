"""Freed host memory kept for reuse, for the command line, the experiments and the benchmarks.

XLA:CPU allocates every execution's temporary buffer afresh and frees it at
the end. glibc's ``malloc`` serves a block over 32 MiB (over 64 MiB in a
worker thread's arena) with a new ``mmap`` and unmaps it when freed, so the
kernel hands every execution fresh pages that fault in one 4 KiB page at a
time. The 1000-layer MLP's training step has a 126 MiB temporary buffer (the
stored activations and the kernel gradients): about 32,000 page faults and
some 20 ms of its 200 ms on a 2-core CPU, every step.

:func:`keep_freed_memory` tells ``malloc`` to take every block from the one
main heap (``M_ARENA_MAX = 1``, ``M_MMAP_MAX = 0``) and to keep freed memory
at the heap's top (``M_TRIM_THRESHOLD`` 2 GiB): the next execution reuses the
same pages. The ``eoi-jax`` command, the experiments and the step benchmarks
call it before JAX starts; a process then keeps the memory of its largest
step until it ends (its peak is unchanged). It is process-wide and must run
before JAX starts a backend (its threads keep the allocator arenas they
began with), so a library never calls it on import: call it yourself, first
thing, in a CPU training script of your own.

Set ``EOI_JAX_KEEP_FREED_MEMORY=0`` to turn it off. It also does nothing when
you set ``malloc`` yourself (``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_MAX_``,
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES``),
off Linux or off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

from eoi_jax.training import config

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_TRIM_THRESHOLD = 2 ** 31 - 1  # mallopt takes an int: 2 GiB

_USER_SETTINGS = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_",
                  "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


def _backend_started() -> bool:
  try:
    from jax._src import xla_bridge
  except ImportError:  # no JAX, or JAX has moved it: nothing has started
    return False
  started = getattr(xla_bridge, "backends_are_initialized", None)
  return bool(started and started())


def keep_freed_memory() -> bool:
  """Makes glibc's ``malloc`` keep freed host memory for reuse (module docstring).

  Call it before JAX starts a backend (before the first array, device query
  or jitted call).

  Returns:
    ``True`` if the setting was made; ``False`` if it was turned off
    (``EOI_JAX_KEEP_FREED_MEMORY=0``), left to your own ``malloc`` settings,
    not available (not Linux with glibc), or too late (a JAX backend has
    started).

  Example:
    >>> from eoi_jax.training import host_memory
    >>> host_memory.keep_freed_memory()  # doctest: +SKIP
    True
  """
  if config.turned_off("EOI_JAX_KEEP_FREED_MEMORY"):
    return False
  if any(name in os.environ for name in _USER_SETTINGS):
    return False
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  if _backend_started():
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  mallopt.restype = ctypes.c_int
  # mallopt returns 1 on success.
  return all(mallopt(param, value) == 1 for param, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)))
