r"""Pipeline-parallel online AM-Adam: layers on devices, codes passed between neighbours.

Choromanska et al., "Beyond Backprop: Online Alternating Minimization with Auxiliary
Variables", ICML 2019 (Algorithms 2.1-2.3). Once the codes are fixed, the weight update of
every layer needs only that layer's input and output codes (eqs. 6-7): no gradient travels
between layers. Here the layers live on different devices and each device updates the
weights it holds.

On a minibatch ``(x, y)`` AM minimises the relaxed objective (eq. 3)

.. math::
   F(W, C) = \mathcal{L}(y, f_{L+1}(W^{L+1}, \sigma_L(c^L)))
     + \mu \sum_{l=1}^{L} \|c^l - f_l(W^l, \sigma_{l-1}(c^{l-1}))\|^2 .

One step of :func:`pipelined_am_adam` is one step of :func:`~altmin_jax.am.am_adam`
(same iterates to float tolerance, only summation orders differ), executed over the
layout of :mod:`altmin_jax.sm.pipeline.layout` (the dense stages stacked on a layer axis,
zero-padded to common widths, sharded ``P('stage')``: device :math:`s` of :math:`S` holds
:math:`K` consecutive layers) with the schedules of :class:`~altmin_jax.sm.pipeline.gpipe.
Pipeline`, on :math:`M` micro-batches of :math:`b = B / M` samples:

1. **Encode** (GPipe forward, :math:`M + S - 1` ticks): at tick :math:`t` device :math:`s`
   runs its layers on micro-batch :math:`j = t - s` and sends the activations to
   :math:`s + 1` (``lax.ppermute``). Every device keeps its layers' inputs
   :math:`a^{i-1} = \sigma_{i-1}(c^{i-1})`.
2. **Input codes** (local, one ``ppermute``): every layer :math:`i` recomputes its code
   :math:`c^i = f_i(W^i, a^{i-1})` where it lives and hands it to the layer above; the
   lowest layer of device :math:`s` receives :math:`c^{i-1}` from device :math:`s - 1`.
   Layer :math:`i` now holds the code *entering* it, the start and proximal anchor of the
   code subproblem it solves next, whose weights :math:`W^i` it holds.
3. **Code updates, top-down** (a reverse GPipe schedule, :math:`M + S - 1` ticks, micro-batch
   :math:`j = t - (S - 1 - s)` on device :math:`s`): layer :math:`i` updates
   :math:`c^{i-1}` once it holds the already updated :math:`c^i`, from the layer above
   on the same device or, for the device's top layer, from device :math:`s + 1`
   (``lax.ppermute``), then passes :math:`c^{i-1}` down. ``code_steps`` = :math:`K_c`
   steps of the code optimizer on the subproblem divided by :math:`\mu` (as
   :mod:`altmin_jax.am.codes`):

   .. math::
      c^L &\leftarrow \arg\min_c\ \mathcal{L}(y, f_{L+1}(W^{L+1}, \sigma_L(c)))/\mu
           + \|c - c^L_{\rm init}\|^2  &\text{(eq. 4, output layer)}\\
      c^{i-1} &\leftarrow \arg\min_c\ \|c^i - f_i(W^i, \sigma_{i-1}(c))\|^2
           + \|c - c^{i-1}_{\rm init}\|^2  &\text{(eq. 5, layer } i \le L)

   The subproblems are separable across samples, so solving them per micro-batch gives
   the full-batch codes exactly (for elementwise code optimizers: SGD, Nesterov, Adam).
4. **Weight updates, no collective**: each device takes ``weight_steps`` = :math:`K_w`
   steps of its layers' persistent optimizers (default Adam) on their own subproblems
   over the whole batch (every micro-batch's codes are stored where the layer lives):

   .. math::
      W^i &\leftarrow \arg\min_W\ \tfrac{\mu}{B} \textstyle\sum_n
         \|c_n^i - f_i(W, \sigma_{i-1}(c_n^{i-1}))\|^2 \qquad (\text{eq. 6}, i \le L)\\
      W^{L+1} &\leftarrow \arg\min_W\ \tfrac1B \textstyle\sum_n
         \mathcal{L}(y_n, f_{L+1}(W, \sigma_L(c_n^L)))

With ``boundary="outside"`` the first and last stage run on the full batch, replicated,
outside the pipeline: the first stage's code :math:`c^1` before the forward pass, the top
code :math:`c^L` (eq. 4) and the last stage's weight step after it, the first stage's
weight step on :math:`c^1` once the reverse pass has brought it down. Zero padding changes
nothing: padded code entries start at zero, their gradients (zero kernel rows and
columns) and proximal terms vanish, padded inputs are masked to zero, so padded weights
receive zero gradients and stay zero under every optax optimizer that maps a zero
gradient with a zero state to a zero update (SGD, momentum, Adam, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from altmin_jax import losses as losses_lib
from altmin_jax.am import codes as codes_lib
from altmin_jax.am import weights as weights_lib
from altmin_jax.am._common import AMConfig, am_config, code_step, gradient_rule, mean_loss
from altmin_jax.core import batches, meshes, trees
from altmin_jax.core.states import checked_transformation
from altmin_jax.core.types import Array, Loss, Optimizers, ScalarOrSchedule
from altmin_jax.loops import optimizer_steps
from altmin_jax.networks import LayeredNetwork, as_arrays, identity
from altmin_jax.sm.pipeline import gpipe
from altmin_jax.sm.pipeline.layout import (
  AXIS,
  PipelineParams,
  fit,
  layer_theta,
  pipeline_layout,
  stack_params,
)

METHOD = "pipelined AM-Adam"


class PipelinedAMState(NamedTuple):
  """State of pipelined AM-Adam: step count, last batch loss and the layers' optimizer
  states (the stacked layers' with a leading layer axis, sharded like the layers)."""

  count: Array  # int32 scalar, minibatches seen
  batch_loss: Array  # float32 scalar, mean loss of the last batch before its update
  weight_states: Any  # optimizer state of the stacked layers, every leaf (layers, ...)
  head_state: Any  # optimizer state of the first stage (boundary="outside"), else EmptyState
  tail_state: Any  # optimizer state of the last stage (boundary="outside"), else EmptyState


# --------------------------------------------------------------- layer maths


def _code(theta: dict, a: Array) -> Array:
  """The pre-activation code ``c = a @ kernel + bias`` of a stacked dense layer."""
  c = a @ theta["kernel"]
  return c + theta["bias"] if "bias" in theta else c


def _input_activation(net: LayeredNetwork, pipe: gpipe.Pipeline) -> Callable:
  """``(c, layer, w_in) -> sigma(c)``: the activation of the stage below a stacked layer
  (traced ``layer``: the identity on the input, the first stage's below an outside
  boundary), the padded entries beyond the layer's real input width ``w_in`` zeroed."""
  lay = pipe.layout
  lowest = identity if lay.first == 0 else net.activation(lay.first)

  def apply(c, layer, w_in):
    a = lay.activation(c)
    if lowest is not lay.activation:
      a = jnp.where(layer == 0, lowest(c), a)
    return jnp.where(jnp.arange(c.shape[-1]) < w_in, a, jnp.zeros_like(a))

  return apply


def _layer_index(pipe: gpipe.Pipeline, k: int):
  """``(global stacked layer, is_last, w_in)`` of this device's local layer ``k``."""
  _, is_last, w_in, _, stage = pipe.local_flags(k)
  return stage - pipe.layout.first - 1, is_last, w_in


# ------------------------------------------------------------------- phases
# Each phase is one jax.shard_map over the pipeline (exposed for benchmarks and tests).


def input_codes(pipe: gpipe.Pipeline, theta, zin, bottom, *, top: bool):
  """Phase 2: every stacked layer's input code ``c^{i-1}`` (``(L, M, b, in_width)``; the
  lowest layer's is ``bottom``, replicated) and, with ``top``, the top layer's output
  code ``(M, b, out_width)`` on every device."""
  lay, K, S = pipe.layout, pipe.layers_per_stage, pipe.num_stages

  def device(theta, zin, bottom):
    s = lax.axis_index(pipe.axis_name)
    outs = [_code(pipe.take(theta, k), zin[k]) for k in range(K)]
    below = pipe.shift(fit(outs[-1], lay.in_width), up=True)  # from device s - 1
    lowest = jnp.where(s == 0, bottom, below)
    cin = jnp.stack([lowest, *(fit(c, lay.in_width) for c in outs[:-1])])
    return cin, pipe.broadcast_from(outs[-1], S - 1) if top else None

  layer = P(pipe.axis_name)
  fn = pipe.shard_map(
    device,
    in_specs=(pipe.specs(theta, layer), layer, P()),
    out_specs=(layer, P() if top else None),
  )
  return fn(theta, zin, bottom)


def code_updates(pipe, cfg: AMConfig, theta, cin, carry_top, mu, *, bottom: bool):
  """Phase 3: the top-down code updates as a reverse GPipe pass.

  The carry entering a layer is ``(c^i updated, labels or None)``; layer ``i`` updates
  ``c^{i-1}`` (eq. 4 for the output layer, eq. 5 otherwise; the input layer has no code
  below) and passes it down. Returns ``((c^{i-1}, c^i) per layer (L, M, b, width),
  bottom)``: the updated codes entering and leaving every layer, and (``bottom``) the
  code below the lowest layer on every device.
  """
  lay, net, cs = pipe.layout, cfg.net, cfg.codes
  logits = lay.widths[-1]
  activation = _input_activation(net, pipe)
  pad = lay.boundary == "pad"

  def step(k, th, c_init, carry, mu):
    above, labels = carry
    layer, is_last, w_in = _layer_index(pipe, k)
    sigma = lambda c: activation(c, layer, w_in)

    def solve(term):
      objective = codes_lib.with_proximal(term, c_init, cs.proximal)
      return codes_lib.minimize(objective, c_init, cs.tx, cs.steps)

    # eq. (5) divided by mu: the updated code above against this layer's map of c
    hidden = lambda: solve(lambda c: codes_lib.squared_norm(above - _code(th, sigma(c))))
    if pad:
      # eq. (4) divided by mu (the output layer) and the input layer (x: nothing to update)
      top = lambda: solve(lambda c: jnp.sum(cfg.loss(_code(th, sigma(c))[:, :logits], labels)) / mu)
      branch = jnp.where(layer == 0, 0, jnp.where(is_last, 1, 2))
      new = lax.switch(branch, (lambda: c_init, top, hidden))
    else:
      new = hidden()
    return (new, above), None, (new, labels)

  b = cin.shape[2]
  like = lambda w: jax.ShapeDtypeStruct((b, w), cin.dtype)
  labels = carry_top[1]
  labels_like = None if labels is None else jax.ShapeDtypeStruct(labels.shape[1:], labels.dtype)
  stored, _, bot = pipe.reverse(
    step,
    theta,
    cin,
    carry_top,
    to_carry=lambda below: (fit(below[0], lay.out_width), below[1]),
    stored_like=(like(lay.in_width), like(lay.out_width)),
    bottom_like=(like(lay.in_width), labels_like) if bottom else None,
    shared=mu,
  )
  return stored, None if bot is None else bot[0]


def weight_updates(pipe, cfg: AMConfig, theta, states, cin, cout, y, mu):
  """Phase 4: ``weight_steps`` optimizer steps of every stacked layer on its own
  subproblem over the whole batch, where the layer lives (no collective)."""
  lay, K = pipe.layout, pipe.layers_per_stage
  tx, steps = cfg.weights.optimizers[lay.first], cfg.weights.steps
  logits = lay.widths[-1]
  activation = _input_activation(cfg.net, pipe)
  pad = lay.boundary == "pad"
  flat = lambda a: a.reshape(-1, a.shape[-1])

  def device(theta, states, cin, cout, y, mu):
    new_theta, new_states = [], []
    for k in range(K):
      layer, is_last, w_in = _layer_index(pipe, k)
      a, target = activation(flat(cin[k]), layer, w_in), flat(cout[k])
      th, st = pipe.take(theta, k), pipe.take(states, k)

      def hidden(a=a, target=target, th=th, st=st):  # eq. (6)
        objective = lambda p: mu * jnp.mean(jnp.sum(jnp.square(target - _code(p, a)), axis=-1))
        return optimizer_steps(objective, th, st, tx, steps)

      def output(a=a, th=th, st=st):
        objective = lambda p: jnp.mean(cfg.loss(_code(p, a)[:, :logits], y))
        return optimizer_steps(objective, th, st, tx, steps)

      updated, opt_state = lax.cond(is_last, output, hidden) if pad else hidden()
      new_theta.append(updated)
      new_states.append(opt_state)
    stack = lambda trees: jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)
    return stack(new_theta), stack(new_states)

  layer = P(pipe.axis_name)
  specs = (pipe.specs(theta, layer), pipe.specs(states, layer))
  fn = pipe.shard_map(device, in_specs=(*specs, layer, layer, P(), P()), out_specs=specs)
  return fn(theta, states, cin, cout, y, mu)


