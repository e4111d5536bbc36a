"""Wall time to initialise whole networks with each sparse initialisation.

For the 7x100 MLP (784-100x6-10), ResNet-32 and the 1000-layer MLP
(784-128, 998 x 128-128, 128-10), runs ``eoi_jax.methods.initialize_model``
with each method, each (model, method) in a fresh Python process on the same
device (so no method inherits another's compiled functions), and prints:

* the first call's wall time, compilation included: what a training run pays;
* a second call's wall time with a new key: what remains once jitted
  functions are cached (SNIP, GraSP and SynFlow trace a new function of the
  model each call, so they compile again);
* the number of programs the first call compiles and their compile seconds
  (from JAX's compile log);
* the realised density, and both times relative to EOI's;
* with ``--warm-cache``, the first call in a new process whose persistent
  compilation cache (:mod:`eoi_jax.training.compilation_cache`) an earlier
  process filled: what the command line pays from its second run on.

Each process first runs one tiny jitted function, so backend start-up is not
charged to the method. Approximate isometry runs the paper's steps: 10,000
(1,000 for the 1000-layer MLP); ``--ai-steps`` overrides. SNIP and GraSP score
one random batch of 128 (the cost does not depend on the data). Densities are
ones SAO can build: 0.1 for the 7x100 MLP (0.125 would need degree 12.5 of
100), 0.125 for ResNet-32 (at 0.1 its 32-channel layers would need degree 3.2)
and for the 1000-layer MLP (the paper's degree 16 of 128); ``--density``
overrides, and SAO then reports why it cannot run.

Usage: python benchmarks/init_cost.py [--models mlp_7x100 resnet32 mlp_1000]
       [--methods eoi dense ...] [--density D] [--ai-steps N] [--warm-cache]
       [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

from eoi_jax import methods
from eoi_jax.training import compilation_cache, models

try:
  from benchmarks._timing import markdown_table
except ImportError:  # run as a script from the benchmarks folder
  from _timing import markdown_table

MODELS = {
    # name: (model, image shape, build options, density, AI steps in the paper)
    "mlp_7x100": ("mlp", (28, 28, 1), dict(depth=7, width=100), 0.1, 10_000),
    "resnet32": ("resnet32", (32, 32, 3), {}, 0.125, 10_000),
    "mlp_1000": ("mlp", (28, 28, 1), dict(depth=1000, width=128, activation_name="tanh"), 0.125,
                 1_000),
}
DEFAULT_METHODS = ("eoi", "dense", "uniform", "erk", "snip", "grasp", "synflow", "sao", "ai",
                   "snip+eoi")


def _timed(method, key, model, density, batch, ai_steps):
  start = time.perf_counter()
  out = methods.initialize_model(method, key, model, density, batch=batch, ai_steps=ai_steps)
  jax.block_until_ready((out.params, out.masks))
  return time.perf_counter() - start, out


class _CompileLog(logging.Handler):
  """Counts XLA compilations (and their seconds) from JAX's compile log."""

  def __init__(self):
    super().__init__(logging.WARNING)
    self.count, self.seconds = 0, 0.0

  def emit(self, record):
    match = re.search(r"Finished XLA compilation of .* in ([0-9.e-]+) sec", record.getMessage())
    if match:
      self.count += 1
      self.seconds += float(match.group(1))


