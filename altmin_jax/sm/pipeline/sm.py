r"""Pipeline-parallel surrogate minimization: layer stages on devices, GPipe micro-batches.

Asad et al., "Surrogate Minimization" (SM paper), section 1 and Figure 1: the network's
layers are split over devices and trained with GPipe micro-batching; with SM, every device
then minimises the local losses of its own layers for N steps (Algorithm 1, "do in
parallel") without talking to the others, filling the update phase that plain GPipe + GD
leaves idle.

One step (:func:`pipelined_surrogate_minimization`) runs four phases over the layout of
:mod:`altmin_jax.sm.pipeline.layout` and the schedule of :mod:`altmin_jax.sm.pipeline.gpipe`:

1. **forward**: the GPipe forward pass; every device keeps its layers' inputs and outputs
   :math:`z_t^{(i-1)}, z_t^{(i)}`.
2. the loss and :math:`g_z^{(m)} = \partial h/\partial z^{(m)}` on the full batch of logits.
3. **backward**: the reverse GPipe pass gives every layer's :math:`g_z^{(i)}`; then the
   **curvature chain** :math:`c_{m+1} = L/B, c_m, \dots` runs top-down
   (:func:`~altmin_jax.sm.local_losses.stage_curvature`): device :math:`s` computes the
   constants of its layers once device :math:`s + 1` has sent it :math:`c` of its lowest
   layer (:meth:`~altmin_jax.sm.pipeline.gpipe.Pipeline.top_down`, :math:`S` sequential
   rounds; the paper's Figure 1 does not show this chain, and
   :mod:`altmin_jax.sm.schedule_model` accounts for it).
4. **local solves** with no collective at all: every device minimises each of its layers'
   local losses (:func:`~altmin_jax.sm.local_losses.solve_local_loss`) from data it holds.

The per-layer maths are the single-device functions of :mod:`altmin_jax.sm.local_losses`
applied to zero-padded layers, with traced flags for the first and last stage; padded
entries stay exact zeros (:func:`~altmin_jax.sm.pipeline.layout.stack_params`), and the
start vectors are those of the unpadded arrays (:func:`~altmin_jax.numerics.start_vector`
with real shapes), so every step equals :func:`~altmin_jax.sm.surrogate_minimization`'s to
float tolerance (only summation orders differ).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from altmin_jax import losses as losses_lib
from altmin_jax import numerics
from altmin_jax.core import batches, meshes
from altmin_jax.core.types import Array, Loss
from altmin_jax.networks import LayeredNetwork
from altmin_jax.numerics.line_search import ArmijoSearch
from altmin_jax.sm import _common
from altmin_jax.sm import local_losses as ll
from altmin_jax.sm._common import SMState
from altmin_jax.sm.pipeline import gpipe
from altmin_jax.sm.pipeline.layout import AXIS, layer_fn


def _full(a: Array) -> Array:
  """``(K, M, b, w)`` per-layer buffers as ``(K, B, w)``."""
  return a.reshape(a.shape[0], -1, a.shape[-1])


@dataclasses.dataclass(frozen=True, eq=False)
class SMPipeline:
  """A :class:`~altmin_jax.sm.pipeline.gpipe.Pipeline` and the SM configuration: the
  SM-specific phases of a pipelined step (curvature chain and local solves)."""

  pipe: gpipe.Pipeline
  cfg: ll.SMConfig

  def curvature(self, theta, zin, zout, gz, c_top):
    """The curvature chain over the stacked layers, top-down (one round per device).

    Args:
      theta, zin, zout, gz: stacked layers and buffers from the passes.
      c_top: :math:`c_{i+1}` of the top stacked layer (``L / B`` or the tail's).

    Returns:
      ``(c_next, c_bottom)``: ``(L,)`` constants :math:`c_{i+1}` each layer uses, and the
      constant computed by the lowest stacked layer (for a head outside the pipeline).
    """
    pipe, opts = self.pipe, self.cfg.options
    activation, K = pipe.layout.activation, pipe.layers_per_stage

    def chain(c, theta, zin, zout, gz):
      zin, zout, gz = _full(zin), _full(zout), _full(gz)
      cs = [None] * K
      for k in reversed(range(K)):
        cs[k] = c
        is_first, is_last, w_in, _, stage = pipe.local_flags(k)

        def compute(c, k=k, is_last=is_last, w_in=w_in, stage=stage):
          z = zin[k]
          v0 = numerics.start_vector(opts.seed + stage, z, [(z.shape[0], w_in)])
          return ll.stage_curvature(
            layer_fn(activation, is_last),
            pipe.take(theta, k),
            z,
            gz[k],
            zout[k],
            c,
            v0,
            delta=opts.delta,
            iterations=opts.power_iterations,
            per_sample=True,  # dense layers map samples independently
          )

        # the first network stage needs no c_1
        c = jax.lax.cond(is_first, lambda c: c, compute, c) if k == 0 else compute(c)
      return jnp.stack(cs), c

    out_like = jnp.zeros((K,), c_top.dtype)
    return pipe.top_down(chain, c_top, theta, zin, zout, gz, out_like=out_like)

  def solve(self, theta, zin, zout, gz, c_next, step0):
    """Every device minimises the local losses of its layers (no collectives).

    Returns:
      A :class:`~altmin_jax.sm.local_losses.StageSolve` of stacked ``(L, ...)`` arrays.
    """
    pipe, opts = self.pipe, self.cfg.options
    activation = pipe.layout.activation
    seed = opts.seed + ll.SOLVE_SEED_OFFSET

    def one(th, z_prev, z_out, g_out, c, step, is_first, is_last, w_in, w_out, _stage):
      real = [(w_out,), (w_in, w_out)][-len(th) :]  # sorted keys: bias, kernel
      v0 = numerics.start_vector(seed, th, real)
      fn = layer_fn(activation, is_last)
      return ll.solve_local_loss(opts, fn, is_first, z_prev, th, g_out, z_out, c, step, v0)

    def layer_solve(th, z_prev, z_out, g_out, c, step, *flags):
      z_prev, z_out, g_out = gpipe.flat(z_prev), gpipe.flat(z_out), gpipe.flat(g_out)
      return one(th, z_prev, z_out, g_out, c, step, *flags)

    layer = P(pipe.axis_name)
    specs = ll.StageSolve(pipe.specs(theta, layer), layer, layer, layer)
    # Algorithm 1, "do in parallel": N inner steps on each local loss (Prop. 1, eq. (1)).
    return pipe.map_layers(layer_solve, theta, zin, zout, gz, c_next, step0, out_specs=specs)


def sm_pipeline(
  net: LayeredNetwork,
  loss: Loss = losses_lib.softmax_cross_entropy,
  *,
  mesh: Mesh,
  num_microbatches: int = 1,
  boundary: str = "pad",
  axis_name: str = AXIS,
  **options,
) -> SMPipeline:
  """The :class:`SMPipeline` of a pipelined SM step (its phases, for benchmarks and tests).

  ``options`` are :class:`~altmin_jax.sm.local_losses.SMOptions` fields (the keyword
  arguments of :func:`~altmin_jax.sm.surrogate_minimization`); the other arguments are
  those of :func:`pipelined_surrogate_minimization`.
  """
  try:
    opts = ll.SMOptions(**options)
  except TypeError:
    known = sorted(f.name for f in dataclasses.fields(ll.SMOptions))
    raise ValueError(f"unknown SM options {sorted(options)}; known: {known}") from None
  cfg = ll.sm_config(net, loss, opts)
  pipe = gpipe.make_pipeline(
    cfg.net, mesh, num_microbatches=num_microbatches, boundary=boundary, axis_name=axis_name
  )
  return SMPipeline(pipe, cfg)


def _sm_iteration(sp: SMPipeline, prep: gpipe.Prepared, step_size: Array):
  """One pipelined SM iteration. Returns ``(new_theta, new_head, new_tail, value,
  curvature (m,), (local_loss, inner_iterations, step_size))``, the per-stage arrays
  over all ``m`` network stages."""
  pipe, cfg = sp.pipe, sp.cfg
  net, opts, lay = cfg.net, cfg.options, pipe.layout
  m = net.num_stages
  theta, head, tail = prep.theta, prep.head, prep.tail
  outside = lay.boundary == "outside"
  # Algorithm 1, "access the gradient oracle": one forward and one backward pass.
  fw = gpipe.forward_and_loss(pipe, net, cfg.loss, prep, theta, head, tail)
  gz, _, g_bottom = pipe.backward(theta, fw.zin, fw.g_top, bottom=outside)
  c_last = jnp.asarray(cfg.loss_smoothness / prep.x.shape[0], prep.dtype)  # c_{m+1} = L / B
  step_size = gpipe.to_replicated(pipe, step_size)
  rep = lambda a: gpipe.to_replicated(pipe, a)
  if not outside:
    c_next, _ = sp.curvature(theta, fw.zin, fw.zout, gz, c_last)
    body = sp.solve(theta, fw.zin, fw.zout, gz, c_next, pipe.place(step_size, P(pipe.axis_name)))
    per_stage = (rep(body.model), rep(body.iterations), rep(body.step))
    return optax.tree.add(theta, body.d), None, None, fw.value, rep(c_next), per_stage

  # The tail (c_m from c_{m+1}), the stacked layers (c_{m-1}, ..., c_2), then the head's
  # and tail's local losses on the full batch, replicated: the single-device functions.
  fn_1, fn_m = _common.stage_function(net, 1), _common.stage_function(net, m)
  curvature = lambda *a: ll.stage_curvature(
    *a, delta=opts.delta, iterations=opts.power_iterations, per_sample=True
  )
  z_m = fw.z_below_tail
  v0 = numerics.start_vector(opts.seed + m, z_m)
  c_m = curvature(fn_m, tail, z_m, fw.g_logits, fw.logits, c_last, v0)
  c_next, c_2 = sp.curvature(theta, fw.zin, fw.zout, gz, c_m)
  body = sp.solve(
    theta, fw.zin, fw.zout, gz, c_next, pipe.place(step_size[1:-1], P(pipe.axis_name))
  )
  seed = opts.seed + ll.SOLVE_SEED_OFFSET  # as surrogate_minimization's local solves
  g_head = gpipe.flat(g_bottom)[:, : lay.widths[1]]
  head_solve = ll.solve_local_loss(
    opts,
    fn_1,
    True,
    prep.x,
    head,
    g_head,
    fw.z_head,
    c_2,
    step_size[0],
    numerics.start_vector(seed, head),
  )
  tail_solve = ll.solve_local_loss(
    opts,
    fn_m,
    False,
    z_m,
    tail,
    fw.g_logits,
    fw.logits,
    c_last,
    step_size[-1],
    numerics.start_vector(seed, tail),
  )
  cat = lambda h, b, t: jnp.concatenate([jnp.reshape(h, (1,)), rep(b), jnp.reshape(t, (1,))])
  per_stage = tuple(
    cat(getattr(head_solve, f), getattr(body, f), getattr(tail_solve, f))
    for f in ("model", "iterations", "step")
  )
  return (
    optax.tree.add(theta, body.d),
    optax.tree.add(head, head_solve.d),
    optax.tree.add(tail, tail_solve.d),
    fw.value,
    cat(c_2, c_next, c_last),
    per_stage,
  )


def pipelined_surrogate_minimization(
  net: LayeredNetwork,
  loss: Loss = losses_lib.softmax_cross_entropy,
  *,
  mesh: Mesh,
  num_microbatches: int = 1,
  boundary: str = "pad",
  axis_name: str = AXIS,
  inner_steps: int = 10,
  solver: str = "cg",
  delta: float = 1e-2,
  power_iterations: int = 10,
  loss_smoothness: float | None = None,
  curvature: str = "full",
  curvature_tol: float = 0.0,
  line_search: ArmijoSearch | None = None,
  seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""Surrogate minimization with the layers pipelined over the devices of a mesh axis.

  The same iteration as :func:`~altmin_jax.sm.surrogate_minimization` (SM paper,
  Algorithm 1 with :math:`\rho = 0`, Proposition 1, Appendix A; the formulas are in
  :mod:`altmin_jax.sm.local_losses`), executed as in the paper's Figure 1(b): a GPipe
  forward and backward pass over ``num_microbatches`` micro-batches gives every device the
  stage outputs and output gradients of its layers, the curvature constants pass down the
  pipeline, then every device minimises each of its local losses with ``inner_steps`` = N
  steps of CG or Armijo GD, with no communication (module docstring).

  Args:
    net: a network of dense stages (:func:`~altmin_jax.networks.mlp`).
    loss: per-sample loss; the objective is its batch mean.
    mesh: a mesh with axis ``axis_name`` of ``S`` devices (:func:`pipeline_mesh`); the
      stacked layers must split evenly.
    num_microbatches: M, GPipe micro-batches per batch (the batch size must be a
      multiple).
    boundary: ``"pad"`` (all stages pipelined, zero-padded to common widths) or
      ``"outside"`` (first and last stage run on the full batch outside the pipeline).
    axis_name: the mesh axis of the pipeline stages.
    inner_steps, solver, delta, power_iterations, loss_smoothness, curvature,
      curvature_tol, line_search, seed: the SM options, as in
      :func:`~altmin_jax.sm.surrogate_minimization` (validated by
      :class:`~altmin_jax.sm.local_losses.SMOptions`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state
    :class:`~altmin_jax.sm.SMState`. ``update(grads, state, params, *, batch=(x, y))``
    ignores ``grads`` and takes either :class:`PipelineParams` (from
    :func:`stack_params`, the layer axis sharded over the mesh: the efficient form,
    updates come back the same way) or the network's own params (stacked and unstacked
    inside the step; place them with :func:`replicate_on` so that every step sees the
    placement the previous one returned, with no recompilation).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import altmin_jax as amj
    >>> from altmin_jax.sm import pipeline
    >>> net = amj.networks.mlp([4, 6, 6, 3], activation=jnp.tanh)
    >>> mesh = pipeline.pipeline_mesh(1)
    >>> tx = pipeline.pipelined_surrogate_minimization(net, mesh=mesh, num_microbatches=2)
    >>> params = pipeline.stack_params(net, net.init(jax.random.key(0)), mesh=mesh)
    >>> x, y = jnp.ones((6, 4)), jnp.array([0, 1, 2, 0, 1, 2])
    >>> updates, state = tx.update(None, tx.init(params), params, batch=(x, y))
    >>> params = optax.apply_updates(params, updates)
    >>> state.curvature.shape
    (3,)
  """
  options = ll.SMOptions.from_arguments(locals())
  cfg = ll.sm_config(net, loss, options)
  pipe = gpipe.make_pipeline(
    cfg.net, mesh, num_microbatches=num_microbatches, boundary=boundary, axis_name=axis_name
  )
  sp = SMPipeline(pipe, cfg)
  net = sp.cfg.net
  m = net.num_stages

  def init_fn(params):
    del params
    # replicated on the mesh, where the step puts it (no recompilation on step two)
    return meshes.replicate_on(
      mesh,
      SMState(
        count=np.zeros([], np.int32),
        loss=np.zeros([], np.float32),
        curvature=np.zeros([m], np.float32),
        local_loss=np.zeros([m], np.float32),
        inner_iterations=np.zeros([m], np.int32),
        step_size=np.full([m], sp.cfg.options.line_search.init_step, np.float32),
      ),
    )

  @jax.jit
  def iterate(params, x, y, state):
    prep = gpipe.prepare(sp.pipe, net, params, (x, y), "pipelined surrogate minimization")
    new_theta, new_head, new_tail, value, curv, (model, iters, steps) = _sm_iteration(
      sp, prep, state.step_size.astype(prep.dtype)
    )
    new_state = SMState(
      count=optax.safe_int32_increment(state.count),
      loss=value.astype(jnp.float32),
      curvature=curv.astype(jnp.float32),
      local_loss=model.astype(jnp.float32),
      inner_iterations=iters.astype(jnp.int32),
      step_size=steps.astype(jnp.float32),
    )
    return gpipe.updates(net, prep, new_theta, new_head, new_tail), new_state

  def update_fn(updates, state, params=None, *, batch, **extra_args):
    del updates, extra_args  # SM needs no gradients; unknown extra args are ignored.
    batches.require_params(params, "pipelined surrogate minimization")
    x, y = batches.unpack_batch(net, batch)  # shape checks before tracing the step
    return iterate(params, x, y, state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
