"""Hyperparameter checks: the one place every factory validates its arguments.

Every check raises ``ValueError`` whose message states the rule and names the value
(``delta must be a finite number > 0, got delta=-1.0``). Accepted scalars are Python
numbers, NumPy scalars and 0-d NumPy or JAX arrays. A *traced* value (the factory is
called inside ``jit``, as ``optax.inject_hyperparams`` does on every update) cannot be
inspected: real-valued checks let it through unchecked, so every real hyperparameter can
be injected. Integers that set a loop length or a shape must be concrete; for a traced one
:func:`check_int` says to list the argument in ``static_args``.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np
import optax


def is_traced(value: Any) -> bool:
  """Whether ``value`` is a JAX tracer (a value known only inside a transformation)."""
  return isinstance(value, jax.core.Tracer)


def _is_bool(value: Any) -> bool:
  if isinstance(value, (bool, np.bool_)):
    return True
  return isinstance(value, (np.ndarray, jax.Array)) and value.dtype == bool


def concrete_scalar(name: str, value: Any) -> float | None:
  """``float(value)`` for a concrete real scalar, ``None`` for a traced one.

  Raises:
    ValueError: when ``value`` is not a real scalar (booleans included).
  """
  if is_traced(value):
    if value.ndim != 0 or value.dtype == bool:
      raise ValueError(f"{name} must be a real scalar, got a traced {value.dtype}{value.shape}")
    return None
  if _is_bool(value):
    raise ValueError(f"{name} must be a real number, got {name}={value!r}")
  if isinstance(value, numbers.Real):
    return float(value)
  if (
    isinstance(value, (np.ndarray, np.generic, jax.Array))
    and np.ndim(value) == 0
    and np.issubdtype(value.dtype, np.number)
    and not np.issubdtype(value.dtype, np.complexfloating)
  ):
    return float(value)
  raise ValueError(f"{name} must be a real number, got {name}={value!r}")


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
  if high == math.inf:
    return f"{'>' if low_open else '>='} {low:g}"
  if low == -math.inf:
    return f"{'<' if high_open else '<='} {high:g}"
  return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def check_real(
  name: str,
  value: Any,
  *,
  low: float = -math.inf,
  high: float = math.inf,
  low_open: bool = False,
  high_open: bool = False,
) -> Any:
  """Checks that ``value`` is a finite real with ``low <= value <= high`` (strict with
  ``*_open``).

  Returns:
    ``float(value)`` for a concrete value; a traced value unchanged (unchecked).
  """
  v = concrete_scalar(name, value)
  if v is None:
    return value
  ok = (
    math.isfinite(v)
    and (v > low if low_open else v >= low)
    and (v < high if high_open else v <= high)
  )
  if not ok:
    rule = _interval(low, high, low_open, high_open)
    raise ValueError(f"{name} must be a finite number {rule}, got {name}={value!r}")
  return v


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> Any:
  """A finite ``value > 0`` (``>= 0`` with ``allow_zero``); see :func:`check_real`."""
  return check_real(name, value, low=0.0, low_open=not allow_zero)


def check_nonnegative(name: str, value: Any) -> Any:
  """A finite ``value >= 0``; see :func:`check_real`."""
  return check_real(name, value, low=0.0)


def check_unit_interval(name: str, value: Any, *, closed_right: bool = False) -> Any:
  """``value`` in ``[0, 1)`` (``[0, 1]`` with ``closed_right``); see :func:`check_real`."""
  return check_real(name, value, low=0.0, high=1.0, high_open=not closed_right)


def check_bool(name: str, value: Any) -> bool:
  """``True`` or ``False`` (Python or NumPy booleans, known when the method is built),
  returned as a Python ``bool``; anything else, a string like ``"no"`` included, is
  refused."""
  if is_traced(value) or not _is_bool(value) or np.ndim(value) != 0:
    raise ValueError(f"{name} must be True or False, got {name}={value!r}")
  return bool(value)


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
  """An integer ``minimum <= value (<= maximum)``, returned as a Python ``int``.

  Python and NumPy integers and concrete 0-d integer arrays are accepted; booleans,
  floats and traced values are not (these integers set loop lengths and shapes).
  """
  rule = f"an integer >= {minimum}" + ("" if maximum is None else f" and <= {maximum}")
  if is_traced(value):
    raise ValueError(
      f"{name} must be {rule} known when the method is built (it sets a loop length or "
      f"a shape), got a traced value; under optax.inject_hyperparams list {name!r} in "
      "static_args"
    )
  if _is_bool(value):
    raise ValueError(f"{name} must be {rule}, got {name}={value!r}")
  try:
    index = operator.index(value)
  except TypeError:
    raise ValueError(f"{name} must be {rule}, got {name}={value!r}") from None
  if index < minimum or (maximum is not None and index > maximum):
    raise ValueError(f"{name} must be {rule}, got {name}={value!r}")
  return index


def check_optional_int(name: str, value: Any, minimum: int) -> int | None:
  """``None`` or :func:`check_int`."""
  return None if value is None else check_int(name, value, minimum)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
  """``value`` when it is one of ``choices``."""
  choices = tuple(choices)
  if not any(value is c or (isinstance(value, str) and value == c) for c in choices):
    raise ValueError(f"{name} must be one of {choices}, got {name}={value!r}")
  return value


def check_callable(name: str, value: Any, signature: str) -> Callable:
  """``value`` when it is callable; ``signature`` says what it is called with."""
  if not callable(value):
    raise ValueError(f"{name} must be callable {signature}, got {name}={value!r}")
  return value


def check_loss(loss: Any) -> Callable:
  """A per-sample loss ``loss(outputs, labels) -> (batch,)``."""
  return check_callable("loss", loss, "loss(outputs, labels) -> (batch,)")


def check_optimizer(name: str, tx: Any) -> optax.GradientTransformation:
  """``tx`` when it is an ``optax.GradientTransformation``."""
  if not isinstance(tx, optax.GradientTransformation):
    raise ValueError(f"{name} must be an optax.GradientTransformation, got {name}={tx!r}")
  return tx


def check_instance(name: str, value: Any, cls: type | tuple[type, ...], what: str) -> Any:
  """``value`` when it is an instance of ``cls`` (``what`` names the expected type)."""
  if not isinstance(value, cls):
    raise ValueError(f"{name} must be {what}, got {name}={value!r}")
  return value
