"""Tests of the dataset readers, splits, provisioning checks and input pipeline."""

import gzip
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoi_jax.training import data
from eoi_jax.training.data import formats


def _images(rng, n, shape):
  return rng.integers(0, 256, (n,) + shape, dtype=np.uint8)


@pytest.fixture
def data_dir(tmp_path):
  """Tiny copies of every raw format, written in exactly that format (loaded
  with ``verify=False``: they are not the datasets)."""
  rng = np.random.default_rng(0)
  for name in ("mnist", "fashion_mnist"):
    folder = tmp_path / name
    folder.mkdir()
    for split, n in (("train", 50), ("test", 20)):
      image_stem, label_stem = formats.IDX_FILES[split]
      formats.write_idx(folder / f"{image_stem}.gz", _images(rng, n, (28, 28)))
      formats.write_idx(folder / f"{label_stem}.gz", rng.integers(0, 10, n).astype(np.uint8))
  formats.write_cifar10(tmp_path / "cifar-10-batches-py",
                        (_images(rng, 60, (32, 32, 3)), rng.integers(0, 10, 60)),
                        (_images(rng, 20, (32, 32, 3)), rng.integers(0, 10, 20)))
  formats.write_cifar100(tmp_path / "cifar-100-python",
                         (_images(rng, 40, (32, 32, 3)), rng.integers(0, 100, 40)),
                         (_images(rng, 10, (32, 32, 3)), rng.integers(0, 100, 10)))
  wnids = [f"n{i:08d}" for i in range(200)]
  formats.write_tiny_imagenet(tmp_path / "tiny-imagenet-200", wnids,
                              (_images(rng, 12, (64, 64, 3)), rng.integers(0, 200, 12)),
                              (_images(rng, 6, (64, 64, 3)), rng.integers(0, 200, 6)))
  formats.write_digits_csv(tmp_path / "digits" / "digits.csv.gz",
                           rng.integers(0, 17, (1600, 64)), rng.integers(0, 10, 1600))
  return tmp_path


@pytest.mark.parametrize("name,shape,classes,train,test", [
    ("mnist", (28, 28, 1), 10, 50, 20),
    ("fashion_mnist", (28, 28, 1), 10, 50, 20),
    ("cifar10", (32, 32, 3), 10, 60, 20),
    ("cifar100", (32, 32, 3), 100, 40, 10),
    ("tiny_imagenet", (64, 64, 3), 200, 12, 6),
    ("digits", (8, 8, 1), 10, 1500, 100),
])
def test_readers_shapes_dtypes_labels_and_splits(data_dir, name, shape, classes, train, test):
  ds = data.load(name, data_dir, val_fraction=0.2, verify=False)
  assert ds.info.image_shape == shape and ds.info.num_classes == classes
  for split in (ds.train, ds.val, ds.test):
    assert split.images.dtype == np.uint8 and split.images.shape[1:] == shape
    assert split.labels.dtype == np.int32
    assert split.labels.min() >= 0 and split.labels.max() < classes
  assert len(ds.val) == round(0.2 * train)
  assert len(ds.train) + len(ds.val) == train
  assert len(ds.test) == test


def test_readers_roundtrip_exact_pixels(data_dir):
  rng = np.random.default_rng(0)
  x = _images(rng, 5, (32, 32, 3))
  formats.write_cifar10(data_dir / "c10", (x, np.arange(5)), (x[:2], np.arange(2)))
  got_x, got_y = formats.read_cifar10(data_dir / "c10", "train")
  np.testing.assert_array_equal(got_x, x)
  np.testing.assert_array_equal(got_y, np.arange(5))
  formats.write_idx(data_dir / "plain-idx", x[..., 0])
  np.testing.assert_array_equal(formats.read_idx(data_dir / "plain-idx"), x[..., 0])


def test_tiny_imagenet_labels_follow_wnids(data_dir):
  x, y = formats.read_tiny_imagenet(data_dir / "tiny-imagenet-200", "test")
  assert x.shape == (6, 64, 64, 3) and y.dtype == np.int32


def test_split_is_deterministic_and_disjoint(data_dir):
  a = data.load("cifar10", data_dir, val_fraction=0.25, verify=False)
  b = data.load("cifar10", data_dir, val_fraction=0.25, verify=False)
  c = data.load("cifar10", data_dir, val_fraction=0.25, split_seed=1, verify=False)
  np.testing.assert_array_equal(a.val.images, b.val.images)
  assert not np.array_equal(a.val.images, c.val.images)
  rows = {r.tobytes() for r in a.train.images}
  assert not any(r.tobytes() in rows for r in a.val.images)


