r"""The local losses of surrogate minimization (SM), built and minimised stage by stage.

Asad et al., "Surrogate Minimization" (SM paper), Proposition 1 and Algorithm 1 with
:math:`\rho = 0`. At the iterate one forward and one backward pass give every stage's input
:math:`z_t^{(i-1)}`, output :math:`z_t^{(i)}` and output gradient :math:`g^{(i)}`; from them
each stage ``i`` gets a quadratic local loss

.. math::
   \mathcal L_i(\theta) = \langle g_{\theta_i}, \theta - \theta_t\rangle
     + \tfrac12 (\theta - \theta_t)^\top \mathbb H_i (\theta - \theta_t),\qquad
   g_{\theta_i} = \partial h/\partial\theta_i,

whose blocks :math:`\mathbb H_i` come from a majorizer (``majorizer``, one object per
construction, :mod:`altmin_jax.sm.majorizers`):

* :class:`~altmin_jax.sm.majorizers.Young` (``"young"``, the default,
  :mod:`altmin_jax.sm.young_bound`): a valid majorizer,
  :math:`\nabla^2 h \preceq \mathrm{diag}(\mathbb H_i)`, that does not inflate down the
  network, from stage-local data (the logits' Jacobian per sample and a per-sample bound of
  the rest, one reverse pass per iteration);
* :class:`~altmin_jax.sm.majorizers.PaperConstants` (``"paper"``,
  :mod:`altmin_jax.sm.paper_bound`): the paper's literal constants, not a majorizer.

Up to the dropped third-order term, :math:`h(\theta) \le h(\theta_t) + \sum_i \mathcal
L_i(\theta_i)` for ``"young"`` (Proposition 1), so descent on every local loss descends on
:math:`h` for small steps (Theorem 1). Every local loss needs only its stage's data, so the
N inner steps of all stages run in parallel with no communication
(:func:`solve_local_loss`). ``delta`` is given per sample: the construction uses
:math:`\delta = ` ``delta / B`` (every curvature of the batch-mean loss scales like
:math:`1/B`), so one value serves every batch size.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax.numpy as jnp
import optax

from altmin_jax import numerics
from altmin_jax.core import checks
from altmin_jax.core.types import Array, Loss, PyTree
from altmin_jax.networks import LayeredNetwork
from altmin_jax.networks.stages import check_network
from altmin_jax.numerics.line_search import ArmijoSearch, check_search
from altmin_jax.sm import majorizers
from altmin_jax.sm._common import ForwardBackward, resolve_loss_smoothness
from altmin_jax.sm.majorizers import LocalQuadratic, Majorizer, StageKind

SOLVERS = ("cg", "armijo")
CURVATURES = ("full", "scalar")
SOLVE_SEED_OFFSET = 1000  # start vectors of the local solves: seed + 1000
MIN_DELTA = float(jnp.finfo(jnp.float32).eps)  # the smallest delta * B float32 resolves
# The extrapolating Armijo search along the SM step: first trial twice the last accepted
# multiple on the same batch (never below 1; 1 on a new batch), at most 64, halving down to
# 2^-20 (26 halvings from 64); c = 0.1; when no trial passes, no step (0).
STEP_SEARCH = ArmijoSearch(
  init_step=1.0,
  armijo_c=0.1,
  backtrack_factor=0.5,
  max_backtracks=26,
  fallback_step=0.0,
  step_growth=2.0,
  max_step=64.0,
)


# ---------------------------------------------------------------------- options


@dataclasses.dataclass(frozen=True)
class SMOptions:
  r"""The options of an SM iteration, validated when built (one place for the single-device
  and the pipelined step).

  Attributes:
    inner_steps: N >= 1 inner solver steps per stage and iteration.
    solver: ``"cg"`` (the paper's experiments) or ``"armijo"`` (GD with Armijo search).
    majorizer: a :class:`~altmin_jax.sm.majorizers.Majorizer`, or its shorthand ``"young"``
      (valid, the default) or ``"paper"`` (the literal constants); held resolved.
    delta: :math:`\delta B > 0`, the coupling split per sample (module docstring).
    power_iterations: Lanczos steps (>= 1) per eigenvalue estimate (``"paper"``'s
      constants, ``"young"`` on non-dense stages, ``curvature="scalar"``).
    loss_smoothness: per-sample smoothness ``L`` of the loss, ``None`` for the library's
      losses.
    curvature: ``"full"`` (:math:`\mathbb H_i`) or ``"scalar"``
      (:math:`\lambda_{\max}(\mathbb H_i) I`, minimised in closed form).
    curvature_tol: negative-curvature guard of both solvers (>= 0).
    line_search: the :class:`~altmin_jax.numerics.ArmijoSearch` of ``solver="armijo"``.
    seed: offset (>= 0) of the fixed Lanczos start vectors.
    step_search: the Armijo search along the whole SM step :math:`d`
      (:class:`~altmin_jax.numerics.ArmijoSearch`; :data:`STEP_SEARCH` extrapolates from
      twice the last accepted multiple of :math:`d` on the same batch, at most 64, halving;
      on a new batch it starts at 1, the majorizer's minimiser, which is always among the
      trials) or ``None`` (take :math:`d`).
    cg_warm_start: start each stage's CG from its previous step, scaled to the exact
      minimiser of the new local loss along it (``solver="cg"``, ``curvature="full"``).
    curvature_refresh: recompute the majorizer's curvature data every this many
      iterations (>= 1), in between reuse the last (same batch only; a new batch
      refreshes); with a ``step_search``, an iteration whose stale curvature fails the
      Armijo test at step 1 refreshes at once.
  """

  inner_steps: int = 10
  solver: str = "cg"
  majorizer: str | Majorizer = "young"
  delta: float = 3e-3
  power_iterations: int = 3
  loss_smoothness: float | None = None
  curvature: str = "full"
  curvature_tol: float = 0.0
  line_search: ArmijoSearch | None = None
  seed: int = 0
  step_search: ArmijoSearch | None = STEP_SEARCH
  cg_warm_start: bool = False
  curvature_refresh: int = 1

  def __post_init__(self):
    delta = checks.check_positive("delta", self.delta)
    if not checks.is_traced(delta) and delta < MIN_DELTA:
      raise ValueError(
        f"delta must be >= {MIN_DELTA:.3g} (float32's resolution: a smaller split of the "
        f"coupling is lost beside the loss's own curvature and its inverse overflows), got "
        f"delta={self.delta!r}"
      )
    checked = dict(
      inner_steps=checks.check_int("inner_steps", self.inner_steps, 1),
      solver=checks.check_choice("solver", self.solver, SOLVERS),
      majorizer=majorizers.resolve(self.majorizer),
      delta=delta,
      power_iterations=checks.check_int("power_iterations", self.power_iterations, 1),
      curvature=checks.check_choice("curvature", self.curvature, CURVATURES),
      curvature_tol=checks.check_positive("curvature_tol", self.curvature_tol, allow_zero=True),
      line_search=check_search(self.line_search),
      seed=checks.check_int("seed", self.seed, 0),
      step_search=(
        None if self.step_search is None else check_search(self.step_search, "step_search")
      ),
      cg_warm_start=checks.check_bool("cg_warm_start", self.cg_warm_start),
      curvature_refresh=checks.check_int("curvature_refresh", self.curvature_refresh, 1),
    )
    if checked["cg_warm_start"] and (self.solver != "cg" or self.curvature != "full"):
      raise ValueError(
        "cg_warm_start=True warm-starts CG: it needs solver='cg' and curvature='full', got "
        f"solver={self.solver!r}, curvature={self.curvature!r}"
      )
    if self.loss_smoothness is not None:
      checked["loss_smoothness"] = checks.check_positive("loss_smoothness", self.loss_smoothness)
    for name, value in checked.items():
      object.__setattr__(self, name, value)

  @classmethod
  def from_arguments(cls, arguments: dict[str, Any]) -> SMOptions:
    """The options among a factory's ``arguments`` (its ``locals()``): the SM factories
    take them as explicit keywords, which ``optax.inject_hyperparams`` needs."""
    return cls(**{f.name: arguments[f.name] for f in dataclasses.fields(cls)})


class SMConfig(NamedTuple):
  """Static configuration of an SM step: the network, the loss and the options."""

  net: LayeredNetwork
  loss: Loss
  options: SMOptions
  loss_smoothness: Any  # L of the loss, resolved


def sm_config(net: Any, loss: Any, options: SMOptions) -> SMConfig:
  """The validated :class:`SMConfig` (``loss_smoothness`` resolved for ``loss``)."""
  net = check_network(net)
  loss = checks.check_loss(loss)
  smoothness = resolve_loss_smoothness(loss, options.loss_smoothness)
  for i, stage in enumerate(net.stages, start=1):
    if not getattr(stage, "per_sample", True):
      raise ValueError(
        "surrogate minimization needs stages that map samples independently; stage "
        f"{i} ({stage.name!r}) has per_sample=False"
      )
  return SMConfig(net=net, loss=loss, options=options, loss_smoothness=smoothness)


class Scales(NamedTuple):
  """The batch-size dependent constants of one iteration."""

  gn: Any  # m: the Gauss-Newton factor of every stage ("young")
  delta: Any  # delta / B
  c_last: Any  # L / B, the smoothness of the batch-mean loss in the logits


def scales(cfg: SMConfig, batch: int, dtype) -> Scales:
  L = cfg.loss_smoothness
  return Scales(
    gn=jnp.asarray(cfg.net.num_stages, dtype),
    delta=jnp.asarray(cfg.options.delta / batch, dtype),
    c_last=jnp.asarray(L / batch, dtype),
  )


# ------------------------------------------------------------- per-stage data


class StageData(NamedTuple):
  """What stage ``i``'s local loss needs: stage-local arrays only."""

  z_prev: Array  # z^(i-1)
  theta: PyTree
  g_out: Array  # g^(i) = dh/dz^(i)
  z_out: Array  # z^(i)
  bound: PyTree  # the majorizer's curvature data of the stage (Majorizer.bounds)


def stage_data(stage_params, fb: ForwardBackward, bounds) -> list[StageData]:
  """Every stage's :class:`StageData` from one forward and backward pass and the
  majorizer's ``bounds`` (no computation)."""
  return [
    StageData(
      z_prev=fb.z[i - 1],
      theta=stage_params[i - 1],
      g_out=fb.g_z[i - 1],
      z_out=fb.z[i],
      bound=bounds[i - 1],
    )
    for i in range(1, len(stage_params) + 1)
  ]


# ------------------------------------------------------------------ local losses


def local_quadratic(
  options: SMOptions, kind: StageKind, first, last, weight, data: StageData, sc: Scales
) -> LocalQuadratic:
  r"""The local loss :math:`\mathcal L_i` of one stage from its :class:`StageData`, built by
  ``options.majorizer`` (:meth:`~altmin_jax.sm.majorizers.Majorizer.local_quadratic`).

  ``first`` (no coupling term) and ``last`` (no activation; dense closed forms only) are
  Python bools or traced ones (pipelined stages); ``weight`` is the stage index ``i``
  (:math:`1 + 1/\tau_i`, :class:`~altmin_jax.sm.majorizers.Young`).
  """
  return options.majorizer.local_quadratic(kind, first, last, weight, data, sc)


def local_loss_value(lq: LocalQuadratic, d: PyTree) -> Array:
  r""":math:`\mathcal L_i(\theta_t + d) = g^\top d + \tfrac12 d^\top \mathbb H_i d` (``d`` in
  the canonical form of ``lq``)."""
  return optax.tree.vdot(lq.g_theta, d) + 0.5 * optax.tree.vdot(d, lq.matvec(d))


# ------------------------------------------------------------------ local solves


class StageSolve(NamedTuple):
  """Result of one stage's local solve."""

  d: PyTree  # theta_{t+1} - theta_t, in the stage's parameter structure
  model: Array  # L_i(theta_{t+1})
  iterations: Array  # int32
  step: Array  # next Armijo trial step
  slope: Array  # g_theta . d, the slope of h along d (the step search's directional derivative)


def warm_start(lq: LocalQuadratic, previous: PyTree) -> tuple[PyTree, PyTree]:
  r"""The warm start of a stage's CG from its previous step :math:`d'` (in the stage's
  parameter structure): :math:`x_0 = a d'` with :math:`a = -g^\top d' / d'^\top
  \mathbb H_i d'` the exact minimiser of the new local loss along :math:`d'` (0 when that
  curvature is not positive, e.g. :math:`d' = 0`), and :math:`\mathbb H_i x_0`; one
  Hessian-vector product."""
  d = lq.from_params(previous)
  hd = lq.matvec(d)
  curv = optax.tree.vdot(d, hd)
  pos = curv > 0
  a = jnp.where(pos, -optax.tree.vdot(lq.g_theta, d) / jnp.where(pos, curv, 1.0), 0.0)
  return optax.tree.scale(a, d), optax.tree.scale(a, hd)


def solve_local_loss(
  options: SMOptions, lq: LocalQuadratic, step0: Array, seed, real_shapes=None, warm=None
) -> StageSolve:
  r"""Minimises one stage's local loss from :math:`d = 0`, or with ``warm`` (the stage's
  previous step, ``options.cg_warm_start``) from :func:`warm_start`.

  ``N = inner_steps`` steps of CG (:func:`~altmin_jax.numerics.conjugate_gradient` on
  :math:`\mathbb H_i d = -g_{\theta_i}`) or of GD with Armijo search
  (:func:`~altmin_jax.numerics.quadratic_armijo_gd`). With ``curvature="scalar"``
  :math:`\mathbb H_i` is replaced by :math:`\lambda_{\max}(\mathbb H_i) I` (Lanczos from
  :func:`~altmin_jax.numerics.start_vector` with ``seed`` and ``real_shapes``) and the
  minimiser :math:`d = -g_{\theta_i}/\lambda_{\max}` is taken in closed form (the paper's
  remark after Algorithm 1: layer-wise GD with per-layer step sizes).
  """
  g = lq.g_theta
  if options.curvature == "scalar":
    v0 = numerics.start_vector(seed, g, real_shapes)
    lam = numerics.top_eigenvalue(lq.matvec, v0, options.power_iterations)
    pos = lam > 0
    inv = jnp.where(pos, 1.0 / jnp.where(pos, lam, 1.0), 0.0)
    d = optax.tree.scale(-inv, g)
    gg = optax.tree.vdot(g, g)
    return StageSolve(lq.to_params(d), -0.5 * inv * gg, pos.astype(jnp.int32), step0, -inv * gg)
  if options.solver == "cg":
    x0, ax0 = (None, None) if warm is None else warm_start(lq, warm)
    res = numerics.conjugate_gradient(
      lq.matvec,
      optax.tree.scale(-1.0, g),
      steps=options.inner_steps,
      curvature_tol=options.curvature_tol,
      x0=x0,
      Ax0=ax0,
    )
    slope = optax.tree.vdot(g, res.x)
    model = slope + 0.5 * optax.tree.vdot(res.x, res.Ax)
    return StageSolve(lq.to_params(res.x), model, res.iterations, step0, slope)
  res = numerics.quadratic_armijo_gd(
    lq.matvec,
    g,
    steps=options.inner_steps,
    init_step=step0,
    config=options.line_search,
    curvature_tol=options.curvature_tol,
  )
  slope = optax.tree.vdot(g, res.x)
  return StageSolve(lq.to_params(res.x), res.value, res.iterations, res.next_step, slope)
