"""GPipe pipeline parallelism over a ``'stage'`` mesh axis, shared by the AM and SM families:
:mod:`~altmin_jax.pipeline.layout` (stacking and padding the dense stages),
:mod:`~altmin_jax.pipeline.gpipe` (the GPipe schedule),
:mod:`~altmin_jax.pipeline.options` (:class:`PipelineOptions`, the validated ``mesh``,
``num_microbatches``, ``boundary`` and ``axis_name`` every pipelined method takes) and
:mod:`~altmin_jax.pipeline.schedule_model` (modelled busy and idle time of GPipe + GD,
GPipe + SM and pipelined AM).

The pipelined methods live with their families: :func:`~altmin_jax.pipelined_am_adam`,
:func:`~altmin_jax.pipelined_am_mem` (:mod:`altmin_jax.am.pipelined`),
:func:`~altmin_jax.pipelined_surrogate_minimization` (:mod:`altmin_jax.sm.pipelined`) and
:func:`~altmin_jax.pipelined_gradient_descent` (:mod:`altmin_jax.sm.pipelined_gd`).
"""

from altmin_jax.pipeline import gpipe, layout, options, schedule_model
from altmin_jax.pipeline.gpipe import Pipeline, make_pipeline
from altmin_jax.pipeline.layout import (
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
from altmin_jax.pipeline.options import PipelineOptions
from altmin_jax.pipeline.schedule_model import Durations, gpipe_schedule

__all__ = [
  "AXIS",
  "Durations",
  "Pipeline",
  "PipelineLayout",
  "PipelineOptions",
  "PipelineParams",
  "gpipe",
  "gpipe_schedule",
  "layout",
  "make_pipeline",
  "options",
  "pipeline_layout",
  "pipeline_mesh",
  "place_params",
  "replicate_on",
  "schedule_model",
  "stack_params",
  "unstack_params",
]
