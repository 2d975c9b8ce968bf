r"""Conjugate gradient on a matrix-free symmetric operator, with a negative-curvature guard.

Used by surrogate minimization's inner solver (SM paper, section 4: N CG steps on each
quadratic local loss) and by the CGBlock baseline, whose Hessian blocks may be indefinite.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from altmin_jax.core.types import Array, MatVec, PyTree


def real_vdot(a: PyTree, b: PyTree) -> Array:
  """The real part of :math:`\\langle a, b\\rangle` over all leaves."""
  return jnp.real(optax.tree.vdot(a, b))


class CGResult(NamedTuple):
  """Result of :func:`conjugate_gradient`."""

  x: PyTree  # the last iterate
  Ax: PyTree  # A @ x, tracked without extra products
  iterations: Array  # int32, CG steps taken (< steps when a guard stopped it)
  negative_curvature: Array  # bool, whether the curvature guard stopped the solve


def conjugate_gradient(
  matvec: MatVec,
  b: PyTree,
  *,
  steps: int,
  curvature_tol: float = 0.0,
  tol: float = 0.0,
  x0: PyTree | None = None,
  Ax0: PyTree | None = None,
) -> CGResult:
  r"""At most ``steps`` conjugate-gradient iterations on :math:`A x = b` from ``x0``
  (default 0).

  Minimises :math:`q(x) = \tfrac12 x^\top A x - b^\top x` over :math:`x_0` plus the
  Krylov space of :math:`A` and :math:`r_0 = b - A x_0`. With :math:`p_0 = r_0`, iteration
  :math:`k` takes

  .. math::
     \alpha_k = \frac{r_k^\top r_k}{p_k^\top A p_k},\quad
     x_{k+1} = x_k + \alpha_k p_k,\quad r_{k+1} = r_k - \alpha_k A p_k,\quad
     p_{k+1} = r_{k+1} + \frac{r_{k+1}^\top r_{k+1}}{r_k^\top r_k} p_k .

  Negative-curvature guard: when :math:`p_k^\top A p_k \le` ``curvature_tol`` :math:`\,
  \|p_k\|^2` the solve stops and returns :math:`x_k` (for :math:`k = 0`, ``x = 0``): the
  quadratic is unbounded below along :math:`p_k` and a CG step would not decrease it.
  The solve also stops once :math:`\|r_k\| \le` ``tol`` :math:`\|b\|`. A warm start
  ``x0`` costs one product, none when its ``Ax0`` is given. For symmetric
  positive definite ``A`` of dimension ``n``, ``steps = n`` solves the system exactly in
  exact arithmetic.

  Args:
    matvec: ``x -> A x`` for a symmetric linear map on pytrees shaped like ``b``.
    b: right-hand side.
    steps: maximum number of iterations (matrix-vector products).
    curvature_tol: guard threshold on the Rayleigh quotient of the search direction.
    tol: relative residual tolerance (0: run all ``steps`` unless a guard fires).
    x0: the starting point (``None``: 0).
    Ax0: :math:`A x_0` when the caller has it (only with ``x0``).

  Returns:
    A :class:`CGResult`.

  Example:
    >>> import jax.numpy as jnp
    >>> A = jnp.array([[4.0, 1.0], [1.0, 3.0]])
    >>> res = conjugate_gradient(lambda v: A @ v, jnp.array([1.0, 2.0]), steps=2)
    >>> [round(float(v), 4) for v in res.x]
    [0.0909, 0.6364]
  """
  bb = real_vdot(b, b)
  dtype = bb.dtype
  if x0 is None:
    x0 = Ax0 = optax.tree.zeros_like(b)
    r0 = b
  else:
    Ax0 = matvec(x0) if Ax0 is None else Ax0
    r0 = optax.tree.sub(b, Ax0)
  rr0 = real_vdot(r0, r0)

  def cond(carry):
    k, done = carry[0], carry[1]
    return (k < steps) & ~done

  def body(carry):
    k, _, neg, x, Ax, r, p, rr = carry
    Ap = matvec(p)
    pAp = real_vdot(p, Ap)
    pp = real_vdot(p, p)
    negative = (pAp <= curvature_tol * pp) & (pp > 0)
    stop = (pAp <= curvature_tol * pp) | (rr == 0)
    alpha = jnp.where(stop, 0.0, rr / jnp.where(stop, 1.0, pAp)).astype(dtype)
    x = optax.tree.add_scale(x, alpha, p)
    Ax = optax.tree.add_scale(Ax, alpha, Ap)
    r = optax.tree.add_scale(r, -alpha, Ap)
    rr_new = real_vdot(r, r)
    beta = jnp.where(stop, 0.0, rr_new / jnp.where(rr == 0, 1.0, rr)).astype(dtype)
    p = optax.tree.add_scale(r, beta, p)
    converged = rr_new <= (tol * tol) * bb
    k = k + jnp.where(stop, 0, 1).astype(jnp.int32)
    return k, stop | converged, neg | negative, x, Ax, r, p, rr_new

  init = (
    jnp.zeros([], jnp.int32),
    rr0 == 0,
    jnp.array(False),
    x0,
    Ax0,
    r0,
    r0,
    rr0,
  )
  k, _, neg, x, Ax, *_ = jax.lax.while_loop(cond, body, init)
  return CGResult(x=x, Ax=Ax, iterations=k, negative_curvature=neg)
