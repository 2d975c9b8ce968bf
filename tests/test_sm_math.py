"""The mathematics of surrogate minimization against dense formulas (SPEC section 5).

Dense references are built with ``jax.hessian`` on flattened variables in float64, on
networks small enough that every Hessian fits in a few megabytes. They do not use the
library's construction: the stage maps, the forward and backward pass and
``psi_i(z, theta) = <g_z, f_i(z, theta) - z_t> + (c/2) ||f_i(z, theta) - z_t||^2`` are
written out here from SPEC's formulas.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import teacher_classification
from jax.flatten_util import ravel_pytree

import altmin_jax as amj
from altmin_jax import numerics
from altmin_jax.networks import Stage
from altmin_jax.sm import _common, surrogate_minimization
from altmin_jax.sm import local_losses as ll
from altmin_jax.sm.surrogate import stage_groups

LOSS = amj.losses.softmax_cross_entropy


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _problem(sizes=(5, 6, 6, 3), n=8, seed=0, dtype=jnp.float64, activation=jnp.tanh):
  net = amj.networks.mlp(list(sizes), activation=activation, dtype=dtype)
  params = net.init(jax.random.key(seed))
  x, y = teacher_classification(seed + 1, n=n, d=sizes[0], classes=sizes[-1])
  return net, params, x.astype(dtype), y


def _forward_backward(net, params, x, y):
  sp = net.stage_params(params)
  return sp, jax.jit(lambda sp, x, y: _common.forward_backward(net, sp, x, y, LOSS))(sp, x, y)


# ------------------------------------------------- references written from SPEC


def _stage_map(i, m, activation):
  """``f_i(theta, z)`` of an ``mlp`` stage: ``activation(z W + b)``, logits for i = m."""

  def f(theta, z):
    pre = z @ theta["kernel"] + theta["bias"]
    return pre if i == m else activation(pre)

  return f


def _spec_psi(f, g_out, z_out, c_next):
  """SPEC section 5: <g_z, f(z, theta) - z_t> + (c_{i+1}/2) ||f(z, theta) - z_t||^2."""

  def psi(z, theta):
    r = f(theta, z) - z_out
    return jnp.sum(g_out * r) + 0.5 * c_next * jnp.sum(r * r)

  return psi


def _reference_pass(sp, x, y, activation=jnp.tanh, loss=LOSS):
  """Stage outputs ``z^(0..m)`` and ``g_z^(i) = dh/dz^(i)`` of an ``mlp``, written out."""
  m = len(sp)
  maps = [_stage_map(i, m, activation) for i in range(1, m + 1)]
  zs = [x]
  for f, theta in zip(maps, sp):
    zs.append(f(theta, zs[-1]))

  def h_of(i, z):  # the batch-mean loss as a function of z^(i)
    for f, theta in zip(maps[i:], sp[i:]):
      z = f(theta, z)
    return jnp.mean(loss(z, y))

  g_z = [jax.grad(lambda z, i=i: h_of(i, z))(zs[i]) for i in range(1, m + 1)]
  return maps, zs, g_z


def _dense_blocks(psi, z, theta):
  """``(H_zz, H_ztheta, H_thetatheta)`` of ``psi(z, theta)`` from one dense Hessian;
  ``H_ztheta`` has shape (dim z, dim theta) as in the paper's block matrix."""
  w0, unravel = ravel_pytree((z, theta))
  nz = z.size
  H = jax.jit(jax.hessian(lambda w: psi(*unravel(w))))(w0)
  return H[:nz, :nz], H[:nz, nz:], H[nz:, nz:]


def _dense_hzz(psi, z, theta):
  flat, unravel = ravel_pytree(z)
  return np.asarray(jax.jit(jax.hessian(lambda w: psi(unravel(w), theta)))(flat))


def _top(matrix) -> float:
  return float(np.linalg.eigvalsh(np.asarray(matrix, np.float64))[-1])


def _dense_chain(sp, x, y, c_last, delta, activation=jnp.tanh):
  """``(c_2, ..., c_{m+1})`` from eigvalsh, and the dense blocks of every psi_i."""
  maps, zs, g_z = _reference_pass(sp, x, y, activation)
  m = len(sp)
  c = {m + 1: c_last}
  blocks = {}
  for i in range(m, 0, -1):
    psi = _spec_psi(maps[i - 1], g_z[i - 1], zs[i], c[i + 1])
    blocks[i] = _dense_blocks(psi, zs[i - 1], sp[i - 1])
    if i > 1:
      c[i] = max(_top(blocks[i][0]), 0.0) + delta
  return [c[i + 1] for i in range(1, m + 1)], blocks


