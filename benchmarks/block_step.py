"""Block-sparse training step against the dense masked step, side by side.

The *masked* step is the project's own static sparse training: dense
weights, dense optimizer state and dense matmuls, ``eoi_jax.static_sparse``
keeping the masked entries zero (the hidden stack with its hand-written
backward pass, as the trainer runs it). The *block* step trains the same
network compressed (:func:`eoi_jax.training.block_models.compress_mlp`):
the stored ``b x b`` blocks only, in parameters, gradients, optimizer state
and matmuls (:func:`eoi_jax.block_sparse.block_matmul`). Same masks (random
block masks at the density), same optimizer (SGD, Nesterov momentum 0.9,
coupled L2), batch 128, softmax cross-entropy, state donated.

Models:

* ``wide``: a 3-layer MLP 4096-4096-4096-4096 (tanh), every layer block-sparse;
* ``deep``: the 1000-layer MLP (784-128, 998 x 128x128, 128-10, tanh), its
  hidden stack block-sparse; the first and last layers keep element masks
  and stay dense in both steps. Block sizes whose block count per layer
  cannot come within 25% of a density (``b = 64, 128`` at width 128) are
  skipped, with the reason.

For each model and density the masked step and the block step at every
block size run in one process, in alternating blocks of steps (the order
rotating), so the machine's drift hits them alike; medians over blocks.
Memory: the bytes of parameters + optimizer state (momentum; the masked
step's masks, one byte per weight more, are not counted), from the trees,
and the compiled step's peak estimate from ``memory_analysis()`` (arguments
+ outputs + temporaries - aliased).

Goal (2-core CPU): at density 0.1, the wide MLP's block step >= 4 x faster
than the masked step, and its parameters + optimizer state <= 0.15 x the
dense bytes.

``--formulations`` times, for one 4096 x 4096 layer at density 0.1, the
forward + backward of the block matmul as the package runs it against the
alternatives tried (``--quick``: 1024 wide).

Usage: python -m benchmarks.block_step [--models wide deep] [--densities 0.05 0.1 0.25]
         [--blocks 16 32 64 128] [--rounds 5] [--steps 3] [--quick] [--formulations]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import eoi_jax
from eoi_jax import block_sparse, layers
from eoi_jax.counts import count_for_density
from eoi_jax.training import block_models, models

try:
  from benchmarks._timing import alternating_times, compile_timed, markdown_table
except ImportError:
  from _timing import alternating_times, compile_timed, markdown_table

BATCH = 128
MODELS = {
    # name: (label, in_features, classes, depth, width, block-sparse layers)
    "wide": ("MLP 3 x 4096", 4096, 4096, 3, 4096,
             ("input_layer", "hidden_layers", "output_layer")),
    "deep": ("MLP 1000 x 128", 784, 10, 1000, 128, ("hidden_layers",)),
}
QUICK = {"wide": ("MLP 3 x 256 (quick)", 256, 256, 3, 256,
                  ("input_layer", "hidden_layers", "output_layer")),
         "deep": ("MLP 10 x 128 (quick)", 784, 10, 10, 128, ("hidden_layers",))}


def realised_density(width: int, block: int, density: float) -> float:
  blocks = (width // block) ** 2
  return max(1, count_for_density(density, blocks)) / blocks


def tree_bytes(tree) -> int:
  return sum(leaf.nbytes for leaf in jax.tree.leaves(tree))


def peak_bytes(compiled) -> int | None:
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
             + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def optimizer(masks):
  return eoi_jax.static_sparse(optax.chain(optax.add_decayed_weights(1e-4),
                                           optax.sgd(0.01, momentum=0.9, nesterov=True)), masks)


def masks_of(mlp, spec, key, block: int, density: float):
  """Block masks for the block-sparse layers, element masks for the others."""
  block_layers = spec[5]
  kernel_masks = {}
  params = nnx.state(mlp, nnx.Param)
  for i, name in enumerate(("input_layer", "hidden_layers", "output_layer")):
    shape = getattr(mlp, name).kernel.shape
    k = jax.random.fold_in(key, i)
    kernel_masks[f"{name}/kernel"] = (
        block_sparse.random_block_mask(k, shape, block, density) if name in block_layers
        else jax.random.bernoulli(k, density, shape))
  return jax.tree_util.tree_map_with_path(
      lambda path, _: kernel_masks.get(layers.path_name(path)), params)


class Stepper:
  """A model's jitted, donated training step and its state; ``run()`` takes
  ``steps`` steps."""

  def __init__(self, model, masks, x, y, steps: int):
    tx = optimizer(masks)
    graphdef, params, other = nnx.split(model, nnx.Param, ...)

    def loss_fn(params, x, y):
      logits = nnx.merge(graphdef, params, other)(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(params, opt_state, x, y):
      grads = jax.grad(loss_fn)(params, x, y)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    # The step donates its own buffers (the masks in the optimizer state too).
    params = jax.tree.map(jnp.copy, params)
    opt_state = jax.tree.map(jnp.copy, tx.init(params))
    self.state_bytes = tree_bytes(params) + tree_bytes(opt_state.inner_state)
    start = time.perf_counter()
    self.batch = (x, y)  # arguments, not constants folded into the program
    self.compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, x, y).compile()
    self.compile_seconds = time.perf_counter() - start
    self.peak = peak_bytes(self.compiled)
    self.state = jax.block_until_ready(self.compiled(params, opt_state, x, y))  # warm-up
    self.steps = steps

  def run(self):
    for _ in range(self.steps):
      self.state = self.compiled(*self.state, *self.batch)
    return self.state


def compare(name: str, spec, density: float, blocks, rounds: int, steps: int) -> list:
  label, fan_in, classes, depth, width, _ = spec
  x = jax.random.normal(jax.random.key(1), (BATCH, fan_in))
  y = jax.random.randint(jax.random.key(2), (BATCH,), 0, classes)
  runs, info = {}, {}
  usable = []
  for block in blocks:
    realised = realised_density(width, block, density)
    if width % block or abs(realised / density - 1) > 0.25:
      print(f"  {label}: b={block} skipped at density {density} (a layer of {width // block}^2 "
            f"blocks keeps {realised:.3g} of them)", flush=True)
      continue
    usable.append(block)
  if not usable:
    return []
  for block in usable:
    mlp = models.MLP(fan_in, classes, depth=depth, width=width, rngs=nnx.Rngs(0))
    masks = masks_of(mlp, spec, jax.random.key(3), block, density)
    nnx.update(mlp, eoi_jax.apply_masks(nnx.state(mlp, nnx.Param), masks))
    if "masked" not in runs:  # one masked step per density: its cost does not depend on b
      dense = nnx.clone(mlp)
      models.use_explicit_backward(dense)
      runs["masked"] = Stepper(dense, masks, x, y, steps)
      info["masked"] = density
    model, block_masks = block_models.compress_mlp(mlp, masks, block, compress=spec[5])
    runs[f"b={block}"] = Stepper(model, block_masks, x, y, steps)
    info[f"b={block}"] = realised_density(width, block, density)
    del mlp, model
  for run_name, run in runs.items():
    print(f"  {label} d={density} {run_name}: compiled in {run.compile_seconds:.1f} s", flush=True)
  times = alternating_times({k: (run.run, ()) for k, run in runs.items()}, blocks=rounds)
  per_step = {k: float(np.median(v)) / steps for k, v in times.items()}
  masked = runs["masked"]
  rows = []
  for run_name, run in runs.items():
    speedup = per_step["masked"] / per_step[run_name]
    peak = "-" if run.peak is None else f"{run.peak / 2**20:.1f}"
    rows.append((label, run_name if run_name != "masked" else "masked (dense)",
                 f"{info[run_name]:.3g}", f"{per_step[run_name] * 1e3:.2f}", f"{speedup:.2f}",
                 f"{run.state_bytes / 2**20:.1f}", f"{run.state_bytes / masked.state_bytes:.3f}",
                 peak))
  return rows


# Formulations of x @ W tried for the block matmul, timed forward + backward
# on one layer. "segment_sum, block-major" is the package's.


def _coo_batch_major(x, blocks, layout):
  """Gather from x as (batch, in / b, b), einsum, segment sum, transpose back."""
  batch, b = x.shape[0], layout.block
  inputs = jnp.take(x.reshape(batch, -1, b), jnp.asarray(layout.gather_rows), axis=1,
                    mode="clip")
  products = jnp.einsum("nsc,scj->snj", inputs, blocks)
  out = jax.ops.segment_sum(products, jnp.asarray(layout.segment_cols), layout.grid[1],
                            indices_are_sorted=True)
  return jnp.swapaxes(out, 0, 1).reshape(batch, -1)


def _grouped_tables(layout):
  """Stored blocks grouped by output block column, each column padded to the
  most blocks of any column (padding reads an appended zero block)."""
  nbi, nbo = layout.grid
  rows, cols = layout.rows, layout.cols
  order = np.lexsort((rows, cols))
  counts = np.bincount(cols, minlength=nbo)
  k = max(1, counts.max())
  rank = np.arange(rows.size) - np.searchsorted(cols[order], cols[order], side="left")
  fwd_rows = np.zeros((nbo, k), np.int32)
  fwd_slots = np.full((nbo, k), rows.size, np.int32)
  fwd_rows[cols[order], rank], fwd_slots[cols[order], rank] = rows[order], order
  return fwd_rows, fwd_slots


def _grouped_padded(x, blocks, layout, tables):
  """Per output block column, its k input blocks gathered and summed by a
  reshape (no segment sum); the padding multiplies zero blocks."""
  fwd_rows, fwd_slots = tables
  nbo, k = fwd_rows.shape
  batch, b = x.shape[0], layout.block
  x_blocks = jnp.swapaxes(x.reshape(batch, -1, b), 0, 1)
  inputs = jnp.take(x_blocks, jnp.asarray(fwd_rows.reshape(-1)), axis=0, mode="clip")
  padded = jnp.concatenate([blocks, jnp.zeros((1, b, b), blocks.dtype)])
  weights = jnp.take(padded, jnp.asarray(fwd_slots.reshape(-1)), axis=0, mode="clip")
  out = jnp.einsum("snc,scj->snj", inputs, weights).reshape(nbo, k, batch, b).sum(1)
  return jnp.swapaxes(out, 0, 1).reshape(batch, -1)


def formulations(quick: bool, blocks, rounds: int) -> None:
  width, density = (1024, 0.1) if quick else (4096, 0.1)
  x = jax.random.normal(jax.random.key(0), (BATCH, width))
  kernel = jax.random.normal(jax.random.key(1), (width, width)) / np.sqrt(width)
  rows = []
  for block in blocks:
    mask = block_sparse.random_block_mask(jax.random.key(2), (width, width), block, density)
    w = block_sparse.compress(kernel, mask, block)
    layout = w.layout
    tables = _grouped_tables(layout)
    variants = {
        "segment_sum, block-major (package)":
            lambda x, b: block_sparse.block_matmul(x, block_sparse.BlockSparse(b, layout)),
        "segment_sum, batch-major": lambda x, b: _coo_batch_major(x, b, layout),
        "grouped, padded, reshape-sum": lambda x, b: _grouped_padded(x, b, layout, tables),
    }
    calls = {}
    for name, fn in variants.items():
      grad = jax.grad(lambda x, b, fn=fn: jnp.sum(jnp.tanh(fn(x, b))), (0, 1))
      calls[name] = (compile_timed(grad, x, w.blocks)[0], (x, w.blocks))
    dense = jax.grad(lambda x, k: jnp.sum(jnp.tanh(x @ k)), (0, 1))
    dense_kernel = block_sparse.decompress(w)
    calls["dense x @ W"] = (compile_timed(dense, x, dense_kernel)[0], (x, dense_kernel))
    times = alternating_times(calls, blocks=rounds)
    padding = tables[0].size / layout.num_slots
    for name, t in times.items():
      rows.append((block, name, f"{np.median(t) * 1e3:.2f}",
                   f"{np.median(times['dense x @ W']) / np.median(t):.2f}",
                   f"{padding:.2f}" if name.startswith("grouped") else "-"))
      print(rows[-1], flush=True)
  print()
  print(f"one {width} x {width} layer, density {density}, batch {BATCH}: forward + backward")
  print(markdown_table(["b", "formulation", "ms (median)", "x faster than dense",
                        "padded products / stored"], rows))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", nargs="+", default=["wide", "deep"], choices=sorted(MODELS))
  parser.add_argument("--densities", nargs="+", type=float, default=[0.05, 0.1, 0.25])
  parser.add_argument("--blocks", nargs="+", type=int, default=[16, 32, 64, 128])
  parser.add_argument("--rounds", type=int, default=5, help="alternating blocks per variant")
  parser.add_argument("--steps", type=int, default=3, help="steps per block")
  parser.add_argument("--quick", action="store_true",
                      help="tiny shapes, density 0.1, b 16 and 32, one round: checks it runs")
  parser.add_argument("--formulations", action="store_true",
                      help="time the block matmul's formulations on one layer instead")
  args = parser.parse_args(argv)
  print(f"platform: {jax.devices()[0].platform}, JAX {jax.__version__}", flush=True)
  if args.quick:
    args.densities, args.blocks, args.rounds, args.steps = [0.1], [16, 32], 1, 1
  if args.formulations:
    formulations(args.quick, args.blocks, args.rounds)
    return 0
  specs = QUICK if args.quick else MODELS
  rows = []
  for name in args.models:
    for density in args.densities:
      rows += compare(name, specs[name], density, args.blocks, args.rounds, args.steps)
  print()
  print(markdown_table(["model (batch 128)", "step", "density", "ms/step (median)",
                        "x faster than masked", "params + opt state MiB", "x dense bytes",
                        "peak MiB (compiled)"], rows))
  goal = [r for r in rows if r[0] == MODELS["wide"][0] and r[2] != "-" and r[1] != "masked (dense)"
          and abs(float(r[2]) - 0.1) < 0.025]
  if goal and not args.quick:
    best = max(goal, key=lambda r: float(r[4]))
    met = float(best[4]) >= 4 and float(best[6]) <= 0.15
    print(f"\ngoal (wide MLP, density 0.1: >= 4 x faster, <= 0.15 x bytes): "
          f"{'met' if met else 'not met'} (best: {best[1]}, {best[4]} x, {best[6]} x bytes)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
