"""Timing helpers shared by the benchmarks: compile apart, medians of runs."""

from __future__ import annotations

import time

import jax
import numpy as np

from eoi_jax.training import host_memory


def host_memory_as_the_trainer() -> str:
  """Sets host memory as the ``eoi-jax`` command does
  (:func:`eoi_jax.training.host_memory.keep_freed_memory`; call it before JAX
  starts) and returns a line saying what is in effect, for the output."""
  if host_memory.keep_freed_memory():
    return "host memory: freed memory kept for reuse, as the eoi-jax command runs"
  return ("host memory: the system's malloc settings (EOI_JAX_KEEP_FREED_MEMORY=0, your own "
          "MALLOC_* settings, not glibc, or JAX already started)")


def compile_timed(fn, *args):
  """Jits and compiles ``fn`` for ``args``: ``(compiled, compile_seconds)``,
  after one warm-up call of the compiled function."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  seconds = time.perf_counter() - start
  jax.block_until_ready(compiled(*args))
  return compiled, seconds


def alternating_times(calls, blocks: int = 5):
  """Times several calls side by side: each block runs every call once, in
  turn, so the machine's drift hits them alike; the order rotates from block
  to block, so no call always follows the same one (a call right after a
  memory-heavy one runs slower on a CPU).

  Args:
    calls: ``{name: (compiled, args)}``.
    blocks: number of blocks.

  Returns:
    ``{name: [seconds per block]}``.
  """
  times = {name: [] for name in calls}
  names = list(calls)
  for block in range(blocks):
    for name in names[block % len(names):] + names[:block % len(names)]:
      compiled, args = calls[name]
      start = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      times[name].append(time.perf_counter() - start)
  return times


def median_ratio(numerator, denominator) -> float:
  """Median over blocks of the per-block ratio of two :func:`alternating_times` lists."""
  return float(np.median(np.asarray(numerator) / np.asarray(denominator)))


def markdown_table(header, rows) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
  return "\n".join(lines)
