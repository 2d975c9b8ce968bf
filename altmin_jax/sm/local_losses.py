r"""The local losses of surrogate minimization (SM), built from one forward/backward pass.

Asad et al., "Surrogate Minimization" (SM paper), Proposition 1 and Appendix A, in the
notation of SPEC section 5. A :class:`~altmin_jax.networks.LayeredNetwork` with ``m``
stages is read as the chain of *post-activation* maps

.. math::
   z^{(0)} = x,\qquad z^{(i)} = f_i(z^{(i-1)}, \theta_i) = \sigma_i(\mathrm{apply}_i(\theta_i,
   z^{(i-1)})) \quad (i < m),\qquad z^{(m)} = \mathrm{apply}_m(\theta_m, z^{(m-1)}),

so one SM stage is one network stage *including* its activation and the last stage
outputs the logits. The objective is the **batch mean** of the per-sample loss,
:math:`h(\theta) = \ell(z^{(m)}) = \frac1B \sum_b \mathrm{loss}(z^{(m)}_b, y_b)`, and
every gradient and curvature below is that of the mean (so they all scale like
:math:`1/B`).

At the iterate :math:`(z_t, \theta_t)` one forward and one backward pass give
:math:`z_t^{(i)}` and :math:`g_z^{(i)} = \partial\ell/\partial z^{(i)}`. Stage ``i`` owns
the scalar function of its input and parameters (paper, Appendix B, :math:`\Psi^{(i)}`)

.. math::
   \psi_i(z, \theta) = \langle g_z^{(i)}, f_i(z, \theta) - z_t^{(i)}\rangle
     + \frac{c_{i+1}}{2}\,\|f_i(z, \theta) - z_t^{(i)}\|^2,

with :math:`c_{m+1}` the smoothness constant of :math:`\ell` in the stacked logits
(``loss_smoothness / B``: ``1/(2B)`` for softmax cross-entropy) and, down the chain
(Appendix A),

.. math::
   c_i = \max(\hat\lambda_{\max}(H^{(i)}_{zz}), 0) + \delta,\qquad
   H^{(i)}_{zz} = \nabla^2_{zz}\psi_i(z_t^{(i-1)}, \theta_t),

where :math:`\hat\lambda_{\max}` is a Lanczos estimate from exact Hessian-vector
products (the top Ritz value plus its residual norm, per sample when the stage maps
samples independently and :math:`H_{zz}` is block diagonal; see :func:`top_eigenvalue`,
also for the indefinite case). The local loss of stage ``i`` (Proposition 1 with
:math:`\rho = 0`) is

.. math::
   \mathcal L_i(\theta) = \langle g_{\theta_i}, \theta - \theta_t\rangle
     + \tfrac12 (\theta - \theta_t)^\top \mathbb H_i (\theta - \theta_t),\qquad
   \mathbb H_i = H^{(i)}_{\theta\theta} + \frac{H^{(i)\top}_{z\theta} H^{(i)}_{z\theta}}{\delta}

(no coupling term for the first stage, whose input is data), every second derivative of
:math:`\psi_i` taken at :math:`(z_t^{(i-1)}, \theta_t)` with ``jax.linearize`` of
``jax.grad`` (exact; the paper used finite differences), and
:math:`g_{\theta_i} = \nabla_\theta\psi_i = \partial h/\partial\theta_i`. Everything a
stage needs is local: :math:`(z_t^{(i-1)}, z_t^{(i)}, g_z^{(i)}, c_{i+1}, \theta_i)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from altmin_jax import losses as losses_lib
from altmin_jax.networks import LayeredNetwork, as_arrays

Array = jax.Array
PyTree = Any
StageFn = Callable[[PyTree, Array], Array]
MatVec = Callable[[PyTree], PyTree]
Loss = Callable[[Array, Array], Array]

# Per-sample smoothness of the library's losses in the network output: the largest
# eigenvalue of the per-sample Hessian (softmax cross-entropy: diag(p) - p p^T <= 1/2;
# squared error ||o - t||^2: 2 I).
KNOWN_LOSS_SMOOTHNESS: dict[Callable, float] = {
  losses_lib.softmax_cross_entropy: 0.5,
  losses_lib.squared_error: 2.0,
}


# ----------------------------------------------------------- network helpers


def check_network(net: Any) -> LayeredNetwork:
  """``net`` unless it is not a :class:`LayeredNetwork` (``ValueError``)."""
  if not isinstance(net, LayeredNetwork):
    raise ValueError(f"net must be an altmin_jax.networks.LayeredNetwork, got net={net!r}")
  return net


def check_loss(loss: Any) -> Loss:
  if not callable(loss):
    raise ValueError(f"loss must be callable loss(outputs, labels) -> (batch,), got loss={loss!r}")
  return loss


def resolve_loss_smoothness(loss: Loss, loss_smoothness: float | None) -> float:
  """The per-sample smoothness constant ``L`` of ``loss`` in the network output.

  ``None`` selects the known constant of the library's losses; other losses need an
  explicit value. The batch-mean objective then has :math:`c_{m+1} = L / B`.
  """
  if loss_smoothness is None:
    if loss in KNOWN_LOSS_SMOOTHNESS:
      return KNOWN_LOSS_SMOOTHNESS[loss]
    raise ValueError(
      "loss_smoothness must be given for a loss other than altmin_jax.losses."
      f"softmax_cross_entropy / squared_error, got loss_smoothness=None for loss={loss!r}"
    )
  ok = (
    isinstance(loss_smoothness, (int, float))
    and not isinstance(loss_smoothness, bool)
    and math.isfinite(loss_smoothness)
    and loss_smoothness > 0
  )
  if not ok:
    raise ValueError(
      f"loss_smoothness must be a finite number > 0, got loss_smoothness={loss_smoothness!r}"
    )
  return float(loss_smoothness)


def unpack_batch(net: LayeredNetwork, batch: Any) -> tuple[Array, Array]:
  """Validates ``batch=(x, y)`` against the network from static shapes (before tracing
  anything expensive); ``ValueError`` mentioning the shape otherwise."""
  if not isinstance(batch, (tuple, list)) or len(batch) != 2:
    raise ValueError(f"batch must be a pair (x, y), got {type(batch).__name__}")
  x, y = (jnp.asarray(b) for b in batch)
  net.check_input(x, "batch x")
  losses_lib.check_labels(y, x.shape[0], math.prod(net.output_shape))
  return x, y


def compute_dtype(tree: PyTree) -> jnp.dtype:
  """At least float32: low-precision params are upcast for the curvature arithmetic."""
  dtypes = [jnp.asarray(leaf).dtype for leaf in jax.tree.leaves(tree)]
  return jnp.result_type(jnp.float32, *dtypes)


def cast_tree(tree: PyTree, dtype) -> PyTree:
  return jax.tree.map(lambda a: jnp.asarray(a).astype(dtype), tree)


def stage_function(net: LayeredNetwork, i: int) -> StageFn:
  """The post-activation map ``f_i(theta, z) -> z^(i)`` of stage ``i`` (1-based).

  Hidden stages apply their activation; the last stage returns the logits (as
  :meth:`LayeredNetwork.apply` does).
  """
  stage = net.stages[i - 1]
  if i == net.num_stages:
    return stage.apply
  return lambda theta, z: stage.activation(stage.apply(theta, z))


def batch_mean_loss(loss: Loss, outputs: Array, y: Array) -> Array:
  """:math:`\\ell(z^{(m)}) = \\frac1B \\sum_b \\mathrm{loss}(z^{(m)}_b, y_b)`."""
  return jnp.mean(loss(outputs, y))


def network_loss(net: LayeredNetwork, loss: Loss, x: Array, y: Array) -> Callable:
  """``stage_params -> h``: the batch-mean loss of the whole network on ``(x, y)``."""
  return lambda stage_params: batch_mean_loss(loss, net.forward_stages(stage_params, x)[1], y)


class Prepared(NamedTuple):
  """A validated batch and the user's params as per-stage params in compute precision."""

  x: Array  # in the compute dtype
  y: Array
  params: PyTree  # the user's params (NNX wrappers stripped)
  stage_params: tuple  # per-stage params in the compute dtype
  dtype: Any


