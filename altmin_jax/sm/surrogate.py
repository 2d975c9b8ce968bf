r"""Surrogate minimization (SM): layer-parallel minimization of majorizing local losses.

Asad, Babanezhad, Laradji, Le Roux, Vaswani, "Surrogate Minimization: An Optimization
Algorithm for Training Large Neural Networks with Model Parallelism" (SM paper):
Proposition 1, Algorithm 1, Appendix A, with :math:`\rho_t^{(i)} = 0` as in the paper's
experiments (section 4). The construction of the local losses is in
:mod:`altmin_jax.sm.local_losses`; the inner solvers are in :mod:`altmin_jax.sm.solvers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from altmin_jax import losses as losses_lib
from altmin_jax.networks import LayeredNetwork
from altmin_jax.sm import local_losses as ll
from altmin_jax.sm import solvers

Array = jax.Array
PyTree = Any

SOLVERS = ("cg", "armijo")
CURVATURES = ("full", "scalar")


class SMState(NamedTuple):
  """State of surrogate minimization: step count and the last iteration's per-stage data."""

  count: Array  # int32 scalar, iterations taken
  loss: Array  # float32 scalar, h(theta_t) on the last batch, before its update
  curvature: Array  # (m,) float32, entry i-1 = c_{i+1}, the constant in psi_i
  local_loss: Array  # (m,) float32, L_i(theta_{t+1}) (<= 0 when the solve decreased it)
  inner_iterations: Array  # (m,) int32, inner steps taken per stage (guards may stop early)
  step_size: Array  # (m,) float32, next first Armijo trial step per stage (solver="armijo")


class SMConfig(NamedTuple):
  """Static configuration of :func:`surrogate_minimization`."""

  net: LayeredNetwork
  loss: ll.Loss
  inner_steps: int
  solver: str
  delta: float
  power_iterations: int
  loss_smoothness: float
  curvature: str
  line_search: solvers.LineSearchConfig
  curvature_tol: float
  seed: int
  vmap_stages: bool


# ---------------------------------------------------------------- stage solves


class StageSolve(NamedTuple):
  """Result of one stage's local solve."""

  d: PyTree  # theta_{t+1} - theta_t
  model: Array  # L_i(theta_{t+1})
  iterations: Array  # int32
  step: Array  # next Armijo trial step


def solve_local_loss(
  cfg: SMConfig,
  fn: ll.StageFn,
  first: bool,
  z_prev: Array,
  theta: PyTree,
  g_out: Array,
  z_out: Array,
  c_next: Array,
  step0: Array,
  seed: int,
) -> StageSolve:
  r"""Builds and minimises one stage's local loss from stage-local data only.

  ``N = inner_steps`` steps of CG (:func:`~altmin_jax.sm.solvers.conjugate_gradient` on
  :math:`\mathbb H_i d = -g_{\theta_i}`) or of GD with Armijo search
  (:func:`~altmin_jax.sm.solvers.quadratic_armijo_gd`), from :math:`d = 0`. With
  ``curvature="scalar"`` :math:`\mathbb H_i` is replaced by :math:`\lambda_{\max}(\mathbb
  H_i) I` and the minimiser :math:`d = -g_{\theta_i}/\lambda_{\max}` is taken in closed
  form (the paper's remark after Algorithm 1: layer-wise GD with per-layer step sizes).
  """
  psi = ll.make_psi(fn, g_out, z_out, c_next)
  lq = ll.local_quadratic(psi, z_prev, theta, cfg.delta, first)
  g = lq.g_theta
  if cfg.curvature == "scalar":
    lam = ll.top_eigenvalue(lq.matvec, ll.start_vector(seed, theta), cfg.power_iterations)
    pos = lam > 0
    inv = jnp.where(pos, 1.0 / jnp.where(pos, lam, 1.0), 0.0)
    d = optax.tree.scale(-inv, g)
    model = -0.5 * inv * optax.tree.vdot(g, g)
    return StageSolve(d, model, pos.astype(jnp.int32), step0)
  if cfg.solver == "cg":
    res = solvers.conjugate_gradient(
      lq.matvec, optax.tree.scale(-1.0, g), steps=cfg.inner_steps, curvature_tol=cfg.curvature_tol
    )
    model = optax.tree.vdot(g, res.x) + 0.5 * optax.tree.vdot(res.x, res.Ax)
    return StageSolve(res.x, model, res.iterations, step0)
  res = solvers.quadratic_armijo_gd(
    lq.matvec,
    g,
    steps=cfg.inner_steps,
    init_step=step0,
    config=cfg.line_search,
    curvature_tol=cfg.curvature_tol,
  )
  return StageSolve(res.x, res.value, res.iterations, res.next_step)