def test_missing_files_and_bad_names(tmp_path):
  with pytest.raises(FileNotFoundError, match="eoi-jax data fetch mnist"):
    data.load("mnist", tmp_path)
  with pytest.raises(ValueError, match="dataset must be one of"):
    data.load("imagenet", tmp_path)
  with pytest.raises(ValueError, match="val_fraction"):
    data.load("synthetic", val_fraction=1.0)


def test_verify_rejects_wrong_counts(data_dir):
  with pytest.raises(ValueError, match="expected"):
    data.verify("mnist", data_dir)


# ----------------------------------------------------------------------------
# Verification when loading.


def _real_digits(tmp_path) -> tuple[Path, np.ndarray]:
  """A copy of the provisioned digits and its table (64 values in 0..16, a label)."""
  source = REAL_DIR / "digits" / "digits.csv.gz"
  if not source.exists():
    pytest.skip("digits not provisioned (eoi-jax data fetch digits)")
  root = tmp_path / "data"
  (root / "digits").mkdir(parents=True)
  (root / "digits" / "digits.csv.gz").write_bytes(source.read_bytes())
  with gzip.open(source, "rt") as f:
    return root, np.loadtxt(f, delimiter=",").astype(np.int64)


@pytest.fixture
def counted_checks(tmp_path, monkeypatch):
  """A fresh record of verified folders, and a count of full content checks."""
  from eoi_jax.training.data import verification

  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  calls = []
  check = verification.check_content
  monkeypatch.setattr(verification, "check_content",
                      lambda *a, **k: calls.append(a[0]) or check(*a, **k))
  return calls


def test_load_checks_a_data_folder_once_until_a_file_changes(tmp_path, counted_checks):
  root, _ = _real_digits(tmp_path)
  first = data.load("digits", root, limit=100)
  assert counted_checks == ["digits"] and len(first.test) == 100
  data.load("digits", root)
  assert counted_checks == ["digits"]  # remembered by size and modification time
  target = root / "digits" / "digits.csv.gz"
  stat = target.stat()
  os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
  data.load("digits", root)
  assert counted_checks == ["digits"] * 2
  data.load("synthetic")  # generated: nothing to check
  data.load("digits", root, verify=False)
  assert counted_checks == ["digits"] * 2


@pytest.mark.parametrize("damage", ["shuffled_test_labels", "train_cut", "one_pixel"])
def test_load_refuses_files_that_decode_but_hold_other_data(tmp_path, counted_checks, damage):
  root, table = _real_digits(tmp_path)
  target = root / "digits" / "digits.csv.gz"
  data.load("digits", root)  # the intact copy passes and is remembered
  rng = np.random.default_rng(0)
  if damage == "shuffled_test_labels":
    table[1500:, 64] = rng.permutation(table[1500:, 64])
    expected = "digits test: content checksum mismatch"
  elif damage == "train_cut":
    table = table[:1200]  # the digits split by position: 1200 train, no test
    expected = r"1200/0 train/test examples, expected \(1500, 297\)"
  else:
    table[7, 20] = (table[7, 20] + 1) % 17
    expected = "digits train: content checksum mismatch"
  formats.write_digits_csv(target, table[:, :64], table[:, 64])
  for _ in range(2):  # a failure is never remembered
    with pytest.raises(data.DatasetMismatch, match=expected) as error:
      data.load("digits", root)
    assert "eoi-jax data verify digits" in str(error.value) and str(root) in str(error.value)
  with pytest.raises(ValueError, match=expected):
    data.verify("digits", root)


def test_synthetic_and_limit():
  ds = data.load("synthetic", limit=100)
  assert len(ds.train) + len(ds.val) == 100 and len(ds.test) == 100


# ----------------------------------------------------------------------------
# Augmentation and normalisation.


