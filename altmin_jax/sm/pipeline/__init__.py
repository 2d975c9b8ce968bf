"""Pipeline parallelism for surrogate minimization and GPipe + GD over a ``'stage'`` mesh
axis: :mod:`~altmin_jax.sm.pipeline.layout` (stacking and padding),
:mod:`~altmin_jax.sm.pipeline.gpipe` (the GPipe schedule),
:mod:`~altmin_jax.sm.pipeline.sm` (pipelined SM) and :mod:`~altmin_jax.sm.pipeline.gd`
(pipelined GD)."""

from altmin_jax.sm.pipeline import gd, gpipe, layout, sm
from altmin_jax.sm.pipeline.gd import pipelined_gradient_descent
from altmin_jax.sm.pipeline.gpipe import Pipeline, make_pipeline
from altmin_jax.sm.pipeline.layout import (
  AXIS,
  PipelineLayout,
  PipelineParams,
  pipeline_layout,
  pipeline_mesh,
  place_params,
  replicate_on,
  stack_params,
  unstack_params,
)
from altmin_jax.sm.pipeline.sm import SMPipeline, pipelined_surrogate_minimization, sm_pipeline

__all__ = [
  "AXIS",
  "Pipeline",
  "PipelineLayout",
  "PipelineParams",
  "SMPipeline",
  "gd",
  "gpipe",
  "layout",
  "make_pipeline",
  "pipeline_layout",
  "pipeline_mesh",
  "pipelined_gradient_descent",
  "pipelined_surrogate_minimization",
  "place_params",
  "replicate_on",
  "sm",
  "sm_pipeline",
  "stack_params",
  "unstack_params",
]
