"""K runs in one vmapped step against the same K runs one after another.

For the 7-layer MLP (784-100x6-10) and the 1000-layer tanh MLP (width 128),
EOI at density 0.1 (each run its own seed), batch 128, SGD + Nesterov + L2,
this times on one device, side by side in one process:

* sequential: the training step of one run
  (:func:`eoi_jax.training.train.train_step`, jitted, state donated), steps/s;
* together: K runs in one step (:func:`eoi_jax.training.multirun.runs_train_step`:
  the same step vmapped over stacked states and K batches, as
  :func:`eoi_jax.training.multirun.train_runs` runs them; every run gets a
  batch of its own shape), steps/s.

Training K runs for N steps costs ``K N / sequential`` seconds one after
another and ``N / together`` side by side, so the printed ratio
``K * together / sequential`` is the throughput gain of training them
together (1.0: no gain; below 1: a loss). Where K exceeds the runs per step the
sweep runner (:func:`eoi_jax.training.sweep.run_sweep`, ``eoi-jax sweep``)
puts together by default on the device
(:func:`eoi_jax.training.multirun.default_runs_per_step`: 16 on CPUs), the
ratio of training the K runs as it does, in groups one after another, is
measured too. Compile times are printed apart.

Usage: python -m benchmarks.multirun [--steps 20] [--cases mlp7:1,4,16,64 mlp1000:1,6,18]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from eoi_jax.training import data, multirun, train
from eoi_jax.training.config import make_config

try:
  from benchmarks._timing import markdown_table
except ImportError:
  from _timing import markdown_table

MODELS = {
    "mlp7": ("MLP 784-100x6-10", dict(depth=7, width=100)),
    "mlp1000": ("MLP 1000 x 128", dict(depth=1000, width=128, activation="tanh")),
}
INFO = data.SPECS["mnist"].info


def _states(key: str, seeds, batch):
  label, overrides = MODELS[key]
  one = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)),
                                   jax.P())
  built = [train.create_train_state(
      make_config("mnist_mlp", density=0.1, seed=s, quiet=True, checkpoint=False, devices=1,
                  run_dir="unused", **overrides),
      INFO, (data.normalize(batch.images, INFO), batch.labels), 100, one) for s in seeds]
  return built[0][0], [b[1] for b in built]


def _rate(step, state, batches, sums, steps: int):
  """``(compile_s, steps/s)``: the first call (compiles) apart, 2 s of warm-up
  steps, then ``steps`` timed calls."""
  start = time.perf_counter()
  state, sums = step(state, batches[0], sums)
  jax.block_until_ready(sums)
  compile_s = time.perf_counter() - start
  bounded = train.BoundedSteps()
  warm_until = time.perf_counter() + 2.0  # the first steps after a compile run slow on CPU
  while time.perf_counter() < warm_until:
    state, sums = step(state, batches[1], sums)
    bounded.push(sums)
  jax.block_until_ready(sums)  # steps in flight bounded as in the trainer
  start = time.perf_counter()
  for i in range(steps):
    state, sums = step(state, batches[(i + 1) % len(batches)], sums)
    bounded.push(sums)
  jax.block_until_ready(sums)
  return compile_s, steps / (time.perf_counter() - start)


def measure(key: str, ks, steps: int):
  (x, y), _ = data.synthetic(128 * 4, 8, INFO.image_shape, INFO.num_classes)
  batches = [data.Batch(jnp.asarray(x[i * 128:(i + 1) * 128]), jnp.asarray(y[i * 128:(i + 1) * 128]),
                        jnp.ones(128, jnp.float32)) for i in range(4)]
  spec, (state,) = _states(key, [0], batches[0])
  single = jax.jit(functools.partial(train.train_step, spec), donate_argnums=(0,))
  seq_compile, sequential = _rate(single, state, batches, train.zero_metrics(), steps)
  def together_rate(k):
    spec, states = _states(key, list(range(k)), batches[0])
    stacked = multirun.stack_runs(states)
    run_batches = [jax.tree.map(lambda a: jnp.broadcast_to(a, (k,) + a.shape), b)
                   for b in batches]
    zeros = multirun.stack_runs([train.zero_metrics()] * k)
    return _rate(multirun.runs_train_step(spec), stacked, run_batches, zeros,
                 max(steps // 2, 3))

  cap = multirun.default_runs_per_step()
  rows = []
  for k in ks:
    compile_s, together = together_rate(k)
    ratio = k * together / sequential
    grouped = ratio
    if cap is not None and k > cap:
      # The sweep runner trains the K runs as groups of at most `cap`, one
      # group after another: N steps of all K cost sum(N / rate of each group).
      sizes = [cap] * (k // cap) + ([k % cap] if k % cap else [])
      rates = {g: together_rate(g)[1] for g in set(sizes)}
      grouped = k / sum(1.0 / rates[g] for g in sizes) / sequential
    rows.append((MODELS[key][0], k, f"{sequential:.1f}", f"{together:.2f}", f"{ratio:.2f}",
                 f"{grouped:.2f}", f"{seq_compile:.1f}", f"{compile_s:.1f}"))
    print(f"{key} K={k}: sequential {sequential:.1f} steps/s, together {together:.2f} steps/s, "
          f"ratio {ratio:.2f}, as the sweep groups them {grouped:.2f}", file=sys.stderr,
          flush=True)
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--cases", nargs="+", default=["mlp7:1,4,16,64", "mlp1000:1,6,18"],
                      help="MODEL:K,K,... with MODEL in " + ", ".join(MODELS))
  args = parser.parse_args(argv)
  rows = []
  for case in args.cases:
    key, ks = case.split(":")
    rows += measure(key, [int(k) for k in ks.split(",")], args.steps)
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
  cap = multirun.default_runs_per_step()
  print(markdown_table(["model", "K", "sequential steps/s", "together steps/s",
                        "throughput ratio, one step of K",
                        f"ratio as the sweep groups them (at most {cap or 'K'} per step)",
                        "compile 1 run (s)", "compile K runs (s)"], rows))


if __name__ == "__main__":
  main()
