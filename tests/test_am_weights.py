"""AM-mem weight solvers: the blocked block-coordinate sweep against the column-at-a-time
sweep it replaces, against ``B A^{-1}``, and inside the AM-mem step on real data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import bundled_split

import altmin_jax as amj
from altmin_jax.am import weights as weights_lib


def column_sweeps(W, A, B, sweeps):
  """The definition, one column at a time in float64: ``w_j += (b_j - W a_j) / A_jj``."""
  W, A, B = (np.array(v, np.float64) for v in (W, A, B))
  for _ in range(sweeps):
    for j in range(A.shape[0]):
      if A[j, j] > 0:
        W[:, j] += (B[:, j] - W @ A[:, j]) / A[j, j]
  return W


def column_sweeps_jax(W, A, B, sweeps):
  """The previous default solver (a ``lax.fori_loop`` over columns), to compare steps."""
  hi = jax.lax.Precision.HIGHEST

  def column(j, W):
    a_jj = A[j, j]
    residual = B[:, j] - jnp.matmul(W, A[:, j], precision=hi)
    return W.at[:, j].add(jnp.where(a_jj > 0, residual / jnp.where(a_jj > 0, a_jj, 1.0), 0.0))

  return jax.lax.fori_loop(0, sweeps, lambda _, W: jax.lax.fori_loop(0, A.shape[0], column, W), W)


def memories(rng, samples, d, m, dead=(), relu=True):
  """``A = sum a a^T`` and ``B = sum c a^T`` of (ReLU) inputs, ``dead`` columns never active."""
  a = rng.normal(size=(samples, d))
  a = np.maximum(a, 0.0) if relu else a
  a[:, list(dead)] = 0.0
  c = rng.normal(size=(samples, m))
  return jnp.asarray(a.T @ a, jnp.float32), jnp.asarray(c.T @ a, jnp.float32)


@pytest.mark.parametrize(
  "d, m, block_size, dead",
  [(9, 4, 4, ()), (37, 5, 8, (3, 8, 30)), (130, 7, 32, (0, 64, 129)), (200, 3, 128, (17,))],
)
@pytest.mark.parametrize("sweeps", [1, 3])
def test_blocked_sweeps_equal_the_column_sweeps(d, m, block_size, dead, sweeps):
  rng = np.random.default_rng(d)
  A, B = memories(rng, 4 * d, d, m, dead)
  W0 = jnp.asarray(rng.normal(size=(m, d)), jnp.float32)
  expected = column_sweeps(W0, A, B, sweeps)
  W = weights_lib.block_coordinate_sweeps(W0, A, B, sweeps, block_size=block_size)
  scale = np.max(np.abs(expected))
  np.testing.assert_allclose(W, expected, atol=2e-5 * scale)
  np.testing.assert_array_equal(np.asarray(W)[:, list(dead)], np.asarray(W0)[:, list(dead)])


@pytest.mark.extended
def test_block_size_does_not_change_the_sweep():
  rng = np.random.default_rng(1)
  A, B = memories(rng, 300, 70, 6, dead=(5,))
  W0 = jnp.asarray(rng.normal(size=(6, 70)), jnp.float32)
  sweeps = [weights_lib.block_coordinate_sweeps(W0, A, B, 2, block_size=k) for k in (1, 16, 128)]
  for W in sweeps[1:]:
    np.testing.assert_allclose(W, sweeps[0], atol=1e-5 * float(jnp.max(jnp.abs(sweeps[0]))))


def test_block_size_must_be_a_power_of_two():
  A = jnp.eye(3)
  with pytest.raises(ValueError, match="block_size=3"):
    weights_lib.block_coordinate_sweeps(jnp.zeros((1, 3)), A, A[:1], 1, block_size=3)


def test_blocked_sweeps_and_exact_solve_reach_b_a_inverse():
  """Both solvers agree with ``B A^{-1}`` on a memory wider than two blocks, with a dead
  input (left at its start value by the sweeps, zero in the minimum-norm solution).
  Centred inputs keep ``A`` well conditioned, so that sweeps converge in a few dozen."""
  rng = np.random.default_rng(2)
  A, B = memories(rng, 3000, 300, 10, dead=(150,), relu=False)
  live = np.arange(300) != 150
  A64, B64 = np.asarray(A, np.float64), np.asarray(B, np.float64)
  exact = np.zeros((10, 300))
  exact[:, live] = np.linalg.solve(A64[np.ix_(live, live)], B64[:, live].T).T
  np.testing.assert_allclose(weights_lib.exact_solve(A, B, 0.0), exact, atol=1e-4)
  ridge = 1e-7
  lam = ridge * np.trace(A64) / 300
  ridged = np.linalg.solve(A64 + lam * np.eye(300), B64.T).T
  np.testing.assert_allclose(weights_lib.exact_solve(A, B, ridge), ridged, atol=1e-3)
  errors = []
  W = jnp.zeros_like(B)
  for sweeps in (1, 10, 100):
    W = weights_lib.block_coordinate_sweeps(W, A, B, sweeps)
    errors.append(float(np.max(np.abs(np.asarray(W)[:, live] - exact[:, live]))))
  assert errors[0] > errors[1] > errors[2]
  assert errors[2] < 1e-4, errors


def train_am_mem(sweeps_fn, steps, monkeypatch):
  """``steps`` AM-mem steps (784-100-100-10 ReLU, batch 200, the default bcd solver with
  one sweep) on the bundled MNIST with ``sweeps_fn`` as the block-coordinate solver."""
  monkeypatch.setattr(weights_lib, "block_coordinate_sweeps", sweeps_fn)
  net = amj.networks.mlp([784, 100, 100, 10], activation=jax.nn.relu)
  tx = amj.am_mem(net, code_steps=5, output_optimizer=optax.sgd(0.1737))
  step = amj.training.make_train_step(
    net.apply, tx, loss=amj.losses.softmax_cross_entropy, uses_gradients=False
  )
  params = net.init(jax.random.key(0))
  state = tx.init(params)
  batches = amj.data.iterate_batches(*bundled_split().train, 200, seed=0, epoch=0)
  for _, (x, y) in zip(range(steps), batches):
    params, state, _ = step(params, state, x, y)
  return net, params, state


def test_am_mem_steps_match_the_column_at_a_time_solver(monkeypatch):
  """The first AM-mem steps give the same weights with the blocked sweep as with the
  previous column-at-a-time ``fori_loop``, to float32 rounding. (Over many steps the two
  drift apart as any two roundings do: the ReLU pattern of the codes switches.)"""
  blocked = weights_lib.block_coordinate_sweeps
  net, new, _ = train_am_mem(blocked, 2, monkeypatch)
  _, old, _ = train_am_mem(column_sweeps_jax, 2, monkeypatch)
  for stage_new, stage_old in zip(net.stage_params(new), net.stage_params(old)):
    a = weights_lib.weights_to_matrix(stage_new)[0]  # [kernel^T, bias]
    b = weights_lib.weights_to_matrix(stage_old)[0]
    np.testing.assert_allclose(a, b, atol=1e-4 * float(jnp.max(jnp.abs(b))))


def test_blocked_sweep_is_as_accurate_on_an_mnist_memory(monkeypatch):
  """One sweep on the input layer's memory after 20 AM-mem steps on MNIST (785 columns, a
  singular ``A`` with dead pixels): the blocked and the column-at-a-time solvers in
  float32 are both within ``1e-4`` (relative) of the float64 column sweep."""
  blocked = weights_lib.block_coordinate_sweeps
  net, params, state = train_am_mem(blocked, 20, monkeypatch)
  A, B = state.memory[0]
  W0 = weights_lib.weights_to_matrix(net.stage_params(params)[0])[0]
  expected = column_sweeps(W0, A, B, 1)
  scale = np.max(np.abs(expected))
  for solver in (blocked, column_sweeps_jax):
    W = jax.jit(solver, static_argnums=3)(W0, A, B, 1)
    np.testing.assert_allclose(W, expected, atol=1e-4 * scale)


def collinear_memory(n=64, d=120, rank=20, m=5):
  """Float32 memories of rank-deficient inputs with a common offset, like standardized
  MNIST pixels (those background in every image are copies of the bias column): the
  rounding of ``A`` exceeds the relative ridge 1e-6, so ``A + lambda I`` is indefinite."""
  k1, k2, k3 = jax.random.split(jax.random.key(7), 3)
  x = jax.random.normal(k1, (n, rank)) @ jax.random.normal(k2, (rank, d)) / rank**0.5 + 1.0
  targets = jax.random.normal(k3, (n, m))
  zero = jnp.zeros((), jnp.float32)
  A, B = weights_lib.update_memory(zero, zero, x, targets, True, 0.0)
  aug = np.concatenate([np.asarray(x, np.float64), np.ones((n, 1))], axis=1)
  return A, B, aug, np.asarray(targets, np.float64)


@pytest.mark.parametrize("ridge", [1e-6, 0.0])
def test_exact_solve_on_a_collinear_memory_is_finite_and_least_squares(ridge):
  """Regression: the former Cholesky solve returned NaN weights here with the default
  ridge 1e-6 (AM-mem and AM-mem-offline with ``solver="exact"`` were non-finite after
  one step on 300 or 1,000 bundled MNIST images)."""
  A, B, aug, targets = collinear_memory()
  assert np.linalg.eigvalsh(np.asarray(A, np.float64)).min() < -1e-6 * np.trace(A) / 121
  W = np.asarray(jax.jit(weights_lib.exact_solve)(A, B, ridge), np.float64)
  assert np.all(np.isfinite(W))
  # The float64 minimum-norm fit, ignoring the float32 rounding of the inputs (rank 21).
  best = np.linalg.lstsq(aug, targets, rcond=1e-5)[0].T
  norm = np.linalg.norm(targets)
  optimal = np.linalg.norm(aug @ best.T - targets) / norm
  assert np.linalg.norm(aug @ W.T - targets) / norm < optimal + 1e-3
  assert np.linalg.norm(W) < 1.01 * np.linalg.norm(best)  # nothing on the null space


def test_blocked_sweeps_on_a_collinear_memory_stay_finite():
  """The default solver on the same memory stays finite and approaches the least-squares
  fit: it never factorises ``A``, it divides by the triangles ``triu(A_JJ)`` whose
  diagonals ``A_jj = sum_n a_nj^2`` are sums of squares (never negative after rounding,
  dead columns masked), and a Gauss-Seidel sweep only decreases the quadratic along the
  rounding-level negative directions of ``A`` by a rounding-level amount per sweep."""
  A, B, aug, targets = collinear_memory()
  best = np.linalg.lstsq(aug, targets, rcond=1e-5)[0].T
  norm = np.linalg.norm(targets)
  optimal = np.linalg.norm(aug @ best.T - targets) / norm
  sweep = jax.jit(weights_lib.block_coordinate_sweeps, static_argnums=3)
  W = sweep(jnp.zeros_like(B), A, B, 500)
  W = np.asarray(W, np.float64)
  assert np.all(np.isfinite(W))
  assert np.linalg.norm(aug @ W.T - targets) / norm < optimal + 1e-2
  assert np.linalg.norm(W) < 10 * np.linalg.norm(best)


@pytest.mark.parametrize("make", ["am_mem", "am_mem_offline"])
def test_exact_am_mem_on_300_mnist_images_stays_finite(make):
  """Regression on the data that showed it: the first layer's memory of 300 standardized
  bundled MNIST images is singular (background pixels) and indefinite in float32."""
  x, y = amj.data.load_dataset("bundled_mnist", num_train=300).train
  net = amj.networks.mlp([784, 16, 10], activation=jax.nn.relu)
  if make == "am_mem":
    tx = amj.am_mem(net, code_steps=1, solver="exact", output_optimizer=optax.sgd(0.1))
  else:
    tx = amj.am_mem_offline(
      net, num_samples=300, code_steps=1, solver="exact", output_optimizer=optax.sgd(0.1)
    )
  step = amj.training.make_train_step(
    net.apply, tx, loss=amj.losses.softmax_cross_entropy, uses_gradients=False
  )
  params = net.init(jax.random.key(0))
  state = tx.init(params)
  params, state, _ = step(params, state, x, y)
  leaves = jax.tree_util.tree_leaves((params, state))
  assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)