def _group_key(net: LayeredNetwork, i: int, theta: PyTree, z_prev: Array) -> tuple:
  """Stages with equal keys compute the same function on equally shaped data."""
  stage = net.stages[i - 1]
  last = i == net.num_stages
  kind = ("dense",) if stage.dense else ("apply", stage.apply)
  leaves, treedef = jax.tree.flatten(theta)
  shapes = tuple((jnp.shape(a), jnp.asarray(a).dtype) for a in leaves)
  return (
    i == 1,
    kind,
    None if last else stage.activation,
    treedef,
    shapes,
    z_prev.shape,
    z_prev.dtype,
  )


def stage_groups(net: LayeredNetwork, stage_params: Sequence[PyTree], zs: Sequence[Array]):
  """Stage indices (1-based) grouped so that every group can be solved under one ``vmap``:
  equal parameter structure and shapes, equal input shape, the same stage computation
  (dense stages, or the same ``apply`` function) and activation; the first stage (no
  coupling term) is always alone."""
  groups: dict[tuple, list[int]] = {}
  for i in range(1, net.num_stages + 1):
    key = _group_key(net, i, stage_params[i - 1], zs[i - 1])
    groups.setdefault(key, []).append(i)
  return list(groups.values())


def solve_all_stages(
  cfg: SMConfig,
  stage_params: Sequence[PyTree],
  fb: ll.ForwardBackward,
  curv: Sequence[Array],
  steps: Array,
) -> list[StageSolve]:
  """Every stage's local solve: independent computations, ``vmap``-ed over groups of
  equally shaped stages when ``cfg.vmap_stages``."""
  net = cfg.net
  m = net.num_stages

  def args(i):
    return (
      fb.z[i - 1],
      stage_params[i - 1],
      fb.g_z[i - 1],
      fb.z[i],
      curv[i - 1],
      steps[i - 1],
    )

  if cfg.vmap_stages:
    groups = stage_groups(net, stage_params, fb.z)
  else:
    groups = [[i] for i in range(1, m + 1)]
  out: list[StageSolve | None] = [None] * m
  for group in groups:
    fn = ll.stage_function(net, group[0])
    first = group[0] == 1

    def solve(*a, fn=fn, first=first):
      return solve_local_loss(cfg, fn, first, *a, seed=cfg.seed + 1000)

    if len(group) == 1:
      out[group[0] - 1] = solve(*args(group[0]))
      continue
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[args(i) for i in group])
    res = jax.vmap(solve)(*stacked)
    for j, i in enumerate(group):
      out[i - 1] = jax.tree.map(lambda a, j=j: a[j], res)
  return out


# ------------------------------------------------------------------ the method


def sm_iteration(cfg: SMConfig, stage_params: Sequence[PyTree], x: Array, y: Array, steps: Array):
  """One SM iteration on per-stage params (computed in at least float32).

  Returns ``(new_stage_params, fb, curvatures, solves)``.
  """
  net = cfg.net
  # Algorithm 1, "access the gradient oracle": one forward and one backward pass.
  fb = ll.forward_backward(net, stage_params, x, y, cfg.loss)
  dtype = ll.compute_dtype(stage_params)
  c_last = jnp.asarray(cfg.loss_smoothness / x.shape[0], dtype)  # c_{m+1} = L / B
  fns = [ll.stage_function(net, i) for i in range(1, net.num_stages + 1)]
  curv = ll.curvature_chain(
    fns,
    stage_params,
    fb,
    c_last,
    delta=cfg.delta,
    iterations=cfg.power_iterations,
    seed=cfg.seed,
    per_sample=[ll.stage_is_per_sample(net, i) for i in range(1, net.num_stages + 1)],
  )
  # Algorithm 1, "do in parallel": N inner steps on every local loss (Prop. 1, eq. (1)).
  solves = solve_all_stages(cfg, stage_params, fb, curv, steps)
  new = [optax.tree.add(p, s.d) for p, s in zip(stage_params, solves)]
  return new, fb, curv, solves


