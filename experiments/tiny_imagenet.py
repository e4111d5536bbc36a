"""EfficientNet-B0 on Tiny ImageNet at density 0.1.

Paper (Nowak et al. 2024, EfficientNet): EfficientNet-B0 (200 classes) trained
sparse at density 0.1 on Tiny ImageNet; the one setting where EOI was not
reported to beat every other sparse initialisation (noted in the paper's
review), so this grid checks how close it comes.

Protocol (the paper's, the ``tiny_imagenet_efficientnet`` preset): 64x64
images with random crops and flips, SGD with Nesterov momentum 0.9, lr 0.01
decayed x0.1 at 50% and 75%, L2 1e-3, batch 128, 120 epochs, ReLU, 5 seeds;
methods uniform, ERK, SNIP, GraSP, SynFlow, each plain, +AI and +EOI, and
dense. Every conv (the depthwise ones included, an isometry channel by
channel) and every linear layer (squeeze-and-excitation, head) is masked.

``--dataset cifar100`` runs the same network where Tiny ImageNet is absent
(the table names the dataset).

``--quick``: uniform, uniform+EOI and dense, 1 seed, 1 epoch on the first
1280 training examples: it shows that the grid runs, not the paper's
accuracies.

Usage: python -m experiments.tiny_imagenet [--quick] [--dataset tiny_imagenet|cifar100]
"""

from __future__ import annotations

import sys

from experiments import _common, mlp_density


def base(quick: bool, epochs: int | None):
  from eoi_jax.training.config import make_config

  overrides = dict(limit=1280) if quick else {}
  return make_config("tiny_imagenet_efficientnet", epochs=epochs or (1 if quick else 120),
                     quiet=True, ai_steps=1000, **overrides)


def grids(quick: bool, seeds: int) -> list[dict]:
  return _common.method_grids(_common.QUICK_PROBE if quick else mlp_density.METHODS, seeds)


EXPERIMENT = _common.Experiment(
    "tiny_imagenet",
    "EfficientNet-B0 on Tiny ImageNet at density 0.1: EOI against the other sparse "
    "initialisations.",
    base, grids, default_seeds=(5, 1), datasets=("tiny_imagenet", "cifar100"))


if __name__ == "__main__":
  sys.exit(_common.main(EXPERIMENT))
