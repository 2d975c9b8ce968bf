r"""Elastic averaging SGD: synchronous EASGD, asynchronous EASGD and EAMSGD.

Zhang, Choromanska, LeCun, "Deep learning with Elastic Averaging SGD", NeurIPS 2015,
and its supplement.

p local workers :math:`x^i` explore while an elastic force of strength :math:`\rho`
links them to a centre variable :math:`\tilde x`, the model to evaluate; :func:`easgd`
writes the synchronous update (eqs. 5-6) and its moving rate :math:`\alpha`. The
asynchronous variants (:func:`async_easgd`, Algorithm 1; :func:`eamsgd`, Algorithm 2)
exchange with the centre every :math:`\tau` local steps, *before* the local gradient
step, and take the gradient at the pre-exchange point. Here all workers step in
lockstep (one ``update`` = one local step of every worker). The synchronous
:func:`easgd` applies every worker's exchange at once from the old values (eqs. 5-6;
``order`` has no effect); in the asynchronous variants the exchanges of a communication
step are applied one worker at a time in the fixed order ``order`` (round-robin by
default), each seeing the centre left by the previous one. No method here can skip a
worker: a concrete ``active`` extra arg must be all True (see
:mod:`altmin_jax.distributed`).

**How the p workers are passed** (see :mod:`altmin_jax.distributed.workers`): ``params``
and ``grads`` carry a leading worker axis (``params[i]`` is :math:`x^i`, ``grads[i]`` the
gradient worker i computed at it); the centre is ``state.centre`` (no worker axis), also
returned by :func:`~altmin_jax.distributed.centre`. ``init`` starts the centre at worker
0's parameters (the paper initialises :math:`x^i = \tilde x`; use
:func:`~altmin_jax.distributed.replicate`).

Stability (Lemma 7.1, eq. 17): for the 1-D quadratic :math:`h x^2 / 2` the synchronous
centre converges iff :math:`-1 < \phi < \gamma < 1`, i.e. iff :math:`\eta, \beta > 0`,
:math:`(2 - \eta h)(2 - \beta) > 2\beta/p` and :math:`(2 - \eta h) + (2 - \beta) >
\beta/p`.
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
from altmin_jax.distributed._common import WorkerLayout, check_period, moving_rate
from altmin_jax.schedules import as_schedule


class EASGDState(NamedTuple):
  """State of synchronous and asynchronous EASGD: step count and centre variable."""

  count: Array  # int32, local steps taken by every worker (the workers' clock t)
  centre: Any  # the centre variable x~ (no worker axis): the model to evaluate


class EAMSGDState(NamedTuple):
  """State of EAMSGD: step count, centre variable and each worker's momentum."""

  count: Array  # int32, local steps taken by every worker
  centre: Any  # the centre variable x~ (no worker axis)
  velocity: Any  # leading worker axis: v^i, the local Nesterov momentum


def _scaled(a, tree):
  return jax.tree.map(lambda x: a * x, tree)


