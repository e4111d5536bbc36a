"""Whole-network initialisations: EOI and the baselines, behind one registry.

==================  ==========================================================
:mod:`.eoi`         :func:`eoi_params`: EOI for every maskable layer
:mod:`.dense`       dense (delta-)orthogonal and block-orthogonal kernels,
                    sparse Kaiming
:mod:`.sao`         SAO: degree-regular supports with orthogonal values
:mod:`.pruning`     SNIP, GraSP and SynFlow masks
:mod:`.isometry`    approximate isometry (AI) of masked kernels
:mod:`.network`     the shared result type and kernel regeneration
:mod:`.registry`    every method by name: :func:`initialize`,
                    :func:`initialize_model`, :data:`METHODS`
==================  ==========================================================

Example:
  >>> from eoi_jax import methods
  >>> out = methods.initialize_model("snip+eoi", jax.random.key(0), model, 0.1, batch=(x, y))
"""

from eoi_jax.methods import dense
from eoi_jax.methods import isometry
from eoi_jax.methods import pruning
from eoi_jax.methods import sao
from eoi_jax.methods.eoi import eoi_params
from eoi_jax.methods.network import SparseInit
from eoi_jax.methods.network import regenerate_layers
from eoi_jax.methods.registry import MASK_MAKERS
from eoi_jax.methods.registry import MASK_METHODS
from eoi_jax.methods.registry import METHODS
from eoi_jax.methods.registry import VALUE_MAKERS
from eoi_jax.methods.registry import Method
from eoi_jax.methods.registry import initialize
from eoi_jax.methods.registry import initialize_model
from eoi_jax.methods.registry import parse

__all__ = [
    "MASK_MAKERS", "MASK_METHODS", "METHODS", "Method", "SparseInit", "VALUE_MAKERS", "dense",
    "eoi_params", "initialize", "initialize_model", "isometry", "parse", "pruning",
    "regenerate_layers", "sao",
]
