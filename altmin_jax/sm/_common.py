r"""What the methods of the surrogate-minimization family share beyond the network-stage
plumbing (:mod:`altmin_jax.networks.stages`): their states, the smoothness of the
library's losses, the whole network's batch-mean loss, and one forward and backward pass.

Every gradient and curvature of the family is that of the batch-mean objective
:math:`h(\theta) = \frac1B \sum_b \mathrm{loss}(z^{(m)}_b, y_b)` (it scales like
:math:`1/B`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from altmin_jax import losses as losses_lib
from altmin_jax.core import checks
from altmin_jax.core.types import Array, Loss, PyTree
from altmin_jax.networks import LayeredNetwork
from altmin_jax.networks.stages import batch_mean_loss, stage_function

# ---------------------------------------------------------------- states


class SMState(NamedTuple):
  """State of surrogate minimization: step count and the last iteration's per-stage data."""

  count: Array  # int32 scalar, iterations taken
  loss: Array  # float32 scalar, h(theta_t) on the last batch, before its update
  curvature: Array  # (m,) float32, stage i's curvature data (the majorizer's summary)
  local_loss: Array  # (m,) float32, L_i(theta_{t+1}) (<= 0 when the solve decreased it)
  inner_iterations: Array  # (m,) int32, inner steps taken per stage (guards may stop early)
  step_size: Array  # (m,) float32, next first Armijo trial step per stage (solver="armijo")
  search_step: Array  # float32 scalar, next first trial multiple of the step search
  step_multiple: Array  # float32 scalar, the multiple of the SM step taken (1 with no search)
  search_trials: Array  # int32 scalar, the step search's trials (0 with no search)
  refreshed: Array  # bool scalar, whether the curvature was computed afresh this iteration
  since_refresh: Array  # int32 scalar, iterations since it was
  stored_curvature: Any  # curvature_refresh > 1: the majorizer's data in use, else ()
  batch_key: Array  # (3,) float32, fingerprint of the batch of stored_curvature
  previous_step: Any  # cg_warm_start: the last local solves' steps per stage, else ()

  # stored_curvature is () after init and holds the first batch's curvature data after the
  # first update (curvature_refresh > 1): its shapes follow the batch.
  FILLED_BY_UPDATE = ("stored_curvature",)


def initial_sm_state(options, num_stages: int, previous_step: Any = ()) -> SMState:
  """The :class:`SMState` before the first iteration (NumPy arrays; the single-device and
  the pipelined step both start from it): the inner and the step search's first trials
  from ``options`` (:class:`~altmin_jax.sm.local_losses.SMOptions`), no stored curvature,
  ``previous_step`` the zero steps of a warm start (or ``()``)."""
  m = num_stages
  search = options.step_search
  return SMState(
    count=np.zeros([], np.int32),
    loss=np.zeros([], np.float32),
    curvature=np.zeros([m], np.float32),
    local_loss=np.zeros([m], np.float32),
    inner_iterations=np.zeros([m], np.int32),
    step_size=np.full([m], options.line_search.init_step, np.float32),
    search_step=np.asarray(1.0 if search is None else search.init_step, np.float32),
    step_multiple=np.ones([], np.float32),
    search_trials=np.zeros([], np.int32),
    refreshed=np.array(False),
    since_refresh=np.zeros([], np.int32),
    stored_curvature=(),
    batch_key=np.zeros([3], np.float32),
    previous_step=previous_step,
  )


class GDArmijoState(NamedTuple):
  """State of GD+Armijo: step count, last loss, next first trial step, failed searches."""

  count: Array  # int32 scalar, iterations taken
  loss: Array  # float32 scalar, h(theta_t) on the last batch, before its update
  step_size: Array  # float32 scalar, the first trial step of the next search
  failed_count: Array  # int32 scalar, searches that fell back to ``fallback_step``


# Per-sample smoothness of the library's losses in the network output: the largest
# eigenvalue of the per-sample Hessian (softmax cross-entropy: diag(p) - p p^T <= 1/2;
# squared error ||o - t||^2: 2 I).
KNOWN_LOSS_SMOOTHNESS: dict[Callable, float] = {
  losses_lib.softmax_cross_entropy: 0.5,
  losses_lib.squared_error: 2.0,
}


def resolve_loss_smoothness(loss: Loss, loss_smoothness: Any) -> Any:
  """The per-sample smoothness constant ``L`` of ``loss`` in the network output.

  ``None`` selects the known constant of the library's losses; other losses need an
  explicit value (``> 0``; a traced value passes unchecked). The batch-mean objective
  then has smoothness ``L / B`` in the stacked outputs.
  """
  if loss_smoothness is None:
    if loss in KNOWN_LOSS_SMOOTHNESS:
      return KNOWN_LOSS_SMOOTHNESS[loss]
    raise ValueError(
      "loss_smoothness must be given for a loss other than altmin_jax.losses."
      f"softmax_cross_entropy / squared_error, got loss_smoothness=None for loss={loss!r}"
    )
  return checks.check_positive("loss_smoothness", loss_smoothness)


def network_loss(net: LayeredNetwork, loss: Loss, x: Array, y: Array) -> Callable:
  """``stage_params -> h``: the batch-mean loss of the whole network on ``(x, y)``."""
  return lambda stage_params: batch_mean_loss(loss, net.forward_stages(stage_params, x)[1], y)


class ForwardBackward(NamedTuple):
  """One forward and one backward pass (SM paper, Algorithm 1, line 'gradient oracle')."""

  value: Array  # h(theta_t), the batch-mean loss
  z: tuple  # z^(0) = x, z^(1), ..., z^(m) (logits)
  g_z: tuple  # g_z^(1), ..., g_z^(m): gradients of h in the stage outputs
  g_theta: tuple  # dh/dtheta_1, ..., dh/dtheta_m


def forward_backward(
  net: LayeredNetwork, stage_params: Sequence[PyTree], x: Array, y: Array, loss: Loss
) -> ForwardBackward:
  """Stage outputs, output gradients and parameter gradients from one forward pass and
  one reverse pass (stage-wise ``jax.vjp``)."""
  m = net.num_stages
  zs = [x]
  pullbacks = []
  for i in range(1, m + 1):
    fn = stage_function(net, i)
    if i == 1:  # the input is data: no gradient with respect to it
      z, vjp = jax.vjp(lambda th, fn=fn: fn(th, x), stage_params[0])
    else:
      z, vjp = jax.vjp(fn, stage_params[i - 1], zs[-1])
    zs.append(z)
    pullbacks.append(vjp)
  # g_z^(m) = grad l(z_t^(m)) (SM paper, eq. (2)); the pullbacks give g_z^(i), g_theta_i.
  value, g = jax.value_and_grad(lambda out: batch_mean_loss(loss, out, y))(zs[-1])
  g_z = [None] * m
  g_theta = [None] * m
  for i in range(m, 0, -1):
    g_z[i - 1] = g
    if i == 1:
      (g_theta[0],) = pullbacks[0](g)
    else:
      g_theta[i - 1], g = pullbacks[i - 1](g)
  return ForwardBackward(value=value, z=tuple(zs), g_z=tuple(g_z), g_theta=tuple(g_theta))