def easgd(
  learning_rate: ScalarOrSchedule,
  *,
  num_workers: int,
  beta: Scalar | None = None,
  rho: Scalar | None = None,
  communication_period: int = 1,
  mesh: Mesh | None = None,
  axis_name: str = workers_lib.DEFAULT_AXIS,
) -> optax.GradientTransformationExtraArgs:
  r"""Synchronous EASGD (eqs. 5-6), optionally communicating every :math:`\tau` steps.

  At steps t with :math:`\tau \mid t` (every step for :math:`\tau = 1`):

  .. math::
     x^i \leftarrow x^i - \eta\, g^i(x^i) - \alpha (x^i - \tilde x), \qquad
     \tilde x \leftarrow (1 - \beta)\, \tilde x + \beta\, \frac1p \sum_i x^i

  with the old :math:`x^i, \tilde x` on the right (on a mesh the mean is one ``lax.psum``); at
  other steps :math:`x^i \leftarrow x^i - \eta\, g^i(x^i)` only.

  Args:
    learning_rate: :math:`\eta`, a positive constant or a schedule of the step count.
    num_workers: p.
    beta: :math:`\beta = p\alpha` in ``(0, 2)``; default 0.9 (the paper's choice)
      unless ``rho`` is given.
    rho: elastic strength :math:`\rho`; then :math:`\alpha = \eta\rho`, :math:`\beta =
      p\alpha` follow the learning rate.
    communication_period: :math:`\tau \ge 1`.
    mesh: ``None`` for stacked workers on one device; a mesh to shard the workers over
      its axis ``axis_name`` (see :mod:`altmin_jax.distributed.workers`).
    axis_name: the workers' vmap / mesh axis name.

  Returns:
    An ``optax.GradientTransformationExtraArgs``: ``update(grads, state, params, *,
    order=None, active=None)`` with stacked ``grads`` / ``params`` (``order``, a
    permutation, has no effect; ``active`` must be all True when concrete); the state is
    an :class:`EASGDState`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import altmin_jax.distributed as dist
    >>> p = 4
    >>> tx = dist.easgd(0.1, num_workers=p, beta=0.9)
    >>> params = dist.replicate(jnp.ones(2), p)
    >>> state = tx.init(params)
    >>> @jax.jit
    ... def step(params, state):
    ...   grads = jax.vmap(jax.grad(lambda x: jnp.sum(x ** 2)))(params)
    ...   updates, state = tx.update(grads, state, params)
    ...   return optax.apply_updates(params, updates), state
    >>> for _ in range(100):
    ...   params, state = step(params, state)
    >>> bool(jnp.all(jnp.abs(dist.centre(state)) < 1e-3))
    True
  """
  lr_fn = as_schedule(learning_rate, "learning_rate")
  layout = WorkerLayout(num_workers, mesh, axis_name)
  num_workers = layout.num_workers
  alpha_fn = moving_rate(beta, rho, num_workers)
  tau = check_period(communication_period)

  def init_fn(params):
    return EASGDState(count=jnp.zeros([], jnp.int32), centre=layout.start(params))

  def worker(group, mine, shared):
    g, x = mine
    count, c = shared
    lr = lr_fn(count)
    alpha = alpha_fn(lr)
    b = num_workers * alpha  # beta = p alpha
    elastic = (count % tau) == 0
    a = jnp.where(elastic, alpha, 0.0)
    b = jnp.where(elastic, b, 0.0)
    mean_x = group.mean(x)  # (1/p) sum_i x^i_t
    new_x = jax.tree.map(
      lambda x_, g_, c_: (x_ - lr * g_ - a * (x_ - c_)).astype(x_.dtype), x, g, c
    )  # eq. 5
    new_c = jax.tree.map(
      lambda c_, m_: ((1.0 - b) * c_ + b * m_).astype(c_.dtype), c, mean_x
    )  # eq. 6
    return update_difference(new_x, x), (), new_c

  def update_fn(updates, state, params=None, *, order=None, active=None, **extra_args):
    del extra_args
    layout.check_update(updates, params)
    # Eqs. 5-6 apply every worker's exchange at once: order is only checked.
    _, _, valid = layout.round_args(order, active, uses_active=False, method="easgd")
    new_updates, _, c = layout.run(worker, (updates, params), (state.count, state.centre))
    return nan_unless(valid, new_updates), EASGDState(
      count=optax.safe_int32_increment(state.count), centre=c
    )

  return checked_transformation("easgd", init_fn, update_fn)


