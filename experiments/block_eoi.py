"""Block EOI against unstructured EOI and random block masks on a wide MLP.

Claim checked (beyond the paper): block EOI (``block=b``, supports of whole
``b x b`` blocks, exactly orthogonal) trains about as well as unstructured
EOI at the same density, better than random block masks of the same density,
and its blocks let the compressed block-sparse step
(:mod:`eoi_jax.block_sparse`) run faster than the masked dense step.

Network: MLP 784-1024x4-10 (input layer, 3 hidden 1024 x 1024 layers, output
layer), tanh, MNIST and Fashion-MNIST; the paper's MLP protocol (SGD with
Nesterov momentum 0.9, L2 1e-4, batch 128, lr 0.01 decayed x0.1 at 50% and
75%) for 20 epochs, 3 seeds, densities 0.05, 0.1 and 0.25 (uniform
allocation: every layer at the density). Methods: ``eoi`` and ``uniform``
(random masks, dense orthogonal values), each unstructured and with
``block`` 8 and 32, and dense. A block applies to every layer whose sizes it
divides, the others keep element masks (:mod:`eoi_jax.methods.blocks`): at
``b = 32`` the 784-input layer and at both sizes the 10-class output layer
are element-level (scalar EOI or element-level random masks); at ``b = 8``
the input layer is block-sparse too (784 = 98 x 8). Training runs the masked
dense step, whatever the mask (the accuracy does not depend on how the step
is computed).

Step time: after the sweep, for each density, the compressed block step
(``b = 8, 32``; the three hidden 1024 x 1024 layers stored as their blocks,
the input and output layers masked dense) against the masked dense step, as
:mod:`benchmarks.block_step` times them (random block masks of the density:
a step's cost depends on the block count, not on which blocks), written to
``step_time.md`` beside the table.

``--quick``: MNIST, densities 0.05 and 0.25, 1 seed, 1 epoch on the first
6000 training examples: it shows that the grid runs and which way the first
epoch goes, not final accuracies.

Usage: python -m experiments.block_eoi [--quick] [--seeds N] [--epochs N] [--record]
"""

from __future__ import annotations

import sys

from experiments import _common

DENSITIES = (0.05, 0.1, 0.25)
BLOCKS = (8, 32)
DATASETS = ("mnist", "fashion_mnist")
DEPTH, WIDTH = 5, 1024
QUICK_LIMIT = 6000


def base(quick: bool, epochs: int | None):
  from eoi_jax.training.config import make_config

  return make_config("mnist_mlp", depth=DEPTH, width=WIDTH, activation="tanh",
                     epochs=epochs or (1 if quick else 20), quiet=True,
                     limit=QUICK_LIMIT if quick else None)


def grids(quick: bool, seeds: int) -> list[dict]:
  datasets = ["mnist"] if quick else list(DATASETS)
  densities = [0.05, 0.25] if quick else list(DENSITIES)
  fixed = {"dataset": datasets, "seed": list(range(seeds))}
  return [{"init": ["eoi", "uniform"], "block": [None, *BLOCKS], "density": densities, **fixed},
          {"init": ["dense"], "density": [1.0], **fixed}]


EXPERIMENT = _common.Experiment(
    "block_eoi",
    "MLP 784-1024x4-10 (tanh) on MNIST and Fashion-MNIST: block EOI (b = 8, 32) against "
    "unstructured EOI and random block masks: accuracy, realised density, step time.",
    base, grids, default_seeds=(3, 1))


def step_times(densities, quick: bool) -> str:
  """``step_time.md``: the masked dense step and the compressed block steps
  of this experiment's network at each density (milliseconds per step,
  batch 128, the median over alternating blocks of steps)."""
  from benchmarks import block_step
  from benchmarks._timing import markdown_table

  spec = (f"MLP 784-{WIDTH}x4-10", 784, 10, DEPTH, WIDTH, ("hidden_layers",))
  rows = []
  for density in densities:
    rows += block_step.compare("mlp", spec, density, BLOCKS, rounds=3 if quick else 5,
                               steps=3 if quick else 10)
  header = ["model (batch 128)", "step", "density", "ms/step (median)", "x faster than masked",
            "params + opt state MiB", "x dense bytes", "peak MiB (compiled)"]
  return ("# Step time: compressed block step against the masked dense step\n\n"
          "The three hidden 1024 x 1024 layers stored as their b x b blocks "
          "(eoi_jax.block_sparse); the input and output layers masked dense in both steps. "
          "The masked dense step is what unstructured EOI (and the trainer, for every mask) "
          "runs.\n\n" + markdown_table(header, rows) + "\n")


def main(argv=None) -> int:
  """The sweep (:func:`experiments._common.main`), then the step times beside
  its table, then ``--record``."""
  args = _common.parser(EXPERIMENT).parse_args(argv)
  argv = list(sys.argv[1:] if argv is None else argv)
  if args.check or args.dry_run:
    return _common.main(EXPERIMENT, argv)
  code = _common.main(EXPERIMENT, [a for a in argv if a != "--record"])
  if code:
    return code
  _, grid_list, _, runs_dir, results_dir = _common.configs(EXPERIMENT, args)
  densities = sorted({d for grid in grid_list for d in grid["density"] if d < 1})
  text = step_times(densities, args.quick)
  (results_dir / "step_time.md").write_text(text)
  print(text, end="")
  if args.record:
    print(f"record: {_common.record(results_dir, _common.record_name(EXPERIMENT, args), sweep_dir=runs_dir)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
