"""Type aliases shared by every family."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import optax

Array = jax.Array
PyTree = Any
Scalar = float | int | jax.Array
ScalarOrSchedule = optax.ScalarOrSchedule
Schedule = optax.Schedule
Loss = Callable[[Array, Array], Array]  # per-sample loss(outputs, labels) -> (batch,)
MatVec = Callable[[PyTree], PyTree]  # a linear map on pytrees, v -> A v
Optimizers = optax.GradientTransformation | Sequence[optax.GradientTransformation]

__all__ = [
  "Array",
  "Loss",
  "MatVec",
  "Optimizers",
  "PyTree",
  "Scalar",
  "ScalarOrSchedule",
  "Schedule",
]
