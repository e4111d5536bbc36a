"""The 1000-layer tanh CNN at density 0.125.

Paper (Nowak et al. 2024, 1000-layer CNN): with EOI a 1000-layer tanh CNN
without residuals or normalisation trains on CIFAR-10 at density 0.125 close
to its dense delta-orthogonal counterpart, while the standard sparse
initialisations stay at chance.

Protocol (the paper's): conv 3-128, two
stride-2 convs, then 997 3x3 convs 128-128 with circular padding, average
pool 2, a linear head (the ``cifar10_cnn_1000`` preset); tanh, sigma_w
1.0247, sigma_b 0.00448, density 0.125, SGD lr 1e-4, 100 epochs, 5 seeds.
Variants: uniform, ERK, SNIP, GraSP, SynFlow, each plain, +AI and +EOI; EOI
with dense first and last layers; EIS (the EOI mask's centre on every tap)
with uniform and ERK densities; SAO (degree 16); dense.

``--dataset mnist`` or ``fashion_mnist`` runs the same network where CIFAR-10
is absent (the table names the dataset).

``--quick``: uniform, uniform+EOI and dense, 1 seed, 2 epochs on the first
1280 training examples at width 32 (a full-width 1000-layer conv step is
minutes on a 2-core CPU). It shows whether the loss moves at all, not the
paper's accuracies.

Usage: python -m experiments.cnn_1000 [--quick] [--dataset cifar10|mnist|fashion_mnist]
"""

from __future__ import annotations

import sys

from experiments import _common, mlp_density


def base(quick: bool, epochs: int | None):
  from eoi_jax.training.config import make_config

  overrides = dict(limit=1280, width=32) if quick else {}
  return make_config("cifar10_cnn_1000", epochs=epochs or (2 if quick else 100), quiet=True,
                     **overrides)


def grids(quick: bool, seeds: int) -> list[dict]:
  if quick:
    return _common.method_grids(_common.QUICK_PROBE, seeds)
  return (_common.method_grids(mlp_density.METHODS, seeds, dense=False)
          + _common.method_grids(["eoi"], seeds, dense=False, allocator="uniform_dense_ends")
          + _common.method_grids(["uniform+eoi", "erk+eoi"], seeds, dense=False, structured=True)
          + _common.method_grids(["sao"], seeds, sao_degree=16))


EXPERIMENT = _common.Experiment(
    "cnn_1000",
    "1000-layer tanh CNN at density 0.125: which sparse initialisations train.",
    base, grids, default_seeds=(5, 1), datasets=("cifar10", "mnist", "fashion_mnist"))


if __name__ == "__main__":
  sys.exit(_common.main(EXPERIMENT))
