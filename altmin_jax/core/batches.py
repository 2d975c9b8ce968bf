"""Batch plumbing shared by the methods that take ``batch=(x, y)``: unpacking and
validation against the model from static shapes, before anything is traced."""

from __future__ import annotations

import math
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


def unpack_batch(model: BatchModel, batch: Any) -> tuple[Array, Array]:
  """``(x, y)`` from ``batch``, checked against ``model``.

  Raises:
    ValueError: unless ``batch`` is a pair whose ``x`` matches the model's input shape
      and whose labels ``y`` fit a batch of that size and the model's outputs.
  """
  if not isinstance(batch, (tuple, list)) or len(batch) != 2:
    raise ValueError(f"batch must be a pair (x, y), got {type(batch).__name__}")
  x, y = (jnp.asarray(b) for b in batch)
  if x.ndim == 0:
    raise ValueError("batch x must have a leading batch axis, got a scalar")
  model.check_input(x, "batch x")
  losses_lib.check_labels(y, x.shape[0], num_outputs(model))
  return x, y


def require_params(params: PyTree, method: str) -> PyTree:
  """``params`` unless ``None``: methods that set parameters need them."""
  if params is None:
    raise ValueError(f"{method} needs params: call update(grads, state, params, batch=(x, y))")
  return params
