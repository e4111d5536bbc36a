"""Argument checks for the public API, run once at the boundary.

A value of the wrong type (a bool, a string, a list, ``None`` where a number
belongs) raises ``TypeError``; a number out of range raises ``ValueError``.
Both name the argument and what is allowed, so bad input never turns into a
silently wrong matrix. Functions behind the boundary trust their arguments.
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import jax
import numpy as np


def is_tracer(value) -> bool:
  """True for values traced by a JAX transformation (not inspectable)."""
  return isinstance(value, jax.core.Tracer)


def _real_number(value, name: str, allowed: str) -> float:
  """``value`` as a float if it is a real number (a Python or NumPy scalar, or
  a 0-d array); ``TypeError`` naming ``name`` otherwise."""
  if isinstance(value, (bool, np.bool_)) or isinstance(value, (str, bytes)):
    raise TypeError(f"{name} must be {allowed}, got {type(value).__name__} {value!r}")
  if isinstance(value, numbers.Real):
    return float(value)
  if isinstance(value, (np.ndarray, jax.Array)) and value.shape == () and (
      np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
    return float(value)
  raise TypeError(f"{name} must be {allowed}, got {type(value).__name__} {value!r}")


def check_density(density, name: str = "density") -> float:
  """Returns ``density`` as a Python float after checking it lies in (0, 1]."""
  if is_tracer(density):
    raise ValueError(
        f"{name} must be a concrete number in (0, 1], not a traced value: it "
        "sets the number of rotations. Pass it as a Python float (mark it "
        "static under jax.jit)."
    )
  value = _real_number(density, name, "a number in (0, 1]")
  if not math.isfinite(value) or not 0.0 < value <= 1.0:
    raise ValueError(f"{name} must be in (0, 1], got {density!r}")
  return value


def check_gain(gain, name: str = "gain"):
  """Checks that a concrete ``gain`` is a non-zero finite number.

  Traced gains are passed through unchanged (they cannot be inspected).
  """
  if is_tracer(gain):
    return gain
  value = _real_number(gain, name, "a non-zero finite number")
  if not math.isfinite(value) or value == 0.0:
    raise ValueError(f"{name} must be a non-zero finite number, got {gain!r}")
  return gain


def check_flag(value, name: str) -> bool:
  """Returns ``value`` if it is a bool; ``TypeError`` otherwise (``"no"`` is truthy)."""
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
  return bool(value)


def check_non_negative(value, name: str) -> float:
  """Returns ``value`` as a float after checking it is a finite number >= 0."""
  number = _real_number(value, name, "a finite number >= 0")
  if not math.isfinite(number) or number < 0:
    raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
  return number


def check_shape(shape, ndims: Sequence[int], name: str = "shape") -> tuple[int, ...]:
  """Returns ``shape`` as a tuple of positive ints with an allowed length."""
  try:
    dims = tuple(shape)
  except TypeError as e:
    raise ValueError(f"{name} must be a sequence of positive ints, got {shape!r}") from e
  if len(dims) not in ndims:
    allowed = ", ".join(str(n) for n in ndims)
    raise ValueError(
        f"{name} must have {allowed} dimensions, got {len(dims)} ({shape!r})"
    )
  out = []
  for d in dims:
    if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d <= 0:
      raise ValueError(f"{name} dimensions must be positive ints, got {shape!r}")
    out.append(int(d))
  return tuple(out)


_KEY_KINDS = ("a jax.random key (jax.random.key(seed)) or a raw uint32[2] key "
              "(jax.random.PRNGKey(seed))")


def _described(value) -> str:
  """What was passed, for an error message: ``uint32[3]``, ``key<fry>[4]``, ``int 3``."""
  if hasattr(value, "dtype") and hasattr(value, "shape"):
    return f"{value.dtype}{list(value.shape)}"
  return f"{type(value).__name__} {value!r}"


def _key_batch(key, name: str) -> tuple[int, ...]:
  """The batch shape of an array of keys (``()`` for one key); ``TypeError`` or
  ``ValueError`` naming ``name`` for anything that is not keys."""
  if not (hasattr(key, "dtype") and hasattr(key, "shape")):
    raise TypeError(f"{name} must be {_KEY_KINDS}, got {_described(key)}")
  shape = tuple(key.shape)
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    return shape
  if key.dtype != np.uint32:
    raise TypeError(f"{name} must be {_KEY_KINDS}, got {_described(key)}")
  if not shape or shape[-1] != 2:
    raise ValueError(f"{name} must be {_KEY_KINDS}: a raw key is two uint32 words, got "
                     f"{_described(key)} (wrap other key data with jax.random.wrap_key_data)")
  return shape[:-1]


def check_key(key, name: str = "key"):
  """Returns ``key`` after checking it is one ``jax.random`` key.

  A typed key of shape ``()`` or a raw ``uint32[2]`` key; under ``jax.vmap``
  each example's key is one. Only the shape and dtype are read, so traced
  keys (under ``jit`` and ``vmap``) are checked alike.
  """
  batch = _key_batch(key, name)
  if batch:
    raise ValueError(
        f"{name} must be one key, got a batch of {math.prod(batch)} keys ({_described(key)}): "
        "call the function under jax.vmap over the keys (or use eoi_batch for a stack of "
        "kernels)")
  return key


def check_keys(keys, count: int, name: str = "keys"):
  """Returns ``keys`` after checking it holds ``count`` keys along one axis
  (typed ``(count,)`` or raw ``uint32[count, 2]``)."""
  batch = _key_batch(keys, name)
  if len(batch) != 1:
    raise ValueError(f"{name} must be one axis of keys (typed (n,) or uint32[n, 2]), got "
                     f"{_described(keys)}")
  if batch[0] != count:
    raise ValueError(f"{name} must hold one key per kernel ({count} densities), got "
                     f"{batch[0]} keys")
  return keys
