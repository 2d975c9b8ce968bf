r"""Single-worker baselines of the EASGD paper: averaged SGD, MVASGD and MSGD.

Zhang, Choromanska, LeCun, "Deep learning with Elastic Averaging SGD", NeurIPS 2015,
section 5 and supplement section 9.4 (the p = 1 baselines).

These methods run one worker (``params`` need no worker axis; a stacked pytree simply
runs independent copies). Each keeps the model to evaluate in ``state.centre``,
returned by :func:`~altmin_jax.distributed.centre`:

* averaged SGD (Polyak-Juditsky; "ASGD" in the EASGD paper, not to be confused with
  *asynchronous* SGD, :func:`~altmin_jax.distributed.async_sgd`): the running mean of
  the SGD iterates;
* MVASGD: an exponential moving average of the SGD iterates with moving rate 0.001;
* MSGD: SGD with Nesterov momentum; the centre is the iterate (not the look-ahead point).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from altmin_jax.core.checks import check_int, check_real, check_unit_interval
from altmin_jax.core.states import checked_transformation
from altmin_jax.core.trees import nan_unless, update_difference
from altmin_jax.core.types import Array, Scalar, ScalarOrSchedule
from altmin_jax.distributed._common import check_update_args, single_worker_round
from altmin_jax.schedules import as_schedule


class AveragedSGDState(NamedTuple):
  """State of averaged SGD and MVASGD: step count and the averaged iterate."""

  count: Array  # int32, steps taken
  centre: Any  # z, the (moving) average of the SGD iterates: the model to evaluate


class MSGDState(NamedTuple):
  """State of MSGD: step count, the iterate x (the centre) and the momentum v."""

  count: Array  # int32, steps taken
  centre: Any  # x, the iterate; params hold the look-ahead point x + delta v
  velocity: Any  # v, the Nesterov momentum


def _averaging(lr_fn, rate_fn, method: str) -> optax.GradientTransformationExtraArgs:
  def init_fn(params):
    return AveragedSGDState(
      count=jnp.zeros([], jnp.int32), centre=jax.tree.map(jnp.asarray, params)
    )

  def update_fn(updates, state, params=None, *, order=None, active=None, **extra_args):
    del extra_args
    check_update_args(updates, params)
    valid = single_worker_round(order, active, method)
    lr = lr_fn(state.count)
    step = jax.tree.map(lambda g, p: (-lr * g).astype(p.dtype), updates, params)
    new_params = optax.apply_updates(params, step)  # x_{t+1} = x_t - eta g(x_t)
    a = rate_fn(state.count)
    z = jax.tree.map(
      lambda z_, x_: (z_ + a * (x_ - z_)).astype(z_.dtype), state.centre, new_params
    )  # z_{t+1} = (1 - a_t) z_t + a_t x_{t+1}
    return nan_unless(valid, step), AveragedSGDState(
      count=optax.safe_int32_increment(state.count), centre=z
    )

  return checked_transformation(method, init_fn, update_fn)


def averaged_sgd(
  learning_rate: ScalarOrSchedule, *, start: int = 0
) -> optax.GradientTransformationExtraArgs:
  r"""Averaged SGD (Polyak-Juditsky averaging; the EASGD paper's "ASGD").

  .. math::
     x_{t+1} = x_t - \eta\, g(x_t), \qquad
     z_{t+1} = \left(1 - a_t\right) z_t + a_t\, x_{t+1}, \quad
     a_t = \frac{1}{t - t_0 + 1}\ (t \ge t_0), \quad a_t = 1\ (t < t_0),

  so :math:`z` is the mean of the iterates :math:`x_{t_0+1}, \dots, x_{t+1}` (before
  :math:`t_0` it follows :math:`x`). The updates are plain SGD's; :math:`z` is
  ``state.centre``. Not asynchronous SGD (:func:`~altmin_jax.distributed.async_sgd`).

  Args:
    learning_rate: :math:`\eta`, a positive constant or a schedule of the step count.
    start: :math:`t_0 \ge 0`, the step at which averaging starts (the paper starts at 0
      on CIFAR and at the first learning-rate drop on ImageNet).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; the state is an
    :class:`AveragedSGDState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import altmin_jax.distributed as dist
    >>> tx = dist.averaged_sgd(1.0)
    >>> params, state = jnp.zeros(1), tx.init(jnp.zeros(1))
    >>> for g in (-1.0, -1.0, -1.0):  # iterates 1, 2, 3
    ...   updates, state = tx.update(jnp.array([g]), state, params)
    ...   params = params + updates
    >>> dist.centre(state).tolist()
    [2.0]
  """
  lr_fn = as_schedule(learning_rate, "learning_rate")
  start = check_int("start", start, 0)

  def rate(count):
    n = (count - start + 1).astype(jnp.float32)
    return jnp.where(count >= start, 1.0 / jnp.maximum(n, 1.0), 1.0)

  return _averaging(lr_fn, rate, "averaged_sgd")


def mvasgd(
  learning_rate: ScalarOrSchedule, *, moving_rate: Scalar = 0.001
) -> optax.GradientTransformationExtraArgs:
  r"""MVASGD: SGD with an exponential moving average of its iterates.

  .. math::
     x_{t+1} = x_t - \eta\, g(x_t), \qquad z_{t+1} = (1 - \alpha)\, z_t + \alpha\, x_{t+1}

  with the moving rate :math:`\alpha` (paper: 0.001) and :math:`z_0 = x_0`;
  :math:`z` is ``state.centre``.

  Args:
    learning_rate: :math:`\eta`, a positive constant or a schedule of the step count.
    moving_rate: :math:`\alpha` in ``(0, 1]``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; the state is an
    :class:`AveragedSGDState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import altmin_jax.distributed as dist
    >>> tx = dist.mvasgd(1.0, moving_rate=0.5)
    >>> _, state = tx.update(jnp.array([-2.0]), tx.init(jnp.zeros(1)), jnp.zeros(1))
    >>> dist.centre(state).tolist()
    [1.0]
  """
  lr_fn = as_schedule(learning_rate, "learning_rate")
  moving_rate = check_real("moving_rate", moving_rate, low=0.0, high=1.0, low_open=True)
  return _averaging(lr_fn, lambda count: jnp.asarray(moving_rate, jnp.float32), "mvasgd")


def msgd(
  learning_rate: ScalarOrSchedule, *, momentum: Scalar = 0.99
) -> optax.GradientTransformationExtraArgs:
  r"""MSGD: SGD with Nesterov momentum :math:`\delta`.

  .. math::
     v_{t+1} = \delta v_t - \eta\, g(x_t + \delta v_t), \qquad x_{t+1} = x_t + v_{t+1}.

  ``params`` hold the look-ahead point :math:`y_t = x_t + \delta v_t`, where gradients
  are taken; the iterate :math:`x_t` is ``state.centre`` and :math:`v_t` is
  ``state.velocity``. The ``params`` trajectory equals ``optax.sgd(learning_rate,
  momentum, nesterov=True)``.

  Args:
    learning_rate: :math:`\eta`, a positive constant or a schedule of the step count.
    momentum: :math:`\delta` in ``[0, 1)`` (default 0.99).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; the state is an :class:`MSGDState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import altmin_jax.distributed as dist
    >>> tx = dist.msgd(1.0, momentum=0.5)
    >>> updates, state = tx.update(jnp.array([1.0]), tx.init(jnp.zeros(1)), jnp.zeros(1))
    >>> dist.centre(state).tolist(), updates.tolist()  # x = -1, y = x + 0.5 v = -1.5
    ([-1.0], [-1.5])
  """
  lr_fn = as_schedule(learning_rate, "learning_rate")
  delta = check_unit_interval("momentum", momentum)
  method = "msgd"

  def init_fn(params):
    return MSGDState(
      count=jnp.zeros([], jnp.int32),
      centre=jax.tree.map(jnp.asarray, params),
      velocity=jax.tree.map(jnp.zeros_like, params),
    )

  def update_fn(updates, state, params=None, *, order=None, active=None, **extra_args):
    del extra_args
    check_update_args(updates, params)
    valid = single_worker_round(order, active, method)
    lr = lr_fn(state.count)
    v = jax.tree.map(lambda v_, g: (delta * v_ - lr * g).astype(v_.dtype), state.velocity, updates)
    x = jax.tree.map(lambda x_, v_: (x_ + v_).astype(x_.dtype), state.centre, v)
    y = jax.tree.map(lambda x_, v_, p: (x_ + delta * v_).astype(p.dtype), x, v, params)
    new_state = MSGDState(count=optax.safe_int32_increment(state.count), centre=x, velocity=v)
    return nan_unless(valid, update_difference(y, params)), new_state

  return checked_transformation("msgd", init_fn, update_fn)
