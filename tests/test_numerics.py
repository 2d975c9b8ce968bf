"""The generic numerics (:mod:`altmin_jax.numerics`): Lanczos eigenvalue bounds, the
tridiagonal eigensolver, conjugate gradient and Armijo searches, against closed forms and
LAPACK."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from altmin_jax import numerics


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _top(matrix) -> float:
  return float(np.linalg.eigvalsh(np.asarray(matrix, np.float64))[-1])


def _power_iteration(A, v, steps):
  """Plain power iteration: the last Rayleigh quotient (written out as a reference)."""
  for _ in range(steps):
    w = A @ v
    rq, v = v @ w, w / np.linalg.norm(w)
  return rq


@pytest.mark.extended
def test_top_eigenvalue_is_safe_for_indefinite_matrices(x64):
  """Power iteration finds the eigenvalue of largest magnitude (-5 here, not
  lambda_max = 2); the Lanczos estimate finds lambda_max, also after fewer steps than
  the dimension (within its residual, from above), and an all-negative spectrum gives a
  value <= 0 that the chain clips to zero (c = delta)."""
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(40, 40)))
  v0 = jnp.cos(jnp.arange(40.0))
  for top, rest, dominant in [
    (2.0, (-5.0, 1.5), -5.0),
    (3.0, (-2.5, 2.5), 3.0),
    (-0.5, (-4, -1), -4),
  ]:
    eigs = np.concatenate([[top], np.linspace(*rest, 39)])
    A = jnp.asarray(q @ np.diag(eigs) @ q.T)
    np.testing.assert_allclose(_power_iteration(np.asarray(A), np.asarray(v0), 2000), dominant)
    exact = numerics.lanczos(lambda v, A=A: A @ v, v0, 1000)
    assert int(exact.krylov_dim[0]) == 40
    np.testing.assert_allclose(float(exact.ritz[0]), top, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(float(exact.residual[0]), 0.0, atol=1e-9)
    short = numerics.lanczos(lambda v, A=A: A @ v, v0, 15)
    ritz, res = float(short.ritz[0]), float(short.residual[0])
    assert ritz <= top + 1e-12 and abs(ritz - top) < 0.05 * max(abs(eigs))  # interlacing
    lam = float(numerics.top_eigenvalue(lambda v, A=A: A @ v, v0, 15))
    assert lam == pytest.approx(ritz + res) and top <= lam <= top + 0.1 * max(abs(eigs))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tridiagonal_top_eigenpair_matches_lapack(x64, dtype):
  """Bisection + inverse iteration (no LAPACK call, so it runs inside shard_map on CPU
  devices) give numpy's largest eigenvalue and |eigenvector| of tridiagonal matrices,
  also with zero (decoupled) and tiny off-diagonals and repeated eigenvalues."""
  rng = np.random.default_rng(0)
  for k in (1, 2, 7, 30):
    d, e = rng.normal(size=(20, k)), rng.normal(size=(20, k - 1))
    e[1], d[2], e[2] = 0.0, 1.0, 0.0
    e[3] *= 1e-30
    if k > 3:
      e[4, 1] = 0.0
    theta, s = numerics.tridiagonal_top_eigenpair(jnp.asarray(d, dtype), jnp.asarray(e, dtype))
    tri = lambda a, b: np.diag(a) + np.diag(b, 1) + np.diag(b, -1)
    T = np.stack([tri(a, b) for a, b in zip(d, e)])
    T_abs = np.stack([tri(a, np.abs(b)) for a, b in zip(d, e)])  # similar to T
    w, v = np.linalg.eigh(T)
    eps, size = np.finfo(dtype).eps, np.abs(w).max(1)
    np.testing.assert_allclose(theta, w[:, -1], atol=8 * eps * size.max())
    s = np.asarray(s, np.float64)
    residual = np.linalg.norm(np.einsum("bij,bj->bi", T_abs, s) - w[:, -1:] * s, axis=1)
    assert np.all(residual <= 50 * eps * size), residual / size
    if k > 1:  # where the top eigenvalue is simple, |s| is |its eigenvector|
      simple = w[:, -1] - w[:, -2] > 1e-2
      assert simple.sum() > 10
      np.testing.assert_allclose(np.abs(s[simple]), np.abs(v[simple, :, -1]), atol=1e4 * eps)


def test_per_sample_lanczos_on_block_diagonal_operators(x64):
  """With per_sample, one product per step runs an independent recurrence per sample:
  each block's Ritz value is its own lambda_max (blocks with rank 2 break down after
  3 steps and are exact), and the estimate is the largest over the blocks. On a whole
  batch the blocks' close top eigenvalues slow a single recurrence down."""
  rng = np.random.default_rng(3)
  B, n = 6, 12
  blocks = []
  for b in range(B):
    u, _ = np.linalg.qr(rng.normal(size=(n, n)))
    eigs = np.sort(rng.uniform(-1.0, 1.0, n))[::-1] + 0.02 * b
    if b == 2:
      eigs = np.r_[0.7, -0.3, np.zeros(n - 2)]  # rank 2
    blocks.append(u @ np.diag(eigs) @ u.T)
  A = jnp.asarray(np.stack(blocks))
  mv = lambda v: jnp.einsum("bij,bj->bi", A, v)
  v0 = numerics.start_vector(0, jnp.zeros((B, n)))
  tops = [_top(b) for b in blocks]
  res = numerics.lanczos(mv, v0, 6, per_sample=True)
  assert res.ritz.shape == (B,) and int(res.krylov_dim[2]) == 3
  np.testing.assert_allclose(float(res.ritz[2]), 0.7, rtol=1e-10)
  assert np.all(np.asarray(res.ritz) <= np.asarray(tops) + 1e-12)
  full = numerics.lanczos(mv, v0, n, per_sample=True)
  np.testing.assert_allclose(full.ritz, tops, rtol=1e-9)
  lam = float(numerics.top_eigenvalue(mv, v0, 6, per_sample=True))
  assert lam == pytest.approx(float(jnp.max(res.ritz + res.residual)))
  assert max(tops) <= lam
  # the whole batch as one block: the same products converge more slowly
  whole = numerics.lanczos(mv, v0, 6)
  assert max(tops) - float(whole.ritz[0]) > 2 * (max(tops) - float(jnp.max(res.ritz)))


