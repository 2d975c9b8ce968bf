r"""Surrogate minimization (SM): layer-parallel minimization of majorizing local losses.

Asad, Babanezhad, Laradji, Le Roux, Vaswani, "Surrogate Minimization: An Optimization
Algorithm for Training Large Neural Networks with Model Parallelism" (SM paper):
Proposition 1, Algorithm 1, Appendix A, with :math:`\rho_t^{(i)} = 0` as in the paper's
experiments (section 4). The construction of the local losses is in
:mod:`altmin_jax.sm.local_losses`; the inner solvers are in :mod:`altmin_jax.numerics`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from altmin_jax import losses as losses_lib
from altmin_jax import numerics
from altmin_jax.core.types import Array, Loss, PyTree
from altmin_jax.networks import LayeredNetwork
from altmin_jax.numerics.line_search import ArmijoSearch
from altmin_jax.sm import _common
from altmin_jax.sm import local_losses as ll
from altmin_jax.sm._common import SMState


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
  cfg: ll.SMConfig,
  stage_params: Sequence[PyTree],
  fb: ll.ForwardBackward,
  curv: Sequence[Array],
  steps: Array,
  vmap_stages: bool = True,
) -> list[ll.StageSolve]:
  """Every stage's local solve: independent computations, ``vmap``-ed over groups of
  equally shaped stages when ``vmap_stages``."""
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

  if vmap_stages:
    groups = stage_groups(net, stage_params, fb.z)
  else:
    groups = [[i] for i in range(1, m + 1)]
  out: list[ll.StageSolve | None] = [None] * m
  seed = cfg.options.seed + ll.SOLVE_SEED_OFFSET
  for group in groups:
    fn = _common.stage_function(net, group[0])
    first = group[0] == 1

    def solve(*a, fn=fn, first=first):
      return ll.solve_local_loss(cfg.options, fn, first, *a, v0=numerics.start_vector(seed, a[1]))

    if len(group) == 1:
      out[group[0] - 1] = solve(*args(group[0]))
      continue
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[args(i) for i in group])
    res = jax.vmap(solve)(*stacked)
    for j, i in enumerate(group):
      out[i - 1] = jax.tree.map(lambda a, j=j: a[j], res)
  return out


# ------------------------------------------------------------------ the method


def sm_iteration(
  cfg: ll.SMConfig,
  stage_params: Sequence[PyTree],
  x: Array,
  y: Array,
  steps: Array,
  vmap_stages: bool = True,
):
  """One SM iteration on per-stage params (computed in at least float32).

  Returns ``(new_stage_params, fb, curvatures, solves)``.
  """
  net = cfg.net
  # Algorithm 1, "access the gradient oracle": one forward and one backward pass.
  opts = cfg.options
  fb = _common.forward_backward(net, stage_params, x, y, cfg.loss)
  dtype = fb.value.dtype
  c_last = jnp.asarray(cfg.loss_smoothness / x.shape[0], dtype)  # c_{m+1} = L / B
  fns = [_common.stage_function(net, i) for i in range(1, net.num_stages + 1)]
  curv = ll.curvature_chain(
    fns,
    stage_params,
    fb,
    c_last,
    delta=opts.delta,
    iterations=opts.power_iterations,
    seed=opts.seed,
    per_sample=[ll.stage_is_per_sample(net, i) for i in range(1, net.num_stages + 1)],
  )
  # Algorithm 1, "do in parallel": N inner steps on every local loss (Prop. 1, eq. (1)).
  solves = solve_all_stages(cfg, stage_params, fb, curv, steps, vmap_stages)
  new = [optax.tree.add(p, s.d) for p, s in zip(stage_params, solves)]
  return new, fb, curv, solves


def surrogate_minimization(
  net: LayeredNetwork,
  loss: Loss = losses_lib.softmax_cross_entropy,
  *,
  inner_steps: int = 10,
  solver: str = "cg",
  delta: float = 1e-2,
  power_iterations: int = 10,
  loss_smoothness: float | None = None,
  curvature: str = "full",
  curvature_tol: float = 0.0,
  line_search: ArmijoSearch | None = None,
  seed: int = 0,
  vmap_stages: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""Surrogate minimization (SM paper, Algorithm 1 with :math:`\rho = 0`, Appendix A).

  One ``update`` on a batch ``(x, y)``, for the batch-mean objective
  :math:`h(\theta) = \frac1B\sum_b \mathrm{loss}(z^{(m)}_b, y_b)`:

  1. one forward and one backward pass give the stage outputs :math:`z_t^{(i)}` (post
     activation; the last stage outputs logits), :math:`g_z^{(i)} = \partial h/\partial
     z^{(i)}` and :math:`\partial h/\partial\theta_i`;
  2. top-down, the curvature constants :math:`c_{m+1} = L/B, c_m, \dots, c_2` of
     :func:`~altmin_jax.sm.local_losses.curvature_chain` (``power_iterations`` Lanczos
     steps per stage on exact Hessian-vector products, per sample for dense stages);
  3. every stage, independently and in parallel (``vmap`` over equally shaped stages),
     takes ``inner_steps`` = N steps of CG or of GD with Armijo search from
     :math:`\theta_t` on its local loss :math:`\mathcal L_i` (Proposition 1, eq. (1);
     the formulas are in :mod:`altmin_jax.sm.local_losses`), applied matrix-free;
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
    params``; :class:`SMState` holds the last iteration's :math:`c_{i+1}` and
    :math:`\mathcal L_i(\theta_{t+1})`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import altmin_jax as amj
    >>> net = amj.networks.mlp([4, 8, 3], activation=jnp.tanh)
    >>> params = net.init(jax.random.key(0))
    >>> tx = amj.surrogate_minimization(net, inner_steps=5, delta=1e-2)
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
    prep = _common.prepare(cfg.net, params, batch, "surrogate minimization")
    new, value, curv, solves = iterate(prep.stage_params, prep.x, prep.y, state.step_size)
    new_state = SMState(
      count=optax.safe_int32_increment(state.count),
      loss=value.astype(jnp.float32),
      curvature=jnp.stack(curv).astype(jnp.float32),
      local_loss=jnp.stack([s.model for s in solves]).astype(jnp.float32),
      inner_iterations=jnp.stack([s.iterations for s in solves]).astype(jnp.int32),
      step_size=jnp.stack([s.step for s in solves]).astype(jnp.float32),
    )
    return _common.params_update(cfg.net, new, prep.params), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