def prepare(net: LayeredNetwork, params: PyTree, batch: Any, method: str) -> Prepared:
  """Checks ``params`` and ``batch`` and returns them ready for an update (upcast to at
  least float32; updates are cast back to the params' dtypes)."""
  if params is None:
    raise ValueError(f"{method} needs params: call update(grads, state, params, batch=(x, y))")
  x, y = unpack_batch(net, batch)
  params = as_arrays(params)
  stage_params = net.stage_params(params)
  dtype = compute_dtype(stage_params)
  return Prepared(x.astype(dtype), y, params, cast_tree(stage_params, dtype), dtype)


def params_update(net: LayeredNetwork, new_stage_params: Sequence[PyTree], params: PyTree):
  """``updates = new_params - params`` in the user's params structure and dtypes."""
  new_params = net.merge_stage_params(list(new_stage_params), params)
  return jax.tree.map(lambda n, p: (n.astype(p.dtype) - p).astype(p.dtype), new_params, params)


class ForwardBackward(NamedTuple):
  """One forward and one backward pass (SM paper, Algorithm 1, line 'gradient oracle')."""

  value: Array  # h(theta_t), the batch-mean loss
  z: tuple  # z^(0) = x, z^(1), ..., z^(m) (logits)
  g_z: tuple  # g_z^(1), ..., g_z^(m): gradients of h in the stage outputs
  g_theta: tuple  # dh/dtheta_1, ..., dh/dtheta_m


