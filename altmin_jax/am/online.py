r"""Online alternating minimization: AM-Adam and AM-mem.

Choromanska, Cowen, Kumaravel, Luss, Rigotti, Rish et al., "Beyond Backprop: Online
Alternating Minimization with Auxiliary Variables", ICML 2019 (Algorithms 2.1-2.3).

One ``update`` on a minibatch ``(x, y)`` is one AM iteration on the relaxed objective
(eq. 3, :mod:`altmin_jax.am._common`): encode the codes with a forward pass, update
them top-down (eqs. 4-5, :func:`altmin_jax.am.codes.update_codes`), then update every
layer's weights independently from the fixed codes (eqs. 6-7,
:func:`altmin_jax.am.weights.update_weights`). Online codes are recomputed from each
batch and are not state. The transformation returns ``updates = new_params - params``
and ignores the incoming gradients, which may be ``None``.
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
from altmin_jax.core.checks import check_optional_int
from altmin_jax.core.options import documented
from altmin_jax.core.types import Array, Loss, Optimizers, ScalarOrSchedule
from altmin_jax.networks import LayeredNetwork


class AMState(NamedTuple):
  """State of online AM: step count, last batch loss, per-layer optimizer states,
  co-activation memories (AM-mem) and, when recorded, the last batch's codes."""

  count: Array  # int32 scalar, minibatches seen
  batch_loss: Array  # float32 scalar, mean loss of the last batch before its update
  weight_states: tuple  # one optax state per stage (EmptyState for memory layers)
  memory: tuple  # one CoactivationMemory per memory layer (empty for AM-Adam)
  codes: tuple  # with record_codes=B: the updated codes c^1..c^L of the last batch, else ()


def _online(cfg: AMConfig, record_codes) -> optax.GradientTransformationExtraArgs:
  record_codes = check_optional_int("record_codes", record_codes, 1)
  rule = f"record_codes={record_codes} keeps the codes of batches of that size"
  return layered_am(cfg, AMState, stored=record_codes, resume=False, size_rule=rule)


@documented(CodeStepOptions)
def am_adam(
  net: LayeredNetwork,
  loss: Loss = losses_lib.softmax_cross_entropy,
  *,
  weight_optimizer: Optimizers | None = None,
  output_optimizer: optax.GradientTransformation | None = None,
  weight_steps: int = 1,
  code_steps: int = CodeStepOptions.code_steps,
  code_lr: float | None = CodeStepOptions.code_lr,
  code_optimizer: str | optax.GradientTransformation = CodeStepOptions.code_optimizer,
  mu: ScalarOrSchedule = CodeStepOptions.mu,
  code_proximal: bool = CodeStepOptions.code_proximal,
  record_codes: int | None = None,
  weight_inputs: str = "codes",
) -> optax.GradientTransformationExtraArgs:
  r"""Online alternating minimization with a gradient optimizer per layer (AM-Adam).

  Per minibatch: encode the codes; take ``code_steps`` steps of the code optimizer on
  each code subproblem, top-down (eqs. 4-5, :func:`altmin_jax.am.codes.update_codes`);
  then take ``weight_steps`` steps of each layer's persistent optimizer on its own
  subproblem, the loss for the output layer and eq. (6) for hidden layers
  (:func:`altmin_jax.am.weights.update_weights`). Layers never exchange gradients.

  Args:
    net: a :class:`~altmin_jax.networks.LayeredNetwork` with at least one hidden layer.
    loss: per-sample loss ``loss(logits, labels) -> (batch,)``.
    weight_optimizer: optax optimizer used for every layer (each keeps its own
      state), or one per stage; default ``optax.adam(1e-3)``. With one small code step,
      the hidden layers' weight gradients are backprop's scaled down layer by layer (by
      about ``2 code_lr ||W above||`` each), so an Adam with its default epsilon 1e-8
      damps the lowest layers' steps (README, "In deep nets").
    output_optimizer: optional optimizer for the output layer only.
    weight_steps: ``K_w >= 1`` optimizer steps per layer and minibatch.
    code_steps, code_lr, code_optimizer, mu, code_proximal: the code-step options
      (:class:`~altmin_jax.am.CodeStepOptions`).
    record_codes: ``None`` (default) or a batch size ``B``: keep the updated codes of the
      last batch in ``state.codes`` for inspection and checkpoints (every batch must then
      hold ``B`` samples).
    weight_inputs: what each hidden and output layer's weight subproblem takes as input:
      ``"codes"`` (default, eq. 6: the activation of the *updated* code below) or
      ``"forward"`` (the activation of the code below as the encoding pass computed it;
      the targets are the updated codes either way). After one SGD code step, eq. 6 fits
      layer ``l``, to first order, to :math:`-(I - 2\,\mathrm{code\_lr}\,J J^\top) r`
      (:math:`r` the change of code ``l``, :math:`J` the Jacobian of :math:`f_l` at the
      code below), ``"forward"`` to :math:`-r`, backprop's direction. On LeNet-5 /
      Fashion-MNIST eq. 6's inputs let the first dense layer's norm grow to 8x Adam's and
      cost 0.6 point of validation accuracy; ``"forward"`` in float64 with a tiny Adam
      epsilon is level with Adam (docs/results.md).

  Real hyperparameters (``mu``, ``code_lr``) can be injected with
  ``optax.inject_hyperparams``; list ``net``, ``loss`` and the integer and string ones in
  its ``static_args``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(grads, state, params,
    *, batch=(x, y))`` returns ``new_params - params``; ``grads`` is ignored.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import altmin_jax as amj
    >>> net = amj.networks.mlp([4, 8, 3])
    >>> params = net.init(jax.random.key(0))
    >>> tx = amj.am_adam(net, code_steps=2, weight_optimizer=optax.adam(1e-2))
    >>> state = tx.init(params)
    >>> x, y = jnp.ones((5, 4)), jnp.array([0, 1, 2, 0, 1])
    >>> updates, state = tx.update(None, state, params, batch=(x, y))
    >>> params = optax.apply_updates(params, updates)
    >>> int(state.count)
    1
  """
  weights = gradient_rule(net, weight_optimizer, output_optimizer, weight_steps, weight_inputs)
  codes = CodeStepOptions.from_arguments(locals())
  return _online(am_config(net, loss, codes, weights), record_codes)


