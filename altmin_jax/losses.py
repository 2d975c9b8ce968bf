"""Per-sample losses ``loss(outputs, labels) -> (batch,)``, metrics and label checks.

Every loss returns one value per sample; optimizers average or sum them as their
objective requires (AM sums per-sample terms in the code subproblems, which are
separable across samples, and averages them in the weight subproblems).

**Bad labels.** Rules that depend on shapes and dtypes hold under ``jit`` too and raise
``ValueError`` from the loss itself: :func:`softmax_cross_entropy` takes integer class ids
``(batch,)`` or rows ``(batch, classes)``, never float ids; :func:`squared_error` takes
targets of exactly the outputs' shape (a ``(B,)`` target with ``(B, 1)`` outputs raises
instead of broadcasting to ``(B, B)``). Class-id *values* are checked by
:func:`check_labels` when they are concrete: the AM, SM and baseline methods pass their
loss to :func:`altmin_jax.core.unpack_batch`, which calls it before anything else in
``update`` (so an eager ``update`` raises), and
:func:`altmin_jax.training.make_train_step` calls it before its jitted step. Inside
``jit`` the values are traced and cannot be checked; then a class id outside
``[0, classes)`` makes that sample's loss **and its gradient** NaN, so the step's
updates are non-finite
(:func:`altmin_jax.training.all_finite` is ``False``,
:func:`altmin_jax.training.skip_nonfinite_updates` skips the step) and the method's
recorded batch loss is NaN. It is never read as another class (``-1`` is not the last
class).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array


def _is_traced(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def _check_class_label_dtype(logits: Array, labels: Array) -> None:
  if labels.ndim == logits.ndim - 1 and not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(
      "class labels of shape (batch,) must be integer class ids in [0, "
      f"{logits.shape[-1]}), got labels of dtype {labels.dtype} (for probability or "
      "one-hot targets pass rows of shape (batch, classes))"
    )
  if labels.ndim not in (logits.ndim - 1, logits.ndim) or labels.shape[:1] != logits.shape[:1]:
    raise ValueError(
      f"labels of shape {tuple(labels.shape)} do not fit logits of shape "
      f"{tuple(logits.shape)}: pass class ids (batch,) or rows (batch, classes)"
    )
  if labels.ndim == logits.ndim and labels.shape != logits.shape:
    raise ValueError(
      f"label rows must have the logits' shape {tuple(logits.shape)}, got labels of shape "
      f"{tuple(labels.shape)}"
    )


def softmax_cross_entropy(logits: Array, labels: Array) -> Array:
  """Multinomial loss (paper eq. 2) per sample.

  Args:
    logits: ``(batch, classes)``.
    labels: integer class ids ``(batch,)`` in ``[0, classes)``, or one-hot /
      probability rows ``(batch, classes)``.

  Returns:
    ``(batch,)`` losses ``-log softmax(logits)[label]``; NaN (with a NaN gradient) for
    a class id outside ``[0, classes)``, which only a traced label can reach (concrete
    ones raise, see the module docstring).

  Raises:
    ValueError: for float class ids, labels whose shape does not fit the logits, or
      concrete class ids outside ``[0, classes)``.
  """
  labels = jnp.asarray(labels)
  _check_class_label_dtype(logits, labels)
  if labels.ndim == logits.ndim:
    return optax.softmax_cross_entropy(logits, labels.astype(logits.dtype))
  num_classes = logits.shape[-1]
  if not _is_traced(labels):
    check_class_ids(labels, num_classes)
  valid = (labels >= 0) & (labels < num_classes)
  safe = jnp.where(valid, labels, 0)
  per_sample = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
  # A factor of NaN (not a jnp.where on the loss) so that the gradient is NaN too.
  return per_sample * jnp.where(valid, 1.0, jnp.nan).astype(per_sample.dtype)


def squared_error(outputs: Array, targets: Array) -> Array:
  """``||outputs - targets||^2`` per sample (summed over all non-batch axes).

  Raises:
    ValueError: unless ``targets`` has exactly the shape of ``outputs`` (no
      broadcasting: ``(B,)`` targets for ``(B, 1)`` outputs would give a ``(B, B)``
      difference).
  """
  targets = jnp.asarray(targets)
  if targets.shape != outputs.shape:
    raise ValueError(
      f"squared_error targets must have the outputs' shape {tuple(outputs.shape)}, got "
      f"targets of shape {tuple(targets.shape)} (reshape them; nothing is broadcast)"
    )
  diff = (outputs - targets).astype(outputs.dtype)
  return jnp.sum(jnp.reshape(diff * diff, (diff.shape[0], -1)), axis=-1)


def accuracy(logits: Array, labels: Array) -> Array:
  """Fraction of samples whose arg-max logit is the label (ids or one-hot)."""
  if labels.ndim == logits.ndim:
    labels = jnp.argmax(labels, axis=-1)
  return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def check_class_ids(labels: Array, num_classes: int) -> None:
  """Raises ``ValueError`` naming the first concrete class id outside ``[0,
  num_classes)``; traced ids pass (see the module docstring)."""
  if _is_traced(labels) or (isinstance(labels, jax.Array) and not labels.is_fully_addressable):
    return
  values = np.asarray(labels)
  bad = np.flatnonzero((values < 0) | (values >= num_classes))
  if bad.size:
    i = int(bad[0])
    raise ValueError(
      f"class labels must be integers in [0, {num_classes}) (the network has "
      f"{num_classes} outputs), got labels[{i}]={values[i].item()!r} ({bad.size} label(s) "
      "out of range)"
    )


def _class_labels(labels: Array, output_shape: tuple[int, ...]) -> None:
  logits_shape = (labels.shape[0], *output_shape)
  _check_class_label_dtype(jax.ShapeDtypeStruct(logits_shape, jnp.float32), labels)
  if labels.ndim == 1:
    check_class_ids(labels, output_shape[-1])


def _regression_targets(targets: Array, output_shape: tuple[int, ...]) -> None:
  expected = (targets.shape[0], *output_shape)
  if targets.shape != expected:
    raise ValueError(
      f"squared_error targets must have the outputs' shape {expected}, got targets of "
      f"shape {tuple(targets.shape)} (reshape them; nothing is broadcast)"
    )


# The label rules of the library's losses, checked before tracing by check_labels.
LABEL_RULES: dict[Callable, Callable[[Array, tuple[int, ...]], None]] = {
  softmax_cross_entropy: _class_labels,
  squared_error: _regression_targets,
}


def check_labels(
  labels: Array,
  batch_size: int,
  num_outputs: int | None = None,
  *,
  loss: Callable | None = None,
  output_shape: tuple[int, ...] | None = None,
) -> None:
  """Raises ``ValueError`` when ``labels`` cannot belong to a batch of ``batch_size``.

  Always: a leading batch axis of ``batch_size``, and ``num_outputs`` columns for 2-D
  labels of a model with that many outputs. With one of the library's losses
  (:func:`softmax_cross_entropy`, :func:`squared_error`) and the model's per-sample
  ``output_shape``, also that loss's rule: integer class ids in ``[0, classes)`` (values
  checked when concrete) or rows of the output shape; or regression targets of exactly
  the output shape. A custom ``loss`` gets the batch-axis check only.
  """
  if labels.ndim == 0 or labels.shape[0] != batch_size:
    raise ValueError(
      f"labels have shape {tuple(labels.shape)}, expected a leading batch axis of {batch_size}"
    )
  rule = next((r for fn, r in LABEL_RULES.items() if fn is loss), None)
  if rule is not None and output_shape is not None:
    rule(labels, tuple(output_shape))
    return
  if labels.ndim == 2 and num_outputs is not None and labels.shape[1] != num_outputs:
    raise ValueError(
      f"one-hot labels have {labels.shape[1]} columns but the network has {num_outputs} outputs"
    )
