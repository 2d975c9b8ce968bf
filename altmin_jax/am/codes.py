r"""Code (auxiliary variable) subproblems of alternating minimization.

Choromanska et al. (2019), Algorithm 2.2. Given weights ``W`` and a minibatch, the
codes are first *encoded* by a forward pass, ``c^l = f_l(W^l, \sigma_{l-1}(c^{l-1}))``,
then updated top-down, each layer using the already-updated code above it:

.. math::
   c^L &\leftarrow \arg\min_c\ \mathcal{L}(y, f_{L+1}(W^{L+1}, \sigma_L(c)))
        + \mu \|c - f_L(W^L, \sigma_{L-1}(c^{L-1}))\|^2   &\text{(eq. 4)}\\
   c^l &\leftarrow \arg\min_c\ \mu \|c^{l+1} - f_{l+1}(W^{l+1}, \sigma_l(c))\|^2
        + \mu \|c - f_l(W^l, \sigma_{l-1}(c^{l-1}))\|^2   &\text{(eq. 5)}

Each subproblem is separable across samples. It is solved approximately by
``K_c`` steps of a code optimizer started at the current code, on the
per-sample objective divided by ``mu`` (summed over the batch). Dividing by
``mu > 0`` leaves every minimiser unchanged; it makes the code step size of the
hidden subproblems (5) independent of ``mu``, so that one ``code_lr`` stays valid
while the ``mu`` schedule grows by two orders of magnitude.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from altmin_jax.core.checks import check_positive
from altmin_jax.core.types import Array, Loss
from altmin_jax.loops import optimizer_steps
from altmin_jax.networks import LayeredNetwork

CODE_OPTIMIZERS = ("sgd", "nesterov", "adam")


def make_code_optimizer(
  code_optimizer: str | optax.GradientTransformation, code_lr
) -> optax.GradientTransformation:
  """The optimizer run on each code subproblem (state is reset per subproblem).

  Args:
    code_optimizer: ``"sgd"``, ``"nesterov"`` (momentum 0.9), ``"adam"`` or any optax
      transformation (then ``code_lr`` must be ``None``).
    code_lr: step size for the named optimizers, a finite number > 0 (may be traced).
  """
  if isinstance(code_optimizer, optax.GradientTransformation):
    if code_lr is not None:
      raise ValueError(
        f"code_lr={code_lr!r} conflicts with a code_optimizer transformation; set one of them"
      )
    return code_optimizer
  if not isinstance(code_optimizer, str) or code_optimizer not in CODE_OPTIMIZERS:
    raise ValueError(
      f"code_optimizer must be one of {CODE_OPTIMIZERS} or an optax "
      f"transformation, got code_optimizer={code_optimizer!r}"
    )
  if code_lr is None:
    raise ValueError(
      f"code_lr must be a finite number > 0 for code_optimizer={code_optimizer!r}, got code_lr=None"
    )
  code_lr = check_positive("code_lr", code_lr)
  if code_optimizer == "sgd":
    return optax.sgd(code_lr)
  if code_optimizer == "nesterov":
    return optax.sgd(code_lr, momentum=0.9, nesterov=True)
  return optax.adam(code_lr)


def scale_by_model_minimizer() -> optax.GradientTransformationExtraArgs:
  r"""Cuts each sample's code step where it would overshoot (chain it after an optimizer).

  A code subproblem's curvature grows with the weights above it: eq. (5)'s Hessian is
  :math:`2 (J^\top J + I)` with :math:`J` the Jacobian of the layer above, so a fixed step
  :math:`\eta` overshoots the subproblem's minimum once :math:`\eta \|J\|^2 > 1`, and
  then the layers fit codes that the step pushed away rather than towards it. Given the
  step :math:`u` of the optimizer before it in a chain, this transformation returns
  :math:`t\,u` per sample (leading axis), with

  .. math:: t = \min\Big(1,\ \frac{-g^\top u}{u^\top H u}\Big)

  where :math:`g` and :math:`H u` are the sample's gradient and Hessian-vector product
  (one forward-over-reverse pass): the minimiser of the objective's second-order model
  along :math:`u`, never longer than the optimizer's own step. Where the model has no
  positive curvature along :math:`u` the step is kept; an ascent step on a convex model
  becomes 0. The subproblems are separable across samples, so every sample (the leading
  axis of every leaf) is cut on its own. Needs ``value_fn`` (the objective), which
  :func:`altmin_jax.loops.optimizer_steps` passes.

  Use it as any AM factory's ``code_optimizer`` with ``code_lr=None``, e.g.
  ``optax.chain(optax.sgd(1 / 128), scale_by_model_minimizer())``. It costs one
  Hessian-vector product per code step (LeNet-5 with one code step: 26 s instead of 18 s
  per Fashion-MNIST epoch on one core).
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params, *, value_fn=None, **extra_args):
    del extra_args
    if value_fn is None:
      raise ValueError(
        "scale_by_model_minimizer needs the objective as value_fn= in update "
        "(altmin_jax.loops.optimizer_steps passes it)"
      )
    grad, hvp = jax.jvp(jax.grad(value_fn), (params,), (updates,))

    def per_sample(a, b):  # sum over every leaf and every axis but the leading one
      leaves = jax.tree.leaves(jax.tree.map(lambda p, q: p * q, a, b))
      return sum(jnp.sum(jnp.reshape(x, (x.shape[0], -1)), axis=-1) for x in leaves)

    slope, curvature = per_sample(grad, updates), per_sample(updates, hvp)
    ratio = -slope / jnp.where(curvature > 0, curvature, 1.0)
    t = jnp.where(curvature > 0, jnp.clip(ratio, 0.0, 1.0), 1.0)

    def cut(u):
      return u * jnp.reshape(t, (-1,) + (1,) * (u.ndim - 1)).astype(u.dtype)

    return jax.tree.map(cut, updates), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def minimize(
  objective: Callable[[Array], Array], start: Array, tx: optax.GradientTransformation, steps: int
) -> Array:
  """``steps`` iterations of ``tx`` on a scalar ``objective`` from ``start``.

  The optimizer state starts afresh for every subproblem. The first iteration always
  runs outside any loop, so that XLA can share its forward computation at ``start``
  with the encoding pass that produced ``start`` (see :func:`altmin_jax.loops.repeat`
  for the rest).
  """
  if steps == 0:
    return start
  first = optimizer_steps(objective, start, tx.init(start), tx, 1)
  c, _ = optimizer_steps(objective, *first, tx, steps - 1)
  return c


