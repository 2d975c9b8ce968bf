r"""The SM paper's literal constants (``majorizer="paper"``): *not* a majorizer.

Asad et al., Proposition 1 and Appendices A-B. Stage ``i`` owns the scalar function of its
input and parameters (Appendix B, :math:`\Psi^{(i)}`)

.. math::
   \psi_i(z, \theta) = \langle g^{(i)}, f_i(z, \theta) - z_t^{(i)}\rangle
     + \frac{c_{i+1}}{2}\,\|f_i(z, \theta) - z_t^{(i)}\|^2,

with :math:`c_{m+1} = L/B` and, per Appendix B's equalities :math:`H^{(i)}_{zz,t} =
\partial^2\ell(z_t)/\partial(z^{(i-1)})^2`, :math:`c_i` the largest eigenvalue of the
*true* loss Hessian in stage ``i``'s input plus :math:`\delta` (:func:`paper_constants`).
The local loss is the second-order expansion of :math:`\psi_i` with the coupling bound of
Appendix A,

.. math::
   \mathbb H_i = H^{(i)}_{\theta\theta} + H^{(i)\top}_{z\theta} H^{(i)}_{z\theta}/\delta

(no coupling term for the first stage), every derivative exact (``jax.linearize`` of
``jax.grad``; the paper used finite differences). These constants train fast, but the
block-diagonal matrix they give can fall *below* the loss Hessian (on small dense tanh and
ReLU nets by up to about a quarter of its largest eigenvalue, ``tests/test_sm_math.py``),
so Theorem 1's descent guarantee does not cover them; the default construction is
:mod:`altmin_jax.sm.young_bound`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from altmin_jax import numerics
from altmin_jax.core.types import Array, Loss, MatVec, PyTree
from altmin_jax.networks import LayeredNetwork
from altmin_jax.networks.stages import StageFn, batch_mean_loss, stage_function
from altmin_jax.sm._common import ForwardBackward


def make_psi(fn: StageFn, g_out: Array, z_out: Array, c_next: Array) -> Callable:
  r""":math:`\psi_i(z, \theta)` (module docstring) for a stage map ``fn(theta, z)``, output
  gradient ``g_out``, output ``z_out`` at the iterate and constant ``c_next``."""

  def psi(z, theta):
    # Appendix B: Psi^(m), eq. (3), with 1/eta = c_{m+1}; Psi^(i-1) with H_zz = c_i I.
    diff = fn(theta, z) - z_out
    return jnp.vdot(g_out, diff) + 0.5 * c_next * jnp.vdot(diff, diff)

  return psi


def psi_quadratic(psi: Callable, z: Array, theta: PyTree, delta, first):
  r"""``(g_theta, v -> H_i v)`` of :math:`\psi_i` at ``(z, theta)`` (module docstring):
  :math:`(H_{z\theta} v, H_{\theta\theta} v)` is one jvp of :math:`\nabla_{(z,\theta)}\psi`
  in the direction :math:`(0, v)` and :math:`H_{z\theta}^\top u` one jvp of
  :math:`\nabla_\theta \psi` in the direction :math:`(u, 0)`. ``first`` is a Python bool or
  a traced one."""
  if first is True:
    return jax.linearize(lambda th: jax.grad(psi, argnums=1)(z, th), theta)
  (_, g_theta), lin_theta = jax.linearize(lambda th: jax.grad(psi, argnums=(0, 1))(z, th), theta)
  _, lin_coupling_t = jax.linearize(lambda zz: jax.grad(psi, argnums=1)(zz, theta), z)

  def matvec(v) -> MatVec:
    # Appendix A: H_i = H_thetatheta + H_ztheta^T H_ztheta / delta (condition (2)).
    h_z, h_theta = lin_theta(v)
    coupled = optax.tree.add_scale(h_theta, 1.0 / delta, lin_coupling_t(h_z))
    if first is False:
      return coupled
    return jax.tree.map(lambda a, b: jnp.where(first, a, b), h_theta, coupled)

  return g_theta, matvec


def paper_constants(
  net: LayeredNetwork,
  stage_params: Sequence[PyTree],
  fb: ForwardBackward,
  loss: Loss,
  y: Array,
  c_last: Array,
  *,
  delta,
  iterations: int,
  seed: int = 0,
) -> tuple[Array, ...]:
  r"""The constants :math:`(c_2, \dots, c_{m+1})`: :math:`c_{m+1}` = ``c_last`` and, for
  :math:`i = m, \dots, 2`, :math:`c_i = \max_b \hat\lambda_{\max}(\nabla^2_{z_b^{(i-1)}}h) +
  \delta`: ``iterations`` Lanczos steps per sample (stages map samples independently, so
  the Hessian is block diagonal) on exact Hessian-vector products through stages ``i..m``
  and the loss, Ritz value plus residual.

  Returns:
    A tuple whose entry ``i - 1`` is :math:`c_{i+1}`, the constant stage ``i`` uses.
  """
  m = net.num_stages
  c = [None] * (m + 2)
  c[m + 1] = c_last
  for i in range(m, 1, -1):

    def h_of(z, i=i):
      for j in range(i, m + 1):
        z = stage_function(net, j)(stage_params[j - 1], z)
      return batch_mean_loss(loss, z, y)

    z_in = fb.z[i - 1]
    _, hvp = jax.linearize(jax.grad(h_of), z_in)
    res = numerics.lanczos(hvp, numerics.start_vector(seed + i, z_in), iterations, per_sample=True)
    c[i] = jnp.maximum(jnp.max(res.ritz + res.residual), 0.0) + delta
  return tuple(c[2:])
