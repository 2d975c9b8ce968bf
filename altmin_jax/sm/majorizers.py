r"""The majorizers of surrogate minimization: how a stage's local loss gets its curvature.

SM's local loss of stage ``i`` (:mod:`altmin_jax.sm.local_losses`) is a quadratic
:math:`\mathcal L_i(\theta) = \langle g_{\theta_i}, \theta - \theta_t\rangle + \tfrac12
(\theta - \theta_t)^\top \mathbb H_i (\theta - \theta_t)`; a *majorizer* says where
:math:`\mathbb H_i` comes from. It is one object per construction, passed as SM's
``majorizer`` (as optimistix passes its searches and descents); the strings ``"young"`` and
``"paper"`` are shorthands, resolved by :func:`resolve` and nowhere else.

Every majorizer has

* ``bounds(cfg, stage_params, fb, y, sc)``: every stage's curvature data (one pytree of
  arrays per stage) from one forward and backward pass: the expensive phase of an
  iteration, which ``curvature_refresh`` skips between refreshes;
* ``local_quadratic(kind, first, last, weight, data, sc)``: a stage's
  :class:`LocalQuadratic` from its :class:`~altmin_jax.sm.local_losses.StageData`, whose
  ``bound`` is that stage's entry of ``bounds``;
* ``summary(bound)``: the scalar :class:`~altmin_jax.sm.SMState` records per stage;
* ``pipelined``: whether the pipelined step computes it.

The two constructions:

* :class:`Young` (``"young"``, the default; :mod:`altmin_jax.sm.young_bound`): a valid
  majorizer, :math:`\nabla^2 h \preceq \mathrm{diag}(\mathbb H_i)`, from stage-local data:
  the logits' Jacobian per sample, the loss's Hessian per sample and a per-sample bound of
  the rest of the network (:class:`~altmin_jax.sm.young_bound.Bound`);
* :class:`PaperConstants` (``"paper"``; :mod:`altmin_jax.sm.paper_bound`): the SM paper's
  literal constants :math:`c_{i+1}`, not a majorizer.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from altmin_jax.core.types import Array, MatVec, PyTree
from altmin_jax.networks import LayeredNetwork
from altmin_jax.networks.layered import dense_kernel_bias, identity, with_dense_kernel_bias
from altmin_jax.networks.stages import StageFn, stage_function
from altmin_jax.sm import paper_bound, young_bound
from altmin_jax.sm._common import KNOWN_LOSS_SMOOTHNESS, ForwardBackward

REST_SEED_OFFSET = 100  # start vectors of the rest bounds: stage i's is seed + 100 + i


class StageKind(NamedTuple):
  """The static description of a stage's map for the local loss."""

  fn: StageFn  # f_i(theta, z), post-activation (the logits for the last stage)
  activation: Callable | None  # dense closed forms: the elementwise activation, else None


def stage_kind(net: LayeredNetwork, i: int) -> StageKind:
  """Stage ``i``'s :class:`StageKind` (1-based): the dense closed forms where they apply."""
  stage = net.stages[i - 1]
  last = i == net.num_stages
  if stage.dense and (last or young_bound.is_dense(stage)):
    return StageKind(stage_function(net, i), identity if last else stage.activation)
  return StageKind(stage_function(net, i), None)


class LocalQuadratic(NamedTuple):
  """A stage's local loss: gradient and Hessian-vector product in a canonical parameter
  form, and the maps between it and the stage's own parameter structure."""

  g_theta: PyTree  # dh/dtheta_i
  matvec: MatVec  # v -> H_i v
  to_params: Callable[[PyTree], PyTree]
  from_params: Callable[[PyTree], PyTree]


def _same(d: PyTree) -> PyTree:
  return d


class Majorizer(abc.ABC):
  """The interface of a majorizer (module docstring)."""

  name: ClassVar[str]
  pipelined: ClassVar[bool] = False

  @abc.abstractmethod
  def bounds(self, cfg, stage_params, fb: ForwardBackward, y: Array, sc) -> list[PyTree]:
    """Every stage's curvature data (entry ``i - 1``), from one forward and backward
    pass ``fb`` at ``stage_params`` on labels ``y``; ``cfg`` is the step's
    :class:`~altmin_jax.sm.local_losses.SMConfig`, ``sc`` its
    :class:`~altmin_jax.sm.local_losses.Scales`."""

  @abc.abstractmethod
  def local_quadratic(self, kind: StageKind, first, last, weight, data, sc) -> LocalQuadratic:
    """The local loss :math:`\\mathcal L_i` of one stage from its
    :class:`~altmin_jax.sm.local_losses.StageData`. ``first`` (no coupling term) and
    ``last`` (no activation) are Python bools or traced ones (pipelined stages);
    ``weight`` is the stage index ``i``."""

  @abc.abstractmethod
  def summary(self, bound: PyTree) -> Array:
    """The scalar recorded per stage in :class:`~altmin_jax.sm.SMState`."""


