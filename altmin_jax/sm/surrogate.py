r"""Surrogate minimization (SM): layer-parallel minimization of majorizing local losses.

Asad, Babanezhad, Laradji, Le Roux, Vaswani, "Surrogate Minimization: An Optimization
Algorithm for Training Large Neural Networks with Model Parallelism" (SM paper):
Proposition 1, Algorithm 1, Appendix A, with :math:`\rho_t^{(i)} = 0` as in the paper's
experiments (section 4). The construction of the local losses is in
:mod:`altmin_jax.sm.local_losses`; the inner solvers are in :mod:`altmin_jax.numerics`.

One iteration (:func:`sm_iteration`) is composed of phase functions, which a benchmark can
time one by one as the step runs them: :func:`forward_backward`, :func:`curvature_bounds`
(the majorizer's own phases, :class:`~altmin_jax.sm.majorizers.Young`'s ``levels``,
``curvature`` and ``rest_bounds``), :func:`local_solves` and :func:`update`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from altmin_jax import losses as losses_lib
from altmin_jax.core.states import checked_transformation
from altmin_jax.core.types import Array, Loss, PyTree
from altmin_jax.networks import LayeredNetwork, stages
from altmin_jax.numerics.line_search import (
  ArmijoSearch,
  LineSearchResult,
  armijo_backtracking,
  next_init_step,
)
from altmin_jax.sm import _common, majorizers
from altmin_jax.sm import local_losses as ll
from altmin_jax.sm._common import SMState


def _group_key(net: LayeredNetwork, i: int, data: ll.StageData) -> tuple:
  """Stages with equal keys compute the same function on equally shaped data."""
  stage = net.stages[i - 1]
  kind = ("dense",) if stage.dense else ("apply", stage.apply)
  leaves, treedef = jax.tree.flatten(data)
  shapes = tuple((jnp.shape(a), jnp.asarray(a).dtype) for a in leaves)
  return (i == 1, i == net.num_stages, kind, stage.activation, treedef, shapes)


def stage_groups(net: LayeredNetwork, data) -> list[list[int]]:
  """Stage indices (1-based) grouped so that every group can be solved under one ``vmap``:
  the same stage computation (dense stages, or the same ``apply`` function) and
  activation on equally shaped data; the first stage (no coupling term) and the last
  (no activation) are always alone."""
  groups: dict[tuple, list[int]] = {}
  for i in range(1, net.num_stages + 1):
    groups.setdefault(_group_key(net, i, data[i - 1]), []).append(i)
  return list(groups.values())


# ------------------------------------------------------------------ the phases


def forward_backward(cfg: ll.SMConfig, stage_params, x: Array, y: Array) -> _common.ForwardBackward:
  r"""Algorithm 1, "access the gradient oracle": one forward and one backward pass give
  the stage outputs :math:`z_t^{(i)}`, the output gradients :math:`g^{(i)} = \partial
  h/\partial z^{(i)}` (:math:`g^{(m)} = \nabla\ell(z_t^{(m)})`, eq. (2)) and the
  parameter gradients :math:`g_{\theta_i}`."""
  return _common.forward_backward(cfg.net, stage_params, x, y, cfg.loss)


def curvature_bounds(cfg: ll.SMConfig, stage_params, fb: _common.ForwardBackward, y, sc):
  """Every stage's curvature data from the majorizer (:meth:`~altmin_jax.sm.majorizers.
  Majorizer.bounds`; :class:`~altmin_jax.sm.majorizers.Young`: the logits' Jacobians, the
  loss's Hessians and the rest bounds of one reverse pass)."""
  return cfg.options.majorizer.bounds(cfg, stage_params, fb, y, sc)


def stage_data(cfg: ll.SMConfig, stage_params, fb: _common.ForwardBackward, y, sc: ll.Scales):
  """Every stage's :class:`~altmin_jax.sm.local_losses.StageData` from one forward and
  backward pass and :func:`curvature_bounds`."""
  return ll.stage_data(stage_params, fb, curvature_bounds(cfg, stage_params, fb, y, sc))


def local_solves(
  cfg: ll.SMConfig,
  data: list[ll.StageData],
  sc: ll.Scales,
  steps: Array,
  vmap_stages: bool = True,
  previous: Sequence[PyTree] | None = None,
) -> list[ll.StageSolve]:
  """Algorithm 1, "do in parallel": N inner steps on every stage's local loss (Prop. 1,
  eq. (1)), independent computations, ``vmap``-ed over groups of equally shaped stages
  (:func:`stage_groups`) when ``vmap_stages``; ``steps`` are the per-stage Armijo trial
  steps, ``previous`` the stages' previous steps (warm-started CG,
  :func:`~altmin_jax.sm.local_losses.warm_start`)."""
  net = cfg.net
  m = net.num_stages
  groups = stage_groups(net, data) if vmap_stages else [[i] for i in range(1, m + 1)]
  out: list[ll.StageSolve | None] = [None] * m
  seed = cfg.options.seed + ll.SOLVE_SEED_OFFSET
  warm = [None] * m if previous is None else list(previous)
  for group in groups:
    i0 = group[0]
    kind = majorizers.stage_kind(net, i0)

    def solve(d, step, weight, w, kind=kind, first=i0 == 1, last=i0 == m):
      lq = ll.local_quadratic(cfg.options, kind, first, last, weight, d, sc)
      return ll.solve_local_loss(cfg.options, lq, step, seed, warm=w)

    if len(group) == 1:
      out[i0 - 1] = solve(data[i0 - 1], steps[i0 - 1], float(i0), warm[i0 - 1])
      continue
    stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
    stacked = stack([data[i - 1] for i in group])
    w = None if previous is None else stack([warm[i - 1] for i in group])
    weights = jnp.asarray(group, sc.gn.dtype)
    res = jax.vmap(solve)(stacked, steps[jnp.asarray(group) - 1], weights, w)
    for j, i in enumerate(group):
      out[i - 1] = jax.tree.map(lambda a, j=j: a[j], res)
  return out


def update(stage_params: Sequence[PyTree], solves: Sequence[ll.StageSolve]) -> list[PyTree]:
  r""":math:`\theta_{t+1} = \theta_t + d` on every stage."""
  return [optax.tree.add(p, s.d) for p, s in zip(stage_params, solves)]


def search_step(value_at, value: Array, slope: Array, init_step, search) -> LineSearchResult:
  r"""The Armijo search along the whole SM step :math:`d` (``options.step_search``): the
  first of the trial multiples ``init_step``, halved, ... with

  .. math:: h(\theta_t + a d) \le h(\theta_t) + c\,a \min(\nabla h^\top d, 0),

  where ``value_at(a)`` is :math:`h(\theta_t + a d)` (one forward pass per trial,
  :func:`~altmin_jax.numerics.armijo_backtracking`) and ``slope`` :math:`\nabla h^\top d
  = \sum_i g_{\theta_i}^\top d_i` (:attr:`~altmin_jax.sm.local_losses.StageSolve.slope`).
  The ``min`` keeps a step that is no descent direction from raising the loss; when no
  trial passes, the step is the search's ``fallback_step`` (:data:`~altmin_jax.sm.
  local_losses.STEP_SEARCH`: 0, no move). The single-device and the pipelined step both
  take it."""
  return armijo_backtracking(value_at, value, jnp.minimum(slope, 0.0), init_step, search)


def first_trial(search: ArmijoSearch, carried: Array, same_batch: Array) -> Array:
  """The step search's first trial: the carried one (:func:`next_search_step`) on the batch
  it came from, ``init_step`` (1, the majorizer's own step) on a new batch: a multiple
  accepted on one minibatch says nothing about the next, and extrapolating across
  minibatches overfits each of them."""
  return jnp.where(same_batch, carried, jnp.asarray(search.init_step, carried.dtype))


def next_search_step(res: LineSearchResult, search: ArmijoSearch) -> Array:
  """The next search's first trial: ``step_growth`` times the accepted multiple, capped at
  ``max_step`` and never below ``init_step`` (step 1, the majorizer's own step, is always
  among the trials)."""
  return jnp.maximum(next_init_step(res, search), search.init_step)


def search_outcome(res: LineSearchResult | None, search, carried: Array):
  """``(multiple, trials, next first trial)`` of an iteration's step search (``res``;
  ``None`` without one: the whole step, no trial, the carried first trial), what
  :class:`SMState` records."""
  if res is None:
    return jnp.ones([], carried.dtype), jnp.zeros([], jnp.int32), carried
  return res.step, res.backtracks + 1, next_search_step(res, search)


# ------------------------------------------------------------------ the method


class Carry(NamedTuple):
  """What an iteration takes from the previous one (:class:`SMState`'s fields)."""

  step_size: Array  # (m,) first inner Armijo trials (solver="armijo")
  search_step: Array  # first trial multiple of the step search
  since_refresh: Array  # int32, iterations since the stored curvature was computed
  stored_curvature: PyTree  # the majorizer's bounds in use (curvature_refresh > 1), or ()
  batch_key: Array  # (3,) fingerprint of the batch the stored curvature belongs to
  previous_step: PyTree  # the last local solves' steps per stage (cg_warm_start), or ()


class Iteration(NamedTuple):
  """One SM iteration's results."""

  new: list  # the new per-stage params
  fb: _common.ForwardBackward
  solves: list  # per-stage StageSolve
  bounds: list  # the majorizer's curvature data used
  search: LineSearchResult | None  # the step search (None without one)
  refreshed: Array  # bool, whether the curvature was computed in this iteration
  batch_key: Array


def batch_key(x: Array, y: Array) -> Array:
  """A fingerprint of a batch (sums of ``x``, ``x**2`` and ``y``): stored curvature data
  belongs to one batch, and a batch with another fingerprint refreshes it."""
  xf, yf = x.astype(jnp.float32), jnp.asarray(y).astype(jnp.float32)
  return jnp.stack([jnp.sum(xf), jnp.sum(xf * xf), jnp.sum(yf)])


def sm_iteration(
  cfg: ll.SMConfig,
  stage_params: Sequence[PyTree],
  x: Array,
  y: Array,
  carry: Carry,
  vmap_stages: bool = True,
) -> Iteration:
  """One SM iteration on per-stage params (computed in at least float32), composed of the
  phase functions: :func:`forward_backward`, :func:`curvature_bounds` (every
  ``curvature_refresh`` iterations, on a new batch, and at once when stale curvature fails
  the step search's Armijo test at step 1), :func:`local_solves` (warm-started from
  ``carry.previous_step`` with ``cg_warm_start``), :func:`search_step` (with a
  ``step_search``) and the update. With no search, no warm start and
  ``curvature_refresh=1`` it is Algorithm 1 as the paper states it."""
  opts = cfg.options
  fb = forward_backward(cfg, stage_params, x, y)
  sc = ll.scales(cfg, x.shape[0], fb.value.dtype)
  previous = carry.previous_step if opts.cg_warm_start else None
  key = batch_key(x, y)
  same_batch = jnp.all(key == carry.batch_key)

  def attempt(bounds):
    data = ll.stage_data(stage_params, fb, bounds)
    solves = local_solves(cfg, data, sc, carry.step_size, vmap_stages, previous)
    if opts.step_search is None:
      return update(stage_params, solves), solves, None
    d = [s.d for s in solves]
    h = _common.network_loss(cfg.net, cfg.loss, x, y)
    value_at = lambda a: h([optax.tree.add_scale(p, a, di) for p, di in zip(stage_params, d)])
    slope = sum(s.slope for s in solves)
    init = first_trial(opts.step_search, carry.search_step, same_batch)
    res = search_step(value_at, fb.value, slope, init, opts.step_search)
    return [optax.tree.add_scale(p, res.step, di) for p, di in zip(stage_params, d)], solves, res

  compute = lambda: curvature_bounds(cfg, stage_params, fb, y, sc)
  (bounds, new, solves, res), refreshed = lagged_curvature(
    opts, carry, same_batch, compute, attempt
  )
  return Iteration(new, fb, solves, bounds, res, refreshed, key)


def lagged_curvature(opts: ll.SMOptions, carry: Carry, same_batch, compute, attempt):
  """The ``curvature_refresh`` rule, which the single-device and the pipelined step share:
  ``attempt(curvature) -> (..., search result or None)`` with the curvature data that
  ``compute()`` gives, or with ``carry.stored_curvature`` while it is current (fewer than
  ``curvature_refresh`` iterations old, on the same batch); when stale curvature fails the
  step search's Armijo test at step 1, the iteration is redone with fresh curvature.
  ``lax.cond`` skips the computation that is not needed. Returns ``((curvature,
  *attempt's results), refreshed)``."""

  def fresh():
    c = compute()
    return c, *attempt(c)

  if opts.curvature_refresh == 1 or not jax.tree.leaves(carry.stored_curvature):
    return fresh(), jnp.array(True)
  due = (carry.since_refresh + 1 >= opts.curvature_refresh) | ~same_batch
  c = jax.lax.cond(due, compute, lambda: carry.stored_curvature)
  out = (c, *attempt(c))
  if opts.step_search is None:
    return out, due
  redo = ~due & (out[-1].step < 1)  # stale curvature failed the Armijo test at step 1
  return jax.lax.cond(redo, fresh, lambda: out), due | redo


def surrogate_minimization(
  net: LayeredNetwork,
  loss: Loss = losses_lib.softmax_cross_entropy,
  *,
  inner_steps: int = ll.SMOptions.inner_steps,
  solver: str = ll.SMOptions.solver,
  majorizer: str | majorizers.Majorizer = ll.SMOptions.majorizer,
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
  vmap_stages: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""Surrogate minimization (SM paper, Algorithm 1 with :math:`\rho = 0`).

  One ``update`` on a batch ``(x, y)``, for the batch-mean objective
  :math:`h(\theta) = \frac1B\sum_b \mathrm{loss}(z^{(m)}_b, y_b)`:

  1. one forward and one backward pass give the stage outputs :math:`z_t^{(i)}` (post
     activation; the last stage outputs logits) and :math:`g^{(i)} = \partial h/\partial
     z^{(i)}`;
  2. one reverse pass gives every stage its stage-local curvature data
     (:func:`stage_data`): with the default ``majorizer="young"`` the logits' Jacobian in
     the stage output and a per-sample bound of the rest
     (:mod:`altmin_jax.sm.young_bound`), with ``"paper"`` the paper's constants
     (:mod:`altmin_jax.sm.paper_bound`);
  3. every stage, independently and in parallel (``vmap`` over equally shaped stages),
     takes ``inner_steps`` = N steps of CG or of GD with Armijo search from
     :math:`\theta_t` on its quadratic local loss :math:`\mathcal L_i`
     (:mod:`altmin_jax.sm.local_losses`), applied matrix-free with exact Jacobian- and
     Hessian-vector products;
  4. :math:`\theta_{t+1} = \theta_t + a d` is returned as ``updates = new - params``, with
     :math:`a` from the Armijo search along :math:`d` (``step_search``, the default; one
     forward pass per trial; :math:`a = 1` is the majorizer's own step) or :math:`a = 1`
     (``step_search=None``: Algorithm 1 as the paper states it).

  With ``"young"`` the local losses majorize the loss to second order,
  :math:`h(\theta) \le h(\theta_t) + \sum_i \mathcal L_i(\theta_i)` up to the dropped
  third-order term (Proposition 1), so small enough steps that decrease the local losses
  decrease :math:`h` (Theorem 1). The step search guarantees it for the step taken (the
  Armijo test is on the actual loss), also where the second-order majorization does not
  hold (e.g. raw 0-255 pixels).

  Args:
    net: a :class:`~altmin_jax.networks.LayeredNetwork` whose stages map samples
      independently.
    loss: per-sample loss ``loss(logits, labels) -> (batch,)``; the objective is its mean.
    inner_steps: N >= 1 inner solver steps per stage and iteration.
    solver: ``"cg"`` (the paper's experiments) or ``"armijo"`` (Algorithm 1 with an
      Armijo line search, section 3).
    majorizer: a :class:`~altmin_jax.sm.majorizers.Majorizer` or its shorthand:
      ``"young"`` (:class:`~altmin_jax.sm.majorizers.Young`, a valid, tight majorizer) or
      ``"paper"`` (:class:`~altmin_jax.sm.majorizers.PaperConstants`, the paper's literal
      constants: fast, but not a majorizer).
    delta: :math:`\delta B > 0`: the split of the coupling between a stage's input and
      parameters, per sample (the iteration uses :math:`\delta` = ``delta / B``, so one
      value serves every batch size).
    power_iterations: Lanczos steps (>= 1) per eigenvalue estimate (``"paper"``'s
      constants, ``"young"`` on stages other than dense ones, ``curvature="scalar"``).
    loss_smoothness: per-sample smoothness :math:`L` of ``loss`` in the logits;
      ``None`` for the library's softmax cross-entropy (1/2) and squared error (2).
    curvature: ``"full"`` (:math:`\mathbb H_i`) or ``"scalar"``
      (:math:`\lambda_{\max}(\mathbb H_i) I`, minimised in closed form: per-layer GD).
    curvature_tol: negative-curvature guard of both solvers: an inner solve stops when
      its search direction has curvature :math:`\le` ``curvature_tol`` times its squared
      norm (the stage then keeps the last iterate).
    line_search: the :class:`~altmin_jax.numerics.ArmijoSearch` of ``solver="armijo"``
      (default: the authors' c = 0.1, factor 0.9, at most 100 backtracks); the
      per-stage step sizes persist in the state.
    seed: offset of the fixed Lanczos start vectors.
    step_search: the Armijo search along the whole step (:func:`search_step`; default
      :data:`~altmin_jax.sm.local_losses.STEP_SEARCH`: first trial twice the last accepted
      multiple on the same batch, at most 64, never below 1, and 1 on a new batch
      (:func:`first_trial`), halving; no move when no trial passes), or
      ``None`` to take the step as Algorithm 1 does.
    cg_warm_start: start each stage's CG from its previous step, scaled to the exact
      minimiser of the new local loss along it (``solver="cg"``, ``curvature="full"``).
    curvature_refresh: compute the majorizer's curvature data every this many iterations
      (>= 1) and reuse it in between (same batch only; a new batch, and with a search
      stale curvature failing the Armijo test at step 1, refresh at once). Above 1 the
      state holds the batch's curvature data after the first update, so a jitted step
      compiles once more on its second call.
    vmap_stages: solve equally shaped stages under one ``jax.vmap`` (otherwise one
      computation per stage; both give the same result).

  The options are validated by :class:`~altmin_jax.sm.local_losses.SMOptions`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update(grads, state, params, *,
    batch=(x, y))`` ignores ``grads`` (may be ``None``) and returns ``new_params -
    params``; :class:`SMState` holds the last iteration's per-stage curvature data and
    :math:`\mathcal L_i(\theta_{t+1})`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import altmin_jax as amj
    >>> net = amj.networks.mlp([4, 8, 3], activation=jnp.tanh)
    >>> params = net.init(jax.random.key(0))
    >>> tx = amj.surrogate_minimization(net, inner_steps=5)
    >>> state = tx.init(params)
    >>> x, y = jnp.ones((6, 4)), jnp.array([0, 1, 2, 0, 1, 2])
    >>> updates, state = tx.update(None, state, params, batch=(x, y))
    >>> params = optax.apply_updates(params, updates)
    >>> int(state.count), state.curvature.shape
    (1, (2,))
  """
  options = ll.SMOptions.from_arguments(locals())
  cfg = ll.sm_config(net, loss, options)
  vmap_stages = bool(vmap_stages)
  m = cfg.net.num_stages

  def init_fn(params):
    previous = ()
    if options.cg_warm_start:
      sp = stages.prepare_stage_params(cfg.net, params, "surrogate minimization")
      previous = [jax.tree.map(jnp.zeros_like, p) for p in sp]
    return jax.tree.map(jnp.asarray, _common.initial_sm_state(options, m, previous))

  @jax.jit
  def iterate(stage_params, x, y, state):
    # One compiled computation, also when update is called outside jax.jit.
    carry = Carry(
      state.step_size.astype(x.dtype),
      state.search_step.astype(x.dtype),
      state.since_refresh,
      state.stored_curvature,
      state.batch_key,
      state.previous_step,
    )
    it = sm_iteration(cfg, stage_params, x, y, carry, vmap_stages)
    solves = it.solves
    multiple, trials, search_step = search_outcome(
      it.search, options.step_search, carry.search_step
    )
    f32 = lambda a: jnp.asarray(a).astype(jnp.float32)
    new_state = SMState(
      count=optax.safe_int32_increment(state.count),
      loss=f32(it.fb.value),
      curvature=f32(jnp.stack([options.majorizer.summary(b) for b in it.bounds])),
      local_loss=f32(jnp.stack([s.model for s in solves])),
      inner_iterations=jnp.stack([s.iterations for s in solves]).astype(jnp.int32),
      step_size=f32(jnp.stack([s.step for s in solves])),
      search_step=f32(search_step),
      step_multiple=f32(multiple),
      search_trials=jnp.asarray(trials, jnp.int32),
      refreshed=it.refreshed,
      since_refresh=jnp.where(it.refreshed, 0, state.since_refresh + 1).astype(jnp.int32),
      stored_curvature=it.bounds if options.curvature_refresh > 1 else (),
      batch_key=it.batch_key,
      previous_step=[s.d for s in solves] if options.cg_warm_start else (),
    )
    return it.new, new_state

  def update_fn(updates, state, params=None, *, batch, **extra_args):
    del updates, extra_args  # SM needs no gradients; unknown extra args are ignored.
    prep = stages.prepare(cfg.net, params, batch, "surrogate minimization", cfg.loss)
    new, new_state = iterate(prep.stage_params, prep.x, prep.y, state)
    return stages.params_update(cfg.net, new, prep.params), new_state

  return checked_transformation("surrogate minimization", init_fn, update_fn)
