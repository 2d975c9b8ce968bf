r"""GD+Armijo: gradient descent on the full loss with an Armijo line search.

The first baseline of the SM paper (Asad et al., section 4, "GD+Armijo"): full-batch
gradient descent whose step size is chosen by backtracking (Armijo 1966) with the
authors' defaults (c = 0.1, factor 0.9, at most 100 backtracks, a fallback step).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from altmin_jax import losses as losses_lib
from altmin_jax.networks import LayeredNetwork
from altmin_jax.sm import local_losses as ll
from altmin_jax.sm import solvers

Array = jax.Array


class GDArmijoState(NamedTuple):
  """State of GD+Armijo: step count, last loss, next first trial step, failed searches."""

  count: Array  # int32 scalar, iterations taken
  loss: Array  # float32 scalar, h(theta_t) on the last batch, before its update
  step_size: Array  # float32 scalar, the first trial step of the next search
  failed_count: Array  # int32 scalar, searches that fell back to ``fallback_step``


def gd_armijo(
  net: LayeredNetwork,
  loss: ll.Loss = losses_lib.softmax_cross_entropy,
  *,
  init_step: float = 1.0,
  armijo_c: float = solvers.ARMIJO_C,
  backtrack_factor: float = solvers.BACKTRACK_FACTOR,
  max_backtracks: int = solvers.MAX_BACKTRACKS,
  fallback_step: float = solvers.FALLBACK_STEP,
  step_growth: float = 2.0,
  max_step: float = 1e3,
) -> optax.GradientTransformationExtraArgs:
  r"""Gradient descent with an Armijo line search on the batch-mean loss ``h``.

  .. math::
     \theta_{t+1} = \theta_t - \alpha_t \nabla h(\theta_t),\qquad
     h(\theta_{t+1}) \le h(\theta_t) - c\,\alpha_t \|\nabla h(\theta_t)\|^2,

  :math:`\alpha_t` the largest of :math:`\alpha_0 \beta^j` (:math:`j \le` ``max_backtracks``)
  passing the test, :math:`\alpha_0 = \min(` ``step_growth`` :math:`\alpha_{t-1},`
  ``max_step`` :math:`)`, or ``fallback_step`` when none passes. One iteration costs one
  forward and backward pass plus one forward pass per trial step.

  Args:
    net: a :class:`~altmin_jax.networks.LayeredNetwork`.
    loss: per-sample loss ``loss(logits, labels) -> (batch,)``; ``h`` is its batch mean.
    init_step: first trial step of the first iteration.
    armijo_c, backtrack_factor, max_backtracks, fallback_step, step_growth, max_step: the
      search (see :func:`~altmin_jax.sm.solvers.armijo_backtracking`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update(grads, state, params, *,
    batch=(x, y))`` computes its own gradient (``grads`` is ignored, may be ``None``).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import altmin_jax as amj
    >>> from altmin_jax.sm import gd_armijo
    >>> net = amj.networks.mlp([4, 8, 3], activation=jnp.tanh)
    >>> params = net.init(jax.random.key(0))
    >>> tx = gd_armijo(net)
    >>> x, y = jnp.ones((6, 4)), jnp.array([0, 1, 2, 0, 1, 2])
    >>> updates, state = tx.update(None, tx.init(params), params, batch=(x, y))
    >>> int(state.count)
    1
  """
  net = ll.check_network(net)
  loss = ll.check_loss(loss)
  search = solvers.line_search_config(
    init_step=init_step,
    armijo_c=armijo_c,
    backtrack_factor=backtrack_factor,
    max_backtracks=max_backtracks,
    fallback_step=fallback_step,
    step_growth=step_growth,
    max_step=max_step,
  )

  def init_fn(params):
    del params
    return GDArmijoState(
      count=jnp.zeros([], jnp.int32),
      loss=jnp.zeros([], jnp.float32),
      step_size=jnp.asarray(search.init_step, jnp.float32),
      failed_count=jnp.zeros([], jnp.int32),
    )

  @jax.jit
  def iterate(stage_params, x, y, step_size):
    h = ll.network_loss(net, loss, x, y)
    return solvers.armijo_gd(h, stage_params, steps=1, init_step=step_size, config=search)

  def update_fn(updates, state, params=None, *, batch, **extra_args):
    del updates, extra_args
    prep = ll.prepare(net, params, batch, "gd_armijo")
    res = iterate(prep.stage_params, prep.x, prep.y, state.step_size)
    new_state = GDArmijoState(
      count=optax.safe_int32_increment(state.count),
      loss=res.initial_value.astype(jnp.float32),
      step_size=res.next_step.astype(jnp.float32),
      failed_count=state.failed_count + res.failed_searches,
    )
    return ll.params_update(net, res.x, prep.params), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
