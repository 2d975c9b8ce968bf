"""The divergence guards of :mod:`altmin_jax.training`."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import optax

import altmin_jax as amj


class _BestState(NamedTuple):
  best: jnp.ndarray  # starts at inf on purpose
  seen: jnp.ndarray


def _tracks_best():
  """A transformation whose state starts with an inf and records the last gradient."""

  def init(params):
    return _BestState(best=jnp.array(jnp.inf), seen=jnp.zeros_like(params))

  def update(updates, state, params=None):
    del params
    best = jnp.minimum(state.best, jnp.sum(jnp.abs(updates)))
    return -0.1 * updates, _BestState(best=best, seen=updates)

  return optax.GradientTransformation(init, update)


def test_skip_nonfinite_ignores_deliberate_infs_and_catches_new_ones():
  tx = amj.training.skip_nonfinite_updates(_tracks_best())
  params = jnp.ones(3)
  state = tx.init(params)
  updates, state = tx.update(jnp.array([1.0, 2.0, 3.0]), state, params)
  assert int(state.total_notfinite) == 0
  assert float(state.inner_state.best) == 6.0
  # An inf that reaches only the state (not the updates) is still caught.
  before = state
  sneaky = _tracks_best()
  tx2 = amj.training.skip_nonfinite_updates(
    optax.GradientTransformation(
      sneaky.init, lambda u, s, p=None: (jnp.zeros_like(u), sneaky.update(u, s, p)[1])
    )
  )
  s2 = tx2.init(params)
  updates, s2 = tx2.update(jnp.array([1.0, jnp.inf, 3.0]), s2, params)
  assert int(s2.total_notfinite) == 1
  assert bool(jnp.all(s2.inner_state.seen == 0.0))
  # A NaN in the updates is caught and the state is kept.
  updates, state = tx.update(jnp.array([jnp.nan, 0.0, 0.0]), before, params)
  assert int(state.total_notfinite) == 1
  assert bool(jnp.all(updates == 0.0))
  assert float(state.inner_state.best) == 6.0
