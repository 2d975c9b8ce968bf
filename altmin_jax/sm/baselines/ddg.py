r"""DDG: decoupled parallel backpropagation with delayed gradients (single-program emulation).

Huo, Gu, Yang, Huang, "Decoupled Parallel Backpropagation with Convergence Guarantee",
ICML 2018, as the SM paper's baseline (Asad et al., section 4). The network is split
into K modules of consecutive stages. In the pipelined algorithm module ``k`` runs its
backward pass for a batch only after the modules above it have, so it updates its
weights with the gradient of the batch (and weights) from ``K - 1 - k`` iterations
earlier (0-based ``k``; the last module uses the fresh gradient):

.. math::
   \theta_{G(k)}^{t+1} = \theta_{G(k)}^{t} - \gamma_t\,
     \nabla_{\theta_{G(k)}} h\big(\theta^{\,t-K+1+k};\ \xi_{t-K+1+k}\big).

This emulation computes one full gradient per iteration at the current weights and
batch, pushes each module's block into that module's FIFO buffer (length
``K - 1 - k``, held in the state) and applies the block that has waited long enough;
while a buffer fills, its module receives zero gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from altmin_jax import losses as losses_lib
from altmin_jax.core import checks
from altmin_jax.core.states import checked_transformation
from altmin_jax.core.types import Array, Loss
from altmin_jax.networks import LayeredNetwork, as_arrays, stages
from altmin_jax.sm import _common


class DDGState(NamedTuple):
  """State of DDG: step count, last loss, per-module delayed-gradient buffers and the
  inner SGD state."""

  count: Array  # int32 scalar, iterations taken
  loss: Array  # float32 scalar, h(theta_t) on the last batch, before its update
  buffers: tuple  # per module: per-stage gradient blocks stacked (delay, ...), oldest first
  inner_state: Any  # optax.sgd state over the per-stage params


def module_assignment(num_stages: int, num_modules: int, module_sizes) -> tuple[int, ...]:
  """The module (0-based) of every stage: ``module_sizes`` consecutive stages per
  module, or as equal as possible (earlier modules get the extra stages)."""
  if module_sizes is None:
    module_sizes = [len(a) for a in np.array_split(np.arange(num_stages), num_modules)]
  sizes = list(module_sizes)
  if (
    len(sizes) != num_modules
    or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes)
    or sum(sizes) != num_stages
  ):
    raise ValueError(
      f"module_sizes must be {num_modules} positive integers summing to the "
      f"{num_stages} stages, got module_sizes={module_sizes!r}"
    )
  return tuple(k for k, s in enumerate(sizes) for _ in range(s))


def ddg(
  net: LayeredNetwork,
  loss: Loss = losses_lib.softmax_cross_entropy,
  *,
  learning_rate: float | optax.Schedule = 0.1,
  momentum: float = 0.0,
  num_modules: int = 2,
  module_sizes: Sequence[int] | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Decoupled parallel backpropagation (DDG) with per-module delayed gradients.

  Module ``k`` of ``K`` (0-based) is updated by SGD (``momentum`` optional, as in the
  DDG paper's experiments) with the gradient computed ``K - 1 - k`` iterations earlier,
  at that iteration's weights and batch (see the module docstring). ``K = 1`` is plain
  SGD.

  Args:
    net: a :class:`~altmin_jax.networks.LayeredNetwork` with at least ``K`` stages.
    loss: per-sample loss; the objective is its batch mean.
    learning_rate: SGD step size or schedule :math:`\gamma_t`.
    momentum: heavy-ball momentum in ``[0, 1)`` (0: plain SGD).
    num_modules: ``K >= 1``.
    module_sizes: stages per module (default: as equal as possible).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (``update(None, state, params, *,
    batch=(x, y))``); the delayed gradients are ``state.buffers``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import altmin_jax as amj
    >>> from altmin_jax.sm import ddg
    >>> net = amj.networks.mlp([4, 8, 8, 3], activation=jnp.tanh)
    >>> params = net.init(jax.random.key(0))
    >>> tx = ddg(net, learning_rate=0.1, num_modules=3)
    >>> x, y = jnp.ones((6, 4)), jnp.array([0, 1, 2, 0, 1, 2])
    >>> updates, state = tx.update(None, tx.init(params), params, batch=(x, y))
    >>> [float(jnp.abs(u["kernel"]).max()) > 0 for u in updates]  # modules 0, 1 wait
    [False, False, True]
  """
  net = stages.check_network(net)
  loss = checks.check_loss(loss)
  m = net.num_stages
  num_modules = checks.check_int("num_modules", num_modules, 1)
  if num_modules > m:
    raise ValueError(
      f"num_modules must be at most the number of stages ({m}), got num_modules={num_modules!r}"
    )
  owner = module_assignment(m, num_modules, module_sizes)
  delays = tuple(num_modules - 1 - owner[i] for i in range(m))  # per stage
  # a JAX array (as optax.inject_hyperparams passes, traced or not) always keeps a momentum
  # buffer, so that init and update agree on the state's structure
  keep_buffer = isinstance(momentum, jax.Array)
  momentum = checks.check_unit_interval("momentum", momentum)
  if not callable(learning_rate):
    learning_rate = checks.check_positive("learning_rate", learning_rate)
  inner = optax.sgd(learning_rate, momentum=momentum if keep_buffer or momentum else None)

  def init_fn(params):
    stage_params = net.stage_params(as_arrays(params))
    buffers = tuple(
      jax.tree.map(lambda p, d=delays[i]: jnp.zeros((d, *jnp.shape(p)), p.dtype), stage_params[i])
      if delays[i]
      else ()
      for i in range(m)
    )
    return DDGState(
      count=jnp.zeros([], jnp.int32),
      loss=jnp.zeros([], jnp.float32),
      buffers=buffers,
      inner_state=inner.init(tuple(stage_params)),
    )

  @jax.jit
  def iterate(stage_params, raw_params, x, y, buffers, inner_state):
    value, grads = jax.value_and_grad(_common.network_loss(net, loss, x, y))(stage_params)
    delayed, new_buffers = [], []
    for i in range(m):
      g = jax.tree.map(lambda a, p: a.astype(p.dtype), grads[i], raw_params[i])
      if not delays[i]:
        delayed.append(g)
        new_buffers.append(())
        continue
      buf = buffers[i]
      delayed.append(jax.tree.map(lambda b: b[0], buf))  # computed delays[i] steps ago
      new_buffers.append(jax.tree.map(lambda b, a: jnp.concatenate([b[1:], a[None]]), buf, g))
    steps, inner_state = inner.update(tuple(delayed), inner_state, tuple(raw_params))
    new = [optax.tree.add(p, s) for p, s in zip(raw_params, steps)]
    return new, value, tuple(new_buffers), inner_state

  def update_fn(updates, state, params=None, *, batch, **extra_args):
    del updates, extra_args
    prep = stages.prepare(net, params, batch, "ddg", loss)
    raw_params = tuple(net.stage_params(prep.params))
    new, value, buffers, inner_state = iterate(
      prep.stage_params, raw_params, prep.x, prep.y, state.buffers, state.inner_state
    )
    new_state = DDGState(
      count=optax.safe_int32_increment(state.count),
      loss=value.astype(jnp.float32),
      buffers=buffers,
      inner_state=inner_state,
    )
    return stages.params_update(net, new, prep.params), new_state

  return checked_transformation("ddg", init_fn, update_fn)