def _dense_H(blocks, i, delta):
  _, hzt, htt = blocks[i]
  return htt if i == 1 else htt + hzt.T @ hzt / delta


# ------------------------------------------------------ the library's operators


def _local_quadratics(net, sp, fb, c, delta):
  """Every stage's (g_theta, dense H_i, dense H_zz) from the library's matrix-free
  products (its own psi_i), inside one jit."""

  def build(sp, fb, c):
    out = []
    for i in range(1, net.num_stages + 1):
      psi = ll.make_psi(_common.stage_function(net, i), fb.g_z[i - 1], fb.z[i], c[i - 1])
      lq = ll.local_quadratic(psi, fb.z[i - 1], sp[i - 1], delta, first=i == 1)
      hzz = ll.hzz_product(psi, fb.z[i - 1], sp[i - 1])
      out.append((lq.g_theta, _matrix(lq.matvec, sp[i - 1]), _matrix(hzz, fb.z[i - 1])))
    return out

  return jax.jit(build)(sp, fb, tuple(c))


def _matrix(matvec, like):
  """The matrix of a linear map on pytrees shaped like ``like``."""
  flat, unravel = ravel_pytree(like)
  cols = jax.vmap(lambda e: ravel_pytree(matvec(unravel(e)))[0])
  return cols(jnp.eye(flat.size, dtype=flat.dtype)).T


def _chain(net, sp, fb, delta, iterations, per_sample=None):
  fns = [_common.stage_function(net, i) for i in range(1, net.num_stages + 1)]
  c_last = 0.5 / fb.z[0].shape[0]

  def run(sp, fb):
    return ll.curvature_chain(
      fns, sp, fb, c_last, delta=delta, iterations=iterations, per_sample=per_sample
    )

  return jax.jit(run)(sp, fb)


