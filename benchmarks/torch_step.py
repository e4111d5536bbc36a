"""Our jitted training step against the same step in PyTorch, side by side.

The paper's step, as its authors' PyTorch code runs it: an ``nn.Linear``
stack with tanh, softmax cross-entropy, SGD with Nesterov momentum 0.9 and
coupled L2 (``weight_decay`` added to the gradient), and the masks re-applied
to the weights after the step. Ours is ``eoi_jax.training.train.train_step``
(EOI-initialised, ``static_sparse`` masking, the state donated) on the same
shapes: the 7-layer MLP (784-100x6-10, d=0.1) and the 1000-layer MLP
(784-128, 998 x 128x128, 128-10, d=0.125), batch 128, float32.

Both run in this process on the same device (the CPU, or a GPU when both
frameworks see one), in alternating blocks of steps so that a noisy machine
slows both alike; the table gives the median milliseconds per step of each
and their ratio (ours / PyTorch: below 1 means ours is faster). PyTorch uses
its default thread count. Skipped, with a message, when ``torch`` is not
installed (``pip install torch``; it is not a dependency of eoi-jax).

Usage: python -m benchmarks.torch_step [--models mlp7 mlp1000] [--blocks 5] [--steps 40]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import jax
import numpy as np

from eoi_jax.training import data, train
from eoi_jax.training.config import make_config

try:
  from benchmarks._timing import host_memory_as_the_trainer, markdown_table
except ImportError:
  from _timing import host_memory_as_the_trainer, markdown_table

CASES = {
    # name: (label, config preset, steps per block relative to --steps)
    "mlp7": ("MLP 784-100x6-10, d=0.1", dict(base="mnist_mlp", depth=7, width=100, density=0.1),
             1.0),
    "mlp1000": ("MLP 1000 x 128, d=0.125", dict(base="mnist_mlp_1000"), 0.1),
}
BATCH = 128


def _jax_stepper(config):
  info = data.SPECS["mnist"].info
  (x, y), _ = data.synthetic(2048, 8, info.image_shape, info.num_classes)
  mesh = train.make_mesh(1)
  replicated = jax.sharding.NamedSharding(mesh, jax.P())
  batches = list(data.Loader(data.Split(x, y), BATCH, mesh, train=True).epoch(0))
  spec, state, _ = train.create_train_state(
      config, info, (data.normalize(batches[0].images, info), batches[0].labels), 16, replicated)
  step = jax.jit(functools.partial(train.train_step, spec), donate_argnums=(0,))
  box = {"state": state, "sums": jax.device_put(train.zero_metrics(), replicated), "i": 0}

  def run(steps: int) -> None:
    state, sums = box["state"], box["sums"]
    for _ in range(steps):
      state, sums = step(state, batches[box["i"] % len(batches)], sums)
      box["i"] += 1
    jax.block_until_ready(sums)
    box["state"], box["sums"] = state, sums

  return run


def _torch_stepper(config, torch):
  device = "cuda" if jax.devices()[0].platform == "gpu" and torch.cuda.is_available() else "cpu"
  widths = [784] + [config.width] * (config.depth - 1) + [10]
  layers = []
  for a, b in zip(widths[:-1], widths[1:]):
    layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
  model = torch.nn.Sequential(*layers[:-1]).to(device)
  generator = torch.Generator().manual_seed(0)
  masks = [(torch.rand(m.weight.shape, generator=generator) < config.density).to(device)
           for m in model if isinstance(m, torch.nn.Linear)]
  weights = [m.weight for m in model if isinstance(m, torch.nn.Linear)]
  with torch.no_grad():
    for w, m in zip(weights, masks):
      w.mul_(m)
  opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                        nesterov=True, weight_decay=config.weight_decay)
  rng = np.random.default_rng(0)
  xs = [torch.from_numpy(rng.standard_normal((BATCH, 784), np.float32)).to(device)
        for _ in range(8)]
  ys = [torch.from_numpy(rng.integers(0, 10, BATCH)).to(device) for _ in range(8)]
  box = {"i": 0}

  def run(steps: int) -> None:
    for _ in range(steps):
      i = box["i"] % len(xs)
      opt.zero_grad(set_to_none=True)
      torch.nn.functional.cross_entropy(model(xs[i]), ys[i]).backward()
      opt.step()
      with torch.no_grad():
        for w, m in zip(weights, masks):
          w.mul_(m)
      box["i"] += 1
    if device == "cuda":
      torch.cuda.synchronize()

  return run


def _per_step(run, steps: int) -> float:
  start = time.perf_counter()
  run(steps)
  return (time.perf_counter() - start) / steps


def time_case(key: str, blocks: int, steps: int, torch):
  label, preset, scale = CASES[key]
  preset = dict(preset)
  config = make_config(preset.pop("base"), batch_size=BATCH, quiet=True, checkpoint=False,
                       devices=1, run_dir="unused", **preset)
  ours, theirs = _jax_stepper(config), _torch_stepper(config, torch)
  steps = max(3, int(steps * scale))
  ours(2)  # compile and warm up
  theirs(2)
  ours_s, theirs_s = [], []
  for _ in range(blocks):
    ours_s.append(_per_step(ours, steps))
    theirs_s.append(_per_step(theirs, steps))
  a, b = float(np.median(ours_s)), float(np.median(theirs_s))
  return (label, steps * blocks, f"{a * 1e3:.2f}", f"{b * 1e3:.2f}", f"{a / b:.2f}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
  parser.add_argument("--blocks", type=int, default=5, help="alternating blocks per framework")
  parser.add_argument("--steps", type=int, default=40,
                      help="steps per block (a tenth of it for the 1000-layer MLP)")
  args = parser.parse_args(argv)
  memory = host_memory_as_the_trainer()
  try:
    import torch
  except ImportError:
    print("torch is not installed: nothing to compare against (pip install torch)")
    return 0
  print(f"platform: {jax.devices()[0].platform}; JAX {jax.__version__}, "
        f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads); {memory}", flush=True)
  rows = []
  for key in args.models:
    rows.append(time_case(key, args.blocks, args.steps, torch))
    print(rows[-1], flush=True)
  print()
  print(markdown_table(["model (batch 128)", "steps each", "ours ms/step", "PyTorch ms/step",
                        "ours / PyTorch"], rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
