"""eoi-jax: Exact Orthogonal Initialization (EOI) and static sparse training in JAX/Flax.

EOI (Nowak et al., "Sparser, Better, Deeper, Stronger", ICML 2024) builds
weight matrices that are exactly orthogonal and sparse at a chosen density by
composing random Givens rotations; their support is the layer's mask.

The package in three parts:

* the core (this namespace): Givens rotations (:mod:`~eoi_jax.givens`, with
  the support chain in :mod:`~eoi_jax.chain`), EOI kernels
  (:mod:`~eoi_jax.kernels`) and Flax initializers
  (:mod:`~eoi_jax.initializers`), the layer view of a params tree
  (:mod:`~eoi_jax.layers`), masks, allocators, the static-sparse optax
  transform, summaries, and block-sparse kernels stored compressed
  (:mod:`~eoi_jax.block_sparse`);
* :mod:`eoi_jax.methods`: EOI and the baselines over whole networks, one
  registry of methods;
* :mod:`eoi_jax.training`: models, data, the training loop, configs and the
  command line. ``import eoi_jax`` loads neither it nor Flax.
"""

from eoi_jax import allocation
from eoi_jax import block_sparse
from eoi_jax import chain
from eoi_jax import givens
from eoi_jax import initializers
from eoi_jax import kernels
from eoi_jax import kinds
from eoi_jax import layers
from eoi_jax import masking
from eoi_jax import methods
from eoi_jax.block_sparse import BlockLayout
from eoi_jax.block_sparse import BlockSparse
from eoi_jax.block_sparse import block_matmul
from eoi_jax.block_sparse import block_stack_apply
from eoi_jax.block_sparse import random_block_mask
from eoi_jax.givens import GivensResult
from eoi_jax.givens import givens_orthogonal
from eoi_jax.givens import rotation_sequence
from eoi_jax.kernels import center_density_for
from eoi_jax.kernels import eoi_batch
from eoi_jax.kernels import sparse_delta_orthogonal
from eoi_jax.kernels import sparse_orthogonal
from eoi_jax.kinds import KernelKind
from eoi_jax.layers import Layout
from eoi_jax.layers import layout
from eoi_jax.layers import model_layout
from eoi_jax.masking import apply_masks
from eoi_jax.masking import magnitude_masks
from eoi_jax.masking import mask_densities
from eoi_jax.masking import random_masks
from eoi_jax.methods import SparseInit
from eoi_jax.methods import eoi_params
from eoi_jax.methods import initialize
from eoi_jax.methods import initialize_model
from eoi_jax.optim import StaticSparseState
from eoi_jax.optim import sparse_optimizer
from eoi_jax.optim import static_sparse
from eoi_jax.summary import SparsitySummary
from eoi_jax.summary import sparsity_summary

__version__ = "0.1.0"

__all__ = [
    "BlockLayout",
    "BlockSparse",
    "GivensResult",
    "KernelKind",
    "Layout",
    "SparseInit",
    "SparsitySummary",
    "StaticSparseState",
    "allocation",
    "apply_masks",
    "block_matmul",
    "block_sparse",
    "block_stack_apply",
    "center_density_for",
    "chain",
    "eoi_batch",
    "eoi_params",
    "givens",
    "givens_orthogonal",
    "initialize",
    "initialize_model",
    "initializers",
    "kernels",
    "kinds",
    "layers",
    "layout",
    "magnitude_masks",
    "mask_densities",
    "masking",
    "methods",
    "model_layout",
    "random_block_mask",
    "random_masks",
    "rotation_sequence",
    "sparse_delta_orthogonal",
    "sparse_optimizer",
    "sparse_orthogonal",
    "sparsity_summary",
    "static_sparse",
]
