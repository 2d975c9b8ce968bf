"""The SM baselines against their defining formulas, and SM on user containers.

GD+Armijo, CGBlock, SSO and DDG (SM paper, section 4) are each checked against an
independent computation of the update they are defined by.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import small_mlp, teacher_classification, tree_allclose
from jax.flatten_util import ravel_pytree

import altmin_jax as amj
from altmin_jax import numerics
from altmin_jax.sm import _common, cg_block, ddg, gd_armijo, majorizers, sso, surrogate_minimization
from altmin_jax.sm import local_losses as ll
from altmin_jax.sm import surrogate as sur

LOSS = amj.losses.softmax_cross_entropy


def _setup(sizes=(6, 8, 3), n=32, seed=0, dtype=jnp.float32):
  net = small_mlp(dtype, sizes=sizes)
  params = net.init(jax.random.key(seed))
  x, y = teacher_classification(seed, n=n, d=sizes[0], classes=sizes[-1])
  return net, params, x.astype(dtype), y


def _loss_fn(net, x, y):
  return jax.jit(lambda p: jnp.mean(LOSS(net.apply(p, x), y)))


def _run(tx, params, batches):
  """Jitted steps over ``batches``; returns the params after each step and the states."""
  step = jax.jit(lambda p, s, b: tx.update(None, s, p, batch=b))
  state = tx.init(params)
  path, states = [params], []
  for b in batches:
    updates, state = step(path[-1], state, b)
    path.append(optax.apply_updates(path[-1], updates))
    states.append(state)
  return path, states


def test_gd_armijo_takes_the_first_trial_step_with_sufficient_decrease():
  """theta_{t+1} = theta_t - alpha g with alpha = alpha_0 0.9^j, j the first index such
  that h(theta - alpha g) <= h(theta) - 0.1 alpha ||g||^2, alpha_0 = 2 alpha_{t-1}."""
  net, params, x, y = _setup()
  h = _loss_fn(net, x, y)
  grad = jax.jit(jax.grad(h))
  path, states = _run(
    gd_armijo(net, line_search=numerics.ArmijoSearch(init_step=4.0)), params, [(x, y)] * 4
  )
  alpha0 = 4.0
  for t in range(4):
    p, g = path[t], grad(path[t])
    gg = float(optax.tree.vdot(g, g))
    f0 = float(h(p))
    alpha = np.float32(alpha0)
    while float(h(optax.tree.add_scale(p, -alpha, g))) > f0 - 0.1 * alpha * gg:
      alpha = np.float32(alpha * np.float32(0.9))
    assert tree_allclose(path[t + 1], optax.tree.add_scale(p, -alpha, g), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(states[t].loss, f0, rtol=1e-6)
    np.testing.assert_allclose(states[t].step_size, 2 * alpha, rtol=1e-6)
    alpha0 = 2 * alpha
  assert int(states[-1].failed_count) == 0
  losses = [float(h(p)) for p in path]
  assert all(np.diff(losses) < 0)


def test_cg_block_solves_the_damped_diagonal_blocks_of_the_global_hessian():
  """With N >= the block dimension, CGBlock's update of block i is
  -(H_ii + damping I)^{-1} g_i, H_ii the dense diagonal block of the Hessian of h."""
  with jax.enable_x64(True):
    net, params, x, y = _setup(sizes=(3, 4, 2), n=12, dtype=jnp.float64)
    damping = 0.5
    tx = cg_block(net, inner_steps=20, damping=damping)
    updates, state = jax.jit(lambda p: tx.update(None, tx.init(p), p, batch=(x, y)))(params)
    flat, unravel = ravel_pytree(tuple(params))
    h = lambda w: jnp.mean(LOSS(net.apply(unravel(w), x), y))
    H = np.asarray(jax.jit(jax.hessian(h))(flat))
    g = np.asarray(jax.jit(jax.grad(h))(flat))
    start = 0
    for i, p in enumerate(params):
      size = ravel_pytree(p)[0].size
      block = slice(start, start + size)
      expected = -np.linalg.solve(H[block, block] + damping * np.eye(size), g[block])
      np.testing.assert_allclose(ravel_pytree(updates[i])[0], expected, rtol=1e-8, atol=1e-12)
      start += size
    assert not bool(jnp.any(state.negative_curvature))
    assert bool(jnp.all(state.model_value < 0))


def test_sso_surrogate_majorizes_the_loss_and_starts_along_the_gradient():
  """eta = 1/L makes s_t a global majorizer: h(theta_{t+1}) <= h(theta_t) +
  s_t(theta_{t+1}) < h(theta_t); one inner step is a gradient step on h (grad s_t =
  grad h at theta_t); more inner steps lower the surrogate further."""
  net, params, x, y = _setup()
  h = _loss_fn(net, x, y)
  g = jax.jit(jax.grad(h))(params)
  one_path, one_states = _run(sso(net, inner_steps=1), params, [(x, y)])
  d = optax.tree.sub(one_path[1], params)
  cos = optax.tree.vdot(d, g) / (optax.tree.norm(d) * optax.tree.norm(g))
  np.testing.assert_allclose(float(cos), -1.0, rtol=1e-5)
  path, states = _run(sso(net, inner_steps=8), params, [(x, y)] * 3)
  assert float(states[0].surrogate) < float(one_states[0].surrogate) < 0
  for t in range(3):
    before, after = float(h(path[t])), float(h(path[t + 1]))
    assert after <= before + float(states[t].surrogate) + 1e-6
    np.testing.assert_allclose(states[t].loss, before, rtol=1e-6)


def test_ddg_module_k_uses_the_gradient_from_k_minus_1_minus_k_steps_ago():
  """K = 3 modules on a 3-stage net: module k applies lr * grad_k(theta^{t-d}, batch_{t-d})
  with d = K - 1 - k (zero while its buffer fills); K = 1 is optax.sgd."""
  net, params, x, y = _setup(sizes=(6, 8, 8, 3))
  batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)]
  lr = 0.3
  path, states = _run(ddg(net, learning_rate=lr, num_modules=3), params, batches)
  grad = jax.jit(lambda p, b: jax.grad(lambda q: jnp.mean(LOSS(net.apply(q, b[0]), b[1])))(p))
  grads = [grad(path[t], batches[t]) for t in range(4)]
  for t in range(4):
    for k in range(3):
      s = t - (2 - k)
      g = grads[s][k] if s >= 0 else jax.tree.map(jnp.zeros_like, params[k])
      expected = optax.tree.add_scale(path[t][k], -lr, g)
      assert tree_allclose(path[t + 1][k], expected, rtol=1e-6, atol=1e-7), (t, k)
  # The buffers hold exactly the pending gradients.
  assert tree_allclose(
    jax.tree.map(lambda b: b[-1], states[-1].buffers[0]), grads[3][0], rtol=1e-6, atol=1e-7
  )
  # One module, with momentum: optax.sgd.
  sgd_path, _ = _run(ddg(net, learning_rate=lr, momentum=0.9, num_modules=1), params, batches)
  tx = optax.sgd(lr, momentum=0.9)
  p, s = params, tx.init(params)
  for b in batches:
    u, s = tx.update(grad(p, b), s, p)
    p = optax.apply_updates(p, u)
  assert tree_allclose(sgd_path[-1], p, rtol=1e-5, atol=1e-6)


def test_sm_on_a_flax_nnx_model_matches_the_tuple_params_network():
  """Params may be any container: SM on ``from_nnx(model)`` params, through
  ``nnx.Optimizer``, takes the same step as on the equivalent ``mlp`` tuple params."""
  model = nnx.Sequential(
    nnx.Linear(6, 8, rngs=nnx.Rngs(0)), jnp.tanh, nnx.Linear(8, 3, rngs=nnx.Rngs(1))
  )
  net = amj.networks.from_nnx(model)
  x, y = teacher_classification(0, n=16)
  tx = surrogate_minimization(net, inner_steps=4, delta=0.1)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  pure = nnx.as_pure(nnx.state(model, nnx.Param))
  tuple_net = small_mlp(sizes=(6, 8, 3))
  tuple_params = tuple(
    {"kernel": pure["layers"][i]["kernel"], "bias": pure["layers"][i]["bias"]} for i in (0, 2)
  )
  ref = surrogate_minimization(tuple_net, inner_steps=4, delta=0.1)
  expected, _ = jax.jit(lambda p: ref.update(None, ref.init(p), p, batch=(x, y)))(tuple_params)
  expected = optax.apply_updates(tuple_params, expected)

  @nnx.jit
  def train_step(model, optimizer, x, y):
    optimizer.update(model, None, batch=(x, y))

  train_step(model, optimizer, x, y)
  got = nnx.as_pure(nnx.state(model, nnx.Param))
  for i, layer in zip((0, 1), (0, 2)):
    assert tree_allclose(dict(got["layers"][layer]), expected[i], rtol=1e-5, atol=1e-6)


def test_more_cg_steps_on_the_local_losses_give_more_progress_per_iteration():
  """Deterministic SM: 10 iterations with N = 10 CG steps per local loss reach a loss at
  least 10% lower than with N = 1 (the paper's trend in N), and both decrease h by 20%."""
  net, params, x, y = _setup(sizes=(6, 8, 8, 3), n=64)
  h = _loss_fn(net, x, y)
  final = {}
  for n in (1, 10):
    path, _ = _run(surrogate_minimization(net, inner_steps=n), params, [(x, y)] * 10)
    final[n] = float(h(path[-1]))
  assert final[10] < 0.9 * final[1] < 0.8 * float(h(params))


@pytest.mark.parametrize("bad", ["labels", "pair"])
def test_bad_batches_raise_before_tracing(bad):
  net, params, x, y = _setup()
  tx = surrogate_minimization(net)
  batch = (x, y[:-1]) if bad == "labels" else (x,)
  with pytest.raises(ValueError, match=r"shape|pair"):
    tx.update(None, tx.init(params), params, batch=batch)
  with pytest.raises(ValueError, match="needs params"):
    tx.update(None, tx.init(params), None, batch=(x, y))


def test_each_local_solve_needs_only_stage_local_data():
  """SM's update of a stage equals a standalone solve from the data a pipeline stage holds:
  (z_t^(i-1), theta_i, g^(i)), the logits' Jacobian in its output, the loss's Hessian per
  sample and the per-sample bound e of the rest above; e matters."""
  net, params, x, y = _setup(sizes=(6, 8, 8, 3))
  sp = net.stage_params(params)
  cfg = ll.sm_config(net, LOSS, ll.SMOptions(inner_steps=5, power_iterations=5))
  fb = jax.jit(lambda sp: _common.forward_backward(net, sp, x, y, LOSS))(sp)
  sc = ll.scales(cfg, x.shape[0], jnp.float32)
  data = jax.jit(lambda sp: sur.stage_data(cfg, sp, fb, y, sc))(sp)
  kind = majorizers.stage_kind(net, 2)

  @jax.jit
  def solve(d):
    lq = ll.local_quadratic(cfg.options, kind, False, False, 2.0, d, sc)
    return ll.solve_local_loss(cfg.options, lq, jnp.float32(1.0), 1000).d

  tx = surrogate_minimization(net, inner_steps=5, power_iterations=5, step_search=None)
  updates, _ = jax.jit(lambda p: tx.update(None, tx.init(p), p, batch=(x, y)))(params)
  d_sm = solve(data[1])
  assert tree_allclose(d_sm, updates[1], rtol=1e-5, atol=1e-7)
  d_other = solve(data[1]._replace(bound=data[1].bound._replace(e=10 * data[1].bound.e)))
  assert not tree_allclose(d_other, d_sm, rtol=1e-3, atol=0)
