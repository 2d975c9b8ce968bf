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
   c_i = \max(\lambda_{\max}(H^{(i)}_{zz}), 0) + \delta,\qquad
   H^{(i)}_{zz} = \nabla^2_{zz}\psi_i(z_t^{(i-1)}, \theta_t)

(power iteration on exact Hessian-vector products; see :func:`top_eigenvalue` for the
indefinite case). The local loss of stage ``i`` (Proposition 1 with :math:`\rho = 0`) is

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


# ---------------------------------------------------------- power iteration


class PowerIteration(NamedTuple):
  """Result of :func:`power_iteration`."""

  rayleigh: Array  # v^T A v for the last unit vector v (a lower bound on lambda_max)
  norm: Array  # ||A v||, an estimate of the spectral radius
  vector: PyTree  # A v / ||A v||


def _unit(v: PyTree) -> PyTree:
  n = optax.tree.norm(v)
  return optax.tree.scale(1.0 / jnp.where(n > 0, n, 1.0), v)


def power_iteration(matvec: MatVec, v0: PyTree, iterations: int) -> PowerIteration:
  """``iterations`` steps ``v <- A v / ||A v||`` from ``v0`` (one product each)."""

  def body(_, carry):
    v, _, _ = carry
    w = matvec(v)
    n = optax.tree.norm(w)
    return optax.tree.scale(1.0 / jnp.where(n > 0, n, 1.0), w), optax.tree.vdot(v, w), n

  dtype = compute_dtype(v0)
  zero = jnp.zeros([], dtype)
  v, rq, n = jax.lax.fori_loop(0, iterations, body, (_unit(v0), zero, zero))
  return PowerIteration(rayleigh=rq, norm=n, vector=v)


def top_eigenvalue(matvec: MatVec, v0: PyTree, iterations: int, *, agreement: float = 0.99):
  r"""An estimate of :math:`\lambda_{\max}(A)` for a symmetric, possibly indefinite ``A``.

  Power iteration converges to the eigenvalue of largest *magnitude*, which for an
  indefinite :math:`H_{zz}` may be the most negative one. So: run ``iterations`` steps
  on :math:`A`; if the last Rayleigh quotient :math:`r` is below ``agreement`` times
  :math:`\hat\rho = \|A v\| \approx \max|\lambda|` (the dominant eigenvalue is not
  clearly the positive one), run ``iterations`` more steps on the shifted
  :math:`A + \hat\rho I`, whose dominant eigenvalue is :math:`\lambda_{\max}(A) +
  \hat\rho`, from ``v0`` again. The result is the largest Rayleigh quotient of
  :math:`A` seen: each is :math:`\le \lambda_{\max}(A)`, so the largest is the best
  estimate. Both phases run in one ``lax.while_loop`` (one product per step; the
  second phase only when needed). Callers clip the estimate at zero
  (:math:`c_i = \max(\cdot, 0) + \delta` bounds :math:`H_{zz}` even when
  :math:`\lambda_{\max} < 0`).
  """
  dtype = compute_dtype(v0)
  u0 = _unit(v0)

  def cond(carry):
    k, phase2 = carry[0], carry[-1]
    return (k < iterations) | (phase2 & (k < 2 * iterations))

  def body(carry):
    k, v, shift, best, phase2 = carry
    w = optax.tree.add_scale(matvec(v), shift, v)
    n = optax.tree.norm(w)
    rq = optax.tree.vdot(v, w) - shift  # Rayleigh quotient of A
    v = optax.tree.scale(1.0 / jnp.where(n > 0, n, 1.0), w)
    switch = (k == iterations - 1) & (rq < agreement * n)
    v = jax.tree.map(lambda a, b: jnp.where(switch, a, b), u0, v)
    shift = jnp.where(switch, n, shift)
    return k + 1, v, shift, jnp.maximum(best, rq), phase2 | switch

  init = (jnp.zeros([], jnp.int32), u0, jnp.zeros([], dtype), jnp.array(-jnp.inf, dtype), False)
  init = (*init[:-1], jnp.array(False))
  return jax.lax.while_loop(cond, body, init)[3]


def start_vector(seed: int, like: PyTree) -> PyTree:
  """A fixed, dense start vector for power iteration, shaped like ``like``.

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
) -> tuple[Array, ...]:
  r"""The constants :math:`(c_2, \dots, c_{m+1})`, top-down (Appendix A).

  :math:`c_{m+1}` = ``c_last``; for :math:`i = m, \dots, 2`,
  :math:`c_i = \max(\lambda_{\max}(\nabla^2_{zz}\psi_i), 0) + \delta` with
  :math:`\psi_i` built from :math:`c_{i+1}` (:func:`top_eigenvalue`, ``iterations``
  Hessian-vector products, :func:`start_vector` with ``seed + i``).

  Returns:
    A tuple whose entry ``i - 1`` is :math:`c_{i+1}`, the constant stage ``i`` uses.
  """
  m = len(stage_fns)
  c = [None] * (m + 2)
  c[m + 1] = c_last
  for i in range(m, 1, -1):
    psi = make_psi(stage_fns[i - 1], fb.g_z[i - 1], fb.z[i], c[i + 1])
    z_in = fb.z[i - 1]
    mv = hzz_product(psi, z_in, stage_params[i - 1])
    lam = top_eigenvalue(mv, start_vector(seed + i, z_in), iterations)
    # Appendix A: tilde L_z = L_z + delta with L_z = lambda_max(H_zz) (clipped at 0).
    c[i] = jnp.maximum(lam, 0.0) + delta
  return tuple(c[2:])
