"""Algorithm tests for online and offline alternating minimization (Choromanska et al.
2019, sec. 2) and the Taylor et al. (2016) ADMM baseline's hyperparameter handling."""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import small_mlp, teacher_classification, tree_allclose, tree_equal

import altmin_jax as amj
from altmin_jax.am import codes as codes_lib
from altmin_jax.am import weights as weights_lib

LOSS = amj.losses.softmax_cross_entropy


def _setup(seed=0, sizes=(6, 8, 7, 5, 3)):
  net = small_mlp(sizes=sizes)
  params = net.init(jax.random.key(seed))
  x, y = teacher_classification(seed, n=16, d=sizes[0], classes=sizes[-1])
  return net, params, x, y


def _paper_objective(net, params, l, c, code_above, anchor, y, mu):
  """Eqs. (4)-(5) per sample, summed, in the paper's own scaling (mu in front)."""
  sigma = net.activation(l)
  out = net.stage_apply(l + 1, params[l], sigma(c))
  if l == net.num_codes:
    first = jnp.sum(LOSS(out, y))
  else:
    first = mu * jnp.sum(jnp.square(code_above - out))
  return first + mu * jnp.sum(jnp.square(c - anchor))


@pytest.mark.parametrize("code_optimizer,code_lr", [("sgd", 0.01), ("nesterov", 0.003)])
def test_each_code_step_lowers_its_local_objective(code_optimizer, code_lr):
  """Every one of K_c steps on eq. (4) (top code) and eq. (5) (hidden codes, with the
  updated code above) lowers that subproblem's objective."""
  net, params, x, y = _setup()
  mu = 0.05
  codes, _ = net.forward(params, x)
  tx = codes_lib.make_code_optimizer(code_optimizer, code_lr)
  steps = 6
  final = codes_lib.update_codes(net, params, y, codes, codes, loss=LOSS, mu=mu, tx=tx, steps=steps)
  for l in range(net.num_codes, 0, -1):
    above = None if l == net.num_codes else final[l]
    if l == net.num_codes:
      scaled = codes_lib.top_code_objective(net, params, y, LOSS, codes[l - 1], True, mu)
    else:
      scaled = codes_lib.hidden_code_objective(net, params, l, above, codes[l - 1], True)
    values = []
    for k in range(steps + 1):
      c = codes_lib.minimize(scaled, codes[l - 1], tx, k)
      values.append(float(_paper_objective(net, params, l, c, above, codes[l - 1], y, mu)))
    assert all(b < a for a, b in itertools.pairwise(values)), (l, values)
    # update_codes runs exactly these steps, top-down with the updated code above.
    np.testing.assert_allclose(c, final[l - 1], rtol=1e-6, atol=1e-6)


def test_model_minimizer_cuts_each_sample_to_its_closed_form_step():
  """Per-sample quadratics 0.5 k_i ||c_i||^2 with SGD step 0.05: samples whose full step
  stays short of the minimum keep it, the overshooting ones land on the minimiser."""
  k = jnp.array([1.0, 10.0, 100.0])[:, None]
  objective = lambda c: jnp.sum(0.5 * k * jnp.square(c - 2.0))
  tx = optax.chain(optax.sgd(0.05), codes_lib.scale_by_model_minimizer())
  c = codes_lib.minimize(objective, jnp.zeros((3, 4)), tx, 1)
  expected = jnp.array([0.1, 1.0, 2.0])[:, None] * jnp.ones((3, 4))
  np.testing.assert_allclose(c, expected, rtol=1e-6)
  with pytest.raises(ValueError, match="value_fn"):
    tx.update(jnp.ones((3, 4)), tx.init(jnp.ones((3, 4))), jnp.ones((3, 4)))
  # a pytree of codes: one cut per sample over all leaves (here the same as above)
  pair = lambda c: objective(c[0]) + objective(c[1][:, :4])
  start = (jnp.zeros((3, 4)), jnp.zeros((3, 4, 1)).reshape(3, 4))
  c0, c1 = codes_lib.minimize(pair, start, tx, 1)
  np.testing.assert_allclose(c0, expected, rtol=1e-6)
  np.testing.assert_allclose(c1, expected, rtol=1e-6)