# ----------------------------------------------------------------- the step


def am_step(pipe: gpipe.Pipeline, cfg: AMConfig, prep: gpipe.Prepared, state: PipelinedAMState):
  """One pipelined AM iteration: ``(new_theta, new_head, new_tail, new_state)``."""
  lay, net, M = pipe.layout, cfg.net, pipe.num_microbatches
  m, outside = net.num_stages, lay.boundary == "outside"
  cs, rule = cfg.codes, cfg.weights
  x, y, dtype = prep.x, prep.y, prep.dtype
  mu = jnp.asarray(cs.schedule(state.count))
  # 1. encode: the first stage outside (c^1), the GPipe forward, the last stage outside
  if outside:
    c_first = net.stage_apply(1, prep.head, x)
    a_first, bottom = net.activation(1)(c_first), c_first
  else:
    a_first = bottom = x
  per_micro = lambda a, w: gpipe.microbatches(fit(a, w), M)
  zin, _, top = pipe.forward(prep.theta, per_micro(a_first, lay.in_width))
  top = gpipe.flat(top)
  if outside:
    logits = net.stage_apply(m, prep.tail, top[:, : lay.widths[-2]])
  else:
    logits = top[:, : lay.widths[-1]]
  batch_loss = mean_loss(cfg.loss, logits, y)
  # 2. every layer's input code
  cin, c_top = input_codes(pipe, prep.theta, zin, per_micro(bottom, lay.in_width), top=outside)
  # 3. code updates, top-down: the top code outside (eq. 4), then the reverse pass
  if outside:
    sigma = net.activation(m - 1)
    c_init = gpipe.flat(c_top)[:, : lay.widths[-2]]
    term = lambda c: jnp.sum(cfg.loss(net.stage_apply(m, prep.tail, sigma(c)), y)) / mu
    objective = codes_lib.with_proximal(term, c_init, cs.proximal)
    c_last = codes_lib.minimize(objective, c_init, cs.tx, cs.steps)
    carry_top = (per_micro(c_last, lay.out_width), None)
  else:
    b = x.shape[0] // M
    carry_top = (jnp.zeros((M, b, lay.out_width), dtype), gpipe.microbatches(y, M))
  (cin_new, cout_new), c_bottom = code_updates(
    pipe, cfg, prep.theta, cin, carry_top, mu, bottom=outside
  )
  # 4. weight updates where the layers live; the first and last stage outside
  new_theta, weight_states = weight_updates(
    pipe, cfg, prep.theta, state.weight_states, cin_new, cout_new, y, mu
  )
  new_head, new_tail = prep.head, prep.tail
  head_state, tail_state = state.head_state, state.tail_state
  if outside:
    c_first_new = gpipe.flat(c_bottom)[:, : lay.widths[1]]
    head_objective = weights_lib.layer_objective(net, 1, x, c_first_new, loss=cfg.loss, mu=mu)
    new_head, head_state = optimizer_steps(
      head_objective, prep.head, head_state, rule.optimizers[0], rule.steps
    )
    tail_objective = weights_lib.layer_objective(net, m, sigma(c_last), y, loss=cfg.loss, mu=mu)
    new_tail, tail_state = optimizer_steps(
      tail_objective, prep.tail, tail_state, rule.optimizers[-1], rule.steps
    )
  new_state = PipelinedAMState(
    count=optax.safe_int32_increment(state.count),
    batch_loss=batch_loss,
    weight_states=weight_states,
    head_state=head_state,
    tail_state=tail_state,
  )
  return new_theta, new_head, new_tail, new_state


