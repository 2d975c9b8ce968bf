"""AM from Flax training loops: nnx.Optimizer and the shipped TrainState."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from helpers import teacher_classification, tree_allclose

import altmin_jax as amj


def _model():
  return nnx.Sequential(
    nnx.Linear(6, 16, rngs=nnx.Rngs(0)), jax.nn.relu, nnx.Linear(16, 3, rngs=nnx.Rngs(1))
  )


def test_nnx_optimizer_forwards_the_batch_and_trains():
  model = _model()
  net = amj.networks.from_nnx(model)
  tx = amj.am_adam(net, weight_optimizer=optax.adam(1e-2), code_steps=3)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x, y = teacher_classification(0, n=64)

  # The same step done by hand on the pure params is the reference.
  params = net.init(None)
  expected, _ = tx.update(None, tx.init(params), params, batch=(x, y))
  expected = optax.apply_updates(params, expected)

  @nnx.jit
  def train_step(model, optimizer, x, y):
    optimizer.update(model, None, batch=(x, y))  # AM needs no gradients

  def loss():
    return jnp.mean(amj.losses.softmax_cross_entropy(model(x), y))

  train_step(model, optimizer, x, y)
  assert tree_allclose(nnx.as_pure(nnx.state(model, nnx.Param)), expected, rtol=1e-5, atol=1e-6)
  before = float(loss())
  for _ in range(40):
    train_step(model, optimizer, x, y)
  assert float(loss()) < 0.5 * before
  assert int(optimizer.opt_state.count[...]) == 41


def test_train_state_forwards_extra_args():
  net = amj.networks.mlp([6, 16, 3])
  tx = amj.am_adam(net, weight_optimizer=optax.adam(1e-2), code_steps=3)
  state = amj.training.TrainState.create(
    apply_fn=net.apply, params=net.init(jax.random.key(0)), tx=tx
  )
  x, y = teacher_classification(0, n=64)
  step = jax.jit(lambda s, x, y: s.apply_gradients(batch=(x, y)))

  def loss(s):
    return float(jnp.mean(amj.losses.softmax_cross_entropy(s.apply_fn(s.params, x), y)))

  expected, _ = tx.update(None, tx.init(state.params), state.params, batch=(x, y))
  first = step(state, x, y)
  assert tree_allclose(first.params, optax.apply_updates(state.params, expected))
  before, s = loss(state), first
  for _ in range(40):
    s = step(s, x, y)
  assert int(s.step) == 41 and loss(s) < 0.5 * before


def test_train_state_with_gradient_optimizer():
  net = amj.networks.mlp([6, 16, 3])
  state = amj.training.TrainState.create(
    apply_fn=net.apply, params=net.init(jax.random.key(0)), tx=optax.sgd(0.1)
  )
  x, y = teacher_classification(0, n=64)
  grad_fn = jax.grad(lambda p: jnp.mean(amj.losses.softmax_cross_entropy(net.apply(p, x), y)))
  grads = grad_fn(state.params)
  new = state.apply_gradients(grads=grads)
  assert tree_allclose(new.params, jax.tree.map(lambda p, g: p - 0.1 * g, state.params, grads))


def test_train_state_rejects_field_keywords():
  net = amj.networks.mlp([6, 16, 3])
  state = amj.training.TrainState.create(
    apply_fn=net.apply, params=net.init(jax.random.key(0)), tx=amj.am_adam(net)
  )
  x, y = teacher_classification(0, n=8)
  import pytest

  with pytest.raises(ValueError, match="step"):
    state.apply_gradients(batch=(x, y), step=5)


def test_adapted_relu_model_works_with_taylor_admm():
  """A single activation after a Flax layer is kept as is, so methods that need to know
  it (Taylor ADMM's closed-form ReLU step) accept Flax models."""
  model = _model()
  net = amj.networks.from_nnx(model)
  assert net.stages[0].activation is jax.nn.relu
  x, y = teacher_classification(0, n=64)
  tx = amj.am.taylor_admm(net, num_samples=64)
  params = net.init(None)
  updates, _ = tx.update(None, tx.init(params), params, batch=(x, y))
  assert bool(amj.training.all_finite(updates))