def test_local_hessian_products_match_dense_hessians(x64):
  """H_zz u, H_i v (= H_thetatheta v + H_ztheta^T H_ztheta v / delta; first stage without
  the coupling term) and g_theta of every stage equal the dense jax.hessian formulas of
  SPEC's psi_i, the library's pass gives the written-out z^(i) and g_z^(i), and g_theta
  is the backprop gradient dh/dtheta_i (Proposition 1)."""
  net, params, x, y = _problem()
  sp, fb = _forward_backward(net, params, x, y)
  _, zs, g_z = _reference_pass(sp, x, y)
  for a, b in zip(fb.z + fb.g_z, zs + g_z):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
  delta = 0.05
  c_dense, blocks = _dense_chain(sp, x, y, 0.5 / x.shape[0], delta)
  full_grad = jax.jit(jax.grad(_common.network_loss(net, LOSS, x, y)))(sp)
  local = _local_quadratics(net, sp, fb, c_dense, delta)
  for i, (g_theta, H_i, H_zz) in enumerate(local, start=1):
    np.testing.assert_allclose(H_i, _dense_H(blocks, i, delta), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(H_zz, blocks[i][0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ravel_pytree(g_theta)[0], ravel_pytree(full_grad[i - 1])[0])
    np.testing.assert_allclose(ravel_pytree(fb.g_theta[i - 1])[0], ravel_pytree(g_theta)[0])
  # The coupling term is really there: dropping it changes H_2.
  assert not np.allclose(_dense_H(blocks, 2, delta), blocks[2][2])


@pytest.mark.parametrize("per_sample", [False, True])
def test_curvature_chain_matches_dense_top_eigenvalues(x64, per_sample):
  """c_i = max(lambda_max(H_zz^(i)), 0) + delta down the chain from c_{m+1} = 1/(2B),
  exactly when the Lanczos steps span each block (whole batch or one sample)."""
  net, params, x, y = _problem(sizes=(5, 6, 7, 6, 3))
  sp, fb = _forward_backward(net, params, x, y)
  delta = 1e-2
  c_dense, _ = _dense_chain(sp, x, y, 0.5 / x.shape[0], delta)
  c = _chain(net, sp, fb, delta, 1000, per_sample=[per_sample] * 4)
  np.testing.assert_allclose(np.array(c), c_dense, rtol=1e-7)


@pytest.mark.parametrize(
  "loss, targets",
  [
    (amj.losses.softmax_cross_entropy, lambda y, k: y),
    (amj.losses.squared_error, lambda y, k: jax.nn.one_hot(y, k, dtype=jnp.float64)),
  ],
)
def test_output_constant_bounds_the_dense_hessian_of_the_mean_loss(x64, loss, targets):
  """The factory's c_{m+1} bounds the top eigenvalue of the dense Hessian of the batch-mean
  loss in the stacked (B x K) logits, at the network's logits and at logits where the
  bound is attained: softmax cross-entropy 1/(2B) (each sample's diag(p) - p p^T has top
  eigenvalue 1/2 when two classes share the probability), squared error 2/B."""
  net, params, x, y = _problem(n=8)
  t = targets(y, 3)
  tx = surrogate_minimization(net, loss)
  _, state = jax.jit(lambda p: tx.update(None, tx.init(p), p, batch=(x, t)))(params)
  c_out = float(state.curvature[-1])

  def top(logits):
    h = lambda flat: jnp.mean(loss(flat.reshape(logits.shape), t))
    return _top(jax.hessian(h)(logits.reshape(-1)))

  tie = jnp.tile(jnp.array([0.0, 0.0, -40.0]), (x.shape[0], 1))
  lam_net, lam_tie = top(net.apply(params, x)), top(tie)
  assert lam_net <= c_out * (1 + 1e-6) and lam_tie <= c_out * (1 + 1e-6)
  np.testing.assert_allclose(lam_tie, c_out, rtol=1e-6)  # the bound is tight
  if loss is LOSS:
    assert lam_net < 0.9 * c_out  # away from a tie the Hessian is smaller


@pytest.mark.parametrize("activation", [jax.nn.relu, jnp.tanh], ids=["relu", "tanh"])
def test_default_curvature_constants_bound_the_dense_hessians(activation):
  """At the default settings (float32, delta = 1e-2, power_iterations = 10) every c_i
  of a 20-30-30-30-10 MLP bounds the dense H_zz of the psi_i built from the c_{i+1} the
  step used: c_i >= lambda_max + delta up to float32 rounding, on three random nets and
  batches, and it is not far above (within 15% of lambda_max)."""
  sizes, delta = (20, 30, 30, 30, 10), 1e-2
  m = len(sizes) - 1
  net = amj.networks.mlp(list(sizes), activation=activation)
  tx = surrogate_minimization(net)
  step = jax.jit(lambda p, x, y: tx.update(None, tx.init(p), p, batch=(x, y)))

  @jax.jit
  def dense_hzz(sp, x, y, c):  # float64 H_zz of SPEC's psi_i, i = m, ..., 2
    maps, zs, g_z = _reference_pass(sp, x, y, activation)
    out = []
    for i in range(m, 1, -1):
      psi = _spec_psi(maps[i - 1], g_z[i - 1], zs[i], c[i - 1])
      flat = zs[i - 1].reshape(-1)
      hess = jax.hessian(lambda w, i=i, psi=psi: psi(w.reshape(zs[i - 1].shape), sp[i - 1]))
      out.append(hess(flat))
    return out

  for seed in range(3):
    params = net.init(jax.random.key(seed))
    x, y = teacher_classification(seed + 1, n=24, d=sizes[0], classes=sizes[-1])
    _, state = step(params, x, y)
    c = np.asarray(state.curvature, np.float64)  # entry i - 1 is c_{i+1}
    with jax.enable_x64(True):
      sp = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), net.stage_params(params))
      hzz = dense_hzz(sp, jnp.asarray(x, jnp.float64), y, jnp.asarray(c))
    for i, H in zip(range(m, 1, -1), hzz):
      lam = _top(H)
      assert lam > 0
      assert c[i - 2] >= lam + delta - 1e-4 * lam, (seed, i, c[i - 2], lam)
      assert c[i - 2] <= 1.15 * lam + delta, (seed, i, c[i - 2], lam)


