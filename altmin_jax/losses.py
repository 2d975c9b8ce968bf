"""Per-sample losses ``loss(outputs, labels) -> (batch,)`` and metrics.

Every loss returns one value per sample; optimizers average or sum them as their
objective requires (AM sums per-sample terms in the code subproblems, which are
separable across samples, and averages them in the weight subproblems).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def softmax_cross_entropy(logits: Array, labels: Array) -> Array:
  """Multinomial loss (paper eq. 2) per sample.

  Args:
    logits: ``(batch, classes)``.
    labels: integer class ids ``(batch,)`` or one-hot / probability rows
      ``(batch, classes)``.

  Returns:
    ``(batch,)`` losses ``-log softmax(logits)[label]``.
  """
  if labels.ndim == logits.ndim:
    return optax.softmax_cross_entropy(logits, labels.astype(logits.dtype))
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def squared_error(outputs: Array, targets: Array) -> Array:
  """``||outputs - targets||^2`` per sample (summed over all non-batch axes)."""
  diff = (outputs - targets).astype(outputs.dtype)
  return jnp.sum(jnp.reshape(diff * diff, (diff.shape[0], -1)), axis=-1)


def accuracy(logits: Array, labels: Array) -> Array:
  """Fraction of samples whose arg-max logit is the label (ids or one-hot)."""
  if labels.ndim == logits.ndim:
    labels = jnp.argmax(labels, axis=-1)
  return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def check_labels(labels: Array, batch_size: int, num_outputs: int | None = None) -> None:
  """Raises ``ValueError`` when ``labels`` cannot belong to a batch of ``batch_size``."""
  if labels.ndim == 0 or labels.shape[0] != batch_size:
    raise ValueError(
      f"labels have shape {tuple(labels.shape)}, expected a leading batch axis of {batch_size}"
    )
  if labels.ndim == 2 and num_outputs is not None and labels.shape[1] != num_outputs:
    raise ValueError(
      f"one-hot labels have {labels.shape[1]} columns but the network has {num_outputs} outputs"
    )