def forward_backward(
  net: LayeredNetwork, stage_params: Sequence[PyTree], x: Array, y: Array, loss: Loss
) -> ForwardBackward:
  """Stage outputs, output gradients and parameter gradients from one forward pass and
  one reverse pass (stage-wise ``jax.vjp``)."""
  m = net.num_stages
  zs = [x]
  pullbacks = []
  for i in range(1, m + 1):
    fn = stage_function(net, i)
    if i == 1:  # the input is data: no gradient with respect to it
      z, vjp = jax.vjp(lambda th, fn=fn: fn(th, x), stage_params[0])
    else:
      z, vjp = jax.vjp(fn, stage_params[i - 1], zs[-1])
    zs.append(z)
    pullbacks.append(vjp)
  # g_z^(m) = grad l(z_t^(m)) (eq. (2)); the pullbacks give g_z^(i) and g_theta_i (App. B).
  value, g = jax.value_and_grad(lambda out: batch_mean_loss(loss, out, y))(zs[-1])
  g_z = [None] * m
  g_theta = [None] * m
  for i in range(m, 0, -1):
    g_z[i - 1] = g
    if i == 1:
      (g_theta[0],) = pullbacks[0](g)
    else:
      g_theta[i - 1], g = pullbacks[i - 1](g)
  return ForwardBackward(value=value, z=tuple(zs), g_z=tuple(g_z), g_theta=tuple(g_theta))


# ----------------------------------------------------------- local functions


def make_psi(fn: StageFn, g_out: Array, z_out: Array, c_next: Array) -> Callable:
  r""":math:`\psi_i(z, \theta) = \langle g, f(z,\theta) - z_t\rangle + \frac{c}{2}\|f(z,\theta)
  - z_t\|^2` for a stage map ``fn(theta, z)``, output gradient ``g_out``, output
  ``z_out`` at the iterate and curvature ``c_next`` (:math:`c_{i+1}`)."""

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
  """A stage's local loss: gradient, Hessian-vector product and input gradient."""

  g_theta: PyTree  # \nabla_theta psi at the iterate (= dh/dtheta_i)
  matvec: MatVec  # v -> H_i v


def local_quadratic(psi: Callable, z: Array, theta: PyTree, delta: float, first: bool):
  r"""The local loss :math:`\mathcal L_i` of one stage as a :class:`LocalQuadratic`.

  ``matvec(v)`` is :math:`\mathbb H_i v = H_{\theta\theta} v + H_{z\theta}^\top
  (H_{z\theta} v) / \delta` (first stage: :math:`H_{\theta\theta} v`), where
  :math:`(H_{z\theta} v, H_{\theta\theta} v)` is one jvp of :math:`\nabla_{(z,\theta)}\psi`
  in the direction :math:`(0, v)` and :math:`H_{z\theta}^\top u` one jvp of
  :math:`\nabla_\theta \psi` in the direction :math:`(u, 0)` (mixed partials commute).
  """
  if first:
    g_theta, lin = jax.linearize(lambda th: jax.grad(psi, argnums=1)(z, th), theta)
    return LocalQuadratic(g_theta=g_theta, matvec=lin)
  (_, g_theta), lin_theta = jax.linearize(lambda th: jax.grad(psi, argnums=(0, 1))(z, th), theta)
  _, lin_coupling_t = jax.linearize(lambda zz: jax.grad(psi, argnums=1)(zz, theta), z)

  def matvec(v):
    # Appendix A: H_i = H_thetatheta + H_ztheta^T H_ztheta / delta (condition (2)).
    h_z, h_theta = lin_theta(v)  # (H_ztheta v, H_thetatheta v)
    return optax.tree.add_scale(h_theta, 1.0 / delta, lin_coupling_t(h_z))

  return LocalQuadratic(g_theta=g_theta, matvec=matvec)


