"""Surrogate minimization's step search, warm-started CG and lagged curvature
(``step_search``, ``cg_warm_start``, ``curvature_refresh``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import bundled_split, teacher_classification, tree_allclose, tree_close_normwise
from jax.flatten_util import ravel_pytree
from scipy.linalg import block_diag

import altmin_jax as amj
from altmin_jax import numerics
from altmin_jax.sm import _common, majorizers, surrogate_minimization
from altmin_jax.sm import local_losses as ll
from altmin_jax.sm import surrogate as sur

LOSS = amj.losses.softmax_cross_entropy
OFF = dict(step_search=None, cg_warm_start=False, curvature_refresh=1)
SEARCH = ll.STEP_SEARCH


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _small(seed=0, sizes=(12, 16, 16, 16, 4), n=64, activation=jax.nn.relu, dtype=jnp.float32):
  net = amj.networks.mlp(list(sizes), activation=activation, dtype=dtype)
  x, y = teacher_classification(seed, n=n, d=sizes[0], classes=sizes[-1])
  return net, net.init(jax.random.key(seed)), x.astype(dtype), y


def _trajectory(tx, params, x, y, steps):
  """``(params_t, state_t)`` for t = 1..steps, every step jitted once."""
  step = jax.jit(lambda p, s: tx.update(None, s, p, batch=(x, y)))
  state, out = tx.init(params), []
  for _ in range(steps):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
    out.append((params, state))
  return out


# ------------------------------------------------------------------ all three off


def test_with_all_three_off_the_step_is_algorithm_1_composed_of_the_phases():
  """step_search=None, cg_warm_start=False, curvature_refresh=1: every iteration is the phase
  functions composed as Algorithm 1 states it (forward-backward, the majorizer's curvature,
  N CG steps from 0 on every local loss, theta + d), rtol 1e-6, over four iterations."""
  net, params, x, y = _small()
  cfg = ll.sm_config(net, LOSS, ll.SMOptions(**OFF))

  @jax.jit
  def reference(sp):
    fb = sur.forward_backward(cfg, sp, x, y)
    sc = ll.scales(cfg, x.shape[0], fb.value.dtype)
    steps = jnp.ones([net.num_stages], jnp.float32)
    return sur.update(sp, sur.local_solves(cfg, sur.stage_data(cfg, sp, fb, y, sc), sc, steps))

  tx = surrogate_minimization(net, **OFF)
  sp = net.stage_params(params)
  for new_params, state in _trajectory(tx, params, x, y, 4):
    want = reference(sp)
    assert tree_allclose(list(net.stage_params(new_params)), want, rtol=1e-6, atol=1e-7)
    assert float(state.step_multiple) == 1.0 and int(state.search_trials) == 0
    assert bool(state.refreshed) and state.stored_curvature == () and state.previous_step == ()
    sp = want


# ------------------------------------------------------------------ the step search


def _armijo_holds(net, x, y, params, new_params, state, c):
  """h(theta + a d) <= h(theta) + c a min(grad h . d, 0) for the step taken (a d = the
  update, a = state.step_multiple > 0), with a float32 rounding allowance of the loss."""
  h = _common.network_loss(net, LOSS, x, y)
  sp, new_sp = net.stage_params(params), net.stage_params(new_params)
  value, grad = jax.value_and_grad(h)(sp)
  a = float(state.step_multiple)
  step = optax.tree.sub(new_sp, sp)
  slope = min(float(optax.tree.vdot(grad, step)) / a, 0.0)
  after = float(h(new_sp))
  rounding = 8 * np.finfo(np.float32).eps * float(value)
  return a > 0 and after <= float(value) + c * a * slope + rounding, (a, float(value), after, slope)


def test_every_step_satisfies_the_armijo_condition_and_the_search_extrapolates():
  """Defaults (the step search on) on a 4-stage ReLU net: each of 10 iterations (the loss
  falls from 1.4 to about 0.02; at 0 in float32 no step can pass) takes a multiple of the SM
  step that satisfies the Armijo condition (c = 0.1) along it, and accepted multiples grow
  past 1 (the majorizer's own step is short)."""
  net, params, x, y = _small(sizes=(12, 32, 32, 32, 4), n=128)
  tx = surrogate_minimization(net)
  prev = params
  multiples = []
  for new, state in _trajectory(tx, params, x, y, 10):
    ok, info = _armijo_holds(net, x, y, prev, new, state, SEARCH.armijo_c)
    assert ok, info
    multiples.append(float(state.step_multiple))
    prev = new
  assert max(multiples) >= 4.0, multiples


@pytest.mark.slow
def test_forty_iterations_on_an_8_layer_mlp_each_satisfy_the_armijo_condition():
  """784-100x7-10 ReLU MLP, 2,000 bundled MNIST images, full batch, the defaults: each of
  40 iterations satisfies the Armijo condition along its step, and the loss falls below a
  quarter of its start."""
  x, y = bundled_split().train
  x, y = jnp.asarray(x[:2000]), jnp.asarray(y[:2000])
  net = amj.networks.mlp([784] + [100] * 7 + [10], activation=jax.nn.relu)
  params = net.init(jax.random.key(0))
  tx = surrogate_minimization(net)
  h = jax.jit(_common.network_loss(net, LOSS, x, y))
  start = float(h(net.stage_params(params)))
  prev = params
  for new, state in _trajectory(tx, params, x, y, 40):
    ok, info = _armijo_holds(net, x, y, prev, new, state, SEARCH.armijo_c)
    assert ok, info
    prev = new
  assert float(h(net.stage_params(prev))) < 0.25 * start


def test_raw_uint8_images_never_raise_the_loss():
  """Raw 0-255 uint8 MNIST pixels, as a user may pass them: the paper's step (no search)
  raises the loss in one iteration; with the defaults no iteration raises it."""
  images, labels = amj.data.bundled_mnist()
  x = jnp.asarray(images[:256].reshape(256, -1))  # uint8
  y = jnp.asarray(labels[:256])
  net = amj.networks.mlp([784, 64, 64, 10], activation=jax.nn.relu)
  params = net.init(jax.random.key(0))
  h = jax.jit(_common.network_loss(net, LOSS, x.astype(jnp.float32), y))
  start = float(h(net.stage_params(params)))
  (plain, _), *_ = _trajectory(surrogate_minimization(net, **OFF), params, x, y, 1)
  assert float(h(net.stage_params(plain))) > start
  losses = [start]
  for new, _ in _trajectory(surrogate_minimization(net), params, x, y, 6):
    losses.append(float(h(net.stage_params(new))))
  assert np.all(np.diff(losses) <= 0), losses
  assert losses[-1] < losses[0], losses


def test_the_search_extrapolates_on_one_batch_only():
  """On a repeated (full) batch accepted multiples grow past 1; when every step sees a new
  minibatch the search starts at 1, the majorizer's own step, so no multiple above 1 is
  taken (one minibatch's multiple says nothing about the next)."""
  net, params, x, y = _small(sizes=(12, 32, 32, 32, 4), n=128)
  tx = surrogate_minimization(net)
  step = jax.jit(lambda p, s, x, y: tx.update(None, s, p, batch=(x, y)))
  state, p, multiples = tx.init(params), params, []
  for t in range(6):
    xb, yb = x[32 * (t % 4) : 32 * (t % 4 + 1)], y[32 * (t % 4) : 32 * (t % 4 + 1)]
    updates, state = step(p, state, xb, yb)
    p = optax.apply_updates(p, updates)
    multiples.append(float(state.step_multiple))
  assert max(multiples) <= 1.0, multiples
  state, p, multiples = tx.init(params), params, []
  for _ in range(4):
    updates, state = step(p, state, x, y)
    p = optax.apply_updates(p, updates)
    multiples.append(float(state.step_multiple))
  assert max(multiples) > 1.0, multiples


def test_a_step_that_is_no_descent_direction_is_not_taken():
  """The search compares against min(slope, 0): when the SM step points uphill (here the
  paper's constants, which are no majorizer, on a net where they fail) no trial that raises
  the loss is accepted."""
  net, params, x, y = _small(sizes=(6, 8, 8, 3), n=32, activation=jnp.tanh)
  tx = surrogate_minimization(net, majorizer="paper", delta=1e-6)
  h = jax.jit(_common.network_loss(net, LOSS, x, y))
  losses = [float(h(net.stage_params(params)))]
  for new, _ in _trajectory(tx, params, x, y, 10):
    losses.append(float(h(net.stage_params(new))))
  assert np.all(np.diff(losses) <= 1e-7 * losses[0]), losses


# ------------------------------------------------------------------ warm-started CG


def test_cg_from_a_warm_start_solves_the_system_and_takes_its_product():
  """CG from x0 reaches the solution of an SPD system in n steps, and passing A x0 gives
  the same iterates as letting CG compute it."""
  rng = np.random.default_rng(0)
  m = rng.normal(size=(6, 6))
  A = jnp.asarray(m @ m.T + 6 * np.eye(6), jnp.float32)
  b = jnp.asarray(rng.normal(size=6), jnp.float32)
  x0 = jnp.asarray(rng.normal(size=6), jnp.float32)
  res = numerics.conjugate_gradient(lambda v: A @ v, b, steps=6, x0=x0)
  np.testing.assert_allclose(res.x, np.linalg.solve(np.asarray(A), np.asarray(b)), rtol=1e-4)
  np.testing.assert_allclose(res.Ax, A @ res.x, rtol=1e-4, atol=1e-5)
  two = numerics.conjugate_gradient(lambda v: A @ v, b, steps=2, x0=x0)
  given = numerics.conjugate_gradient(lambda v: A @ v, b, steps=2, x0=x0, Ax0=A @ x0)
  np.testing.assert_allclose(given.x, two.x, rtol=1e-6)


def test_warm_start_is_the_previous_step_scaled_to_its_exact_minimiser():
  """The warm start a d' minimises the new local loss along d' (a = -g.d' / d'.H d'), so
  N CG steps from it end at a local loss at most that of a d'; a zero previous step gives
  the cold start."""
  net, params, x, y = _small()
  cfg = ll.sm_config(net, LOSS, ll.SMOptions(**OFF))
  sp = net.stage_params(params)
  fb = sur.forward_backward(cfg, sp, x, y)
  sc = ll.scales(cfg, x.shape[0], jnp.float32)
  data = sur.stage_data(cfg, sp, fb, y, sc)
  lq = ll.local_quadratic(
    cfg.options, majorizers.stage_kind(net, 2), False, False, 2.0, data[1], sc
  )
  previous = jax.tree.map(lambda a: jax.random.normal(jax.random.key(3), a.shape), sp[1])
  x0, ax0 = ll.warm_start(lq, previous)
  local_value = jax.jit(lambda d: ll.local_loss_value(lq, d))
  value = lambda d: float(local_value(d))
  d = lq.from_params(previous)
  for s in (0.5, 0.9, 1.1, 2.0):
    assert value(x0) <= value(optax.tree.scale(s, x0)) + 1e-6 * abs(value(x0))
  assert value(x0) <= value(optax.tree.scale(0.0, d))
  assert tree_allclose(ax0, lq.matvec(x0), rtol=1e-5, atol=1e-7)
  opts = ll.SMOptions(inner_steps=2, cg_warm_start=True, step_search=None)
  solve = jax.jit(lambda w: ll.solve_local_loss(opts, lq, jnp.float32(1.0), 0, warm=w))
  warm = solve(previous)
  assert float(warm.model) <= value(x0)
  zero = jax.tree.map(jnp.zeros_like, previous)
  cold = jax.jit(lambda: ll.solve_local_loss(opts, lq, jnp.float32(1.0), 0))()
  from_zero = solve(zero)
  assert tree_allclose(from_zero.d, cold.d, rtol=1e-6, atol=1e-8)


def test_warm_started_steps_keep_most_of_the_progress_of_ten_cold_steps():
  """With the search, 3 warm-started CG steps reach at least 70% of the loss decrease of
  10 cold ones over 10 iterations."""
  net, params, x, y = _small(sizes=(12, 32, 32, 32, 4), n=128)
  h = jax.jit(_common.network_loss(net, LOSS, x, y))
  start = float(h(net.stage_params(params)))
  final = {}
  for name, kw in (
    ("cold10", dict(inner_steps=10, cg_warm_start=False)),
    ("warm3", dict(inner_steps=3, cg_warm_start=True)),
  ):
    *_, (p, _) = _trajectory(
      surrogate_minimization(net, curvature_refresh=1, **kw), params, x, y, 10
    )
    final[name] = float(h(net.stage_params(p)))
  assert start - final["warm3"] >= 0.7 * (start - final["cold10"]), (start, final)


# ------------------------------------------------------------------ lagged curvature


def test_curvature_is_refreshed_every_period_on_a_new_batch_and_when_step_one_fails():
  """curvature_refresh=3 with the search: the stored curvature is computed on iterations
  1, 4, 7, ... (or earlier, when stale curvature fails the Armijo test at step 1), always on
  the first iteration of a new batch, and equals the majorizer's fresh data there."""
  net, params, x, y = _small()
  tx = surrogate_minimization(net, curvature_refresh=3, cg_warm_start=False)
  cfg = ll.sm_config(net, LOSS, ll.SMOptions(curvature_refresh=3))
  step = jax.jit(lambda p, s, x, y: tx.update(None, s, p, batch=(x, y)))
  state, p = tx.init(params), params
  since = []
  for t in range(7):
    sp = net.stage_params(p)
    updates, state = step(p, state, x, y)
    since.append(int(state.since_refresh))
    fb = sur.forward_backward(cfg, sp, x, y)
    sc = ll.scales(cfg, x.shape[0], jnp.float32)
    fresh = sur.curvature_bounds(cfg, sp, fb, y, sc)
    # per array, against its largest entry: the Lanczos bounds of two XLA programs differ
    # by float32 rounding (about 1e-4 of the largest); stale data differs by far more
    close = [
      tree_close_normwise(a, b, rtol=1e-3)
      for a, b in zip(jax.tree.leaves(state.stored_curvature), jax.tree.leaves(fresh))
    ]
    if bool(state.refreshed):
      assert all(close), (t, close)
    else:
      assert int(state.since_refresh) >= 1 and float(state.step_multiple) >= 1.0
      assert not all(close), t
    p = optax.apply_updates(p, updates)
  assert since[0] == 0 and max(since) <= 2, since
  assert any(s > 0 for s in since), since  # the curvature was reused
  x2, y2 = teacher_classification(5, n=64, d=12, classes=4)
  _, state = step(p, state, x2, y2)
  assert bool(state.refreshed) and int(state.since_refresh) == 0


@pytest.mark.extended
def test_right_after_a_refresh_step_one_majorizes_the_dense_hessian(x64):
  """float64, a 5-6-6-6-3 tanh net: on every refreshed iteration the local losses the step
  used bound the dense Hessian of h at that iterate (block diagonal minus Hessian PSD), so
  step 1 is the majorizer's certified step."""
  net = amj.networks.mlp([5, 6, 6, 6, 3], activation=jnp.tanh, dtype=jnp.float64)
  params = net.init(jax.random.key(1))
  x, y = teacher_classification(2, n=12, d=5, classes=3)
  x = x.astype(jnp.float64)
  options = dict(curvature_refresh=2, power_iterations=30)
  tx = surrogate_minimization(net, **options)
  cfg = ll.sm_config(net, LOSS, ll.SMOptions(**options))
  h = _common.network_loss(net, LOSS, x, y)
  m = net.num_stages
  checked = 0
  prev = params
  for new, state in _trajectory(tx, params, x, y, 4):
    if bool(state.refreshed):
      sp = net.stage_params(prev)
      fb = sur.forward_backward(cfg, sp, x, y)
      sc = ll.scales(cfg, x.shape[0], jnp.float64)
      blocks = []
      for i, d in enumerate(ll.stage_data(sp, fb, state.stored_curvature), start=1):
        kind = majorizers.stage_kind(net, i)
        lq = ll.local_quadratic(cfg.options, kind, i == 1, i == m, float(i), d, sc)
        flat, unravel = ravel_pytree(lq.g_theta)
        cols = [ravel_pytree(lq.matvec(unravel(e)))[0] for e in jnp.eye(flat.size)]
        blocks.append(np.asarray(jnp.stack(cols, 1)))
      flat, unravel = ravel_pytree(tuple(sp))
      H = np.asarray(jax.hessian(lambda w, unravel=unravel: h(unravel(w)))(flat))
      low = np.linalg.eigvalsh(block_diag(*blocks) - H)[0]
      assert low >= -1e-6 * np.abs(np.linalg.eigvalsh(H)).max(), low
      checked += 1
    prev = new
  assert checked >= 2


# ------------------------------------------------------------------ options


@pytest.mark.parametrize(
  "kwargs, text",
  [
    (dict(delta=1e-30), "delta must be >= 1.19e-07"),
    (dict(curvature_refresh=0), "curvature_refresh must be an integer >= 1"),
    (dict(cg_warm_start="yes"), "cg_warm_start must be True or False, got cg_warm_start='yes'"),
    (dict(cg_warm_start=True, solver="armijo"), "cg_warm_start=True warm-starts CG"),
    (dict(cg_warm_start=True, curvature="scalar"), "cg_warm_start=True warm-starts CG"),
    (dict(step_search="armijo"), "step_search must be an altmin_jax.numerics.ArmijoSearch"),
  ],
)
def test_bad_options_are_refused_when_built(kwargs, text):
  net = amj.networks.mlp([4, 5, 3])
  with pytest.raises(ValueError, match=text.replace("(", r"\(").replace(")", r"\)")):
    surrogate_minimization(net, **kwargs)
