"""Taylor et al. (2016) ADMM baseline: every block update solves its subproblem."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import teacher_classification

import altmin_jax as amj
from altmin_jax.am import admm


def test_relu_z_update_is_the_elementwise_minimiser():
  a = jnp.linspace(-2, 3, 11)[:, None] * jnp.ones((1, 13))
  m = jnp.ones((11, 1)) * jnp.linspace(-3, 2, 13)[None, :]
  beta, gamma = 2.0, 5.0
  z = admm._relu_z_update(a, m, beta, gamma)
  grid = jnp.linspace(-6, 6, 24001)
  cost = gamma * (a[..., None] - jnp.maximum(grid, 0)) ** 2 + beta * (grid - m[..., None]) ** 2
  best = jnp.min(cost, axis=-1)
  got = gamma * (a - jnp.maximum(z, 0)) ** 2 + beta * (z - m) ** 2
  np.testing.assert_allclose(got, best, atol=1e-5)


def _problem(n=48):
  net = amj.networks.mlp([6, 10, 8, 3], activation=jax.nn.relu)
  x, y = teacher_classification(1, n=n)
  return net, net.init(jax.random.key(0)), x, y


def test_block_updates_solve_their_subproblems():
  net, params, x, y = _problem()
  beta, gamma = 3.0, 7.0
  tx = amj.am.taylor_admm(net, num_samples=48, beta=beta, gamma=gamma, output_steps=200)
  updates, state = tx.update(None, tx.init(params), params, batch=(x, y))
  new = optax.apply_updates(params, updates)
  a = (x, *state.activations)
  # W_L is the least-squares fit, on the new a_{L-1}, of the z_L it found: at the first
  # iteration the forward pass's logits (normal equations A^T (A w - z) = 0).
  aug = jnp.concatenate([a[2], jnp.ones((48, 1))], axis=1)
  w = jnp.concatenate([new[2]["kernel"], new[2]["bias"][None]], axis=0)
  np.testing.assert_allclose(aug.T @ (aug @ w - net.apply(params, x)), 0.0, atol=2e-3)
  # After an iteration without warm start, lambda = beta (z_L - W_L a_{L-1}).
  tx0 = amj.am.taylor_admm(
    net, num_samples=48, beta=beta, gamma=gamma, warm_start=0, output_steps=200
  )
  u0, s0 = tx0.update(None, tx0.init(params), params, batch=(x, y))
  p0 = optax.apply_updates(params, u0)
  m = s0.activations[-1] @ p0[2]["kernel"] + p0[2]["bias"]
  np.testing.assert_allclose(s0.multiplier, beta * (s0.preactivations[-1] - m), atol=1e-4)
  # The output pre-activations solve their strongly convex problem (zero gradient).
  grad = jax.grad(
    lambda zz: jnp.sum(amj.losses.softmax_cross_entropy(zz, y)) + beta * jnp.sum((zz - m) ** 2)
  )(s0.preactivations[-1])
  np.testing.assert_allclose(grad, 0.0, atol=1e-3)


def test_hidden_block_updates_solve_their_subproblems():
  """From stored blocks that do not agree with the network (as mid-run), hidden layers
  l = 1, 2: W_l is the least-squares fit of the stored z_l on the new a_{l-1}; a_l solves
  its ridge problem with the not yet updated W_{l+1} (normal equations); z_l is the
  elementwise minimiser given the new a_l and W_l a_{l-1}."""
  net, params, x, y = _problem()
  beta, gamma = 3.0, 7.0
  tx = amj.am.taylor_admm(net, num_samples=48, beta=beta, gamma=gamma)
  keys = iter(jax.random.split(jax.random.key(3), 6))
  blank = tx.init(params)
  prev = blank._replace(
    count=jnp.array(5, jnp.int32),
    activations=tuple(
      jax.nn.relu(jax.random.normal(next(keys), a.shape)) for a in blank.activations
    ),
    preactivations=tuple(jax.random.normal(next(keys), z.shape) for z in blank.preactivations),
    multiplier=0.1 * jax.random.normal(next(keys), blank.multiplier.shape),
  )
  updates, state = tx.update(None, prev, params, batch=(x, y))
  new = optax.apply_updates(params, updates)
  a = (x, *state.activations)
  for l in (1, 2):
    aug = jnp.concatenate([a[l - 1], jnp.ones((48, 1))], axis=1)
    w = jnp.concatenate([new[l - 1]["kernel"], new[l - 1]["bias"][None]], axis=0)
    z_old = prev.preactivations[l - 1]
    np.testing.assert_allclose(aug.T @ (aug @ w - z_old), 0.0, atol=2e-3)
    k_next, b_next = params[l]["kernel"], params[l]["bias"]
    lhs = a[l] @ (beta * k_next @ k_next.T + gamma * jnp.eye(k_next.shape[0]))
    rhs = beta * (prev.preactivations[l] - b_next) @ k_next.T + gamma * jax.nn.relu(z_old)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4, atol=2e-3)
    assert float(jnp.max(jnp.abs(a[l] - jax.nn.relu(z_old)))) > 0.1
    m = a[l - 1] @ new[l - 1]["kernel"] + new[l - 1]["bias"]
    expected = admm._relu_z_update(a[l], m, beta, gamma)
    np.testing.assert_allclose(state.preactivations[l - 1], expected, atol=1e-4)


def test_admm_learns_a_small_problem():
  net, params, x, y = _problem(n=96)
  tx = amj.am.taylor_admm(net, num_samples=96, beta=1.0, gamma=10.0, warm_start=5)
  step = jax.jit(lambda p, s, x, y: tx.update(None, s, p, batch=(x, y)))
  state = tx.init(params)
  before = float(amj.losses.accuracy(net.apply(params, x), y))
  for _ in range(40):
    updates, state = step(params, state, x, y)
    params = optax.apply_updates(params, updates)
  after = float(amj.losses.accuracy(net.apply(params, x), y))
  assert after > max(0.65, before + 0.25), (before, after)


@pytest.mark.parametrize(
  "kwargs,text",
  [
    ({"beta": 0.0}, "beta=0.0"),
    ({"gamma": -1.0}, "gamma=-1.0"),
    ({"warm_start": -1}, "warm_start=-1"),
  ],
)
def test_bad_hyperparameters(kwargs, text):
  net, *_ = _problem()
  with pytest.raises(ValueError, match=text):
    amj.am.taylor_admm(net, num_samples=10, **kwargs)


def test_unsupported_activation_is_rejected():
  net = amj.networks.mlp([6, 10, 3], activation=jnp.tanh)
  with pytest.raises(ValueError, match="ReLU or identity"):
    amj.am.taylor_admm(net, num_samples=10)


def _collinear_inputs(n=64, d=120, rank=20, offset=1.0):
  """Rank-deficient inputs with a common offset, like standardized MNIST pixels (those
  that are background in every image are copies of the bias column)."""
  k1, k2 = jax.random.split(jax.random.key(7))
  factors = jax.random.normal(k1, (n, rank)) @ jax.random.normal(k2, (rank, d))
  return factors / rank**0.5 + offset


def test_weight_solve_on_collinear_inputs_is_finite_and_least_squares():
  """Regression: the float32 Gram matrix of collinear inputs is indefinite by rounding, and
  the former Cholesky solve with the default relative ridge 1e-6 returned NaN weights
  (Taylor ADMM went non-finite after one iteration on 300 or 1,000 bundled MNIST images)."""
  x = _collinear_inputs()
  targets = jax.random.normal(jax.random.key(8), (64, 5))
  kernel, bias = jax.jit(admm._least_squares)(x, targets, 1e-6)
  assert bool(jnp.all(jnp.isfinite(kernel))) and bool(jnp.all(jnp.isfinite(bias)))
  aug = np.concatenate([np.asarray(x, np.float64), np.ones((64, 1))], axis=1)
  # The float64 minimum-norm fit, ignoring the float32 rounding of x (rank 21).
  best = np.linalg.lstsq(aug, np.asarray(targets, np.float64), rcond=1e-5)[0]
  got = np.asarray(x @ kernel + bias, np.float64)
  target_norm = np.linalg.norm(targets)
  optimal = np.linalg.norm(aug @ best - targets) / target_norm
  assert np.linalg.norm(got - targets) / target_norm < optimal + 1e-3
  # Minimum norm: no weight along the input's null space.
  assert np.linalg.norm(kernel) < 1.01 * np.linalg.norm(best[:-1])

  net = amj.networks.mlp([120, 10, 8, 3], activation=jax.nn.relu)
  params = net.init(jax.random.key(0))
  y = jnp.arange(64) % 3
  tx = amj.am.taylor_admm(net, num_samples=64, beta=582.8, gamma=54.15, warm_start=0)
  step = jax.jit(lambda p, s: tx.update(None, s, p, batch=(x, y)))
  state = tx.init(params)
  for _ in range(2):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
  leaves = jax.tree_util.tree_leaves((params, state))
  assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)
