r"""GD+Armijo: gradient descent on the full loss with an Armijo line search.

The first baseline of the SM paper (Asad et al., section 4, "GD+Armijo"): full-batch
gradient descent whose step size is chosen by backtracking (Armijo 1966) with the
authors' defaults (c = 0.1, factor 0.9, at most 100 backtracks, a fallback step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from altmin_jax import losses as losses_lib
from altmin_jax import numerics
from altmin_jax.core import checks
from altmin_jax.core.states import checked_transformation
from altmin_jax.core.types import Loss
from altmin_jax.networks import LayeredNetwork, stages
from altmin_jax.numerics.line_search import ArmijoSearch, check_search
from altmin_jax.sm import _common
from altmin_jax.sm._common import GDArmijoState


def gd_armijo(
  net: LayeredNetwork,
  loss: Loss = losses_lib.softmax_cross_entropy,
  *,
  line_search: ArmijoSearch | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Gradient descent with an Armijo line search on the batch-mean loss ``h``.

  .. math::
     \theta_{t+1} = \theta_t - \alpha_t \nabla h(\theta_t),\qquad
     h(\theta_{t+1}) \le h(\theta_t) - c\,\alpha_t \|\nabla h(\theta_t)\|^2,

  :math:`\alpha_t` found by :func:`~altmin_jax.numerics.armijo_backtracking` started from
  ``step_growth`` times the previous step (see :class:`~altmin_jax.numerics.ArmijoSearch`).
  One iteration costs one forward and backward pass plus one forward pass per trial step.

  Args:
    net: a :class:`~altmin_jax.networks.LayeredNetwork`.
    loss: per-sample loss ``loss(logits, labels) -> (batch,)``; ``h`` is its batch mean.
    line_search: the :class:`~altmin_jax.numerics.ArmijoSearch` (its ``init_step`` is the
      first trial step of the first iteration; default: the authors' constants).

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
  net = stages.check_network(net)
  loss = checks.check_loss(loss)
  search = check_search(line_search)

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
    h = _common.network_loss(net, loss, x, y)
    return numerics.armijo_gd(h, stage_params, steps=1, init_step=step_size, config=search)

  def update_fn(updates, state, params=None, *, batch, **extra_args):
    del updates, extra_args
    prep = stages.prepare(net, params, batch, "gd_armijo", loss)
    res = iterate(prep.stage_params, prep.x, prep.y, state.step_size)
    new_state = GDArmijoState(
      count=optax.safe_int32_increment(state.count),
      loss=res.initial_value.astype(jnp.float32),
      step_size=res.next_step.astype(jnp.float32),
      failed_count=state.failed_count + res.failed_searches,
    )
    return stages.params_update(net, res.x, prep.params), new_state

  return checked_transformation("gd_armijo", init_fn, update_fn)
