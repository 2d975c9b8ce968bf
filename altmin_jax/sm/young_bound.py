r"""The default majorizer of surrogate minimization: a block-diagonal bound of the loss
Hessian built with Young's inequality, valid and tight, with stage-local data.

Notation of :mod:`altmin_jax.sm._common`: stages :math:`z^{(i)} = f_i(z^{(i-1)}, \theta_i)`,
:math:`i = 1..m`, batch-mean loss :math:`h`, output gradients :math:`g^{(i)} = \partial
h/\partial z^{(i)}`, per-sample smoothness ``L`` of the loss. Per stage, :math:`J_z, J_\theta`
are the Jacobians of :math:`f_i` and :math:`G` the Hessian of :math:`\phi_i(z, \theta) =
\langle g^{(i)}, f_i(z, \theta)\rangle` (blocks :math:`G_{zz}, G_{z\theta}, G_{\theta\theta}`).

**Derivation.** Perturbing every stage by :math:`d_i` moves the stage outputs by
:math:`\delta z^{(i)} = J_z\,\delta z^{(i-1)} + J_\theta d_i` (:math:`\delta z^{(0)} = 0`) and
the second-order term of :math:`h(\theta_t + d)` is
:math:`\delta z^{(m)\top}\nabla^2\ell\,\delta z^{(m)} + \sum_i [\delta z^{(i-1)}; d_i]^\top
G^{(i)} [\delta z^{(i-1)}; d_i]`. Bound it from the top, :math:`M^{(m+1)} = \nabla^2\ell`
(PSD: the library's losses are convex; any other loss is bounded by :math:`(L/B) I`): for a
PSD :math:`M^{(i+1)}`, Young's inequality :math:`(a + b)^\top M (a + b) \le (1 + \tau) a^\top
M a + (1 + 1/\tau) b^\top M b` splits the two contributions to :math:`\delta z^{(i)}`, and
:math:`2\,\delta z^\top G_{z\theta} d \le \delta\|\delta z\|^2 + \|G_{z\theta} d\|^2/\delta`
the cross term of :math:`G`, so

.. math::
   M^{(i)} = (1 + \tau_i) J_z^\top M^{(i+1)} J_z + G_{zz}^{+} + \delta I, \qquad
   \mathbb H_i = (1 + 1/\tau_i) J_\theta^\top M^{(i+1)} J_\theta + G_{\theta\theta}
     + G_{z\theta}^\top G_{z\theta}/\delta

(first stage: no coupling term, its input is data), with :math:`G_{zz}^{+} \succeq G_{zz}`
PSD, bound the Hessian: :math:`\nabla^2 h \preceq \mathrm{diag}(\mathbb H_1, \dots, \mathbb
H_m)`. The weights :math:`\tau_i = 1/(i - 1)` make the products telescope:
:math:`\prod_{j > i}(1 + \tau_j) = m/i` and :math:`(1 + 1/\tau_i) = i`, so every stage sees
the Gauss-Newton term with the same factor :math:`m` (the classic :math:`m`-times
block-diagonal Gauss-Newton bound) instead of a product of per-layer curvatures.

**Stage-local form.** :math:`M^{(i+1)}` reaches through every stage above. Per sample it
splits exactly into :math:`\frac{m}{i}\bar J_b^\top \nabla^2\ell_b \bar J_b + R_b` with
:math:`\bar J_b` the logits' Jacobian in :math:`z^{(i)}` (``K x n_i`` per sample) and the
rest :math:`R^{(j)} = (\delta + G^+_j) + (1 + \tau_j) J_{z,j}^\top R^{(j+1)} J_{z,j}`,
:math:`R^{(m+1)} = 0`, replaced by :math:`e_b I` with :math:`e_b` a per-sample Lanczos
estimate of :math:`\lambda_{\max}(R_b)` on the exact operator (one chain of
Jacobian-vector products up the stages and one of vector-Jacobian products down per
product, :func:`rest_matvec`; per-layer norm bounds compose far too loosely): the top Ritz
value plus its residual. An eigenvalue of :math:`R_b` lies within the residual of the
Ritz value, so :math:`e_b \ge \lambda_{\max}(R_b)` whenever that eigenvalue is the top one,
which fails only when the start vector is nearly orthogonal to the top eigenvector; it is
an estimate, not a proven bound (the dense checks of the tests find it above the top
eigenvalue), and SM's descent does not rest on it: the step search tests the actual loss
(:func:`~altmin_jax.sm.surrogate.search_step`). So the local
loss of stage ``i`` needs only :math:`(z^{(i-1)}, \theta_i, g^{(i)}, \bar J, \nabla^2\ell,
e^{(i+1)})`, computed once per iteration:

.. math::
   \mathbb H_i = m\, J_\theta^\top \bar J^\top \nabla^2\ell\, \bar J J_\theta
     + i\,J_\theta^\top \mathrm{diag}(e^{(i+1)}) J_\theta + G_{\theta\theta}
     + G_{z\theta}^\top G_{z\theta}/\delta .

Dense stages (``kernel`` :math:`W`, elementwise activation :math:`\sigma`, :math:`c = zW +
b`) have closed forms (:class:`DenseStage`): :math:`J_\theta v = \sigma'(c) \odot (zV + v_b)`,
:math:`G_{\theta\theta} v = (z^\top (q \odot u), \sum q \odot u)` with :math:`q = g \odot
\sigma''(c)` (used as its PSD bound with :math:`|q|`, which keeps every block PSD),
:math:`G_{z\theta} v = r V^\top + (q \odot u) W^\top` with :math:`r = g \odot \sigma'(c)`;
for piecewise-linear activations :math:`q = 0` and
:math:`G_{z\theta}^\top G_{z\theta} v = V\,r^\top r`; :math:`G^+_{zz} = W
\mathrm{diag}(|q|) W^\top \succeq G_{zz}`. Other stages use automatic differentiation
(:class:`GenericStage`: Jacobian- and Hessian-vector products, :math:`G^+_{zz}` shifted by a
per-sample Lanczos estimate of :math:`\lambda_{\min}(G_{zz})`). Every stage must map samples
independently (per-sample :math:`\bar J_b`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from altmin_jax import numerics
from altmin_jax.core.types import Array, MatVec, PyTree
from altmin_jax.networks.layered import identity

# sigma'' = 0 almost everywhere: no G_thetatheta, G_zz or second-order coupling terms
PIECEWISE_LINEAR = (identity, jax.nn.relu)
# activations whose derivatives act elementwise (the dense closed forms need this)
ELEMENTWISE = (
  *PIECEWISE_LINEAR,
  jnp.tanh,
  jax.nn.tanh,
  jax.nn.sigmoid,
  jax.nn.softplus,
  jax.nn.gelu,
  jax.nn.silu,
  jax.nn.elu,
)


def tau_factor(i) -> Any:
  r""":math:`1 + \tau_i = i / (i - 1)` for stage ``i >= 2``, 0 for the first stage (nothing
  lies below it); ``i`` may be traced (a pipelined layer's stage index)."""
  if isinstance(i, int):
    return i / (i - 1) if i > 1 else 0.0
  return jnp.where(i > 1, i / jnp.maximum(i - 1, 1), 0.0)


class Bound(NamedTuple):
  r"""Per-sample bound of the curvature passed down to a stage's output,
  :math:`M_b \preceq a\,\bar J_b^\top \nabla^2\ell_b \bar J_b + e_b I`."""

  jac: Array | None  # (B, K, n): logits' Jacobian per sample; None = identity (the logits)
  e: Array  # (B,)
  hess: Array  # (B, K, K): the loss's Hessian in each sample's logits (PSD)


def _project(bound: Bound, t: Array) -> Array:
  r""":math:`\bar J^\top \nabla^2\ell\,\bar J t` per sample (``t`` of shape ``(B, n)``)."""
  u = t if bound.jac is None else jnp.einsum("bkn,bn->bk", bound.jac, t)
  u = jnp.einsum("bkl,bl->bk", bound.hess, u)
  return u if bound.jac is None else jnp.einsum("bkn,bk->bn", bound.jac, u)


def _flat(a: Array) -> Array:
  return a.reshape(a.shape[0], -1)


# ------------------------------------------------------------------ dense stages


def is_dense(stage) -> bool:
  """Whether a :class:`~altmin_jax.networks.Stage` admits the dense closed forms."""
  return bool(stage.dense) and any(stage.activation is a for a in ELEMENTWISE)


class DenseStage(NamedTuple):
  """A dense stage at the iterate: input, weights and the per-sample activation data."""

  z: Array  # (B, n_in) flattened input z^(i-1)
  kernel: Array  # (n_in, n_out)
  bias: Array | None
  s1: Array  # (B, n_out) sigma'(c)
  q: Array | None  # (B, n_out) g * sigma''(c); None for piecewise-linear activations
  r: Array  # (B, n_out) g * sigma'(c)


def dense_stage(
  activation: Callable, kernel: Array, bias: Array | None, z: Array, g: Array, last
) -> DenseStage:
  """:class:`DenseStage` of ``c = flatten(z) @ kernel + bias`` followed by ``activation``
  (none when ``last``, which may be traced)."""
  z = _flat(z)
  c = z @ kernel if bias is None else z @ kernel + bias
  ones = jnp.ones_like(c)
  d1 = lambda c: jax.jvp(activation, (c,), (ones,))[1]
  s1 = jnp.where(last, 1.0, d1(c)).astype(c.dtype)
  q = None
  if not any(activation is a for a in PIECEWISE_LINEAR):
    s2 = jax.jvp(d1, (c,), (ones,))[1]
    q = jnp.where(last, 0.0, g * s2).astype(c.dtype)
  return DenseStage(z=z, kernel=kernel, bias=bias, s1=s1, q=q, r=g * s1)


def dense_gradient(d: DenseStage) -> dict:
  r""":math:`\partial h/\partial\theta_i = J_\theta^\top g` as ``{'kernel', 'bias'}``."""
  out = {"kernel": d.z.T @ d.r}
  if d.bias is not None:
    out["bias"] = jnp.sum(d.r, axis=0)
  return out


def dense_matvec(d: DenseStage, bound: Bound, *, gn, weight, inv_delta, first) -> MatVec:
  r"""``v -> H_i v`` (module docstring) on ``{'kernel', 'bias'}``: ``gn`` :math:`= mL/B`,
  ``weight`` :math:`= i`, ``inv_delta`` :math:`= 1/\delta`, ``first`` (no coupling; may be
  traced)."""
  coupling = jnp.where(first, 0.0, inv_delta)
  gram = None if d.q is not None else d.r.T @ d.r  # r^T r for V r^T r

  def matvec(v):
    u = d.z @ v["kernel"]
    if "bias" in v:
      u = u + v["bias"]
    t = d.s1 * u  # J_theta v
    w = gn * _project(bound, t) + weight * bound.e[:, None] * t
    a = d.s1 * w  # J_theta^T ...
    if d.q is None:
      k_extra = coupling * (v["kernel"] @ gram)
    else:
      a = a + jnp.abs(d.q) * u  # G+_thetatheta v, a PSD bound of G_thetatheta
      s = d.r @ v["kernel"].T + (d.q * u) @ d.kernel.T  # G_ztheta v
      a = a + coupling * d.q * (s @ d.kernel)
      k_extra = coupling * (s.T @ d.r)
    out = {"kernel": d.z.T @ a + k_extra}
    if "bias" in v:
      out["bias"] = jnp.sum(a, axis=0)
    return out

  return matvec


class Level(NamedTuple):
  """Stage ``i``'s linear maps at the iterate, on its input :math:`z^{(i-1)}`: what the
  reverse passes of the bound need."""

  jz: Callable  # u -> J_z u (on z^(i))
  jzt: Callable  # w -> J_z^T w (on z^(i-1))
  gplus: Callable | None  # u -> G_zz^+ u, a PSD bound of G_zz; None when G_zz = 0
  factor: Any  # 1 + tau_i


def dense_level(d: DenseStage, factor) -> Level:
  r""":math:`J_z u = \sigma' \odot (uW)`, :math:`J_z^\top w = (\sigma' \odot w) W^\top` and
  :math:`G_{zz}^+ = W \mathrm{diag}(|q|) W^\top \succeq W \mathrm{diag}(q) W^\top =
  G_{zz}`."""
  W = d.kernel
  gplus = None if d.q is None else (lambda u: (jnp.abs(d.q) * (u @ W)) @ W.T)
  return Level(
    jz=lambda u: d.s1 * (u @ W), jzt=lambda w: (d.s1 * w) @ W.T, gplus=gplus, factor=factor
  )


# ---------------------------------------------------------------- generic stages


class GenericStage(NamedTuple):
  """Any stage that maps samples independently, by automatic differentiation."""

  fn: Callable  # f_i(theta, z)
  theta: PyTree
  z: Array
  g: Array


def _phi(s: GenericStage):
  return lambda z, th: jnp.vdot(s.g, s.fn(th, z))


def generic_gradient(s: GenericStage) -> PyTree:
  return jax.grad(_phi(s), argnums=1)(s.z, s.theta)


def generic_matvec(s: GenericStage, bound: Bound, *, gn, weight, inv_delta, first) -> MatVec:
  """:func:`dense_matvec` for any per-sample stage (exact Jacobian- and Hessian-vector
  products)."""
  out, jvp = jax.linearize(lambda th: s.fn(th, s.z), s.theta)
  vjp = jax.linear_transpose(jvp, s.theta)
  phi = _phi(s)
  _, h_tt = jax.linearize(lambda th: jax.grad(phi, argnums=1)(s.z, th), s.theta)
  _, h_zt = jax.linearize(lambda th: jax.grad(phi, argnums=0)(s.z, th), s.theta)
  _, h_tz = jax.linearize(lambda zz: jax.grad(phi, argnums=1)(zz, s.theta), s.z)
  shape = out.shape

  def matvec(v):
    t = _flat(jvp(v))
    w = gn * _project(bound, t) + weight * bound.e[:, None] * t
    (res,) = vjp(w.reshape(shape))
    res = optax.tree.add(res, h_tt(v))
    if first is True:
      return res
    return optax.tree.add_scale(res, jnp.where(first, 0.0, inv_delta), h_tz(h_zt(v)))

  return matvec


def generic_level(s: GenericStage, factor, *, iterations: int, seed) -> Level:
  r""":func:`dense_level` for any per-sample stage by automatic differentiation;
  :math:`G_{zz}^+ = G_{zz} + \max(0, -\hat\lambda_{\min}(G_{zz,b})) I` per sample, with
  :math:`\hat\lambda_{\min}` a Lanczos estimate (Ritz value plus residual)."""
  _, jvp_z = jax.linearize(lambda zz: s.fn(s.theta, zz), s.z)
  vjp_z = jax.linear_transpose(jvp_z, s.z)
  _, h_zz = jax.linearize(lambda zz: jax.grad(_phi(s), argnums=0)(zz, s.theta), s.z)
  low = numerics.lanczos(
    lambda u: -h_zz(u), numerics.start_vector(seed, s.z), iterations, per_sample=True
  )
  shift = jnp.maximum(low.ritz + low.residual, 0.0).reshape((-1,) + (1,) * (s.z.ndim - 1))
  return Level(
    jz=jvp_z, jzt=lambda w: vjp_z(w)[0], gplus=lambda u: h_zz(u) + shift * u, factor=factor
  )


# ------------------------------------------------------------ the reverse passes


def jacobian_below(level: Level, jac: Array | None, out_like: Array) -> Array:
  r"""The logits' Jacobian in the stage's input, :math:`\bar J J_z` per sample (``(B, K,
  n_in)``), from the one in its output (``None``: the output is the logits, shaped like
  ``out_like``): one vector-Jacobian product per logit."""
  shape = out_like.shape
  if jac is None:
    K = _flat(out_like).shape[1]
    jac = jnp.broadcast_to(jnp.eye(K, dtype=out_like.dtype)[None], (shape[0], K, K))
  return jax.vmap(lambda row: _flat(level.jzt(row.reshape(shape))), in_axes=1, out_axes=1)(jac)


def rest_matvec(levels, delta) -> Callable:
  r"""``u -> R u`` for the rest above a stage's output: with ``levels`` the stages above,
  bottom first (stage ``j``'s :class:`Level` acting on :math:`z^{(j-1)}`),
  :math:`R^{(j)} u = (\delta + G^+_j) u + (1 + \tau_j) J_{z,j}^\top R^{(j+1)} J_{z,j} u`
  and :math:`R^{(m+1)} = 0` (the loss's curvature is the exact Gauss-Newton part): one
  chain of Jacobian-vector products up and one of vector-Jacobian products down."""

  def matvec(u):
    us = [u]
    for lv in levels[:-1]:
      us.append(lv.jz(us[-1]))
    r = None
    for lv, uj in zip(reversed(levels), reversed(us)):
      r = rest_step(lv, uj, r, delta)
    return r

  return matvec


def rest_step(level: Level, u: Array, r_above: Array | None, delta) -> Array:
  r"""One step down the rest's recurrence at a stage's input: :math:`R^{(j)} u = (\delta
  + G^+_j) u + (1 + \tau_j) J_{z,j}^\top r` with :math:`r = R^{(j+1)} J_{z,j} u` from the
  stage above (``r_above``; ``None`` above the top: :math:`R^{(m+1)} = 0`). The
  single-device product (:func:`rest_matvec`) and the pipelined sweep down the devices
  both take it."""
  own = delta * u if level.gplus is None else delta * u + level.gplus(u)
  return own if r_above is None else own + level.factor * level.jzt(r_above)


def rest_bound(levels, delta, like: Array, *, iterations: int, seed) -> Array:
  r""":math:`e_b`: a per-sample Lanczos estimate of :math:`\lambda_{\max}(R_b)` (top Ritz
  value plus residual, module docstring: not a proven bound) for the rest of the stages
  ``levels`` (:func:`rest_matvec`); 0 when there are none (the logits)."""
  if not levels:
    return jnp.zeros(like.shape[:1], like.dtype)
  res = numerics.lanczos(
    rest_matvec(levels, delta), numerics.start_vector(seed, like), iterations, per_sample=True
  )
  return res.ritz + res.residual
