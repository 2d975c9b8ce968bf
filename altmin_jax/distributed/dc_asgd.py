r"""Delay-compensated asynchronous SGD (DC-ASGD) and its baselines ASGD and SSGD.

Zheng, Meng, Wang, Chen, Yu, Ma, Liu, "Asynchronous Stochastic Gradient Descent with
Delay Compensation", ICML 2017, and its supplement.

A parameter server holds :math:`w`; worker m pulled :math:`w_{\rm bak}(m)` after its
previous push and sends the gradient :math:`g_m = g(w_{\rm bak}(m))` computed there. By
the time it arrives the server has moved on, and DC-ASGD corrects the stale gradient
with a first-order Taylor term whose Hessian is approximated by
:math:`\lambda\, g \odot g` (the compensated gradient :math:`g^{dc}` of the supplement,
proof of Theorem 4.1). Each method's rule is written in its docstring:

* DC-ASGD-c (:func:`dc_asgd`): a constant coefficient :math:`\lambda_0` (default 0.04);
* DC-ASGD-a (:func:`dc_asgd_adaptive`): an elementwise coefficient scaled by the running
  mean square of the gradients (defaults :math:`\lambda_0 = 2`, m = 0.95,
  :math:`\epsilon = 10^{-7}`);
* ASGD (:func:`async_sgd`): no compensation (:math:`\lambda = 0`);
* SSGD (:func:`ssgd`): synchronous SGD on the workers' mean gradient;
* delay-compensated large-minibatch synchronous SGD (:func:`dc_ssgd`, supplement
  section H).

**How the p workers are passed** (see :mod:`altmin_jax.distributed.workers`): ``params``
and ``grads`` carry a leading worker axis; ``params[m]`` is worker m's copy (what it
pulled) and ``grads[m]`` the gradient it computed there. One ``update`` is one *round*:
each worker pushes once, the server applies the pushes in the fixed order ``order``
(extra arg, default 0..p-1, one ``lax.scan``) skipping workers with ``active[m] =
False``, and each worker that pushed pulls the server parameters right after its own
push. Repeating rounds in the default order gives every gradient staleness ``p - 1``;
:mod:`altmin_jax.distributed.async_sim` generates random orders and delays. The server
parameters, the backups :math:`w_{\rm bak}` and MeanSquare live in the state;
:func:`~altmin_jax.distributed.centre` returns the server parameters for evaluation.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from altmin_jax.core.checks import check_nonnegative, check_positive, check_unit_interval, is_traced
from altmin_jax.core.states import checked_transformation
from altmin_jax.core.trees import nan_unless, update_difference
from altmin_jax.core.types import Array, Scalar, ScalarOrSchedule
from altmin_jax.distributed import async_sim
from altmin_jax.distributed import workers as workers_lib
from altmin_jax.distributed._common import WorkerLayout
from altmin_jax.schedules import as_schedule


class DCASGDState(NamedTuple):
  """State of DC-ASGD-c/-a and ASGD: rounds, server params, per-worker backups, MeanSquare."""

  count: Array  # int32, rounds applied
  centre: Any  # server parameters w (no worker axis): the model to evaluate
  backups: Any  # leading worker axis: w_bak(m), the server params worker m last pulled
  mean_square: Any  # DC-ASGD-a's MeanSquare (no worker axis); zeros otherwise


class SSGDState(NamedTuple):
  """State of synchronous SGD (plain and delay-compensated): rounds and server params."""

  count: Array  # int32, rounds applied
  centre: Any  # server parameters w (no worker axis)


def _is_zero(lambda_0: Any) -> bool:
  """Whether a checked ``lambda_0`` is known to be 0 (a traced one is not: the factories
  then build the general, compensated rule)."""
  return not is_traced(lambda_0) and lambda_0 == 0


def _mean_square(ms: Array, g: Array, decay: Any) -> Array:
  """DC-ASGD-a's MeanSquare for one push, ``m ms + (1 - m) g . g``, in ``ms``'s dtype."""
  return (decay * ms + (1.0 - decay) * g * g).astype(ms.dtype)


def _compensated_rule(lambda_0: Any, decay: Any, eps: Any):
  """The server's update for one push: returns ``rule(w, ms, g, bak, lr) -> (w, ms)``.

  ``decay=None`` is DC-ASGD-c; a number is DC-ASGD-a (MeanSquare updated on every push).
  The factories use :func:`_plain_rule` instead when ``lambda_0`` is known to be 0.
  """

  def leaf(w, ms, g, bak, lr):
    dtype = w.dtype
    if decay is None:
      lam = lambda_0
    else:
      ms = _mean_square(ms, g, decay)  # MeanSquare(t)
      lam = lambda_0 / jnp.sqrt(ms + eps)  # lambda_t = lambda_0 / sqrt(MeanSquare + eps)
    compensated = g + lam * g * g * (w - bak)  # g + lambda g . g . (w - w_bak)
    return (w - lr * compensated).astype(dtype), ms

  def rule(w, ms, g, bak, lr):
    out = jax.tree.map(lambda *a: leaf(*a, lr), w, ms, g, bak)
    treedef = jax.tree.structure(w)
    w_new = jax.tree.unflatten(treedef, [o[0] for o in treedef.flatten_up_to(out)])
    ms_new = jax.tree.unflatten(treedef, [o[1] for o in treedef.flatten_up_to(out)])
    return w_new, ms_new

  return rule


def _plain_rule():
  """ASGD's server update for one push: ``w <- w - lr g``."""

  def rule(w, ms, g, bak, lr):
    del bak
    return jax.tree.map(lambda w_, g_: (w_ - lr * g_).astype(w_.dtype), w, g), ms

  return rule


