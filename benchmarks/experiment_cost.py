"""What each experiment's full protocol costs on this machine, from measured step times.

For every network of an experiment's full grid (``experiments.<name>``), this
trains one run for a few steps at the protocol's batch size on synthetic
images of the paper dataset's shape and classes (no download needed), reads
the steady step time (``step_time_s``; compilation is reported apart), and
extrapolates the grid: runs x epochs x steps per epoch (90% of the training
set, the protocol's hold-out) x step time. Runs trained side by side cost
about as much as one after another on a CPU (``benchmarks/multirun.py``), so
the estimate is one of single runs in sequence; it is an extrapolation, not
a measurement of the grid.

Usage: python -m benchmarks.experiment_cost [--experiments cnn_1000 cifar_cnns ...] [--steps 4]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import importlib
import json
import math
import sys
import tempfile
from pathlib import Path

try:
  from benchmarks._timing import markdown_table
except ImportError:
  from _timing import markdown_table

DEFAULT = ("mlp_density", "mlp_1000", "cnn_1000", "cifar_cnns", "tiny_imagenet")


def stand_in(dataset: str, num_train: int):
  """Synthetic images with the dataset's shape, classes and preprocessing."""
  from eoi_jax.training import data

  info = data.SPECS[dataset].info
  train, test = data.synthetic(num_train=num_train, num_test=num_train // 2,
                               image_shape=info.image_shape, num_classes=info.num_classes)
  return data.Dataset(data.Split(*train), data.Split(*test), data.Split(*test), info)


def step_time(config, steps: int) -> tuple[float, float]:
  """``(steady step s, compile s)`` of one run of ``config``."""
  from eoi_jax.training.train import train_and_evaluate

  with tempfile.TemporaryDirectory() as tmp:
    config = dataclasses.replace(config, epochs=1, checkpoint=False, jacobian=False, quiet=True,
                                 ai_steps=1, run_dir=str(Path(tmp) / "run"))
    train_and_evaluate(config, dataset=stand_in(config.dataset, config.batch_size * steps))
    first = json.loads((Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()[0])
  return first["step_time_s"], first["compile_s"]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--experiments", nargs="+", default=list(DEFAULT))
  parser.add_argument("--steps", type=int, default=4, help="steps timed per network")
  args = parser.parse_args(argv)
  from experiments import _common
  from eoi_jax.training import data

  rows = []
  for name in args.experiments:
    experiment = importlib.import_module(f"experiments.{name}").EXPERIMENT
    base, _, configs, _, _ = _common.configs(
        experiment, _common.parser(experiment).parse_args(["--runs-dir", "unused"]))
    by_network = collections.Counter((c.model, c.depth, c.width, c.activation) for c in configs)
    for (model, depth, width, activation), runs in by_network.items():
      config = next(c for c in configs if (c.model, c.depth, c.width, c.activation) ==
                    (model, depth, width, activation) and c.init in ("uniform", "dense"))
      seconds, compile_s = step_time(config, args.steps)
      train_size = data.SPECS[config.dataset].counts[0]
      steps_per_epoch = math.ceil(train_size * (1 - config.val_fraction) / config.batch_size)
      total = runs * config.epochs * steps_per_epoch * seconds
      rows.append([name, f"{model} depth={depth} width={width} {activation or ''}".strip(),
                   str(runs), str(config.epochs), f"{seconds * 1e3:.1f}", f"{compile_s:.1f}",
                   f"{total / 86400:.1f}"])
      print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
  print(markdown_table(["experiment", "network", "runs", "epochs", "step ms", "compile s",
                        "CPU-days (extrapolated)"], rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
