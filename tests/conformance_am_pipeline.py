"""Conformance cases of pipelined AM-Adam and AM-mem (issue 17).

The conformance suite runs in one process with one CPU device, so the pipeline is a
1-device mesh (all layers on one stage) with 2 GPipe micro-batches: the shard_map phases,
the micro-batch scans, the stacked optimizer states and the stacking of network-form
params all run. The params are placed replicated on the mesh (where the step keeps
them), as a user of a real mesh would. Multi-device behaviour is tested in
``test_am_pipeline.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from conformance import Case, Problem
from helpers import small_mlp, teacher_classification

import altmin_jax as amj
from altmin_jax import pipeline as pl


def _net(dtype=jnp.float32):
  return small_mlp(dtype)  # 6-8-8-3 tanh


def _mesh():
  return pl.pipeline_mesh(1)


AM_KW = dict(code_steps=3, code_lr=0.03, mu=0.05, weight_optimizer=optax.adam(3e-2))


MEM_KW = dict(code_steps=3, code_lr=0.03, mu=0.05, sweeps=2, output_optimizer=optax.adam(3e-2))


def _make(dtype, factory=amj.pipelined_am_adam, kw=AM_KW) -> Problem:
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
    tx=factory(net, mesh=mesh, num_microbatches=2, **kw),
    params=params,
    extra_args=lambda step: {"batch": batches[step % len(batches)]},
    loss=loss,
    bad_extra_args={"batch": (jnp.ones((bx.shape[0], 5), dtype), by)},
    nonfinite_extra_args={"batch": (bx.at[0, 0].set(jnp.nan), by)},
    num_classes=3,
  )


CASES: list[Case] = [
  Case(
    "pipelined_am_adam",
    _make,
    bad_hyperparams=[
      (lambda: amj.pipelined_am_adam(_net(), mesh=_mesh(), code_steps=-1), "code_steps=-1"),
      (lambda: amj.pipelined_am_adam(_net(), mesh=_mesh(), code_lr=-0.5), "code_lr=-0.5"),
      (lambda: amj.pipelined_am_adam(_net(), mesh=_mesh(), mu=0.0), "mu=0.0"),
      (lambda: amj.pipelined_am_adam(_net(), mesh=_mesh(), weight_steps=0), "weight_steps=0"),
      (
        lambda: amj.pipelined_am_adam(_net(), mesh=_mesh(), num_microbatches=0),
        "num_microbatches=0",
      ),
      (
        lambda: amj.pipelined_am_adam(_net(), mesh=_mesh(), boundary="middle"),
        "boundary='middle'",
      ),
      (lambda: amj.pipelined_am_adam(_net(), mesh="cpu"), "mesh='cpu'"),
    ],
  ),
  Case(
    "pipelined_am_mem",
    lambda dtype: _make(dtype, amj.pipelined_am_mem, MEM_KW),
    bad_hyperparams=[
      (lambda: amj.pipelined_am_mem(_net(), mesh=_mesh(), code_steps=-1), "code_steps=-1"),
      (lambda: amj.pipelined_am_mem(_net(), mesh=_mesh(), mu=0.0), "mu=0.0"),
      (lambda: amj.pipelined_am_mem(_net(), mesh=_mesh(), sweeps=0), "sweeps=0"),
      (lambda: amj.pipelined_am_mem(_net(), mesh=_mesh(), solver="lu"), "solver='lu'"),
      (lambda: amj.pipelined_am_mem(_net(), mesh=_mesh(), forgetting=1.5), "forgetting=1.5"),
      (lambda: amj.pipelined_am_mem(_net(), mesh=_mesh(), ridge=-1.0), "ridge=-1.0"),
      (lambda: amj.pipelined_am_mem(_net(), mesh=_mesh(), output_steps=0), "output_steps=0"),
      (
        lambda: amj.pipelined_am_mem(_net(), mesh=_mesh(), num_microbatches=0),
        "num_microbatches=0",
      ),
      (
        lambda: amj.pipelined_am_mem(_net(), mesh=_mesh(), boundary="middle"),
        "boundary='middle'",
      ),
      (lambda: amj.pipelined_am_mem(_net(), mesh="cpu"), "mesh='cpu'"),
    ],
  ),
]