def local_loss_value(g_theta: PyTree, matvec: MatVec, d: PyTree) -> Array:
  r""":math:`\mathcal L_i(\theta_t + d) = g^\top d + \tfrac12 d^\top \mathbb H_i d`."""
  return optax.tree.vdot(g_theta, d) + 0.5 * optax.tree.vdot(d, matvec(d))


# ------------------------------------------------------- top eigenvalue (Lanczos)


class LanczosResult(NamedTuple):
  """Result of :func:`lanczos`, one entry per block."""

  ritz: Array  # (blocks,) largest Ritz value theta_b, <= lambda_max(A_b) (interlacing)
  residual: Array  # (blocks,) ||A_b y_b - theta_b y_b|| of its unit Ritz vector y_b
  krylov_dim: Array  # (blocks,) int32, Krylov dimension reached (less after a breakdown)


def _as_blocks(matvec: MatVec, v0: PyTree, per_sample: bool):
  """``v0`` as a ``(blocks, n)`` array and ``matvec`` on such arrays: one block per
  sample (leading axis of the single array ``v0``) or one block for the whole pytree."""
  if per_sample:
    v0 = jnp.asarray(v0)
    shape = v0.shape
    return v0.reshape(shape[0], -1), lambda q: matvec(q.reshape(shape)).reshape(shape[0], -1)
  flat, unravel = ravel_pytree(v0)
  return flat[None], lambda q: ravel_pytree(matvec(unravel(q[0])))[0][None]


