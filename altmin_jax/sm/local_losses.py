r"""The local losses of surrogate minimization (SM) and their minimisation, stage by stage.

Asad et al., "Surrogate Minimization" (SM paper), Proposition 1 and Appendices A-B, in the
notation of :mod:`altmin_jax.sm._common` (post-activation stages :math:`f_i`, batch-mean
objective :math:`h`). This module is the one home of the SM formulas; the single-device
step (:mod:`altmin_jax.sm.surrogate`) and the pipelined step
(:mod:`altmin_jax.sm.pipeline.sm`) both call its functions.

At the iterate :math:`(z_t, \theta_t)` one forward and one backward pass give
:math:`z_t^{(i)}` and :math:`g_z^{(i)} = \partial h/\partial z^{(i)}`. Stage ``i`` owns the
scalar function of its input and parameters (Appendix B, :math:`\Psi^{(i)}`)

.. math::
   \psi_i(z, \theta) = \langle g_z^{(i)}, f_i(z, \theta) - z_t^{(i)}\rangle
     + \frac{c_{i+1}}{2}\,\|f_i(z, \theta) - z_t^{(i)}\|^2,

with :math:`c_{m+1} = L/B` (``L`` the per-sample smoothness of the loss,
:func:`~altmin_jax.sm._common.resolve_loss_smoothness`) and, down the chain (Appendix A),

.. math::
   c_i = \max(\hat\lambda_{\max}(H^{(i)}_{zz}), 0) + \delta,\qquad
   H^{(i)}_{zz} = \nabla^2_{zz}\psi_i(z_t^{(i-1)}, \theta_t),

where :math:`\hat\lambda_{\max}` is a Lanczos estimate from exact Hessian-vector products
(:func:`~altmin_jax.numerics.top_eigenvalue`: the top Ritz value plus its residual, per
sample when the stage maps samples independently and :math:`H_{zz}` is block diagonal).
The local loss of stage ``i`` (Proposition 1 with :math:`\rho = 0`) is

.. math::
   \mathcal L_i(\theta) = \langle g_{\theta_i}, \theta - \theta_t\rangle
     + \tfrac12 (\theta - \theta_t)^\top \mathbb H_i (\theta - \theta_t),\qquad
   \mathbb H_i = H^{(i)}_{\theta\theta} + \frac{H^{(i)\top}_{z\theta} H^{(i)}_{z\theta}}{\delta}

(no coupling term for the first stage, whose input is data), every second derivative of
:math:`\psi_i` taken at :math:`(z_t^{(i-1)}, \theta_t)` with ``jax.linearize`` of
``jax.grad`` (exact; the paper used finite differences), and
:math:`g_{\theta_i} = \nabla_\theta\psi_i = \partial h/\partial\theta_i`. Everything a
stage needs is local: :math:`(z_t^{(i-1)}, z_t^{(i)}, g_z^{(i)}, c_{i+1}, \theta_i)`, so the
N inner steps of all stages run in parallel with no communication.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from altmin_jax import numerics
from altmin_jax.core import checks
from altmin_jax.core.types import Array, Loss, MatVec, PyTree
from altmin_jax.networks import LayeredNetwork
from altmin_jax.numerics.line_search import ArmijoSearch, check_search
from altmin_jax.sm._common import ForwardBackward, StageFn, check_network, resolve_loss_smoothness

SOLVERS = ("cg", "armijo")
CURVATURES = ("full", "scalar")
SOLVE_SEED_OFFSET = 1000  # start vectors of the local solves: seed + 1000


# ---------------------------------------------------------------------- options


@dataclasses.dataclass(frozen=True)
class SMOptions:
  """The options of an SM iteration, validated when built (one place for the single-device
  and the pipelined step).

  Attributes:
    inner_steps: N >= 1 inner solver steps per stage and iteration.
    solver: ``"cg"`` (the paper's experiments) or ``"armijo"`` (GD with Armijo search).
    delta: :math:`\\delta > 0` of Appendix A.
    power_iterations: Lanczos steps (>= 1) per curvature estimate.
    loss_smoothness: per-sample smoothness ``L`` of the loss, ``None`` for the library's
      losses.
    curvature: ``"full"`` (:math:`\\mathbb H_i`) or ``"scalar"``
      (:math:`\\lambda_{\\max}(\\mathbb H_i) I`, minimised in closed form).
    curvature_tol: negative-curvature guard of both solvers (>= 0).
    line_search: the :class:`~altmin_jax.numerics.ArmijoSearch` of ``solver="armijo"``.
    seed: offset (>= 0) of the fixed Lanczos start vectors.
  """

  inner_steps: int = 10
  solver: str = "cg"
  delta: float = 1e-2
  power_iterations: int = 10
  loss_smoothness: float | None = None
  curvature: str = "full"
  curvature_tol: float = 0.0
  line_search: ArmijoSearch | None = None
  seed: int = 0

  def __post_init__(self):
    checked = dict(
      inner_steps=checks.check_int("inner_steps", self.inner_steps, 1),
      solver=checks.check_choice("solver", self.solver, SOLVERS),
      delta=checks.check_positive("delta", self.delta),
      power_iterations=checks.check_int("power_iterations", self.power_iterations, 1),
      curvature=checks.check_choice("curvature", self.curvature, CURVATURES),
      curvature_tol=checks.check_positive("curvature_tol", self.curvature_tol, allow_zero=True),
      line_search=check_search(self.line_search),
      seed=checks.check_int("seed", self.seed, 0),
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
  return SMConfig(net=net, loss=loss, options=options, loss_smoothness=smoothness)


# ------------------------------------------------------------- local functions


def make_psi(fn: StageFn, g_out: Array, z_out: Array, c_next: Array) -> Callable:
  r""":math:`\psi_i(z, \theta)` (module docstring) for a stage map ``fn(theta, z)``, output
  gradient ``g_out``, output ``z_out`` at the iterate and curvature ``c_next``
  (:math:`c_{i+1}`)."""

  def psi(z, theta):
    # Appendix B: Psi^(m), eq. (3), with 1/eta = c_{m+1}; Psi^(i-1) with H_zz = c_i I.
    diff = fn(theta, z) - z_out
    return jnp.vdot(g_out, diff) + 0.5 * c_next * jnp.vdot(diff, diff)

  return psi


def hzz_product(psi: Callable, z: Array, theta: PyTree) -> MatVec:
  r"""``u -> H_zz u``, :math:`H_{zz} = \nabla^2_{zz}\psi(z, \theta)` (jvp of grad)."""
  _, lin = jax.linearize(lambda zz: jax.grad(psi, argnums=0)(zz, theta), z)
  return lin


class LocalQuadratic(NamedTuple):
  """A stage's local loss: gradient and Hessian-vector product."""

  g_theta: PyTree  # \nabla_theta psi at the iterate (= dh/dtheta_i)
  matvec: MatVec  # v -> H_i v


def local_quadratic(psi: Callable, z: Array, theta: PyTree, delta, first) -> LocalQuadratic:
  r"""The local loss :math:`\mathcal L_i` of one stage (module docstring).

  ``matvec(v)`` is :math:`\mathbb H_i v = H_{\theta\theta} v + H_{z\theta}^\top
  (H_{z\theta} v) / \delta`, where :math:`(H_{z\theta} v, H_{\theta\theta} v)` is one jvp
  of :math:`\nabla_{(z,\theta)}\psi` in the direction :math:`(0, v)` and
  :math:`H_{z\theta}^\top u` one jvp of :math:`\nabla_\theta \psi` in the direction
  :math:`(u, 0)` (mixed partials commute). ``first`` (the first stage has no coupling
  term) is a Python bool, or a traced one in a pipeline whose devices hold the first
  stage or another one.
  """
  if first is True:
    g_theta, lin = jax.linearize(lambda th: jax.grad(psi, argnums=1)(z, th), theta)
    return LocalQuadratic(g_theta=g_theta, matvec=lin)
  (_, g_theta), lin_theta = jax.linearize(lambda th: jax.grad(psi, argnums=(0, 1))(z, th), theta)
  _, lin_coupling_t = jax.linearize(lambda zz: jax.grad(psi, argnums=1)(zz, theta), z)

  def matvec(v):
    # Appendix A: H_i = H_thetatheta + H_ztheta^T H_ztheta / delta (condition (2)).
    h_z, h_theta = lin_theta(v)  # (H_ztheta v, H_thetatheta v)
    coupled = optax.tree.add_scale(h_theta, 1.0 / delta, lin_coupling_t(h_z))
    if first is False:
      return coupled
    return jax.tree.map(lambda a, b: jnp.where(first, a, b), h_theta, coupled)

  return LocalQuadratic(g_theta=g_theta, matvec=matvec)


def local_loss_value(g_theta: PyTree, matvec: MatVec, d: PyTree) -> Array:
  r""":math:`\mathcal L_i(\theta_t + d) = g^\top d + \tfrac12 d^\top \mathbb H_i d`."""
  return optax.tree.vdot(g_theta, d) + 0.5 * optax.tree.vdot(d, matvec(d))


# ------------------------------------------------------------ curvature chain


def stage_is_per_sample(net: LayeredNetwork, i: int) -> bool:
  r"""Whether stage ``i``'s map handles every sample on its own, so that
  :math:`\nabla^2_{zz}\psi_i` is block diagonal over the batch.

  True for dense stages (``Stage.dense``: ``flatten(a) @ kernel + bias`` row by row,
  followed by a per-sample activation, as the :class:`~altmin_jax.networks.Stage`
  contract requires), i.e. :func:`~altmin_jax.networks.mlp` and ``nnx.Linear`` layers.
  Other stages (convolutions, adapted modules that might mix samples through batch
  statistics) are treated as one block.
  """
  return bool(net.stages[i - 1].dense)


def stage_curvature(
  fn: StageFn,
  theta: PyTree,
  z_in: Array,
  g_out: Array,
  z_out: Array,
  c_next: Array,
  v0: Array,
  *,
  delta,
  iterations: int,
  per_sample: bool,
) -> Array:
  r""":math:`c_i = \max(\hat\lambda_{\max}(\nabla^2_{zz}\psi_i), 0) + \delta` of one stage
  (Appendix A): ``iterations`` Lanczos steps on :math:`H_{zz}` from ``v0``, per sample
  when ``per_sample``, :math:`\hat\lambda = \max_b(\theta_b + r_b)` (top Ritz value of
  sample ``b``'s block plus its residual; clipped at zero, so :math:`c_i` bounds
  :math:`H_{zz}` also when :math:`\lambda_{\max} < 0`)."""
  mv = hzz_product(make_psi(fn, g_out, z_out, c_next), z_in, theta)
  lam = numerics.top_eigenvalue(mv, v0, iterations, per_sample=per_sample)
  return jnp.maximum(lam, 0.0) + delta


def curvature_chain(
  stage_fns: Sequence[StageFn],
  stage_params: Sequence[PyTree],
  fb: ForwardBackward,
  c_last: Array,
  *,
  delta,
  iterations: int,
  seed: int = 0,
  per_sample: Sequence[bool] | None = None,
) -> tuple[Array, ...]:
  r"""The constants :math:`(c_2, \dots, c_{m+1})`, top-down: :math:`c_{m+1}` =
  ``c_last``, then :func:`stage_curvature` for :math:`i = m, \dots, 2` from
  :func:`~altmin_jax.numerics.start_vector` with ``seed + i``, per sample where
  ``per_sample[i - 1]`` (:func:`stage_is_per_sample`; default: one block per stage).

  Returns:
    A tuple whose entry ``i - 1`` is :math:`c_{i+1}`, the constant stage ``i`` uses.
  """
  m = len(stage_fns)
  per_sample = [False] * m if per_sample is None else list(per_sample)
  c = [None] * (m + 2)
  c[m + 1] = c_last
  for i in range(m, 1, -1):
    z_in = fb.z[i - 1]
    c[i] = stage_curvature(
      stage_fns[i - 1],
      stage_params[i - 1],
      z_in,
      fb.g_z[i - 1],
      fb.z[i],
      c[i + 1],
      numerics.start_vector(seed + i, z_in),
      delta=delta,
      iterations=iterations,
      per_sample=per_sample[i - 1],
    )
  return tuple(c[2:])


# ------------------------------------------------------------------ local solves


class StageSolve(NamedTuple):
  """Result of one stage's local solve."""

  d: PyTree  # theta_{t+1} - theta_t
  model: Array  # L_i(theta_{t+1})
  iterations: Array  # int32
  step: Array  # next Armijo trial step


def solve_local_loss(
  options: SMOptions,
  fn: StageFn,
  first,
  z_prev: Array,
  theta: PyTree,
  g_out: Array,
  z_out: Array,
  c_next: Array,
  step0: Array,
  v0: PyTree,
) -> StageSolve:
  r"""Builds and minimises one stage's local loss from stage-local data only.

  ``N = inner_steps`` steps of CG (:func:`~altmin_jax.numerics.conjugate_gradient` on
  :math:`\mathbb H_i d = -g_{\theta_i}`) or of GD with Armijo search
  (:func:`~altmin_jax.numerics.quadratic_armijo_gd`), from :math:`d = 0`. With
  ``curvature="scalar"`` :math:`\mathbb H_i` is replaced by :math:`\lambda_{\max}(\mathbb
  H_i) I` (Lanczos from ``v0``, shaped like ``theta``) and the minimiser :math:`d =
  -g_{\theta_i}/\lambda_{\max}` is taken in closed form (the paper's remark after
  Algorithm 1: layer-wise GD with per-layer step sizes). ``first`` as in
  :func:`local_quadratic`.
  """
  lq = local_quadratic(make_psi(fn, g_out, z_out, c_next), z_prev, theta, options.delta, first)
  g = lq.g_theta
  if options.curvature == "scalar":
    lam = numerics.top_eigenvalue(lq.matvec, v0, options.power_iterations)
    pos = lam > 0
    inv = jnp.where(pos, 1.0 / jnp.where(pos, lam, 1.0), 0.0)
    d = optax.tree.scale(-inv, g)
    model = -0.5 * inv * optax.tree.vdot(g, g)
    return StageSolve(d, model, pos.astype(jnp.int32), step0)
  if options.solver == "cg":
    res = numerics.conjugate_gradient(
      lq.matvec,
      optax.tree.scale(-1.0, g),
      steps=options.inner_steps,
      curvature_tol=options.curvature_tol,
    )
    model = optax.tree.vdot(g, res.x) + 0.5 * optax.tree.vdot(res.x, res.Ax)
    return StageSolve(res.x, model, res.iterations, step0)
  res = numerics.quadratic_armijo_gd(
    lq.matvec,
    g,
    steps=options.inner_steps,
    init_step=step0,
    config=options.line_search,
    curvature_tol=options.curvature_tol,
  )
  return StageSolve(res.x, res.value, res.iterations, res.next_step)