def test_per_sample_curvature_only_for_stages_that_map_samples_independently(x64):
  """A dense stage's H_zz is block diagonal over samples (its off-diagonal blocks are
  exactly zero) and is estimated per sample; a stage that mixes samples (centring by the
  batch mean) is not, and there a per-sample estimate would miss the coupling, so the
  factory treats it as one block and its c_i still bounds the dense H_zz."""
  net, params, x, y = _problem(sizes=(5, 6, 6, 3))
  assert all(ll.stage_is_per_sample(net, i) for i in (1, 2, 3))
  sp, fb = _forward_backward(net, params, x, y)
  maps, zs, g_z = _reference_pass(sp, x, y)
  B, w = zs[1].shape
  H = _dense_hzz(_spec_psi(maps[1], g_z[1], zs[2], 0.3), zs[1], sp[1]).reshape(B, w, B, w)
  off = H * (1 - np.eye(B))[:, None, :, None]
  assert np.all(off == 0) and np.abs(H).max() > 1e-3

  dense = amj.networks.builders.dense_stage(6, 6, jnp.tanh)
  centred = Stage(
    init=dense.init,
    apply=lambda p, a: dense.apply(p, a - jnp.mean(a, axis=0)),
    output_shape=(6,),
    activation=jnp.tanh,
  )
  stages = list(net.stages)
  mixed = amj.networks.LayeredNetwork((stages[0], centred, stages[2]), net.input_shape)
  assert not ll.stage_is_per_sample(mixed, 2)
  delta = 1e-2
  tx = surrogate_minimization(mixed, delta=delta, power_iterations=1000)
  _, state = jax.jit(lambda p: tx.update(None, tx.init(p), p, batch=(x, y)))(params)
  sp, fb = _forward_backward(mixed, params, x, y)
  psi = ll.make_psi(_common.stage_function(mixed, 2), fb.g_z[1], fb.z[2], state.curvature[1])
  lam = _top(_dense_hzz(psi, fb.z[1], sp[1]))
  np.testing.assert_allclose(float(state.curvature[0]), lam + delta, rtol=1e-8)
  mv = ll.hzz_product(psi, fb.z[1], sp[1])
  wrong = float(
    numerics.top_eigenvalue(mv, numerics.start_vector(2, fb.z[1]), 1000, per_sample=True)
  )
  assert abs(wrong - lam) > 1e-3 * lam


def test_proposition_1_sum_of_local_losses_majorizes_the_loss(x64):
  """On the 5-6-6-3 tanh network with delta = 1e-2 (SPEC section 5):
  h(theta_t + d) - [h(theta_t) + sum_i L_i(d_i)] is negative and scales with |d|^2 for
  |d| from 1e-1 to 3e-3 (the first-order terms agree exactly and the dropped cubic term
  is negligible), and blockdiag(H_i) - Hessian(h) is positive semi-definite."""
  net, params, x, y = _problem(sizes=(5, 6, 6, 3))
  sp, fb = _forward_backward(net, params, x, y)
  delta = 1e-2
  c = _chain(net, sp, fb, delta, 1000)
  local = _local_quadratics(net, sp, fb, c, delta)
  h = _common.network_loss(net, LOSS, x, y)
  flat, unravel = ravel_pytree(tuple(sp))
  g = jnp.concatenate([ravel_pytree(g_i)[0] for g_i, _, _ in local])
  block = jax.scipy.linalg.block_diag(*[H_i for _, H_i, _ in local])
  h_flat = jax.jit(lambda w: h(unravel(w)))
  model = lambda d: g @ d + 0.5 * d @ block @ d  # sum_i L_i(d_i)
  for seed in range(3):
    d = jax.random.normal(jax.random.key(seed), flat.shape, flat.dtype)
    d = d / jnp.linalg.norm(d)
    ratios = []
    for scale in (1e-1, 3e-2, 1e-2, 3e-3):
      gap = float(h_flat(flat + scale * d) - fb.value - model(scale * d))
      assert gap < 0, (seed, scale, gap)
      ratios.append(gap / scale**2)
    np.testing.assert_allclose(ratios, ratios[-1], rtol=0.05)
  hessian = jax.jit(jax.hessian(h_flat))(flat)
  assert float(np.linalg.eigvalsh(np.asarray(block - hessian))[0]) > -1e-10