def measure(model_name: str, method: str, density: float, ai_steps: int,
            cache_dir: str | None = None) -> dict:
  """Times the first and a second call in this process; counts the programs
  the first call compiles (with ``cache_dir``, JAX's persistent compilation
  cache in that folder is on)."""
  if cache_dir:
    compilation_cache.enable(cache_dir)
  jax.block_until_ready(jax.jit(lambda k: jax.random.normal(k, (2,)))(jax.random.key(0)))
  kind, shape, options, _, _ = MODELS[model_name]
  model = models.build(kind, shape, 10, **options)
  x = jax.random.normal(jax.random.key(1), (128,) + shape)
  batch = (x, jnp.arange(128) % 10)
  log = _CompileLog()
  logging.getLogger("jax._src.dispatch").addHandler(log)
  jax.config.update("jax_log_compiles", True)
  try:
    first, out = _timed(method, jax.random.key(0), model, density, batch, ai_steps)
    jax.config.update("jax_log_compiles", False)
    second, _ = _timed(method, jax.random.key(1), model, density, batch, ai_steps)
  except ValueError as e:
    return dict(error=str(e))
  return dict(first_s=first, second_s=second, density=out.summary.density,
              programs=log.count, compile_s=log.seconds)


def _in_fresh_process(model_name, method, density, ai_steps, cache_dir=None) -> dict:
  command = [sys.executable, __file__, "--worker", model_name, method, str(density),
             str(ai_steps)] + ([cache_dir] if cache_dir else [])
  done = subprocess.run(command, capture_output=True, text=True, check=False)
  lines = done.stdout.strip().splitlines()
  if done.returncode or not lines:
    return dict(error=f"worker failed ({done.returncode}): {done.stderr.strip()[-500:]}")
  return json.loads(lines[-1])


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  if argv and argv[0] == "--worker":
    model_name, method, density, ai_steps = argv[1:5]
    print(json.dumps(measure(model_name, method, float(density), int(ai_steps),
                             argv[5] if len(argv) > 5 else None)))
    return
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
  parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                      choices=list(methods.METHODS))
  parser.add_argument("--density", type=float, default=None,
                      help="one density for all models (default: each model's, see above)")
  parser.add_argument("--ai-steps", type=int, default=None,
                      help="override the paper's AI steps (10,000; 1,000 for mlp_1000)")
  parser.add_argument("--json", default=None, help="also write the rows to this file")
  parser.add_argument("--warm-cache", action="store_true",
                      help="also time the first call in a third process whose persistent "
                           "compilation cache a second process has filled")
  args = parser.parse_args(argv)

  print(f"devices: {jax.devices()}")
  header = ("model", "density", "method", "first call s", "programs compiled", "compile s",
            "second call s", "realised density", "first / EOI", "second / EOI") + (
                ("first call, warm cache s",) if args.warm_cache else ())
  rows, records = [], []
  for model_name in args.models:
    _, _, _, model_density, paper_ai_steps = MODELS[model_name]
    density = args.density or model_density
    ai_steps = args.ai_steps or paper_ai_steps
    reference = None
    for method in args.methods:
      result = _in_fresh_process(model_name, method, density, ai_steps)
      if "error" in result:
        print(f"{model_name} {method}: cannot run: {result['error']}", flush=True)
        continue
      first, second = result["first_s"], result["second_s"]
      if method == "eoi":
        reference = (first, second)
      label = f"{method} ({ai_steps} steps)" if method.endswith("ai") else method
      ratios = ((f"{first / reference[0]:.2f}", f"{second / reference[1]:.2f}") if reference
                else ("-", "-"))
      if args.warm_cache:
        with tempfile.TemporaryDirectory() as cache_dir:
          _in_fresh_process(model_name, method, density, ai_steps, cache_dir)
          result["warm_first_s"] = _in_fresh_process(model_name, method, density, ai_steps,
                                                     cache_dir).get("first_s", float("nan"))
      rows.append((model_name, f"{density:g}", label, f"{first:.3f}", str(result["programs"]),
                   f"{result['compile_s']:.2f}", f"{second:.3f}",
                   f"{result['density']:.4f}") + ratios + (
                       (f"{result['warm_first_s']:.3f}",) if args.warm_cache else ()))
      records.append(dict(model=model_name, method=method, ai_steps=ai_steps, **result))
      print("  ".join(rows[-1]), flush=True)
  print()
  print(markdown_table(header, rows))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"devices": str(jax.devices()), "rows": records}, f, indent=1)


if __name__ == "__main__":
  main()