def test_model_minimizer_keeps_overlong_code_steps_from_raising_the_objective():
  """With a code step far beyond the stable one (eta ||J||^2 >> 1) plain SGD raises the
  hidden subproblem (eq. 5) of most samples; cut per sample to the second-order model's
  minimiser it lowers the batch's objective (the model is exact up to the activation's
  kinks, so single samples may still rise a little)."""
  net, params, x, _ = _setup()
  codes, _ = net.forward(params, x)
  l = 2
  above = codes[l] + jax.random.normal(jax.random.key(1), codes[l].shape)
  objective = codes_lib.hidden_code_objective(net, params, l, above, codes[l - 1], True)
  sigma = net.activation(l)

  def per_sample(c):
    fit = jnp.sum(jnp.square(above - net.stage_apply(l + 1, params[l], sigma(c))), axis=-1)
    return fit + jnp.sum(jnp.square(c - codes[l - 1]), axis=-1)

  start = per_sample(codes[l - 1])
  plain = per_sample(codes_lib.minimize(objective, codes[l - 1], optax.sgd(3.0), 1))
  guard = optax.chain(optax.sgd(3.0), codes_lib.scale_by_model_minimizer())
  cut = per_sample(codes_lib.minimize(objective, codes[l - 1], guard, 1))
  assert float(jnp.mean(plain > start)) > 0.5 and float(jnp.sum(plain)) > float(jnp.sum(start))
  assert float(jnp.sum(cut)) < 0.9 * float(jnp.sum(start))
  assert float(jnp.mean(cut < start)) > 0.5


def test_am_adam_takes_a_safeguarded_code_optimizer():
  net, params, x, y = _setup()
  guard = optax.chain(optax.sgd(0.05), codes_lib.scale_by_model_minimizer())
  tx = amj.am_adam(net, code_lr=None, code_optimizer=guard, code_steps=2)
  step = jax.jit(lambda p, s: tx.update(None, s, p, batch=(x, y)))
  updates, state = step(params, tx.init(params))
  assert bool(amj.training.all_finite(updates)) and int(state.count) == 1


def test_forward_weight_inputs_fit_the_updated_codes_from_the_encoded_ones():
  """``weight_inputs="forward"``: each layer fits its updated code (labels at the output)
  from the activation of the code below as encoded, not as updated (eq. 6's input)."""
  net, params, x, y = _setup()
  mu = 0.05
  kw = dict(weight_optimizer=optax.sgd(0.1), code_steps=2, code_lr=0.05, mu=mu)
  forward, _ = net.forward(params, x)
  tx = codes_lib.make_code_optimizer("sgd", 0.05)
  new = codes_lib.update_codes(net, params, y, forward, forward, loss=LOSS, mu=mu, tx=tx, steps=2)
  rule = weights_lib.WeightRule(optimizers=(optax.sgd(0.1),) * net.num_stages, steps=1)
  opt_states = tuple(optax.sgd(0.1).init(p) for p in params)
  results = {}
  for inputs, below in (("forward", forward), ("codes", None)):
    want, _, _ = weights_lib.update_weights(
      rule, net, params, x, y, new, opt_states, (), loss=LOSS, mu=mu, input_codes=below
    )
    am = amj.am_adam(net, weight_inputs=inputs, **kw)
    updates, _ = am.update(None, am.init(params), params, batch=(x, y))
    results[inputs] = optax.apply_updates(params, updates)
    assert tree_allclose(results[inputs], want, rtol=1e-5, atol=1e-6), inputs
  assert not tree_allclose(results["forward"], results["codes"])
  with pytest.raises(ValueError, match="weight_inputs"):
    amj.am_adam(net, weight_inputs="updated", **kw)


