"""Training-step speed and compile time on this machine, 1 vs 8 devices.

For the 7x100 MLP, the 100- and 1000-layer MLPs (width 128, hidden layers
scanned) on MNIST-shaped inputs and ResNet-32 on CIFAR-shaped inputs, all
EOI-initialised at density 0.1, times the jitted training step
``eoi_jax.training.train.train_step`` (batch 128, SGD + Nesterov + L2, masks
applied, the state donated as in ``train_and_evaluate``):
compile time of the first step, then steps/s over a run of steps, on a mesh of
1 device and of 8 devices (simulated on CPU). Inputs are synthetic arrays of
the dataset's shape; the step is the same as on real data.

Usage: python -m benchmarks.train_speed [--steps 30] [--models mlp7 mlp100 ...]
"""

from __future__ import annotations

import argparse
import sys
import time

import jax

if __name__ == "__main__":
  jax.config.update("jax_num_cpu_devices", 8)

import functools

import numpy as np

from eoi_jax.training import data, train
from eoi_jax.training.config import make_config

try:
  from benchmarks._timing import markdown_table
except ImportError:
  from _timing import markdown_table

CASES = {
    "mlp7": ("MLP 784-100x6-10", "mnist", dict(model="mlp", depth=7, width=100)),
    "mlp100": ("MLP 100 x 128", "mnist", dict(model="mlp", depth=100, width=128)),
    "mlp1000": ("MLP 1000 x 128", "mnist", dict(model="mlp", depth=1000, width=128)),
    "resnet32": ("ResNet-32", "cifar10", dict(model="resnet32", activation="relu")),
}


def time_case(key: str, devices: int, steps: int):
  label, dataset, overrides = CASES[key]
  config = make_config("mnist_mlp", dataset=dataset, density=0.1, batch_size=128, quiet=True,
                       checkpoint=False, devices=devices, run_dir="unused", **overrides)
  info = data.SPECS[dataset].info
  (x, y), _ = data.synthetic(2048, 8, info.image_shape, info.num_classes)
  mesh = train.make_mesh(devices)
  replicated = jax.sharding.NamedSharding(mesh, jax.P())
  batches = list(data.Loader(data.Split(x, y), 128, mesh, train=True).epoch(0))
  spec, state, _ = train.create_train_state(
      config, info, (data.normalize(batches[0].images, info), batches[0].labels), 16,
      replicated)
  step = jax.jit(functools.partial(train.train_step, spec), donate_argnums=(0,))
  sums = jax.device_put(train.zero_metrics(), replicated)
  start = time.perf_counter()
  state, sums = step(state, batches[0], sums)
  jax.block_until_ready(sums)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for i in range(steps):
    state, sums = step(state, batches[(i + 1) % len(batches)], sums)
  jax.block_until_ready(sums)
  per_step = (time.perf_counter() - start) / steps
  return label, compile_s, per_step


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
  parser.add_argument("--devices", type=int, nargs="+", default=[1, 8])
  args = parser.parse_args(argv)
  print(f"platform: {jax.devices()[0].platform}, {len(jax.devices())} devices", flush=True)
  rows = []
  for key in args.models:
    for devices in args.devices:
      if devices > len(jax.devices()):
        continue
      steps = max(5, args.steps // (10 if key in ("mlp1000", "resnet32") else 1))
      label, compile_s, per_step = time_case(key, devices, steps)
      rows.append((label, devices, f"{compile_s:.1f}", f"{per_step * 1e3:.1f}",
                   f"{1 / per_step:.1f}", f"{128 / per_step:,.0f}"))
      print(rows[-1], flush=True)
  print()
  print(markdown_table(["model (batch 128)", "devices", "compile s", "ms/step", "steps/s",
                        "examples/s"], rows))


if __name__ == "__main__":
  sys.exit(main())
