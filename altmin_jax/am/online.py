r"""Online alternating minimization: AM-Adam and AM-mem.

Choromanska, Cowen, Kumaravel, Luss, Rigotti, Rish et al., "Beyond Backprop: Online
Alternating Minimization with Auxiliary Variables", ICML 2019 (Algorithms 2.1-2.3).

One ``update`` on a minibatch ``(x, y)`` minimises the relaxed objective (eq. 3)

.. math::
   F(W, C) = \mathcal{L}(y, f_{L+1}(W^{L+1}, \sigma_L(c^L)))
     + \mu \sum_{l=1}^{L} \|c^l - f_l(W^l, \sigma_{l-1}(c^{l-1}))\|^2

by alternating: encode the codes with a forward pass, update them top-down
(eqs. 4-5, :mod:`altmin_jax.am.codes`), then update every layer's weights
independently from the fixed codes (eq. 6-7, :mod:`altmin_jax.am.weights`).
The transformation returns ``updates = new_params - params`` and ignores the
incoming gradients, which may be ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from altmin_jax import losses as losses_lib
from altmin_jax.am import codes as codes_lib
from altmin_jax.am import weights as weights_lib
from altmin_jax.networks import LayeredNetwork, as_arrays
from altmin_jax.schedules import as_schedule
from altmin_jax.core.checks import check_int, check_real

Array = jax.Array
Loss = Callable[[Array, Array], Array]
Optimizers = optax.GradientTransformation | Sequence[optax.GradientTransformation]


class AMState(NamedTuple):
  """State of online AM: step count, last batch loss, per-layer optimizer states,
  co-activation memories (AM-mem) and, when recorded, the last batch's codes."""

  count: Array  # int32 scalar, minibatches seen
  batch_loss: Array  # float32 scalar, mean loss of the last batch before its update
  weight_states: tuple  # one optax state per stage (EmptyState for memory layers)
  memory: tuple  # one CoactivationMemory per memory layer (empty for AM-Adam)
  codes: tuple  # with record_codes=B: the updated codes c^1..c^L of the last batch, else ()


# ------------------------------------------------------------ shared config


def check_network(net: Any) -> LayeredNetwork:
  if not isinstance(net, LayeredNetwork):
    raise ValueError(f"net must be an altmin_jax.networks.LayeredNetwork, got {net!r}")
  if net.num_codes < 1:
    raise ValueError(
      "alternating minimization needs a network with at least one hidden "
      f"layer, got {net.num_stages} stage(s)"
    )
  return net


def check_optimizer(name: str, tx: Any) -> optax.GradientTransformation:
  if not isinstance(tx, optax.GradientTransformation):
    raise ValueError(f"{name} must be an optax.GradientTransformation, got {name}={tx!r}")
  return tx


def per_stage_optimizers(net: LayeredNetwork, weight_optimizer, output_optimizer) -> tuple:
  """One optimizer per stage from a single optimizer or a sequence, output override."""
  if weight_optimizer is None:
    weight_optimizer = optax.adam(1e-3)
  if isinstance(weight_optimizer, optax.GradientTransformation):
    txs = [weight_optimizer] * net.num_stages
  elif isinstance(weight_optimizer, Sequence) and not isinstance(weight_optimizer, str):
    txs = list(weight_optimizer)
    if len(txs) != net.num_stages:
      raise ValueError(f"weight_optimizer has {len(txs)} entries for {net.num_stages} stages")
  else:
    raise ValueError(
      "weight_optimizer must be an optax.GradientTransformation or one per "
      f"stage, got weight_optimizer={weight_optimizer!r}"
    )
  if output_optimizer is not None:
    txs[-1] = output_optimizer
  return tuple(check_optimizer("weight_optimizer", tx) for tx in txs)


def unpack_batch(net: LayeredNetwork, batch: Any) -> tuple[Array, Array]:
  """Validates ``batch=(x, y)`` against the network before anything is traced."""
  if not isinstance(batch, (tuple, list)) or len(batch) != 2:
    raise ValueError(f"batch must be a pair (x, y), got {type(batch).__name__}")
  x, y = (jnp.asarray(b) for b in batch)
  net.check_input(x, "batch x")
  losses_lib.check_labels(y, x.shape[0], math.prod(net.output_shape))
  return x, y


class AMConfig(NamedTuple):
  """Static configuration shared by the online and offline AM transformations."""

  net: LayeredNetwork
  loss: Loss
  schedule: optax.Schedule
  code_tx: optax.GradientTransformation
  code_steps: int
  code_proximal: bool
  weights: weights_lib.WeightRule


def make_config(
  net,
  loss,
  weights: weights_lib.WeightRule,
  *,
  mu,
  code_steps,
  code_lr,
  code_optimizer,
  code_proximal,
) -> AMConfig:
  """Validates the code-step hyperparameters and bundles the static configuration."""
  net = check_network(net)
  if not callable(loss):
    raise ValueError(f"loss must be callable loss(logits, labels) -> (batch,), got {loss!r}")
  return AMConfig(
    net=net,
    loss=loss,
    schedule=as_schedule(mu, "mu"),
    code_tx=codes_lib.make_code_optimizer(code_optimizer, code_lr),
    code_steps=check_int("code_steps", code_steps, 0),
    code_proximal=bool(code_proximal),
    weights=weights,
  )


