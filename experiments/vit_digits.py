"""Beyond the paper: a small Vision Transformer trained sparse with EOI.

EOI on every projection of a ViT (the ``vit`` model of
:mod:`eoi_jax.training.models`: a patch-embedding conv, ``nnx.MultiHeadAttention``
blocks made with ``nnx.vmap`` and run with ``nnx.scan``, GELU MLPs, a linear
head), at density 0.25, trained with AdamW on the 8x8 digits (the
``digits_vit`` preset). The attention kernels ``(in, heads, head_dim)`` and
``(heads, head_dim, out)`` and the patch embedding get their kinds from the
model (:func:`eoi_jax.layers.model_layout`); nothing is declared by hand.

Writes ``summary.json`` (test accuracy, realised density, and the largest
absolute value of any pruned entry after training: exactly 0),
``sparsity.txt`` and ``PROVENANCE.md`` to ``runs/experiments/NAME/`` (the run
itself in its ``run/`` folder); ``--record`` copies them to
``experiments/results/NAME/``. NAME is ``vit_digits``, then ``-DATASET``,
``-epochsN``, ``-seedN`` and ``-densityD`` for each option that departs from
its default, so a changed run is never recorded as the default one. ``--check`` plans the run's
initialisation (no data, no training) and says whether it can be built.

Usage: python -m experiments.vit_digits [--epochs N] [--seed N] [--dataset synthetic]
  [--check] [--record]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np

from experiments import _common


DEFAULTS = {"dataset": "digits", "epochs": 15, "seed": 0, "density": 0.25}


def record_name(args) -> str:
  """``vit_digits`` with each option that departs from :data:`DEFAULTS` named:
  ``vit_digits[-DATASET][-epochsN][-seedN][-densityD]``."""
  name = "vit_digits" + ("" if args.dataset == DEFAULTS["dataset"] else f"-{args.dataset}")
  for option in ("epochs", "seed", "density"):
    if getattr(args, option) != DEFAULTS[option]:
      name += f"-{option}{getattr(args, option)}"
  return name


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m experiments.vit_digits",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
  parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
  parser.add_argument("--density", type=float, default=DEFAULTS["density"])
  parser.add_argument("--dataset", default=DEFAULTS["dataset"],
                      help="digits (default; `eoi-jax data fetch digits`) or synthetic")
  parser.add_argument("--runs-dir",
                      help="the experiment's folder: the run in RUNS_DIR/run, results beside it "
                      "(default runs/experiments/NAME)")
  parser.add_argument("--results-dir", help="where the results go (default: RUNS_DIR)")
  parser.add_argument("--check", action="store_true",
                      help="plan the run's initialisation (no data, no training) and stop")
  _common.add_record_argument(parser)
  args = parser.parse_args(argv)
  name = record_name(args)
  args.runs_dir = args.runs_dir or f"runs/experiments/{name}"
  from eoi_jax.training import plan
  from eoi_jax.training.config import make_config

  try:
    config = make_config("digits_vit", epochs=args.epochs, seed=args.seed, dataset=args.dataset,
                         density=args.density, run_dir=str(Path(args.runs_dir) / "run"),
                         quiet=True, resume=False)
  except (TypeError, ValueError) as e:
    print(f"vit_digits: error: {e}", file=sys.stderr)
    return 2
  if args.check:
    checked = plan.check([config])
    print(checked.table("vit_digits"))
    return 0 if checked.runs else 1
  from eoi_jax.training.train import train_and_evaluate

  result = train_and_evaluate(config)
  pruned = max(float(np.abs(np.asarray(p)[~np.asarray(m)]).max(initial=0.0))
               for p, m in zip(jax.tree.leaves(result.state.params),
                               jax.tree.leaves(result.state.masks, is_leaf=lambda m: m is None))
               if m is not None)
  summary = {"dataset": args.dataset, "test_accuracy": result.summary["test_accuracy"],
             "density": result.sparsity.density, "epochs": args.epochs, "seed": args.seed,
             "largest_pruned_entry_after_training": pruned}
  out = Path(args.results_dir or args.runs_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  (out / "sparsity.txt").write_text(result.sparsity.table() + "\n")
  _common.provenance(out, ["experiments.vit_digits"] + list(sys.argv[1:] if argv is None
                                                           else argv))
  print("\n".join(f"{key}: {value}" for key, value in summary.items()))
  if args.record:
    print(f"record: {_common.record(out, name)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
