r"""SSO: a single target-space surrogate of the whole network, minimised for N steps.

Lavington, Vaswani, Babanezhad, Schmidt, Le Roux, "Target-based surrogates for
stochastic optimization", ICML 2023, as the SM paper's baseline (Asad et al., sections
2 and 4): one forward/backward pass gives the network output :math:`f_t = f(\theta_t)`
and :math:`\nabla\ell(f_t)`; then N gradient steps (with Armijo search) minimise

.. math::
   s_t(\theta) = \langle \nabla \ell(f_t), f(\theta) - f_t\rangle
     + \frac{1}{2\eta}\,\frac1B\|f(\theta) - f_t\|^2

over all parameters at once; each inner step needs a forward and backward pass through
the whole network (no layer parallelism), but no new loss gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from altmin_jax import losses as losses_lib
from altmin_jax import numerics
from altmin_jax.core import checks
from altmin_jax.core.states import checked_transformation
from altmin_jax.core.types import Array, Loss
from altmin_jax.networks import LayeredNetwork, stages
from altmin_jax.numerics.line_search import ArmijoSearch, check_search
from altmin_jax.sm import _common


class SSOState(NamedTuple):
  """State of SSO: step count, last loss, final surrogate value and next trial step."""

  count: Array  # int32 scalar, iterations taken
  loss: Array  # float32 scalar, h(theta_t) on the last batch, before its update
  surrogate: Array  # float32 scalar, s_t(theta_{t+1}) (<= 0 after a successful solve)
  step_size: Array  # float32 scalar, first Armijo trial step of the next inner step
  failed_count: Array  # int32 scalar, inner searches that fell back to ``fallback_step``


def sso(
  net: LayeredNetwork,
  loss: Loss = losses_lib.softmax_cross_entropy,
  *,
  inner_steps: int = 10,
  eta: float | None = None,
  loss_smoothness: float | None = None,
  line_search: ArmijoSearch | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Stochastic surrogate optimization (SSO) on the batch-mean loss.

  With :math:`\ell(f) = \frac1B\sum_b \mathrm{loss}(f_b, y_b)` (so :math:`\nabla\ell`
  carries the :math:`1/B`), the surrogate is

  .. math::
     s_t(\theta) = \frac1B \sum_b \Big[\langle \nabla \mathrm{loss}(f_{t,b}),
       f_b(\theta) - f_{t,b}\rangle + \frac{1}{2\eta}\|f_b(\theta) - f_{t,b}\|^2\Big],

  the batch mean of per-sample surrogates with target-space step :math:`\eta`. For
  :math:`\eta \le 1/L` (``L`` the per-sample smoothness of ``loss``) it majorizes
  :math:`h(\theta) - h(\theta_t)` for every :math:`\theta`; the default is
  :math:`\eta = 1/L`. N = ``inner_steps`` GD steps with Armijo search
  (:func:`~altmin_jax.sm.numerics.armijo_gd`) from :math:`\theta_t` give
  :math:`\theta_{t+1}`. Since :math:`\nabla s_t(\theta_t) = \nabla h(\theta_t)`, the first
  inner step is a gradient step on ``h``.

  Args:
    net: a :class:`~altmin_jax.networks.LayeredNetwork`.
    loss: per-sample loss ``loss(logits, labels) -> (batch,)``.
    inner_steps: N >= 1 surrogate steps per iteration.
    eta: target-space step size :math:`\eta > 0` (per-sample units); default ``1/L``.
    loss_smoothness: ``L`` for the default ``eta`` (known for the library's losses).
    line_search: the inner :class:`~altmin_jax.numerics.ArmijoSearch`; the step size
      persists across iterations.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (``update(None, state, params, *,
    batch=(x, y))``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import altmin_jax as amj
    >>> from altmin_jax.sm import sso
    >>> net = amj.networks.mlp([4, 8, 3], activation=jnp.tanh)
    >>> params = net.init(jax.random.key(0))
    >>> tx = sso(net, inner_steps=3)
    >>> x, y = jnp.ones((6, 4)), jnp.array([0, 1, 2, 0, 1, 2])
    >>> updates, state = tx.update(None, tx.init(params), params, batch=(x, y))
    >>> bool(state.surrogate <= 0)
    True
  """
  net = stages.check_network(net)
  loss = checks.check_loss(loss)
  inner_steps = checks.check_int("inner_steps", inner_steps, 1)
  if eta is None:
    eta = 1.0 / _common.resolve_loss_smoothness(loss, loss_smoothness)
  eta = checks.check_positive("eta", eta)
  search = check_search(line_search)

  def init_fn(params):
    del params
    return SSOState(
      count=jnp.zeros([], jnp.int32),
      loss=jnp.zeros([], jnp.float32),
      surrogate=jnp.zeros([], jnp.float32),
      step_size=jnp.asarray(search.init_step, jnp.float32),
      failed_count=jnp.zeros([], jnp.int32),
    )

  @jax.jit
  def iterate(stage_params, x, y, step_size):
    f_t = net.forward_stages(stage_params, x)[1]
    value, g_f = jax.value_and_grad(lambda f: stages.batch_mean_loss(loss, f, y))(f_t)
    scale = 1.0 / (2.0 * eta * f_t.shape[0])

    def surrogate(stage_params):
      diff = net.forward_stages(stage_params, x)[1] - f_t
      return jnp.vdot(g_f, diff) + scale * jnp.vdot(diff, diff)

    res = numerics.armijo_gd(
      surrogate, stage_params, steps=inner_steps, init_step=step_size, config=search
    )
    return res, value

  def update_fn(updates, state, params=None, *, batch, **extra_args):
    del updates, extra_args
    prep = stages.prepare(net, params, batch, "sso", loss)
    res, value = iterate(prep.stage_params, prep.x, prep.y, state.step_size)
    new_state = SSOState(
      count=optax.safe_int32_increment(state.count),
      loss=value.astype(jnp.float32),
      surrogate=res.value.astype(jnp.float32),
      step_size=res.next_step.astype(jnp.float32),
      failed_count=state.failed_count + res.failed_searches,
    )
    return stages.params_update(net, res.x, prep.params), new_state

  return checked_transformation("sso", init_fn, update_fn)
