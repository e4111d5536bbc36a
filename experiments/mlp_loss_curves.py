"""Training-loss curves of the 7-layer MLP at densities 0.05 and 0.1.

Paper (Nowak et al. 2024, MLP loss curves): at densities 0.05 and 0.1 the MLP
initialised with EOI reaches a lower training loss sooner than the other
sparse initialisations.

Protocol: as ``mlp_density`` (MNIST, tanh, 100 epochs, 5 seeds) at densities
0.05 and 0.1, every method; the figure ``loss_curves.png`` plots the training
loss per epoch (mean over seeds) per method and density.

``--quick``: uniform, ERK, SNIP, uniform+EOI, ERK+EOI, SNIP+EOI and dense,
2 seeds, 5 epochs.

Usage: python -m experiments.mlp_loss_curves [--quick] [--seeds N] [--epochs N]
"""

from __future__ import annotations

import sys

from experiments import _common, mlp_density


def grids(quick: bool, seeds: int) -> list[dict]:
  seed_list = list(range(seeds))
  methods = mlp_density.QUICK_METHODS if quick else mlp_density.METHODS
  sao = [] if quick else mlp_density.sao_densities(mlp_density.base(False, None), [0.05, 0.1])
  out = [{"init": list(methods), "density": [0.05, 0.1], "seed": seed_list},
         {"init": ["dense"], "density": [1.0], "seed": seed_list}]
  if sao:
    out.append({"init": ["sao"], "density": sao, "seed": seed_list})
  return out


def base(quick: bool, epochs: int | None):
  return _common.replace(mlp_density.base(quick, epochs), jacobian=False)


EXPERIMENT = _common.Experiment(
    "mlp_loss_curves",
    "7-layer MLP on MNIST at densities 0.05 and 0.1: training loss per epoch per method.",
    base, grids)


if __name__ == "__main__":
  sys.exit(_common.main(EXPERIMENT))
