"""EOI initialisation speed against dense orthogonal (QR) initialisation.

Measures, in one run and on the same device:
  * median time of ``eoi_jax.sparse_orthogonal`` and of
    ``jax.nn.initializers.orthogonal()`` for square n x n kernels,
    n in {128, ..., 4096} and density in {0.05, 0.1, 0.5}, with compile time
    reported apart;
  * one call building all 1000 layers (128 x 128, density 0.125) of the
    1000-layer MLP (vmapped over keys) against 1000 dense orthogonal inits
    (also vmapped);
  * ``eoi_params`` initialising the whole 1000-layer MLP (target: well under
    a second after compile).

The EOI columns use the default path of the device (one rotation at a time
on CPUs, parallel rounds on accelerators); the "other path" columns time the
same matrices built the other way (``eoi_jax.givens.givens_orthogonal`` and
``givens_core`` with ``rounds=``), so both are measured on every device.

The variants of each case are timed in alternating blocks (each block calls
every variant once), so the machine's drift hits them alike; times are medians
over blocks, and EOI/dense is the median of the per-block ratios.

Prints markdown tables and the ratios EOI / dense. Targets on a 2-core CPU:
EOI(2048, 0.1) <= 0.1 x dense(2048); the 1000-layer stack <= 0.12 x the
dense stack; compile <= 0.3 s per distinct shape.

Usage: python -m benchmarks.init_speed [--sizes 128 256 ...] [--blocks 5]
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

import eoi_jax
from eoi_jax import allocation, givens

try:
  from benchmarks._timing import alternating_times, compile_timed, markdown_table, median_ratio
except ImportError:  # run as a script from the benchmarks folder
  from _timing import alternating_times, compile_timed, markdown_table, median_ratio


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512, 1024, 2048, 4096])
  parser.add_argument("--densities", type=float, nargs="+", default=[0.05, 0.1, 0.5])
  parser.add_argument("--blocks", type=int, default=5,
                      help="alternating blocks: each times every variant once")
  parser.add_argument("--layers", type=int, default=1000)
  args = parser.parse_args(argv)

  key = jax.random.key(0)
  dense_init = jax.nn.initializers.orthogonal()
  other_path = not givens.default_rounds()
  other = "rounds" if other_path else "one by one"
  print(f"devices: {jax.devices()}; EOI default path: "
        f"{'one by one' if other_path else 'rounds'}, other path: {other}")
  header = ["n", "density", "EOI ms", "dense orth ms", "EOI/dense", "EOI compile s",
            "dense compile s", f"EOI {other} ms", f"EOI {other} compile s"]
  rows = []
  for n in args.sizes:
    blocks = max(1, args.blocks if n < 4096 else min(args.blocks, 3))
    dense = compile_timed(lambda k: dense_init(k, (n, n), jnp.float32), key)
    for d in args.densities:
      eoi = compile_timed(
          functools.partial(lambda k, n, d: eoi_jax.sparse_orthogonal(k, (n, n), d), n=n, d=d),
          key)
      other_eoi = compile_timed(
          functools.partial(lambda k, n, d: givens.givens_orthogonal(
              k, n, n, d, rounds=other_path).matrix, n=n, d=d),
          key)
      times = alternating_times({"eoi": (eoi[0], (key,)), "dense": (dense[0], (key,)),
                                 "other": (other_eoi[0], (key,))}, blocks)
      rows.append((
          n, d, f"{np.median(times['eoi']) * 1e3:.1f}", f"{np.median(times['dense']) * 1e3:.1f}",
          f"{median_ratio(times['eoi'], times['dense']):.3f}", f"{eoi[1]:.2f}", f"{dense[1]:.2f}",
          f"{np.median(times['other']) * 1e3:.1f}", f"{other_eoi[1]:.2f}",
      ))
      print(markdown_table(header, rows[-1:]).splitlines()[-1], flush=True)

  print()
  print(markdown_table(header, rows))

  # The stack of the 1000-layer MLP's hidden layers, as the README's quick
  # start builds it (jax.vmap over keys), against 1000 dense orthogonal inits.
  layers = args.layers
  keys = jax.random.split(key, layers)
  eoi_stack = jax.vmap(lambda k: eoi_jax.sparse_orthogonal(k, (128, 128), 0.125, gain=1.0247))
  dense_stack = jax.vmap(lambda k: dense_init(k, (128, 128), jnp.float32))
  target, undo_above = givens.integer_targets(np.full(layers, 0.125), 128, 128)
  steps = givens.max_rotations(128, 128, 0.125)
  other_stack = jax.vmap(lambda k, t, u: givens.givens_core(
      k, 128, 128, t, u, steps, rounds=other_path).matrix)
  stacks = {"eoi": (compile_timed(eoi_stack, keys), (keys,)),
            "dense": (compile_timed(dense_stack, keys), (keys,)),
            "other": (compile_timed(other_stack, keys, target, undo_above),
                      (keys, target, undo_above))}
  times = alternating_times({name: (compiled, call_args)
                             for name, ((compiled, _), call_args) in stacks.items()},
                            args.blocks)
  compile_s = {name: seconds for name, ((_, seconds), _) in stacks.items()}
  print()
  print(markdown_table(
      ["stack", "EOI s", "dense orth s", "EOI/dense", "EOI compile s", "dense compile s",
       f"EOI {other} s", f"EOI {other} compile s"],
      [(f"{layers} x 128x128, d=0.125", f"{np.median(times['eoi']):.3f}",
        f"{np.median(times['dense']):.3f}", f"{median_ratio(times['eoi'], times['dense']):.3f}",
        f"{compile_s['eoi']:.2f}", f"{compile_s['dense']:.2f}", f"{np.median(times['other']):.3f}",
        f"{compile_s['other']:.2f}")],
  ))

  # The whole-network pipeline (allocator + EOI + masks + summary) on the
  # 1000-layer MLP's params: first call (with compiles), then median of repeats.
  params = {"input_layer": {"kernel": jnp.zeros((784, 128)), "bias": jnp.zeros((128,))},
            "hidden_layers": {"kernel": jnp.zeros((layers - 2, 128, 128)),
                              "bias": jnp.zeros((layers - 2, 128))},
            "output_layer": {"kernel": jnp.zeros((128, 10)), "bias": jnp.zeros((10,))}}
  stacked = {"hidden_layers/kernel": 1}

  def network_init(seed):
    dens = allocation.uniform(params, 0.125, stacked=stacked)
    out = eoi_jax.eoi_params(jax.random.key(seed), params, dens, gain=1.0247, bias_std=0.00448,
                             stacked=stacked)
    return jax.block_until_ready(out.params)

  start = time.perf_counter()
  network_init(0)
  first = time.perf_counter() - start
  runs = []
  for seed in range(1, args.blocks + 1):
    start = time.perf_counter()
    network_init(seed)
    runs.append(time.perf_counter() - start)
  print()
  print(markdown_table(["eoi_params, whole network", "first call s (with compile)", "median s"],
                       [(f"MLP 784-128, {layers - 2} x 128x128, 128-10, d=0.125",
                         f"{first:.2f}", f"{float(np.median(runs)):.3f}")]))


if __name__ == "__main__":
  main()