def _track_mean_square(decay: Any):
  """MeanSquare's update for one push alone (no parameters)."""

  def track(ms, g):
    return jax.tree.map(lambda s, g_: _mean_square(s, g_, decay), ms, g), None

  return track


def _async_transformation(
  rule, learning_rate, layout: WorkerLayout, mean_square_decay=None
) -> optax.GradientTransformationExtraArgs:
  """The parameter-server round of DC-ASGD-c/-a and ASGD around a one-push ``rule``.

  ``mean_square_decay`` (DC-ASGD-a with ``lambda_0 = 0`` only) updates MeanSquare in a
  second pass over the round's pushes, so that the parameters follow ``rule`` through
  exactly the computation :func:`async_sgd` compiles (one fused graph would let XLA
  contract ``w - lr g`` into a multiply-add and round differently).
  """
  lr_fn = as_schedule(learning_rate, "learning_rate")

  def init_fn(params):
    server = layout.start(params)
    return DCASGDState(
      count=jnp.zeros([], jnp.int32),
      centre=server,
      backups=jax.tree.map(jnp.asarray, params),
      mean_square=jax.tree.map(jnp.zeros_like, server),
    )

  def worker(group, mine, shared):
    count, server, mean_square, order, active = shared
    lr = lr_fn(count)
    g, x, bak = group.gather(mine)  # the round's pushes, as the server receives them

    def push(carry, item):
      w, ms = carry
      g_m, bak_m = item
      w, ms = rule(w, ms, g_m, bak_m, lr)
      return (w, ms), w  # worker m pulls w right after its push

    (server, mean_square), pulled = async_sim.apply_in_order(
      push, (server, mean_square), (g, bak), order, active
    )
    if mean_square_decay is not None:
      track = _track_mean_square(mean_square_decay)
      mean_square, _ = async_sim.apply_in_order(track, mean_square, g, order, active)
    new_x = workers_lib.where_rows(active, pulled, x)
    new_bak = workers_lib.where_rows(active, pulled, bak)
    return (), (update_difference(new_x, x), new_bak), (server, mean_square)

  def update_fn(updates, state, params=None, *, order=None, active=None, **extra_args):
    del extra_args
    layout.check_update(updates, params)
    order, active, valid = layout.round_args(
      order, active, uses_active=True, method="asynchronous SGD (DC-ASGD family)"
    )
    shared = (state.count, state.centre, state.mean_square, order, active)
    _, (new_updates, backups), (server, mean_square) = layout.run(
      worker, (updates, params, state.backups), shared
    )
    return nan_unless(valid, new_updates), DCASGDState(
      count=optax.safe_int32_increment(state.count),
      centre=server,
      backups=backups,
      mean_square=mean_square,
    )

  return checked_transformation("asynchronous SGD (DC-ASGD family)", init_fn, update_fn)


