r"""Inner solvers of surrogate minimization: conjugate gradient and GD with Armijo search.

Asad et al., "Surrogate Minimization: An Optimization Algorithm for Training Large
Neural Networks with Model Parallelism" (SM paper), section 4 (N steps of conjugate
gradient on each quadratic local loss) and Theorem 1 / section 3 (gradient descent with
an Armijo line search, Armijo 1966).

Everything here works on pytrees, runs inside ``jax.jit`` as ``jax.lax`` loops and can be
``jax.vmap``-ed (the local solves of equally shaped stages are batched that way).

* :func:`conjugate_gradient` minimises :math:`q(x) = \tfrac12 x^\top A x - b^\top x` with
  a matrix-free ``A`` and stops when it meets a direction of non-positive curvature
  (the *negative-curvature guard*): the local losses of SM and the Hessian blocks of
  CGBlock may be indefinite, and a CG step along such a direction would move towards
  the maximum of the quadratic.
* :func:`armijo_backtracking` is the backtracking search with the SM authors' defaults
  (sufficient-decrease constant ``c = 0.1``, backtrack factor ``0.9``, at most 100
  backtracks) and an explicit *fallback step* when no trial step is accepted (it never
  silently accepts a failed trial step).
* :func:`armijo_gd` runs ``N`` such GD steps on any differentiable function (GD+Armijo,
  SSO) and :func:`quadratic_armijo_gd` on a quadratic given by a Hessian-vector product,
  where every trial value is a closed form (one Hessian-vector product per step).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Array = jax.Array
PyTree = Any
MatVec = Callable[[PyTree], PyTree]

# The SM authors' line-search defaults (Armijo search of their GD inner solver).
ARMIJO_C = 0.1
BACKTRACK_FACTOR = 0.9
MAX_BACKTRACKS = 100
FALLBACK_STEP = 1e-6


# ----------------------------------------------------------------- validation


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
  """``value`` as a float; ``ValueError`` naming ``name=value`` unless it is positive
  (or zero when allowed) and finite."""
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  if not ok or value < 0 or (value == 0 and not allow_zero):
    bound = ">= 0" if allow_zero else "> 0"
    raise ValueError(f"{name} must be a finite number {bound}, got {name}={value!r}")
  return float(value)


def check_int(name: str, value: Any, minimum: int) -> int:
  """``value`` unless it is not an integer ``>= minimum`` (``ValueError``)."""
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {name}={value!r}")
  return value


class LineSearchConfig(NamedTuple):
  """Static parameters of the Armijo backtracking search."""

  init_step: float = 1.0
  c: float = ARMIJO_C
  factor: float = BACKTRACK_FACTOR
  max_backtracks: int = MAX_BACKTRACKS
  fallback_step: float = FALLBACK_STEP
  step_growth: float = 2.0
  max_step: float = 1e3


DEFAULT_LINE_SEARCH = LineSearchConfig()


def line_search_config(
  *,
  init_step: float = 1.0,
  armijo_c: float = ARMIJO_C,
  backtrack_factor: float = BACKTRACK_FACTOR,
  max_backtracks: int = MAX_BACKTRACKS,
  fallback_step: float = FALLBACK_STEP,
  step_growth: float = 2.0,
  max_step: float = 1e3,
) -> LineSearchConfig:
  """Validated :class:`LineSearchConfig` (argument names as in the public factories)."""
  init_step = check_positive("init_step", init_step)
  armijo_c = check_positive("armijo_c", armijo_c)
  if armijo_c >= 1:
    raise ValueError(f"armijo_c must lie in (0, 1), got armijo_c={armijo_c!r}")
  backtrack_factor = check_positive("backtrack_factor", backtrack_factor)
  if backtrack_factor >= 1:
    raise ValueError(
      f"backtrack_factor must lie in (0, 1), got backtrack_factor={backtrack_factor!r}"
    )
  max_step = check_positive("max_step", max_step)
  if max_step < init_step:
    raise ValueError(f"max_step must be >= init_step={init_step!r}, got max_step={max_step!r}")
  step_growth = check_positive("step_growth", step_growth)
  if step_growth < 1:
    raise ValueError(f"step_growth must be >= 1, got step_growth={step_growth!r}")
  return LineSearchConfig(
    init_step=init_step,
    c=armijo_c,
    factor=backtrack_factor,
    max_backtracks=check_int("max_backtracks", max_backtracks, 0),
    fallback_step=check_positive("fallback_step", fallback_step, allow_zero=True),
    step_growth=step_growth,
    max_step=max_step,
  )


def _real_vdot(a: PyTree, b: PyTree) -> Array:
  return jnp.real(optax.tree.vdot(a, b))


# ---------------------------------------------------------- conjugate gradient


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
) -> CGResult:
  r"""At most ``steps`` conjugate-gradient iterations on :math:`A x = b` from ``x = 0``.

  Minimises :math:`q(x) = \tfrac12 x^\top A x - b^\top x` over the Krylov space of
  :math:`A` and :math:`b`. With :math:`r_0 = p_0 = b`, iteration :math:`k` takes

  .. math::
     \alpha_k = \frac{r_k^\top r_k}{p_k^\top A p_k},\quad
     x_{k+1} = x_k + \alpha_k p_k,\quad r_{k+1} = r_k - \alpha_k A p_k,\quad
     p_{k+1} = r_{k+1} + \frac{r_{k+1}^\top r_{k+1}}{r_k^\top r_k} p_k .

  Negative-curvature guard: when :math:`p_k^\top A p_k \le` ``curvature_tol`` :math:`\,
  \|p_k\|^2` the solve stops and returns :math:`x_k` (for :math:`k = 0`, ``x = 0``): the
  quadratic is unbounded below along :math:`p_k` and a CG step would not decrease it.
  The solve also stops once :math:`\|r_k\| \le` ``tol`` :math:`\|b\|`. For symmetric
  positive definite ``A`` of dimension ``n``, ``steps = n`` solves the system exactly in
  exact arithmetic.

  Args:
    matvec: ``x -> A x`` for a symmetric linear map on pytrees shaped like ``b``.
    b: right-hand side.
    steps: maximum number of iterations (matrix-vector products).
    curvature_tol: guard threshold on the Rayleigh quotient of the search direction.
    tol: relative residual tolerance (0: run all ``steps`` unless a guard fires).

  Returns:
    A :class:`CGResult`.

  Example:
    >>> import jax.numpy as jnp
    >>> A = jnp.array([[4.0, 1.0], [1.0, 3.0]])
    >>> res = conjugate_gradient(lambda v: A @ v, jnp.array([1.0, 2.0]), steps=2)
    >>> [round(float(v), 4) for v in res.x]
    [0.0909, 0.6364]
  """
  zeros = optax.tree.zeros_like(b)
  bb = _real_vdot(b, b)
  dtype = bb.dtype

  def cond(carry):
    k, done = carry[0], carry[1]
    return (k < steps) & ~done

  def body(carry):
    k, _, neg, x, Ax, r, p, rr = carry
    Ap = matvec(p)
    pAp = _real_vdot(p, Ap)
    pp = _real_vdot(p, p)
    negative = (pAp <= curvature_tol * pp) & (pp > 0)
    stop = (pAp <= curvature_tol * pp) | (rr == 0)
    alpha = jnp.where(stop, 0.0, rr / jnp.where(stop, 1.0, pAp)).astype(dtype)
    x = optax.tree.add_scale(x, alpha, p)
    Ax = optax.tree.add_scale(Ax, alpha, Ap)
    r = optax.tree.add_scale(r, -alpha, Ap)
    rr_new = _real_vdot(r, r)
    beta = jnp.where(stop, 0.0, rr_new / jnp.where(rr == 0, 1.0, rr)).astype(dtype)
    p = optax.tree.add_scale(r, beta, p)
    converged = rr_new <= (tol * tol) * bb
    k = k + jnp.where(stop, 0, 1).astype(jnp.int32)
    return k, stop | converged, neg | negative, x, Ax, r, p, rr_new

  init = (
    jnp.zeros([], jnp.int32),
    bb == 0,
    jnp.array(False),
    zeros,
    zeros,
    b,
    b,
    bb,
  )
  k, _, neg, x, Ax, *_ = jax.lax.while_loop(cond, body, init)
  return CGResult(x=x, Ax=Ax, iterations=k, negative_curvature=neg)


# ------------------------------------------------------------------- Armijo


class LineSearchResult(NamedTuple):
  """Result of :func:`armijo_backtracking`."""

  step: Array  # the step taken (the fallback step when nothing was accepted)
  value: Array  # phi(step), the objective after the step taken
  accepted: Array  # bool, whether a trial step met the Armijo condition
  backtracks: Array  # int32, number of step reductions tried
  last_trial: Array  # the smallest trial step evaluated


def armijo_backtracking(
  value_at: Callable[[Array], Array],
  value: Array,
  slope: Array,
  init_step: Array,
  config: LineSearchConfig = DEFAULT_LINE_SEARCH,
) -> LineSearchResult:
  r"""Backtracking search for the Armijo (sufficient decrease) condition.

  Trial steps :math:`\alpha_j = \alpha_0 \beta^j`, :math:`j = 0, 1, \dots,`
  ``max_backtracks`` (:math:`\beta` = ``config.factor``); the first one with

  .. math:: \phi(\alpha_j) \le \phi(0) + c\,\alpha_j\,\phi'(0)

  is taken (:math:`c` = ``config.c``). If none satisfies it, the step is
  ``config.fallback_step`` and ``accepted`` is ``False``: a failed trial step is never
  taken as if it had passed. Costs one evaluation of ``value_at`` per trial (plus one
  at the fallback step when the search fails).

  Args:
    value_at: :math:`\phi(\alpha)`, the objective after a step of size :math:`\alpha`.
    value: :math:`\phi(0)`.
    slope: the directional derivative :math:`\phi'(0)` (``-||g||^2`` for gradient descent).
    init_step: :math:`\alpha_0`.
    config: the search parameters.

  Returns:
    A :class:`LineSearchResult`.

  Example:
    >>> import jax.numpy as jnp
    >>> phi = lambda a: (1.0 - 2.0 * a) ** 2  # f(x) = x^2 from x = 1 along -f'(1) = -2
    >>> res = armijo_backtracking(phi, jnp.float32(1.0), jnp.float32(-4.0), jnp.float32(1.0))
    >>> bool(res.accepted), int(res.backtracks), round(float(res.step), 2)
    (True, 1, 0.9)
  """
  dtype = jnp.result_type(value, jnp.float32)
  value = jnp.asarray(value, dtype)
  slope = jnp.asarray(slope, dtype)

  def trial(step):
    f = jnp.asarray(value_at(step), dtype)
    return f, f <= value + config.c * step * slope

  def cond(carry):
    j, _, _, accepted = carry
    return (~accepted) & (j < config.max_backtracks)

  def body(carry):
    j, step, _, _ = carry
    step = step * config.factor
    return (j + 1, step, *trial(step))

  init_step = jnp.asarray(init_step, dtype)
  j, step, f, accepted = jax.lax.while_loop(
    cond, body, (jnp.zeros([], jnp.int32), init_step, *trial(init_step))
  )
  fallback = jnp.asarray(config.fallback_step, dtype)
  taken = jnp.where(accepted, step, fallback)
  f = jax.lax.cond(accepted, lambda: f, lambda: jnp.asarray(value_at(fallback), dtype))
  return LineSearchResult(step=taken, value=f, accepted=accepted, backtracks=j, last_trial=step)


def next_init_step(result: LineSearchResult, config: LineSearchConfig) -> Array:
  """The first trial step of the next search: ``step_growth`` times the accepted step
  (or the smallest trial after a failed search), capped at ``max_step``."""
  base = jnp.where(result.accepted, result.step, result.last_trial)
  return jnp.minimum(base * config.step_growth, config.max_step)


class GDResult(NamedTuple):
  """Result of :func:`armijo_gd` and :func:`quadratic_armijo_gd`."""

  x: PyTree  # the last iterate
  value: Array  # objective at ``x`` (for the quadratic: ``g^T x + x^T A x / 2``)
  initial_value: Array  # objective at the starting point
  next_step: Array  # first trial step for the next call (carries the step size)
  iterations: Array  # int32, steps taken (fewer when the curvature guard fired)
  failed_searches: Array  # int32, searches that fell back to ``fallback_step``


def armijo_gd(
  fun: Callable[[PyTree], Array],
  x0: PyTree,
  *,
  steps: int,
  init_step: Array,
  config: LineSearchConfig = DEFAULT_LINE_SEARCH,
) -> GDResult:
  r"""``steps`` gradient-descent steps on ``fun``, each with an Armijo search.

  .. math::
     x_{k+1} = x_k - \alpha_k \nabla f(x_k),\qquad
     f(x_{k+1}) \le f(x_k) - c\,\alpha_k \|\nabla f(x_k)\|^2,

  with :math:`\alpha_k` from :func:`armijo_backtracking` started at ``init_step`` for
  :math:`k = 0` and at :func:`next_init_step` afterwards. Each step costs one value
  and gradient of ``fun`` plus one value per trial step (no other evaluations).

  Args:
    fun: scalar objective of a pytree.
    x0: starting point.
    steps: number of GD steps (``N >= 1``).
    init_step: first trial step (a scalar array, usually carried in an optimizer state).
    config: search parameters.

  Returns:
    A :class:`GDResult`; ``value`` is ``fun(x)`` at the returned point (the accepted
    trial value) and ``initial_value`` is ``fun(x0)``.

  Example:
    >>> import jax.numpy as jnp
    >>> res = armijo_gd(lambda x: jnp.sum(x**2), jnp.ones(3), steps=1, init_step=jnp.float32(0.5))
    >>> float(res.initial_value), float(res.value), float(res.next_step)  # exact step 1/2
    (3.0, 0.0, 1.0)
  """
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got steps={steps!r}")
  value_and_grad = jax.value_and_grad(fun)

  def gd_step(x, step):
    f0, g = value_and_grad(x)
    gg = _real_vdot(g, g)
    ls = armijo_backtracking(lambda a: fun(optax.tree.add_scale(x, -a, g)), f0, -gg, step, config)
    x = optax.tree.add_scale(x, -ls.step.astype(gg.dtype), g)
    return x, f0, ls

  x, f_init, ls = gd_step(x0, jnp.asarray(init_step, jnp.float32))
  carry = (x, ls.value, next_init_step(ls, config), (~ls.accepted).astype(jnp.int32))

  def body(_, carry):
    x, _, step, fails = carry
    x, _, ls = gd_step(x, step)
    return x, ls.value, next_init_step(ls, config), fails + (~ls.accepted).astype(jnp.int32)

  x, value, step, fails = jax.lax.fori_loop(1, steps, body, carry)
  return GDResult(
    x=x,
    value=value,
    initial_value=f_init,
    next_step=step,
    iterations=jnp.asarray(steps, jnp.int32),
    failed_searches=fails,
  )


def quadratic_armijo_gd(
  matvec: MatVec,
  g: PyTree,
  *,
  steps: int,
  init_step: Array,
  config: LineSearchConfig = DEFAULT_LINE_SEARCH,
  curvature_tol: float = 0.0,
) -> GDResult:
  r"""Gradient descent with Armijo search on :math:`q(d) = g^\top d + \tfrac12 d^\top A d`.

  From :math:`d_0 = 0`, with :math:`r_k = \nabla q(d_k) = g + A d_k`, the trial values
  along :math:`-r_k` are exact: :math:`q(d_k - \alpha r_k) = q(d_k) - \alpha\, r_k^\top r_k
  + \tfrac12\alpha^2\, r_k^\top A r_k`, so a step costs one product :math:`A r_k`
  (``A d`` is updated, never recomputed) and the search is :func:`armijo_backtracking`
  on that closed form. Negative-curvature guard: when
  :math:`r_k^\top A r_k \le` ``curvature_tol`` :math:`\|r_k\|^2` the quadratic is
  unbounded below along :math:`-r_k` and the solve stops at :math:`d_k`.

  Args:
    matvec: ``v -> A v`` (symmetric).
    g: the linear term (the gradient at ``d = 0``).
    steps: number of GD steps (``N``).
    init_step: first trial step.
    config: search parameters.
    curvature_tol: guard threshold.

  Returns:
    A :class:`GDResult` (``value`` is :math:`q` at the returned ``x``).

  Example:
    >>> import jax.numpy as jnp
    >>> A = jnp.diag(jnp.array([1.0, 2.0]))
    >>> res = quadratic_armijo_gd(lambda v: A @ v, jnp.array([1.0, 1.0]), steps=30,
    ...                           init_step=jnp.float32(1.0))
    >>> round(float(res.value), 4)  # the minimum -(1 + 1/2) / 2
    -0.75
  """
  zeros = optax.tree.zeros_like(g)
  dtype = _real_vdot(g, g).dtype

  def cond(carry):
    k, done = carry[0], carry[1]
    return (k < steps) & ~done

  def body(carry):
    k, _, d, Ad, q, step, fails = carry
    r = optax.tree.add(g, Ad)
    Ar = matvec(r)
    rr = _real_vdot(r, r)
    rAr = _real_vdot(r, Ar)
    guard = (rAr <= curvature_tol * rr) & (rr > 0)
    ls = armijo_backtracking(lambda a: q - a * rr + 0.5 * a * a * rAr, q, -rr, step, config)
    alpha = jnp.where(guard, 0.0, ls.step).astype(dtype)
    d = optax.tree.add_scale(d, -alpha, r)
    Ad = optax.tree.add_scale(Ad, -alpha, Ar)
    q_new = _real_vdot(g, d) + 0.5 * _real_vdot(d, Ad)
    step = jnp.where(guard, step, next_init_step(ls, config))
    fails = fails + ((~ls.accepted) & ~guard).astype(jnp.int32)
    return k + jnp.where(guard, 0, 1).astype(jnp.int32), guard, d, Ad, q_new, step, fails

  init = (
    jnp.zeros([], jnp.int32),
    jnp.array(False),
    zeros,
    zeros,
    jnp.zeros([], dtype),
    jnp.asarray(init_step, dtype),
    jnp.zeros([], jnp.int32),
  )
  k, _, d, _, q, step, fails = jax.lax.while_loop(cond, body, init)
  return GDResult(
    x=d,
    value=q,
    initial_value=jnp.zeros([], dtype),
    next_step=step,
    iterations=k,
    failed_searches=fails,
  )
