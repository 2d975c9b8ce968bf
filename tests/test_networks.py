"""Layered networks: builders, Flax NNX adapter, jit and vmap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import teacher_classification, tree_allclose

import altmin_jax as amj


def test_mlp_forward_matches_the_layer_equations():
  net = amj.networks.mlp([6, 5, 4, 3], activation=[jax.nn.relu, jnp.tanh])
  params = net.init(jax.random.key(1))
  x = jax.random.normal(jax.random.key(2), (7, 6))
  codes, logits = net.forward(params, x)
  c1 = x @ params[0]["kernel"] + params[0]["bias"]
  c2 = jax.nn.relu(c1) @ params[1]["kernel"] + params[1]["bias"]
  out = jnp.tanh(c2) @ params[2]["kernel"] + params[2]["bias"]
  np.testing.assert_allclose(codes[0], c1, rtol=1e-6)
  np.testing.assert_allclose(codes[1], c2, rtol=1e-6)
  np.testing.assert_allclose(logits, out, rtol=1e-6)
  assert net.num_codes == 2 and net.code_shapes == ((5,), (4,))
  np.testing.assert_allclose(net.apply(params, x), out, rtol=1e-6)


def test_networks_work_under_jit_and_vmap():
  net = amj.networks.mlp([6, 5, 3])
  keys = jax.random.split(jax.random.key(0), 4)
  stacked = jax.vmap(net.init)(keys)
  x = jnp.ones((2, 6))
  batched = jax.jit(jax.vmap(net.apply, in_axes=(0, None)))(stacked, x)
  for i, key in enumerate(keys):
    np.testing.assert_allclose(batched[i], net.apply(net.init(key), x), rtol=1e-6)
  per_sample = jax.vmap(lambda xi: net.apply(net.init(keys[0]), xi[None])[0])(x)
  np.testing.assert_allclose(per_sample, net.apply(net.init(keys[0]), x), rtol=1e-6)


def test_input_shape_is_checked():
  net = amj.networks.mlp([6, 5, 3])
  with pytest.raises(ValueError, match=r"\(4, 7\).*\(batch, 6\)"):
    net.check_input(jnp.ones((4, 7)))


@pytest.mark.parametrize("sizes", [[5], [4, 0, 2]])
def test_mlp_rejects_bad_sizes(sizes):
  with pytest.raises(ValueError):
    amj.networks.mlp(sizes)


def _nnx_model():
  return nnx.Sequential(
    nnx.Linear(6, 8, rngs=nnx.Rngs(0)),
    jnp.tanh,
    nnx.Linear(8, 7, rngs=nnx.Rngs(1)),
    jnp.tanh,
    nnx.Linear(7, 3, rngs=nnx.Rngs(2)),
  )


def _native_params(model):
  return tuple(
    {"kernel": layer.kernel[...], "bias": layer.bias[...]}
    for layer in model.layers
    if isinstance(layer, nnx.Linear)
  )


def test_from_nnx_matches_the_model_and_the_native_network():
  model = _nnx_model()
  net = amj.networks.from_nnx(model)
  params = net.init(None)
  x, _ = teacher_classification(0, n=5)
  assert net.num_codes == 2 and net.input_shape == (6,)
  assert all(stage.dense for stage in net.stages)
  np.testing.assert_allclose(net.apply(params, x), model(x), rtol=1e-6)
  native = amj.networks.mlp([6, 8, 7, 3], activation=jnp.tanh)
  assert tree_allclose(
    jax.tree.leaves(net.stage_params(params)), jax.tree.leaves(_native_params(model))
  )
  np.testing.assert_allclose(native.apply(_native_params(model), x), model(x), rtol=1e-6)
  # stage_params and merge_stage_params are inverse views.
  doubled = tuple(jax.tree.map(lambda v: 2 * v, p) for p in net.stage_params(params))
  merged = net.merge_stage_params(doubled, params)
  assert type(merged) is type(params)
  assert tree_allclose(net.stage_params(merged), doubled)


def test_from_nnx_init_returns_the_model_params_and_refuses_a_key():
  model = _nnx_model()
  net = amj.networks.from_nnx(model)
  assert tree_allclose(jax.tree.leaves(net.init(None)), jax.tree.leaves(_native_params(model)))
  with pytest.raises(ValueError, match="init\\(None\\)"):
    net.init(jax.random.key(0))


def test_adapted_network_and_am_update_work_under_jit_and_vmap():
  """``vmap`` over a batch of parameter sets: the Flax-adapted forward pass and an AM
  update equal their one-at-a-time results."""
  net = amj.networks.from_nnx(_nnx_model())
  base = net.init(None)
  scales = jnp.array([0.5, 1.0, 2.0])
  stacked = jax.vmap(lambda s: jax.tree.map(lambda p: s * p, base))(scales)
  x = jnp.linspace(-1.0, 1.0, 24).reshape(4, 6)
  y = jnp.array([0, 1, 2, 1])
  batched = jax.jit(jax.vmap(net.apply, in_axes=(0, None)))(stacked, x)
  tx = amj.am_adam(net, code_steps=2)
  step = jax.jit(jax.vmap(lambda p: tx.update(None, tx.init(p), p, batch=(x, y))[0]))
  updates = step(stacked)
  for i in range(len(scales)):
    params = jax.tree.map(lambda p, i=i: scales[i] * p, base)
    np.testing.assert_allclose(batched[i], net.apply(params, x), rtol=1e-5, atol=1e-6)
    one = tx.update(None, tx.init(params), params, batch=(x, y))[0]
    assert tree_allclose(jax.tree.map(lambda u, i=i: u[i], updates), one, rtol=1e-4, atol=1e-6)


def test_from_nnx_with_explicit_layers():
  class Model(nnx.Module):
    def __init__(self):
      self.first = nnx.Linear(6, 8, rngs=nnx.Rngs(0))
      self.second = nnx.Linear(8, 3, rngs=nnx.Rngs(1))

    def __call__(self, x):
      return self.second(jax.nn.relu(self.first(x)))

  model = Model()
  net = amj.networks.from_nnx(model, layers=[model.first, jax.nn.relu, model.second])
  x, _ = teacher_classification(0, n=5)
  np.testing.assert_allclose(net.apply(net.init(None), x), model(x), rtol=1e-6)
  with pytest.raises(ValueError, match="Sequential"):
    amj.networks.from_nnx(model)


def test_from_nnx_rejects_stateful_layers():
  model = nnx.Sequential(
    nnx.Linear(4, 5, rngs=nnx.Rngs(0)),
    nnx.BatchNorm(5, rngs=nnx.Rngs(0)),
    nnx.Linear(5, 2, rngs=nnx.Rngs(0)),
  )
  with pytest.raises(ValueError, match="BatchStat"):
    amj.networks.from_nnx(model)


def test_am_on_nnx_model_equals_am_on_native_network():
  model = _nnx_model()
  net = amj.networks.from_nnx(model)
  native = amj.networks.mlp([6, 8, 7, 3], activation=jnp.tanh)
  x, y = teacher_classification(0, n=16)
  kw = dict(code_steps=2, weight_optimizer=optax.adam(1e-2))
  tx, tx_native = amj.am_adam(net, **kw), amj.am_adam(native, **kw)
  params, native_params = net.init(None), _native_params(model)
  u, _ = tx.update(None, tx.init(params), params, batch=(x, y))
  u_native, _ = tx_native.update(None, tx_native.init(native_params), native_params, batch=(x, y))
  assert tree_allclose(
    jax.tree.leaves(net.stage_params(u)), jax.tree.leaves(u_native), rtol=1e-5, atol=1e-6
  )
