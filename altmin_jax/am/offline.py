r"""Offline alternating minimization: AM-Adam-off and AM-mem-off.

The offline baselines of Choromanska et al. (2019, sec. 4) treat the whole training
set as one minibatch: one ``update`` is one AM iteration over all ``n`` samples.
Unlike the online methods, the codes of every sample persist in the state between
iterations (block-coordinate descent on eq. 3 over ``W`` and ``C``): the first
iteration encodes them with a forward pass, later ones start from the stored codes,
with the proximal anchors ``f_l(W^l, \sigma_{l-1}(c^{l-1}))`` computed from them.
The first iteration therefore equals one online step on the full dataset.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from altmin_jax import losses as losses_lib
from altmin_jax.am import codes as codes_lib
from altmin_jax.am import weights as weights_lib
from altmin_jax.am.online import (
  AMConfig,
  Loss,
  Optimizers,
  am_iteration,
  check_int,
  gradient_rule,
  like,
  make_config,
  memory_rule,
  params_difference,
  unpack_batch,
)
from altmin_jax.networks import LayeredNetwork, as_arrays

Array = jax.Array


class AMOfflineState(NamedTuple):
  """State of offline AM: the online fields plus the codes of every training sample."""

  count: Array  # int32 scalar, AM iterations done
  batch_loss: Array  # float32 scalar, full-data loss before the last iteration
  weight_states: tuple
  memory: tuple
  codes: tuple  # c^1..c^L for all n samples, shapes (n, *code_shape)


def _offline(cfg: AMConfig, num_samples: int) -> optax.GradientTransformationExtraArgs:
  net = cfg.net

  def init_fn(params):
    stage_params = net.stage_params(params)
    weight_states, memory = weights_lib.init_weights_state(cfg.weights, net, stage_params)
    dtype = jax.tree.leaves(stage_params)[0].dtype
    codes = tuple(jnp.zeros((num_samples, *shape), dtype) for shape in net.code_shapes)
    return AMOfflineState(
      count=jnp.zeros([], jnp.int32),
      batch_loss=jnp.zeros([], jnp.float32),
      weight_states=weight_states,
      memory=memory,
      codes=codes,
    )

  def update_fn(updates, state, params=None, *, batch, **extra_args):
    del updates, extra_args
    if params is None:
      raise ValueError("offline alternating minimization needs params")
    x, y = unpack_batch(net, batch)
    if x.shape[0] != num_samples:
      raise ValueError(
        f"offline AM works on the full dataset of num_samples={num_samples} "
        f"samples, got a batch of {x.shape[0]}"
      )
    params = as_arrays(params)
    stage_params = net.stage_params(params)
    encoded, logits = net.forward_stages(stage_params, x)
    first = state.count == 0
    start = tuple(jnp.where(first, e, c).astype(e.dtype) for e, c in zip(encoded, state.codes))
    anchors = codes_lib.encode_anchors(net, stage_params, x, start)
    new_stage_params, new_codes, weight_states, memory, batch_loss = am_iteration(
      cfg,
      stage_params,
      x,
      y,
      start,
      anchors,
      logits,
      state.weight_states,
      state.memory,
      state.count,
    )
    new_params = net.merge_stage_params(new_stage_params, params)
    new_state = AMOfflineState(
      count=optax.safe_int32_increment(state.count),
      batch_loss=batch_loss,
      weight_states=weight_states,
      memory=memory,
      codes=like(new_codes, state.codes),
    )
    return params_difference(new_params, params), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def am_adam_offline(
  net: LayeredNetwork,
  loss: Loss = losses_lib.softmax_cross_entropy,
  *,
  num_samples: int,
  weight_optimizer: Optimizers | None = None,
  output_optimizer: optax.GradientTransformation | None = None,
  weight_steps: int = 1,
  code_steps: int = 5,
  code_lr: float | None = 0.01,
  code_optimizer: str | optax.GradientTransformation = "sgd",
  mu: float | optax.Schedule = 0.01,
  code_proximal: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""Offline AM-Adam (AM-Adam-off): :func:`~altmin_jax.am_adam` on the full dataset
  with the codes of all ``num_samples`` samples kept in ``state.codes``.

  Each ``update(grads, state, params, *, batch=(X, Y))`` with the full training set
  is one AM iteration: the codes move from their stored values by eqs. (4)-(5) with
  anchors ``f_l(W^l, \sigma_{l-1}(c^{l-1}))``, then every layer's weights move by
  its own optimizer (eq. 6). ``X`` must hold the same samples in the same order at
  every call: row ``n`` of ``state.codes`` belongs to sample ``n``.

  Args:
    net: a :class:`~altmin_jax.networks.LayeredNetwork` with at least one hidden layer.
    loss: per-sample loss ``loss(logits, labels) -> (batch,)``.
    num_samples: ``n``, the size of the training set (the batch of every update).
    weight_optimizer: optax optimizer for every layer (default ``optax.adam(1e-3)``),
      or one per stage.
    output_optimizer: optional optimizer for the output layer only.
    weight_steps: ``K_w >= 1`` optimizer steps per layer and iteration.
    code_steps: ``K_c >= 0`` code steps per subproblem and iteration.
    code_lr: code step size (scaling as in :func:`~altmin_jax.am_adam`).
    code_optimizer: ``"sgd"``, ``"nesterov"``, ``"adam"`` or an optax transformation.
    mu: penalty weight, a constant or a schedule of the iteration count.
    code_proximal: keep the proximal terms of eqs. (4)-(5).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state is :class:`AMOfflineState`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import altmin_jax as amj
    >>> net = amj.networks.mlp([4, 8, 3])
    >>> params = net.init(jax.random.key(0))
    >>> X, Y = jnp.ones((6, 4)), jnp.array([0, 1, 2, 0, 1, 2])
    >>> tx = amj.am_adam_offline(net, num_samples=6)
    >>> state = tx.init(params)
    >>> updates, state = tx.update(None, state, params, batch=(X, Y))
    >>> [c.shape for c in state.codes]
    [(6, 8)]
  """
  weights = gradient_rule(net, weight_optimizer, output_optimizer, weight_steps)
  cfg = make_config(
    net,
    loss,
    weights,
    mu=mu,
    code_steps=code_steps,
    code_lr=code_lr,
    code_optimizer=code_optimizer,
    code_proximal=code_proximal,
  )
  return _offline(cfg, check_int("num_samples", num_samples, 1))


