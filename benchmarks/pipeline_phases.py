"""Each phase of a pipelined SM and GD step as a jitted function with concrete inputs, for
the pipeline benchmarks (``sm_pipeline.py``, ``am_pipeline.py``) and the tests that read the
phases' HLO."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from altmin_jax.core.types import PyTree
from altmin_jax.networks import LayeredNetwork, stages
from altmin_jax.pipeline import gpipe
from altmin_jax.pipeline.layout import fit
from altmin_jax.sm import local_losses as ll
from altmin_jax.sm.pipelined import SMPipeline


class JittedPhases(dict):
  """``{name: (jitted fn, args)}``, built phase by phase."""

  def add(self, name: str, fn: Callable, *args):
    """Records ``jax.jit(fn)`` with its concrete ``args`` and returns its outputs, the next
    phase's inputs."""
    fn = jax.jit(fn)
    self[name] = (fn, args)
    return fn(*args)


def phase_functions(
  sp: SMPipeline, net: LayeredNetwork, params: PyTree, batch: Any, *, learning_rate: float = 0.1
) -> dict[str, tuple[Callable, tuple]]:
  """Each phase of a pipelined SM and GD step as a jitted function with concrete inputs.

  For benchmarks and tests (``sp`` from :func:`~altmin_jax.sm.pipelined.sm_pipeline`; with
  ``boundary="outside"`` the phases cover the stacked layers and the trial includes the
  head and tail). Returns ``{name: (fn, args)}`` for ``forward`` (GPipe forward pass
  storing every layer's inputs and outputs), ``backward`` (SM's backward pass: output
  gradients only), ``jacobians`` (the logits' Jacobians, a second reverse pass), ``rest``
  (the rest bounds: Lanczos with sweeps up and down the devices), ``solve`` (local solves,
  no collectives), ``gd_backward`` (backward pass accumulating parameter gradients),
  ``gd_update`` (``theta - learning_rate * grad``), ``trial_forward`` (one forward pass
  and the loss: an Armijo trial) and ``communication`` (the passes' ``ppermute``\\ s
  alone); ``fn(*args)`` runs the phase.
  """
  pipe, cfg = sp.pipe, sp.cfg
  net = stages.check_network(net)
  prep = gpipe.prepare(pipe, net, params, batch, "phase_functions")
  lay, M, dtype = pipe.layout, pipe.num_microbatches, prep.dtype
  sc = ll.scales(cfg, prep.x.shape[0], dtype)
  out = JittedPhases()
  add = out.add

  def loss_pass(x, y, theta, head, tail, store=False):
    p = gpipe.Prepared(x, y, None, theta, head, tail, dtype, None)
    return gpipe.forward_and_loss(pipe, net, cfg.loss, p, theta, head, tail, store=store)

  @jax.jit
  def inputs(x, y, theta, head, tail):
    """The pipeline input and what enters the top layer (as in a step)."""
    fw = loss_pass(x, y, theta, head, tail, store=True)
    p = gpipe.Prepared(x, y, None, theta, head, tail, dtype, None)
    jac_top, hess, top_scale = sp.top(p, fw, sc)
    first = x if lay.boundary == "pad" else fw.z_head
    return gpipe.microbatches(fit(first, lay.in_width), M), fw.g_top, jac_top, hess, top_scale

  xin, g_top, jac_top, hess, top_scale = inputs(prep.x, prep.y, prep.theta, prep.head, prep.tail)
  zin, zout, _ = add("forward", lambda th, xi: pipe.forward(th, xi), prep.theta, xin)
  gz, _, _ = add("backward", lambda th, zi, g: pipe.backward(th, zi, g), prep.theta, zin, g_top)
  jac, _ = add("jacobians", sp.jacobians, prep.theta, zin, gz, jac_top)
  rest = lambda th, zi, g, s: sp.rest_bounds(th, zi, g, sc.delta, s)
  e = add("rest", rest, prep.theta, zin, gz, top_scale)
  e = e.reshape(e.shape[0], M, -1)
  steps = pipe.place(jnp.full((lay.num_layers,), 1.0, dtype), P(pipe.axis_name))
  solve = lambda th, zi, zo, g, j, e, st, hs: sp.solve(th, zi, zo, g, j, e, st, hs, sc)
  add("solve", solve, prep.theta, zin, zout, gz, jac, e, steps, hess)
  _, grads, _ = add(
    "gd_backward", lambda th, zi, g: pipe.backward(th, zi, g, grads=True), prep.theta, zin, g_top
  )
  add("gd_update", lambda th, g: optax.tree.add_scale(th, -learning_rate, g), prep.theta, grads)
  trial = lambda x, y, th, hd, tl: loss_pass(x, y, th, hd, tl).value
  add("trial_forward", trial, prep.x, prep.y, prep.theta, prep.head, prep.tail)
  add("communication", pipe.communication, xin, g_top)
  return out
