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

The two are timed in alternating blocks (``--blocks``), so the machine's
drift hits both alike; the ratio is the median over blocks.

Usage: python -m benchmarks.multirun [--steps N] [--blocks 3] [--cases mlp7:1,4,16,64 mlp1000:1,6,18]
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


class _Stepper:
  """A jitted step with its state, batches and metric sums: ``compile_s`` is
  its first call's time; :meth:`rate` times blocks of steps."""

  def __init__(self, step, state, batches, sums):
    self.step, self.state, self.batches, self.sums = step, state, batches, sums
    start = time.perf_counter()
    self._run(1)
    self.compile_s = time.perf_counter() - start
    warm_until = time.perf_counter() + 2.0  # the first steps after a compile run slow on CPU
    while time.perf_counter() < warm_until:
      self._run(1)

  def _run(self, steps: int):
    bounded = train.BoundedSteps()  # steps in flight bounded as in the trainer
    for i in range(steps):
      self.state, self.sums = self.step(self.state, self.batches[i % len(self.batches)],
                                        self.sums)
      bounded.push(self.sums)
    jax.block_until_ready(self.sums)

  def rate(self, steps: int) -> float:
    """Steps per second over ``steps`` steps."""
    start = time.perf_counter()
    self._run(steps)
    return steps / (time.perf_counter() - start)


def measure(key: str, ks, steps: int, blocks: int):
  (x, y), _ = data.synthetic(128 * 4, 8, INFO.image_shape, INFO.num_classes)
  batches = [data.Batch(jnp.asarray(x[i * 128:(i + 1) * 128]), jnp.asarray(y[i * 128:(i + 1) * 128]),
                        jnp.ones(128, jnp.float32)) for i in range(4)]
  spec, (state,) = _states(key, [0], batches[0])
  single = _Stepper(jax.jit(functools.partial(train.train_step, spec), donate_argnums=(0,)),
                    state, batches, train.zero_metrics())

  def together(k):
    spec, states = _states(key, list(range(k)), batches[0])
    run_batches = [jax.tree.map(lambda a: jnp.broadcast_to(a, (k,) + a.shape), b)
                   for b in batches]
    return _Stepper(multirun.runs_train_step(spec), multirun.stack_runs(states), run_batches,
                    multirun.stack_runs([train.zero_metrics()] * k))

  def ratios(k, stepper):
    """K x together / sequential in alternating blocks (the machine's drift
    hits both alike); the median over blocks, and the median rates."""
    seq, tog = [], []
    for _ in range(blocks):
      seq.append(single.rate(steps))
      tog.append(stepper.rate(max(1, steps // k)))
    ratio = float(np.median([k * t / q for t, q in zip(tog, seq)]))
    return ratio, float(np.median(seq)), float(np.median(tog))

  cap = multirun.default_runs_per_step()
  rows = []
  for k in ks:
    stepper = together(k)
    ratio, sequential, rate = ratios(k, stepper)
    compile_k, grouped = stepper.compile_s, ratio
    del stepper  # frees the K runs' states before the groups are built
    if cap is not None and k > cap:
      # The sweep runner trains the K runs as groups of at most `cap`, one
      # group after another: N steps of all K cost the sum of each group's.
      sizes = [cap] * (k // cap) + ([k % cap] if k % cap else [])
      per_run_cost = {g: 1.0 / ratios(g, together(g))[0] for g in set(sizes)}
      grouped = k / sum(g * per_run_cost[g] for g in sizes)
    rows.append((MODELS[key][0], k, f"{sequential:.1f}", f"{rate:.2f}", f"{ratio:.2f}",
                 f"{grouped:.2f}", f"{single.compile_s:.1f}", f"{compile_k:.1f}"))
    print(f"{key} K={k}: sequential {sequential:.1f} steps/s, together {rate:.2f} steps/s, "
          f"ratio {ratio:.2f}, as the sweep groups them {grouped:.2f}", file=sys.stderr,
          flush=True)
  return rows


STEPS = {"mlp7": 1600, "mlp1000": 18}
"""Sequential steps per timed block (about 2-6 s on the 2-core CPU); a block
of K runs together takes ``steps // K`` steps."""


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=None,
                      help="sequential steps per block (default: per model, " + ", ".join(
                          f"{k} {v}" for k, v in STEPS.items()) + ")")
  parser.add_argument("--blocks", type=int, default=3,
                      help="alternating blocks of sequential and together steps per K")
  parser.add_argument("--cases", nargs="+", default=["mlp7:1,4,16,64", "mlp1000:1,6,18"],
                      help="MODEL:K,K,... with MODEL in " + ", ".join(MODELS))
  args = parser.parse_args(argv)
  rows = []
  for case in args.cases:
    key, ks = case.split(":")
    rows += measure(key, [int(k) for k in ks.split(",")], args.steps or STEPS[key], args.blocks)
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
  cap = multirun.default_runs_per_step()
  print(markdown_table(["model", "K", "sequential steps/s", "together steps/s",
                        "throughput ratio, one step of K",
                        f"ratio as the sweep groups them (at most {cap or 'K'} per step)",
                        "compile 1 run (s)", "compile K runs (s)"], rows))


if __name__ == "__main__":
  main()