def _elastic_exchange(x, c, alpha, order, exchange):
  """Algorithm 1 steps a)-b) for all workers (rows of ``x``), one at a time in ``order``.

  Worker m (pre-exchange point x^m) meets the centre as left by the workers before it:
  ``x^m <- x^m - alpha (x^m - c)``, ``c <- c + alpha (x^m - c)``. Returns every worker's
  elastic term ``alpha (x^m - c)`` (zero when not ``exchange``) and the new centre.
  """

  def push(c, x_m):
    diff = jax.tree.map(lambda xm, c_: xm - c_, x_m, c)
    c = jax.tree.map(lambda c_, d: (c_ + alpha * d).astype(c_.dtype), c, diff)
    return c, diff

  new_c, diffs = async_sim.apply_in_order(push, c, x, order)
  new_c = where_tree(exchange, new_c, c)
  a = jnp.where(exchange, alpha, 0.0)
  return _scaled(a, diffs), new_c


def async_easgd(
  learning_rate: ScalarOrSchedule,
  *,
  num_workers: int,
  beta: Scalar | None = None,
  rho: Scalar | None = None,
  communication_period: int = 1,
  mesh: Mesh | None = None,
  axis_name: str = workers_lib.DEFAULT_AXIS,
) -> optax.GradientTransformationExtraArgs:
  r"""Asynchronous EASGD (Algorithm 1) with communication period :math:`\tau`.

  Worker i at its clock t, with :math:`x = x^i` the pre-exchange point:

  .. math::
     \text{if } \tau \mid t:\quad x^i \leftarrow x^i - \alpha (x - \tilde x), \quad
     \tilde x \leftarrow \tilde x + \alpha (x - \tilde x); \qquad
     x^i \leftarrow x^i - \eta\, g^i(x).

  All workers step together; the exchanges of a step run one worker at a time in
  ``order`` (extra arg, default 0..p-1: round-robin), so each sees the centre left by
  the previous one. ``grads[i]`` is the gradient at ``params[i]``, the pre-exchange point.

  Args:
    learning_rate, num_workers, beta, rho, communication_period, mesh, axis_name: as in
      :func:`easgd` (:math:`\alpha = \beta / p` or :math:`\eta\rho`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``: ``update(grads, state, params, *,
    order=None, active=None)`` (``active`` must be all True when concrete); the state
    is an :class:`EASGDState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import altmin_jax.distributed as dist
    >>> tx = dist.async_easgd(0.1, num_workers=2, beta=1.0)  # alpha = 0.5
    >>> params = jnp.array([[0.0], [2.0]])
    >>> state = tx.init(dist.replicate(jnp.array([1.0]), 2))  # the centre starts at 1
    >>> updates, state = tx.update(jnp.zeros((2, 1)), state, params)
    >>> (params + updates)[:, 0].tolist(), state.centre.tolist()
    ([0.5, 1.25], [1.25])
  """
  return _async_elastic(
    learning_rate, num_workers, beta, rho, communication_period, None, mesh, axis_name
  )


def eamsgd(
  learning_rate: ScalarOrSchedule,
  *,
  num_workers: int,
  momentum: Scalar = 0.99,
  beta: Scalar | None = None,
  rho: Scalar | None = None,
  communication_period: int = 1,
  mesh: Mesh | None = None,
  axis_name: str = workers_lib.DEFAULT_AXIS,
) -> optax.GradientTransformationExtraArgs:
  r"""EAMSGD (Algorithm 2): asynchronous EASGD with local Nesterov momentum :math:`\delta`.

  Worker i at its clock t, with :math:`x = x^i` the pre-exchange point: if
  :math:`\tau \mid t`, the elastic exchange of :func:`async_easgd`; then

  .. math::
     v^i \leftarrow \delta v^i - \eta\, g^i(x + \delta v^i), \qquad
     x^i \leftarrow x^i + v^i.

  The gradient is taken at the look-ahead point :math:`x + \delta v^i`, so ``params``
  (where users compute gradients) hold the look-ahead points :math:`y^i = x^i + \delta
  v^i`; the momenta :math:`v^i` are ``state.velocity`` and :math:`x^i = y^i - \delta v^i`.
  ``momentum = 0`` is exactly :func:`async_easgd`.

  Args:
    learning_rate, num_workers, beta, rho, communication_period, mesh, axis_name: as in
      :func:`async_easgd`.
    momentum: :math:`\delta` in ``[0, 1)`` (paper default 0.99).

  Returns:
    An ``optax.GradientTransformationExtraArgs``: ``update(grads, state, params, *,
    order=None, active=None)`` (``active`` must be all True when concrete); the state
    is an :class:`EAMSGDState`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import altmin_jax.distributed as dist
    >>> tx = dist.eamsgd(0.01, num_workers=2, momentum=0.9, communication_period=4)
    >>> params = dist.replicate(jnp.ones(2), 2)
    >>> state = tx.init(params)
    >>> @jax.jit
    ... def step(params, state):
    ...   grads = jax.vmap(jax.grad(lambda x: jnp.sum(x ** 2)))(params)
    ...   updates, state = tx.update(grads, state, params)
    ...   return optax.apply_updates(params, updates), state
    >>> for _ in range(200):
    ...   params, state = step(params, state)
    >>> bool(jnp.all(jnp.abs(dist.centre(state)) < 1e-2))
    True
  """
  delta = check_unit_interval("momentum", momentum)
  return _async_elastic(
    learning_rate, num_workers, beta, rho, communication_period, delta, mesh, axis_name
  )