def test_eq6_inputs_fit_each_layer_to_the_code_change_less_what_the_code_below_absorbed():
  """After one SGD code step, fitting layer ``l`` on the updated code below (eq. 6) fits it,
  to first order, to ``-(I - 2 code_lr J J^T) r`` instead of the encoded inputs' ``-r``
  (``r``: the change of code ``l``, ``J``: the Jacobian of ``f_l(W, sigma(c))`` at the
  encoded code below); docs/results_diagnostics.md uses this for LeNet-5's fc1."""
  with jax.enable_x64(True):
    net, params, x, y = _setup()
    params = jax.tree.map(lambda t: t.astype(jnp.float64), params)
    code_lr, mu = 0.05, 10.0  # a large mu keeps the top code's step, hence r, small
    fwd, _ = net.forward(params, x.astype(jnp.float64))
    tx = codes_lib.make_code_optimizer("sgd", code_lr)
    new = codes_lib.update_codes(net, params, y, fwd, fwd, loss=LOSS, mu=mu, tx=tx, steps=1)
    for l in range(2, net.num_codes + 1):
      f = lambda c, l=l: net.stage_apply(l, params[l - 1], net.activation(l - 1)(c))
      r = new[l - 1] - fwd[l - 1]
      residual = f(new[l - 2]) - new[l - 1]
      jac = jax.vmap(jax.jacobian(f))(fwd[l - 2][:, None])[:, 0, :, 0, :]
      absorbed = 2 * code_lr * jnp.einsum("bij,bkj,bk->bi", jac, jac, r)
      scale = float(jnp.linalg.norm(r))
      assert float(jnp.linalg.norm(absorbed)) > 0.03 * scale, l  # the term is not negligible
      err = float(jnp.linalg.norm(residual + r - absorbed))
      assert err < 1e-4 * scale, (l, err / scale)
      np.testing.assert_allclose(f(fwd[l - 2]) - new[l - 1], -r, atol=1e-12)  # "forward"


def test_code_proximal_switch_drops_the_anchor_term():
  net, params, x, y = _setup()
  codes, _ = net.forward(params, x)
  shifted = tuple(c + 1.0 for c in codes)
  tx = optax.sgd(0.01)
  kw = dict(loss=LOSS, mu=0.1, tx=tx, steps=3)
  with_prox = codes_lib.update_codes(net, params, y, codes, shifted, proximal=True, **kw)
  without = codes_lib.update_codes(net, params, y, codes, shifted, proximal=False, **kw)
  same_anchor = codes_lib.update_codes(net, params, y, codes, codes, proximal=False, **kw)
  assert not tree_allclose(with_prox, without)
  assert tree_equal(without, same_anchor)  # anchors are ignored without the term


def _weight_rule(net):
  return weights_lib.WeightRule(optimizers=(optax.sgd(0.1),) * net.num_stages, steps=2)


def test_hidden_weight_updates_are_layer_local():
  """No gradient flows between layers: each layer's new weights depend only on its
  own weights, its input code and its target code."""
  net, params, x, y = _setup()
  rule = _weight_rule(net)
  codes, _ = net.forward(params, x)
  codes = tuple(c + 0.1 * jnp.sin(c) for c in codes)
  states, mem = weights_lib.init_weights_state(rule, net, params)
  kw = dict(loss=LOSS, mu=0.5)
  base, _, _ = weights_lib.update_weights(rule, net, params, x, y, codes, states, mem, **kw)
  for l in range(1, net.num_codes + 1):
    # Perturbing code c^l changes layer l (target) and l + 1 (input) only.
    bumped = tuple(c + (0.3 if i == l - 1 else 0.0) for i, c in enumerate(codes))
    new, _, _ = weights_lib.update_weights(rule, net, params, x, y, bumped, states, mem, **kw)
    for j in range(1, net.num_stages + 1):
      changed = not tree_allclose(new[j - 1], base[j - 1], rtol=0, atol=0)
      assert changed == (j in (l, l + 1)), (l, j)
  for k in range(1, net.num_stages + 1):
    # Perturbing the weights of layer k changes no other layer's update.
    other = tuple(
      jax.tree.map(lambda w: w + 0.5, p) if i == k - 1 else p for i, p in enumerate(params)
    )
    new, _, _ = weights_lib.update_weights(rule, net, other, x, y, codes, states, mem, **kw)
    for j in range(1, net.num_stages + 1):
      if j != k:
        assert tree_equal(new[j - 1], base[j - 1]), (k, j)


