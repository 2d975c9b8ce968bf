"""Surrogate minimization (Asad et al.) and its baselines: GD+Armijo, CGBlock, SSO, DDG."""

from altmin_jax import numerics as solvers  # the inner solvers, kept under their old name
from altmin_jax.sm import local_losses, pipeline, schedule_model
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
from altmin_jax.sm.pipeline import (
  PipelineParams,
  pipeline_mesh,
  pipelined_gradient_descent,
  pipelined_surrogate_minimization,
  stack_params,
  unstack_params,
)
from altmin_jax.sm.schedule_model import Durations, gpipe_schedule
from altmin_jax.sm.surrogate import SMState, surrogate_minimization

__all__ = [
  "CGBlockState",
  "DDGState",
  "Durations",
  "GDArmijoState",
  "PipelineParams",
  "SMOptions",
  "SMState",
  "SSOState",
  "cg_block",
  "ddg",
  "gd_armijo",
  "gpipe_schedule",
  "local_losses",
  "pipeline",
  "pipeline_mesh",
  "pipelined_gradient_descent",
  "pipelined_surrogate_minimization",
  "schedule_model",
  "solvers",
  "sso",
  "stack_params",
  "surrogate_minimization",
  "unstack_params",
]