def test_flip_is_an_involution_and_crops_stay_in_the_padded_image():
  x = jax.random.randint(jax.random.key(0), (16, 32, 32, 3), 0, 256).astype(jnp.uint8)
  key = jax.random.key(1)
  flipped = data.pipeline.random_flip(key, x)
  np.testing.assert_array_equal(data.pipeline.random_flip(key, flipped), x)
  changed = np.any(np.asarray(flipped) != np.asarray(x), axis=(1, 2, 3))
  assert 0 < changed.sum() < 16
  cropped = data.pipeline.random_crop(jax.random.key(2), x, 4)
  assert cropped.shape == x.shape and cropped.dtype == x.dtype
  padded = np.pad(np.asarray(x), ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
  for i in range(16):  # each crop is a window of the reflect-padded image
    found = any(np.array_equal(padded[i, a:a + 32, b:b + 32], cropped[i])
                for a in range(9) for b in range(9))
    assert found


def test_preprocess_normalises_and_is_jittable():
  info = data.SPECS["cifar10"].info
  x = jnp.full((4, 32, 32, 3), 128, jnp.uint8)
  out = jax.jit(lambda k, x: data.preprocess(k, x, info, train=True))(jax.random.key(0), x)
  assert out.dtype == jnp.float32 and out.shape == x.shape
  expected = (128 / 255 - np.array(info.mean)) / np.array(info.std)
  # Crops of a constant image are constant: augmentation cannot move values.
  np.testing.assert_allclose(out[0, 10, 10], expected, atol=1e-6)
  plain = data.preprocess(jax.random.key(0), x, info, train=False)
  np.testing.assert_allclose(plain, out, atol=1e-6)
  with pytest.raises(ValueError, match="augment"):
    data.augment(jax.random.key(0), x, "mixup")


# ----------------------------------------------------------------------------
# Batching.


def test_loader_shards_batches_and_shuffles_by_epoch():
  ds = data.load("synthetic")
  loader = data.Loader(ds.train, 64, seed=3)
  batches = list(loader.epoch(0))
  assert len(batches) == loader.steps_per_epoch == len(ds.train) // 64
  batch = batches[0]
  assert batch.images.shape == (64, 8, 8, 1) and batch.images.dtype == jnp.uint8
  assert len(batch.images.sharding.device_set) == 8
  assert batch.images.sharding.spec == jax.P("data")
  again = list(loader.epoch(0))
  np.testing.assert_array_equal(again[0].labels, batch.labels)
  other = list(loader.epoch(1))
  assert not np.array_equal(other[0].images, batch.images)
  seen = np.concatenate([np.asarray(b.images).reshape(64, -1) for b in batches])
  assert len({r.tobytes() for r in seen}) == len(seen)  # no example twice in an epoch
  resumed = list(loader.epoch(0, start_step=2))
  np.testing.assert_array_equal(resumed[0].images, batches[2].images)


def test_eval_loader_pads_with_zero_weights():
  ds = data.load("synthetic")
  loader = data.Loader(ds.test, 64, train=False)
  batches = list(loader.epoch(0))
  assert len(batches) == -(-len(ds.test) // 64)
  weights = np.concatenate([np.asarray(b.weights) for b in batches])
  assert weights.sum() == len(ds.test)
  labels = np.concatenate([np.asarray(b.labels) for b in batches])[: len(ds.test)]
  np.testing.assert_array_equal(labels, ds.test.labels)
  with pytest.raises(ValueError, match="batch_size"):
    data.Loader(ds.test, 60)


REAL_DIR = Path(os.environ.get("EOI_DATA_DIR", data.default_data_dir()))


@pytest.mark.skipif(not (REAL_DIR / "mnist").exists(),
                    reason="real MNIST not provisioned (eoi-jax data fetch mnist)")
def test_real_mnist_loads_and_verifies():
  counts = data.verify("mnist", REAL_DIR)
  assert counts == {"train": 60000, "test": 10000}
  ds = data.load("mnist", REAL_DIR)
  assert ds.train.images.shape == (54000, 28, 28, 1) and len(ds.val) == 6000
  mean = ds.train.images.mean() / 255
  assert abs(mean - 0.1307) < 0.002


@pytest.mark.parametrize("name,shape,classes", [("mnist", (28, 28, 1), 10),
                                                ("cifar100", (32, 32, 3), 100)])
def test_prepared_tfds_data_is_read_without_tensorflow(tmp_path, name, shape, classes):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=30):
    ds = data.load(name, tmp_path, val_fraction=0.1, source="tfds")
    auto = data.load(name, tmp_path, val_fraction=0.1)  # no raw files: tfds is used
  assert ds.train.images.shape == (27,) + shape and ds.train.images.dtype == np.uint8
  assert len(ds.val) == 3 and len(ds.test) == 30
  assert ds.test.labels.max() < classes
  np.testing.assert_array_equal(auto.test.images, ds.test.images)
  with pytest.raises(ValueError, match="source"):
    data.load(name, tmp_path, source="hub")
  with pytest.raises(ValueError, match="supports"):
    data.load("digits", tmp_path, source="tfds")