def lanczos(matvec: MatVec, v0: PyTree, steps: int, *, per_sample: bool = False) -> LanczosResult:
  r"""``steps`` Lanczos steps on a symmetric (possibly indefinite) operator ``matvec``.

  With ``per_sample=False`` the operator acts on pytrees shaped like ``v0`` and is one
  block. With ``per_sample=True``, ``v0`` is one array whose leading axis indexes
  samples and ``matvec`` must be **block diagonal over that axis**
  (:math:`A = \mathrm{diag}(A_1, \dots, A_B)`, sample ``b``'s output depends only on
  sample ``b``'s input); every sample's vector is then normalised and orthogonalised on
  its own, so one product per step runs :math:`B` independent Lanczos recurrences.

  Each block ``b`` runs the three-term recurrence :math:`\beta_j q_{j+1} = A_b q_j -
  \alpha_j q_j - \beta_{j-1} q_{j-1}` (with a second Gram-Schmidt pass against
  :math:`q_j, q_{j-1}`), whose vectors span the Krylov space :math:`\mathcal
  K_k(A_b, v_{0,b})`, and the tridiagonal :math:`T_k = Q_k^\top A_b Q_k` of the
  :math:`\alpha_j, \beta_j` (:func:`tridiagonal_top_eigenpair`). Its largest
  eigenvalue :math:`\theta_b` with unit eigenvector :math:`s` is the top Ritz value:
  :math:`\theta_b \le \lambda_{\max}(A_b)` (Cauchy interlacing) and it is the largest
  Rayleigh quotient over :math:`\mathcal K_k`, so at least the Rayleigh quotient that
  :math:`k - 1` power-iteration steps from :math:`v_{0,b}` reach, and it converges to
  the *algebraically* largest eigenvalue also when :math:`A_b` is indefinite (power
  iteration finds the eigenvalue of largest magnitude). The Ritz vector
  :math:`y_b = Q_k s` has residual :math:`\|A_b y_b - \theta_b y_b\| = \beta_k |s_k|`,
  and :math:`[\theta_b - \beta_k|s_k|, \theta_b + \beta_k|s_k|]` contains an eigenvalue
  of :math:`A_b`. A block whose recurrence breaks down (:math:`\beta_j \le
  \sqrt{\epsilon}\max_{i \le j}\|A_b q_i\|`: the Krylov space is invariant, e.g. a
  rank-deficient block) stops there; its Ritz values are then exact up to that
  :math:`\beta_j`, reported as the residual. ``steps`` is capped at the block size.
  One ``lax.fori_loop`` with one product per step and three vectors of memory: no basis
  is stored and there is no full reorthogonalisation. In floating point the
  :math:`q_j` then lose orthogonality once a Ritz value converges, which only makes
  converged Ritz values reappear (Paige): the top one stays within rounding of the
  spectrum, and the residual identity holds to rounding.
  """
  v, mv = _as_blocks(matvec, v0, per_sample)
  blocks, n = v.shape
  k = min(int(steps), n)
  dtype = compute_dtype(v)
  v = v.astype(dtype)
  tol = jnp.sqrt(jnp.finfo(dtype).eps)
  rownorm = lambda a: jnp.sqrt(jnp.sum(a * a, axis=1))
  n0 = rownorm(v)
  q = v / jnp.where(n0 > 0, n0, 1.0)[:, None]

  def body(j, carry):
    alpha, beta, q, q_prev, b_prev, active, scale, last, b_last = carry
    w = mv(q)
    scale = jnp.maximum(scale, rownorm(w))
    a = jnp.sum(q * w, axis=1)
    w = w - a[:, None] * q - b_prev[:, None] * q_prev
    # local reorthogonalisation: a second Gram-Schmidt pass against q_j and q_{j-1}
    da, db = jnp.sum(q * w, axis=1), jnp.sum(q_prev * w, axis=1)
    w = w - da[:, None] * q - db[:, None] * q_prev
    a = a + da
    b = rownorm(w)
    go_on = active & (b > tol * scale)
    # a block that broke down keeps T's spectrum: its later diagonal entries repeat
    # alpha_0 = v_0^T A v_0 (<= theta) with zero off-diagonals.
    alpha = alpha.at[j].set(jnp.where(active, a, alpha[0]))
    b_used = jnp.where(go_on, b, 0.0)
    beta = beta.at[j].set(b_used)
    last = jnp.where(active, j, last)
    b_last = jnp.where(active, b, b_last)
    q_next = jnp.where(go_on[:, None], w / jnp.where(go_on, b, 1.0)[:, None], 0.0)
    return alpha, beta, q_next, q, b_used, go_on, scale, last, b_last

  zeros = jnp.zeros((blocks,), dtype)
  init = (
    jnp.zeros((k, blocks), dtype),
    jnp.zeros((k, blocks), dtype),
    q,
    jnp.zeros_like(q),
    zeros,
    n0 > 0,
    zeros,
    jnp.zeros((blocks,), jnp.int32),
    zeros,
  )
  alpha, beta, *_, last, b_last = jax.lax.fori_loop(0, k, body, init)
  theta, s = tridiagonal_top_eigenpair(alpha.T, beta[:-1].T)
  s_last = jnp.take_along_axis(s, last[:, None], axis=1)[:, 0]
  return LanczosResult(ritz=theta, residual=b_last * jnp.abs(s_last), krylov_dim=last + 1)


def _shifted_pivots(diag: Array, off2: Array, x: Array, pivmin: Array) -> Array:
  """Pivots :math:`d_j` of the :math:`LDL^\\top` factorisation of :math:`T - xI`
  (``diag`` ``(blocks, k)``, squared off-diagonals ``off2`` ``(blocks, k)`` with a
  leading zero column): :math:`d_1 = a_1 - x`, :math:`d_j = a_j - x - b_{j-1}^2/d_{j-1}`,
  pivots of magnitude below ``pivmin`` replaced by ``-pivmin``."""

  def step(d_prev, inputs):
    a, b2 = inputs
    d = a - x - b2 / d_prev
    d = jnp.where(jnp.abs(d) < pivmin, -pivmin, d)
    return d, d

  _, d = jax.lax.scan(step, jnp.ones_like(x), (diag.T, off2.T), unroll=min(diag.shape[1], 16))
  return d.T


