"""Scalar schedules: the penalty weight ``mu`` of alternating minimization."""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax

from altmin_jax.core.checks import (
  check_int,
  check_nonnegative,
  check_positive,
  check_real,
  concrete_scalar,
)


def mu_schedule(
  init: float = 0.01,
  batch_increment: float = 0.0,
  epoch_multiplier: float = 1.0,
  max_value: float = math.inf,
  steps_per_epoch: int | None = None,
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
    max_value: the cap ``mu_max >= mu_0`` (may be infinite).
    steps_per_epoch: minibatches per epoch ``S >= 1``; required unless
      ``epoch_multiplier`` is 1 (then ``mu_t = min(mu_0 + t delta, mu_max)`` for every
      ``S``). There is no default: with an epoch multiplier, an unstated ``S = 1`` would
      multiply ``mu`` after every step.

  Raises:
    ValueError: for values outside the ranges above, or an ``epoch_multiplier`` other
      than 1 (or traced) without ``steps_per_epoch``.

  Returns:
    An ``optax.Schedule`` mapping the step count to ``mu``.

  Example:
    >>> import altmin_jax as amj
    >>> mu = amj.mu_schedule(init=0.01, epoch_multiplier=1.1, max_value=1.5, steps_per_epoch=40)
    >>> round(float(mu(40)), 6)
    0.011
  """
  init = check_positive("init", init)
  batch_increment = check_nonnegative("batch_increment", batch_increment)
  epoch_multiplier = check_real("epoch_multiplier", epoch_multiplier, low=1.0)
  cap, floor = concrete_scalar("max_value", max_value), concrete_scalar("init", init)
  if cap is not None and (math.isnan(cap) or (floor is not None and cap < floor)):
    raise ValueError(f"max_value must be a number >= init={init!r}, got max_value={max_value!r}")
  if steps_per_epoch is None:
    if concrete_scalar("epoch_multiplier", epoch_multiplier) != 1.0:
      raise ValueError(
        "steps_per_epoch must be given (an integer >= 1, minibatches per epoch) when "
        f"epoch_multiplier={epoch_multiplier!r} is not 1: mu is multiplied once per epoch, "
        "and without steps_per_epoch every step would be an epoch"
      )
    steps_per_epoch = 1  # r = 1: every S gives the same values
  steps_per_epoch = check_int("steps_per_epoch", steps_per_epoch, 1)
  # sum_{k=1..e} r^k = r (r^e - 1) / (r - 1), with r^e - 1 = expm1(e log1p(r - 1)) so that
  # multipliers close to 1 lose no precision (r - 1 is exact for a Python float r). Every
  # real argument may be traced: the branches on r = 1 and delta = 0 are jnp.where.
  rm1 = epoch_multiplier - 1.0
  per_epoch = steps_per_epoch * batch_increment

  def schedule(count):
    count = jnp.asarray(count)
    log_r = jnp.log1p(jnp.asarray(rm1, jnp.float32))
    epochs = (count // steps_per_epoch).astype(jnp.float32)
    in_epoch = (count % steps_per_epoch).astype(jnp.float32)
    growth_m1 = jnp.expm1(epochs * log_r)
    value = (growth_m1 + 1.0) * init
    no_growth = rm1 == 0
    safe_rm1 = jnp.where(no_growth, 1.0, rm1).astype(jnp.float32)
    increments = jnp.where(
      no_growth, epochs * per_epoch, per_epoch * epoch_multiplier * growth_m1 / safe_rm1
    )
    # Without increments, no 0 * inf = nan once r^e overflows (the cap then applies).
    value = jnp.where(batch_increment > 0, value + increments + in_epoch * batch_increment, value)
    return jnp.minimum(value, jnp.asarray(max_value, jnp.float32))

  return schedule


def as_schedule(mu: float | optax.Schedule, name: str = "mu") -> optax.Schedule:
  """A constant or a schedule; constants must be positive and finite (Python, NumPy or
  JAX scalars; traced values, as under ``optax.inject_hyperparams``, pass unchecked)."""
  if callable(mu):
    return mu
  mu = check_positive(name, mu)
  return lambda count: jnp.asarray(mu, jnp.float32)
