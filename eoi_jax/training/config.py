"""Training configuration: a dataclass, named presets and command-line overrides.

Presets follow the paper's protocol (SGD with Nesterov momentum 0.9, coupled L2
1e-4, batch 128, step decay x0.1 at 50% and 75%, 10% validation hold-out);
every field can be overridden: ``eoi-jax train --config mnist_mlp --density 0.05``.
A config file (JSON with any subset of the fields) works in place of a preset name.
Unless ``run_dir`` is given, :func:`make_config` names the run directory after
the config (:func:`default_run_dir`), so distinct configs never share one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import typing
from pathlib import Path
from typing import Optional, Union


@dataclasses.dataclass(frozen=True)
class Config:
  # Data.
  dataset: str = "mnist"
  data_dir: Optional[str] = None
  val_fraction: float = 0.1
  limit: Optional[int] = None  # keep the first N train / test examples (smoke runs)
  # Model.
  model: str = "mlp"
  depth: Optional[int] = None
  width: Optional[int] = None
  activation: Optional[str] = None
  # Sparse initialisation.
  init: str = "eoi"  # any of eoi_jax.methods.METHODS: eoi, dense, uniform, erk, sao, snip, ... +eoi/+ai
  density: float = 0.1
  allocator: str = "uniform"  # uniform | erk | uniform_dense_ends
  gain: float = 1.0  # sigma_w
  bias_std: float = 0.0  # sigma_b
  center_density: Optional[Union[float, str]] = None  # conv centre tap: None | "sqrt" | float
  structured: bool = False  # EIS: a conv's EOI mask is its centre mask on every tap
  ai_steps: int = 10_000  # approximate-isometry steps for init=ai / <method>+ai
  sao_degree: Optional[int] = None  # init=sao: one degree for all sparse layers (default: density)
  block: Optional[int] = None  # b x b blocks: block EOI / random block masks where b divides a layer
  # Optimisation.
  optimizer: str = "sgd"  # sgd | adam | adamw
  lr: float = 0.01
  momentum: float = 0.9
  weight_decay: float = 1e-4
  schedule: str = "step"  # step | cosine | constant
  epochs: int = 100
  batch_size: int = 128
  seed: int = 0
  # Running.
  run_dir: str = "runs/default"  # make_config names it after the config (default_run_dir)
  devices: Optional[int] = None  # use the first N devices (default: all)
  jacobian: bool = False  # log Jacobian singular values at each epoch's first batch
  checkpoint: bool = True
  resume: bool = True
  quiet: bool = False
  log_every: int = 50

  def __post_init__(self):
    validate(self)


PRESETS = {
    # The paper's MLP experiment: 784-100x6-10 on MNIST.
    "mnist_mlp": {},
    # 1000-layer tanh MLP at density 0.125.
    "mnist_mlp_1000": dict(depth=1000, width=128, density=0.125, lr=1e-4, gain=1.0247,
                           bias_std=0.00448, activation="tanh", ai_steps=1000),
    # 1000-layer tanh CNN at density 0.125 on CIFAR-10.
    "cifar10_cnn_1000": dict(dataset="cifar10", model="deep_cnn", depth=1000, width=128,
                             density=0.125, lr=1e-4, gain=1.0247, bias_std=0.00448,
                             activation="tanh", ai_steps=1000),
    "cifar10_resnet32": dict(dataset="cifar10", model="resnet32", density=0.1, lr=0.1,
                             epochs=200, activation="relu"),
    "cifar10_vgg16": dict(dataset="cifar10", model="vgg16", density=0.1, lr=0.1, epochs=200,
                          activation="relu"),
    # EfficientNet-B0 at density 0.1 on Tiny ImageNet (the paper's settings).
    "tiny_imagenet_efficientnet": dict(dataset="tiny_imagenet", model="efficientnet_b0",
                                       density=0.1, lr=0.01, epochs=120, weight_decay=1e-3,
                                       activation="relu"),
    # A sparse Vision Transformer (EOI attention, MLP and patch kernels) on
    # the 8x8 digits, in well under a minute on a CPU.
    "digits_vit": dict(dataset="digits", model="vit", depth=2, width=32, density=0.25,
                       optimizer="adamw", lr=3e-3, weight_decay=1e-4, schedule="cosine",
                       epochs=15, batch_size=64),
    # Seconds-long end-to-end run on the 8x8 digits.
    "digits_smoke": dict(dataset="digits", depth=4, width=64, density=0.25, lr=0.05, epochs=3,
                         batch_size=64),
}


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
"""How a yes / no is written on the command line and in environment variables."""


def turned_off(variable: str) -> bool:
  """Whether the environment variable ``variable`` is set to one of :data:`FALSE_WORDS`."""
  return os.environ.get(variable, "").strip().lower() in FALSE_WORDS


def _convert(field: dataclasses.Field, text):
  """Parses a command-line string for ``field``."""
  if not isinstance(text, str):
    return text
  kind = typing.get_type_hints(Config)[field.name]
  if text.lower() in ("none", "null") and typing.get_origin(kind) is Union:
    return None
  args = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
  for arg in args:
    if arg is bool:
      if text.lower() in TRUE_WORDS:
        return True
      if text.lower() in FALSE_WORDS:
        return False
      continue
    try:
      return arg(text)
    except (TypeError, ValueError):
      continue
  raise ValueError(f"{field.name}: cannot parse {text!r} as {kind}")


RUNS_ROOT = "runs"
"""Where :func:`default_run_dir` puts run directories (relative to the working directory)."""

_LONGEST_RUN_NAME = 120  # characters; longer names end in a hash (file systems allow 255)


def _name_part(value) -> str:
  """A config value as it appears in a run directory's name."""
  text = str(value).lower() if isinstance(value, bool) or value is None else str(value)
  return "".join(c if c.isalnum() or c in ".-+" else "_" for c in text)