def tridiagonal_top_eigenpair(diag: Array, off: Array) -> tuple[Array, Array]:
  r"""Largest eigenvalue and its unit eigenvector of symmetric tridiagonal matrices.

  ``diag`` ``(blocks, k)`` and ``off`` ``(blocks, k - 1)`` hold the diagonals. Plain
  ``jax.numpy`` (no LAPACK call), vectorised over blocks: **bisection** on Sturm counts
  (the number of negative pivots of :math:`T - xI` is the number of eigenvalues below
  :math:`x`), from Gershgorin's interval down to rounding, keeps a bracket
  :math:`[\ell, u]` with :math:`\ell \le \lambda_{\max} < u`; then two steps of
  **inverse iteration** with :math:`\sigma I - T`, :math:`\sigma` a few rounding units
  above :math:`u`, which is positive definite, so its :math:`LDL^\top` solve is stable.
  The eigenvector is that of the matrix with off-diagonals :math:`|b_j|` (similar to
  :math:`T` through a diagonal of signs): its entries have the right magnitudes.
  """
  blocks, k = diag.shape
  dtype = diag.dtype
  finfo = jnp.finfo(dtype)
  off = jnp.abs(off)
  zero = jnp.zeros((blocks, 1), dtype)
  radius = jnp.concatenate([zero, off], 1) + jnp.concatenate([off, zero], 1)
  scale = jnp.max(jnp.abs(diag) + radius, axis=1)
  margin = 4 * finfo.eps * scale + finfo.tiny
  lo = jnp.min(diag - radius, axis=1) - margin
  hi = jnp.max(diag + radius, axis=1) + margin
  off2 = jnp.concatenate([zero, off * off], 1)
  pivmin = finfo.tiny * jnp.maximum(1.0, jnp.max(off2, axis=1))

  def bisect(_, bracket):
    lo, hi = bracket
    mid = 0.5 * (lo + hi)
    below = jnp.sum(_shifted_pivots(diag, off2, mid, pivmin) < 0, axis=1)
    all_below = below == k  # every eigenvalue < mid
    return jnp.where(all_below, lo, mid), jnp.where(all_below, mid, hi)

  lo, hi = jax.lax.fori_loop(0, finfo.nmant + 8, bisect, (lo, hi))
  # inverse iteration with sigma I - T, sigma = u + margin: its pivots (minus those of
  # T - sigma I) are positive and at least about the margin, so 1/d stays finite
  d = jnp.maximum(-_shifted_pivots(diag, off2, hi + margin, pivmin), margin[:, None])
  lower = jnp.concatenate([zero, -off], 1) / jnp.concatenate([jnp.ones_like(zero), d[:, :-1]], 1)

  def solve(r):
    def fwd(y_prev, inputs):
      r_j, l_j = inputs
      y = r_j - l_j * y_prev
      return y, y

    _, y = jax.lax.scan(fwd, jnp.zeros((blocks,), dtype), (r.T, lower.T))
    z = y.T / d
    nxt = jnp.concatenate([lower[:, 1:], zero], 1)  # l_{j+1}

    def bwd(s_next, inputs):
      z_j, l_next = inputs
      s = z_j - l_next * s_next
      return s, s

    _, s = jax.lax.scan(bwd, jnp.zeros((blocks,), dtype), (z.T, nxt.T), reverse=True)
    s = s.T
    return s / jnp.linalg.norm(s, axis=1, keepdims=True)

  s = solve(solve(jnp.ones((blocks, k), dtype) / jnp.sqrt(k)))
  return 0.5 * (lo + hi), s


def top_eigenvalue(matvec: MatVec, v0: PyTree, steps: int, *, per_sample: bool = False):
  r"""An estimate of :math:`\lambda_{\max}(A)` from above for a symmetric, possibly
  indefinite ``A``: :math:`\max_b(\theta_b + r_b)` over the blocks of :func:`lanczos`
  (one block, or one per sample when ``per_sample``), the top Ritz value plus its
  residual norm.

  :math:`\theta_b \le \lambda_{\max}(A_b)` is a lower estimate; adding :math:`r_b`
  gives an upper bound on :math:`\lambda_{\max}(A_b)` whenever the eigenvalue that the
  top Ritz pair locates is :math:`\lambda_{\max}(A_b)` itself, i.e. once the Ritz value
  has separated from the rest of the spectrum. Before that (a block whose two top
  eigenvalues are within a few percent, and few steps) the pair may locate the second
  eigenvalue and the estimate fall short of :math:`\lambda_{\max}` by up to that gap
  (on random 3- to 6-stage MLPs with 10 steps per sample: at most 1.4% short, at most
  4% above); the error shrinks with ``steps`` (exact when ``steps`` reaches the block
  size). For a
  block-diagonal ``A``, :math:`\lambda_{\max}(A) = \max_b \lambda_{\max}(A_b)`, and the
  per-sample recurrences converge at the rate of each block's own spectrum instead of
  the whole batch's (where the blocks' top eigenvalues cluster). Callers clip the result
  at zero (:math:`c_i = \max(\cdot, 0) + \delta` bounds :math:`H_{zz}` also when
  :math:`\lambda_{\max} < 0`).
  """
  res = lanczos(matvec, v0, steps, per_sample=per_sample)
  return jnp.max(res.ritz + res.residual)


