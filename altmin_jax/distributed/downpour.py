r"""DOWNPOUR and momentum DOWNPOUR, the EASGD paper's asynchronous baselines.

Dean et al.'s DOWNPOUR as implemented in Zhang, Choromanska, LeCun, "Deep learning with
Elastic Averaging SGD", NeurIPS 2015, supplement section 8 (Algorithms 3-5).

**How the p workers are passed** (see :mod:`altmin_jax.distributed.workers`): ``params``
and ``grads`` carry a leading worker axis (``params[i]`` is worker i's copy
:math:`x^i`, ``grads[i]`` the gradient at it); the master's :math:`\tilde x` is
``state.centre`` (:func:`~altmin_jax.distributed.centre`). One ``update`` is one local
step of every worker; pushes reach the master one worker at a time in ``order``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from altmin_jax.core.checks import check_unit_interval
from altmin_jax.core.states import checked_transformation
from altmin_jax.core.trees import nan_unless, update_difference, where_tree
from altmin_jax.core.types import Array, Scalar, ScalarOrSchedule
from altmin_jax.distributed import async_sim
from altmin_jax.distributed import workers as workers_lib
from altmin_jax.distributed._common import WorkerLayout, check_period
from altmin_jax.schedules import as_schedule


class DownpourState(NamedTuple):
  """State of DOWNPOUR: step count, master parameters, each worker's accumulated update."""

  count: Array  # int32, local steps taken by every worker
  centre: Any  # the master's x~ (no worker axis): the model to evaluate
  accumulated: Any  # leading worker axis: v^i, the update accumulated since the last push


class MDownpourState(NamedTuple):
  """State of MDOWNPOUR: round count, master parameters and the master's momentum."""

  count: Array  # int32, rounds applied
  centre: Any  # the master's x~ (no worker axis)
  velocity: Any  # the master's momentum v (no worker axis)


def downpour(
  learning_rate: ScalarOrSchedule,
  *,
  num_workers: int,
  communication_period: int = 1,
  mesh: Mesh | None = None,
  axis_name: str = workers_lib.DEFAULT_AXIS,
) -> optax.GradientTransformationExtraArgs:
  r"""DOWNPOUR with communication period :math:`\tau` (supplement Algorithm 3).

  Worker i at its clock t:

  .. math::
     \text{if } \tau \mid t:\ \tilde x \leftarrow \tilde x + v^i,\ x^i \leftarrow
     \tilde x,\ v^i \leftarrow 0; \qquad
     x^i \leftarrow x^i - \eta\, g^i(x^i), \quad v^i \leftarrow v^i - \eta\, g^i(x^i).

  So that ``grads`` can be taken at ``params``, the push and pull of clock t are done
  at the end of step t - 1 (the push at t = 0 is a no-op since :math:`v^i = 0`, and the
  gradient of step t is then taken at the pulled point, as in Algorithm 3). Pushes run
  one worker at a time in ``order`` (extra arg, default 0..p-1); each worker pulls the
  master right after its own push. With :math:`\tau = 1` this is asynchronous SGD
  (:func:`~altmin_jax.distributed.async_sgd`).

  Args:
    learning_rate: :math:`\eta`, a positive constant or a schedule of the step count.
    num_workers: p.
    communication_period: :math:`\tau \ge 1`.
    mesh: ``None`` for stacked workers on one device; a mesh to shard the workers over
      its axis ``axis_name`` (see :mod:`altmin_jax.distributed.workers`).
    axis_name: the workers' vmap / mesh axis name.

  Returns:
    An ``optax.GradientTransformationExtraArgs``: ``update(grads, state, params, *,
    order=None, active=None)`` (``active`` must be all True when concrete); the state
    is a :class:`DownpourState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import altmin_jax.distributed as dist
    >>> tx = dist.downpour(0.5, num_workers=2, communication_period=2)
    >>> params = dist.replicate(jnp.zeros(1), 2)
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jnp.ones((2, 1)), state, params)  # local step only
    >>> params = params + updates
    >>> updates, state = tx.update(jnp.ones((2, 1)), state, params)  # step, then push/pull
    >>> (params + updates)[:, 0].tolist(), state.centre.tolist()
    ([-1.0, -2.0], [-2.0])
  """
  lr_fn = as_schedule(learning_rate, "learning_rate")
  layout = WorkerLayout(num_workers, mesh, axis_name)
  tau = check_period(communication_period)

  def init_fn(params):
    return DownpourState(
      count=jnp.zeros([], jnp.int32),
      centre=layout.start(params),
      accumulated=jax.tree.map(jnp.zeros_like, params),
    )

  def worker(group, mine, shared):
    count, c, order = shared
    g, x, v = group.gather(mine)  # rows: every worker's gradient, params, accumulation
    lr = lr_fn(count)
    step = jax.tree.map(lambda g_, x_: (-lr * g_).astype(x_.dtype), g, x)
    x = jax.tree.map(lambda x_, s: x_ + s, x, step)  # x^i - eta g
    v = jax.tree.map(lambda v_, s: v_ + s, v, step)  # v^i - eta g
    communicate = ((count + 1) % tau) == 0  # the push/pull of clock t + 1

    def push(c, v_m):
      c = jax.tree.map(lambda c_, d: (c_ + d).astype(c_.dtype), c, v_m)  # x~ + v^m
      return c, c  # worker m pulls x~

    new_c, pulled = async_sim.apply_in_order(push, c, v, order)
    return (
      (),
      (
        where_tree(communicate, pulled, x),
        where_tree(communicate, jax.tree.map(jnp.zeros_like, v), v),
      ),
      where_tree(communicate, new_c, c),
    )

  def update_fn(updates, state, params=None, *, order=None, active=None, **extra_args):
    del extra_args
    layout.check_update(updates, params)
    order, _, valid = layout.round_args(order, active, uses_active=False, method="downpour")
    _, (new_params, accumulated), c = layout.run(
      worker, (updates, params, state.accumulated), (state.count, state.centre, order)
    )
    return nan_unless(valid, update_difference(new_params, params)), DownpourState(
      count=optax.safe_int32_increment(state.count), centre=c, accumulated=accumulated
    )

  return checked_transformation("downpour", init_fn, update_fn)


