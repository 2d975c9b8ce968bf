"""Surrogate minimization (Asad et al.) and its baselines: GD+Armijo, CGBlock, SSO, DDG."""

from altmin_jax.sm import local_losses, solvers
from altmin_jax.sm.baselines import (
  CGBlockState,
  DDGState,
  GDArmijoState,
  SSOState,
  cg_block,
  ddg,
  gd_armijo,
  sso,
)
from altmin_jax.sm.surrogate import SMState, surrogate_minimization

__all__ = [
  "CGBlockState",
  "DDGState",
  "GDArmijoState",
  "SMState",
  "SSOState",
  "cg_block",
  "ddg",
  "gd_armijo",
  "local_losses",
  "solvers",
  "sso",
  "surrogate_minimization",
]