def dc_asgd(
  learning_rate: ScalarOrSchedule,
  lambda_0: Scalar = 0.04,
  *,
  num_workers: int,
  mesh: Mesh | None = None,
  axis_name: str = workers_lib.DEFAULT_AXIS,
) -> optax.GradientTransformationExtraArgs:
  r"""DC-ASGD-c: asynchronous SGD with a constant delay-compensation coefficient.

  For each push of worker m, in ``order``:

  .. math::
     w \leftarrow w - \eta \left( g_m + \lambda_0\, g_m \odot g_m \odot
     (w - w_{\rm bak}(m)) \right), \qquad w_{\rm bak}(m) \leftarrow w

  (the compensated gradient :math:`g^{dc}` of supplement section D; section G discusses
  the choice of :math:`\lambda`: too large adds variance, too small degrades to ASGD).
  ``lambda_0 = 0`` is exactly :func:`async_sgd` (the same push rule, bitwise equal
  results); a traced ``lambda_0`` (``optax.inject_hyperparams``) always runs the
  compensated rule, which at 0 equals ASGD up to float rounding.

  Args:
    learning_rate: :math:`\eta`, a positive constant or a schedule of the round count.
    lambda_0: :math:`\lambda_0 \ge 0` (paper default 0.04).
    num_workers: p.
    mesh: ``None`` for stacked workers on one device; a mesh to shard the workers over
      its axis ``axis_name`` (see :mod:`altmin_jax.distributed.workers`).
    axis_name: the workers' vmap / mesh axis name.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. ``update(grads, state, params, *,
    order=None, active=None)`` takes stacked per-worker ``grads`` and ``params``
    (leading axis p) and returns the updates that set every pushing worker's copy to the
    server parameters it pulls; the state is a :class:`DCASGDState`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import altmin_jax.distributed as dist
    >>> tx = dist.dc_asgd(0.1, lambda_0=0.04, num_workers=2)
    >>> params = dist.replicate(jnp.ones(3), 2)
    >>> state = tx.init(params)
    >>> grads = jax.vmap(jax.grad(lambda w: jnp.sum(w ** 2)))(params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> # push 0: w = 1 - 0.1 * 2 = 0.8; push 1: w = 0.8 - 0.1 * (2 + 0.04 * 4 * (0.8 - 1))
    >>> round(float(dist.centre(state)[0]), 4)
    0.6032
  """
  lambda_0 = check_nonnegative("lambda_0", lambda_0)
  rule = _plain_rule() if _is_zero(lambda_0) else _compensated_rule(lambda_0, None, 0.0)
  return _async_transformation(rule, learning_rate, WorkerLayout(num_workers, mesh, axis_name))


def dc_asgd_adaptive(
  learning_rate: ScalarOrSchedule,
  lambda_0: Scalar = 2.0,
  *,
  num_workers: int,
  momentum: Scalar = 0.95,
  eps: Scalar = 1e-7,
  mesh: Mesh | None = None,
  axis_name: str = workers_lib.DEFAULT_AXIS,
) -> optax.GradientTransformationExtraArgs:
  r"""DC-ASGD-a: delay compensation with an adaptive, elementwise coefficient.

  The push rule of :func:`dc_asgd` with :math:`\lambda_0` replaced by the elementwise
  :math:`\lambda_t`, computed on the server for each push of worker m, in ``order``:

  .. math::
     \mathrm{MS} \leftarrow m\,\mathrm{MS} + (1 - m)\, g_m \odot g_m, \qquad
     \lambda_t = \frac{\lambda_0}{\sqrt{\mathrm{MS} + \epsilon}}.

  ``lambda_0 = 0`` pushes exactly as :func:`async_sgd` (bitwise equal parameters) and
  still keeps MeanSquare up to date in the state (a traced ``lambda_0`` runs the
  compensated rule, as in :func:`dc_asgd`).

  Args:
    learning_rate: :math:`\eta`, a positive constant or a schedule of the round count.
    lambda_0: :math:`\lambda_0 \ge 0` (paper default 2).
    num_workers: p.
    momentum: the mean-square decay m in ``[0, 1)`` (default 0.95).
    eps: :math:`\epsilon > 0` inside the square root (default 1e-7).
    mesh, axis_name: execution mode, as in :func:`dc_asgd`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` as in :func:`dc_asgd`; MeanSquare is
    ``state.mean_square``.

  Example:
    >>> import jax.numpy as jnp
    >>> import altmin_jax.distributed as dist
    >>> tx = dist.dc_asgd_adaptive(0.1, num_workers=4)
    >>> state = tx.init(dist.replicate(jnp.zeros(2), 4))
    >>> state.mean_square.shape, state.backups.shape
    ((2,), (4, 2))
  """
  lambda_0 = check_nonnegative("lambda_0", lambda_0)
  decay = check_unit_interval("momentum", momentum)
  eps = check_positive("eps", eps)
  layout = WorkerLayout(num_workers, mesh, axis_name)
  if _is_zero(lambda_0):  # ASGD's push rule; MeanSquare still tracked
    return _async_transformation(_plain_rule(), learning_rate, layout, decay)
  return _async_transformation(_compensated_rule(lambda_0, decay, eps), learning_rate, layout)