@documented(CodeStepOptions)
def am_mem(
  net: LayeredNetwork,
  loss: Loss = losses_lib.softmax_cross_entropy,
  *,
  output_optimizer: optax.GradientTransformation | None = None,
  output_steps: int = 1,
  sweeps: int = 1,
  solver: str = "bcd",
  forgetting: float = 1.0,
  ridge: float = 1e-6,
  code_steps: int = CodeStepOptions.code_steps,
  code_lr: float | None = CodeStepOptions.code_lr,
  code_optimizer: str | optax.GradientTransformation = CodeStepOptions.code_optimizer,
  mu: ScalarOrSchedule = CodeStepOptions.mu,
  code_proximal: bool = CodeStepOptions.code_proximal,
  record_codes: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Online alternating minimization with co-activation memory (AM-mem).

  Codes are updated as in :func:`am_adam`. Each dense hidden layer then accumulates its
  co-activation memories ``A^l, B^l`` over every sample seen (Algorithm 2.3,
  ``updateMemory``) and moves ``W^l`` towards the minimiser of the memory surrogate
  (eq. 7), the least-squares fit to every code seen so far: by ``sweeps``
  block-coordinate sweeps started from the current weights (one sweep by default, as
  the paper makes the number of sweeps a hyperparameter), or exactly with
  ``solver="exact"`` (formulas in :mod:`altmin_jax.am.weights`). The output layer takes
  ``output_steps`` steps of ``output_optimizer`` (one SGD step in Algorithm 2.3, line 1).

  Args:
    net: a layered network whose hidden stages are dense.
    loss: per-sample loss ``loss(logits, labels) -> (batch,)``.
    output_optimizer: optimizer of the output layer; default ``optax.sgd(0.1)`` (the
      paper uses SGD).
    output_steps: optimizer steps of the output layer per minibatch (``K_w``).
    sweeps: block-coordinate sweeps per minibatch.
    solver: ``"bcd"`` (block-coordinate descent) or ``"exact"`` (least squares).
    forgetting: ``beta`` in ``[0, 1]``; 1 keeps the whole history, 0 fits every layer to
      the current batch only.
    ridge: Tikhonov term of the exact solve, relative to ``Tr(A) / d``; 0 selects the
      minimum-norm least-squares solution (both solved through an eigendecomposition of
      ``A`` that drops directions below float rounding,
      :func:`~altmin_jax.am.weights.exact_solve`).
    code_steps, code_lr, code_optimizer, mu, code_proximal: the code-step options
      (:class:`~altmin_jax.am.CodeStepOptions`).
    record_codes: as in :func:`am_adam`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (``update(grads, state, params, *,
    batch=(x, y))``); the memories are ``state.memory``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import altmin_jax as amj
    >>> net = amj.networks.mlp([4, 8, 3])
    >>> tx = amj.am_mem(net, solver="exact")
    >>> params = net.init(jax.random.key(0))
    >>> batch = (jnp.ones((5, 4)), jnp.array([0, 1, 2, 0, 1]))
    >>> _, state = tx.update(None, tx.init(params), params, batch=batch)
    >>> state.memory[0].B.shape
    (8, 5)
  """
  weights = memory_rule(net, output_optimizer, output_steps, sweeps, solver, forgetting, ridge)
  codes = CodeStepOptions.from_arguments(locals())
  return _online(am_config(net, loss, codes, weights), record_codes)