def am_mem_offline(
  net: LayeredNetwork,
  loss: Loss = losses_lib.softmax_cross_entropy,
  *,
  num_samples: int,
  output_optimizer: optax.GradientTransformation | None = None,
  output_steps: int = 1,
  sweeps: int = 1,
  solver: str = "bcd",
  forgetting: float = 0.0,
  ridge: float = 1e-6,
  code_steps: int = 5,
  code_lr: float | None = 0.01,
  code_optimizer: str | optax.GradientTransformation = "sgd",
  mu: float | optax.Schedule = 0.01,
  code_proximal: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""Offline AM-mem (AM-mem-off): :func:`~altmin_jax.am_mem` on the full dataset with
  the codes of all samples stored in ``state.codes``.

  With the default ``forgetting=0`` the memories are rebuilt from all ``n`` samples at
  each iteration, so each hidden layer moves towards the least-squares fit
  ``W^l = B^l (A^l)^{-1}`` of the current codes over the whole dataset (one
  block-coordinate sweep by default, exactly with ``solver="exact"``). ``X`` must hold
  the same samples in the same order at every call.

  Args:
    net: a layered network whose hidden stages are dense.
    loss: per-sample loss ``loss(logits, labels) -> (batch,)``.
    num_samples: ``n``, the size of the training set.
    output_optimizer: optimizer of the output layer (default ``optax.sgd(0.1)``).
    output_steps: optimizer steps of the output layer per iteration.
    sweeps: block-coordinate sweeps per iteration.
    solver: ``"bcd"`` or ``"exact"``.
    forgetting: ``beta`` in ``[0, 1]`` (0: memories of the current iteration only).
    ridge: Tikhonov term of the exact solve relative to ``Tr(A) / d``.
    code_steps, code_lr, code_optimizer, mu, code_proximal: as in
      :func:`am_adam_offline`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state is :class:`AMOfflineState`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import altmin_jax as amj
    >>> net = amj.networks.mlp([4, 8, 3])
    >>> params = net.init(jax.random.key(0))
    >>> tx = amj.am_mem_offline(net, num_samples=6)
    >>> _, state = tx.update(None, tx.init(params), params,
    ...                      batch=(jnp.ones((6, 4)), jnp.array([0, 1, 2, 0, 1, 2])))
    >>> state.memory[0].A.shape
    (5, 5)
  """
  weights = memory_rule(
    net,
    output_optimizer,
    output_steps=output_steps,
    sweeps=sweeps,
    solver=solver,
    forgetting=forgetting,
    ridge=ridge,
  )
  cfg = make_config(
    net,
    loss,
    weights,
    mu=mu,
    code_steps=code_steps,
    code_lr=code_lr,
    code_optimizer=code_optimizer,
    code_proximal=code_proximal,
  )
  return _offline(cfg, check_int("num_samples", num_samples, 1))
