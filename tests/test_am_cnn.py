"""LeNet-5 under online AM (issue 4, requirement 1; AM paper supplement B).

The real-data checks train LeNet-5 on the bundled MNIST split (8,000 train / 2,000 held
out, 28x28x1) with batch 128: one epoch of AM-Adam in the default suite, five epochs of
AM-Adam and of Adam in the slow suite (issue 4: AM-Adam >= 97% within 5 epochs).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tree_allclose, tree_equal

import altmin_jax as amj
from altmin_jax.am import codes as codes_lib
from altmin_jax.am import weights as weights_lib

LOSS = amj.losses.softmax_cross_entropy


def _tiny(seed=0, n=8):
  net = amj.networks.lenet5((12, 12, 1), 3, features=(2, 3), hidden=(8, 6))
  params = net.init(jax.random.key(seed))
  x = jax.random.normal(jax.random.key(seed + 1), (n, 12, 12, 1))
  y = jnp.arange(n) % 3
  return net, params, x, y


def _patches(a: np.ndarray, k: int, padding: str) -> np.ndarray:
  """im2col: ``(B, H', W', k*k*C)`` patches in (kh, kw, c) order (matches HWIO kernels)."""
  a = np.asarray(a, np.float64)
  if padding == "SAME":
    p = k // 2
    a = np.pad(a, ((0, 0), (p, p), (p, p), (0, 0)))
  b, h, w, c = a.shape
  out = np.empty((b, h - k + 1, w - k + 1, k * k * c))
  for i in range(h - k + 1):
    for j in range(w - k + 1):
      out[:, i, j] = a[:, i : i + k, j : j + k, :].reshape(b, -1)
  return out


def _conv(a, params, padding):
  kernel = np.asarray(params["kernel"], np.float64)
  k = kernel.shape[0]
  return _patches(a, k, padding) @ kernel.reshape(-1, kernel.shape[-1]) + np.asarray(
    params["bias"], np.float64
  )


def _pool(a):
  b, h, w, c = a.shape
  return a[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def test_lenet5_has_four_pre_activation_pre_pool_codes():
  net = amj.networks.lenet5()
  params = net.init(jax.random.key(0))
  assert net.num_codes == 4 and net.input_shape == (28, 28, 1)
  assert net.code_shapes == ((28, 28, 6), (10, 10, 16), (120,), (84,))
  assert sum(p.size for p in jax.tree.leaves(params)) == 61706  # LeCun et al.'s LeNet-5
  assert [s.dense for s in net.stages] == [False, False, False, True, True]
  x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
  codes, logits = jax.eval_shape(net.forward, params, x)
  assert [c.shape for c in codes] == [(2, 28, 28, 6), (2, 10, 10, 16), (2, 120), (2, 84)]
  assert logits.shape == (2, 10)


def test_lenet5_forward_matches_the_layer_equations():
  """Codes are conv outputs before ReLU and pooling; pooling and flattening are the
  next stage's input map (checked against an independent im2col implementation)."""
  net, params, x, _ = _tiny()
  codes, logits = net.forward(params, x)
  relu = lambda a: np.maximum(a, 0)
  c1 = _conv(x, params[0], "SAME")
  c2 = _conv(_pool(relu(c1)), params[1], "VALID")
  flat = _pool(relu(c2)).reshape(len(x), -1)
  c3 = flat @ np.asarray(params[2]["kernel"]) + np.asarray(params[2]["bias"])
  c4 = relu(c3) @ np.asarray(params[3]["kernel"]) + np.asarray(params[3]["bias"])
  out = relu(c4) @ np.asarray(params[4]["kernel"]) + np.asarray(params[4]["bias"])
  for got, want in zip((*codes, logits), (c1, c2, c3, c4, out)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # sigma is elementwise: the activation fed to stage 2 has the code's shape.
  assert net.activation(1)(codes[0]).shape == codes[0].shape


def test_conv_weight_subproblem_is_a_patch_regression():
  """One SGD step on the conv layer's own subproblem ``mu/B ||c^1 - conv(W, x)||^2``
  equals the step of the least-squares regression of the code on the input patches."""
  net, params, x, y = _tiny()
  codes, _ = net.forward(params, x)
  targets = tuple(c + 0.1 * jnp.cos(c) for c in codes)  # codes after some update
  lr, mu = 0.05, 0.3
  rule = weights_lib.WeightRule(optimizers=(optax.sgd(lr),) * net.num_stages, steps=1)
  states, mem = weights_lib.init_weights_state(rule, net, params)
  new, _, _ = weights_lib.update_weights(
    rule, net, params, x, y, targets, states, mem, loss=LOSS, mu=mu
  )
  P = _patches(x, 5, "SAME").reshape(-1, 25)  # rows: every (sample, position)
  P = np.concatenate([P, np.ones((len(P), 1))], axis=1)
  theta = np.concatenate(
    [np.asarray(params[0]["kernel"]).reshape(25, 2), np.asarray(params[0]["bias"])[None]]
  )
  C = np.asarray(targets[0], np.float64).reshape(-1, 2)
  grad = -2 * mu / len(x) * P.T @ (C - P @ theta)
  expected = theta - lr * grad
  np.testing.assert_allclose(new[0]["kernel"].reshape(25, 2), expected[:-1], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(new[0]["bias"], expected[-1], rtol=1e-4, atol=1e-5)


def test_lenet_weight_subproblems_are_layer_local():
  """Conv and dense layers alike: a layer's new weights depend only on its own weights,
  input code and target code."""
  net, params, x, y = _tiny()
  rule = weights_lib.WeightRule(optimizers=(optax.adam(0.01),) * net.num_stages, steps=2)
  codes, _ = net.forward(params, x)
  codes = tuple(c + 0.1 * jnp.sin(c) for c in codes)
  states, mem = weights_lib.init_weights_state(rule, net, params)

  @jax.jit
  def update(params, codes):
    return weights_lib.update_weights(
      rule, net, params, x, y, codes, states, mem, loss=LOSS, mu=0.5
    )[0]

  base = update(params, codes)
  for l in range(1, net.num_codes + 1):
    bumped = tuple(c + (0.3 if i == l - 1 else 0.0) for i, c in enumerate(codes))
    new = update(params, bumped)
    for j in range(1, net.num_stages + 1):
      changed = not tree_allclose(new[j - 1], base[j - 1], rtol=0, atol=0)
      assert changed == (j in (l, l + 1)), (l, j)
  for k in range(1, net.num_stages + 1):
    other = tuple(
      jax.tree.map(lambda w: w + 0.5, p) if i == k - 1 else p for i, p in enumerate(params)
    )
    new = update(other, codes)
    for j in range(1, net.num_stages + 1):
      if j != k:
        assert tree_equal(new[j - 1], base[j - 1]), (k, j)


def test_am_adam_step_on_lenet_is_codes_then_per_layer_steps():
  """``am_adam`` on LeNet-5 = encode, top-down code updates through the conv stages, then
  one persistent-optimizer step per layer on its own subproblem."""
  net, params, x, y = _tiny()
  mu, tx_w = 0.2, optax.adam(0.01)
  tx = amj.am_adam(net, code_steps=2, code_lr=0.05, mu=mu, weight_optimizer=tx_w)
  updates, state = jax.jit(tx.update)(None, tx.init(params), params, batch=(x, y))
  codes, _ = net.forward(params, x)
  new_codes = jax.jit(
    lambda codes: codes_lib.update_codes(
      net, params, y, codes, codes, loss=LOSS, mu=mu, tx=optax.sgd(0.05), steps=2
    )
  )(codes)
  assert all(not tree_allclose(a, b) for a, b in zip(codes, new_codes))  # every code moved
  inputs = (x, *(jax.nn.relu(c) for c in new_codes))
  targets = (*new_codes, y)
  for l in range(1, net.num_stages + 1):
    objective = weights_lib.layer_objective(net, l, inputs[l - 1], targets[l - 1], loss=LOSS, mu=mu)
    grads = jax.grad(objective)(params[l - 1])
    expected, _ = tx_w.update(grads, tx_w.init(params[l - 1]), params[l - 1])
    assert tree_allclose(updates[l - 1], expected, rtol=1e-4, atol=1e-7), l
  assert int(state.count) == 1


# ---------------------------------------------------------------- real data

EPOCHS, BATCH, NUM_TRAIN = 5, 128, 8000
STEPS_PER_EPOCH = NUM_TRAIN // BATCH


@functools.cache
def _bundled_images():
  return amj.data.load_dataset("bundled_mnist", num_train=NUM_TRAIN, flatten=False)


def _train_lenet(make_tx, uses_gradients, seed=0, epochs=EPOCHS):
  data = _bundled_images()
  net = amj.networks.lenet5()
  tx = make_tx(net)
  params = net.init(jax.random.key(seed))
  opt_state = tx.init(params)
  step = amj.training.make_train_step(net.apply, tx, loss=LOSS, uses_gradients=uses_gradients)
  accuracies = []
  for epoch in range(epochs):
    for x, y in amj.data.iterate_batches(*data.train, BATCH, seed=seed, epoch=epoch):
      params, opt_state, _ = step(params, opt_state, x, y)
    accuracies.append(amj.training.evaluate(net.apply, params, *data.test)["accuracy"])
  return accuracies


def paper_am_adam(net):
  """Supplement B's winning MNIST setting: weight lr 0.002 (Adam, every layer), one code
  and one weight iteration, mu_0 = 0.01, mu += 1e-7 per batch, mu *= 1.1 per epoch, mu
  <= 1.5. The paper's code lr 1.0 is that of the reference code's Nesterov step on a
  batch-mean loss; on this library's per-sample sum (:mod:`altmin_jax.am.codes`) the same
  top-code step is lr 1.0 / 128."""
  mu = amj.mu_schedule(
    init=0.01,
    batch_increment=1e-7,
    epoch_multiplier=1.1,
    max_value=1.5,
    steps_per_epoch=STEPS_PER_EPOCH,
  )
  return amj.am_adam(
    net,
    code_steps=1,
    code_lr=1.0 / BATCH,
    code_optimizer="nesterov",
    weight_steps=1,
    mu=mu,
    weight_optimizer=optax.adam(2e-3),
  )


def test_lenet5_am_adam_learns_mnist_in_one_epoch():
  """The default-suite check (about 15 s): one epoch of the paper setting."""
  am = _train_lenet(paper_am_adam, uses_gradients=False, epochs=1)
  print(f"held-out accuracy after 1 epoch: AM-Adam {am[0]:.4f}")
  assert am[0] >= 0.93


@pytest.mark.slow
def test_lenet5_am_adam_reaches_97_percent_in_5_epochs():
  """Issue 4's real-data requirement, with Adam trained the same way (about 90 s on 2
  shared CPU cores)."""
  am = _train_lenet(paper_am_adam, uses_gradients=False)
  adam = _train_lenet(lambda net: optax.adam(2e-3), uses_gradients=True)
  print(
    "held-out accuracy per epoch: AM-Adam "
    + " ".join(f"{a:.4f}" for a in am)
    + " | Adam "
    + " ".join(f"{a:.4f}" for a in adam)
  )
  assert am[-1] >= 0.97, am
  assert adam[-1] >= 0.97, adam
