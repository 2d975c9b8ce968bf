"""The options every pipelined method takes (pipelined AM-Adam and AM-mem, pipelined SM,
GPipe + GD), validated in one place."""

from __future__ import annotations

import dataclasses
from typing import Any

from jax.sharding import Mesh

from altmin_jax.core import checks, meshes
from altmin_jax.core.options import options_from
from altmin_jax.pipeline.layout import AXIS, BOUNDARIES


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
  """How a step is pipelined, validated when built; every pipelined factory takes these
  fields as keywords with these defaults (:meth:`from_arguments`).

  Attributes:
    mesh: a mesh with axis ``axis_name`` of ``S`` devices
      (:func:`~altmin_jax.pipeline.pipeline_mesh`); the stacked layers must split
      evenly.
    num_microbatches: M, GPipe micro-batches per batch (the batch size must be a
      multiple).
    boundary: ``"pad"`` (all stages pipelined, zero-padded to common widths) or
      ``"outside"`` (first and last stage run on the full batch outside the pipeline).
    axis_name: the mesh axis of the pipeline stages.

  Example:
    >>> from altmin_jax import pipeline
    >>> pipeline.PipelineOptions(pipeline.pipeline_mesh(1), num_microbatches=0)
    Traceback (most recent call last):
    ...
    ValueError: num_microbatches must be an integer >= 1, got num_microbatches=0
  """

  mesh: Mesh
  num_microbatches: int = 1
  boundary: str = "pad"
  axis_name: str = AXIS

  def __post_init__(self):
    checks.check_choice("boundary", self.boundary, BOUNDARIES)
    meshes.check_mesh(self.mesh, self.axis_name)
    M = checks.check_int("num_microbatches", self.num_microbatches, 1)
    object.__setattr__(self, "num_microbatches", M)

  @classmethod
  def from_arguments(cls, arguments: dict[str, Any]) -> PipelineOptions:
    """The options among a factory's ``arguments`` (its ``locals()``; absent fields take
    their defaults)."""
    return options_from(cls, arguments)
