"""Surrogate minimization (Asad et al.) and its baselines: GD+Armijo, CGBlock, SSO, DDG;
pipelined over a ``'stage'`` mesh axis (:mod:`~altmin_jax.sm.pipelined`,
:mod:`~altmin_jax.sm.pipelined_gd`) with the GPipe machinery of :mod:`altmin_jax.pipeline`."""

from altmin_jax.sm import local_losses, majorizers, pipelined, pipelined_gd
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
from altmin_jax.sm.local_losses import SMOptions
from altmin_jax.sm.pipelined import pipelined_surrogate_minimization
from altmin_jax.sm.pipelined_gd import pipelined_gradient_descent
from altmin_jax.sm.surrogate import SMState, surrogate_minimization

__all__ = [
  "CGBlockState",
  "DDGState",
  "GDArmijoState",
  "SMOptions",
  "SMState",
  "SSOState",
  "cg_block",
  "ddg",
  "gd_armijo",
  "local_losses",
  "majorizers",
  "pipelined",
  "pipelined_gd",
  "pipelined_gradient_descent",
  "pipelined_surrogate_minimization",
  "sso",
  "surrogate_minimization",
]
