"""Elman RNN and its AM-Adam (AM paper, supplement C)."""

from __future__ import annotations

import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tree_allclose

import altmin_jax as amj
from altmin_jax.am import codes as codes_lib
from altmin_jax.am import rnn as rnn_lib

LOSS = amj.losses.softmax_cross_entropy
B, T, D = 4, 5, 3


def _setup(seed=0, hidden=D, seq_len=T, n=B, input_size=1):
  rnn = amj.networks.elman_rnn(hidden, seq_len=seq_len, input_size=input_size, num_classes=3)
  params = rnn.init(jax.random.key(seed))
  # Larger recurrent weights than the default init, so time steps interact strongly.
  params["recurrent"]["W"] = 3.0 * params["recurrent"]["W"]
  x = jax.random.normal(jax.random.key(seed + 1), (n, seq_len, input_size))
  y = jnp.arange(n) % 3
  return rnn, params, x, y


def test_forward_follows_the_elman_equations():
  """Eqs. 14-17 step by step in Python: c^t = U x^t + W h^{t-1} + b, h^t = tanh(c^t),
  z^t = V h^t, logits = C ReLU(z) + c_0."""
  rnn, p, x, _ = _setup(input_size=2)
  (c, z), logits = rnn.forward(p, x)
  r = {k: np.asarray(v, np.float64) for k, v in p["recurrent"].items()}
  V = np.asarray(p["readout"]["V"], np.float64)
  h = np.zeros((B, D))
  cs, zs = [], []
  for t in range(T):
    ct = np.asarray(x[:, t], np.float64) @ r["U"] + h @ r["W"] + r["b"]
    h = np.tanh(ct)
    cs.append(ct)
    zs.append(h @ V)
  zs = np.stack(zs, 1)
  out = np.maximum(zs, 0).reshape(B, -1) @ np.asarray(p["classifier"]["kernel"]) + np.asarray(
    p["classifier"]["bias"]
  )
  np.testing.assert_allclose(c, np.stack(cs, 1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(z, zs, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(logits, out, rtol=1e-5, atol=1e-5)
  assert rnn.code_shapes == ((T, D), (T, 1)) and rnn.input_shape == (T, 2)
  with pytest.raises(ValueError, match=r"shape \(4, 5, 1\)"):
    rnn.check_input(jnp.ones((4, 5, 1)))


def _reference_codes(rnn, p, x, y, codes, *, mu, tx, steps, order):
  """The code updates written as a plain Python loop over time (``order`` of t)."""
  c0, z0 = (np.asarray(a) for a in codes)
  U, W, b = (p["recurrent"][k] for k in "UWb")
  V = p["readout"]["V"]

  def top(z):
    logits = jax.nn.relu(z).reshape(len(z), -1) @ p["classifier"]["kernel"]
    return jnp.sum(LOSS(logits + p["classifier"]["bias"], y)) / mu + jnp.sum((z - z0) ** 2)

  z = codes_lib.minimize(top, jnp.asarray(z0), tx, steps)
  c = jnp.asarray(c0)
  for t in order:

    def local(ct, t=t, c=c):
      h = jnp.tanh(ct)
      value = jnp.sum((z[:, t] - h @ V) ** 2) + jnp.sum((ct - c0[:, t]) ** 2)
      if t + 1 < T:
        value += jnp.sum((c[:, t + 1] - (x[:, t + 1] @ U + h @ W + b)) ** 2)
      return value

    c = c.at[:, t].set(codes_lib.minimize(local, jnp.asarray(c0[:, t]), tx, steps))
  return c, z


def test_code_updates_run_backwards_in_time_like_a_python_loop():
  rnn, p, x, y = _setup()
  codes, _ = rnn.forward(p, x)
  mu, tx, steps = 0.1, optax.sgd(0.05, momentum=0.9, nesterov=True), 4
  c, z = jax.jit(
    lambda codes: rnn_lib.update_rnn_codes(
      rnn, p, x, y, codes, codes, loss=LOSS, mu=mu, tx=tx, steps=steps
    )
  )(codes)
  kw = dict(mu=mu, tx=tx, steps=steps)
  c_ref, z_ref = _reference_codes(rnn, p, x, y, codes, order=range(T - 1, -1, -1), **kw)
  np.testing.assert_allclose(z, z_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(c, c_ref, rtol=1e-5, atol=1e-6)
  # The order matters: a forward-in-time sweep gives different codes.
  c_fwd, _ = _reference_codes(rnn, p, x, y, codes, order=range(T), **kw)
  assert float(jnp.max(jnp.abs(c_fwd - c_ref))) > 1e-3
  assert float(jnp.max(jnp.abs(c - codes[0]))) > 1e-3  # every code set moved


def test_each_code_step_lowers_its_local_objective():
  """Every one of K_c SGD steps lowers the subproblem of z and, backwards in time, of each
  c^t (with the already-updated c^{t+1})."""
  rnn, p, x, y = _setup()
  mu, tx, steps = 0.05, optax.sgd(0.02), 6
  codes, _ = rnn.forward(p, x)
  c, z = rnn_lib.update_rnn_codes(rnn, p, x, y, codes, codes, loss=LOSS, mu=mu, tx=tx, steps=steps)
  objectives = [rnn_lib.output_code_objective(rnn, p["classifier"], y, LOSS, codes[1], True, mu)]
  starts, finals = [codes[1]], [z]
  for t in range(T - 1, -1, -1):
    nxt = {} if t == T - 1 else dict(c_next=c[:, t + 1], x_next=x[:, t + 1])
    objectives.append(rnn_lib.time_step_objective(rnn, p, z[:, t], codes[0][:, t], True, **nxt))
    starts.append(codes[0][:, t])
    finals.append(c[:, t])
  for objective, start, final in zip(objectives, starts, finals):
    grad = jax.jit(jax.grad(objective))
    c, opt_state = start, tx.init(start)
    values = [float(objective(c))]
    for _ in range(steps):
      updates, opt_state = tx.update(grad(c), opt_state, c)
      c = optax.apply_updates(c, updates)
      values.append(float(objective(c)))
    assert all(b < a for a, b in itertools.pairwise(values)), values
    np.testing.assert_allclose(c, final, rtol=1e-5, atol=1e-6)


def _stacked_rows(rnn, x, c):
  """Rows [x^t, tanh(c^{t-1}), 1] and targets c^t for every (sample, t), in float64."""
  x, c = np.asarray(x, np.float64), np.asarray(c, np.float64)
  h_prev = np.concatenate([np.zeros_like(c[:, :1]), np.tanh(c[:, :-1])], axis=1)
  F = np.concatenate([x, h_prev, np.ones((*c.shape[:2], 1))], axis=-1)
  return F.reshape(-1, F.shape[-1]), c.reshape(-1, c.shape[-1])


def test_shared_weights_are_one_regression_over_all_time_steps():
  """The U, W, b subproblem is the least-squares problem of all (sample, time step) rows
  stacked: same value and gradient, and its minimiser is numpy's lstsq solution."""
  rnn, p, x, _ = _setup(input_size=2)
  codes, _ = rnn.forward(p, x)
  c = codes[0] + 0.2 * jnp.sin(3.0 * codes[0])  # updated codes, not a forward pass
  mu = 0.3
  objective = rnn_lib.recurrent_objective(rnn, x, c, mu)
  F, Y = _stacked_rows(rnn, x, c)
  theta = np.concatenate([p["recurrent"][k].reshape(-1, D) for k in "UWb"]).astype(np.float64)
  residual = Y - F @ theta
  # float32 rounding of the objective, to first order: each residual is a difference of terms
  # of size |Y| + |F| |theta| (K + 1 roundings each), squared (2 |r| times its error) and
  # summed (one rounding per term); the relative bound is about 4e-5 here, far below the
  # relative change a wrong row or weight would make.
  eps = np.finfo(np.float32).eps
  scale = np.abs(Y) + np.abs(F) @ np.abs(theta)
  rounding = 2 * (F.shape[1] + 1) * np.sum(np.abs(residual) * scale) / np.sum(residual**2)
  rtol = eps * (rounding + residual.size)
  np.testing.assert_allclose(objective(p["recurrent"]), mu / B * np.sum(residual**2), rtol=rtol)
  grads = jax.grad(objective)(p["recurrent"])
  expected = -2 * mu / B * F.T @ residual
  got = np.concatenate([grads[k].reshape(-1, D) for k in "UWb"])
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
  # The regression's minimiser (all rows at once) zeroes the gradient.
  best = np.linalg.lstsq(F, Y, rcond=None)[0]
  best = {"U": best[:2], "W": best[2 : 2 + D], "b": best[-1]}
  at_best = jax.grad(objective)(jax.tree.map(jnp.float32, best))
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(at_best)) < 1e-4
  # The readout V is a regression of z^t on tanh(c^t) over all rows too.
  z = codes[1] + 0.1
  g_v = jax.grad(rnn_lib.readout_objective(rnn, c, z, mu))(p["readout"])["V"]
  H = np.tanh(np.asarray(c, np.float64)).reshape(-1, D)
  Z = np.asarray(z, np.float64).reshape(-1, 1)
  expected_v = -2 * mu / B * H.T @ (Z - H @ np.asarray(p["readout"]["V"], np.float64))
  np.testing.assert_allclose(g_v, expected_v, rtol=1e-4, atol=1e-6)


def test_am_adam_rnn_step_is_codes_then_three_independent_subproblems():
  rnn, p, x, y = _setup()
  mu, tw = 0.2, optax.sgd(0.1)
  tx = rnn_lib.am_adam_rnn(
    rnn, code_steps=3, code_lr=0.05, weight_steps=2, weight_optimizer=tw, mu=mu
  )
  updates, state = jax.jit(tx.update)(None, tx.init(p), p, batch=(x, y))
  codes, logits = rnn.forward(p, x)
  c, z = rnn_lib.update_rnn_codes(
    rnn, p, x, y, codes, codes, loss=LOSS, mu=mu, tx=optax.sgd(0.05), steps=3
  )
  objectives = {
    "recurrent": rnn_lib.recurrent_objective(rnn, x, c, mu),
    "readout": rnn_lib.readout_objective(rnn, c, z, mu),
    "classifier": rnn_lib.classifier_objective(rnn, z, y, LOSS),
  }
  for part, objective in objectives.items():
    w = p[part]
    for _ in range(2):
      w = jax.tree.map(lambda a, g: a - 0.1 * g, w, jax.grad(objective)(w))
    expected = jax.tree.map(lambda a, b: a - b, w, p[part])
    assert tree_allclose(updates[part], expected, rtol=1e-4, atol=1e-6), part
  assert float(state.batch_loss) == pytest.approx(float(jnp.mean(LOSS(logits, y))), rel=1e-6)
  assert int(state.count) == 1


def test_numpy_scalars_and_injected_hyperparameters_match_python_numbers():
  """``mu`` and ``code_lr`` may be NumPy or JAX scalars, or injected by
  ``optax.inject_hyperparams`` (traced in the jitted update), with the same result."""
  rnn, p, x, y = _setup()
  kw = dict(code_steps=2, weight_steps=2, mu=0.2, code_lr=0.05)

  def plain(**changes):
    tx = rnn_lib.am_adam_rnn(rnn, **{**kw, **changes})
    return jax.jit(tx.update)(None, tx.init(p), p, batch=(x, y))

  reference = plain()
  as_numpy = plain(mu=np.float32(0.2), code_lr=np.float64(0.05), code_steps=np.int64(2))
  as_jax = plain(mu=jnp.float32(0.2), code_lr=jnp.asarray(0.05), weight_steps=jnp.int32(2))
  assert tree_allclose(as_numpy, reference, rtol=1e-5, atol=1e-6)
  assert tree_allclose(as_jax, reference, rtol=1e-5, atol=1e-6)
  static = ("rnn", "loss", "weight_steps", "code_steps")
  injected = optax.inject_hyperparams(rnn_lib.am_adam_rnn, static_args=static)(rnn=rnn, **kw)
  step = jax.jit(injected.update)
  state = injected.init(p)
  updates, new_state = step(None, state, p, batch=(x, y))
  assert tree_allclose((updates, new_state.inner_state), reference, rtol=1e-5, atol=1e-6)
  state.hyperparams["mu"] = jnp.full_like(state.hyperparams["mu"], 0.7)
  updates, new_state = step(None, state, p, batch=(x, y))
  expected = plain(mu=0.7)
  assert tree_allclose((updates, new_state.inner_state), expected, rtol=1e-5, atol=1e-6)
  assert not tree_allclose(expected, reference)
  assert step._cache_size() == 1


def test_wrong_batches_raise():
  rnn, p, x, y = _setup()
  tx = rnn_lib.am_adam_rnn(rnn)
  with pytest.raises(ValueError, match="shape"):
    tx.update(None, tx.init(p), p, batch=(x.reshape(B, -1), y))
  with pytest.raises(ValueError, match="labels"):
    tx.update(None, tx.init(p), p, batch=(x, y[:2]))
  with pytest.raises(ValueError, match="rnn must be"):
    rnn_lib.am_adam_rnn(amj.networks.mlp([4, 3]))


# ---------------------------------------------------------------- real data


@pytest.mark.slow
def test_sequential_mnist_learns_well_above_chance():
  """RNN-15 on pixel-by-pixel MNIST (T = 784): one epoch over the 8,000 bundled training
  images, batch 256, AM-Adam with the supplement C.2 d=15 setting (Adam 0.005, 5 code and
  5 weight iterations, mu_0 0.01, +0.01 per batch, x1.1 per epoch, mu <= 1). About 30 s on
  2 CPU cores."""
  data = amj.data.load_dataset("bundled_mnist", num_train=8000)
  x_train, y_train = amj.networks.as_sequences(data.train[0]), data.train[1]
  x_test, y_test = amj.networks.as_sequences(data.test[0]), data.test[1]
  rnn = amj.networks.elman_rnn(15, seq_len=784)
  batch = 256
  mu = amj.mu_schedule(
    init=0.01,
    batch_increment=0.01,
    epoch_multiplier=1.1,
    max_value=1.0,
    steps_per_epoch=len(x_train) // batch,
  )
  tx = rnn_lib.am_adam_rnn(
    rnn, weight_optimizer=optax.adam(5e-3), code_steps=5, weight_steps=5, code_lr=0.003, mu=mu
  )
  step = amj.training.make_train_step(rnn.apply, tx, loss=LOSS, uses_gradients=False)
  params = rnn.init(jax.random.key(0))
  state = tx.init(params)
  start = time.perf_counter()
  for xb, yb in amj.data.iterate_batches(x_train, y_train, batch, seed=0, epoch=0):
    params, state, _ = step(params, state, xb, yb)
  accuracy = amj.training.evaluate(rnn.apply, params, x_test, y_test)["accuracy"]
  print(
    f"RNN-15 AM-Adam, 1 epoch: held-out accuracy {accuracy:.4f} "
    f"in {time.perf_counter() - start:.1f} s"
  )
  assert accuracy >= 0.8  # chance is 0.1
