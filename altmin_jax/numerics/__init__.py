"""Generic numerics on matrix-free operators and pytrees: Lanczos eigenvalue bounds,
conjugate gradient and Armijo line searches. Jittable, vmappable ``jax.lax`` loops; used
by surrogate minimization, its baselines and the pipeline."""

from altmin_jax.numerics import cg, eigen, line_search
from altmin_jax.numerics.cg import CGResult, conjugate_gradient, real_vdot
from altmin_jax.numerics.eigen import (
  LanczosResult,
  lanczos,
  start_vector,
  top_eigenvalue,
  tridiagonal_top_eigenpair,
)
from altmin_jax.numerics.line_search import (
  ArmijoSearch,
  GDResult,
  LineSearchResult,
  armijo_backtracking,
  armijo_gd,
  next_init_step,
  quadratic_armijo_gd,
)

__all__ = [
  "ArmijoSearch",
  "CGResult",
  "GDResult",
  "LanczosResult",
  "LineSearchResult",
  "armijo_backtracking",
  "armijo_gd",
  "cg",
  "conjugate_gradient",
  "eigen",
  "lanczos",
  "line_search",
  "next_init_step",
  "quadratic_armijo_gd",
  "real_vdot",
  "start_vector",
  "top_eigenvalue",
  "tridiagonal_top_eigenpair",
]