class AMPipeline(NamedTuple):
  """A :class:`~altmin_jax.sm.pipeline.gpipe.Pipeline` and the validated AM configuration
  of a pipelined AM-Adam step (built by :func:`am_pipeline`; its phases are the functions
  :func:`input_codes`, :func:`code_updates`, :func:`weight_updates` and :func:`am_step`)."""

  pipe: gpipe.Pipeline
  cfg: AMConfig


def am_pipeline(
  net: LayeredNetwork,
  loss: Loss = losses_lib.softmax_cross_entropy,
  *,
  mesh: Mesh,
  num_microbatches: int = 1,
  boundary: str = "pad",
  axis_name: str = AXIS,
  weight_optimizer: Optimizers | None = None,
  output_optimizer: optax.GradientTransformation | None = None,
  weight_steps: int = 1,
  code_steps: int = 5,
  code_lr: float | None = 0.01,
  code_optimizer: str | optax.GradientTransformation = "sgd",
  mu: ScalarOrSchedule = 0.01,
  code_proximal: bool = True,
) -> AMPipeline:
  """The validated :class:`AMPipeline` of :func:`pipelined_am_adam` (same arguments)."""
  rule = gradient_rule(net, weight_optimizer, output_optimizer, weight_steps)
  codes = code_step(mu, code_steps, code_lr, code_optimizer, code_proximal)
  cfg = am_config(net, loss, codes, rule)
  pipe = gpipe.make_pipeline(
    net, mesh, num_microbatches=num_microbatches, boundary=boundary, axis_name=axis_name
  )
  lay = pipe.layout
  stacked = rule.optimizers[lay.first : lay.first + lay.num_layers]
  if any(tx is not stacked[0] for tx in stacked):
    raise ValueError(
      "pipelined AM-Adam runs one weight_optimizer on all stacked layers (vmapped over the "
      f"layer axis): pass a single optax transformation; with boundary={lay.boundary!r} the "
      f"stacked layers are network stages {lay.first + 1}..{lay.first + lay.num_layers}"
      + (" (an output_optimizer needs boundary='outside')" if lay.first == 0 else "")
    )
  return AMPipeline(pipe, cfg)