def async_sgd(
  learning_rate: ScalarOrSchedule,
  *,
  num_workers: int,
  mesh: Mesh | None = None,
  axis_name: str = workers_lib.DEFAULT_AXIS,
) -> optax.GradientTransformationExtraArgs:
  r"""ASGD: asynchronous SGD on a parameter server, without delay compensation.

  For each push of worker m, in ``order``: :math:`w \leftarrow w - \eta\, g_m`, then
  worker m pulls :math:`w`. The gradient :math:`g_m` was computed at the copy the worker
  pulled after its previous push (staleness ``p - 1`` in round-robin order). Not to be
  confused with *averaged* SGD (:func:`~altmin_jax.distributed.averaged_sgd`).

  Args:
    learning_rate: :math:`\eta`, a positive constant or a schedule of the round count.
    num_workers: p.
    mesh, axis_name: execution mode, as in :func:`dc_asgd`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` as in :func:`dc_asgd`.

  Example:
    >>> import jax.numpy as jnp
    >>> import altmin_jax.distributed as dist
    >>> tx = dist.async_sgd(0.5, num_workers=2)
    >>> params = dist.replicate(jnp.ones(1), 2)
    >>> updates, state = tx.update(jnp.ones((2, 1)), tx.init(params), params)
    >>> dist.centre(state).tolist(), (params + updates)[:, 0].tolist()
    ([0.0], [0.5, 0.0])
  """
  return _async_transformation(
    _plain_rule(), learning_rate, WorkerLayout(num_workers, mesh, axis_name)
  )


def _sync_transformation(
  learning_rate, layout: WorkerLayout, lambda_0: Any
) -> optax.GradientTransformationExtraArgs:
  """SSGD (``lambda_0=None``) or supplement H's delay-compensated round (a number)."""
  lr_fn = as_schedule(learning_rate, "learning_rate")
  num_workers = layout.num_workers
  method = "ssgd" if lambda_0 is None else "dc_ssgd"

  def init_fn(params):
    return SSGDState(count=jnp.zeros([], jnp.int32), centre=layout.start(params))

  def worker(group, mine, shared):
    count, w = shared
    lr = lr_fn(count)
    if lambda_0 is None:
      g, x = mine
      mean_g = group.mean(g)  # (1/p) sum_m g_m(w): one all-reduce on a mesh
      w = jax.tree.map(lambda w_, g_: (w_ - lr * g_).astype(w_.dtype), w, mean_g)
      return update_difference(w, x), (), w
    g, x = group.gather(mine)
    w = _dc_sync_round(g, w, lr / num_workers, lambda_0)
    rows = jax.tree.map(lambda w_, x_: jnp.broadcast_to(w_, x_.shape), w, x)
    return (), update_difference(rows, x), w

  def update_fn(updates, state, params=None, *, order=None, active=None, **extra_args):
    del extra_args
    layout.check_update(updates, params)
    # The synchronous round does not depend on order (only checked) and steps everyone.
    _, _, valid = layout.round_args(order, active, uses_active=False, method=method)
    mine, rows, server = layout.run(worker, (updates, params), (state.count, state.centre))
    new_updates = rows if lambda_0 is not None else mine
    return nan_unless(valid, new_updates), SSGDState(
      count=optax.safe_int32_increment(state.count), centre=server
    )

  return checked_transformation(method, init_fn, update_fn)


def _dc_sync_round(grads: Any, w0: Any, step: Array, lambda_0: Any) -> Any:
  """Supplement H: the M local gradients at w_t applied as if sequential, each
  compensated towards the point reached so far (eq. 95), smallest distance first."""
  sq_norms = sum(
    jnp.sum(jnp.square(g.astype(jnp.float32)).reshape(g.shape[0], -1), axis=1)
    for g in jax.tree.leaves(grads)
  )
  # ||w~^j - w_t||^2 = (eta^ / M)^2 ||g_j||^2: increasing order of that distance.
  order = jnp.argsort(sq_norms, stable=True)

  def push(w, g):
    w = jax.tree.map(
      lambda w_, g_, w0_: (w_ - step * (g_ + lambda_0 * g_ * g_ * (w_ - w0_))).astype(w_.dtype),
      w,
      g,
      w0,
    )
    return w, None

  w, _ = async_sim.apply_in_order(push, w0, grads, order)
  return w