def default_run_dir(name: str, config: Config, base_values: dict) -> str:
  """``runs/<name>_<init>_<density>[_<field>=<value>...]``: the run directory
  :func:`make_config` gives a config when none is asked for.

  The fields after the density are those (besides ``init`` and ``density``)
  whose value differs from ``base_values`` (the preset's or the config file's
  own values, else the :class:`Config` defaults), in field order; fields a run
  may change when resumed (where it lives, how it reports:
  :data:`eoi_jax.training.rundir.RESUMABLE_FIELDS`) are left out. So two
  configs of one preset share a directory exactly when they are the same
  run. A name longer than 120 characters keeps its start and ends in a hash
  of the differing fields.

  Args:
    name: the preset's name or the config file's stem.
    config: the config.
    base_values: the fields set by the preset or the file.

  Returns:
    The path, relative to the working directory.

  Example:
    >>> default_run_dir("mnist_mlp", make_config("mnist_mlp", epochs=20), {})
    'runs/mnist_mlp_eoi_0.1_epochs=20'
  """
  from eoi_jax.training.rundir import RESUMABLE_FIELDS  # late: keep config importable fast

  extras = []
  for field in dataclasses.fields(Config):
    if field.name in RESUMABLE_FIELDS or field.name in ("init", "density"):
      continue
    value = getattr(config, field.name)
    if value != base_values.get(field.name, field.default):
      extras.append(f"{field.name}={_name_part(value)}")
  parts = [_name_part(name), _name_part(config.init), _name_part(config.density)]
  run_name = "_".join(parts + extras)
  if len(run_name) > _LONGEST_RUN_NAME:
    digest = hashlib.sha256("_".join(extras).encode()).hexdigest()[:12]
    run_name = "_".join(parts)[:_LONGEST_RUN_NAME - 13] + "_" + digest
  return f"{RUNS_ROOT}/{run_name}"


def make_config(base: str = "mnist_mlp", **overrides) -> Config:
  """A preset name or a JSON file, with field overrides (strings are parsed).

  The result is validated (as every :class:`Config` is when built). Unless
  the preset, the file or an override sets ``run_dir``, it is
  :func:`default_run_dir` (named after the preset or file and the fields
  that differ from it).

  Raises:
    ValueError: unknown preset, unknown field, unparsable or invalid value.

  Example:
    >>> make_config("digits_smoke", epochs=5).run_dir
    'runs/digits_smoke_eoi_0.25_epochs=5'
  """
  if base in PRESETS:
    values = dict(PRESETS[base])
    name, base_values = base, dict(PRESETS[base])
  elif Path(base).is_file():
    try:
      values = json.loads(Path(base).read_text())
    except ValueError as e:
      raise ValueError(f"config: {base} is not valid JSON ({e})") from None
    if not isinstance(values, dict):
      raise ValueError(f"config: {base} must hold a JSON object of fields")
    # A file's own fields are part of its runs' names: files of one stem differ.
    name, base_values = Path(base).stem, {}
  else:
    raise ValueError(f"config must be a preset {sorted(PRESETS)} or a JSON file, got {base!r}")
  fields = {f.name: f for f in dataclasses.fields(Config)}
  unknown = sorted(set(values) - set(fields)) + sorted(set(overrides) - set(fields))
  if unknown:
    raise ValueError(f"unknown config fields {unknown}")
  for field, value in overrides.items():
    values[field] = _convert(fields[field], value)
  config = Config(**values)
  if "run_dir" not in values:
    config = dataclasses.replace(config, run_dir=default_run_dir(name, config, base_values))
  return config


