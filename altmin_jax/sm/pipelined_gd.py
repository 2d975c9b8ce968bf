r"""GPipe + GD: the SM paper's baseline in the setting of its Figure 1(a), one gradient
update per pipelined forward and backward pass (the schedule of
:mod:`altmin_jax.pipeline.gpipe`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from altmin_jax import losses as losses_lib
from altmin_jax import numerics
from altmin_jax.core import batches, checks, meshes
from altmin_jax.core.options import documented
from altmin_jax.core.states import checked_transformation
from altmin_jax.core.types import Loss
from altmin_jax.networks import LayeredNetwork, stages
from altmin_jax.numerics.line_search import ArmijoSearch, check_search
from altmin_jax.pipeline import gpipe
from altmin_jax.pipeline.options import PipelineOptions
from altmin_jax.sm._common import GDArmijoState


def _gd_gradients(pipe: gpipe.Pipeline, net, loss, prep: gpipe.Prepared):
  """The batch-mean loss and its gradient ``(theta, head, tail)`` from one GPipe
  forward and backward pass (gradients accumulated over micro-batches)."""
  lay = pipe.layout
  outside = lay.boundary == "outside"
  fw = gpipe.forward_and_loss(pipe, net, loss, prep, prep.theta, prep.head, prep.tail)
  _, g_theta, g_bottom = pipe.backward(prep.theta, fw.zin, fw.g_top, grads=True, bottom=outside)
  g_head = g_tail = None
  if outside:
    g_tail = fw.tail_vjp(fw.g_logits)[0]
    g_z1 = gpipe.flat(g_bottom)[:, : lay.widths[1]]
    _, head_vjp = jax.vjp(lambda th: stages.stage_function(net, 1)(th, prep.x), prep.head)
    (g_head,) = head_vjp(g_z1)
  return fw.value, (g_theta, g_head, g_tail)


@documented(PipelineOptions)
def pipelined_gradient_descent(
  net: LayeredNetwork,
  loss: Loss = losses_lib.softmax_cross_entropy,
  *,
  mesh: Mesh,
  num_microbatches: int = PipelineOptions.num_microbatches,
  boundary: str = PipelineOptions.boundary,
  axis_name: str = PipelineOptions.axis_name,
  learning_rate: float | None = None,
  line_search: ArmijoSearch | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""GPipe + GD: one gradient update per pipelined forward and backward pass.

  The SM paper's baseline in the setting of its Figure 1(a). One GPipe forward and
  backward pass over ``num_microbatches`` micro-batches accumulates :math:`\nabla
  h(\theta_t)` (each device for its own layers), then

  .. math:: \theta_{t+1} = \theta_t - \alpha_t \nabla h(\theta_t)

  with :math:`\alpha_t` = ``learning_rate`` (then the step equals ``optax.sgd`` on the
  gradient of the batch-mean loss), or, when ``learning_rate`` is ``None``, chosen by
  the Armijo search of :func:`~altmin_jax.sm.gd_armijo` (:math:`h(\theta_t -
  \alpha\nabla h) \le h(\theta_t) - c\,\alpha\|\nabla h\|^2`), where every trial step
  is one more pipelined forward pass and the step equals ``gd_armijo``'s.

  Args:
    net: a network of dense stages (:func:`~altmin_jax.networks.mlp`).
    loss: per-sample loss; the objective is its batch mean.
    mesh, num_microbatches, boundary, axis_name: the pipeline options
      (:class:`~altmin_jax.pipeline.PipelineOptions`).
    learning_rate: a fixed step, or ``None`` for the Armijo search.
    line_search: the :class:`~altmin_jax.numerics.ArmijoSearch` (as in
      :func:`~altmin_jax.sm.gd_armijo`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state
    :class:`~altmin_jax.sm.GDArmijoState`; ``update`` computes its own gradient (pass
    ``None``) and takes :class:`PipelineParams` or the network's params.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import altmin_jax as amj
    >>> from altmin_jax import pipeline
    >>> net = amj.networks.mlp([4, 6, 3], activation=jnp.tanh)
    >>> tx = amj.pipelined_gradient_descent(net, mesh=pipeline.pipeline_mesh(1))
    >>> params = net.init(jax.random.key(0))
    >>> x, y = jnp.ones((6, 4)), jnp.array([0, 1, 2, 0, 1, 2])
    >>> updates, state = tx.update(None, tx.init(params), params, batch=(x, y))
    >>> int(state.count)
    1
  """
  net = stages.check_network(net)
  loss = checks.check_loss(loss)
  search = check_search(line_search)
  if learning_rate is not None:
    learning_rate = checks.check_positive("learning_rate", learning_rate)
  pipe = gpipe.make_pipeline(net, PipelineOptions.from_arguments(locals()))

  def init_fn(params):
    del params
    first = search.init_step if learning_rate is None else learning_rate
    return meshes.replicate_on(
      mesh,
      GDArmijoState(
        count=np.zeros([], np.int32),
        loss=np.zeros([], np.float32),
        step_size=jnp.asarray(first, jnp.float32),  # traced under inject_hyperparams
        failed_count=np.zeros([], np.int32),
      ),
    )

  @jax.jit
  def iterate(params, x, y, state):
    prep = gpipe.prepare(pipe, net, params, (x, y), "pipelined gradient descent")
    value, grads = _gd_gradients(pipe, net, loss, prep)
    point = (prep.theta, prep.head, prep.tail)
    if learning_rate is None:

      def value_at(a):
        th, hd, tl = optax.tree.add_scale(point, -a, grads)
        return gpipe.forward_and_loss(pipe, net, loss, prep, th, hd, tl, store=False).value

      # ||grad h||^2 (a sum of squares: a dot product over the sharded layer axis of an
      # explicit-axis mesh has no unambiguous output sharding)
      gg = sum(jnp.sum(jnp.real(g * g)) for g in jax.tree.leaves(grads))
      step0 = jnp.asarray(state.step_size, jnp.float32)
      ls = numerics.armijo_backtracking(value_at, value, -gg, step0, search)
      step, next_step = ls.step.astype(gg.dtype), numerics.next_init_step(ls, search)
      failed = (~ls.accepted).astype(jnp.int32)
    else:
      step, next_step, failed = learning_rate, state.step_size, jnp.zeros([], jnp.int32)
    new_theta, new_head, new_tail = optax.tree.add_scale(point, -step, grads)
    new_state = GDArmijoState(
      count=optax.safe_int32_increment(state.count),
      loss=value.astype(jnp.float32),
      step_size=jnp.asarray(next_step, jnp.float32),
      failed_count=state.failed_count + failed,
    )
    return gpipe.updates(net, prep, new_theta, new_head, new_tail), new_state

  def update_fn(updates, state, params=None, *, batch, **extra_args):
    del updates, extra_args
    batches.require_params(params, "pipelined gradient descent")
    x, y = batches.unpack_batch(net, batch, loss)  # checks before tracing the step
    return iterate(params, x, y, state)

  return checked_transformation("pipelined gradient descent", init_fn, update_fn)
