"""Training-loop helpers shared by experiments, notebooks and users.

* :class:`TrainState`: a Flax-style train state whose ``apply_gradients`` forwards
  extra keyword arguments (``batch=...``) to the optimizer, which Flax's own
  ``TrainState.apply_gradients`` does not do.
* :func:`skip_nonfinite_updates`: wraps any transformation so that a step whose
  *output* updates hold NaN or inf is skipped and counted (``optax.apply_if_finite``
  checks the incoming gradients, which methods that set parameters never see).
* :func:`all_finite`, :func:`step_is_finite`: whether a step diverged, in its updates
  or in its state.
* :func:`save_checkpoint`, :func:`restore_checkpoint`: orbax checkpoints that refuse to
  write diverged (NaN/inf) state.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from altmin_jax import losses as losses_lib
from altmin_jax.core import checks


class TrainState(struct.PyTreeNode):
  """Parameters, optimizer state and step count of one model.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import altmin_jax as amj
    >>> net = amj.networks.mlp([4, 8, 3])
    >>> state = amj.training.TrainState.create(
    ...     apply_fn=net.apply, params=net.init(jax.random.key(0)), tx=amj.am_adam(net))
    >>> x, y = jnp.ones((5, 4)), jnp.array([0, 1, 2, 0, 1])
    >>> state = state.apply_gradients(batch=(x, y))  # AM needs no gradients
    >>> int(state.step)
    1
  """

  step: jax.Array
  params: Any
  opt_state: Any
  apply_fn: Callable = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  @classmethod
  def create(
    cls, *, apply_fn: Callable, params: Any, tx: optax.GradientTransformation
  ) -> TrainState:
    """A state at step 0 with ``tx.init(params)``."""
    return cls(
      step=jnp.zeros([], jnp.int32),
      params=params,
      opt_state=tx.init(params),
      apply_fn=apply_fn,
      tx=tx,
    )

  def apply_gradients(self, *, grads: Any = None, **extra_args) -> TrainState:
    """One optimizer step: ``tx.update(grads, opt_state, params, **extra_args)``.

    Unlike Flax's ``TrainState.apply_gradients``, where extra keywords replace fields,
    every extra keyword goes to the optimizer; use ``state.replace(...)`` to change
    fields. A keyword that names a field raises ``ValueError``.

    Args:
      grads: gradients for gradient-based methods; ``None`` for methods that set
        parameters themselves (alternating and surrogate minimization).
      **extra_args: forwarded to ``tx.update`` (``batch=(x, y)``, ``value=...``).
    """
    fields = {"step", "params", "opt_state", "apply_fn", "tx"} & set(extra_args)
    if fields:
      raise ValueError(
        f"apply_gradients forwards keywords to the optimizer; {sorted(fields)} are TrainState "
        "fields: set them with state.replace(...)"
      )
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params, **extra_args)
    return self.replace(
      step=self.step + 1, params=optax.apply_updates(self.params, updates), opt_state=opt_state
    )


def all_finite(*trees: Any) -> jax.Array:
  """``True`` when every inexact leaf of every tree is finite (no NaN or inf).

  To check a step, pass its updates **and** its new optimizer state,
  ``all_finite(updates, state)``: a step can diverge in the state while its updates
  stay finite (for example ``am_adam(code_lr=1e6)``, whose per-layer Adam second
  moments overflow to inf at step 0 while the updates are exactly zero, so training
  stalls). For states that hold NaN or inf on purpose, :func:`step_is_finite` compares
  the new state with the old one.
  """
  leaves = [
    jnp.all(jnp.isfinite(x))
    for x in jax.tree.leaves(trees)
    if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def step_is_finite(updates: Any, new_state: Any, old_state: Any) -> jax.Array:
  """``True`` unless the step's ``updates`` hold a NaN or inf, or it wrote a NaN or inf
  into a leaf of the state that was finite in ``old_state`` (the rule of
  :func:`skip_nonfinite_updates`)."""
  return all_finite(updates) & _no_new_nonfinite(new_state, old_state)


def _no_new_nonfinite(new: Any, old: Any) -> jax.Array:
  """``True`` unless some inexact leaf of ``new`` is NaN or inf where ``old`` was finite."""
  flags = [
    jnp.all(jnp.isfinite(n) | ~jnp.isfinite(o))
    for n, o in zip(jax.tree.leaves(new), jax.tree.leaves(old))
    if jnp.issubdtype(jnp.asarray(n).dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(flags)) if flags else jnp.bool_(True)


class SkipNonfiniteState(NamedTuple):
  """State of :func:`skip_nonfinite_updates`."""

  notfinite_count: jax.Array  # int32, consecutive skipped steps
  last_finite: jax.Array  # bool, whether the last step was applied
  total_notfinite: jax.Array  # int32, skipped steps in total
  inner_state: Any


def skip_nonfinite_updates(
  inner: optax.GradientTransformation, max_consecutive_errors: int | None = None
) -> optax.GradientTransformationExtraArgs:
  """Skips steps whose updates are not finite, keeping the inner state unchanged.

  A step is skipped when its updates hold a NaN or inf, or when it writes a NaN or inf
  into a leaf of the inner state that was finite before (a method that delays
  gradients, like DDG, can keep a non-finite value in its buffers for later steps
  while this step's updates are still finite; non-finite values the inner state held
  on purpose, such as an initial best value of inf, are not counted). The skipped
  step's updates become zeros, the inner state stays at its previous value, and the
  counters in the state record the event. After ``max_consecutive_errors`` skipped steps in a
  row the next step is applied whatever it holds, so divergence surfaces instead
  of stalling silently (``None``: never).

  Args:
    inner: the transformation to guard.
    max_consecutive_errors: see above; a positive integer or ``None``.
  """
  checks.check_optimizer("inner", inner)
  max_consecutive_errors = checks.check_optional_int(
    "max_consecutive_errors", max_consecutive_errors, 1
  )
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return SkipNonfiniteState(
      notfinite_count=jnp.zeros([], jnp.int32),
      last_finite=jnp.array(True),
      total_notfinite=jnp.zeros([], jnp.int32),
      inner_state=inner.init(params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra_args)
    finite = step_is_finite(new_updates, new_inner, state.inner_state)
    accept = finite
    if max_consecutive_errors is not None:
      accept = accept | (state.notfinite_count >= max_consecutive_errors)
    out = jax.tree.map(lambda u: jnp.where(accept, u, jnp.zeros_like(u)), new_updates)
    inner_state = jax.tree.map(lambda n, o: jnp.where(accept, n, o), new_inner, state.inner_state)
    bad = jnp.logical_not(finite).astype(jnp.int32)
    return out, SkipNonfiniteState(
      notfinite_count=jnp.where(finite, 0, state.notfinite_count + 1).astype(jnp.int32),
      last_finite=finite,
      total_notfinite=state.total_notfinite + bad,
      inner_state=inner_state,
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class NonFiniteError(FloatingPointError):
  """Raised instead of writing a checkpoint that holds NaN or inf values."""


def save_checkpoint(directory: str | os.PathLike, tree: Any, *, force: bool = False) -> None:
  """Writes ``tree`` (params, optimizer state, ...) with orbax.

  Raises:
    NonFiniteError: when any leaf holds NaN or inf, so a diverged run never
      overwrites a good checkpoint silently.
  """
  import orbax.checkpoint as ocp

  if not bool(all_finite(tree)):
    raise NonFiniteError(f"refusing to write a checkpoint with non-finite values to {directory}")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.abspath(directory), tree, force=force)


def restore_checkpoint(directory: str | os.PathLike, like: Any) -> Any:
  """Reads a checkpoint written by :func:`save_checkpoint` into the structure of ``like``."""
  import orbax.checkpoint as ocp

  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(os.path.abspath(directory), like)


def make_train_step(
  apply_fn: Callable,
  tx: optax.GradientTransformation,
  *,
  loss: Callable,
  uses_gradients: bool = True,
) -> Callable:
  """A jitted ``step(params, opt_state, x, y) -> (params, opt_state, batch_loss)``.

  Before each call of the jitted function, concrete labels ``y`` are checked against
  ``loss``'s rule and the model's output shape (:func:`altmin_jax.losses.check_labels`:
  class ids in ``[0, classes)``, no float ids, regression targets of the output
  shape), so a bad label raises ``ValueError`` naming it instead of being traced. The
  jitted function alone is ``step.jitted`` (no label checks).

  Args:
    apply_fn: ``apply_fn(params, x) -> outputs``.
    tx: any optax transformation; it receives ``batch=(x, y)`` as an extra arg when
      it accepts extra args.
    loss: per-sample loss ``loss(outputs, y) -> (batch,)``.
    uses_gradients: compute gradients of the mean loss for ``tx`` (``False`` for
      methods that ignore them, which saves a backward pass).
  """
  tx = optax.with_extra_args_support(tx)

  def mean_loss(params, x, y):
    return jnp.mean(loss(apply_fn(params, x), y))

  @jax.jit
  def jitted(params, opt_state, x, y):
    if uses_gradients:
      value, grads = jax.value_and_grad(mean_loss)(params, x, y)
    else:
      value, grads = mean_loss(params, x, y), None
    updates, opt_state = tx.update(grads, opt_state, params, batch=(x, y))
    return optax.apply_updates(params, updates), opt_state, value

  output_shapes: dict = {}

  def step(params, opt_state, x, y):
    key = (jnp.shape(x), jnp.result_type(x))
    if key not in output_shapes:
      output_shapes[key] = jax.eval_shape(apply_fn, params, x).shape[1:]
    labels = y if hasattr(y, "shape") else np.asarray(y)
    losses_lib.check_labels(labels, jnp.shape(x)[0], loss=loss, output_shape=output_shapes[key])
    return jitted(params, opt_state, x, y)

  step.jitted = jitted  # the compiled step alone (benchmarks, cost analysis)
  return step


@functools.lru_cache(maxsize=128)
def _jitted(fn: Callable) -> Callable:
  # Bound methods (``net.apply``) are new objects at every access but compare and hash
  # equal, so repeated evaluations of one model reuse one compiled function.
  return jax.jit(fn)


def evaluate(
  apply_fn: Callable, params: Any, x, y, *, loss: Callable | None = None, batch_size: int = 2000
) -> dict[str, float]:
  """Accuracy (and mean loss when ``loss`` is given) of ``params`` on ``(x, y)``.

  The forward pass is jitted once per ``apply_fn`` (and per chunk shape) and reused by
  later calls; ``x`` is processed in chunks of ``batch_size`` (an integer >= 1). Empty
  inputs and inputs and labels of different lengths raise a ``ValueError``.
  """
  from altmin_jax.losses import accuracy

  batch_size = checks.check_int("batch_size", batch_size, 1)
  if len(x) == 0 or len(x) != len(y):
    raise ValueError(
      f"evaluate needs x and y with the same number (>= 1) of samples, got {len(x)} inputs "
      f"and {len(y)} labels"
    )
  predict = _jitted(apply_fn)
  correct, total, loss_sum = 0.0, 0, 0.0
  for start in range(0, len(x), batch_size):
    xb, yb = x[start : start + batch_size], y[start : start + batch_size]
    out = predict(params, xb)
    correct += float(accuracy(out, yb)) * len(xb)
    if loss is not None:
      loss_sum += float(jnp.sum(loss(out, yb)))
    total += len(xb)
  metrics = {"accuracy": correct / total}
  if loss is not None:
    metrics["loss"] = loss_sum / total
  return metrics