def test_conjugate_gradient_with_n_steps_solves_spd_systems_exactly(x64):
  rng = np.random.default_rng(1)
  n = 12
  u, _ = np.linalg.qr(rng.normal(size=(n, n)))
  A = jnp.asarray(u @ np.diag(np.geomspace(1.0, 50.0, n)) @ u.T)
  b = jnp.asarray(rng.normal(size=n))
  tree_b = {"a": b[:5], "b": b[5:].reshape(7, 1)}  # pytree right-hand sides work too

  def matvec(v):
    flat, unravel = ravel_pytree(v)
    return unravel(A @ flat)

  exact = np.linalg.solve(np.asarray(A), np.asarray(b))
  res = numerics.conjugate_gradient(matvec, tree_b, steps=n)
  np.testing.assert_allclose(ravel_pytree(res.x)[0], exact, rtol=1e-7, atol=1e-9)
  np.testing.assert_allclose(ravel_pytree(res.Ax)[0], A @ exact, rtol=1e-7, atol=1e-9)
  assert int(res.iterations) == n and not bool(res.negative_curvature)
  short = numerics.conjugate_gradient(matvec, tree_b, steps=n // 2)
  assert np.linalg.norm(ravel_pytree(short.x)[0] - exact) > 1e-3  # N matters


def test_conjugate_gradient_stops_at_negative_curvature(x64):
  A = jnp.diag(jnp.array([1.0, 2.0, -1.0, 4.0]))
  b = jnp.array([1.0, 1.0, 1.0, 1.0])
  q = lambda x: 0.5 * x @ A @ x - b @ x
  res = numerics.conjugate_gradient(lambda v: A @ v, b, steps=4)
  assert bool(res.negative_curvature) and 0 < int(res.iterations) < 4
  assert np.all(np.isfinite(res.x)) and float(q(res.x)) < 0.0
  # A first direction of negative curvature leaves x = 0.
  res = numerics.conjugate_gradient(lambda v: -v, b, steps=4)
  assert int(res.iterations) == 0 and bool(res.negative_curvature)
  np.testing.assert_array_equal(res.x, jnp.zeros(4))


def test_armijo_backtracking_takes_the_first_passing_trial_or_the_fallback(x64):
  """Authors' defaults: trials alpha_0 * 0.9^j, sufficient decrease with c = 0.1; on a
  quadratic the accepted step is the first trial below 2 (1 - c) r^T r / r^T A r."""
  rr, rar, alpha0 = 3.0, 7.0, 5.0
  phi = lambda a: -a * rr + 0.5 * a * a * rar
  res = numerics.armijo_backtracking(phi, jnp.float64(0.0), -rr, alpha0)
  bound = 2 * (1 - 0.1) * rr / rar
  j = int(np.ceil(np.log(bound / alpha0) / np.log(0.9)))
  assert bool(res.accepted) and int(res.backtracks) == j
  np.testing.assert_allclose(float(res.step), alpha0 * 0.9**j, rtol=1e-12)
  np.testing.assert_allclose(float(res.value), phi(alpha0 * 0.9**j), rtol=1e-12)
  # Nothing passes: the fallback step is taken, never the last failed trial.
  res = numerics.armijo_backtracking(lambda a: 1.0 + a, jnp.float64(0.0), -1.0, 1.0)
  assert not bool(res.accepted) and int(res.backtracks) == 100
  assert float(res.step) == numerics.line_search.FALLBACK_STEP
  np.testing.assert_allclose(float(res.last_trial), 0.9**100, rtol=1e-10)
  np.testing.assert_allclose(float(res.value), 1.0 + numerics.line_search.FALLBACK_STEP)


def test_quadratic_armijo_gd_matches_generic_armijo_gd(x64):
  """The closed-form line values of the quadratic solver give the same iterates as the
  generic GD+Armijo on q(d) = g^T d + d^T A d / 2."""
  rng = np.random.default_rng(2)
  u, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  A = jnp.asarray(u @ np.diag(np.geomspace(0.5, 20.0, 6)) @ u.T)
  g = jnp.asarray(rng.normal(size=6))
  q = lambda d: g @ d + 0.5 * d @ A @ d
  config = numerics.ArmijoSearch(init_step=3.0)
  quad = numerics.quadratic_armijo_gd(
    lambda v: A @ v, g, steps=7, init_step=jnp.float32(3.0), config=config
  )
  gen = numerics.armijo_gd(q, jnp.zeros(6), steps=7, init_step=jnp.float32(3.0), config=config)
  np.testing.assert_allclose(quad.x, gen.x, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(float(quad.value), float(q(quad.x)), rtol=1e-10)
  np.testing.assert_allclose(float(quad.next_step), float(gen.next_step))
  assert float(quad.value) < 0.9 * float(q(-jnp.linalg.solve(A, g)))  # most of the way
