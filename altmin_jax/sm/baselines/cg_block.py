r"""CGBlock: block-diagonal Newton steps on the global loss, solved by conjugate gradient.

A baseline of the SM paper (Asad et al., section 4, "CGBlock"): a parametric Newton
method that keeps the diagonal blocks :math:`\nabla^2_{\theta_i\theta_i} h` of the Hessian
of the *global* loss (one block per layer) and takes N CG steps on each block's Newton
system. Unlike SM, whose blocks come from the per-layer local losses, these blocks need
not be positive semi-definite, and the blocks ignore one another, so the combined step can
overshoot: the paper observed that negative curvature makes CGBlock perform poorly and that
regularisation (``damping``) slows it down. The plain step diverges to NaN within a few
iterations on small tanh networks. By default the combined step is therefore taken with a
backtracking Armijo search on :math:`h` along it (no iteration increases the loss; one more
forward pass per trial); ``line_search=None`` takes the plain step as in the paper.

The Armijo search only guarantees a decrease on the batch the step is computed on. On
minibatches smaller than a layer's parameter count the undamped blocks are singular and
their Newton steps fit each minibatch exactly: on the 6-8-3 tanh network of the
conformance suite with minibatches of 16, ``damping=0`` with the search takes the loss on
all 64 samples from 1.33 to 10.8 in 30 steps (to 1e2-4e2 with ``damping=1e-3``), while
``damping=1`` takes it to 0.28. The default is therefore ``damping=1.0``: where a damped
block is positive definite its step is no longer than :math:`\|g_i\| / \lambda`, a
gradient step of learning rate :math:`1/\lambda`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from altmin_jax import losses as losses_lib
from altmin_jax import numerics
from altmin_jax.core import checks
from altmin_jax.core.states import checked_transformation
from altmin_jax.core.types import Array, Loss
from altmin_jax.networks import LayeredNetwork, stages
from altmin_jax.numerics.line_search import ArmijoSearch, check_search
from altmin_jax.sm import _common


class CGBlockState(NamedTuple):
  """State of CGBlock: step count, last loss, per-block solve diagnostics and the step
  search."""

  count: Array  # int32 scalar, iterations taken
  loss: Array  # float32 scalar, h(theta_t) on the last batch, before its update
  model_value: Array  # (m,) float32, g_i^T d_i + d_i^T (H_ii + damping I) d_i / 2
  inner_iterations: Array  # (m,) int32, CG steps taken per block
  negative_curvature: Array  # (m,) bool, whether the guard stopped a block's solve
  step_size: Array  # float32 scalar, the next search's first trial (1 without a search)
  failed_count: Array  # int32 scalar, searches that fell back to ``fallback_step``


# Newton steps have the natural length 1: searches start at min(2 x the last step, 1)
NEWTON_SEARCH = ArmijoSearch(init_step=1.0, max_step=1.0)


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
  damping: float = 1.0,
  curvature_tol: float = 0.0,
  line_search: ArmijoSearch | None = NEWTON_SEARCH,
) -> optax.GradientTransformationExtraArgs:
  r"""Block-diagonal Newton-CG on the batch-mean loss ``h`` (the paper's CGBlock).

  For every stage ``i`` independently, with :math:`g_i = \partial h/\partial\theta_i` and
  :math:`H_{ii} = \partial^2 h/\partial\theta_i^2` at :math:`\theta_t` (exact
  Hessian-vector products),

  .. math::
     \theta_{t+1} = \theta_t + \alpha_t d,\qquad
     d_i \approx \arg\min_d\; g_i^\top d + \tfrac12 d^\top (H_{ii} + \lambda I) d

  by N = ``inner_steps`` conjugate-gradient steps from :math:`d_i = 0`
  (:func:`~altmin_jax.numerics.conjugate_gradient`, with its negative-curvature guard, so
  :math:`g^\top d < 0`), and :math:`\alpha_t` from a backtracking Armijo search on
  :math:`h` along :math:`d` (:math:`h(\theta_t + \alpha d) \le h(\theta_t) + c\,\alpha\,
  g^\top d`, module docstring), or :math:`\alpha_t = 1` with ``line_search=None``.

  Args:
    net: a :class:`~altmin_jax.networks.LayeredNetwork`.
    loss: per-sample loss; ``h`` is its batch mean.
    inner_steps: N >= 1 CG steps per block.
    damping: :math:`\lambda \ge 0` added to every block (default 1: bounded steps on
      minibatches, module docstring; 0 gives the paper's undamped blocks).
    curvature_tol: CG guard threshold.
    line_search: the :class:`~altmin_jax.numerics.ArmijoSearch` of the combined step
      (default: first trial :math:`\min(2\alpha_{t-1}, 1)`), or ``None`` for the
      paper's plain step (may diverge).

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
  net = stages.check_network(net)
  loss = checks.check_loss(loss)
  inner_steps = checks.check_int("inner_steps", inner_steps, 1)
  damping = checks.check_positive("damping", damping, allow_zero=True)
  curvature_tol = checks.check_positive("curvature_tol", curvature_tol, allow_zero=True)
  m = net.num_stages

  search = None if line_search is None else check_search(line_search)

  def init_fn(params):
    del params
    return CGBlockState(
      count=jnp.zeros([], jnp.int32),
      loss=jnp.zeros([], jnp.float32),
      model_value=jnp.zeros([m], jnp.float32),
      inner_iterations=jnp.zeros([m], jnp.int32),
      negative_curvature=jnp.zeros([m], bool),
      step_size=jnp.asarray(1.0 if search is None else search.init_step, jnp.float32),
      failed_count=jnp.zeros([], jnp.int32),
    )

  @jax.jit
  def iterate(stage_params, x, y, step_size):
    h = _common.network_loss(net, loss, x, y)
    steps, grads, models, iters, negs = [], [], [], [], []
    for g, hvp in block_hessian_products(h, stage_params):

      def matvec(v, hvp=hvp):
        return optax.tree.add_scale(hvp(v), damping, v)

      res = numerics.conjugate_gradient(
        matvec, optax.tree.scale(-1.0, g), steps=inner_steps, curvature_tol=curvature_tol
      )
      steps.append(res.x)
      grads.append(g)
      models.append(optax.tree.vdot(g, res.x) + 0.5 * optax.tree.vdot(res.x, res.Ax))
      iters.append(res.iterations)
      negs.append(res.negative_curvature)
    value = h(stage_params)
    point, d = tuple(stage_params), tuple(steps)
    if search is None:
      alpha, next_step, failed = jnp.ones([], value.dtype), step_size, jnp.zeros([], jnp.int32)
    else:
      slope = optax.tree.vdot(tuple(grads), d)  # < 0: CG's guard keeps d a descent direction
      ls = numerics.armijo_backtracking(
        lambda a: h(optax.tree.add_scale(point, a, d)), value, slope, step_size, search
      )
      alpha, next_step = ls.step, numerics.next_init_step(ls, search)
      failed = (~ls.accepted).astype(jnp.int32)
    new = optax.tree.add_scale(point, alpha.astype(value.dtype), d)
    return new, value, models, iters, negs, next_step, failed

  def update_fn(updates, state, params=None, *, batch, **extra_args):
    del updates, extra_args
    prep = stages.prepare(net, params, batch, "cg_block", loss)
    new, value, models, iters, negs, step, failed = iterate(
      prep.stage_params, prep.x, prep.y, state.step_size
    )
    new_state = CGBlockState(
      count=optax.safe_int32_increment(state.count),
      loss=value.astype(jnp.float32),
      model_value=jnp.stack(models).astype(jnp.float32),
      inner_iterations=jnp.stack(iters).astype(jnp.int32),
      negative_curvature=jnp.stack(negs),
      step_size=jnp.asarray(step, jnp.float32),
      failed_count=state.failed_count + failed,
    )
    return stages.params_update(net, list(new), prep.params), new_state

  return checked_transformation("cg_block", init_fn, update_fn)
