"""The 1000-layer MLP's training step against its FLOP limit and PyTorch, in one run.

The step is ``eoi_jax.training.train.train_step`` on the paper's 1000-layer
tanh MLP (784-128, 998 x 128-128, 128-10; EOI at density 0.125; batch 128;
SGD with Nesterov momentum, coupled L2, ``static_sparse`` masks; the state
donated). Its *limit* is its matmul FLOPs (forward, and backward to every
weight and hidden activation) at this machine's matmul throughput for the
step's own matmul shape (``128 x 128 @ 128 x 128``, chained 998 times as the
layers are, in the fastest of the layouts a layer can use), measured in
every block beside the steps; each block's step time is divided by that
block's limit and the table gives the median ratio. The throughput of one
large ``2048^3`` GEMM is measured likewise, with the limit it would give: a
bound no 128-wide layer reaches on a CPU (two cores share the large GEMM; a
small matmul runs on one). Timed side by side, in alternating blocks:

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
  from benchmarks._timing import host_memory_as_the_trainer, markdown_table
except ImportError:
  import torch_step
  from _timing import host_memory_as_the_trainer, markdown_table

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


def matmul_timers() -> dict:
  """Zero-argument callables, each returning the FLOP/s of one timed run: the
  step's matmul shape chained over the layers, in each layout a layer's
  matmul can take (``h k`` on a ``(batch, w)`` carry, ``k^T h^T`` on a
  ``(w, batch)`` carry as the trainer's forward pass runs, ``h k^T``; the
  fastest counts), and a large GEMM."""
  kernels = jax.random.normal(jax.random.key(0), (HIDDEN, WIDTH, WIDTH)) / np.sqrt(WIDTH)
  x = jax.random.normal(jax.random.key(1), (BATCH, WIDTH))
  layouts = [(lambda h, k: h @ k, x), (lambda h_t, k: k.T @ h_t, x.T),
             (lambda h, k: h @ k.T, x)]
  chains = [(jax.jit(lambda x, ks, f=f: jax.lax.scan(lambda h, k: (f(h, k), None), x, ks)[0]),
             start) for f, start in layouts]
  big = jax.random.normal(jax.random.key(2), (2048, 2048))
  gemm = jax.jit(lambda a: a @ a)
  chain_flops = 2 * BATCH * WIDTH * WIDTH * HIDDEN
  return {"chained 128x128 @ 128x128":
          lambda: max(chain_flops / _timed(lambda c=c, s=s: c(s, kernels), repeats=2)
                      for c, s in chains),
          "2048^3 GEMM": lambda: 2 * 2048 ** 3 / _timed(lambda: gemm(big), repeats=2)}


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
  memory = host_memory_as_the_trainer()
  config = make_config("mnist_mlp_1000", batch_size=BATCH, quiet=True, checkpoint=False,
                       devices=1, run_dir="unused")
  print(f"platform: {jax.devices()[0].platform}, JAX {jax.__version__}; {memory}", flush=True)
  timers = matmul_timers()
  variants = {"ours": torch_step._jax_stepper(config), "autodiff": _autodiff(config)}
  try:
    import torch

    variants["pytorch"] = torch_step._torch_stepper(config, torch)
    print(f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads)", flush=True)
  except ImportError:
    print("torch is not installed: no PyTorch column (pip install torch)")
  for run in variants.values():
    run(2)  # compile and warm up
  # The throughputs are measured in every block beside the steps, so that the
  # machine's drift moves a step and its limit alike; ratios are per block.
  times = {name: [] for name in variants}
  rates = {name: [] for name in timers}
  names = list(variants)
  for block in range(args.blocks):
    for name, timer in timers.items():
      rates[name].append(timer())
    for name in names[block % len(names):] + names[:block % len(names)]:
      start = time.perf_counter()
      variants[name](args.steps)
      times[name].append((time.perf_counter() - start) / args.steps)
  flops = step_flops()
  median = {name: float(np.median(t)) for name, t in times.items()}
  chain_rates = np.array(rates["chained 128x128 @ 128x128"])
  gemm_rates = np.array(rates["2048^3 GEMM"])
  limit = flops / float(np.median(chain_rates))
  gemm_limit = flops / float(np.median(gemm_rates))

  def per_block(name, rates):  # the median over blocks of step time / that block's limit
    return float(np.median(np.array(times[name]) * rates / flops))

  def against_pytorch(name):  # the median over blocks of step time / PyTorch's
    return float(np.median(np.array(times[name]) / np.array(times["pytorch"])))

  print()
  print(markdown_table(["matmul throughput", "GFLOP/s (median over blocks)", "range"],
                       [(k, f"{np.median(v) / 1e9:.1f}",
                         f"{min(v) / 1e9:.1f}-{max(v) / 1e9:.1f}") for k, v in rates.items()]))
  print()
  print(f"step FLOPs (matmuls): {flops / 1e9:.2f} G; limit {limit * 1e3:.0f} ms "
        f"(at the step's matmul shape), {gemm_limit * 1e3:.0f} ms at the large GEMM's rate")
  print()
  rows = [(name, f"{median[name] * 1e3:.0f}", f"{per_block(name, chain_rates):.2f}",
           f"{per_block(name, gemm_rates):.2f}",
           f"{against_pytorch(name):.2f}" if "pytorch" in median else "-")
          for name in variants]
  print(markdown_table(["step (batch 128)", "ms/step (median)", "x limit", "x GEMM limit",
                        "x PyTorch"], rows))
  verdict = per_block("ours", chain_rates) <= 1.5 and (
      "pytorch" not in median or against_pytorch("ours") <= 1.0)
  print(f"\ngoal (<= 1.5 x limit{', <= PyTorch' if 'pytorch' in median else ''}): "
        f"{'met' if verdict else 'not met'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
