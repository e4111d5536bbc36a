"""ResNet-32/56/110 and VGG-16 on CIFAR-10 at densities 0.05 and 0.1.

Paper (Nowak et al. 2024, modern CNNs): on ResNet-32, ResNet-56, ResNet-110
and VGG-16 (variant C, batch norm) EOI is the best sparse initialisation at
densities 0.05 and 0.1; an activation ablation (tanh, leaky ReLU, SELU) at
density 0.1 on ResNet-32 and VGG-16 keeps that ordering.

Protocol (the paper's): CIFAR-10 with random
crops (padding 4) and flips, SGD with Nesterov momentum 0.9, L2 1e-4, batch
128, lr 0.1 decayed x0.1 at 50% and 75%, 200 epochs, 5 seeds, ReLU; methods
uniform, ERK, SNIP, GraSP, SynFlow, each plain, +AI and +EOI, and dense.

``--dataset cifar100`` runs the same grid on CIFAR-100 (the table names the
dataset).

``--quick``: ResNet-32 at density 0.1, uniform, ERK, uniform+EOI, ERK+EOI and
dense, 1 seed, 2 epochs on the first 2560 training examples: it shows that
the grid runs and which way the first epochs go, not the paper's accuracies.

Usage: python -m experiments.cifar_cnns [--quick] [--seeds N] [--epochs N]
"""

from __future__ import annotations

import sys

from experiments import _common, mlp_density

MODELS = ("resnet32", "resnet56", "resnet110", "vgg16")
DENSITIES = (0.05, 0.1)
ABLATION_MODELS = ("resnet32", "vgg16")
ABLATION_ACTIVATIONS = ("tanh", "leaky_relu", "selu")
QUICK_METHODS = ("uniform", "erk", "uniform+eoi", "erk+eoi")


def base(quick: bool, epochs: int | None):
  from eoi_jax.training.config import make_config

  overrides = dict(limit=2560) if quick else {}
  return make_config("cifar10_resnet32", epochs=epochs or (2 if quick else 200), quiet=True,
                     ai_steps=1000, **overrides)


def grids(quick: bool, seeds: int) -> list[dict]:
  if quick:
    return _common.method_grids(QUICK_METHODS, seeds, density=0.1)
  out = []
  for model in MODELS:
    out += _common.method_grids(mlp_density.METHODS, seeds, model=model, density=DENSITIES)
  for model in ABLATION_MODELS:
    for activation in ABLATION_ACTIVATIONS:
      out += _common.method_grids(mlp_density.METHODS, seeds, model=model,
                                  activation=activation, density=0.1)
  return out


EXPERIMENT = _common.Experiment(
    "cifar_cnns",
    "ResNet-32/56/110 and VGG-16 on CIFAR-10 at densities 0.05 and 0.1: EOI against the "
    "other sparse initialisations, and an activation ablation.",
    base, grids, default_seeds=(5, 1), datasets=("cifar10", "cifar100"))


if __name__ == "__main__":
  sys.exit(_common.main(EXPERIMENT))