def test_sm_step_is_the_exact_minimiser_of_each_local_loss(x64):
  """With CG and N >= the stage dimension, SM's update of stage i solves H_i d = -g_i
  (dense H_i), and the state reports the dense c_{i+1} and L_i(d_i) = -g_i^T H_i^{-1} g_i / 2."""
  net, params, x, y = _problem(sizes=(3, 4, 4, 2), n=12)
  delta = 0.1
  tx = surrogate_minimization(net, inner_steps=25, delta=delta, power_iterations=1000)
  updates, state = jax.jit(lambda p: tx.update(None, tx.init(p), p, batch=(x, y)))(params)
  sp, fb = _forward_backward(net, params, x, y)
  c_dense, blocks = _dense_chain(sp, x, y, 0.5 / x.shape[0], delta)
  np.testing.assert_allclose(state.curvature, c_dense, rtol=1e-6)
  for i in range(1, 4):
    H = np.asarray(_dense_H(blocks, i, delta))
    g = np.asarray(ravel_pytree(fb.g_theta[i - 1])[0])
    d = np.asarray(ravel_pytree(updates[i - 1])[0])
    assert np.linalg.eigvalsh(H)[0] > 0
    np.testing.assert_allclose(d, -np.linalg.solve(H, g), rtol=1e-4, atol=1e-6 * np.abs(d).max())
    expected = -0.5 * g @ np.linalg.solve(H, g)
    np.testing.assert_allclose(state.local_loss[i - 1], expected, rtol=1e-5)


@pytest.mark.parametrize("solver", ["cg", "armijo"])
def test_theorem_1_deterministic_sm_never_increases_the_loss(solver):
  """Full-batch SM iterations with delta = 1e-2: the loss is non-increasing at every
  iteration and falls by at least 40% in 25 iterations."""
  net, params, x, y = _problem(sizes=(5, 6, 6, 3), n=32, dtype=jnp.float32)
  tx = surrogate_minimization(net, inner_steps=10, solver=solver, delta=1e-2)
  h = jax.jit(_common.network_loss(net, LOSS, x, y))
  step = jax.jit(lambda p, s: tx.update(None, s, p, batch=(x, y)))
  state = tx.init(params)
  losses = [float(h(params))]
  for _ in range(25):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
    losses.append(float(h(params)))
  diffs = np.diff(losses)
  assert np.all(diffs <= 1e-6), losses
  assert losses[-1] < 0.6 * losses[0], losses


def test_scalar_curvature_bound_is_layerwise_gradient_descent(x64):
  """The remark after Algorithm 1: with rho = 0 and H_i replaced by lambda_max(H_i) I the
  local loss is minimised by theta_i - g_i / lambda_max(H_i): gradient descent with a
  per-layer step size (dense lambda_max here), and the step decreases h."""
  net, params, x, y = _problem(sizes=(5, 6, 6, 3))
  delta = 1e-2
  tx = surrogate_minimization(net, curvature="scalar", delta=delta, power_iterations=1000)
  updates, _ = jax.jit(lambda p: tx.update(None, tx.init(p), p, batch=(x, y)))(params)
  sp, fb = _forward_backward(net, params, x, y)
  _, blocks = _dense_chain(sp, x, y, 0.5 / x.shape[0], delta)
  grads = fb.g_theta
  steps = []
  for i in range(1, 4):
    lam = np.linalg.eigvalsh(np.asarray(_dense_H(blocks, i, delta)))[-1]
    steps.append(1.0 / lam)
    expected = optax.tree.scale(-1.0 / lam, grads[i - 1])
    np.testing.assert_allclose(
      ravel_pytree(updates[i - 1])[0], ravel_pytree(expected)[0], rtol=1e-6, atol=1e-14
    )
  assert max(steps) > 2 * min(steps)  # genuinely different per-layer step sizes
  h = jax.jit(lambda p: _common.network_loss(net, LOSS, x, y)(net.stage_params(p)))
  assert float(h(optax.apply_updates(params, updates))) < float(h(params))


@pytest.mark.parametrize("solver", ["cg", pytest.param("armijo", marks=pytest.mark.slow)])
def test_equally_shaped_stages_are_vmapped_and_match_separate_solves(solver):
  net = amj.networks.mlp([4, 5, 5, 5, 3], activation=jnp.tanh)
  params = net.init(jax.random.key(0))
  x, y = teacher_classification(0, n=16, d=4, classes=3)
  _, fb = _forward_backward(net, params, x, y)
  assert stage_groups(net, net.stage_params(params), fb.z) == [[1], [2, 3], [4]]
  out = []
  for vmap_stages in (True, False):
    tx = surrogate_minimization(
      net, inner_steps=5, solver=solver, delta=1e-2, vmap_stages=vmap_stages
    )
    out.append(jax.jit(lambda p, tx=tx: tx.update(None, tx.init(p), p, batch=(x, y)))(params))
  for a, b in zip(*map(jax.tree.leaves, out)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
