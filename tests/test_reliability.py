"""Reliability: the test suite's own abort, and training under kills, damaged files and bad input."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Evaluates an MLP on 600 batches over 8 CPU devices, as the trainer's eval
# loop does; each eval step ends in an all-reduce over the devices. XLA:CPU
# deadlocks when hundreds of such programs are queued at once and aborts the
# process (SIGABRT) once a collective has waited past its termination timeout
# (shortened here, so that a regression fails in seconds rather than
# minutes). The trainer keeps at most MAX_STEPS_IN_FLIGHT steps queued; with
# no bound (pass a huge number as the argument) this script aborts.
MANY_EVAL_STEPS = """
import functools, sys
import jax
jax.config.update("jax_num_cpu_devices", 8)
import jax.numpy as jnp
from eoi_jax.training import data, train
from eoi_jax.training.config import make_config
if len(sys.argv) > 1:
  train.MAX_STEPS_IN_FLIGHT = int(sys.argv[1])
config = make_config("mnist_mlp", dataset="synthetic", init="dense", depth=3, width=512,
                     epochs=1, batch_size=64, quiet=True, checkpoint=False, run_dir="unused")
(x, y), _ = data.synthetic(num_train=600 * 64, num_test=8)
mesh = train.make_mesh(8)
replicated = jax.sharding.NamedSharding(mesh, jax.P())
loader = data.Loader(data.Split(x, y), 64, mesh, train=False)
spec, state, _ = train.create_train_state(
    config, data.SPECS["synthetic"].info, (jnp.zeros((64, 8, 8, 1)), jnp.zeros(64, jnp.int32)),
    600, replicated)
eval_fn = jax.jit(functools.partial(train.eval_step, spec))
zeros = jax.device_put(train.zero_metrics(), replicated)
out = train.evaluate(eval_fn, state, loader, "test", zeros)
print("EVALUATED", loader.steps_per_epoch, out["test_loss"] > 0)
"""


def test_many_queued_collective_steps_do_not_abort():
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_cpu_collective_call_warn_stuck_timeout_seconds=10 "
                       "--xla_cpu_collective_call_terminate_timeout_seconds=20")
  done = subprocess.run([sys.executable, "-c", MANY_EVAL_STEPS], env=env, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "EVALUATED 600 True" in done.stdout