def test_block_coordinate_sweeps_converge_to_least_squares():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(200, 9)).astype(np.float32)
  c = rng.normal(size=(200, 4)).astype(np.float32)
  A, B = jnp.asarray(a.T @ a), jnp.asarray(c.T @ a)
  exact = np.linalg.solve(np.asarray(A, np.float64), np.asarray(B, np.float64).T).T
  W0 = jnp.zeros((4, 9))
  errors = [
    float(jnp.max(jnp.abs(weights_lib.block_coordinate_sweeps(W0, A, B, s) - exact)))
    for s in (1, 5, 50)
  ]
  assert errors[0] > errors[1] > errors[2]
  assert errors[2] < 1e-4
  np.testing.assert_allclose(weights_lib.exact_solve(A, B, 0.0), exact, atol=1e-4)
  np.testing.assert_allclose(weights_lib.exact_solve(A, B, 1e-7), exact, atol=1e-3)


def test_block_coordinate_sweeps_skip_dead_inputs():
  A = jnp.diag(jnp.array([2.0, 0.0, 1.0]))
  B = jnp.array([[2.0, 0.0, 3.0]])
  W = weights_lib.block_coordinate_sweeps(jnp.array([[0.0, 7.0, 0.0]]), A, B, 3)
  np.testing.assert_allclose(W, [[1.0, 7.0, 3.0]])


