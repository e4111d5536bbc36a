"""eoi-jax: Exact Orthogonal Initialization (EOI) and static sparse training in JAX/Flax.

EOI (Nowak et al., "Sparser, Better, Deeper, Stronger", ICML 2024) builds
weight matrices that are exactly orthogonal and sparse at a chosen density by
composing random Givens rotations; their support is the layer's mask.
"""

from eoi_jax import allocation
from eoi_jax import baselines
from eoi_jax import givens
from eoi_jax import initializers
from eoi_jax import isometry
from eoi_jax import masking
from eoi_jax import methods
from eoi_jax import pruning
from eoi_jax import sao
from eoi_jax.eoi import center_density_for
from eoi_jax.eoi import eoi_batch
from eoi_jax.eoi import sparse_delta_orthogonal
from eoi_jax.eoi import sparse_orthogonal
from eoi_jax.givens import GivensResult
from eoi_jax.givens import givens_orthogonal
from eoi_jax.givens import rotation_sequence
from eoi_jax.masking import apply_masks
from eoi_jax.masking import magnitude_masks
from eoi_jax.masking import mask_densities
from eoi_jax.masking import random_masks
from eoi_jax.methods import initialize
from eoi_jax.methods import initialize_model
from eoi_jax.optim import StaticSparseState
from eoi_jax.optim import sparse_optimizer
from eoi_jax.optim import static_sparse
from eoi_jax.sparse_init import SparseInit
from eoi_jax.sparse_init import eoi_params
from eoi_jax.summary import SparsitySummary
from eoi_jax.summary import sparsity_summary

__version__ = "0.1.0"

__all__ = [
    "GivensResult",
    "SparseInit",
    "SparsitySummary",
    "StaticSparseState",
    "allocation",
    "apply_masks",
    "baselines",
    "center_density_for",
    "eoi_batch",
    "eoi_params",
    "givens",
    "givens_orthogonal",
    "initialize",
    "initialize_model",
    "initializers",
    "isometry",
    "magnitude_masks",
    "mask_densities",
    "masking",
    "methods",
    "pruning",
    "random_masks",
    "rotation_sequence",
    "sao",
    "sparse_delta_orthogonal",
    "sparse_optimizer",
    "sparse_orthogonal",
    "sparsity_summary",
    "static_sparse",
]
