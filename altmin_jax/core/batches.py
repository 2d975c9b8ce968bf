"""Batch plumbing shared by the methods that take ``batch=(x, y)``: unpacking and
validation against the model from static shapes (and concrete label values), before
anything is traced."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import jax.numpy as jnp

from altmin_jax import losses as losses_lib
from altmin_jax.core.types import Array, PyTree


class BatchModel(Protocol):
  """What :func:`unpack_batch` needs of a model: an input check and an output width."""

  def check_input(self, x: Array, what: str = "x") -> None: ...


def num_outputs(model: Any) -> int | None:
  """Width of the model's outputs (logits per sample), when it says."""
  if hasattr(model, "num_classes"):
    return int(model.num_classes)
  shape = getattr(model, "output_shape", None)
  return None if shape is None else math.prod(shape)


def unpack_batch(
  model: BatchModel, batch: Any, loss: Callable | None = None
) -> tuple[Array, Array]:
  """``(x, y)`` from ``batch``, checked against ``model`` (and ``loss``).

  Checks, from static shapes and dtypes (so also under ``jit``): ``batch`` is a pair,
  ``x`` holds at least one sample of the model's input shape, ``y`` has the same
  leading batch axis. With one of the library's losses (``loss``), also its label rule
  (:func:`altmin_jax.losses.check_labels`): float class ids and regression targets
  whose shape is not the model's output shape raise, and concrete class ids outside
  ``[0, classes)`` raise naming the first one. Traced class ids cannot be checked here;
  the loss then turns an out-of-range id into a NaN loss and NaN updates (see
  :mod:`altmin_jax.losses`).

  Raises:
    ValueError: for any of the above.
  """
  if not isinstance(batch, (tuple, list)) or len(batch) != 2:
    raise ValueError(f"batch must be a pair (x, y), got {type(batch).__name__}")
  x, y = (jnp.asarray(b) for b in batch)
  if x.ndim == 0:
    raise ValueError("batch x must have a leading batch axis, got a scalar")
  if x.shape[0] == 0:
    raise ValueError(
      f"batch must hold at least one sample, got an empty batch (x.shape={tuple(x.shape)})"
    )
  model.check_input(x, "batch x")
  losses_lib.check_labels(
    y,
    x.shape[0],
    num_outputs(model),
    loss=loss,
    output_shape=getattr(model, "output_shape", None),
  )
  return x, y


def require_params(params: PyTree, method: str) -> PyTree:
  """``params`` unless ``None``: methods that set parameters need them."""
  if params is None:
    raise ValueError(f"{method} needs params: call update(grads, state, params, batch=(x, y))")
  return params
