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

import jax
import jax.numpy as jnp
import optax

from altmin_jax import losses as losses_lib
from altmin_jax.core.states import checked_transformation
from altmin_jax.core.types import Array, Loss, PyTree
from altmin_jax.networks import LayeredNetwork, stages
from altmin_jax.numerics.line_search import ArmijoSearch
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
) -> list[ll.StageSolve]:
  """Algorithm 1, "do in parallel": N inner steps on every stage's local loss (Prop. 1,
  eq. (1)), independent computations, ``vmap``-ed over groups of equally shaped stages
  (:func:`stage_groups`) when ``vmap_stages``; ``steps`` are the per-stage Armijo trial
  steps."""
  net = cfg.net
  m = net.num_stages
  groups = stage_groups(net, data) if vmap_stages else [[i] for i in range(1, m + 1)]
  out: list[ll.StageSolve | None] = [None] * m
  seed = cfg.options.seed + ll.SOLVE_SEED_OFFSET
  for group in groups:
    i0 = group[0]
    kind = majorizers.stage_kind(net, i0)

    def solve(d, step, weight, kind=kind, first=i0 == 1, last=i0 == m):
      lq = ll.local_quadratic(cfg.options, kind, first, last, weight, d, sc)
      return ll.solve_local_loss(cfg.options, lq, step, seed)

    if len(group) == 1:
      out[i0 - 1] = solve(data[i0 - 1], steps[i0 - 1], float(i0))
      continue
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[data[i - 1] for i in group])
    weights = jnp.asarray(group, sc.gn.dtype)
    res = jax.vmap(solve)(stacked, steps[jnp.asarray(group) - 1], weights)
    for j, i in enumerate(group):
      out[i - 1] = jax.tree.map(lambda a, j=j: a[j], res)
  return out


def update(stage_params: Sequence[PyTree], solves: Sequence[ll.StageSolve]) -> list[PyTree]:
  r""":math:`\theta_{t+1} = \theta_t + d` on every stage."""
  return [optax.tree.add(p, s.d) for p, s in zip(stage_params, solves)]


# ------------------------------------------------------------------ the method


def sm_iteration(
  cfg: ll.SMConfig,
  stage_params: Sequence[PyTree],
  x: Array,
  y: Array,
  steps: Array,
  vmap_stages: bool = True,
):
  """One SM iteration on per-stage params (computed in at least float32), composed of the
  phase functions: :func:`forward_backward`, :func:`stage_data`, :func:`local_solves`,
  :func:`update`.

  Returns ``(new_stage_params, fb, curvatures, solves)``.
  """
  fb = forward_backward(cfg, stage_params, x, y)
  sc = ll.scales(cfg, x.shape[0], fb.value.dtype)
  data = stage_data(cfg, stage_params, fb, y, sc)
  solves = local_solves(cfg, data, sc, steps, vmap_stages)
  summary = [cfg.options.majorizer.summary(d.bound) for d in data]
  return update(stage_params, solves), fb, summary, solves


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
  4. :math:`\theta_{t+1} = \theta_t + d` is returned as ``updates = new - params``.

  With ``"young"`` the local losses majorize the loss to second order,
  :math:`h(\theta) \le h(\theta_t) + \sum_i \mathcal L_i(\theta_i)` up to the dropped
  third-order term (Proposition 1), so small enough steps that decrease the local losses
  decrease :math:`h` (Theorem 1).

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
    del params
    return SMState(
      count=jnp.zeros([], jnp.int32),
      loss=jnp.zeros([], jnp.float32),
      curvature=jnp.zeros([m], jnp.float32),
      local_loss=jnp.zeros([m], jnp.float32),
      inner_iterations=jnp.zeros([m], jnp.int32),
      step_size=jnp.full([m], options.line_search.init_step, jnp.float32),
    )

  @jax.jit
  def iterate(stage_params, x, y, step_size):
    # One compiled computation, also when update is called outside jax.jit.
    new, fb, curv, solves = sm_iteration(cfg, stage_params, x, y, step_size, vmap_stages)
    return new, fb.value, curv, [s._replace(d=None) for s in solves]

  def update_fn(updates, state, params=None, *, batch, **extra_args):
    del updates, extra_args  # SM needs no gradients; unknown extra args are ignored.
    prep = stages.prepare(cfg.net, params, batch, "surrogate minimization", cfg.loss)
    new, value, curv, solves = iterate(prep.stage_params, prep.x, prep.y, state.step_size)
    new_state = SMState(
      count=optax.safe_int32_increment(state.count),
      loss=value.astype(jnp.float32),
      curvature=jnp.stack(curv).astype(jnp.float32),
      local_loss=jnp.stack([s.model for s in solves]).astype(jnp.float32),
      inner_iterations=jnp.stack([s.iterations for s in solves]).astype(jnp.int32),
      step_size=jnp.stack([s.step for s in solves]).astype(jnp.float32),
    )
    return stages.params_update(cfg.net, new, prep.params), new_state

  return checked_transformation("surrogate minimization", init_fn, update_fn)
