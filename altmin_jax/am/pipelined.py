r"""Pipeline-parallel online AM (AM-Adam, AM-mem): layers on devices, codes passed
between neighbours.

Choromanska et al., "Beyond Backprop: Online Alternating Minimization with Auxiliary
Variables", ICML 2019 (Algorithms 2.1-2.3). Once the codes are fixed, the weight update of
every layer needs only that layer's input and output codes (eqs. 6-7): no gradient travels
between layers. Here the layers live on different devices and each device updates the
weights (and, for AM-mem, the co-activation memories) it holds.

On a minibatch ``(x, y)`` AM minimises the relaxed objective (eq. 3)

.. math::
   F(W, C) = \mathcal{L}(y, f_{L+1}(W^{L+1}, \sigma_L(c^L)))
     + \mu \sum_{l=1}^{L} \|c^l - f_l(W^l, \sigma_{l-1}(c^{l-1}))\|^2 .

One step of :func:`pipelined_am_adam` (:func:`pipelined_am_mem`) is one step of
:func:`~altmin_jax.am.am_adam` (:func:`~altmin_jax.am.am_mem`): same iterates to float
tolerance, only summation orders differ. It runs over the layout of
:mod:`altmin_jax.pipeline.layout` (the dense stages stacked on a layer axis,
zero-padded to common widths, sharded ``P('stage')``: device :math:`s` of :math:`S` holds
:math:`K` consecutive layers) with the schedules of :class:`~altmin_jax.pipeline.gpipe.
Pipeline`, on :math:`M` micro-batches of :math:`b = B / M` samples; the phases are in
:mod:`altmin_jax.am.pipelined_phases`:

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
4. **Weight updates, no collective**: each device updates its own layers from their codes
   over the whole batch (every micro-batch's codes are stored where the layer lives).
   The output layer takes :math:`K_w` steps of its persistent optimizer on
   :math:`\tfrac1B \sum_n \mathcal{L}(y_n, f_{L+1}(W, \sigma_L(c_n^L)))`. A hidden layer
   :math:`i \le L`, under AM-Adam, takes ``weight_steps`` = :math:`K_w` steps of its
   persistent optimizer (default Adam) on

   .. math::
      \tfrac{\mu}{B} \textstyle\sum_n \|c_n^i - f_i(W, \sigma_{i-1}(c_n^{i-1}))\|^2
      \qquad (\text{eq. 6});

   under AM-mem it accumulates its co-activation memories, kept (stacked and sharded like
   the layers) on the device that holds it, with :math:`a_n = [\sigma_{i-1}(c_n^{i-1}); 1]`
   and the forgetting factor :math:`\beta` (Algorithm 2.3, ``updateMemory``),

   .. math::
      A^i \leftarrow \beta A^i + \textstyle\sum_n a_n a_n^\top, \qquad
      B^i \leftarrow \beta B^i + \textstyle\sum_n c_n^i a_n^\top,

   and moves :math:`W^i = [K^{i\top}, b^i]` towards the minimiser of the memory
   surrogate (eq. 7), :math:`\arg\min_W \mathrm{Tr}(W^\top W A^i) - 2\,\mathrm{Tr}(W^\top B^i)`,
   by ``sweeps`` block-coordinate sweeps over the columns,
   :math:`w_j \leftarrow w_j + (b_j - W a_j) / A^i_{jj}`, or exactly,
   :math:`W = B^i (A^i + \lambda I)^{-1}` (:func:`~altmin_jax.am.weights.exact_solve`).

With ``boundary="outside"`` the first and last stage run on the full batch, replicated,
outside the pipeline: the first stage's code :math:`c^1` before the forward pass, the top
code :math:`c^L` (eq. 4) and the last stage's weight step after it, the first stage's
weight step (AM-mem: its memories, replicated, and their solve) on :math:`c^1` once the
reverse pass has brought it down. Zero padding changes no result (see
:mod:`altmin_jax.am.pipelined_phases`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from altmin_jax import losses as losses_lib
from altmin_jax.am import codes as codes_lib
from altmin_jax.am import weights as weights_lib
from altmin_jax.am._common import (
  AMConfig,
  CodeStepOptions,
  am_config,
  gradient_rule,
  memory_rule,
)
from altmin_jax.am.pipelined_phases import (
  code_updates,
  input_codes,
  stacked_optimizer,
  weight_updates,
)
from altmin_jax.core import batches, meshes, trees
from altmin_jax.core.options import documented
from altmin_jax.core.states import checked_transformation
from altmin_jax.core.types import Array, Loss, Optimizers, ScalarOrSchedule
from altmin_jax.loops import optimizer_steps
from altmin_jax.networks import LayeredNetwork, as_arrays
from altmin_jax.networks.stages import batch_mean_loss
from altmin_jax.pipeline import gpipe
from altmin_jax.pipeline.layout import (
  PipelineParams,
  fit,
  layer_theta,
  pipeline_layout,
  stack_params,
)
from altmin_jax.pipeline.options import PipelineOptions


class PipelinedAMState(NamedTuple):
  """State of pipelined online AM: step count, last batch loss, the layers' optimizer
  states and (AM-mem) co-activation memories, the stacked layers' with a leading layer
  axis, sharded like the layers."""

  count: Array  # int32 scalar, minibatches seen
  batch_loss: Array  # float32 scalar, mean loss of the last batch before its update
  weight_states: Any  # optimizer state of the stacked gradient layers, every leaf (layers, ...)
  head_state: Any  # optimizer state of the first stage (outside, AM-Adam), else EmptyState
  tail_state: Any  # optimizer state of the last stage (boundary="outside"), else EmptyState
  memory: Any  # AM-mem: the stacked layers' CoactivationMemory (layers, ...); AM-Adam: ()
  head_memory: Any  # AM-mem, boundary="outside": the first stage's CoactivationMemory, else ()


LAYERED = ("weight_states", "memory")  # the state fields sharded over the layer axis


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
  batch_loss = batch_mean_loss(cfg.loss, logits, y).astype(jnp.float32)
  # 2. every layer's input code
  cin, c_top = input_codes(pipe, prep.theta, zin, per_micro(bottom, lay.in_width), top=outside)
  # 3. code updates, top-down: the top code outside (eq. 4), then the reverse pass
  if outside:
    sigma = net.activation(m - 1)
    c_init = gpipe.flat(c_top)[:, : lay.widths[-2]]
    term = lambda c: jnp.sum(cfg.loss(net.stage_apply(m, prep.tail, sigma(c)), y)) / mu
    objective = codes_lib.with_proximal(term, c_init, cs.code_proximal)
    c_last = codes_lib.minimize(objective, c_init, cs.tx, cs.code_steps)
    carry_top = (per_micro(c_last, lay.out_width), None)
  else:
    b = x.shape[0] // M
    carry_top = (jnp.zeros((M, b, lay.out_width), dtype), gpipe.microbatches(y, M))
  (cin_new, cout_new), c_bottom = code_updates(
    pipe, cfg, prep.theta, cin, carry_top, mu, bottom=outside
  )
  # 4. weight updates where the layers live; the first and last stage outside
  shared = (mu, jnp.asarray(rule.forgetting, dtype), jnp.asarray(rule.ridge, dtype))
  new_theta, weight_states, memory = weight_updates(
    pipe, cfg, prep.theta, state.weight_states, state.memory, cin_new, cout_new, y, shared
  )
  new_head, new_tail = prep.head, prep.tail
  head_state, tail_state, head_memory = state.head_state, state.tail_state, state.head_memory
  if outside:
    c_first_new = gpipe.flat(c_bottom)[:, : lay.widths[1]]
    if rule.uses_memory(1):
      new_head, head_memory = weights_lib.memory_step(rule, prep.head, head_memory, x, c_first_new)
    else:
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
    memory=memory,
    head_memory=head_memory,
  )
  return new_theta, new_head, new_tail, new_state


class AMPipeline(NamedTuple):
  """A :class:`~altmin_jax.pipeline.gpipe.Pipeline` and the validated AM configuration
  of a pipelined AM step (built by :func:`am_pipeline`; its
  phases are the functions of :mod:`~altmin_jax.am.pipelined_phases` and
  :func:`am_step`)."""

  pipe: gpipe.Pipeline
  cfg: AMConfig


def am_pipeline(cfg: AMConfig, pipeline: PipelineOptions) -> AMPipeline:
  """The validated :class:`AMPipeline` of a validated AM configuration
  (:func:`~altmin_jax.am._common.am_config`) on validated pipeline options: the stacked
  layers trained by gradient steps share one optimizer (its state is vmapped over the
  layers)."""
  pipe = gpipe.make_pipeline(cfg.net, pipeline)
  lay = pipe.layout
  stacked = cfg.weights.optimizers[lay.first : lay.first + lay.num_layers]
  gradient = [tx for tx in stacked if tx is not None]
  if any(tx is not gradient[0] for tx in gradient):
    raise ValueError(
      "pipelined AM-Adam runs one weight_optimizer on all stacked layers (vmapped over the "
      f"layer axis): pass a single optax transformation; with boundary={lay.boundary!r} the "
      f"stacked layers are network stages {lay.first + 1}..{lay.first + lay.num_layers}"
      + (" (an output_optimizer needs boundary='outside')" if lay.first == 0 else "")
    )
  return AMPipeline(pipe, cfg)


# ------------------------------------------------- states in am_adam / am_mem form


def unstack_weight_states(net: LayeredNetwork, state: PipelinedAMState, *, boundary: str = "pad"):
  """The per-stage optimizer states of a :class:`PipelinedAMState`, padding dropped: the
  tuple :func:`~altmin_jax.am.am_adam` (:func:`~altmin_jax.am.am_mem`: ``EmptyState`` for
  memory layers) keeps in ``AMState.weight_states`` (for optimizers whose states hold
  params-shaped trees, as SGD, momentum and Adam do; params-shaped parts are
  ``{'kernel', 'bias'}`` dicts)."""
  lay = pipeline_layout(net, boundary=boundary)
  params_like = lambda t: isinstance(t, dict) and "kernel" in t
  memory = isinstance(state.memory, weights_lib.CoactivationMemory)

  def layer(l):
    if memory and lay.stage_index(l) < net.num_stages:
      return optax.EmptyState()
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


def unstack_memory(net: LayeredNetwork, state: PipelinedAMState, *, boundary: str = "pad"):
  """The co-activation memories of a pipelined AM-mem state, padding dropped: the tuple
  (one :class:`~altmin_jax.am.weights.CoactivationMemory` per hidden layer) that
  :func:`~altmin_jax.am.am_mem` keeps in ``AMState.memory``."""
  lay = pipeline_layout(net, boundary=boundary)
  A, B = (meshes.replicated(a) for a in state.memory)
  bias = [lay.in_width] if A.shape[-1] > lay.in_width else []
  out = [state.head_memory] if boundary == "outside" else []
  for l, (w_in, w_out) in enumerate(zip(lay.layer_in_widths, lay.layer_out_widths)):
    if lay.stage_index(l) < net.num_stages:
      real = jnp.asarray([*range(w_in), *bias])
      out.append(weights_lib.CoactivationMemory(A[l][real][:, real], B[l][:w_out][:, real]))
  return tuple(out)


# ---------------------------------------------------------- the transformation


def _transformation(am: AMPipeline, method: str) -> optax.GradientTransformationExtraArgs:
  """The pipelined AM transformation of a validated :class:`AMPipeline`."""
  pipe, cfg = am
  net, rule, lay = cfg.net, cfg.weights, pipe.layout
  mesh, axis_name, outside = pipe.mesh, pipe.axis_name, lay.boundary == "outside"
  tx = stacked_optimizer(cfg, lay)

  def initial_state(params) -> PipelinedAMState:
    if isinstance(params, PipelineParams):
      stacked = params
    else:
      stacked = stack_params(net, as_arrays(params), boundary=lay.boundary)
    gpipe.check_stacked(stacked, lay)
    dtype = trees.compute_dtype((stacked.kernel, stacked.head, stacked.tail))
    theta = trees.cast_tree(layer_theta(stacked.kernel, stacked.bias), dtype)
    head, tail = trees.cast_tree((stacked.head, stacked.tail), dtype)
    memory = head_memory = ()
    if rule.uses_memory(lay.first + 1):  # AM-mem: [sigma(c); 1] padded to in_width (+ 1)
      L, d = lay.num_layers, lay.in_width + int("bias" in theta)
      zeros = lambda *shape: jnp.zeros(shape, dtype)
      memory = weights_lib.CoactivationMemory(zeros(L, d, d), zeros(L, lay.out_width, d))
    head_state = tail_state = optax.EmptyState()
    if outside:
      (head_state,), head_memories = weights_lib.init_weights_state(rule, net, (head,))
      head_memory = head_memories[0] if head_memories else ()
      tail_state = rule.optimizers[-1].init(tail)
    return PipelinedAMState(
      count=jnp.zeros([], jnp.int32),
      batch_loss=jnp.zeros([], jnp.float32),
      weight_states=optax.EmptyState() if tx is None else jax.vmap(tx.init)(theta),
      head_state=head_state,
      tail_state=tail_state,
      memory=memory,
      head_memory=head_memory,
    )

  def init_fn(params):
    # the placement the step returns (layer axis sharded, the rest replicated), so that
    # the second step does not recompile; jitted, so that it also runs inside jit
    shapes = jax.eval_shape(initial_state, params)
    sharded = lambda s: NamedSharding(mesh, meshes.leading_spec(len(s.shape), axis_name))
    replicated = lambda s: NamedSharding(mesh, P())
    shardings = PipelinedAMState(
      *(
        jax.tree.map(sharded if name in LAYERED else replicated, field)
        for name, field in zip(shapes._fields, shapes)
      )
    )
    state = jax.jit(initial_state, out_shardings=shardings)(params)
    # inside an outer jit the placement must be part of the traced types
    return jax.tree.map(meshes.place, state, shardings)

  @jax.jit
  def iterate(params, x, y, state):
    prep = gpipe.prepare(pipe, net, params, (x, y), method)
    layered = {name: pipe.place(getattr(state, name), P(axis_name)) for name in LAYERED}
    new_theta, new_head, new_tail, new_state = am_step(pipe, cfg, prep, state._replace(**layered))
    return gpipe.updates(net, prep, new_theta, new_head, new_tail), new_state

  def update_fn(updates, state, params=None, *, batch, **extra_args):
    del updates, extra_args  # AM needs no gradients; unknown extra args are ignored.
    batches.require_params(params, method)
    x, y = batches.unpack_batch(net, batch, cfg.loss)  # checks before tracing the step
    return iterate(params, x, y, state)

  return checked_transformation(method, init_fn, update_fn)


@documented(PipelineOptions, CodeStepOptions)
def pipelined_am_adam(
  net: LayeredNetwork,
  loss: Loss = losses_lib.softmax_cross_entropy,
  *,
  mesh: Mesh,
  num_microbatches: int = PipelineOptions.num_microbatches,
  boundary: str = PipelineOptions.boundary,
  axis_name: str = PipelineOptions.axis_name,
  weight_optimizer: Optimizers | None = None,
  output_optimizer: optax.GradientTransformation | None = None,
  weight_steps: int = 1,
  code_steps: int = CodeStepOptions.code_steps,
  code_lr: float | None = CodeStepOptions.code_lr,
  code_optimizer: str | optax.GradientTransformation = CodeStepOptions.code_optimizer,
  mu: ScalarOrSchedule = CodeStepOptions.mu,
  code_proximal: bool = CodeStepOptions.code_proximal,
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
    mesh, num_microbatches, boundary, axis_name: the pipeline options
      (:class:`~altmin_jax.pipeline.PipelineOptions`).
    weight_optimizer: one optax optimizer for every layer (each layer keeps its own
      state; the stacked layers' states are stacked and sharded like the layers);
      default ``optax.adam(1e-3)``.
    output_optimizer: optimizer of the output layer (``boundary="outside"`` only).
    weight_steps: as in :func:`~altmin_jax.am.am_adam`.
    code_steps, code_lr, code_optimizer, mu, code_proximal: the code-step options
      (:class:`~altmin_jax.am.CodeStepOptions`).

  The code subproblems are solved per micro-batch, which equals the full-batch solve for
  elementwise code optimizers (the named ones); an optax transformation that couples
  samples (global-norm clipping) would differ.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state :class:`PipelinedAMState`.
    ``update(grads, state, params, *, batch=(x, y))`` ignores ``grads`` and takes either
    :class:`~altmin_jax.pipeline.PipelineParams` (from
    :func:`~altmin_jax.pipeline.stack_params` with ``mesh``: the efficient form,
    updates come back the same way) or the network's own params (stacked and unstacked
    inside the step). Arithmetic runs in at least float32; the optimizer states are kept
    in that precision.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import altmin_jax as amj
    >>> from altmin_jax import pipeline
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
  rule = gradient_rule(net, weight_optimizer, output_optimizer, weight_steps)
  cfg = am_config(net, loss, CodeStepOptions.from_arguments(locals()), rule)
  am = am_pipeline(cfg, PipelineOptions.from_arguments(locals()))
  return _transformation(am, "pipelined AM-Adam")


@documented(PipelineOptions, CodeStepOptions)
def pipelined_am_mem(
  net: LayeredNetwork,
  loss: Loss = losses_lib.softmax_cross_entropy,
  *,
  mesh: Mesh,
  num_microbatches: int = PipelineOptions.num_microbatches,
  boundary: str = PipelineOptions.boundary,
  axis_name: str = PipelineOptions.axis_name,
  output_optimizer: optax.GradientTransformation | None = None,
  output_steps: int = 1,
  sweeps: int = 1,
  solver: str = "bcd",
  forgetting: float = 1.0,
  ridge: float = 1e-6,
  code_steps: int = CodeStepOptions.code_steps,
  code_lr: float | None = CodeStepOptions.code_lr,
  code_optimizer: str | optax.GradientTransformation = CodeStepOptions.code_optimizer,
  mu: ScalarOrSchedule = CodeStepOptions.mu,
  code_proximal: bool = CodeStepOptions.code_proximal,
) -> optax.GradientTransformationExtraArgs:
  r"""Online AM-mem with the layers pipelined over the devices of a mesh axis.

  The iteration of :func:`~altmin_jax.am.am_mem`, scheduled as :func:`pipelined_am_adam`'s
  (module docstring): a GPipe forward pass encodes the codes, a reverse pass updates them
  top-down, and every device then updates its own layers with no communication. Each
  hidden layer's co-activation memories live on the device that holds the layer, stacked
  on the layer axis and sharded like the layers (``A^i``: ``d x d``, ``B^i``:
  ``out_width x d``, ``d = in_width + 1`` with the bias column), and the memory update

  .. math::
     A^i \leftarrow \beta A^i + \textstyle\sum_n a_n a_n^\top, \qquad
     B^i \leftarrow \beta B^i + \textstyle\sum_n c_n^i a_n^\top, \qquad
     a_n = [\sigma_{i-1}(c_n^{i-1}); 1],

  and the solve of :math:`\min_W \mathrm{Tr}(W^\top W A^i) - 2\,\mathrm{Tr}(W^\top B^i)`
  (eq. 7: ``sweeps`` block-coordinate sweeps
  :math:`w_j \leftarrow w_j + (b_j - W a_j) / A^i_{jj}` from the current weights, or
  exactly) run there. The output layer takes ``output_steps`` steps of
  ``output_optimizer`` on the loss. One step equals ``am_mem``'s step with the same
  hyperparameters to float tolerance; zero padding changes no result
  (:mod:`~altmin_jax.am.pipelined_phases`).

  Memory per device: the ``K`` local layers' memories, ``K (d^2 + out_width d)`` numbers
  (with ``boundary="pad"`` the output layer, trained by its optimizer, keeps an unused
  zero memory; with ``"outside"`` the first stage's memory is replicated on every device).

  Args:
    net: a network of dense stages (:func:`~altmin_jax.networks.mlp`) with at least one
      hidden layer; zero-padded hidden layers need ``activation(0) == 0``.
    loss: per-sample loss ``loss(logits, labels) -> (batch,)``.
    mesh, num_microbatches, boundary, axis_name: the pipeline options
      (:class:`~altmin_jax.pipeline.PipelineOptions`).
    output_optimizer: optimizer of the output layer; default ``optax.sgd(0.1)``. With
      ``boundary="pad"`` its state is kept for every stacked layer (only the output
      layer's changes).
    output_steps, sweeps, solver, forgetting, ridge: as in :func:`~altmin_jax.am.am_mem`.
    code_steps, code_lr, code_optimizer, mu, code_proximal: the code-step options
      (:class:`~altmin_jax.am.CodeStepOptions`).

  The code subproblems are solved per micro-batch, as in :func:`pipelined_am_adam`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state :class:`PipelinedAMState`
    (the memories in ``memory`` and, with ``boundary="outside"``, ``head_memory``;
    :func:`unstack_memory` gives ``am_mem``'s tuple). ``update(grads, state, params, *,
    batch=(x, y))`` ignores ``grads``; params as in :func:`pipelined_am_adam`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import altmin_jax as amj
    >>> from altmin_jax import pipeline
    >>> net = amj.networks.mlp([4, 6, 6, 3], activation=jnp.tanh)
    >>> mesh = pipeline.pipeline_mesh(1)
    >>> tx = amj.pipelined_am_mem(net, mesh=mesh, num_microbatches=2, code_steps=2)
    >>> params = pipeline.stack_params(net, net.init(jax.random.key(0)), mesh=mesh)
    >>> x, y = jnp.ones((6, 4)), jnp.array([0, 1, 2, 0, 1, 2])
    >>> updates, state = tx.update(None, tx.init(params), params, batch=(x, y))
    >>> params = optax.apply_updates(params, updates)
    >>> state.memory.A.shape, state.memory.B.shape  # per layer: d = 6 + 1 (bias)
    ((3, 7, 7), (3, 6, 7))
  """
  rule = memory_rule(net, output_optimizer, output_steps, sweeps, solver, forgetting, ridge)
  cfg = am_config(net, loss, CodeStepOptions.from_arguments(locals()), rule)
  am = am_pipeline(cfg, PipelineOptions.from_arguments(locals()))
  return _transformation(am, "pipelined AM-mem")