# ------------------------------------------------------------------ Young


def loss_hessians(cfg, logits: Array, y: Array) -> Array:
  r"""Per-sample Hessians ``(B, K, K)`` of the batch-mean loss in the logits,
  :math:`\nabla^2\ell_b`: exact for the library's losses (convex, so PSD), :math:`(L/B)
  I` for any other loss (its smoothness bound)."""
  B = logits.shape[0]
  flat = logits.reshape(B, -1)
  if cfg.loss in KNOWN_LOSS_SMOOTHNESS:
    one = lambda o, t: cfg.loss(o.reshape((1, *logits.shape[1:])), t[None])[0]
    return jax.vmap(jax.hessian(one))(flat, y) / B
  eye = jnp.eye(flat.shape[1], dtype=flat.dtype)
  return jnp.broadcast_to(eye * (cfg.loss_smoothness / B), (B, *eye.shape))


class Curvature(NamedTuple):
  """The loss's curvature as every stage sees it (:class:`Young`)."""

  hess: Array  # (B, K, K): the batch-mean loss's Hessian in each sample's logits
  jacs: list  # the logits' Jacobian per sample in z^(i) (entry i - 1; None for the last)


@dataclasses.dataclass(frozen=True)
class Young(Majorizer):
  r"""The Young-split majorizer of :mod:`altmin_jax.sm.young_bound` (``"young"``).

  Stage ``i``'s curvature data is a :class:`~altmin_jax.sm.young_bound.Bound`: the logits'
  Jacobian in its output per sample :math:`\bar J`, the loss's Hessian per sample
  :math:`\nabla^2\ell_b` and the per-sample bound :math:`e^{(i+1)}_b` of the rest above it,
  and

  .. math::
     \mathbb H_i = m\, J_\theta^\top \bar J^\top \nabla^2\ell\, \bar J J_\theta
       + i\,J_\theta^\top \mathrm{diag}(e^{(i+1)}) J_\theta + G_{\theta\theta}
       + G_{z\theta}^\top G_{z\theta}/\delta .

  Its phases, which a benchmark can time one by one: :meth:`levels`, :meth:`curvature`,
  :meth:`rest_bounds`, assembled by :meth:`assemble`.
  """

  name: ClassVar[str] = "young"
  pipelined: ClassVar[bool] = True

  def levels(self, cfg, stage_params, fb: ForwardBackward) -> list:
    """Every stage's :class:`~altmin_jax.sm.young_bound.Level` (entry ``i - 1``; stage 1's
    is ``None``: nothing lies below it): its linear maps at the iterate (closures, cheap
    for dense stages)."""
    net, opts = cfg.net, cfg.options
    out = [None]
    for i in range(2, net.num_stages + 1):
      kind, theta, factor = stage_kind(net, i), stage_params[i - 1], young_bound.tau_factor(i)
      if kind.activation is not None:
        kernel, bias = dense_kernel_bias(theta)
        last = i == net.num_stages
        d = young_bound.dense_stage(kind.activation, kernel, bias, fb.z[i - 1], fb.g_z[i - 1], last)
        out.append(young_bound.dense_level(d, factor))
      else:
        s = young_bound.GenericStage(kind.fn, theta, fb.z[i - 1], fb.g_z[i - 1])
        out.append(
          young_bound.generic_level(s, factor, iterations=opts.power_iterations, seed=opts.seed + i)
        )
    return out

  def curvature(self, cfg, fb: ForwardBackward, y: Array, levels) -> Curvature:
    r"""The per-sample loss Hessians (:func:`loss_hessians`) and the logits' Jacobian per
    sample in every stage's output (entry ``i - 1``; ``None`` for the last stage, whose
    output is the logits) by one reverse pass over ``levels`` (:meth:`levels`)."""
    m = len(levels)
    jacs = [None] * m
    for i in range(m - 1, 0, -1):  # the logits' Jacobian in z^(i), from stage i + 1
      jacs[i - 1] = young_bound.jacobian_below(levels[i], jacs[i], fb.z[i + 1])
    return Curvature(loss_hessians(cfg, fb.z[-1], y), jacs)

  def rest_bounds(self, cfg, fb: ForwardBackward, sc, levels) -> list[Array]:
    r"""Every stage's per-sample bound :math:`e^{(i+1)}_b` of the rest above its output
    (entry ``i - 1``; 0 for the last stage): Lanczos on the stages above
    (:func:`~altmin_jax.sm.young_bound.rest_bound`), stage ``i`` started from ``seed +``
    :data:`REST_SEED_OFFSET` ``+ i`` (the pipelined step's start vectors too)."""
    opts = cfg.options
    return [
      young_bound.rest_bound(
        levels[i:],
        sc.delta,
        fb.z[i],
        iterations=opts.power_iterations,
        seed=opts.seed + REST_SEED_OFFSET + i,
      )
      for i in range(1, len(levels) + 1)
    ]

  def assemble(self, curv: Curvature, rest: list[Array]) -> list[young_bound.Bound]:
    """Every stage's :class:`~altmin_jax.sm.young_bound.Bound` from :meth:`curvature` and
    :meth:`rest_bounds` (no computation)."""
    return [young_bound.Bound(j, e, curv.hess) for j, e in zip(curv.jacs, rest)]

  def bounds(self, cfg, stage_params, fb, y, sc) -> list[young_bound.Bound]:
    levels = self.levels(cfg, stage_params, fb)
    return self.assemble(self.curvature(cfg, fb, y, levels), self.rest_bounds(cfg, fb, sc, levels))

  def local_quadratic(self, kind, first, last, weight, data, sc) -> LocalQuadratic:
    kw = dict(gn=sc.gn, weight=weight, inv_delta=1.0 / sc.delta, first=first)
    if kind.activation is not None:
      theta = data.theta
      kernel, bias = dense_kernel_bias(theta)
      d = young_bound.dense_stage(kind.activation, kernel, bias, data.z_prev, data.g_out, last)
      return LocalQuadratic(
        young_bound.dense_gradient(d),
        young_bound.dense_matvec(d, data.bound, **kw),
        lambda c: with_dense_kernel_bias(theta, c["kernel"], c.get("bias")),
        _canonical_dense,
      )
    s = young_bound.GenericStage(kind.fn, data.theta, data.z_prev, data.g_out)
    return LocalQuadratic(
      young_bound.generic_gradient(s),
      young_bound.generic_matvec(s, data.bound, **kw),
      _same,
      _same,
    )

  def summary(self, bound: young_bound.Bound) -> Array:
    return jnp.max(bound.e)


