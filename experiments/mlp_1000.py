"""The 1000-layer tanh MLP on MNIST at density 0.125.

Paper (Nowak et al. 2024, 1000-layer MLP): with EOI the 1000-layer tanh MLP
without residuals or normalisation trains at density 0.125 close to its dense
orthogonal counterpart, while the standard sparse initialisations stay at
chance.

Protocol: 784-128, 998 x 128-128, 128-10, tanh, sigma_w 1.0247, sigma_b
0.00448, density 0.125, SGD lr 1e-4, 100 epochs, 5 seeds; the 15 variants
(uniform, ERK, SNIP, GraSP, SynFlow, each plain, +AI and +EOI), SAO (degree
16) and dense.

``--quick``: uniform, uniform+EOI and dense, 1 seed, 2 epochs on the first
2560 training examples (20 steps an epoch; a 1000-layer step takes about
0.5 s on a 2-core CPU). It shows whether the loss moves at all, not the
paper's accuracies.

Usage: python -m experiments.mlp_1000 [--quick] [--seeds N] [--epochs N]
"""

from __future__ import annotations

import sys

from experiments import _common, mlp_density


def base(quick: bool, epochs: int | None):
  from eoi_jax.training.config import make_config

  overrides = dict(limit=2560) if quick else {}
  return make_config("mnist_mlp_1000", epochs=epochs or (2 if quick else 100), quiet=True,
                     **overrides)


def grids(quick: bool, seeds: int) -> list[dict]:
  if quick:
    return _common.method_grids(_common.QUICK_PROBE, seeds)
  return (_common.method_grids(mlp_density.METHODS, seeds, dense=False)
          + _common.method_grids(["sao"], seeds, sao_degree=16))


EXPERIMENT = _common.Experiment(
    "mlp_1000",
    "1000-layer tanh MLP on MNIST at density 0.125: which sparse initialisations train.",
    base, grids, default_seeds=(5, 1))


if __name__ == "__main__":
  sys.exit(_common.main(EXPERIMENT))