def stage_is_per_sample(net: LayeredNetwork, i: int) -> bool:
  r"""Whether stage ``i``'s map handles every sample on its own, so that
  :math:`\nabla^2_{zz}\psi_i` is block diagonal over the batch.

  ``psi_i`` is a sum over samples of terms in :math:`f_i(z, \theta)_b`; when that
  depends on :math:`z_b` alone, the Hessian in ``z`` has one block per sample. True for
  dense stages (``Stage.dense``: ``flatten(a) @ kernel + bias`` row by row, followed by
  a per-sample activation, as the :class:`~altmin_jax.networks.Stage` contract
  requires), i.e. :func:`~altmin_jax.networks.mlp` and ``nnx.Linear`` layers. Other
  stages (convolutions, adapted modules that might mix samples through batch
  statistics) are treated as one block.
  """
  return bool(net.stages[i - 1].dense)


def start_vector(seed: int, like: PyTree) -> PyTree:
  """A fixed, dense start vector for :func:`lanczos`, shaped like ``like``.

  ``cos(golden-angle * k + seed)`` over the flattened entries: deterministic, cheap to
  compile (no PRNG), and not orthogonal to any eigenvector in practice.
  """
  leaves, treedef = jax.tree.flatten(like)
  out, offset = [], 0
  for a in leaves:
    a = jnp.asarray(a)
    k = jnp.arange(a.size, dtype=a.dtype) + offset
    out.append(jnp.cos(2.399963229728653 * k + seed).reshape(a.shape))
    offset += a.size
  return jax.tree.unflatten(treedef, out)


def curvature_chain(
  stage_fns: Sequence[StageFn],
  stage_params: Sequence[PyTree],
  fb: ForwardBackward,
  c_last: Array,
  *,
  delta: float,
  iterations: int,
  seed: int = 0,
  per_sample: Sequence[bool] | None = None,
) -> tuple[Array, ...]:
  r"""The constants :math:`(c_2, \dots, c_{m+1})`, top-down (Appendix A).

  :math:`c_{m+1}` = ``c_last``; for :math:`i = m, \dots, 2`,
  :math:`c_i = \max(\hat\lambda_i, 0) + \delta` with :math:`\hat\lambda_i` the
  :func:`top_eigenvalue` estimate of :math:`\lambda_{\max}(\nabla^2_{zz}\psi_i)`,
  :math:`\psi_i` built from :math:`c_{i+1}`: ``iterations`` Lanczos steps (Hessian-vector
  products) from :func:`start_vector` with ``seed + i``, per sample where
  ``per_sample[i - 1]`` (:func:`stage_is_per_sample`; default: one block per stage),

  .. math:: \hat\lambda_i = \max_b\,(\theta_b + r_b),

  the top Ritz value of sample ``b``'s block of :math:`H_{zz}` plus its residual norm.

  Returns:
    A tuple whose entry ``i - 1`` is :math:`c_{i+1}`, the constant stage ``i`` uses.
  """
  m = len(stage_fns)
  per_sample = [False] * m if per_sample is None else list(per_sample)
  c = [None] * (m + 2)
  c[m + 1] = c_last
  for i in range(m, 1, -1):
    psi = make_psi(stage_fns[i - 1], fb.g_z[i - 1], fb.z[i], c[i + 1])
    z_in = fb.z[i - 1]
    mv = hzz_product(psi, z_in, stage_params[i - 1])
    v0 = start_vector(seed + i, z_in)
    lam = top_eigenvalue(mv, v0, iterations, per_sample=per_sample[i - 1])
    # Appendix A: tilde L_z = L_z + delta with L_z = lambda_max(H_zz) (clipped at 0).
    c[i] = jnp.maximum(lam, 0.0) + delta
  return tuple(c[2:])