def mdownpour(
  learning_rate: ScalarOrSchedule,
  *,
  num_workers: int,
  momentum: Scalar = 0.99,
  mesh: Mesh | None = None,
  axis_name: str = workers_lib.DEFAULT_AXIS,
) -> optax.GradientTransformationExtraArgs:
  r"""MDOWNPOUR: asynchronous SGD with Nesterov momentum at the master (Algorithms 4-5).

  Workers pull :math:`\tilde x`, compute :math:`g^i` there and push it; for each push,
  in ``order``, the master applies

  .. math::
     v \leftarrow \delta v - \eta\, g^i, \qquad
     \tilde x \leftarrow \tilde x + \delta v - \eta\, g^i

  and the worker pulls :math:`\tilde x`. The master step is Nesterov momentum written
  for gradients taken at the current point (the form of Sutskever et al.). The extracted
  supplement text reads :math:`\tilde x \leftarrow \tilde x + \delta v`, which would not
  move the master at all for :math:`\delta = 0`; with the :math:`-\eta g^i` term,
  :math:`\delta = 0` is asynchronous SGD. Workers with ``active[i] = False`` do not push.

  Args:
    learning_rate: :math:`\eta`, a positive constant or a schedule of the round count.
    num_workers: p.
    momentum: :math:`\delta` in ``[0, 1)`` (default 0.99).
    mesh, axis_name: execution mode, as in :func:`downpour`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``: ``update(grads, state, params, *,
    order=None, active=None)``; the state is an :class:`MDownpourState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import altmin_jax.distributed as dist
    >>> tx = dist.mdownpour(0.5, num_workers=2, momentum=0.5)
    >>> params = dist.replicate(jnp.zeros(1), 2)
    >>> updates, state = tx.update(jnp.ones((2, 1)), tx.init(params), params)
    >>> state.velocity.tolist(), state.centre.tolist()  # v: -0.5, -0.75
    ([-0.75], [-1.625])
  """
  lr_fn = as_schedule(learning_rate, "learning_rate")
  delta = check_unit_interval("momentum", momentum)
  layout = WorkerLayout(num_workers, mesh, axis_name)

  def init_fn(params):
    c = layout.start(params)
    return MDownpourState(
      count=jnp.zeros([], jnp.int32), centre=c, velocity=jax.tree.map(jnp.zeros_like, c)
    )

  def worker(group, mine, shared):
    count, c, velocity, order, active = shared
    g, x = group.gather(mine)  # rows: every worker's gradient and copy
    lr = lr_fn(count)

    def push(carry, g_m):
      c, v = carry
      v = jax.tree.map(lambda v_, g_: (delta * v_ - lr * g_).astype(v_.dtype), v, g_m)
      c = jax.tree.map(lambda c_, v_, g_: (c_ + delta * v_ - lr * g_).astype(c_.dtype), c, v, g_m)
      return (c, v), c

    (c, velocity), pulled = async_sim.apply_in_order(push, (c, velocity), g, order, active)
    new_x = workers_lib.where_rows(active, pulled, x)
    return (), update_difference(new_x, x), (c, velocity)

  def update_fn(updates, state, params=None, *, order=None, active=None, **extra_args):
    del extra_args
    layout.check_update(updates, params)
    order, active, valid = layout.round_args(order, active, uses_active=True, method="mdownpour")
    _, new_updates, (c, velocity) = layout.run(
      worker, (updates, params), (state.count, state.centre, state.velocity, order, active)
    )
    return nan_unless(valid, new_updates), MDownpourState(
      count=optax.safe_int32_increment(state.count), centre=c, velocity=velocity
    )

  return checked_transformation("mdownpour", init_fn, update_fn)