def squared_norm(diff: Array) -> Array:
  """``||diff||^2``, summed over every axis (the batch included)."""
  return jnp.sum(jnp.square(diff))


def with_proximal(term: Callable[[Array], Array], anchor: Array, proximal: bool) -> Callable:
  """``c -> term(c) + ||c - anchor||^2``, the proximal term ``mu ||c - c_init||^2`` of
  eqs. (4)-(5) divided by ``mu``; ``term`` alone when ``proximal`` is ``False``."""
  if not proximal:
    return term
  return lambda c: term(c) + squared_norm(c - anchor)


def top_code_objective(net, stage_params, y, loss: Loss, anchor, proximal: bool, mu):
  """Eq. (4) divided by ``mu``, summed over the batch, as a function of ``c^L``."""
  L = net.num_codes
  sigma = net.activation(L)
  fit = lambda c: jnp.sum(loss(net.stage_apply(L + 1, stage_params[L], sigma(c)), y)) / mu
  return with_proximal(fit, anchor, proximal)


def hidden_code_objective(net, stage_params, l, code_above, anchor, proximal: bool):
  """Eq. (5) divided by ``mu``, summed over the batch, as a function of ``c^l``."""
  sigma = net.activation(l)
  fit = lambda c: squared_norm(code_above - net.stage_apply(l + 1, stage_params[l], sigma(c)))
  return with_proximal(fit, anchor, proximal)


def encode_anchors(
  net: LayeredNetwork, stage_params: Sequence, x: Array, codes: Sequence[Array]
) -> tuple[Array, ...]:
  """``f_l(W^l, sigma_{l-1}(c^{l-1}))`` for ``l = 1..L`` from the given codes.

  For freshly encoded codes these equal the codes themselves (online AM); offline
  AM keeps codes between iterations, where they differ.
  """
  inputs = (x, *tuple(net.activation(l)(c) for l, c in enumerate(codes[:-1], start=1)))
  return tuple(net.stage_apply(l, stage_params[l - 1], a) for l, a in enumerate(inputs, start=1))


def update_codes(
  net: LayeredNetwork,
  stage_params: Sequence,
  y: Array,
  codes: Sequence[Array],
  anchors: Sequence[Array],
  *,
  loss: Loss,
  mu: Array,
  tx: optax.GradientTransformation,
  steps: int,
  proximal: bool = True,
) -> tuple[Array, ...]:
  """Top-down code updates (Algorithm 2.2, ``updateCodes``).

  Args:
    net: the layered network.
    stage_params: per-stage weights ``W^1..W^{L+1}``.
    y: labels of the batch.
    codes: starting codes ``c^1..c^L``.
    anchors: ``f_l(W^l, sigma_{l-1}(c^{l-1}))`` for the starting codes (see
      :func:`encode_anchors`); equal to ``codes`` right after encoding.
    loss: per-sample loss ``loss(logits, y) -> (batch,)``.
    mu: current penalty weight.
    tx: code optimizer (see :func:`make_code_optimizer`).
    steps: ``K_c``, iterations per subproblem.
    proximal: keep the ``mu ||c - anchor||^2`` term (``False`` drops it).

  Returns:
    Updated codes ``c^1..c^L``.
  """
  L = net.num_codes
  new = list(codes)
  for l in range(L, 0, -1):
    if l == L:
      objective = top_code_objective(net, stage_params, y, loss, anchors[l - 1], proximal, mu)
    else:
      objective = hidden_code_objective(net, stage_params, l, new[l], anchors[l - 1], proximal)
    new[l - 1] = minimize(objective, codes[l - 1], tx, steps)
  return tuple(new)