def am_iteration(
  cfg: AMConfig, stage_params, x, y, start_codes, anchors, logits, weight_states, memory, count
):
  """One AM iteration from given starting codes: code updates, then weight updates.

  Returns ``(new_stage_params, new_codes, new_weight_states, new_memory, batch_loss)``.
  """
  mu = cfg.schedule(count)
  batch_loss = jnp.mean(cfg.loss(logits, y)).astype(jnp.float32)
  new_codes = codes_lib.update_codes(
    cfg.net,
    stage_params,
    y,
    start_codes,
    anchors,
    loss=cfg.loss,
    mu=mu,
    tx=cfg.code_tx,
    steps=cfg.code_steps,
    proximal=cfg.code_proximal,
  )
  new_params, weight_states, memory = weights_lib.update_weights(
    cfg.weights, cfg.net, stage_params, x, y, new_codes, weight_states, memory, loss=cfg.loss, mu=mu
  )
  return new_params, new_codes, weight_states, memory, batch_loss


def like(values, stored):
  """``values`` cast to the dtypes of ``stored`` (a state must keep its dtypes between
  steps: float32 inputs with bfloat16 params would otherwise promote stored codes)."""
  return tuple(v.astype(s.dtype) for v, s in zip(values, stored))


def params_difference(new_params, params):
  return jax.tree.map(lambda n, p: (n - p).astype(p.dtype), new_params, params)


