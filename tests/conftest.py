import os

# The suite is compile-bound (hundreds of small programs, each run a few
# times): at XLA's backend optimisation level 0 the CPU compiles them about
# twice as fast. The programs and their results are the same up to float
# rounding; only the generated machine code is less optimised. Subprocesses
# (the command-line tests) inherit it. EOI_JAX_TEST_XLA_OPTIMIZE=1 keeps the
# default level.
if os.environ.get("EOI_JAX_TEST_XLA_OPTIMIZE", "0") != "1":
  _flags = os.environ.get("XLA_FLAGS", "")
  if "xla_backend_optimization_level" not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} --xla_backend_optimization_level=0".strip()

import jax  # noqa: E402  (after XLA_FLAGS: the backend reads them when it starts)
import pytest  # noqa: E402

# Eight simulated CPU devices, so sharded code paths run in every test
# session (set before any backend starts).
jax.config.update("jax_num_cpu_devices", 8)


@pytest.fixture
def x64():
  """Enables float64 for one test and restores the previous setting."""
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", previous)
