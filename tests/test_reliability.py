"""Reliability: training must not crash the interpreter."""

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
import sys
import jax
jax.config.update("jax_num_cpu_devices", 8)
from eoi_jax import data, train
from eoi_jax.config import make_config
if len(sys.argv) > 1:
  train.MAX_STEPS_IN_FLIGHT = int(sys.argv[1])
config = make_config("mnist_mlp", dataset="synthetic", init="dense", depth=3, width=512,
                     epochs=1, batch_size=64, quiet=True, checkpoint=False, run_dir="unused")
(x, y), (tx, ty) = data.datasets.synthetic(num_train=64, num_test=600 * 64)
info = data.INFO["synthetic"]
dataset = data.Dataset(data.Split(x, y), data.Split(x[:0], y[:0]), data.Split(tx, ty), info)
trainer = train.Trainer(config, dataset=dataset)
out = trainer.evaluate("test")
print("EVALUATED", trainer.eval_loaders["test"].steps_per_epoch, out["test_loss"] > 0)
"""


def test_many_queued_collective_steps_do_not_abort():
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_cpu_collective_call_warn_stuck_timeout_seconds=10 "
                       "--xla_cpu_collective_call_terminate_timeout_seconds=20")
  done = subprocess.run([sys.executable, "-c", MANY_EVAL_STEPS], env=env, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "EVALUATED 600 True" in done.stdout
