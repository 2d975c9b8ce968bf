r"""Offline alternating minimization: AM-Adam-off and AM-mem-off.

The offline baselines of Choromanska et al. (2019, sec. 4) treat the whole training
set as one minibatch: one ``update`` is one AM iteration (:mod:`altmin_jax.am._common`)
over all ``n`` samples. Unlike the online methods, the codes of every sample persist in
the state between iterations (block-coordinate descent on eq. 3 over ``W`` and ``C``):
the first iteration encodes them with a forward pass, later ones start from the stored
codes, with the proximal anchors ``f_l(W^l, \sigma_{l-1}(c^{l-1}))`` computed from them
(:func:`altmin_jax.am.codes.encode_anchors`). The first iteration therefore equals one
online step on the full dataset. ``X`` must hold the same samples in the same order at
every call: row ``n`` of ``state.codes`` belongs to sample ``n``.
"""

from __future__ import annotations

from typing import NamedTuple

import optax

from altmin_jax import losses as losses_lib
from altmin_jax.am._common import (
  AMConfig,
  CodeStepOptions,
  am_config,
  gradient_rule,
  layered_am,
  memory_rule,
)
from altmin_jax.core.checks import check_int
from altmin_jax.core.options import documented
from altmin_jax.core.types import Array, Loss, Optimizers, ScalarOrSchedule
from altmin_jax.networks import LayeredNetwork


class AMOfflineState(NamedTuple):
  """State of offline AM: the online fields plus the codes of every training sample."""

  count: Array  # int32 scalar, AM iterations done
  batch_loss: Array  # float32 scalar, full-data loss before the last iteration
  weight_states: tuple
  memory: tuple
  codes: tuple  # c^1..c^L for all n samples, shapes (n, *code_shape)


def _offline(cfg: AMConfig, num_samples) -> optax.GradientTransformationExtraArgs:
  num_samples = check_int("num_samples", num_samples, 1)
  rule = f"offline AM works on the full dataset of num_samples={num_samples} samples"
  return layered_am(cfg, AMOfflineState, stored=num_samples, resume=True, size_rule=rule)


@documented(CodeStepOptions)
def am_adam_offline(
  net: LayeredNetwork,
  loss: Loss = losses_lib.softmax_cross_entropy,
  *,
  num_samples: int,
  weight_optimizer: Optimizers | None = None,
  output_optimizer: optax.GradientTransformation | None = None,
  weight_steps: int = 1,
  code_steps: int = CodeStepOptions.code_steps,
  code_lr: float | None = CodeStepOptions.code_lr,
  code_optimizer: str | optax.GradientTransformation = CodeStepOptions.code_optimizer,
  mu: ScalarOrSchedule = CodeStepOptions.mu,
  code_proximal: bool = CodeStepOptions.code_proximal,
) -> optax.GradientTransformationExtraArgs:
  r"""Offline AM-Adam (AM-Adam-off): :func:`~altmin_jax.am_adam` on the full dataset
  with the codes of all ``num_samples`` samples kept in ``state.codes``.

  Each ``update(grads, state, params, *, batch=(X, Y))`` with the full training set
  is one AM iteration: the codes move from their stored values (eqs. 4-5), then every
  layer's weights move by its own optimizer (eq. 6). ``mu`` is scheduled on the iteration
  count.

  Args:
    net: a :class:`~altmin_jax.networks.LayeredNetwork` with at least one hidden layer.
    loss: per-sample loss ``loss(logits, labels) -> (batch,)``.
    num_samples: ``n``, the size of the training set (the batch of every update).
    weight_optimizer, output_optimizer, weight_steps: as in :func:`~altmin_jax.am_adam`,
      per iteration instead of per minibatch.
    code_steps, code_lr, code_optimizer, mu, code_proximal: the code-step options
      (:class:`~altmin_jax.am.CodeStepOptions`).

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
  codes = CodeStepOptions.from_arguments(locals())
  return _offline(am_config(net, loss, codes, weights), num_samples)


@documented(CodeStepOptions)
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
  code_steps: int = CodeStepOptions.code_steps,
  code_lr: float | None = CodeStepOptions.code_lr,
  code_optimizer: str | optax.GradientTransformation = CodeStepOptions.code_optimizer,
  mu: ScalarOrSchedule = CodeStepOptions.mu,
  code_proximal: bool = CodeStepOptions.code_proximal,
) -> optax.GradientTransformationExtraArgs:
  r"""Offline AM-mem (AM-mem-off): :func:`~altmin_jax.am_mem` on the full dataset with
  the codes of all samples stored in ``state.codes``.

  With the default ``forgetting=0`` the memories are rebuilt from all ``n`` samples at
  each iteration, so each hidden layer moves towards the least-squares fit of the
  current codes over the whole dataset (eq. 7; one block-coordinate sweep by default,
  exactly with ``solver="exact"``). ``mu`` is scheduled on the iteration count.

  Args:
    net: a layered network whose hidden stages are dense.
    loss: per-sample loss ``loss(logits, labels) -> (batch,)``.
    num_samples: ``n``, the size of the training set.
    forgetting: ``beta`` in ``[0, 1]`` (default 0: memories of the current iteration
      only).
    output_optimizer, output_steps, sweeps, solver, ridge: as in
      :func:`~altmin_jax.am_mem`, per iteration instead of per minibatch.
    code_steps, code_lr, code_optimizer, mu, code_proximal: the code-step options
      (:class:`~altmin_jax.am.CodeStepOptions`).

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
  weights = memory_rule(net, output_optimizer, output_steps, sweeps, solver, forgetting, ridge)
  codes = CodeStepOptions.from_arguments(locals())
  return _offline(am_config(net, loss, codes, weights), num_samples)