def _type_ok(value, kind) -> bool:
  if typing.get_origin(kind) is Union:
    return any(_type_ok(value, arg) for arg in typing.get_args(kind))
  if kind is type(None):
    return value is None
  if kind is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if kind is int:
    return isinstance(value, int) and not isinstance(value, bool)
  return isinstance(value, kind)


_INT32_MIN, _INT32_MAX = -2**31, 2**31 - 1


def validate(config: Config) -> Config:
  """Checks types, values and names; raises ``ValueError`` naming the field.

  The architecture fields must be ones the model takes
  (:func:`eoi_jax.training.models.check_fields`: ``depth`` for ``resnet32``
  is an error). Whether the sparse initialisation can be built at the
  network's layer shapes (SAO's degrees, say) is the plan's question
  (:mod:`eoi_jax.training.plan`), answered before a sweep trains.
  """
  from eoi_jax import allocation, methods, optim  # late: keep config importable fast
  from eoi_jax.training import data, models

  for name, kind in typing.get_type_hints(Config).items():
    value = getattr(config, name)
    if not _type_ok(value, kind):
      raise ValueError(f"{name} must be of type {getattr(kind, '__name__', kind)}, got "
                       f"{type(value).__name__} {value!r}")
    # Seeds, sizes and counts reach JAX as int32; an infinite rate trains nothing.
    if isinstance(value, int) and not isinstance(value, bool) and not (
        _INT32_MIN <= value <= _INT32_MAX):
      raise ValueError(f"{name} is out of range: {value} does not fit in a 32-bit signed "
                       f"integer ({_INT32_MIN} to {_INT32_MAX})")
    if isinstance(value, float) and not math.isfinite(value):
      raise ValueError(f"{name} must be finite, got {value!r}")
  checks = [
      (config.dataset in data.SPECS, f"dataset must be one of {list(data.SPECS)}"),
      (config.model in models.MODELS, f"model must be one of {list(models.MODELS)}"),
      (config.init in methods.METHODS, f"init must be one of {list(methods.METHODS)}"),
      (config.allocator in allocation.ALLOCATORS,
       f"allocator must be one of {sorted(allocation.ALLOCATORS)}"),
      (config.activation is None or config.activation in models.ACTIVATIONS,
       f"activation must be one of {sorted(models.ACTIVATIONS)}"),
      (config.optimizer in optim.OPTIMIZERS,
       f"optimizer must be one of {sorted(optim.OPTIMIZERS)}"),
      (config.schedule in optim.SCHEDULES, f"schedule must be one of {sorted(optim.SCHEDULES)}"),
      (0 < config.density <= 1, "density must be in (0, 1]"),
      (config.lr > 0, "lr must be > 0"),
      (config.epochs >= 1, "epochs must be >= 1"),
      (config.batch_size >= 1, "batch_size must be >= 1"),
      (0 <= config.val_fraction < 1, "val_fraction must be in [0, 1)"),
      (config.weight_decay >= 0, "weight_decay must be >= 0"),
      (config.bias_std >= 0, "bias_std must be >= 0"),
      (config.gain != 0, "gain must be non-zero"),
      (config.devices is None or config.devices >= 1, "devices must be >= 1"),
      (config.log_every >= 1, "log_every must be >= 1"),
      (config.ai_steps >= 1, "ai_steps must be >= 1"),
      (config.sao_degree is None or config.sao_degree >= 1, "sao_degree must be >= 1"),
      (config.block is None or config.block >= 1, "block must be >= 1 (or unset: no blocks)"),
      (config.block is None or config.init not in methods.METHODS
       or methods.registry.takes_block(config.init),
       f"block needs an init with EOI values or random masks, not init={config.init!r}"),
      (config.center_density in (None, "sqrt") or (not isinstance(config.center_density, str)
                                                   and 0 < config.center_density <= 1),
       "center_density must be None, 'sqrt' or a float in (0, 1]"),
  ]
  for ok, message in checks:
    if not ok:
      field = message.split()[0]
      raise ValueError(f"{message}, got {getattr(config, field)!r}")
  for field in ("depth", "width"):
    value = getattr(config, field)
    if value is not None and value < 1:
      raise ValueError(f"{field} must be >= 1 (or unset: the model's default), got {value!r}")
  models.check_fields(config.model, depth=config.depth, width=config.width,
                      activation_name=config.activation)
  return config
