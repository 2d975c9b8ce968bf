"""Hyperparameter checks shared by the factories.

Every factory validates its hyperparameters when it is called, raising ``ValueError``
with the offending ``name=value``. Python numbers, NumPy scalars and concrete 0-d
arrays are checked; traced values (a factory called inside ``jit``, as
``optax.inject_hyperparams`` does) cannot be inspected and pass through unchecked.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import jax
import numpy as np


def concrete_scalar(name: str, value: Any) -> float | None:
  """``float(value)`` for a concrete real scalar, ``None`` for a traced one.

  Raises:
    ValueError: when ``value`` is not a real scalar (booleans included).
  """
  if isinstance(value, jax.core.Tracer):
    return None
  if isinstance(value, (bool, np.bool_)) or (
    isinstance(value, (np.ndarray, jax.Array)) and (value.ndim != 0 or value.dtype == bool)
  ):
    raise ValueError(f"{name} must be a real number, got {name}={value!r}")
  if isinstance(value, numbers.Real):
    return float(value)
  if isinstance(value, (np.ndarray, jax.Array)) and np.issubdtype(value.dtype, np.number):
    return float(value)
  raise ValueError(f"{name} must be a real number, got {name}={value!r}")


def check_real(
  name: str,
  value: Any,
  *,
  low: float = -math.inf,
  high: float = math.inf,
  low_open: bool = False,
  high_open: bool = False,
) -> Any:
  """Checks ``low <= value <= high`` (strict with ``*_open``) and finiteness; returns
  ``value`` unchanged (traced values unchecked)."""
  v = concrete_scalar(name, value)
  if v is None:
    return value
  ok = (
    math.isfinite(v)
    and (v > low if low_open else v >= low)
    and (v < high if high_open else v <= high)
  )
  if not ok:
    lo = f"{'(' if low_open else '['}{low:g}"
    hi = f"{high:g}{')' if high_open else ']'}"
    raise ValueError(f"{name} must be a finite number in {lo}, {hi}, got {name}={value!r}")
  return value


def check_positive(name: str, value: Any) -> Any:
  """``value > 0`` and finite."""
  return check_real(name, value, low=0.0, low_open=True)


def check_int(name: str, value: Any, minimum: int) -> int:
  """An integer (Python or NumPy, not bool) ``>= minimum``, returned as ``int``."""
  if isinstance(value, (bool, np.bool_)):
    raise ValueError(f"{name} must be an integer >= {minimum}, got {name}={value!r}")
  try:
    index = operator.index(value)
  except TypeError:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {name}={value!r}") from None
  if index < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {name}={value!r}")
  return index
