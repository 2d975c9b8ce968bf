r"""Pipeline-parallel surrogate minimization: layer stages on devices, GPipe micro-batches.

Asad et al., "Surrogate Minimization" (SM paper), section 1 and Figure 1: the network's
layers are split over devices and trained with GPipe micro-batching; with SM, every device
then minimises the local losses of its own layers for N steps (Algorithm 1, "do in
parallel") without talking to the others, filling the update phase that plain GPipe + GD
leaves idle.

One step (:func:`pipelined_surrogate_minimization`) computes exactly the per-stage data of
the single-device step (:mod:`altmin_jax.sm.young_bound`) over the layout of
:mod:`altmin_jax.pipeline.layout` and the schedule of :mod:`altmin_jax.pipeline.gpipe`:

1. **forward** (GPipe, micro-batched): every device keeps its layers' inputs and outputs.
2. the loss and its gradient in the logits on the full batch.
3. **backward** (GPipe reverse pass, micro-batched): every layer's output gradient.
4. **logits' Jacobians** (a second GPipe reverse pass, micro-batched): the carry is the
   per-sample Jacobian of the logits in the current layer's output, ``(b, K, width)``, and
   each layer passes :math:`\bar J J_z` down (one vector-Jacobian product per logit).
5. **rest bounds** (``power_iterations`` Lanczos steps, all layers at once): every layer's
   Lanczos vector climbs the layers above in a GPipe pass up the devices (Jacobian-vector
   products) and comes back in a pass down (vector-Jacobian products), each
   :math:`M + S - 1` ticks over the micro-batches (:meth:`Pipeline.chain
   <altmin_jax.pipeline.gpipe.Pipeline.chain>`: the operator is per sample, so this is
   exact); the recurrences themselves are local.
6. **local solves** with no collective at all: every device minimises each of its layers'
   local losses (:func:`~altmin_jax.sm.local_losses.solve_local_loss`).
7. **the step search** (``step_search``): one forward pass per trial multiple of the step.

Phases 4 and 5 are the curvature data (:class:`PipelinedCurvature`); with
``curvature_refresh`` above 1 they run only on the iterations that refresh it, by the
single-device step's rule (:func:`~altmin_jax.sm.surrogate.lagged_curvature`).

The per-layer maths are the single-device functions applied to zero-padded layers, with
traced flags for the first and last stage; padded entries stay exact zeros
(:func:`~altmin_jax.pipeline.layout.stack_params`) and the start vectors are those of
the unpadded arrays (:func:`~altmin_jax.numerics.start_vector` with real shapes), so every
step equals :func:`~altmin_jax.sm.surrogate_minimization`'s to float tolerance (only
summation orders differ). The paper's literal constants (``majorizer="paper"``) need
Hessian-vector products through every layer above a stage and are not pipelined.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from altmin_jax import losses as losses_lib
from altmin_jax import numerics
from altmin_jax.core import batches, meshes
from altmin_jax.core.options import documented
from altmin_jax.core.states import checked_transformation
from altmin_jax.core.types import Array, Loss
from altmin_jax.networks import LayeredNetwork
from altmin_jax.networks.layered import dense_kernel_bias
from altmin_jax.numerics.line_search import ArmijoSearch
from altmin_jax.pipeline import gpipe
from altmin_jax.pipeline.layout import fit, layer_fn
from altmin_jax.pipeline.options import PipelineOptions
from altmin_jax.sm import local_losses as ll
from altmin_jax.sm import majorizers as mj
from altmin_jax.sm import surrogate as sur
from altmin_jax.sm import young_bound as yb
from altmin_jax.sm._common import SMState, initial_sm_state


def _full(a: Array) -> Array:
  """``(K, M, b, ...)`` per-layer buffers as ``(K, B, ...)``."""
  return a.reshape(a.shape[0], -1, *a.shape[3:])


@dataclasses.dataclass(frozen=True, eq=False)
class SMPipeline:
  """A :class:`~altmin_jax.pipeline.gpipe.Pipeline` and the SM configuration: the
  SM-specific phases of a pipelined step."""

  pipe: gpipe.Pipeline
  cfg: ll.SMConfig

  def _dense(self, th, z, g, last):
    return yb.dense_stage(self.pipe.layout.activation, th["kernel"], th.get("bias"), z, g, last)

  def jacobians(self, theta, zin, gz, jac_top):
    """Phase 4: the logits' Jacobian in every layer's output, ``(L, M, b, K, out_width)``,
    and in the pipeline input, ``(M, b, K, in_width)``, from ``jac_top`` (``(M, b, K,
    out_width)``, the top layer's) by a GPipe reverse pass."""
    pipe, lay = self.pipe, self.pipe.layout

    def step(k, th, mb, jac):
      z, g = mb
      is_last, stage = pipe.local_flags(k)[1], pipe.local_flags(k)[4]
      level = yb.dense_level(self._dense(th, z, g, is_last), yb.tau_factor(stage))
      return jac, None, yb.jacobian_below(level, jac, jnp.zeros(g.shape, g.dtype))

    like = lambda *shape: jax.ShapeDtypeStruct(shape, jac_top.dtype)
    _, b, K, _ = jac_top.shape
    stored, _, bottom = pipe.reverse(
      step,
      theta,
      (zin, gz),
      jac_top,
      to_carry=lambda j: fit(j, lay.out_width),
      stored_like=like(b, K, lay.out_width),
      bottom_like=like(b, K, lay.in_width),
    )
    return stored, bottom

  def rest_bounds(self, theta, zin, gz, delta, top_scale):
    """Phase 5: :math:`e_b` of the rest above every stacked layer's *input* (``(L, B)``):
    per-sample Lanczos (:func:`~altmin_jax.numerics.lanczos`) on
    :func:`~altmin_jax.sm.young_bound.rest_matvec`, whose products are GPipe passes over
    the micro-batches (:meth:`Pipeline.chain <altmin_jax.pipeline.gpipe.Pipeline.chain>`),
    one up the devices (Jacobian-vector products) and one down (vector-Jacobian
    products): the operator acts on each sample alone, so micro-batching it is exact.
    ``top_scale`` is the rest's curvature at the top layer's output (0 above the logits;
    :math:`\\delta` below a tail kept outside the pipeline)."""
    pipe, lay, opts = self.pipe, self.pipe.layout, self.cfg.options
    K, L, M = pipe.layers_per_stage, lay.num_layers, pipe.num_microbatches
    w_in = lay.in_width
    W = max(lay.in_width, lay.out_width)  # the chains' width between layers

    def device(theta, zin, gz, delta, top_scale):
      b = zin.shape[2]
      flags = [pipe.local_flags(k) for k in range(K)]
      # the stages' activation data once on the full batch, sliced per micro-batch
      dense = [
        self._dense(pipe.take(theta, k), _full(zin)[k], _full(gz)[k], flags[k][1]) for k in range(K)
      ]

      def levels(j):
        at = lambda a: None if a is None else a.reshape(M, b, *a.shape[1:])[j]
        return [
          yb.dense_level(
            d._replace(z=at(d.z), s1=at(d.s1), q=at(d.q), r=at(d.r)), yb.tau_factor(flags[k][4])
          )
          for k, d in enumerate(dense)
        ]

      s = lax.axis_index(pipe.axis_name)

      def matvec(q):  # q: (K * B, in_width), this device's slots at its layers' inputs
        q = q.reshape(K, M, b, w_in)

        def up(j, stack):  # stack: (L, b, W), every layer's chain on micro-batch j
          lv, inputs = levels(j), []
          for k in range(K):
            stack = stack.at[s * K + k].set(fit(q[k, j], W))
            inputs.append(stack)
            stack = fit(lv[k].jz(fit(stack, w_in)), W)
          return jnp.stack(inputs), stack

        zero = lambda j: jnp.zeros((L, b, W), q.dtype)
        inputs, top = pipe.chain(up, zero, jnp.zeros((M, K, L, b, W), q.dtype), up=True)

        def down(j, r):
          lv, own = levels(j), []
          for k in reversed(range(K)):
            r = yb.rest_step(lv[k], fit(inputs[j, k], w_in), fit(r, lay.out_width), delta)
            own.append(r[s * K + k])
            r = fit(r, W)
          return jnp.stack(own[::-1]), r

        own, _ = pipe.chain(
          down, lambda j: top_scale * top[j], jnp.zeros((M, K, b, w_in), q.dtype), up=False
        )
        return jnp.swapaxes(own, 0, 1).reshape(K * M * b, w_in)

      stages = [flags[k][4] for k in range(K)]  # stacked layer l's input is z^(stage - 1)
      B = M * b
      v0 = jnp.stack(
        [
          numerics.start_vector(
            opts.seed + mj.REST_SEED_OFFSET + stages[k] - 1, _full(zin)[k], [(B, flags[k][2])]
          )
          for k in range(K)
        ]
      )
      res = numerics.lanczos(
        matvec, v0.reshape(K * B, w_in), opts.power_iterations, per_sample=True
      )
      return (res.ritz + res.residual).reshape(K, B)

    layer = P(pipe.axis_name)
    fn = pipe.shard_map(
      device,
      in_specs=(pipe.specs(theta, layer), layer, layer, P(), P()),
      out_specs=layer,
    )
    return fn(theta, zin, gz, delta, top_scale)

  def top(self, prep: gpipe.Prepared, fw: gpipe.Forward, sc: ll.Scales):
    r"""What enters the top stacked layer from above: the logits' Jacobian in its output
    (``(M, b, K, out_width)``; the tail's, with a tail outside the pipeline), the loss's
    Hessian per sample (``(B, K, K)``, replicated) and the rest's scale there (0 above the
    logits, :math:`\delta` below a tail)."""
    cfg, lay, pipe = self.cfg, self.pipe.layout, self.pipe
    B, dtype, m = prep.x.shape[0], prep.dtype, cfg.net.num_stages
    K = lay.widths[-1]  # logits
    if lay.boundary == "outside":  # the tail's logits' Jacobian in its input, z^(m - 1)
      kernel, bias = dense_kernel_bias(prep.tail)
      kind = mj.stage_kind(cfg.net, m)
      d_m = yb.dense_stage(kind.activation, kernel, bias, fw.z_below_tail, fw.g_logits, True)
      jac_top = yb.jacobian_below(yb.dense_level(d_m, 0.0), None, fw.logits)
      top_scale = sc.delta
    else:
      jac_top = jnp.broadcast_to(jnp.eye(K, dtype=dtype)[None], (B, K, K))
      top_scale = jnp.zeros([], dtype)
    jac_top = gpipe.microbatches(fit(jac_top, lay.out_width), pipe.num_microbatches)
    hess = gpipe.to_replicated(pipe, mj.loss_hessians(cfg, fw.logits, prep.y))
    return jac_top, hess, top_scale

  def solve(self, theta, zin, zout, gz, jac, e, step0, hess, sc: ll.Scales, warm=None):
    """Phase 6: every device minimises the local losses of its layers (no collectives),
    from their previous steps ``warm`` (stacked like ``theta``) with ``cg_warm_start``.

    Returns:
      A :class:`~altmin_jax.sm.local_losses.StageSolve` of stacked ``(L, ...)`` arrays.
    """
    pipe, opts = self.pipe, self.cfg.options
    activation = pipe.layout.activation
    seed = opts.seed + ll.SOLVE_SEED_OFFSET

    def one(th, z_prev, z_out, g_out, jac, e, step, w, is_first, is_last, w_in, w_out, stage, hess):
      flat = lambda a: a.reshape(-1, *a.shape[2:])
      bound = yb.Bound(flat(jac), e.reshape(-1), hess)
      data = ll.StageData(flat(z_prev), th, flat(g_out), flat(z_out), bound)
      kind = mj.StageKind(layer_fn(activation, is_last), activation)
      lq = ll.local_quadratic(opts, kind, is_first, is_last, stage.astype(e.dtype), data, sc)
      real = [(w_out,), (w_in, w_out)][-len(th) :]  # sorted keys: bias, kernel
      return ll.solve_local_loss(opts, lq, step, seed, real, warm=w)

    layer = P(pipe.axis_name)
    specs = ll.StageSolve(pipe.specs(theta, layer), layer, layer, layer, layer)
    # Algorithm 1, "do in parallel": N inner steps on each local loss (Prop. 1, eq. (1)).
    return pipe.map_layers(
      one, theta, zin, zout, gz, jac, e, step0, warm, out_specs=specs, shared=hess
    )


def _sm_pipeline(cfg: ll.SMConfig, pipeline: PipelineOptions) -> SMPipeline:
  if not cfg.options.majorizer.pipelined:
    raise ValueError(
      "pipelined surrogate minimization computes majorizer='young' (the paper's constants "
      f"need Hessian-vector products through every layer above a stage), got "
      f"majorizer={cfg.options.majorizer!r}"
    )
  return SMPipeline(gpipe.make_pipeline(cfg.net, pipeline), cfg)


def sm_pipeline(
  net: LayeredNetwork,
  loss: Loss = losses_lib.softmax_cross_entropy,
  *,
  pipeline: PipelineOptions,
  **options,
) -> SMPipeline:
  """The :class:`SMPipeline` of a pipelined SM step (its phases, for benchmarks and tests).

  ``options`` are :class:`~altmin_jax.sm.local_losses.SMOptions` fields (the keyword
  arguments of :func:`~altmin_jax.sm.surrogate_minimization`); ``pipeline`` holds the
  pipeline keywords of :func:`pipelined_surrogate_minimization`.
  """
  try:
    opts = ll.SMOptions(**options)
  except TypeError:
    known = sorted(f.name for f in dataclasses.fields(ll.SMOptions))
    raise ValueError(f"unknown SM options {sorted(options)}; known: {known}") from None
  return _sm_pipeline(ll.sm_config(net, loss, opts), pipeline)


class PipelinedCurvature(NamedTuple):
  """A pipelined iteration's curvature data (:class:`~altmin_jax.sm.young_bound.Bound`\\ s
  of every layer; what ``curvature_refresh`` keeps in the state)."""

  jac: Array  # (L, M, b, K, out_width), sharded: the logits' Jacobian in each layer's output
  e: Array  # (L, M, b), sharded: the rest bound above each layer's output
  hess: Array  # (B, K, K), replicated: the loss's Hessians in the logits
  jac_head: Array | None  # (B, K, w_1), boundary="outside": in the head's output
  e_head: Array | None  # (B,), boundary="outside": the rest above the head's output


class _Pass(NamedTuple):
  """A pipelined iteration's forward and backward pass."""

  fw: gpipe.Forward
  gz: Array  # (L, M, b, out_width), sharded: every layer's output gradient
  g_bottom: Array | None  # (M, b, in_width): the gradient in the pipeline input (outside)
  sc: ll.Scales


def _forward_backward(sp: SMPipeline, prep: gpipe.Prepared) -> _Pass:
  """Algorithm 1, "access the gradient oracle": one forward and one backward pass."""
  pipe, cfg = sp.pipe, sp.cfg
  fw = gpipe.forward_and_loss(pipe, cfg.net, cfg.loss, prep, prep.theta, prep.head, prep.tail)
  outside = pipe.layout.boundary == "outside"
  gz, _, g_bottom = pipe.backward(prep.theta, fw.zin, fw.g_top, bottom=outside)
  return _Pass(fw, gz, g_bottom, ll.scales(cfg, prep.x.shape[0], prep.dtype))


def _curvature(sp: SMPipeline, prep: gpipe.Prepared, ps: _Pass, top) -> PipelinedCurvature:
  """Phases 4 and 5: the logits' Jacobians (one reverse GPipe pass) and the rest bounds
  (Lanczos on GPipe passes), placed as the state keeps them."""
  pipe, lay = sp.pipe, sp.pipe.layout
  B, dtype, K, M = prep.x.shape[0], prep.dtype, lay.widths[-1], pipe.num_microbatches
  fw = ps.fw
  jac_top, hess, top_scale = top  # SMPipeline.top, outside the refresh rule's lax.cond
  jac, jac_bottom = sp.jacobians(prep.theta, fw.zin, ps.gz, jac_top)
  # at each layer's input; replicated (B floats a layer) to shift it by one layer
  rest_in = gpipe.to_replicated(
    pipe, sp.rest_bounds(prep.theta, fw.zin, ps.gz, ps.sc.delta, top_scale)
  )
  # a layer's e is the rest at the next layer's input; the top layer's is top_scale
  e = jnp.concatenate([rest_in[1:], jnp.full((1, B), top_scale, dtype)]).reshape(-1, M, B // M)
  jac_head = e_head = None
  if lay.boundary == "outside":
    jac_head = jac_bottom.reshape(B, K, lay.in_width)[:, :, : lay.widths[1]]
    e_head = rest_in[0]
  return _place_curvature(pipe, PipelinedCurvature(jac, e, hess, jac_head, e_head))


def _place_curvature(pipe: gpipe.Pipeline, c: PipelinedCurvature) -> PipelinedCurvature:
  layer, rep = P(pipe.axis_name), lambda a: pipe.place(a, P())
  return PipelinedCurvature(
    pipe.place(c.jac, layer), pipe.place(c.e, layer), rep(c.hess), rep(c.jac_head), rep(c.e_head)
  )


def _solve(
  sp: SMPipeline, prep: gpipe.Prepared, ps: _Pass, curv: PipelinedCurvature, step_size, warm
):
  """Phase 6 on every layer (and on the head and the tail kept outside the pipeline):
  ``((d_theta, d_head, d_tail), slope, (local_loss, inner_iterations, step_size))``,
  the per-stage arrays over all ``m`` network stages."""
  pipe, cfg = sp.pipe, sp.cfg
  net, lay, m = cfg.net, pipe.layout, cfg.net.num_stages
  outside = lay.boundary == "outside"
  rep = lambda a: gpipe.to_replicated(pipe, a)
  fw, sc = ps.fw, ps.sc
  warm = (None, None, None) if warm is None else warm
  steps = step_size[1:-1] if outside else step_size
  body = sp.solve(
    prep.theta,
    fw.zin,
    fw.zout,
    ps.gz,
    curv.jac,
    curv.e,
    pipe.place(rep(steps), P(pipe.axis_name)),
    curv.hess,
    sc,
    warm[0],
  )
  fields = ("model", "iterations", "step")
  if not outside:
    return (
      (body.d, None, None),
      jnp.sum(rep(body.slope)),
      tuple(rep(getattr(body, f)) for f in fields),
    )

  # the head and the tail, on the full batch, replicated: the single-device functions
  seed = cfg.options.seed + ll.SOLVE_SEED_OFFSET
  B = prep.x.shape[0]
  head_data = ll.StageData(
    prep.x,
    prep.head,
    gpipe.flat(ps.g_bottom)[:, : lay.widths[1]],
    fw.z_head,
    yb.Bound(curv.jac_head, curv.e_head, curv.hess),
  )
  tail_data = ll.StageData(
    fw.z_below_tail,
    prep.tail,
    fw.g_logits,
    fw.logits,
    yb.Bound(None, jnp.zeros(B, prep.dtype), curv.hess),
  )
  solves = []
  for i, data, w in ((1, head_data, warm[1]), (m, tail_data, warm[2])):
    lq = ll.local_quadratic(cfg.options, mj.stage_kind(net, i), i == 1, i == m, float(i), data, sc)
    solves.append(
      ll.solve_local_loss(cfg.options, lq, step_size[0 if i == 1 else -1], seed, warm=w)
    )
  head_solve, tail_solve = solves
  cat = lambda h, b, t: jnp.concatenate([jnp.reshape(h, (1,)), rep(b), jnp.reshape(t, (1,))])
  per_stage = tuple(
    cat(getattr(head_solve, f), getattr(body, f), getattr(tail_solve, f)) for f in fields
  )
  slope = jnp.sum(rep(body.slope)) + head_solve.slope + tail_solve.slope
  return (body.d, head_solve.d, tail_solve.d), slope, per_stage


def _summary(sp: SMPipeline, curv: PipelinedCurvature) -> Array:
  """Every stage's largest rest bound (``SMState.curvature``, ``(m,)``)."""
  body = gpipe.to_replicated(sp.pipe, jnp.max(curv.e.reshape(curv.e.shape[0], -1), axis=1))
  if curv.e_head is None:
    return body
  zero = jnp.zeros((1,), body.dtype)
  return jnp.concatenate([jnp.max(curv.e_head)[None], body, zero])


def _iteration(sp: SMPipeline, prep: gpipe.Prepared, state: SMState):
  """One pipelined SM iteration: the single-device iteration's rules
  (:func:`~altmin_jax.sm.surrogate.sm_iteration`: the ``curvature_refresh`` rule, warm
  starts, the step search) on the pipelined phases. Returns ``(new (theta, head, tail),
  new state)``."""
  pipe, cfg = sp.pipe, sp.cfg
  opts, net = cfg.options, cfg.net
  ps = _forward_backward(sp, prep)
  point = (prep.theta, prep.head, prep.tail)
  key = sur.batch_key(prep.x, prep.y)
  same_batch = jnp.all(key == state.batch_key)
  carried = state.search_step.astype(prep.dtype)
  warm = state.previous_step if opts.cg_warm_start else None
  step_size = state.step_size.astype(prep.dtype)

  def attempt(curv):
    d, slope, per_stage = _solve(sp, prep, ps, curv, step_size, warm)
    res = None
    if opts.step_search is not None:

      def value_at(a):
        th, hd, tl = optax.tree.add_scale(point, a, d)
        return gpipe.forward_and_loss(pipe, net, cfg.loss, prep, th, hd, tl, store=False).value

      init = sur.first_trial(opts.step_search, carried, same_batch)
      res = sur.search_step(value_at, ps.fw.value, slope, init, opts.step_search)
    return d, per_stage, res

  # the entry data from above (cheap: replicated, no pass) outside the refresh rule's
  # lax.cond: computed inside its branch, the tail's Jacobian of boundary="outside" made
  # XLA:CPU return corrupt buffers (a segfault on reading the params) on 2 devices
  top = sp.top(prep, ps.fw, ps.sc)
  stored = state.stored_curvature
  if jax.tree.leaves(stored):  # placed as _curvature places it, for both branches of the rule
    stored = _place_curvature(pipe, stored)
  carry = sur.Carry(step_size, carried, state.since_refresh, stored, state.batch_key, warm)
  (curv, d, (model, iters, steps), res), refreshed = sur.lagged_curvature(
    opts, carry, same_batch, lambda: _curvature(sp, prep, ps, top), attempt
  )
  multiple, trials, next_search = sur.search_outcome(res, opts.step_search, carried)
  new = optax.tree.add_scale(point, multiple, d)
  new_state = SMState(
    count=optax.safe_int32_increment(state.count),
    loss=ps.fw.value.astype(jnp.float32),
    curvature=_summary(sp, curv).astype(jnp.float32),
    local_loss=model.astype(jnp.float32),
    inner_iterations=iters.astype(jnp.int32),
    step_size=steps.astype(jnp.float32),
    search_step=jnp.asarray(next_search, jnp.float32),
    step_multiple=jnp.asarray(multiple, jnp.float32),
    search_trials=jnp.asarray(trials, jnp.int32),
    refreshed=refreshed,
    since_refresh=jnp.where(refreshed, 0, state.since_refresh + 1).astype(jnp.int32),
    stored_curvature=curv if opts.curvature_refresh > 1 else (),
    batch_key=key,
    previous_step=d if opts.cg_warm_start else (),
  )
  return new, new_state


@documented(PipelineOptions)
def pipelined_surrogate_minimization(
  net: LayeredNetwork,
  loss: Loss = losses_lib.softmax_cross_entropy,
  *,
  mesh: Mesh,
  num_microbatches: int = PipelineOptions.num_microbatches,
  boundary: str = PipelineOptions.boundary,
  axis_name: str = PipelineOptions.axis_name,
  inner_steps: int = ll.SMOptions.inner_steps,
  solver: str = ll.SMOptions.solver,
  majorizer: str | mj.Majorizer = ll.SMOptions.majorizer,
  delta: float = ll.SMOptions.delta,
  power_iterations: int = ll.SMOptions.power_iterations,
  loss_smoothness: float | None = ll.SMOptions.loss_smoothness,
  curvature: str = ll.SMOptions.curvature,
  curvature_tol: float = ll.SMOptions.curvature_tol,
  line_search: ArmijoSearch | None = ll.SMOptions.line_search,
  seed: int = ll.SMOptions.seed,
  step_search: ArmijoSearch | None = ll.SMOptions.step_search,
  cg_warm_start: bool = ll.SMOptions.cg_warm_start,
  curvature_refresh: int = ll.SMOptions.curvature_refresh,
) -> optax.GradientTransformationExtraArgs:
  r"""Surrogate minimization with the layers pipelined over the devices of a mesh axis.

  The same iteration as :func:`~altmin_jax.sm.surrogate_minimization` (SM paper,
  Algorithm 1 with :math:`\rho = 0`; the local losses are those of
  :mod:`altmin_jax.sm.local_losses`), executed as in the paper's Figure 1(b): GPipe passes
  over ``num_microbatches`` micro-batches give every device the stage data of its layers,
  then every device minimises each of its local losses with ``inner_steps`` = N steps of
  CG or Armijo GD, with no communication (module docstring).

  Args:
    net: a network of dense stages (:func:`~altmin_jax.networks.mlp`).
    loss: per-sample loss; the objective is its batch mean.
    mesh, num_microbatches, boundary, axis_name: the pipeline options
      (:class:`~altmin_jax.pipeline.PipelineOptions`).
    inner_steps, solver, majorizer, delta, power_iterations, loss_smoothness, curvature,
      curvature_tol, line_search, seed, step_search, cg_warm_start, curvature_refresh: the SM
      options, as in
      :func:`~altmin_jax.sm.surrogate_minimization` (validated by
      :class:`~altmin_jax.sm.local_losses.SMOptions`; ``majorizer`` must be ``"young"``).
      With ``curvature_refresh`` above 1 an iteration on stored curvature runs no Jacobian
      pass and no rest sweeps (:func:`~altmin_jax.sm.surrogate.lagged_curvature`, the
      single-device step's rule); the state then holds the stacked curvature data
      (:class:`PipelinedCurvature`, sharded like the layers) after the first update, so a
      jitted step compiles once more on its second call. With ``cg_warm_start`` the state
      holds the previous steps, stacked like the params.

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
    >>> from altmin_jax import pipeline
    >>> net = amj.networks.mlp([4, 6, 6, 3], activation=jnp.tanh)
    >>> mesh = pipeline.pipeline_mesh(1)
    >>> tx = amj.pipelined_surrogate_minimization(net, mesh=mesh, num_microbatches=2)
    >>> params = pipeline.stack_params(net, net.init(jax.random.key(0)), mesh=mesh)
    >>> x, y = jnp.ones((6, 4)), jnp.array([0, 1, 2, 0, 1, 2])
    >>> updates, state = tx.update(None, tx.init(params), params, batch=(x, y))
    >>> params = optax.apply_updates(params, updates)
    >>> state.curvature.shape
    (3,)
  """
  options = ll.SMOptions.from_arguments(locals())
  pipeline = PipelineOptions.from_arguments(locals())
  sp = _sm_pipeline(ll.sm_config(net, loss, options), pipeline)
  net, pipe, loss_fn = sp.cfg.net, sp.pipe, sp.cfg.loss
  m = net.num_stages

  def init_fn(params):
    # replicated on the mesh, where the step puts it (no recompilation on step two)
    state = meshes.replicate_on(mesh, initial_sm_state(sp.cfg.options, m))
    if not sp.cfg.options.cg_warm_start:
      return state
    # zero previous steps, stacked and placed as the step returns its steps
    _, theta, head, tail, _, _ = gpipe.prepare_params(pipe, net, params)
    return state._replace(previous_step=jax.tree.map(lambda a: a * 0, (theta, head, tail)))

  @jax.jit
  def iterate(params, x, y, state):
    prep = gpipe.prepare(sp.pipe, net, params, (x, y), "pipelined surrogate minimization")
    (new_theta, new_head, new_tail), new_state = _iteration(sp, prep, state)
    return gpipe.updates(net, prep, new_theta, new_head, new_tail), new_state

  def update_fn(updates, state, params=None, *, batch, **extra_args):
    del updates, extra_args  # SM needs no gradients; unknown extra args are ignored.
    batches.require_params(params, "pipelined surrogate minimization")
    x, y = batches.unpack_batch(net, batch, sp.cfg.loss)  # checks before tracing the step
    return iterate(params, x, y, state)

  return checked_transformation("pipelined surrogate minimization", init_fn, update_fn)