def _async_elastic(learning_rate, num_workers, beta, rho, period, delta, mesh, axis_name):
  """Algorithm 1 (``delta=None``) or Algorithm 2 (local momentum ``delta``)."""
  lr_fn = as_schedule(learning_rate, "learning_rate")
  layout = WorkerLayout(num_workers, mesh, axis_name)
  alpha_fn = moving_rate(beta, rho, layout.num_workers)
  tau = check_period(period)
  method = "async_easgd" if delta is None else "eamsgd"

  def init_fn(params):
    count = jnp.zeros([], jnp.int32)
    c = layout.start(params)
    if delta is None:
      return EASGDState(count=count, centre=c)
    return EAMSGDState(count=count, centre=c, velocity=jax.tree.map(jnp.zeros_like, params))

  def worker(group, mine, shared):
    count, c, order = shared
    g, y, v = group.gather(mine)  # rows: every worker's gradient, params, momentum
    lr = lr_fn(count)
    exchange = (count % tau) == 0
    if delta is None:
      x = y
    else:
      x = jax.tree.map(lambda y_, v_: (y_ - delta * v_).astype(y_.dtype), y, v)  # x^i
    elastic, c = _elastic_exchange(x, c, alpha_fn(lr), order, exchange)
    x = jax.tree.map(lambda x_, e: x_ - e, x, elastic)  # x^i - alpha (x - x~)
    if delta is None:
      new_y = jax.tree.map(lambda x_, g_, y_: (x_ - lr * g_).astype(y_.dtype), x, g, y)
      return (), (update_difference(new_y, y), v), c
    v = jax.tree.map(lambda v_, g_: (delta * v_ - lr * g_).astype(v_.dtype), v, g)
    new_x = jax.tree.map(lambda x_, v_: x_ + v_, x, v)  # x^i + v^i
    new_y = jax.tree.map(lambda x_, v_, y_: (x_ + delta * v_).astype(y_.dtype), new_x, v, y)
    return (), (update_difference(new_y, y), v), c

  def update_fn(updates, state, params=None, *, order=None, active=None, **extra_args):
    del extra_args
    layout.check_update(updates, params)
    order, _, valid = layout.round_args(order, active, uses_active=False, method=method)
    velocity = params if delta is None else state.velocity  # placeholder when unused
    _, (new_updates, velocity), c = layout.run(
      worker, (updates, params, velocity), (state.count, state.centre, order)
    )
    new_updates = nan_unless(valid, new_updates)
    count = optax.safe_int32_increment(state.count)
    if delta is None:
      return new_updates, EASGDState(count=count, centre=c)
    return new_updates, EAMSGDState(count=count, centre=c, velocity=velocity)

  return checked_transformation(method, init_fn, update_fn)
