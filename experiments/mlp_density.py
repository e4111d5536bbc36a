"""The 7-layer MLP on MNIST across densities, activations and initialisations.

Paper (Nowak et al. 2024, MLP experiment): on the 784-100x6-10 MLP, EOI gives
the best final test accuracy of the sparse initialisations at low densities
for every activation, and its input-output Jacobian stays close to an isometry
(singular values near 1, small variance) where the others' collapse.

Protocol (the paper's): MNIST, SGD with Nesterov momentum 0.9, L2 1e-4,
batch 128, lr 0.01 decayed x0.1 at 50% and 75%, 100 epochs, 5 seeds;
densities 0.03, 0.05, 0.1, 0.2, ..., 0.9; activations linear, tanh,
hard-tanh, relu; methods uniform, ERK, SNIP, GraSP, SynFlow, each plain, +AI
and +EOI, and dense (density 1.0); SAO at the densities whose degree exists
for the 100 x 100 hidden layers (0.05, 0.1, 0.2 and 0.5; SAO keeps the input
and output layers dense).
Jacobian singular-value statistics are logged at every epoch's first batch
(the first epoch's: at initialisation).

``--quick``: tanh, densities 0.05 and 0.1, methods uniform, ERK, SNIP,
uniform+EOI, ERK+EOI, SNIP+EOI and dense, 2 seeds, 5 epochs.

Usage: python -m experiments.mlp_density [--quick] [--seeds N] [--epochs N]
"""

from __future__ import annotations

import sys

from experiments import _common

DENSITIES = (0.03, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ACTIVATIONS = ("linear", "tanh", "hard_tanh", "relu")
MASKS = ("uniform", "erk", "snip", "grasp", "synflow")
METHODS = MASKS + tuple(f"{m}+ai" for m in MASKS) + tuple(f"{m}+eoi" for m in MASKS)
QUICK_METHODS = ("uniform", "erk", "snip", "uniform+eoi", "erk+eoi", "snip+eoi")


def base(quick: bool, epochs: int | None):
  from eoi_jax.training.config import make_config

  return make_config("mnist_mlp", epochs=epochs or (5 if quick else 100), jacobian=True,
                     quiet=True, ai_steps=1000)


def sao_densities(config, densities) -> list[float]:
  """The densities at which SAO can build ``config``'s network: its degree exists
  for every sparse layer at the real layer shapes (:func:`eoi_jax.training.plan.plan`,
  SAO's own check).

  Example:
    >>> sao_densities(base(False, None), DENSITIES)
    [0.05, 0.1, 0.2, 0.5]
  """
  from eoi_jax.training import plan

  feasible = []
  for d in densities:
    try:
      plan.plan(_common.replace(config, init="sao", density=d))
    except plan.Infeasible:
      continue
    feasible.append(d)
  return feasible


def grids(quick: bool, seeds: int) -> list[dict]:
  seed_list = list(range(seeds))
  if quick:
    return [{"init": list(QUICK_METHODS), "density": [0.05, 0.1], "seed": seed_list},
            {"init": ["dense"], "density": [1.0], "seed": seed_list}]
  out = []
  sao = sao_densities(base(False, None), DENSITIES)
  for activation in ACTIVATIONS:
    out.append({"activation": [activation], "init": list(METHODS), "density": list(DENSITIES),
                "seed": seed_list})
    if sao:
      out.append({"activation": [activation], "init": ["sao"], "density": sao,
                  "seed": seed_list})
    out.append({"activation": [activation], "init": ["dense"], "density": [1.0],
                "seed": seed_list})
  return out


EXPERIMENT = _common.Experiment(
    "mlp_density",
    "7-layer MLP on MNIST: final test accuracy and Jacobian singular values of sparse "
    "initialisations across densities and activations.",
    base, grids)


if __name__ == "__main__":
  sys.exit(_common.main(EXPERIMENT))
