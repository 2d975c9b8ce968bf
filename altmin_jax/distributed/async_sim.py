r"""A deterministic simulator of asynchronous workers, inside ``jit``.

Asynchronous SGD on a parameter server is a sequence of *pushes*: worker m sends the
gradient it computed at the copy of the server parameters it pulled after its previous
push; the server applies it and worker m pulls the new parameters. Its *staleness* is
the number of server updates between its pull and its push. Any such sequence splits
into rounds in which every worker pushes at most once, so the simulator describes it as
a :class:`Schedule` of rounds, each with

* ``order``: a permutation of the p workers, the fixed order in which the server applies
  the round's pushes (one ``lax.scan`` over it inside the method's ``update``; a concrete
  ``order`` that is not a permutation raises ``ValueError``), and
* ``active``: which workers push in this round; an inactive worker is still computing,
  keeps its stale copy, and its next push is staler.

Delay models:

* :func:`round_robin`: every worker pushes once per round in the order 0, 1, ..., p-1:
  after the first round every gradient has staleness exactly ``p - 1``.
* :func:`random_delays`: seeded; a random order every round and each worker pushing
  with probability ``participation`` (never idle for more than ``max_delay`` rounds):
  staleness varies from 0 upwards with mean about ``p - 1``: a worker pushes every
  ``1 / participation`` rounds on average while the others push ``(p - 1) *
  participation`` times per round, so the rate cancels.

:func:`simulate` runs any p-worker method (the push-based DC-ASGD-c / -a, ASGD and
MDOWNPOUR use ``order`` and ``active``; async EASGD, EAMSGD and DOWNPOUR use ``order``
for their exchanges; EASGD, SSGD and DC-SSGD are synchronous) for a number of rounds in
one ``lax.scan``: per round it computes every worker's gradient at its stale copy
(``params[m]``, vmapped), then calls ``tx.update(grads, state, params, order=...,
active=...)``. The p-worker methods take these two extra args directly, so a training
loop can use a schedule without the simulator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from altmin_jax.core.checks import check_int, check_optional_int, check_real
from altmin_jax.core.trees import where_tree
from altmin_jax.core.types import Array
from altmin_jax.distributed.workers import centre, take


class Schedule(NamedTuple):
  """Rounds of pushes: ``order[r]`` (a permutation of the p workers) and ``active[r]``
  (bool per worker), both with a leading round axis."""

  order: Array  # int32 (rounds, p)
  active: Array  # bool (rounds, p)


def round_robin(num_workers: int, num_rounds: int) -> Schedule:
  """Every worker pushes once per round in the order 0..p-1 (staleness ``p - 1``).

  Example:
    >>> from altmin_jax.distributed import async_sim
    >>> s = async_sim.round_robin(3, 4)
    >>> async_sim.staleness(s)[-1].tolist()
    [2, 2, 2]
  """
  num_workers, num_rounds = _check_sizes(num_workers, num_rounds)
  order = jnp.broadcast_to(jnp.arange(num_workers, dtype=jnp.int32), (num_rounds, num_workers))
  return Schedule(order=order, active=jnp.ones((num_rounds, num_workers), bool))


def random_delays(
  key: Array,
  num_workers: int,
  num_rounds: int,
  *,
  participation: float = 1.0,
  max_delay: int | None = None,
) -> Schedule:
  """A seeded random delay model: a random push order every round, and each worker
  pushing in a round with probability ``participation`` (independently), but never
  idle for more than ``max_delay`` consecutive rounds.

  Args:
    key: a ``jax.random`` key; the same key gives the same schedule.
    num_workers: p.
    num_rounds: rounds to generate.
    participation: probability in ``(0, 1]`` that a worker pushes in a round.
    max_delay: cap on consecutive idle rounds (``None``: no cap).

  Returns:
    A :class:`Schedule`.
  """
  num_workers, num_rounds = _check_sizes(num_workers, num_rounds)
  participation = check_real("participation", participation, low=0.0, high=1.0, low_open=True)
  max_delay = check_optional_int("max_delay", max_delay, 0)

  def body(idle, k):
    k_order, k_active = jax.random.split(k)
    order = jax.random.permutation(k_order, num_workers).astype(jnp.int32)
    on = jax.random.uniform(k_active, (num_workers,)) < participation
    if max_delay is not None:
      on = on | (idle >= max_delay)
    return jnp.where(on, 0, idle + 1), (order, on)

  keys = jax.random.split(key, num_rounds)
  _, (order, active) = lax.scan(body, jnp.zeros(num_workers, jnp.int32), keys)
  return Schedule(order=order, active=active)


def staleness(schedule: Schedule) -> Array:
  """Staleness of every push: ``(rounds, p)`` int32, ``-1`` where a worker is idle.

  The staleness of a push is the number of server updates applied between the worker's
  pull (after its previous push; all workers pull the initial parameters) and this push.
  """

  def body(carry, xs):
    version, pulled = carry
    order, active = xs
    in_order = active[order].astype(jnp.int32)
    before = jnp.cumsum(in_order) - in_order  # active pushes earlier in the round
    at = (version + before)[inverse_permutation(order)]
    stale = jnp.where(active, at - pulled, -1)
    pulled = jnp.where(active, at + 1, pulled)
    return (version + jnp.sum(in_order), pulled), stale

  p = schedule.order.shape[-1]
  init = (jnp.zeros([], jnp.int32), jnp.zeros(p, jnp.int32))
  _, stale = lax.scan(body, init, (schedule.order, schedule.active))
  return stale


def inverse_permutation(order: Array) -> Array:
  """``position`` with ``order[position[m]] == m``."""
  p = order.shape[-1]
  return jnp.zeros_like(order).at[order].set(jnp.arange(p, dtype=order.dtype))


def check_permutations(order: Any, name: str = "order") -> None:
  """Raises ``ValueError`` naming ``name`` unless every row (last axis) of ``order`` is a
  permutation of ``0..p-1``. Checked only when the values are known: a traced ``order``
  (inside ``jit``) or one not fully held by this process passes unchecked."""
  if isinstance(order, jax.core.Tracer):
    return
  if isinstance(order, jax.Array) and not order.is_fully_addressable:
    return
  values = np.asarray(order)
  p = values.shape[-1]
  rows = values.reshape(-1, p)
  bad = np.flatnonzero((np.sort(rows, axis=1) != np.arange(p)).any(axis=1))
  if bad.size:
    rounds = " in every round" if values.ndim > 1 else ""
    where = f"{name}[{bad[0]}]" if values.ndim > 1 else name
    raise ValueError(
      f"{name} must be a permutation of 0..{p - 1}{rounds}; {where} is {rows[bad[0]].tolist()}"
    )


def round_args(
  order: Any,
  active: Any,
  num_workers: int,
  *,
  uses_active: bool = True,
  method: str = "this method",
) -> tuple[Array, Array, Any]:
  """Defaults (round-robin order, everyone active) and checks for the ``order`` /
  ``active`` extra args of a p-worker ``update``: the one rule of every method.

  * ``order`` must be an integer array of shape ``(p,)`` and a permutation of
    ``0..p-1``: checked when concrete (``ValueError``); a traced order that is not a
    permutation makes ``valid`` False (the caller's updates become NaN,
    :func:`altmin_jax.core.trees.nan_unless`).
  * ``active`` must be a boolean array of shape ``(p,)``. A method that cannot skip
    workers (``uses_active=False``: synchronous methods, the EASGD exchanges, DOWNPOUR)
    raises for a concrete ``active`` with an inactive worker; a traced one cannot be
    checked and is ignored (every worker steps), so that :func:`simulate` and jitted
    loops can drive every p-worker method with the same schedule.

  Returns:
    ``(order, active, valid)``: int32 order, bool active and ``True`` (checked) or a
    traced bool scalar.
  """
  checks = []
  if order is None:
    order = jnp.arange(num_workers, dtype=jnp.int32)
  else:
    order = order if isinstance(order, jax.Array) else np.asarray(order)
    if order.shape != (num_workers,) or not jnp.issubdtype(order.dtype, jnp.integer):
      raise ValueError(
        f"order must be an integer permutation of shape ({num_workers},), got shape "
        f"{order.shape} and dtype {order.dtype}"
      )
    if _known(order):
      check_permutations(order)
    else:
      checks.append(jnp.all(jnp.sort(order) == jnp.arange(num_workers, dtype=order.dtype)))
  order = jnp.asarray(order)
  if active is None:
    active = jnp.ones(num_workers, bool)
  else:
    active = active if isinstance(active, jax.Array) else np.asarray(active)
    if active.shape != (num_workers,) or active.dtype != bool:
      raise ValueError(
        f"active must be a boolean array of shape ({num_workers},), got shape "
        f"{active.shape} and dtype {active.dtype}"
      )
    if not uses_active and _known(active) and not np.all(np.asarray(active)):
      raise ValueError(
        f"{method} steps every worker in every update and cannot skip one: active must "
        f"be all True (or None), got active={np.asarray(active).tolist()}"
      )
  active = jnp.asarray(active)
  valid = True if not checks else checks[0]
  return order.astype(jnp.int32), active.astype(bool), valid


def _known(x: Any) -> bool:
  """Whether the values of ``x`` can be read here (not traced, fully held)."""
  if isinstance(x, jax.core.Tracer):
    return False
  return not (isinstance(x, jax.Array) and not x.is_fully_addressable)


def apply_in_order(
  push: Callable[[Any, Any], tuple[Any, Any]],
  carry: Any,
  pushes: Any,
  order: Array,
  active: Array | None = None,
) -> tuple[Any, Any]:
  """Applies the workers' pushes one at a time, in ``order``, with ``lax.scan``.

  Args:
    push: ``push(carry, item) -> (carry, out)``: the server's rule for one push; ``item``
      is worker m's row of ``pushes``.
    carry: the server's state before the round.
    pushes: pytree with a leading worker axis (gradients, backups, ...).
    order: permutation of the workers.
    active: bool per worker; an inactive worker's push is skipped (``None``: all push).

  Returns:
    ``(carry, outs)``: the server state after the round, and ``push``'s output for each
    worker stacked by worker index (for an inactive worker, what its push would have
    given; callers mask it).
  """

  p = order.shape[0]
  first = take(pushes, 0)
  out_shapes = jax.eval_shape(lambda c, item: push(c, item)[1], carry, first)
  buffer = jax.tree.map(lambda o: jnp.zeros((p, *o.shape), o.dtype), out_shapes)

  def body(state, m):
    c, buf = state
    new_c, out = push(c, take(pushes, m))
    if active is not None:
      new_c = where_tree(active[m], new_c, c)
    buf = jax.tree.map(lambda b, o: lax.dynamic_update_index_in_dim(b, o, m, 0), buf, out)
    return (new_c, buf), None

  (carry, outs), _ = lax.scan(body, (carry, buffer), order)
  return carry, outs


class SimulationResult(NamedTuple):
  """Final worker params and optimizer state, per-round metrics and push staleness."""

  params: Any
  state: Any
  metrics: Any
  staleness: Array


def simulate(
  tx: optax.GradientTransformation,
  grad_fn: Callable[[Any, Any], Any],
  params: Any,
  batches: Any,
  schedule: Schedule,
  *,
  state: Any = None,
  metrics_fn: Callable[[Any], Any] | None = None,
) -> SimulationResult:
  """Runs a p-worker method under a delay schedule, one ``lax.scan`` over rounds.

  Before the scan, a concrete schedule is checked: ``order`` and ``active`` of shape
  ``(rounds, p)``, every round's ``order`` a permutation (``ValueError`` naming the
  round), and, if some worker is inactive in some round, the first such round is traced
  once through ``tx.update`` with its values known, so a method that cannot skip
  workers (EASGD, async EASGD, EAMSGD, DOWNPOUR, SSGD, DC-SSGD) raises ``ValueError``
  naming that round instead of ignoring ``active``.

  Per round r: ``grads = vmap(grad_fn)(params, batch_r)``, the gradient of **every**
  worker at its current copy (inactive ones included; the method discards theirs), then
  ``tx.update(grads, state, params, order=schedule.order[r],
  active=schedule.active[r])`` and ``apply_updates``, then ``metrics_fn`` of the
  state's centre. What a round means is the method's: in DC-ASGD, ASGD and MDOWNPOUR
  the active workers push in ``order`` and pull the server's parameters, and an inactive
  worker keeps its stale copy, so its gradient at the next round it is active is stale
  by the pushes in between; the EASGD family and DOWNPOUR take one local step of every
  worker with their exchanges in ``order``; SSGD and DC-SSGD take one synchronous step.
  ``staleness`` is computed from the schedule alone (:func:`staleness`): it is the
  gradients' staleness for the push-based methods only.

  Args:
    tx: a p-worker method of :mod:`altmin_jax.distributed`.
    grad_fn: ``grad_fn(worker_params, worker_batch) -> worker_grads`` for one worker.
    params: stacked worker params (leading axis p), e.g. ``replicate(params, p)``.
    batches: a pytree whose leaves have leading axes ``(rounds, p, ...)``, or a function
      ``batches(r) -> pytree with leading axis p`` of the (traced) round index.
    schedule: from :func:`round_robin` or :func:`random_delays`.
    state: initial optimizer state (default ``tx.init(params)``).
    metrics_fn: optional ``metrics_fn(centre) -> pytree`` recorded after every round
      (``centre`` is :func:`~altmin_jax.distributed.centre` of the state).

  Returns:
    A :class:`SimulationResult`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import altmin_jax.distributed as dist
    >>> p, rounds = 4, 50
    >>> loss = lambda w, b: jnp.sum((w - b) ** 2)
    >>> batches = jnp.ones((rounds, p, 2))  # every worker sees target 1
    >>> tx = dist.dc_asgd(0.1, num_workers=p)
    >>> out = dist.simulate(tx, jax.grad(loss), dist.replicate(jnp.zeros(2), p), batches,
    ...                     dist.round_robin(p, rounds), metrics_fn=lambda c: loss(c, 1.0))
    >>> bool(out.metrics[-1] < 1e-4), int(out.staleness[-1, 0])
    (True, 3)
  """
  if schedule.order.ndim != 2 or jnp.shape(schedule.active) != schedule.order.shape:
    raise ValueError(
      "schedule.order and schedule.active must both have shape (rounds, p), got "
      f"{schedule.order.shape} and {jnp.shape(schedule.active)}"
    )
  check_permutations(schedule.order, "schedule.order")
  num_rounds = schedule.order.shape[0]
  if state is None:
    state = tx.init(params)
  if _known(schedule.active) and _known(schedule.order):
    all_active = np.asarray(schedule.active, bool)
    idle = np.flatnonzero(~all_active.all(axis=1))
    if idle.size:  # can the method skip workers? Trace one round with known values.
      r = int(idle[0])
      order_r, active_r = np.asarray(schedule.order)[r], all_active[r]
      try:
        jax.eval_shape(
          lambda p, s: tx.update(p, s, p, order=order_r, active=active_r), params, state
        )
      except ValueError as error:
        raise ValueError(f"simulate: round {r} of the schedule: {error}") from error
  rounds = jnp.arange(num_rounds)
  data = None if callable(batches) else batches

  def body(carry, xs):
    params, state = carry
    r, order, active, batch = xs
    if callable(batches):
      batch = batches(r)
    grads = jax.vmap(grad_fn)(params, batch)
    updates, state = tx.update(grads, state, params, order=order, active=active)
    params = optax.apply_updates(params, updates)
    metrics = None if metrics_fn is None else metrics_fn(centre(state))
    return (params, state), metrics

  (params, state), metrics = lax.scan(
    body, (params, state), (rounds, schedule.order, schedule.active, data)
  )
  return SimulationResult(params, state, metrics, staleness(schedule))


def _check_sizes(num_workers: Any, num_rounds: Any) -> tuple[int, int]:
  return check_int("num_workers", num_workers, 1), check_int("num_rounds", num_rounds, 1)