def _online(cfg: AMConfig, record_codes: int | None) -> optax.GradientTransformationExtraArgs:
  net = cfg.net
  if record_codes is not None:
    check_int("record_codes", record_codes, 1)

  def init_fn(params):
    stage_params = net.stage_params(params)
    weight_states, memory = weights_lib.init_weights_state(cfg.weights, net, stage_params)
    dtype = jax.tree.leaves(stage_params)[0].dtype
    codes = (
      ()
      if record_codes is None
      else tuple(jnp.zeros((record_codes, *shape), dtype) for shape in net.code_shapes)
    )
    return AMState(
      count=jnp.zeros([], jnp.int32),
      batch_loss=jnp.zeros([], jnp.float32),
      weight_states=weight_states,
      memory=memory,
      codes=codes,
    )

  def update_fn(updates, state, params=None, *, batch, **extra_args):
    del updates, extra_args  # AM does not use gradients; unknown extra args are ignored.
    if params is None:
      raise ValueError(
        "alternating minimization needs params: call update(grads, state, params, batch=(x, y))"
      )
    x, y = unpack_batch(net, batch)
    if record_codes is not None and x.shape[0] != record_codes:
      raise ValueError(
        f"record_codes={record_codes} keeps the codes of batches of that size, "
        f"got a batch of {x.shape[0]}"
      )
    params = as_arrays(params)
    stage_params = net.stage_params(params)
    codes, logits = net.forward_stages(stage_params, x)
    new_stage_params, new_codes, weight_states, memory, batch_loss = am_iteration(
      cfg, stage_params, x, y, codes, codes, logits, state.weight_states, state.memory, state.count
    )
    new_params = net.merge_stage_params(new_stage_params, params)
    new_state = AMState(
      count=optax.safe_int32_increment(state.count),
      batch_loss=batch_loss,
      weight_states=weight_states,
      memory=memory,
      codes=like(new_codes, state.codes),
    )
    return params_difference(new_params, params), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def am_adam(
  net: LayeredNetwork,
  loss: Loss = losses_lib.softmax_cross_entropy,
  *,
  weight_optimizer: Optimizers | None = None,
  output_optimizer: optax.GradientTransformation | None = None,
  weight_steps: int = 1,
  code_steps: int = 5,
  code_lr: float | None = 0.01,
  code_optimizer: str | optax.GradientTransformation = "sgd",
  mu: float | optax.Schedule = 0.01,
  code_proximal: bool = True,
  record_codes: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Online alternating minimization with a gradient optimizer per layer (AM-Adam).

  Per minibatch: encode ``c^l = f_l(W^l, \sigma_{l-1}(c^{l-1}))``; update the codes
  top-down with ``code_steps`` steps of the code optimizer on eq. (4) for ``c^L``
  and eq. (5) for ``c^l``, ``l < L``; then take ``weight_steps`` steps of each
  layer's persistent optimizer on its own subproblem: the loss for the output
  layer, ``\mu \|c^l - f_l(W, \sigma_{l-1}(c^{l-1}))\|^2`` (eq. 6) for hidden layers.
  Layers never exchange gradients.

  Args:
    net: a :class:`~altmin_jax.networks.LayeredNetwork` with at least one hidden layer.
    loss: per-sample loss ``loss(logits, labels) -> (batch,)``.
    weight_optimizer: optax optimizer used for every layer (each keeps its own
      state), or one per stage; default ``optax.adam(1e-3)``.
    output_optimizer: optional optimizer for the output layer only.
    weight_steps: ``K_w >= 1`` optimizer steps per layer and minibatch.
    code_steps: ``K_c >= 0`` code-optimizer steps per code subproblem. Up to 8 steps are
      unrolled at trace time (faster on CPU, see :func:`altmin_jax.loops.repeat`), more
      run in a ``lax.fori_loop``; the results are the same.
    code_lr: code step size for the named code optimizers. The steps are taken on each
      subproblem *divided by* ``mu`` and summed over the batch (per-sample objectives,
      :mod:`altmin_jax.am.codes`): in the paper's scaling the top code moves by
      ``code_lr / mu`` times the loss gradient, and the hidden-code step does not
      depend on ``mu``. Code step sizes from implementations that average the code
      objectives (the authors' PyTorch code averages the top loss over the batch and the
      hidden terms over batch and units) correspond to step sizes here divided by the
      batch size (top code) or by batch size times code width (hidden codes).
    code_optimizer: ``"sgd"``, ``"nesterov"``, ``"adam"`` or an optax transformation.
    mu: penalty weight: a positive constant or a schedule of the step count
      (see :func:`altmin_jax.mu_schedule`).
    code_proximal: keep the ``\mu \|c - c_{\rm init}\|^2`` terms of eqs. (4)-(5).
    record_codes: ``None`` (default) or a batch size ``B``: keep the updated codes of the
      last batch in ``state.codes`` for inspection and checkpoints (every batch must then
      hold ``B`` samples). Online codes are otherwise recomputed from each batch and are
      not state.

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
  return _online(cfg, record_codes)


def gradient_rule(
  net: LayeredNetwork, weight_optimizer, output_optimizer, weight_steps: int
) -> weights_lib.WeightRule:
  """The weight rule of AM-Adam: a persistent optimizer per layer, ``weight_steps`` steps."""
  return weights_lib.WeightRule(
    optimizers=per_stage_optimizers(check_network(net), weight_optimizer, output_optimizer),
    steps=check_int("weight_steps", weight_steps, 1),
  )


def memory_rule(
  net: LayeredNetwork, output_optimizer, *, output_steps=1, sweeps, solver, forgetting, ridge
) -> weights_lib.WeightRule:
  """The weight rule of AM-mem: memory layers for the hidden stages, an optimizer for
  the output stage."""
  net = check_network(net)
  for l, stage in enumerate(net.stages[:-1], start=1):
    if not stage.dense:
      raise ValueError(f"AM-mem needs dense hidden layers; stage {l} ({stage.name}) is not dense")
  if solver not in weights_lib.MEMORY_SOLVERS:
    raise ValueError(f"solver must be one of {weights_lib.MEMORY_SOLVERS}, got solver={solver!r}")
  forgetting = float(check_real("forgetting", forgetting, low=0.0, high=1.0))
  ridge = float(check_real("ridge", ridge, low=0.0))
  if output_optimizer is None:
    output_optimizer = optax.sgd(0.1)
  optimizers = (None,) * net.num_codes + (check_optimizer("output_optimizer", output_optimizer),)
  return weights_lib.WeightRule(
    optimizers=optimizers,
    steps=check_int("output_steps", output_steps, 1),
    sweeps=check_int("sweeps", sweeps, 1),
    solver=solver,
    forgetting=forgetting,
    ridge=ridge,
  )


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
  code_steps: int = 5,
  code_lr: float | None = 0.01,
  code_optimizer: str | optax.GradientTransformation = "sgd",
  mu: float | optax.Schedule = 0.01,
  code_proximal: bool = True,
  record_codes: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Online alternating minimization with co-activation memory (AM-mem).

  Codes are updated as in :func:`am_adam`. Each dense hidden layer then
  accumulates ``A^l \leftarrow \beta A^l + \sum_n a_n a_n^\top`` and
  ``B^l \leftarrow \beta B^l + \sum_n c^l_n a_n^\top`` with
  ``a = [\sigma_{l-1}(c^{l-1}); 1]`` (Algorithm 2.3, ``updateMemory``) and moves
  ``W^l`` towards ``\arg\min_W \mathrm{Tr}(W^\top W A^l) - 2\,\mathrm{Tr}(W^\top B^l)``
  (eq. 7), the least-squares fit to every code seen so far: by ``sweeps``
  block-coordinate sweeps ``w_j \leftarrow w_j + (b_j - W a_j)/A_{jj}`` started from the
  current weights (one sweep by default, as the paper makes the number of sweeps a
  hyperparameter), or exactly with ``solver="exact"``. The output layer takes
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
      minimum-norm least-squares solution (slower, SVD based).
    code_steps, code_lr, code_optimizer, mu, code_proximal, record_codes: as in
      :func:`am_adam`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (``update(grads, state, params, *,
    batch=(x, y))``); the memories are ``state.memory``.
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
  return _online(cfg, record_codes)
