"""Conformance cases of pipelined SM and the pipelined GD baseline (issue 6).

The conformance suite runs in one process with one CPU device, so the pipeline is a
1-device mesh (all layers on one stage) with 2 GPipe micro-batches: the shard_map
phases, the micro-batch scans and the stacking of network-form params all run. The
params are placed replicated on the mesh (where the step keeps them), as a user of a
real mesh would. Multi-device behaviour is tested in ``test_sm_pipeline.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from conformance import Case, Problem
from helpers import small_mlp, teacher_classification

import altmin_jax as amj
from altmin_jax import pipeline as pl
from altmin_jax.numerics import ArmijoSearch

SIZES = (6, 8, 3)


def _net(dtype=jnp.float32):
  return small_mlp(dtype, sizes=SIZES)


def _mesh():
  return pl.pipeline_mesh(1)


def _pipeline_problem(factory: Callable, **kwargs) -> Callable:
  def make(dtype) -> Problem:
    net = _net(dtype)
    mesh = _mesh()
    params = pl.replicate_on(mesh, net.init(jax.random.key(0)))
    x, y = teacher_classification(0, n=64)
    x = x.astype(dtype)
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]

    def loss(p, args):
      return jnp.mean(amj.losses.softmax_cross_entropy(net.apply(p, x), y).astype(jnp.float32))

    bx, by = batches[0]
    return Problem(
      tx=factory(net, mesh=mesh, num_microbatches=2, **kwargs),
      params=params,
      extra_args=lambda step: {"batch": batches[step % len(batches)]},
      loss=loss,
      bad_extra_args={"batch": (jnp.ones((bx.shape[0], 5), dtype), by)},
      nonfinite_extra_args={"batch": (bx.at[0, 0].set(jnp.nan), by)},
      num_classes=3,
    )

  return make


CASES: list[Case] = [
  Case(
    "pipelined_sm",
    _pipeline_problem(
      amj.pipelined_surrogate_minimization, inner_steps=5, delta=0.1, power_iterations=5
    ),
    bad_hyperparams=[
      (
        lambda: amj.pipelined_surrogate_minimization(_net(), mesh=_mesh(), inner_steps=0),
        "inner_steps=0",
      ),
      (
        lambda: amj.pipelined_surrogate_minimization(_net(), mesh=_mesh(), num_microbatches=0),
        "num_microbatches=0",
      ),
      (
        lambda: amj.pipelined_surrogate_minimization(_net(), mesh=_mesh(), boundary="middle"),
        "boundary='middle'",
      ),
      (
        lambda: amj.pipelined_surrogate_minimization(_net(), mesh=_mesh(), delta=-1.0),
        "delta=-1.0",
      ),
      (lambda: amj.pipelined_surrogate_minimization(_net(), mesh="cpu"), "mesh='cpu'"),
    ],
  ),
  Case(
    "pipelined_gd_armijo",
    _pipeline_problem(amj.pipelined_gradient_descent, line_search=ArmijoSearch(step_growth=1.0)),
    bad_hyperparams=[
      (
        lambda: amj.pipelined_gradient_descent(_net(), mesh=_mesh(), learning_rate=-0.1),
        "learning_rate=-0.1",
      ),
      (
        lambda: amj.pipelined_gradient_descent(
          _net(), mesh=_mesh(), line_search=ArmijoSearch(armijo_c=0.0)
        ),
        "armijo_c=0.0",
      ),
    ],
  ),
]
