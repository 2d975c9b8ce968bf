r"""CGBlock: block-diagonal Newton steps on the global loss, solved by conjugate gradient.

A baseline of the SM paper (Asad et al., section 4, "CGBlock"): a parametric Newton
method that keeps the diagonal blocks :math:`\nabla^2_{\theta_i\theta_i} h` of the Hessian
of the *global* loss (one block per layer) and takes N CG steps on each block's Newton
system. Unlike SM, whose blocks come from the per-layer local losses, these blocks need
not be positive semi-definite; the CG negative-curvature guard stops a block's solve
at the first direction of non-positive curvature (the paper observed that negative
curvature makes CGBlock perform poorly; ``damping`` adds the regularisation that
the paper reports slowing convergence).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from altmin_jax import losses as losses_lib
from altmin_jax import numerics
from altmin_jax.core import checks
from altmin_jax.core.types import Array, Loss
from altmin_jax.networks import LayeredNetwork
from altmin_jax.sm import _common


class CGBlockState(NamedTuple):
  """State of CGBlock: step count, last loss and per-block solve diagnostics."""

  count: Array  # int32 scalar, iterations taken
  loss: Array  # float32 scalar, h(theta_t) on the last batch, before its update
  model_value: Array  # (m,) float32, g_i^T d_i + d_i^T (H_ii + damping I) d_i / 2
  inner_iterations: Array  # (m,) int32, CG steps taken per block
  negative_curvature: Array  # (m,) bool, whether the guard stopped a block's solve


def block_hessian_products(h, stage_params):
  """For each stage ``i``: ``(g_i, v -> H_ii v)``, the gradient and the diagonal Hessian
  block of ``h`` in ``theta_i`` (one ``jax.linearize`` of ``jax.grad`` per block; the
  tangent of block ``i`` only enters at stage ``i``)."""
  out = []
  for i in range(len(stage_params)):

    def h_i(theta_i, i=i):
      ps = list(stage_params)
      ps[i] = theta_i
      return h(tuple(ps))

    g_i, lin = jax.linearize(jax.grad(h_i), stage_params[i])
    out.append((g_i, lin))
  return out


def cg_block(
  net: LayeredNetwork,
  loss: Loss = losses_lib.softmax_cross_entropy,
  *,
  inner_steps: int = 10,
  damping: float = 0.0,
  curvature_tol: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
  r"""Block-diagonal Newton-CG on the batch-mean loss ``h`` (the paper's CGBlock).

  For every stage ``i`` independently, with :math:`g_i = \partial h/\partial\theta_i` and
  :math:`H_{ii} = \partial^2 h/\partial\theta_i^2` at :math:`\theta_t` (exact
  Hessian-vector products),

  .. math::
     \theta_{i,t+1} = \theta_{i,t} + d_i,\qquad
     d_i \approx \arg\min_d\; g_i^\top d + \tfrac12 d^\top (H_{ii} + \lambda I) d

  by N = ``inner_steps`` conjugate-gradient steps from :math:`d_i = 0`
  (:func:`~altmin_jax.sm.numerics.conjugate_gradient`, with its negative-curvature guard).

  Args:
    net: a :class:`~altmin_jax.networks.LayeredNetwork`.
    loss: per-sample loss; ``h`` is its batch mean.
    inner_steps: N >= 1 CG steps per block.
    damping: :math:`\lambda \ge 0` added to every block.
    curvature_tol: CG guard threshold.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (``update(None, state, params, *,
    batch=(x, y))``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import altmin_jax as amj
    >>> from altmin_jax.sm import cg_block
    >>> net = amj.networks.mlp([4, 8, 3], activation=jnp.tanh)
    >>> params = net.init(jax.random.key(0))
    >>> tx = cg_block(net, inner_steps=3)
    >>> x, y = jnp.ones((6, 4)), jnp.array([0, 1, 2, 0, 1, 2])
    >>> updates, state = tx.update(None, tx.init(params), params, batch=(x, y))
    >>> state.inner_iterations.shape
    (2,)
  """
  net = _common.check_network(net)
  loss = checks.check_loss(loss)
  inner_steps = checks.check_int("inner_steps", inner_steps, 1)
  damping = checks.check_positive("damping", damping, allow_zero=True)
  curvature_tol = checks.check_positive("curvature_tol", curvature_tol, allow_zero=True)
  m = net.num_stages

  def init_fn(params):
    del params
    return CGBlockState(
      count=jnp.zeros([], jnp.int32),
      loss=jnp.zeros([], jnp.float32),
      model_value=jnp.zeros([m], jnp.float32),
      inner_iterations=jnp.zeros([m], jnp.int32),
      negative_curvature=jnp.zeros([m], bool),
    )

  @jax.jit
  def iterate(stage_params, x, y):
    h = _common.network_loss(net, loss, x, y)
    new, models, iters, negs = [], [], [], []
    for theta, (g, hvp) in zip(stage_params, block_hessian_products(h, stage_params)):

      def matvec(v, hvp=hvp):
        return optax.tree.add_scale(hvp(v), damping, v)

      res = numerics.conjugate_gradient(
        matvec, optax.tree.scale(-1.0, g), steps=inner_steps, curvature_tol=curvature_tol
      )
      new.append(optax.tree.add(theta, res.x))
      models.append(optax.tree.vdot(g, res.x) + 0.5 * optax.tree.vdot(res.x, res.Ax))
      iters.append(res.iterations)
      negs.append(res.negative_curvature)
    return new, h(stage_params), models, iters, negs

  def update_fn(updates, state, params=None, *, batch, **extra_args):
    del updates, extra_args
    prep = _common.prepare(net, params, batch, "cg_block")
    new, value, models, iters, negs = iterate(prep.stage_params, prep.x, prep.y)
    new_state = CGBlockState(
      count=optax.safe_int32_increment(state.count),
      loss=value.astype(jnp.float32),
      model_value=jnp.stack(models).astype(jnp.float32),
      inner_iterations=jnp.stack(iters).astype(jnp.int32),
      negative_curvature=jnp.stack(negs),
    )
    return _common.params_update(net, new, prep.params), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