@pytest.mark.parametrize("forgetting", [1.0, 0.5])
def test_memories_are_the_sums_over_all_samples_seen(forgetting):
  """A = sum a a^T and B = sum c a^T over every sample seen, built from the *updated*
  codes (recorded in the state) with a = [sigma(c^{l-1}); 1]."""
  net, params, x, y = _setup(sizes=(6, 8, 7, 3))
  tx = amj.am_mem(
    net, code_steps=3, forgetting=forgetting, output_optimizer=optax.sgd(0.1), record_codes=8
  )
  state = tx.init(params)
  expected = [(np.zeros((7, 7)), np.zeros((8, 7))), (np.zeros((9, 9)), np.zeros((7, 9)))]
  for step in range(3):
    xb, yb = x[4 * step : 4 * step + 8], y[4 * step : 4 * step + 8]
    encoded, _ = net.forward(params, xb)
    updates, state = tx.update(None, state, params, batch=(xb, yb))
    params = optax.apply_updates(params, updates)
    codes = state.codes  # the updated codes the layers were fitted to
    assert not tree_allclose(codes, encoded)
    inputs = (xb, jnp.tanh(codes[0]))
    for l in range(2):
      a = np.concatenate([np.asarray(inputs[l]), np.ones((8, 1))], axis=1)
      A, B = expected[l]
      expected[l] = (forgetting * A + a.T @ a, forgetting * B + np.asarray(codes[l]).T @ a)
  for (A, B), memory in zip(expected, state.memory):
    np.testing.assert_allclose(memory.A, A, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(memory.B, B, rtol=1e-5, atol=1e-4)


def test_am_mem_layers_solve_their_memory_exactly():
  net, params, x, y = _setup(sizes=(6, 8, 3))
  tx = amj.am_mem(net, solver="exact", ridge=0.0, code_steps=2)
  state = tx.init(params)
  updates, state = tx.update(None, state, params, batch=(x, y))
  new = optax.apply_updates(params, updates)
  W, _ = weights_lib.weights_to_matrix(new[0])
  A, B = state.memory[0]
  np.testing.assert_allclose(W @ A, B, atol=1e-4)  # normal equations W A = B


def test_mu_schedule_follows_its_definition():
  kw = dict(
    init=0.01, batch_increment=1e-3, epoch_multiplier=1.1, max_value=0.05, steps_per_epoch=7
  )
  schedule = amj.mu_schedule(**kw)
  mu, expected = kw["init"], []
  for step in range(60):
    expected.append(min(mu, kw["max_value"]))
    mu += kw["batch_increment"]  # after every minibatch
    if (step + 1) % kw["steps_per_epoch"] == 0:
      mu *= kw["epoch_multiplier"]  # after every epoch
  got = [float(schedule(t)) for t in range(60)]
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  assert got[-1] == pytest.approx(0.05)  # the cap is reached and held
  constant = amj.mu_schedule(init=0.2)
  assert float(constant(10**6)) == pytest.approx(0.2)
  paper = amj.mu_schedule(init=0.01, epoch_multiplier=1.1, max_value=1.5, steps_per_epoch=40)
  assert float(paper(40 * 60)) == pytest.approx(1.5)  # 0.01 * 1.1**60 > 1.5


def test_am_uses_the_scheduled_mu():
  net, params, x, y = _setup()
  schedule = amj.mu_schedule(init=0.01, batch_increment=0.5, steps_per_epoch=1)
  scheduled = amj.am_adam(net, mu=schedule, weight_optimizer=optax.sgd(0.1))
  fixed = amj.am_adam(net, mu=0.01 + 0.5 * 3, weight_optimizer=optax.sgd(0.1))
  state = scheduled.init(params)._replace(count=jnp.int32(3))
  u1, _ = scheduled.update(None, state, params, batch=(x, y))
  u2, _ = fixed.update(None, fixed.init(params)._replace(count=jnp.int32(3)), params, batch=(x, y))
  assert tree_allclose(u1, u2, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("family", ["adam", "mem"])
def test_offline_first_iteration_equals_online_step_on_full_data(family):
  net, params, x, y = _setup(sizes=(6, 8, 7, 3))
  n = x.shape[0]
  if family == "adam":
    online = amj.am_adam(net, weight_optimizer=optax.adam(1e-2), code_steps=3)
    offline = amj.am_adam_offline(
      net, num_samples=n, weight_optimizer=optax.adam(1e-2), code_steps=3
    )
  else:
    online = amj.am_mem(net, code_steps=3, forgetting=1.0)
    offline = amj.am_mem_offline(net, num_samples=n, code_steps=3, forgetting=1.0)
  u_on, s_on = online.update(None, online.init(params), params, batch=(x, y))
  u_off, s_off = offline.update(None, offline.init(params), params, batch=(x, y))
  assert tree_allclose(u_on, u_off, rtol=1e-6, atol=1e-7)
  assert tree_allclose(s_on.weight_states, s_off.weight_states)
  assert tree_allclose(s_on.memory, s_off.memory)
  # The full-data codes after the iteration are stored in the state...
  expected = codes_lib.update_codes(
    net,
    params,
    y,
    *(2 * (net.forward(params, x)[0],)),
    loss=LOSS,
    mu=0.01,
    tx=codes_lib.make_code_optimizer("sgd", 0.01),
    steps=3,
  )
  assert tree_allclose(s_off.codes, expected)
  # ...and the next iteration starts from them, not from a fresh encoding.
  p1 = optax.apply_updates(params, u_off)
  _u2, s2 = offline.update(None, s_off, p1, batch=(x, y))
  anchors = codes_lib.encode_anchors(net, p1, x, s_off.codes)
  expected2 = codes_lib.update_codes(
    net,
    p1,
    y,
    s_off.codes,
    anchors,
    loss=LOSS,
    mu=0.01,
    tx=codes_lib.make_code_optimizer("sgd", 0.01),
    steps=3,
  )
  assert tree_allclose(s2.codes, expected2)


def test_offline_rejects_a_partial_batch():
  net, params, x, y = _setup()
  tx = amj.am_adam_offline(net, num_samples=x.shape[0])
  with pytest.raises(ValueError, match="num_samples=16"):
    tx.update(None, tx.init(params), params, batch=(x[:8], y[:8]))


def test_bad_labels_raise():
  net, params, x, y = _setup()
  tx = amj.am_adam(net)
  with pytest.raises(ValueError, match="labels"):
    tx.update(None, tx.init(params), params, batch=(x, y[:5]))
  with pytest.raises(ValueError, match="pair"):
    tx.update(None, tx.init(params), params, batch=x)


def test_am_mem_needs_dense_hidden_layers():
  net = small_mlp()
  conv_like = amj.networks.LayeredNetwork(
    stages=(dataclasses.replace(net.stages[0], dense=False, name="conv"), *net.stages[1:]),
    input_shape=net.input_shape,
  )
  with pytest.raises(ValueError, match="conv"):
    amj.am_mem(conv_like)
  amj.am_adam(conv_like)  # gradient subproblems work for any stage


def test_output_optimizer_overrides_the_last_layer_only():
  net, params, x, y = _setup()
  a = amj.am_adam(net, weight_optimizer=optax.sgd(0.1), output_optimizer=optax.sgd(0.0))
  b = amj.am_adam(net, weight_optimizer=optax.sgd(0.1))
  ua, _ = a.update(None, a.init(params), params, batch=(x, y))
  ub, _ = b.update(None, b.init(params), params, batch=(x, y))
  assert all(float(jnp.max(jnp.abs(u))) == 0 for u in jax.tree.leaves(ua[-1]))
  assert tree_equal(ua[:-1], ub[:-1])


def test_recorded_codes_are_the_updated_codes_of_the_last_batch():
  net, params, x, y = _setup()
  tx = amj.am_adam(net, code_steps=3, record_codes=16)
  state = tx.init(params)
  assert [c.shape for c in state.codes] == [(16, *s) for s in net.code_shapes]
  _, state = tx.update(None, state, params, batch=(x, y))
  codes, _ = net.forward(params, x)
  expected = codes_lib.update_codes(
    net,
    params,
    y,
    codes,
    codes,
    loss=LOSS,
    mu=0.01,
    tx=codes_lib.make_code_optimizer("sgd", 0.01),
    steps=3,
  )
  assert tree_allclose(state.codes, expected)
  assert amj.am_adam(net).init(params).codes == ()
  with pytest.raises(ValueError, match="record_codes=16"):
    tx.update(None, state, params, batch=(x[:8], y[:8]))


def test_works_inside_optax_inject_hyperparams():
  """mu and code_lr become state the user can change between steps (ints and callables
  other than schedules go in static_args)."""
  net, params, x, y = _setup()
  static = ("net", "loss", "code_steps", "weight_steps", "record_codes")
  injected = optax.inject_hyperparams(amj.am_adam, static_args=static)(
    net=net, mu=0.05, code_lr=0.01, code_steps=3
  )
  step = jax.jit(injected.update)
  state = injected.init(params)
  u, _ = step(None, state, params, batch=(x, y))
  ref, _ = amj.am_adam(net, mu=0.05, code_lr=0.01, code_steps=3).update(
    None, amj.am_adam(net).init(params), params, batch=(x, y)
  )
  assert tree_allclose(u, ref, rtol=1e-5, atol=1e-7)
  state.hyperparams["mu"] = jnp.array(0.5, jnp.float32)
  state.hyperparams["code_lr"] = jnp.array(0.002, jnp.float32)
  u2, _ = step(None, state, params, batch=(x, y))
  ref2, _ = amj.am_adam(net, mu=0.5, code_lr=0.002, code_steps=3).update(
    None, amj.am_adam(net).init(params), params, batch=(x, y)
  )
  assert tree_allclose(u2, ref2, rtol=1e-5, atol=1e-7)
  assert not tree_allclose(u2, u)
  assert step._cache_size() == 1


def test_hyperparameter_checks_accept_numpy_and_jax_scalars():
  net, *_ = _setup()
  amj.am_adam(net, mu=np.float32(0.1), code_lr=jnp.float32(0.01), code_steps=np.int64(2))
  with pytest.raises(ValueError, match="code_steps=True"):
    amj.am_adam(net, code_steps=True)
  with pytest.raises(ValueError, match="mu=nan"):
    amj.am_adam(net, mu=float("nan"))


def _relu_net():
  return small_mlp(sizes=(6, 8, 3), activation=jax.nn.relu)


# (factory, net, hyperparameters, values injected at the second step, static_args)
INJECTED = {
  "am_mem": (
    amj.am_mem,
    small_mlp,
    dict(solver="exact", mu=0.05, code_lr=0.01, forgetting=0.5, ridge=1e-3, code_steps=2),
    dict(forgetting=0.9, ridge=0.0, code_lr=0.03),
    ("net", "loss", "output_steps", "sweeps", "code_steps"),
  ),
  "am_adam_offline": (
    amj.am_adam_offline,
    small_mlp,
    dict(num_samples=16, mu=0.05, code_lr=0.02, code_steps=2),
    dict(mu=0.3),
    ("net", "loss", "num_samples", "weight_steps", "code_steps"),
  ),
  "am_mem_offline": (
    amj.am_mem_offline,
    small_mlp,
    dict(num_samples=16, mu=0.05, forgetting=0.0, ridge=1e-4, code_steps=2),
    dict(forgetting=0.5, mu=0.2),
    ("net", "loss", "num_samples", "output_steps", "sweeps", "code_steps"),
  ),
  "taylor_admm": (
    amj.am.taylor_admm,
    _relu_net,
    dict(num_samples=16, beta=1.0, gamma=10.0, ridge=1e-6, warm_start=0),
    dict(beta=3.0, gamma=2.0, ridge=0.0, warm_start=5),
    ("net", "loss", "num_samples", "output_steps"),
  ),
}


@pytest.mark.parametrize("name", list(INJECTED))
def test_factories_take_numpy_scalars_and_injected_hyperparameters(name):
  """Every real hyperparameter may be a NumPy or 0-d JAX scalar, or injected by
  ``optax.inject_hyperparams`` (traced in a jitted update); all three agree with the
  factory called with Python numbers, and changing an injected value recompiles nothing."""
  factory, make_net, kwargs, changed, static = INJECTED[name]
  net = make_net()
  params = net.init(jax.random.key(0))
  x, y = teacher_classification(0, n=16, d=6, classes=3)

  def plain(**kw):  # jitted too: eager and jitted solves differ by rounding
    tx = factory(net, **kw)
    return jax.jit(tx.update)(None, tx.init(params), params, batch=(x, y))

  # compared: the new params (params + updates) and the state, what a user relies on; an
  # update alone can be rounding noise (taylor_admm's first step moves the params by about
  # 1e-5, where plain and traced hyperparameters differ by rounding in a ridge-1e-6 solve)
  def close(a, b):
    new = lambda out: (optax.apply_updates(params, out[0]), out[1])
    return tree_allclose(new(a), new(b), rtol=1e-4, atol=1e-5)

  reference = plain(**kwargs)
  numeric = {k: v for k, v in kwargs.items() if not isinstance(v, str)}
  as_numpy = {k: np.int64(v) if type(v) is int else np.float32(v) for k, v in numeric.items()}
  assert close(plain(**{**kwargs, **as_numpy}), reference)
  as_jax = {k: jnp.asarray(v) for k, v in numeric.items()}
  assert close(plain(**{**kwargs, **as_jax}), reference)

  injected = optax.inject_hyperparams(factory, static_args=static)(net=net, **kwargs)
  step = jax.jit(injected.update)
  state = injected.init(params)
  updates, new_state = step(None, state, params, batch=(x, y))
  assert close((updates, new_state.inner_state), reference)
  for k, v in changed.items():
    state.hyperparams[k] = jnp.full_like(state.hyperparams[k], v)  # same dtype, weak type
  updates, new_state = step(None, state, params, batch=(x, y))
  expected = plain(**{**kwargs, **changed})
  assert close((updates, new_state.inner_state), expected)
  assert not tree_allclose(expected, reference, rtol=1e-4, atol=1e-5)  # the change did act
  assert step._cache_size() == 1


def test_mu_schedule_takes_traced_and_numpy_arguments():
  """The schedule's real arguments may be NumPy scalars or traced (built inside ``jit``),
  an epoch multiplier of exactly 1 included, with the values of Python arguments."""
  steps = jnp.arange(40)
  for init, increment, multiplier, cap in [(0.01, 1e-3, 1.1, 0.05), (0.2, 0.01, 1.0, np.inf)]:
    expected = amj.mu_schedule(init, increment, multiplier, cap, steps_per_epoch=7)(steps)
    numpy_args = (np.float32(init), np.float64(increment), np.float32(multiplier), cap)
    got = amj.mu_schedule(*numpy_args, steps_per_epoch=np.int64(7))(steps)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    traced = jax.jit(lambda *a: amj.mu_schedule(*a, steps_per_epoch=7)(steps))
    got = traced(*(jnp.float32(v) for v in (init, increment, multiplier, cap)))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
  with pytest.raises(ValueError, match=r"max_value=0\.001"):
    amj.mu_schedule(init=0.01, max_value=0.001)


def test_long_inner_loops_match_their_unrolled_form(monkeypatch):
  """Up to ``loops.UNROLL_LIMIT`` code/weight steps are unrolled at trace time, more run
  in a ``lax.fori_loop``: both forms compute the same iterates, and only the loop is a
  while loop in the lowered step."""
  from altmin_jax import loops

  net, params, x, y = _setup()

  def step():  # a new transformation each time: jit caches traces per function
    tx = amj.am_adam(net, code_steps=10, weight_steps=9, weight_optimizer=optax.adam(1e-2))
    args = (None, tx.init(params), params)
    lowered = jax.jit(tx.update).lower(*args, batch=(x, y))
    return jax.jit(tx.update)(*args, batch=(x, y))[0], "while" in lowered.as_text()

  looped, has_while = step()
  assert has_while
  monkeypatch.setattr(loops, "UNROLL_LIMIT", 100)
  unrolled, has_while = step()
  assert not has_while
  assert tree_allclose(looped, unrolled, rtol=1e-5, atol=1e-6)
  assert not tree_allclose(looped, jax.tree.map(jnp.zeros_like, looped))


def test_am_mem_output_layer_takes_output_steps_sgd_steps():
  """AM-mem's output layer takes ``output_steps`` steps of its optimizer on the mean loss
  at the updated top code (Algorithm 2.3, line 1); the hidden layers do not depend on it."""
  net, params, x, y = _setup()
  lr = 0.1
  results = {}
  for k in (1, 3):
    tx = amj.am_mem(net, output_optimizer=optax.sgd(lr), output_steps=k, record_codes=16)
    updates, state = tx.update(None, tx.init(params), params, batch=(x, y))
    results[k] = (optax.apply_updates(params, updates), state.codes)
  (new1, codes1), (new3, codes3) = results[1], results[3]
  assert tree_allclose(codes1, codes3)
  assert tree_allclose(new1[:-1], new3[:-1])
  top = jnp.tanh(codes3[-1])
  w = params[-1]
  for _ in range(3):
    g = jax.grad(lambda w: jnp.mean(LOSS(net.stage_apply(net.num_stages, w, top), y)))(w)
    w = jax.tree.map(lambda a, b: a - lr * b, w, g)
  assert tree_allclose(new3[-1], w, rtol=1e-5, atol=1e-6)
  assert not tree_allclose(new1[-1], new3[-1])
  with pytest.raises(ValueError, match="output_steps=0"):
    amj.am_mem(net, output_steps=0)