def ssgd(
  learning_rate: ScalarOrSchedule,
  *,
  num_workers: int,
  mesh: Mesh | None = None,
  axis_name: str = workers_lib.DEFAULT_AXIS,
) -> optax.GradientTransformationExtraArgs:
  r"""SSGD: synchronous data-parallel SGD, the DC-ASGD paper's synchronous baseline.

  .. math::
     w \leftarrow w - \eta\, \frac1p \sum_{m=1}^p g_m(w)

  Every worker computes its gradient at the same :math:`w` (all ``params[m]`` equal the
  server parameters) and all pull the result; the delay schedule does not matter: a
  permutation ``order`` has no effect, and ``active`` must have every worker active
  when concrete (a traced one is ignored; see :mod:`altmin_jax.distributed`). In mesh
  mode the mean is one
  ``lax.psum`` over the mesh axis.

  Args:
    learning_rate: :math:`\eta` for the averaged gradient (a constant or a schedule).
    num_workers: p.
    mesh, axis_name: execution mode, as in :func:`dc_asgd`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; the state is an :class:`SSGDState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import altmin_jax.distributed as dist
    >>> tx = dist.ssgd(0.5, num_workers=2)
    >>> params = dist.replicate(jnp.ones(1), 2)
    >>> updates, state = tx.update(jnp.array([[1.0], [3.0]]), tx.init(params), params)
    >>> dist.centre(state).tolist()
    [0.0]
  """
  return _sync_transformation(learning_rate, WorkerLayout(num_workers, mesh, axis_name), None)


def dc_ssgd(
  learning_rate: ScalarOrSchedule,
  lambda_0: Scalar = 0.04,
  *,
  num_workers: int,
  mesh: Mesh | None = None,
  axis_name: str = workers_lib.DEFAULT_AXIS,
) -> optax.GradientTransformationExtraArgs:
  r"""Delay-compensated large-minibatch synchronous SGD (DC-ASGD supplement, section H).

  Synchronous SGD with M = p workers and learning rate :math:`\hat\eta` replaces the M
  sequential steps of eq. (93) by one step (eq. 94) with all gradients taken at
  :math:`w_t`. Here the M local gradients :math:`g_j = g(w_t, z_t^j)` are applied as if
  sequential, each delay-compensated towards the point reached so far (eq. 95):

  .. math::
     \tilde w_0 = w_t, \qquad
     \tilde w_{k+1} = \tilde w_k - \frac{\hat\eta}{M}\left( g_{j_k} + \lambda_0\,
     g_{j_k} \odot g_{j_k} \odot (\tilde w_k - w_t) \right), \qquad
     w_{t+1} = \tilde w_M,

  in increasing order of :math:`\|\tilde w^j_{t+1} - w_t\|^2 = (\hat\eta / M)^2
  \|g_j\|^2`, i.e. smallest gradient first (the supplement's ordering rule; ties keep
  worker order). ``lambda_0 = 0`` is :func:`ssgd` up to float rounding.

  Args:
    learning_rate: :math:`\hat\eta`, the large-minibatch learning rate (constant or
      schedule), as in :func:`ssgd`.
    lambda_0: :math:`\lambda_0 \ge 0`.
    num_workers: M = p.
    mesh, axis_name: execution mode, as in :func:`dc_asgd`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; the state is an :class:`SSGDState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import altmin_jax.distributed as dist
    >>> tx = dist.dc_ssgd(1.0, lambda_0=1.0, num_workers=2)
    >>> params = dist.replicate(jnp.zeros(1), 2)
    >>> _, state = tx.update(jnp.array([[2.0], [1.0]]), tx.init(params), params)
    >>> dist.centre(state).tolist()  # g=1 first: w=-0.5; then 2 + 4 * (-0.5) = 0
    [-0.5]
  """
  lambda_0 = check_nonnegative("lambda_0", lambda_0)
  return _sync_transformation(learning_rate, WorkerLayout(num_workers, mesh, axis_name), lambda_0)