def _canonical_dense(d: PyTree) -> dict:
  kernel, bias = dense_kernel_bias(d)
  return {"kernel": kernel} if bias is None else {"kernel": kernel, "bias": bias}


# ------------------------------------------------------------------ the paper's constants


class PaperBound(NamedTuple):
  """A stage's constant of the paper's chain (:class:`PaperConstants`)."""

  c_next: Array  # c_{i+1}


@dataclasses.dataclass(frozen=True)
class PaperConstants(Majorizer):
  r"""The SM paper's literal constants (``"paper"``; :mod:`altmin_jax.sm.paper_bound`):
  stage ``i``'s curvature data is :math:`c_{i+1}`, the largest eigenvalue of the loss's
  Hessian in stage ``i + 1``'s input plus :math:`\delta`, and :math:`\mathbb H_i` the
  second-order expansion of :math:`\psi_i`. Not a majorizer: the block-diagonal matrix can
  fall below the loss Hessian; it needs Hessian-vector products through every stage above
  a stage, so the pipelined step does not compute it."""

  name: ClassVar[str] = "paper"

  def bounds(self, cfg, stage_params, fb, y, sc) -> list[PaperBound]:
    opts = cfg.options
    c_next = paper_bound.paper_constants(
      cfg.net,
      stage_params,
      fb,
      cfg.loss,
      y,
      sc.c_last,
      delta=sc.delta,
      iterations=opts.power_iterations,
      seed=opts.seed,
    )
    return [PaperBound(c) for c in c_next]

  def local_quadratic(self, kind, first, last, weight, data, sc) -> LocalQuadratic:
    del last, weight
    psi = paper_bound.make_psi(kind.fn, data.g_out, data.z_out, data.bound.c_next)
    g, mv = paper_bound.psi_quadratic(psi, data.z_prev, data.theta, sc.delta, first)
    return LocalQuadratic(g, mv, _same, _same)

  def summary(self, bound: PaperBound) -> Array:
    return bound.c_next


YOUNG = Young()
PAPER = PaperConstants()
SHORTHANDS: dict[str, Majorizer] = {m.name: m for m in (YOUNG, PAPER)}


def resolve(majorizer: Any) -> Majorizer:
  """The :class:`Majorizer` of ``majorizer``: an instance, or a shorthand of
  :data:`SHORTHANDS` (``"young"``, ``"paper"``)."""
  if isinstance(majorizer, Majorizer):
    return majorizer
  if isinstance(majorizer, str) and majorizer in SHORTHANDS:
    return SHORTHANDS[majorizer]
  raise ValueError(
    f"majorizer must be an altmin_jax.sm.majorizers.Majorizer or one of "
    f"{sorted(SHORTHANDS)}, got majorizer={majorizer!r}"
  )
