"""Input pipeline: device-resident batches, on-device preprocessing and augmentation.

Images stay uint8 until they reach the jitted step, where :func:`preprocess`
augments (with an explicit key) and normalises them, so batches cost one
gather and never a host round trip.

:class:`Loader` serves a split as global batches sharded over a mesh's data
axis. In a single process the whole split lives on the devices (replicated)
and each batch is a jitted gather of a per-epoch permutation drawn from a key.
With several processes (``jax.distributed``), each process keeps only its own
shard of the split on the host, draws its part of every global batch, and the
parts are assembled with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import functools
import math
from typing import Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from eoi_jax.training.data.datasets import Split
from eoi_jax.training.data.specs import DatasetInfo


# ----------------------------------------------------------------------------
# Preprocessing (pure, jittable).


def normalize(images, info: DatasetInfo):
  """uint8 NHWC -> float32, scaled to [0, 1] then standardised per channel."""
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(info.mean, jnp.float32)) / jnp.asarray(info.std, jnp.float32)


def random_crop(key, images, padding: int = 4):
  """Reflect-pads each image by ``padding`` and crops a random window of the
  original size (one offset per image)."""
  n, h, w = images.shape[:3]
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                   mode="reflect")
  offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, image.shape[-1]))

  return jax.vmap(crop)(padded, offsets)


def random_flip(key, images):
  """Flips each image left-right with probability 1/2."""
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def augment(key, images, kind: str):
  """``"none"`` or ``"crop_flip"`` (reflect-pad 4, random crop, horizontal flip)."""
  if kind == "none":
    return images
  if kind == "crop_flip":
    crop_key, flip_key = jax.random.split(key)
    return random_flip(flip_key, random_crop(crop_key, images, 4))
  raise ValueError(f"augment must be 'none' or 'crop_flip', got {kind!r}")


def preprocess(key, images, info: DatasetInfo, train: bool):
  """Augments (training only, with ``key``) and normalises a uint8 batch."""
  if train:
    images = augment(key, images, info.augment)
  return normalize(images, info)


# ----------------------------------------------------------------------------
# Batching.


class Batch(NamedTuple):
  images: jax.Array  # uint8 (B, H, W, C), sharded over the data axis
  labels: jax.Array  # int32 (B,)
  weights: jax.Array  # float32 (B,): 1 for real examples, 0 for padding


@functools.partial(jax.jit, static_argnames=("batch_size", "sharding"))
def _gather(images, labels, order, start, batch_size, sharding):
  idx = jax.lax.dynamic_slice_in_dim(order, start, batch_size)
  valid = idx >= 0
  safe = jnp.where(valid, idx, 0)
  batch = Batch(images[safe], labels[safe], valid.astype(jnp.float32))
  return jax.lax.with_sharding_constraint(batch, Batch(sharding, sharding, sharding))


def example_order(n: int, length: int, seed: int | None, epoch: int,
                  process_index: int = 0) -> np.ndarray:
  """The order of ``n`` examples in ``epoch``: shuffled by ``fold_in(fold_in(key(seed),
  epoch), process_index)``, or kept when ``seed`` is ``None``; cut or padded
  with -1 to ``length``. ``process_index``: the process whose shard of a
  data-parallel run this is (0 for a whole run)."""
  order = np.arange(n)
  if seed is not None:
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), process_index)
    order = np.asarray(jax.random.permutation(key, n))
  padded = np.full(length, -1, np.int64)
  padded[: min(n, length)] = order[:length]
  return padded


class Loader:
  """Global batches of a split, sharded over ``mesh``'s ``data_axis``.

  Args:
    split: the :class:`Split` to serve (this process's shard of it is taken
      automatically when there are several processes).
    batch_size: global batch size; must divide by the number of devices on
      the data axis.
    mesh: a ``jax.sharding.Mesh``; default: all devices on one ``data`` axis.
    data_axis: mesh axis the batch is split over.
    train: shuffle every epoch and drop the last partial batch; otherwise
      keep order and pad the last batch (padding has weight 0).
    seed: shuffling seed (epoch ``e`` uses ``fold_in(key(seed), e)``).

  Example:
    >>> loader = Loader(ds.train, 128, train=True, seed=0)
    >>> for batch in loader.epoch(0): ...
  """

  def __init__(self, split: Split, batch_size: int, mesh=None, data_axis: str = "data",
               train: bool = True, seed: int = 0):
    if mesh is None:
      mesh = jax.sharding.Mesh(np.array(jax.devices()), (data_axis,))
    num_shards = mesh.shape[data_axis]
    if batch_size <= 0 or batch_size % num_shards:
      raise ValueError(f"batch_size must be a positive multiple of the {num_shards} devices "
                       f"on axis {data_axis!r}, got {batch_size}")
    self.mesh, self.batch_size, self.train, self.seed = mesh, batch_size, train, seed
    self.sharding = jax.sharding.NamedSharding(mesh, jax.P(data_axis))
    self.num_processes = jax.process_count()
    self.size = len(split)
    if self.num_processes == 1:
      replicated = jax.sharding.NamedSharding(mesh, jax.P())
      self._images = jax.device_put(split.images, replicated)
      self._labels = jax.device_put(split.labels.astype(np.int32), replicated)
    else:
      rank = jax.process_index()
      self._host_images = split.images[rank::self.num_processes]
      self._host_labels = split.labels[rank::self.num_processes].astype(np.int32)
      self.local_batch = batch_size // self.num_processes
    if train and self.size < batch_size:
      raise ValueError(f"batch_size {batch_size} exceeds the {self.size} examples of the "
                       "training split")

  @property
  def steps_per_epoch(self) -> int:
    if self.train:
      per_process = self.size // self.num_processes
      return per_process // (self.batch_size // self.num_processes)
    return math.ceil(self.size / self.batch_size)

  def _order(self, epoch: int, length: int) -> np.ndarray:
    """This process's example order for ``epoch``, cut or padded with -1 to ``length``."""
    n = self.size if self.num_processes == 1 else len(self._host_labels)
    return example_order(n, length, self.seed if self.train else None, epoch,
                         jax.process_index())

  def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
    """Batches of one epoch, from ``start_step`` on (for exact resumption)."""
    steps = self.steps_per_epoch
    if self.num_processes == 1:
      order = jnp.asarray(self._order(epoch, steps * self.batch_size), jnp.int32)
      for step in range(start_step, steps):
        yield _gather(self._images, self._labels, order, step * self.batch_size,
                      self.batch_size, self.sharding)
      return
    order = self._order(epoch, steps * self.local_batch)
    for step in range(start_step, steps):
      idx = order[step * self.local_batch:(step + 1) * self.local_batch]
      valid = idx >= 0
      safe = np.where(valid, idx, 0)
      parts = (self._host_images[safe], self._host_labels[safe], valid.astype(np.float32))
      yield Batch(*(jax.make_array_from_process_local_data(self.sharding, p) for p in parts))
