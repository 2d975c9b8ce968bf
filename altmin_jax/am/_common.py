r"""What the AM family shares: validated configuration, the AM iteration on layered
networks, and the transformation that online and offline AM both build.

Choromanska et al., "Beyond Backprop: Online Alternating Minimization with Auxiliary
Variables", ICML 2019. On a minibatch ``(x, y)`` AM minimises the relaxed objective
(eq. 3)

.. math::
   F(W, C) = \mathcal{L}(y, f_{L+1}(W^{L+1}, \sigma_L(c^L)))
     + \mu \sum_{l=1}^{L} \|c^l - f_l(W^l, \sigma_{l-1}(c^{l-1}))\|^2

by alternating (:func:`am_iteration`): the codes move top-down with the weights fixed
(eqs. 4-5, :func:`altmin_jax.am.codes.update_codes`), then every layer's weights move
independently with the codes fixed (eqs. 6-7, :func:`altmin_jax.am.weights.update_weights`).

The hyperparameters the methods share are validated here, with the core checks
(:mod:`altmin_jax.core.checks`): the code-step options as one object,
:class:`CodeStepOptions`, the weight rules by :func:`gradient_rule` and
:func:`memory_rule`. Real-valued ones (``mu``, ``code_lr``, ``forgetting``, ``ridge``) may
be traced, as under ``optax.inject_hyperparams``; integers that set loop lengths or shapes
must be static.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import optax

from altmin_jax.am import codes as codes_lib
from altmin_jax.am import weights as weights_lib
from altmin_jax.core.checks import (
  check_choice,
  check_int,
  check_loss,
  check_nonnegative,
  check_optimizer,
  check_unit_interval,
)
from altmin_jax.core.options import options_from
from altmin_jax.core.states import checked_transformation
from altmin_jax.core.trees import (
  cast_like,
  cast_tree,
  compute_dtype,
  first_dtype,
  where_tree,
)
from altmin_jax.core.types import Loss, ScalarOrSchedule
from altmin_jax.networks import LayeredNetwork, stages
from altmin_jax.networks.stages import batch_mean_loss
from altmin_jax.schedules import as_schedule

# ------------------------------------------------------------------ checks


def check_has_hidden_layer(net: Any) -> LayeredNetwork:
  """``net`` when it is a :class:`~altmin_jax.networks.LayeredNetwork`
  (:func:`~altmin_jax.networks.stages.check_network`) with a hidden layer (a code)."""
  stages.check_network(net)
  if net.num_codes < 1:
    raise ValueError(
      "alternating minimization needs a network with at least one hidden "
      f"layer, got {net.num_stages} stage(s)"
    )
  return net


def check_dense(net: LayeredNetwork, num_stages: int, requirement: str) -> None:
  """Raises ``requirement`` naming the first stage among the first ``num_stages`` of
  ``net`` that is not dense."""
  for l, stage in enumerate(net.stages[:num_stages], start=1):
    if not stage.dense:
      raise ValueError(f"{requirement}; stage {l} ({stage.name}) is not dense")


def prepare_sized(
  net: LayeredNetwork,
  params: Any,
  batch: Any,
  method: str,
  loss: Loss,
  size: int | None,
  rule: str,
) -> stages.Prepared:
  """:func:`~altmin_jax.networks.stages.prepare` (the batch with ``loss``'s label rule, the
  params in compute precision), and with ``size`` a batch of exactly ``size`` samples
  (``rule`` says why, for the error message)."""
  prep = stages.prepare(net, params, batch, method, loss)
  if size is not None and prep.x.shape[0] != size:
    raise ValueError(f"{rule}, got a batch of {prep.x.shape[0]}")
  return prep


def in_compute_dtype(tree: Any) -> tuple[Any, Any]:
  """``(tree cast to its compute dtype, that dtype)``: at least float32
  (:func:`~altmin_jax.core.trees.compute_dtype`). AM computes its codes, weight steps
  and optimizer states in it, and the updates are cast back to the params' dtypes
  (low-precision params would otherwise break the optimizers: Adam's ``eps=1e-8`` is 0
  in float16, and its first step divides by zero)."""
  dtype = compute_dtype(tree)
  return cast_tree(tree, dtype), dtype


def zero_codes(shapes: Sequence[tuple], num_samples: int | None, dtype) -> tuple:
  """Zero arrays ``(num_samples, *shape)`` per shape; ``()`` without ``num_samples``."""
  if num_samples is None:
    return ()
  return tuple(jnp.zeros((num_samples, *shape), dtype) for shape in shapes)


# ------------------------------------------------------------ code options


@dataclasses.dataclass(frozen=True)
class CodeStepOptions:
  r"""How every AM method solves its code subproblems (eqs. 4-5), validated when built.

  Every AM factory takes these fields as keywords, with these defaults, and builds the
  object with :meth:`from_arguments` (``optax.inject_hyperparams`` injects keyword
  arguments, so the factories keep them); ``mu`` and ``code_lr`` may be traced there.

  Attributes:
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
    code_optimizer: ``"sgd"``, ``"nesterov"`` (momentum 0.9), ``"adam"`` or an optax
      transformation (then ``code_lr=None``); chaining
      :func:`~altmin_jax.am.scale_by_model_minimizer` after it cuts each sample's step
      where a fixed step would overshoot its subproblem. Its state is reset for every
      subproblem.
    mu: penalty weight of eq. (3): a positive constant or a schedule of the step count
      (see :func:`altmin_jax.mu_schedule`).
    code_proximal: keep the ``\mu \|c - c_{\rm init}\|^2`` terms of eqs. (4)-(5).

  Derived when built: ``schedule`` (``mu`` as a function of the step count) and ``tx``
  (the code optimizer).

  Example:
    >>> import altmin_jax as amj
    >>> amj.am.CodeStepOptions(code_steps=2, mu=0.1).code_steps
    2
    >>> amj.am.CodeStepOptions(code_lr=-1.0)
    Traceback (most recent call last):
    ...
    ValueError: code_lr must be a finite number > 0, got code_lr=-1.0
  """

  code_steps: int = 5
  code_lr: float | None = 0.01
  code_optimizer: str | optax.GradientTransformation = "sgd"
  mu: ScalarOrSchedule = 0.01
  code_proximal: bool = True
  schedule: optax.Schedule = dataclasses.field(init=False, repr=False, compare=False)
  tx: optax.GradientTransformation = dataclasses.field(init=False, repr=False, compare=False)

  def __post_init__(self):
    derived = dict(
      schedule=as_schedule(self.mu, "mu"),
      tx=codes_lib.make_code_optimizer(self.code_optimizer, self.code_lr),
      code_steps=check_int("code_steps", self.code_steps, 0),
      code_proximal=bool(self.code_proximal),
    )
    for name, value in derived.items():
      object.__setattr__(self, name, value)

  @classmethod
  def from_arguments(cls, arguments: dict[str, Any]) -> CodeStepOptions:
    """The options among a factory's ``arguments`` (its ``locals()``; absent fields take
    their defaults)."""
    return options_from(cls, arguments)


# ---------------------------------------------------------- weight options


def optimizers_per_part(
  weight_optimizer: Any, output_optimizer: Any, count: int, what: str, default
) -> tuple:
  """One optimizer per part (stage, or RNN weight group) from ``weight_optimizer``, a
  single optimizer or a sequence of ``count``; ``output_optimizer`` replaces the last.

  ``default`` is used when ``weight_optimizer`` is ``None``; ``what`` names a part in
  error messages.
  """
  if weight_optimizer is None:
    weight_optimizer = default
  if isinstance(weight_optimizer, optax.GradientTransformation):
    txs = [weight_optimizer] * count
  elif isinstance(weight_optimizer, Sequence) and not isinstance(weight_optimizer, str):
    txs = [check_optimizer(f"weight_optimizer[{i}]", tx) for i, tx in enumerate(weight_optimizer)]
    if len(txs) != count:
      raise ValueError(
        f"weight_optimizer must hold one optimizer per {what} ({count}), got {len(txs)} entries"
      )
  else:
    raise ValueError(
      "weight_optimizer must be an optax.GradientTransformation or a sequence of one per "
      f"{what}, got weight_optimizer={weight_optimizer!r}"
    )
  if output_optimizer is not None:
    txs[-1] = check_optimizer("output_optimizer", output_optimizer)
  return tuple(txs)


WEIGHT_INPUTS = ("codes", "forward")


def gradient_rule(
  net: LayeredNetwork, weight_optimizer, output_optimizer, weight_steps: int, inputs="codes"
) -> weights_lib.WeightRule:
  """The weight rule of AM-Adam: a persistent optimizer per layer, ``weight_steps`` steps,
  on the inputs named by ``inputs`` (:data:`WEIGHT_INPUTS`)."""
  net = check_has_hidden_layer(net)
  optimizers = optimizers_per_part(
    weight_optimizer, output_optimizer, net.num_stages, "stage", optax.adam(1e-3)
  )
  return weights_lib.WeightRule(
    optimizers,
    steps=check_int("weight_steps", weight_steps, 1),
    inputs=check_choice("weight_inputs", inputs, WEIGHT_INPUTS),
  )


def memory_rule(
  net: LayeredNetwork, output_optimizer, output_steps, sweeps, solver, forgetting, ridge
) -> weights_lib.WeightRule:
  """The weight rule of AM-mem: memory layers for the (dense) hidden stages, an
  optimizer for the output stage (default ``optax.sgd(0.1)``)."""
  net = check_has_hidden_layer(net)
  check_dense(net, net.num_codes, "AM-mem needs dense hidden layers")
  if output_optimizer is None:
    output_optimizer = optax.sgd(0.1)
  optimizers = (None,) * net.num_codes + (check_optimizer("output_optimizer", output_optimizer),)
  return weights_lib.WeightRule(
    optimizers=optimizers,
    steps=check_int("output_steps", output_steps, 1),
    sweeps=check_int("sweeps", sweeps, 1),
    solver=check_choice("solver", solver, weights_lib.MEMORY_SOLVERS),
    forgetting=check_unit_interval("forgetting", forgetting, closed_right=True),
    ridge=check_nonnegative("ridge", ridge),
  )


# ----------------------------------------------------------- AM iteration


class AMConfig(NamedTuple):
  """Configuration of online and offline AM on a layered network (see :func:`am_config`)."""

  net: LayeredNetwork
  loss: Loss
  codes: CodeStepOptions
  weights: weights_lib.WeightRule


def am_config(
  net: Any, loss: Any, codes: CodeStepOptions, weights: weights_lib.WeightRule
) -> AMConfig:
  """The validated :class:`AMConfig`."""
  return AMConfig(check_has_hidden_layer(net), check_loss(loss), codes, weights)


def am_iteration(
  cfg: AMConfig, stage_params, x, y, start_codes, anchors, logits, weight_states, memory, count
):
  """One AM iteration on eq. (3) from given starting codes: the code updates (eqs. 4-5)
  with proximal ``anchors``, then the weight updates (eqs. 6-7) on the new codes (each
  layer's input: the new code below, or the starting one with ``weight_inputs="forward"``).

  Returns ``(new_stage_params, new_codes, new_weight_states, new_memory, batch_loss)``.
  """
  mu = cfg.codes.schedule(count)
  new_codes = codes_lib.update_codes(
    cfg.net,
    stage_params,
    y,
    start_codes,
    anchors,
    loss=cfg.loss,
    mu=mu,
    tx=cfg.codes.tx,
    steps=cfg.codes.code_steps,
    proximal=cfg.codes.code_proximal,
  )
  new_params, weight_states, memory = weights_lib.update_weights(
    cfg.weights,
    cfg.net,
    stage_params,
    x,
    y,
    new_codes,
    weight_states,
    memory,
    loss=cfg.loss,
    mu=mu,
    input_codes=start_codes if cfg.weights.inputs == "forward" else None,
  )
  return (
    new_params,
    new_codes,
    weight_states,
    memory,
    batch_mean_loss(cfg.loss, logits, y).astype(jnp.float32),
  )


def layered_am(
  cfg: AMConfig, state_type: type, *, stored: int | None, resume: bool, size_rule: str
) -> optax.GradientTransformationExtraArgs:
  """The AM transformation on a layered network, one :func:`am_iteration` per update.

  Args:
    cfg: the configuration.
    state_type: the state NamedTuple (fields ``count, batch_loss, weight_states,
      memory, codes``).
    stored: ``None``, or the batch size ``n`` of every update, whose updated codes are
      kept in ``state.codes`` (shapes ``(n, *code_shape)``).
    resume: start every iteration after the first from the stored codes, with anchors
      ``f_l(W^l, sigma_{l-1}(c^{l-1}))`` recomputed from them (offline AM); otherwise
      the codes are encoded afresh from each batch (online AM).
    size_rule: why a batch must hold ``stored`` samples (error message).
  """
  net = cfg.net

  def init_fn(params):
    stage_params = net.stage_params(params)
    compute_params, _ = in_compute_dtype(stage_params)  # optimizer states in that dtype
    weight_states, memory = weights_lib.init_weights_state(cfg.weights, net, compute_params)
    return state_type(
      count=jnp.zeros([], jnp.int32),
      batch_loss=jnp.zeros([], jnp.float32),
      weight_states=weight_states,
      memory=memory,
      codes=zero_codes(net.code_shapes, stored, first_dtype(stage_params)),
    )

  def update_fn(updates, state, params=None, *, batch, **extra_args):
    del updates, extra_args  # AM does not use gradients; unknown extra args are ignored.
    prep = prepare_sized(
      net, params, batch, "alternating minimization", cfg.loss, stored, size_rule
    )
    x, y, stage_params, dtype = prep.x, prep.y, prep.stage_params, prep.dtype
    encoded, logits = net.forward_stages(stage_params, x)
    if resume:
      start = where_tree(state.count > 0, cast_tree(state.codes, dtype), encoded)
      anchors = codes_lib.encode_anchors(net, stage_params, x, start)
    else:
      start = anchors = encoded
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
    new_state = state_type(
      count=optax.safe_int32_increment(state.count),
      batch_loss=batch_loss,
      weight_states=weight_states,
      memory=memory,
      codes=cast_like(new_codes, state.codes),
    )
    # in the params' dtypes
    return stages.params_update(net, new_stage_params, prep.params), new_state

  return checked_transformation("alternating minimization", init_fn, update_fn)