def unstack_weight_states(net: LayeredNetwork, state: PipelinedAMState, *, boundary: str = "pad"):
  """The per-stage optimizer states of a :class:`PipelinedAMState`, padding dropped: the
  tuple :func:`~altmin_jax.am.am_adam` keeps in ``AMState.weight_states`` (for optimizers
  whose states hold params-shaped trees, as SGD, momentum and Adam do; params-shaped
  parts are ``{'kernel', 'bias'}`` dicts)."""
  lay = pipeline_layout(net, boundary=boundary)
  params_like = lambda t: isinstance(t, dict) and "kernel" in t

  def layer(l):
    w_in, w_out = lay.layer_in_widths[l], lay.layer_out_widths[l]

    def part(t):
      if params_like(t):
        sizes = {"kernel": (w_in, w_out), "bias": (w_out,)}
        return {k: meshes.replicated(v)[l][tuple(slice(n) for n in sizes[k])] for k, v in t.items()}
      return meshes.replicated(t)[l]

    return jax.tree.map(part, state.weight_states, is_leaf=params_like)

  stacked = tuple(layer(l) for l in range(lay.num_layers))
  if boundary == "outside":
    return (state.head_state, *stacked, state.tail_state)
  return stacked


def pipelined_am_adam(
  net: LayeredNetwork,
  loss: Loss = losses_lib.softmax_cross_entropy,
  *,
  mesh: Mesh,
  num_microbatches: int = 1,
  boundary: str = "pad",
  axis_name: str = AXIS,
  weight_optimizer: Optimizers | None = None,
  output_optimizer: optax.GradientTransformation | None = None,
  weight_steps: int = 1,
  code_steps: int = 5,
  code_lr: float | None = 0.01,
  code_optimizer: str | optax.GradientTransformation = "sgd",
  mu: ScalarOrSchedule = 0.01,
  code_proximal: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""Online AM-Adam with the layers pipelined over the devices of a mesh axis.

  The iteration of :func:`~altmin_jax.am.am_adam` (encode, top-down code updates, every
  layer's weight update from the fixed codes), scheduled as in the module docstring: a
  GPipe forward pass over ``num_microbatches`` micro-batches encodes the codes, a reverse
  pass updates them top-down with one ``lax.ppermute`` between neighbouring devices per
  tick, and every device then updates the weights of its own layers with no
  communication. One step equals ``am_adam``'s step with the same hyperparameters to
  float tolerance.

  Args:
    net: a network of dense stages (:func:`~altmin_jax.networks.mlp`) with at least one
      hidden layer; zero-padded hidden layers need ``activation(0) == 0``.
    loss: per-sample loss ``loss(logits, labels) -> (batch,)``.
    mesh: a mesh with axis ``axis_name`` of ``S`` devices
      (:func:`~altmin_jax.sm.pipeline.pipeline_mesh`); the stacked layers must split
      evenly.
    num_microbatches: M, GPipe micro-batches per batch (the batch size must be a
      multiple).
    boundary: ``"pad"`` (all stages pipelined, zero-padded to common widths) or
      ``"outside"`` (first and last stage on the full batch outside the pipeline).
    axis_name: the mesh axis of the pipeline stages.
    weight_optimizer: one optax optimizer for every layer (each layer keeps its own
      state; the stacked layers' states are stacked and sharded like the layers);
      default ``optax.adam(1e-3)``.
    output_optimizer: optimizer of the output layer (``boundary="outside"`` only).
    weight_steps, code_steps, code_lr, code_optimizer, mu, code_proximal: as in
      :func:`~altmin_jax.am.am_adam`. The code subproblems are solved per micro-batch,
      which equals the full-batch solve for elementwise code optimizers (the named ones);
      an optax transformation that couples samples (global-norm clipping) would differ.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state :class:`PipelinedAMState`.
    ``update(grads, state, params, *, batch=(x, y))`` ignores ``grads`` and takes either
    :class:`~altmin_jax.sm.pipeline.PipelineParams` (from
    :func:`~altmin_jax.sm.pipeline.stack_params` with ``mesh``: the efficient form,
    updates come back the same way) or the network's own params (stacked and unstacked
    inside the step). Arithmetic runs in at least float32; the optimizer states are kept
    in that precision.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import altmin_jax as amj
    >>> from altmin_jax.sm import pipeline
    >>> net = amj.networks.mlp([4, 6, 6, 3], activation=jnp.tanh)
    >>> mesh = pipeline.pipeline_mesh(1)
    >>> tx = amj.pipelined_am_adam(net, mesh=mesh, num_microbatches=2, code_steps=2)
    >>> params = pipeline.stack_params(net, net.init(jax.random.key(0)), mesh=mesh)
    >>> x, y = jnp.ones((6, 4)), jnp.array([0, 1, 2, 0, 1, 2])
    >>> updates, state = tx.update(None, tx.init(params), params, batch=(x, y))
    >>> params = optax.apply_updates(params, updates)
    >>> state.weight_states[0].mu["kernel"].shape  # Adam's first moment, per layer
    (3, 6, 6)
  """
  pipe, cfg = am_pipeline(**locals())
  net, rule = cfg.net, cfg.weights
  lay, outside = pipe.layout, boundary == "outside"

  def initial_state(params) -> PipelinedAMState:
    if isinstance(params, PipelineParams):
      stacked = params
    else:
      stacked = stack_params(net, as_arrays(params), boundary=boundary)
    gpipe.check_stacked(stacked, lay)
    dtype = trees.compute_dtype((stacked.kernel, stacked.head, stacked.tail))
    theta = trees.cast_tree(layer_theta(stacked.kernel, stacked.bias), dtype)
    outer = lambda i, p: rule.optimizers[i].init(trees.cast_tree(p, dtype))
    return PipelinedAMState(
      count=jnp.zeros([], jnp.int32),
      batch_loss=jnp.zeros([], jnp.float32),
      weight_states=jax.vmap(rule.optimizers[lay.first].init)(theta),
      head_state=outer(0, stacked.head) if outside else optax.EmptyState(),
      tail_state=outer(-1, stacked.tail) if outside else optax.EmptyState(),
    )

  def init_fn(params):
    # the placement the step returns (layer axis sharded, the rest replicated), so that
    # the second step does not recompile; jitted, so that it also runs inside jit
    shapes = jax.eval_shape(initial_state, params)
    sharded = lambda s: NamedSharding(mesh, meshes.leading_spec(len(s.shape), axis_name))
    replicated = lambda s: NamedSharding(mesh, P())
    shardings = PipelinedAMState(
      *(jax.tree.map(replicated, f) for f in shapes[:2]),
      jax.tree.map(sharded, shapes.weight_states),
      *(jax.tree.map(replicated, f) for f in shapes[3:]),
    )
    state = jax.jit(initial_state, out_shardings=shardings)(params)
    # inside an outer jit the placement must be part of the traced types
    return jax.tree.map(meshes.place, state, shardings)

  @jax.jit
  def iterate(params, x, y, state):
    prep = gpipe.prepare(pipe, net, params, (x, y), METHOD)
    state = state._replace(weight_states=pipe.place(state.weight_states, P(pipe.axis_name)))
    new_theta, new_head, new_tail, new_state = am_step(pipe, cfg, prep, state)
    return gpipe.updates(net, prep, new_theta, new_head, new_tail), new_state

  def update_fn(updates, state, params=None, *, batch, **extra_args):
    del updates, extra_args  # AM needs no gradients; unknown extra args are ignored.
    batches.require_params(params, METHOD)
    x, y = batches.unpack_batch(net, batch, cfg.loss)  # checks before tracing the step
    return iterate(params, x, y, state)

  return checked_transformation(METHOD, init_fn, update_fn)
