"""Scalar schedules: the penalty weight ``mu`` of alternating minimization."""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax


def mu_schedule(
  init: float = 0.01,
  batch_increment: float = 0.0,
  epoch_multiplier: float = 1.0,
  max_value: float = math.inf,
  steps_per_epoch: int = 1,
) -> optax.Schedule:
  r"""The adaptive penalty schedule of online AM (Choromanska et al. 2019, sec. 4).

  Starting from ``init``, ``mu`` grows by ``batch_increment`` after every minibatch and
  is multiplied by ``epoch_multiplier`` at the end of every epoch, never exceeding
  ``max_value``. With ``e = t // S`` completed epochs and ``b = t % S`` batches into
  the current one (``S = steps_per_epoch``), the value used at step ``t`` is

  .. math::
     m_e = r^e \mu_0 + S\,\delta \sum_{k=1}^{e} r^k, \qquad
     \mu_t = \min(m_e + b\,\delta,\ \mu_{\max}),

  the closed form of ``mu <- mu + delta`` per batch and ``mu <- r * mu`` per epoch.

  Args:
    init: ``mu_0 > 0``.
    batch_increment: ``delta >= 0`` added after each minibatch.
    epoch_multiplier: ``r >= 1`` applied after each epoch.
    max_value: the cap ``mu_max >= mu_0``.
    steps_per_epoch: minibatches per epoch ``S >= 1``.

  Returns:
    An ``optax.Schedule`` mapping the step count to ``mu``.

  Example:
    >>> import altmin_jax as amj
    >>> mu = amj.mu_schedule(init=0.01, epoch_multiplier=1.1, max_value=1.5, steps_per_epoch=40)
    >>> round(float(mu(40)), 6)
    0.011
  """
  if not init > 0 or not math.isfinite(init):
    raise ValueError(f"mu init must be positive and finite, got init={init!r}")
  if not batch_increment >= 0:
    raise ValueError(f"batch_increment must be >= 0, got batch_increment={batch_increment!r}")
  if not epoch_multiplier >= 1:
    raise ValueError(f"epoch_multiplier must be >= 1, got epoch_multiplier={epoch_multiplier!r}")
  if not max_value >= init:
    raise ValueError(f"max_value must be >= init ({init!r}), got max_value={max_value!r}")
  if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}")

  def schedule(count):
    count = jnp.asarray(count)
    epochs = (count // steps_per_epoch).astype(jnp.float32)
    in_epoch = (count % steps_per_epoch).astype(jnp.float32)
    growth = jnp.power(jnp.float32(epoch_multiplier), epochs)
    value = growth * init
    if batch_increment > 0:
      per_epoch = steps_per_epoch * batch_increment
      if epoch_multiplier == 1:
        value = value + epochs * per_epoch
      else:
        r = epoch_multiplier
        value = value + per_epoch * r * (growth - 1.0) / (r - 1.0)
      value = value + in_epoch * batch_increment
    return jnp.minimum(value, jnp.float32(max_value))

  return schedule


def as_schedule(mu: float | optax.Schedule, name: str = "mu") -> optax.Schedule:
  """A constant or a schedule, validated: constants must be positive and finite."""
  if callable(mu):
    return mu
  if not isinstance(mu, (int, float)) or not (mu > 0 and math.isfinite(mu)):
    raise ValueError(f"{name} must be a positive finite number or a schedule, got {name}={mu!r}")
  return lambda count: jnp.float32(mu)