def surrogate_minimization(
  net: LayeredNetwork,
  loss: ll.Loss = losses_lib.softmax_cross_entropy,
  *,
  inner_steps: int = 10,
  solver: str = "cg",
  delta: float = 1e-2,
  power_iterations: int = 10,
  loss_smoothness: float | None = None,
  curvature: str = "full",
  curvature_tol: float = 0.0,
  init_step: float = 1.0,
  armijo_c: float = solvers.ARMIJO_C,
  backtrack_factor: float = solvers.BACKTRACK_FACTOR,
  max_backtracks: int = solvers.MAX_BACKTRACKS,
  fallback_step: float = solvers.FALLBACK_STEP,
  step_growth: float = 2.0,
  max_step: float = 1e3,
  seed: int = 0,
  vmap_stages: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""Surrogate minimization (SM paper, Algorithm 1 with :math:`\rho = 0`, Appendix A).

  One ``update`` on a batch ``(x, y)``, for the batch-mean objective
  :math:`h(\theta) = \frac1B\sum_b \mathrm{loss}(z^{(m)}_b, y_b)`:

  1. one forward and one backward pass give the stage outputs :math:`z_t^{(i)}` (post
     activation; the last stage outputs logits), :math:`g_z^{(i)} = \partial h/\partial
     z^{(i)}` and :math:`\partial h/\partial\theta_i`;
  2. top-down, :math:`c_{m+1} = L/B` (``loss_smoothness`` :math:`L`: 1/2 for softmax
     cross-entropy) and :math:`c_i = \max(\hat\lambda_i, 0) + \delta`, where
     :math:`\hat\lambda_i = \max_b(\theta_b + r_b)` estimates
     :math:`\lambda_{\max}(\nabla^2_{zz}\psi_i)` from ``power_iterations`` Lanczos steps
     on exact Hessian-vector products: :math:`\theta_b` is the top Ritz value of sample
     ``b``'s diagonal block (dense stages map samples independently, so the Hessian is
     block diagonal; other stages are one block) and :math:`r_b` its residual norm
     (:func:`~altmin_jax.sm.local_losses.top_eigenvalue`; valid for indefinite
     :math:`\nabla^2_{zz}\psi_i`), and

     .. math:: \psi_i(z,\theta) = \langle g_z^{(i)}, f_i(z,\theta) - z_t^{(i)}\rangle
        + \tfrac{c_{i+1}}{2}\|f_i(z,\theta) - z_t^{(i)}\|^2 ;

  3. every stage, independently and in parallel (``vmap`` over equally shaped stages),
     takes ``inner_steps`` = N steps of CG or of GD with Armijo search from
     :math:`\theta_t` on its local loss (Proposition 1, eq. (1), :math:`\rho = 0`)

     .. math:: \mathcal L_i(\theta) = \langle \partial h/\partial\theta_i, \theta-\theta_t
        \rangle + \tfrac12 \|\theta-\theta_t\|^2_{\mathbb H_i},\qquad
        \mathbb H_i = H^{(i)}_{\theta\theta} + H^{(i)\top}_{z\theta}H^{(i)}_{z\theta}/\delta

     (first stage: :math:`\mathbb H_1 = H^{(1)}_{\theta\theta}`), all derivatives of
     :math:`\psi_i` at :math:`(z_t^{(i-1)}, \theta_t)`, applied matrix-free;
  4. :math:`\theta_{t+1} = \theta_t + d` is returned as ``updates = new - params``.

  Proposition 1 gives :math:`h(\theta) \le h(\theta_t) + \sum_i \mathcal L_i(\theta_i)`
  up to the dropped third-order term, so the step decreases :math:`h` (Theorem 1) when
  the local solves decrease their losses and the step is small enough.

  Scaling: every quantity is that of the **mean** over the batch, so :math:`c_i`, the
  Hessians and ``delta`` are all in units of the mean loss (they scale like :math:`1/B`
  at fixed per-sample curvature). ``delta`` trades off: a large value inflates
  :math:`c_i` down the chain, a small one inflates the coupling term; when the batch
  size changes by a factor, scale ``delta`` by its inverse to keep the same local losses.

  Args:
    net: a :class:`~altmin_jax.networks.LayeredNetwork` (any number of stages).
    loss: per-sample loss ``loss(logits, labels) -> (batch,)``; the objective is its mean.
    inner_steps: N >= 1 inner solver steps per stage and iteration.
    solver: ``"cg"`` (the paper's experiments) or ``"armijo"`` (Algorithm 1 with an
      Armijo line search, section 3).
    delta: :math:`\delta > 0` of Appendix A.
    power_iterations: Hessian-vector products (Lanczos steps, >= 1) per curvature
      estimate: per stage for :math:`c_i`, and for :math:`\lambda_{\max}(\mathbb H_i)`
      with ``curvature="scalar"``.
    loss_smoothness: per-sample smoothness :math:`L` of ``loss`` in the logits;
      ``None`` for the library's softmax cross-entropy (1/2) and squared error (2).
    curvature: ``"full"`` (:math:`\mathbb H_i`) or ``"scalar"``
      (:math:`\lambda_{\max}(\mathbb H_i) I`, minimised in closed form: per-layer GD).
    curvature_tol: negative-curvature guard of both solvers: an inner solve stops when
      its search direction has curvature :math:`\le` ``curvature_tol`` times its squared
      norm (the stage then keeps the last iterate; a stage whose first direction fails
      the guard is not updated).
    init_step, armijo_c, backtrack_factor, max_backtracks, fallback_step, step_growth,
      max_step: the Armijo search of ``solver="armijo"`` (authors' defaults c = 0.1,
      factor 0.9, at most 100 backtracks; ``fallback_step`` is taken when no trial step
      passes; each search starts at ``step_growth`` times the previous step, at most
      ``max_step``). The per-stage step sizes persist in the state.
    seed: offset of the fixed Lanczos start vectors.
    vmap_stages: solve equally shaped stages under one ``jax.vmap`` (otherwise one
      computation per stage; both give the same result).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update(grads, state, params, *,
    batch=(x, y))`` ignores ``grads`` (may be ``None``) and returns ``new_params -
    params``; :class:`SMState` holds the last iteration's :math:`c_{i+1}` and
    :math:`\mathcal L_i(\theta_{t+1})`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import altmin_jax as amj
    >>> net = amj.networks.mlp([4, 8, 3], activation=jnp.tanh)
    >>> params = net.init(jax.random.key(0))
    >>> from altmin_jax.sm import surrogate_minimization
    >>> tx = surrogate_minimization(net, inner_steps=5, delta=1e-2)
    >>> state = tx.init(params)
    >>> x, y = jnp.ones((6, 4)), jnp.array([0, 1, 2, 0, 1, 2])
    >>> updates, state = tx.update(None, state, params, batch=(x, y))
    >>> params = optax.apply_updates(params, updates)
    >>> int(state.count), state.curvature.shape
    (1, (2,))
  """
  net = ll.check_network(net)
  loss = ll.check_loss(loss)
  if solver not in SOLVERS:
    raise ValueError(f"solver must be one of {SOLVERS}, got solver={solver!r}")
  if curvature not in CURVATURES:
    raise ValueError(f"curvature must be one of {CURVATURES}, got curvature={curvature!r}")
  cfg = SMConfig(
    net=net,
    loss=loss,
    inner_steps=solvers.check_int("inner_steps", inner_steps, 1),
    solver=solver,
    delta=solvers.check_positive("delta", delta),
    power_iterations=solvers.check_int("power_iterations", power_iterations, 1),
    loss_smoothness=ll.resolve_loss_smoothness(loss, loss_smoothness),
    curvature=curvature,
    line_search=solvers.line_search_config(
      init_step=init_step,
      armijo_c=armijo_c,
      backtrack_factor=backtrack_factor,
      max_backtracks=max_backtracks,
      fallback_step=fallback_step,
      step_growth=step_growth,
      max_step=max_step,
    ),
    curvature_tol=solvers.check_positive("curvature_tol", curvature_tol, allow_zero=True),
    seed=solvers.check_int("seed", seed, 0),
    vmap_stages=bool(vmap_stages),
  )
  m = net.num_stages

  def init_fn(params):
    del params
    return SMState(
      count=jnp.zeros([], jnp.int32),
      loss=jnp.zeros([], jnp.float32),
      curvature=jnp.zeros([m], jnp.float32),
      local_loss=jnp.zeros([m], jnp.float32),
      inner_iterations=jnp.zeros([m], jnp.int32),
      step_size=jnp.full([m], cfg.line_search.init_step, jnp.float32),
    )

  @jax.jit
  def iterate(stage_params, x, y, step_size):
    # One compiled computation, also when update is called outside jax.jit.
    new, fb, curv, solves = sm_iteration(cfg, stage_params, x, y, step_size)
    return new, fb.value, curv, [s._replace(d=None) for s in solves]

  def update_fn(updates, state, params=None, *, batch, **extra_args):
    del updates, extra_args  # SM needs no gradients; unknown extra args are ignored.
    prep = ll.prepare(net, params, batch, "surrogate minimization")
    new, value, curv, solves = iterate(prep.stage_params, prep.x, prep.y, state.step_size)
    new_state = SMState(
      count=optax.safe_int32_increment(state.count),
      loss=value.astype(jnp.float32),
      curvature=jnp.stack(curv).astype(jnp.float32),
      local_loss=jnp.stack([s.model for s in solves]).astype(jnp.float32),
      inner_iterations=jnp.stack([s.iterations for s in solves]).astype(jnp.int32),
      step_size=jnp.stack([s.step for s in solves]).astype(jnp.float32),
    )
    return ll.params_update(net, new, prep.params), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
