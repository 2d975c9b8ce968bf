r"""The network-stage plumbing under both families and the pipeline: the network read as
a chain of post-activation stage maps, the batch-mean loss, and the preparation of a step
(validated batch, params in compute precision) and its updates.

A :class:`~altmin_jax.networks.LayeredNetwork` with ``m`` stages is read as

.. math::
   z^{(0)} = x,\qquad z^{(i)} = f_i(z^{(i-1)}, \theta_i) = \sigma_i(\mathrm{apply}_i(\theta_i,
   z^{(i-1)})) \quad (i < m),\qquad z^{(m)} = \mathrm{apply}_m(\theta_m, z^{(m-1)}),

so one stage map is one network stage *including* its activation and the last stage
outputs the logits. The objective is the **batch mean** of the per-sample loss,
:math:`h(\theta) = \ell(z^{(m)}) = \frac1B \sum_b \mathrm{loss}(z^{(m)}_b, y_b)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp

from altmin_jax.core import batches, checks, trees
from altmin_jax.core.types import Array, Loss, PyTree
from altmin_jax.networks.layered import LayeredNetwork, as_arrays

StageFn = Callable[[PyTree, Array], Array]  # f_i(theta, z) -> z^(i)


def check_network(net: Any) -> LayeredNetwork:
  """``net`` unless it is not a :class:`~altmin_jax.networks.LayeredNetwork`."""
  return checks.check_instance("net", net, LayeredNetwork, "an altmin_jax.networks.LayeredNetwork")


def stage_function(net: LayeredNetwork, i: int) -> StageFn:
  """The post-activation map ``f_i(theta, z) -> z^(i)`` of stage ``i`` (1-based).

  Hidden stages apply their activation; the last stage returns the logits (as
  :meth:`LayeredNetwork.apply` does).
  """
  stage = net.stages[i - 1]
  if i == net.num_stages:
    return stage.apply
  return lambda theta, z: stage.activation(stage.apply(theta, z))


def batch_mean_loss(loss: Loss, outputs: Array, y: Array) -> Array:
  """:math:`\\ell(z^{(m)}) = \\frac1B \\sum_b \\mathrm{loss}(z^{(m)}_b, y_b)`, in the
  outputs' precision (differentiable; the states record it in float32)."""
  return jnp.mean(loss(outputs, y))


class Prepared(NamedTuple):
  """A validated batch and the user's params as per-stage params in compute precision."""

  x: Array  # in the compute dtype
  y: Array
  params: PyTree  # the user's params (NNX wrappers stripped)
  stage_params: tuple  # per-stage params in the compute dtype
  dtype: Any


def prepare_stage_params(net: LayeredNetwork, params: PyTree, method: str) -> list[PyTree]:
  """``params`` checked and split per stage, upcast to at least float32 (what
  :func:`prepare` returns as ``stage_params``)."""
  batches.require_params(params, method)
  stage_params = net.stage_params(as_arrays(params))
  return trees.cast_tree(stage_params, trees.compute_dtype(stage_params))


def prepare(
  net: LayeredNetwork, params: PyTree, batch: Any, method: str, loss: Loss | None = None
) -> Prepared:
  """Checks ``params`` and ``batch`` (with ``loss``'s label rule,
  :func:`~altmin_jax.core.unpack_batch`) and returns them ready for an update, upcast to
  at least float32 (:func:`params_update` casts the result back to the params' dtypes)."""
  batches.require_params(params, method)
  x, y = batches.unpack_batch(net, batch, loss)
  params = as_arrays(params)
  stage_params = net.stage_params(params)
  dtype = trees.compute_dtype(stage_params)
  return Prepared(x.astype(dtype), y, params, trees.cast_tree(stage_params, dtype), dtype)


def params_update(net: LayeredNetwork, new_stage_params: Sequence[PyTree], params: PyTree):
  """``updates = new_params - params`` in the user's params structure and dtypes."""
  new_params = net.merge_stage_params(list(new_stage_params), params)
  return trees.update_difference(new_params, params)
