"""Freed host memory kept for reuse (eoi_jax.training.host_memory): a jitted
program's large temporary buffer stops costing fresh pages every call, in
the eoi-jax command and wherever the setting is made; it steps aside when
turned off, when malloc is set by the user, and once JAX has started."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the setting is glibc's malloc's")

# A program whose temporary buffer (the scan's 24 stacked 4 MiB carries, 96 MiB)
# is over every size glibc serves from a heap unless told otherwise. Prints the
# setting's result and the median page faults of a call after five warm-up
# calls (the median: while the heap settles, a call may still extend it).
_PROBE = """
import resource, statistics
{setup}
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jax.lax.scan(lambda c, _: (jnp.sin(c), c), x, None,
                                   length=24)[1].sum(axis=0))
x = jnp.ones((1024, 1024))
for _ in range(5):
  f(x).block_until_ready()
faults = []
for _ in range(9):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, statistics.median(faults))
"""
_TEMP_PAGES = 24 * 1024 * 1024 * 4 // 4096

_SETUPS = {
    "none": "applied = None",
    "direct": "from eoi_jax.training import host_memory\n"
              "applied = host_memory.keep_freed_memory()",
    "cli": "from eoi_jax.training import cli\n"
           "cli._setup_jax(cli.build_parser(['train']).parse_args(['train']))\n"
           "applied = None",
    "after_jax": "import jax; jax.devices()\n"
                 "from eoi_jax.training import host_memory\n"
                 "applied = host_memory.keep_freed_memory()",
}


def _probe(setup: str, **env) -> tuple[str, float]:
  environment = {k: v for k, v in os.environ.items()
                 if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
  environment.update(PYTHONPATH=str(REPO), EOI_JAX_COMPILATION_CACHE="0", **env)
  done = subprocess.run([sys.executable, "-c", _PROBE.format(setup=_SETUPS[setup])],
                        env=environment, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  applied, faults = done.stdout.split()[-2:]
  return applied, float(faults)


def test_a_large_temporary_buffer_costs_fresh_pages_every_call_unless_kept():
  _, system = _probe("none")
  assert system >= _TEMP_PAGES / 2  # the buffer is mapped afresh each call
  applied, kept = _probe("direct")
  assert applied == "True"
  assert kept <= _TEMP_PAGES / 20, (kept, system)


def test_the_command_line_keeps_freed_memory():
  _, kept = _probe("cli")
  assert kept <= _TEMP_PAGES / 20


@pytest.mark.parametrize("setup, env", [
    ("direct", {"EOI_JAX_KEEP_FREED_MEMORY": "0"}),
    ("direct", {"MALLOC_ARENA_MAX": "4"}),
    ("after_jax", {}),
], ids=["turned_off", "users_malloc_settings", "jax_already_started"])
def test_the_setting_steps_aside(setup, env):
  applied, faults = _probe(setup, **env)
  assert applied == "False"
  assert faults >= _TEMP_PAGES / 2
