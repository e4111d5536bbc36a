"""The 1000-layer MLP's training step against its FLOP limit and PyTorch, in one run.

The step is ``eoi_jax.training.train.train_step`` on the paper's 1000-layer
tanh MLP (784-128, 998 x 128-128, 128-10; EOI at density 0.125; batch 128;
SGD with Nesterov momentum, coupled L2, ``static_sparse`` masks; the state
donated). Its *limit* is its matmul FLOPs (forward, and backward to every
weight and hidden activation) at this machine's matmul throughput for the
step's own matmul shape (``128 x 128 @ 128 x 128``, chained 998 times as the
layers are), measured in this run. The throughput of one large ``2048^3``
GEMM is printed beside it, with the limit it would give: a bound no
128-wide layer reaches on a CPU (two cores share the large GEMM; a small
matmul runs on one). Timed side by side, in alternating blocks:

* ``ours``: the step as the trainer runs it (the hidden stack's hand-written
  backward pass, :func:`eoi_jax.training.models.dense_stack`);
* ``autodiff``: the same step differentiating the scanned stack by autodiff
  (as before the hand-written pass);
* ``pytorch``: the paper's step in PyTorch (``benchmarks/torch_step.py``),
  when ``torch`` is installed.

Goal (2-core CPU): ours <= 1.5 x the limit, and not slower than PyTorch.

Usage: python -m benchmarks.deep_mlp_step [--blocks 5] [--steps 4]
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from eoi_jax.training import models
from eoi_jax.training.config import make_config

try:
  from benchmarks import torch_step
  from benchmarks._timing import markdown_table
except ImportError:
  import torch_step
  from _timing import markdown_table

BATCH, WIDTH, HIDDEN, INPUTS, CLASSES = 128, 128, 998, 784, 10


def step_flops() -> float:
  """Matmul FLOPs of one training step: the forward pass, then for every
  layer the weight gradient and (but for the first layer) the input gradient."""
  shapes = [(INPUTS, WIDTH)] + [(WIDTH, WIDTH)] * HIDDEN + [(WIDTH, CLASSES)]
  forward = sum(2 * BATCH * a * b for a, b in shapes)
  weight_grads = forward
  input_grads = forward - 2 * BATCH * INPUTS * WIDTH
  return float(forward + weight_grads + input_grads)


def _timed(fn, repeats: int = 5) -> float:
  jax.block_until_ready(fn())
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best


def matmul_throughput() -> dict:
  """FLOP/s of the step's matmul shape chained over the layers, and of a large GEMM."""
  kernels = jax.random.normal(jax.random.key(0), (HIDDEN, WIDTH, WIDTH)) / np.sqrt(WIDTH)
  x = jax.random.normal(jax.random.key(1), (BATCH, WIDTH))
  chain = jax.jit(lambda x, ks: jax.lax.scan(lambda h, k: (h @ k, None), x, ks)[0])
  big = jax.random.normal(jax.random.key(2), (2048, 2048))
  gemm = jax.jit(lambda a: a @ a)
  return {"chained 128x128 @ 128x128": 2 * BATCH * WIDTH * WIDTH * HIDDEN /
          _timed(lambda: chain(x, kernels)),
          "2048^3 GEMM": 2 * 2048 ** 3 / _timed(lambda: gemm(big))}


def _autodiff(run_config):
  """A stepper like ``torch_step._jax_stepper`` whose stack is differentiated by autodiff."""
  original = models.use_explicit_backward
  models.use_explicit_backward = lambda model: None
  try:
    return torch_step._jax_stepper(run_config)
  finally:
    models.use_explicit_backward = original


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--blocks", type=int, default=5, help="alternating blocks per variant")
  parser.add_argument("--steps", type=int, default=4, help="steps per block")
  args = parser.parse_args(argv)
  config = make_config("mnist_mlp_1000", batch_size=BATCH, quiet=True, checkpoint=False,
                       devices=1, run_dir="unused")
  print(f"platform: {jax.devices()[0].platform}, JAX {jax.__version__}", flush=True)
  throughput = matmul_throughput()
  limit = step_flops() / throughput["chained 128x128 @ 128x128"]
  gemm_limit = step_flops() / throughput["2048^3 GEMM"]
  variants = {"ours": torch_step._jax_stepper(config), "autodiff": _autodiff(config)}
  try:
    import torch

    variants["pytorch"] = torch_step._torch_stepper(config, torch)
    print(f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads)", flush=True)
  except ImportError:
    print("torch is not installed: no PyTorch column (pip install torch)")
  for run in variants.values():
    run(2)  # compile and warm up
  times = {name: [] for name in variants}
  names = list(variants)
  for block in range(args.blocks):
    for name in names[block % len(names):] + names[:block % len(names)]:
      start = time.perf_counter()
      variants[name](args.steps)
      times[name].append((time.perf_counter() - start) / args.steps)
  median = {name: float(np.median(t)) for name, t in times.items()}
  print()
  print(markdown_table(["matmul throughput", "GFLOP/s"],
                       [(k, f"{v / 1e9:.1f}") for k, v in throughput.items()]))
  print()
  print(f"step FLOPs (matmuls): {step_flops() / 1e9:.2f} G; limit {limit * 1e3:.0f} ms "
        f"(at the step's matmul shape), {gemm_limit * 1e3:.0f} ms at the large GEMM's rate")
  print()
  rows = [(name, f"{median[name] * 1e3:.0f}", f"{median[name] / limit:.2f}",
           f"{median[name] / gemm_limit:.2f}",
           f"{median[name] / median['pytorch']:.2f}" if "pytorch" in median else "-")
          for name in variants]
  print(markdown_table(["step (batch 128)", "ms/step (median)", "x limit", "x GEMM limit",
                        "x PyTorch"], rows))
  ours = median["ours"]
  verdict = ours <= 1.5 * limit and ("pytorch" not in median or ours <= median["pytorch"])
  print(f"\ngoal (<= 1.5 x limit{', <= PyTorch' if 'pytorch' in median else ''}): "
        f"{'met' if verdict else 'not met'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
