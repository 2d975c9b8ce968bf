r"""Backtracking Armijo search and gradient descent with it, on any function or on a
quadratic given by its Hessian-vector product.

* :class:`ArmijoSearch` holds the search's parameters, validated once where it is built
  (the SM authors' defaults: sufficient-decrease constant 0.1, backtrack factor 0.9, at
  most 100 backtracks); every method with a line search takes one.
* :func:`armijo_backtracking` never silently accepts a failed trial step: when none
  passes it takes the explicit ``fallback_step``.
* :func:`armijo_gd` runs N such GD steps on a differentiable function (GD+Armijo, SSO);
  :func:`quadratic_armijo_gd` on a quadratic, where every trial value is a closed form
  (one Hessian-vector product per step; SM's ``solver="armijo"``).

SM paper, Theorem 1 and section 3 (GD with an Armijo line search, Armijo 1966).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from altmin_jax.core.checks import check_int, check_positive, check_real, is_traced
from altmin_jax.core.types import Array, MatVec, PyTree
from altmin_jax.numerics.cg import real_vdot

# The SM authors' line-search defaults (Armijo search of their GD inner solver).
ARMIJO_C = 0.1
BACKTRACK_FACTOR = 0.9
MAX_BACKTRACKS = 100
FALLBACK_STEP = 1e-6


@dataclasses.dataclass(frozen=True)
class ArmijoSearch:
  """Parameters of the backtracking Armijo search, validated when built.

  Attributes:
    init_step: the first trial step of the first search (> 0).
    armijo_c: sufficient-decrease constant :math:`c \\in (0, 1)`.
    backtrack_factor: :math:`\\beta \\in (0, 1)`, the factor between trial steps.
    max_backtracks: at most this many reductions per search (>= 0).
    fallback_step: the step taken when no trial passes (>= 0).
    step_growth: each later search starts at this multiple (>= 1) of the previous step.
    max_step: the largest first trial step (>= ``init_step``).

  Example:
    >>> ArmijoSearch(armijo_c=1.5)
    Traceback (most recent call last):
    ...
    ValueError: armijo_c must be a finite number in (0, 1), got armijo_c=1.5
  """

  init_step: float = 1.0
  armijo_c: float = ARMIJO_C
  backtrack_factor: float = BACKTRACK_FACTOR
  max_backtracks: int = MAX_BACKTRACKS
  fallback_step: float = FALLBACK_STEP
  step_growth: float = 2.0
  max_step: float = 1e3

  def __post_init__(self):
    checked = dict(
      init_step=check_positive("init_step", self.init_step),
      armijo_c=check_real("armijo_c", self.armijo_c, low=0, high=1, low_open=True, high_open=True),
      backtrack_factor=check_real(
        "backtrack_factor", self.backtrack_factor, low=0, high=1, low_open=True, high_open=True
      ),
      max_backtracks=check_int("max_backtracks", self.max_backtracks, 0),
      fallback_step=check_positive("fallback_step", self.fallback_step, allow_zero=True),
      step_growth=check_real("step_growth", self.step_growth, low=1.0),
      max_step=check_positive("max_step", self.max_step),
    )
    init, top = checked["init_step"], checked["max_step"]
    if not (is_traced(init) or is_traced(top)) and top < init:
      raise ValueError(f"max_step must be >= init_step={init!r}, got max_step={self.max_step!r}")
    for name, value in checked.items():
      object.__setattr__(self, name, value)


DEFAULT_SEARCH = ArmijoSearch()


def check_search(line_search: ArmijoSearch | None, name: str = "line_search") -> ArmijoSearch:
  """``line_search``, or the default search for ``None`` (``name``: the argument's name in
  the error)."""
  if line_search is None:
    return DEFAULT_SEARCH
  if not isinstance(line_search, ArmijoSearch):
    raise ValueError(
      f"{name} must be an altmin_jax.numerics.ArmijoSearch or None, got {name}={line_search!r}"
    )
  return line_search


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
  config: ArmijoSearch = DEFAULT_SEARCH,
) -> LineSearchResult:
  r"""Backtracking search for the Armijo (sufficient decrease) condition.

  Trial steps :math:`\alpha_j = \alpha_0 \beta^j`, :math:`j = 0, 1, \dots,`
  ``max_backtracks`` (:math:`\beta` = ``config.backtrack_factor``); the first one with

  .. math:: \phi(\alpha_j) \le \phi(0) + c\,\alpha_j\,\phi'(0)

  is taken (:math:`c` = ``config.armijo_c``). If none satisfies it, the step is
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
    return f, f <= value + config.armijo_c * step * slope

  def cond(carry):
    j, _, _, accepted = carry
    return (~accepted) & (j < config.max_backtracks)

  def body(carry):
    j, step, _, _ = carry
    step = step * config.backtrack_factor
    return (j + 1, step, *trial(step))

  init_step = jnp.asarray(init_step, dtype)
  j, step, f, accepted = jax.lax.while_loop(
    cond, body, (jnp.zeros([], jnp.int32), init_step, *trial(init_step))
  )
  fallback = jnp.asarray(config.fallback_step, dtype)
  taken = jnp.where(accepted, step, fallback)
  f = jax.lax.cond(accepted, lambda: f, lambda: jnp.asarray(value_at(fallback), dtype))
  return LineSearchResult(step=taken, value=f, accepted=accepted, backtracks=j, last_trial=step)


def next_init_step(result: LineSearchResult, config: ArmijoSearch) -> Array:
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
  config: ArmijoSearch = DEFAULT_SEARCH,
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
  steps = check_int("steps", steps, 1)
  value_and_grad = jax.value_and_grad(fun)

  def gd_step(x, step):
    f0, g = value_and_grad(x)
    gg = real_vdot(g, g)
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
  config: ArmijoSearch = DEFAULT_SEARCH,
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
  dtype = real_vdot(g, g).dtype

  def cond(carry):
    k, done = carry[0], carry[1]
    return (k < steps) & ~done

  def body(carry):
    k, _, d, Ad, q, step, fails = carry
    r = optax.tree.add(g, Ad)
    Ar = matvec(r)
    rr = real_vdot(r, r)
    rAr = real_vdot(r, Ar)
    guard = (rAr <= curvature_tol * rr) & (rr > 0)
    ls = armijo_backtracking(lambda a: q - a * rr + 0.5 * a * a * rAr, q, -rr, step, config)
    alpha = jnp.where(guard, 0.0, ls.step).astype(dtype)
    d = optax.tree.add_scale(d, -alpha, r)
    Ad = optax.tree.add_scale(Ad, -alpha, Ar)
    q_new = real_vdot(g, d) + 0.5 * real_vdot(d, Ad)
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
