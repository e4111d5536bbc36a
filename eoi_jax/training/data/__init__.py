"""Datasets, provisioning and the on-device input pipeline.

Example:
  >>> from eoi_jax.training import data
  >>> ds = data.load("mnist")                     # uint8 NHWC, train / val / test
  >>> loader = data.Loader(ds.train, 128, seed=0)
  >>> for batch in loader.epoch(0):
  ...   x = data.preprocess(key, batch.images, ds.info, train=True)
"""

from eoi_jax.training.data import formats
from eoi_jax.training.data import pipeline
from eoi_jax.training.data.datasets import Dataset
from eoi_jax.training.data.datasets import Split
from eoi_jax.training.data.datasets import default_data_dir
from eoi_jax.training.data.datasets import load
from eoi_jax.training.data.datasets import split_train_val
from eoi_jax.training.data.datasets import synthetic
from eoi_jax.training.data.formats import CorruptFileError
from eoi_jax.training.data.pipeline import Batch
from eoi_jax.training.data.pipeline import Loader
from eoi_jax.training.data.pipeline import augment
from eoi_jax.training.data.pipeline import example_order
from eoi_jax.training.data.pipeline import normalize
from eoi_jax.training.data.pipeline import preprocess
from eoi_jax.training.data.provision import FetchError
from eoi_jax.training.data.provision import fetch
from eoi_jax.training.data.provision import verify
from eoi_jax.training.data.specs import DATASETS
from eoi_jax.training.data.specs import SPECS
from eoi_jax.training.data.specs import DatasetInfo
from eoi_jax.training.data.specs import DatasetSpec
from eoi_jax.training.data.verification import DatasetMismatch

__all__ = [
    "DATASETS", "SPECS", "Batch", "CorruptFileError", "Dataset", "DatasetMismatch", "DatasetInfo", "DatasetSpec",
    "FetchError", "Loader", "Split", "augment", "default_data_dir", "example_order", "fetch", "formats", "load",
    "normalize", "pipeline", "preprocess", "split_train_val", "synthetic", "verify",
]
