#!/usr/bin/env bash
# The main job, from a fresh clone: install the project, provision real MNIST
# (and the 8x8 digits the test suite trains on),
# train the paper's 784-100x6-10 tanh MLP at density 0.1 with EOI for 20
# epochs, and print its test accuracy and where the run's outputs are
# (runs/mnist_mlp_eoi_0.1_epochs=20). Extra arguments go to `eoi-jax train`
# (e.g. --epochs 100 --density 0.05: another run, in its own directory).
# Rerunning it resumes an interrupted run or says the run is finished.
set -euo pipefail
cd "$(dirname "$0")/.."

python=python3
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "eoi-jax needs Python 3.11 or newer (jax and jaxlib >= 0.7.1 have no wheels for older" \
       "ones); $python is $("$python" --version 2>&1)" >&2
  exit 1
fi

echo "[1/3] installing eoi-jax with its test extras (pip install -e '.[test]'; a few minutes" \
     "on a new machine)" >&2
# pip's lines for what it fetches and installs as they come; all of its output if it fails.
pip_log="$(mktemp "${TMPDIR:-/tmp}/eoi-jax-pip.XXXXXX")"
trap 'rm -f "$pip_log"' EXIT
if ! "$python" -m pip install --disable-pip-version-check -e ".[test]" 2>&1 | tee "$pip_log" \
    | { grep -E --line-buffered '^(Collecting|Downloading|Installing|Successfully)' || true; }
then
  echo "pip install failed:" >&2
  tail -n 40 "$pip_log" >&2
  exit 1
fi

echo "[2/3] provisioning MNIST and the 8x8 digits, the test suite's small dataset" \
     "(eoi-jax data fetch mnist; eoi-jax data fetch digits)" >&2
"$python" -m eoi_jax data fetch mnist
if ! "$python" -m eoi_jax data fetch digits; then
  echo "warning: the digits could not be provisioned; the main job goes on, and the tests that" \
       "need them skip (eoi-jax data fetch digits to retry)" >&2
fi

echo "[3/3] training (eoi-jax train --config mnist_mlp --epochs 20${*:+ $*})" >&2
"$python" -m eoi_jax train --config mnist_mlp --epochs 20 "$@"
