"""Binary (sign) networks under online AM (issue 4, requirement 3; AM paper section 4).

The real-data check trains the 784-500-500-10 binary net (sign, then tanh) on the bundled
MNIST split for the same 5 epochs, batch 200, Adam lr 5e-4 (the paper's Table 1 rate for
500-unit layers), by AM-Adam (tanh' surrogate in the code subproblem of the sign layer) and
by Adam backprop with the straight-through estimator.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import bundled_split, teacher_classification, tree_equal

import altmin_jax as amj
from altmin_jax.am import codes as codes_lib
from altmin_jax.am import weights as weights_lib

LOSS = amj.losses.softmax_cross_entropy
SIZES = (6, 10, 8, 3)


def test_sign_forward_is_the_true_sign_and_the_derivative_is_the_surrogate():
  x = jnp.array([-2.0, -0.3, 0.0, 1e-6, 0.7, 3.0])
  for surrogate in ("ste", "tanh"):
    sign = amj.networks.sign_activation(surrogate)
    np.testing.assert_array_equal(sign(x), [-1, -1, -1, 1, 1, 1])
    assert sign(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16
  grad = lambda f: jax.vmap(jax.grad(f))(x)
  np.testing.assert_allclose(grad(amj.networks.sign_activation("ste")), np.ones(6))
  np.testing.assert_allclose(
    grad(amj.networks.sign_activation("tanh")),
    1 - np.tanh(np.asarray(x)) ** 2,
    rtol=1e-5,
    atol=1e-7,
  )
  with pytest.raises(ValueError, match="surrogate='relu'"):
    amj.networks.sign_activation("relu")


def test_binary_mlp_forward_uses_sign_then_tanh():
  net = amj.networks.binary_mlp(SIZES, surrogate="tanh")
  params = net.init(jax.random.key(0))
  x, _ = teacher_classification(0, n=16, d=SIZES[0])
  codes, logits = net.forward(params, x)
  k = [np.asarray(p["kernel"]) for p in params]
  b = [np.asarray(p["bias"]) for p in params]
  c1 = np.asarray(x) @ k[0] + b[0]
  a1 = np.where(c1 > 0, 1.0, -1.0)
  c2 = a1 @ k[1] + b[1]
  np.testing.assert_allclose(codes[0], c1, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(codes[1], c2, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits, np.tanh(c2) @ k[2] + b[2], rtol=1e-5, atol=1e-5)
  assert set(np.unique(net.activation(1)(codes[0]))) == {-1.0, 1.0}


def _codes_for(surrogate):
  net = amj.networks.binary_mlp(SIZES, surrogate=surrogate)
  params = net.init(jax.random.key(0))  # same params for both surrogates
  x, y = teacher_classification(1, n=16, d=SIZES[0], classes=SIZES[-1])
  codes, _ = net.forward(params, x)
  new = codes_lib.update_codes(
    net, params, y, codes, codes, loss=LOSS, mu=0.05, tx=optax.sgd(0.05), steps=3
  )
  return net, params, x, y, codes, new


def test_surrogate_acts_only_in_the_code_subproblem_below_the_sign():
  """``ste`` and ``tanh`` give the same top code (its subproblem does not cross the sign)
  and different codes for the sign layer, whose subproblem differentiates through it. The
  weight subproblems never differentiate through the sign: given the same codes, both
  networks make identical weight updates."""
  net_s, params, x, y, codes, new_s = _codes_for("ste")
  net_t, _, _, _, _, new_t = _codes_for("tanh")
  assert tree_equal(new_s[1], new_t[1])  # c^2: tanh layer, top code
  assert float(jnp.max(jnp.abs(new_s[0] - new_t[0]))) > 1e-3  # c^1: below the sign
  assert float(jnp.max(jnp.abs(new_s[0] - codes[0]))) > 1e-3  # and both moved
  # Under the STE the sign-layer code step is the tanh layer's: grad through sign = 1.
  rule = weights_lib.WeightRule(optimizers=(optax.adam(0.01),) * 3, steps=2)
  states, mem = weights_lib.init_weights_state(rule, net_s, params)
  kw = dict(loss=LOSS, mu=0.5)
  w_s = weights_lib.update_weights(rule, net_s, params, x, y, new_s, states, mem, **kw)[0]
  w_t = weights_lib.update_weights(rule, net_t, params, x, y, new_s, states, mem, **kw)[0]
  assert tree_equal(w_s, w_t)


def test_sign_layer_code_step_uses_the_selected_surrogate():
  """One SGD step on c^1 from the encoded codes: the proximal term is zero there, so
  ``c^1 - lr * 2 * dsign(c^1) * (W^2 (sign(c^1) W^2 + b^2 - c^2_new))`` with dsign the
  surrogate (1 for the STE, 1 - tanh^2 for tanh)."""
  for surrogate, dsign in (
    ("ste", lambda c: np.ones_like(c)),
    ("tanh", lambda c: 1 - np.tanh(c) ** 2),
  ):
    net = amj.networks.binary_mlp(SIZES, surrogate=surrogate)
    params = net.init(jax.random.key(0))
    x, y = teacher_classification(1, n=16, d=SIZES[0], classes=SIZES[-1])
    codes, _ = net.forward(params, x)
    new = codes_lib.update_codes(
      net, params, y, codes, codes, loss=LOSS, mu=0.05, tx=optax.sgd(0.05), steps=1
    )
    c1 = np.asarray(codes[0], np.float64)
    k2, b2 = (np.asarray(params[1][n], np.float64) for n in ("kernel", "bias"))
    residual = np.where(c1 > 0, 1.0, -1.0) @ k2 + b2 - np.asarray(new[1], np.float64)
    expected = c1 - 0.05 * 2 * dsign(c1) * (residual @ k2.T)
    np.testing.assert_allclose(new[0], expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- real data

EPOCHS, BATCH = 5, 200


def _train(net, tx, uses_gradients, seed=0):
  data = bundled_split()
  params = net.init(jax.random.key(seed))
  opt_state = tx.init(params)
  step = amj.training.make_train_step(net.apply, tx, loss=LOSS, uses_gradients=uses_gradients)
  accuracies = []
  for epoch in range(EPOCHS):
    for x, y in amj.data.iterate_batches(*data.train, BATCH, seed=seed, epoch=epoch):
      params, opt_state, _ = step(params, opt_state, x, y)
    accuracies.append(amj.training.evaluate(net.apply, params, *data.test)["accuracy"])
  return accuracies


def _am(seed=0):
  net = amj.networks.binary_mlp(surrogate="tanh")
  mu = amj.mu_schedule(init=0.01, epoch_multiplier=1.1, max_value=1.5, steps_per_epoch=40)
  tx = amj.am_adam(net, code_steps=5, code_lr=0.01, mu=mu, weight_optimizer=optax.adam(5e-4))
  return _train(net, tx, False, seed)


def _ste(seed=0):
  net = amj.networks.binary_mlp(surrogate="ste")
  return _train(net, optax.adam(5e-4), True, seed)


def test_binary_net_am_adam_and_ste_backprop_on_mnist():
  am, ste = _am(), _ste()
  print(
    "held-out accuracy per epoch: AM-Adam "
    + " ".join(f"{a:.4f}" for a in am)
    + " | STE Adam "
    + " ".join(f"{a:.4f}" for a in ste)
  )
  assert am[-1] >= 0.93 and ste[-1] >= 0.93
  assert am[-1] >= ste[-1] - 0.01  # AM-Adam is not behind the STE baseline
