r"""The offline ADMM baseline of Taylor et al. (2016), "Training Neural Networks Without
Gradients: A Scalable ADMM Approach", ICML 2016 (Algorithm 1), the comparison method of
the AM paper's fully connected experiments.

With activations ``a_l``, pre-activations ``z_l`` for every training sample and a Lagrange
multiplier ``lambda`` on the output constraint only (a Bregman iteration), the problem

.. math::
   \min\ \ell(z_L, y) + \langle z_L, \lambda\rangle + \beta \|z_L - W_L a_{L-1}\|^2
     + \sum_{l<L} \gamma \|a_l - h(z_l)\|^2 + \beta \|z_l - W_l a_{l-1}\|^2

is minimised block by block, each block in closed form (one iteration = one pass):

.. math::
   W_l &\leftarrow z_l\, a_{l-1}^{\dagger}                      &\text{(least squares)}\\
   a_l &\leftarrow (\beta W_{l+1}^\top W_{l+1} + \gamma I)^{-1}
          (\beta W_{l+1}^\top z_{l+1} + \gamma\, h(z_l))        \\
   z_l &\leftarrow \arg\min_z \gamma\|a_l - h(z)\|^2 + \beta\|z - W_l a_{l-1}\|^2
                                                               &\text{(elementwise)}\\
   z_L &\leftarrow \arg\min_z \ell(z, y) + \langle z, \lambda\rangle + \beta\|z - W_L a_{L-1}\|^2\\
   \lambda &\leftarrow \lambda + \beta (z_L - W_L a_{L-1})     &\text{(after the warm start)}

``beta`` and ``gamma`` are the AM paper's ``gamma_prod`` and ``gamma_nonlin`` (Table 1).
Biases are handled by augmenting ``a`` with a constant 1. Scaling: every term is a *sum*
over the ``n`` training samples (the loss included), so ``beta`` and ``gamma`` weigh each
sample's squared constraint violation against that sample's cross-entropy, as in
Taylor et al.'s formulation; with these units the AM paper's MNIST constants (beta 582.8,
gamma 54.15) leave the output multiplier moving so slowly that nothing is learnt in 50
iterations on 8,000 samples (docs/results.md), while beta 0.1, gamma 1 learns. ``h`` must
be ReLU or the identity (the elementwise ``z`` subproblem has a closed form for both); the output
subproblem with softmax cross-entropy has no closed form and is solved by gradient
descent with step ``1 / (2 beta + 1/2)`` (its curvature is at most ``2 beta + 1/2``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from altmin_jax import losses as losses_lib
from altmin_jax.am import weights as weights_lib
from altmin_jax.am._common import (
  check_dense,
  check_has_hidden_layer,
  prepare_sized,
  zero_codes,
)
from altmin_jax.core.checks import (
  check_int,
  check_loss,
  check_nonnegative,
  check_positive,
  is_traced,
)
from altmin_jax.core.states import checked_transformation
from altmin_jax.core.trees import cast_like, first_dtype
from altmin_jax.core.types import Array, Loss
from altmin_jax.networks import (
  LayeredNetwork,
  dense_kernel_bias,
  identity,
  stages,
  with_dense_kernel_bias,
)
from altmin_jax.networks.stages import batch_mean_loss

_HI = jax.lax.Precision.HIGHEST


class TaylorADMMState(NamedTuple):
  """Auxiliary variables of every training sample and the output multiplier."""

  count: Array  # int32, ADMM iterations done
  batch_loss: Array  # float32, training loss before the last iteration
  activations: tuple  # a_1..a_{L-1}, shapes (n, width)
  preactivations: tuple  # z_1..z_L, shapes (n, width); z_L are the output logits
  multiplier: Array  # lambda, shape (n, outputs)


def _relu_z_update(a, m, beta, gamma):
  """Elementwise ``argmin_z gamma (a - relu(z))^2 + beta (z - m)^2``."""
  positive = jnp.maximum((gamma * a + beta * m) / (gamma + beta), 0.0)
  negative = jnp.minimum(m, 0.0)
  cost = lambda z: gamma * jnp.square(a - jnp.maximum(z, 0.0)) + beta * jnp.square(z - m)
  return jnp.where(cost(positive) <= cost(negative), positive, negative)


def _identity_z_update(a, m, beta, gamma):
  return (gamma * a + beta * m) / (gamma + beta)


def _least_squares(inputs, targets, ridge):
  """``(kernel, bias)`` minimising ``||targets - inputs kernel - bias||^2`` over all rows,
  plus ``ridge * Tr(A) / d`` times the squared norm of ``[kernel; bias]``, from the Gram
  matrix ``A`` of the augmented inputs (``d`` columns): the AM-mem exact solve
  (:func:`altmin_jax.am.weights.exact_solve`) on the memories of the whole dataset. Its
  directions of ``A`` below the float rounding level are dropped, so collinear inputs
  (standardized MNIST background pixels vs the bias) give the minimum-norm solution
  ``targets inputs^+`` of Taylor et al. on the numerically significant part, not NaN."""
  zero = jnp.zeros((), jnp.promote_types(inputs.dtype, jnp.float32))
  A, B = weights_lib.update_memory(zero, zero, inputs, targets, True, 0.0)
  W = weights_lib.exact_solve(A, B, ridge)
  return W[:, :-1].T, W[:, -1]


def _z_updates(net: LayeredNetwork) -> list:
  """The elementwise ``z_l`` update of each hidden layer, from its activation."""
  updates = []
  for l in range(1, net.num_codes + 1):
    activation = net.activation(l)
    if activation is jax.nn.relu:
      updates.append(_relu_z_update)
    elif activation is identity:
      updates.append(_identity_z_update)
    else:
      raise ValueError(
        f"Taylor ADMM supports ReLU or identity activations; stage {l} uses "
        f"{getattr(activation, '__name__', activation)!r}"
      )
  return updates


def taylor_admm(
  net: LayeredNetwork,
  loss: Loss = losses_lib.softmax_cross_entropy,
  *,
  num_samples: int,
  beta: float = 1.0,
  gamma: float = 10.0,
  warm_start: int = 10,
  output_steps: int = 20,
  ridge: float = 1e-6,
) -> optax.GradientTransformationExtraArgs:
  r"""Taylor et al.'s ADMM on the full training set as one optax-style transformation.

  Each ``update(grads, state, params, *, batch=(X, Y))`` with all ``num_samples``
  training samples is one ADMM iteration (the block updates above, layers in order);
  the first iteration initialises ``a`` and ``z`` by a forward pass. The multiplier
  is updated only after ``warm_start`` iterations, as in the paper's warm start.

  Args:
    net: a layered network of dense stages whose hidden activations are
      ``jax.nn.relu`` or the identity.
    loss: per-sample loss of the output subproblem (softmax cross-entropy).
    num_samples: ``n``, the training-set size.
    beta: weight of the linear constraints (``gamma_prod``), > 0.
    gamma: weight of the nonlinear constraints (``gamma_nonlin``), > 0.
    warm_start: iterations (>= 0) before the multiplier starts moving.
    output_steps: gradient steps on the output subproblem per iteration.
    ridge: relative Tikhonov term (>= 0) of the least-squares weight solves, in units of
      ``Tr(A) / d`` for the Gram matrix ``A`` of a layer's ``d`` augmented inputs (as
      :func:`altmin_jax.am.weights.exact_solve`); directions of ``A`` below its float
      rounding level are dropped whatever ``ridge`` is (minimum-norm solution).

  ``beta``, ``gamma``, ``ridge`` and ``warm_start`` can be injected with
  ``optax.inject_hyperparams``; list ``net``, ``loss``, ``num_samples`` and
  ``output_steps`` in its ``static_args``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``grads`` are ignored.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import altmin_jax as amj
    >>> net = amj.networks.mlp([4, 6, 3], activation=jax.nn.relu)
    >>> tx = amj.am.taylor_admm(net, num_samples=8, warm_start=0)
    >>> params = net.init(jax.random.key(0))
    >>> batch = (jnp.ones((8, 4)), jnp.arange(8) % 3)
    >>> _, state = tx.update(None, tx.init(params), params, batch=batch)
    >>> state.multiplier.shape
    (8, 3)
  """
  net = check_has_hidden_layer(net)
  check_dense(net, net.num_stages, "Taylor ADMM needs dense layers")
  z_updates = _z_updates(net)
  loss = check_loss(loss)
  num_samples = check_int("num_samples", num_samples, 1)
  beta = check_positive("beta", beta)
  gamma = check_positive("gamma", gamma)
  # warm_start is compared with the count only, so it may be traced (injected).
  warm_start = warm_start if is_traced(warm_start) else check_int("warm_start", warm_start, 0)
  output_steps = check_int("output_steps", output_steps, 1)
  ridge = check_nonnegative("ridge", ridge)
  output_lr = 1.0 / (2.0 * beta + 0.5)
  size_rule = f"Taylor ADMM works on the full dataset of num_samples={num_samples} samples"

  def init_fn(params):
    dtype = first_dtype(net.stage_params(params))
    widths = [stage.output_shape for stage in net.stages]
    return TaylorADMMState(
      count=jnp.zeros([], jnp.int32),
      batch_loss=jnp.zeros([], jnp.float32),
      activations=zero_codes(widths[:-1], num_samples, dtype),
      preactivations=zero_codes(widths, num_samples, dtype),
      multiplier=jnp.zeros((num_samples, *widths[-1]), dtype),
    )

  def output_update(m, lam, y):
    def objective(z):
      return jnp.sum(loss(z, y)) + jnp.sum(z * lam) + beta * jnp.sum(jnp.square(z - m))

    grad = jax.grad(objective)
    return jax.lax.fori_loop(0, output_steps, lambda _, z: z - output_lr * grad(z), m)

  def update_fn(updates, state, params=None, *, batch, **extra_args):
    del updates, extra_args  # ADMM does not use gradients; unknown extra args are ignored.
    prep = prepare_sized(net, params, batch, "Taylor ADMM", loss, num_samples, size_rule)
    x, y, stage_params = prep.x, prep.y, list(prep.stage_params)  # at least float32
    codes, logits = net.forward_stages(stage_params, x)
    first = state.count == 0
    fresh_a = tuple(net.activation(l)(c) for l, c in enumerate(codes, start=1))
    a = [jnp.where(first, f, s) for f, s in zip(fresh_a, state.activations)]
    z = [jnp.where(first, f, s) for f, s in zip((*codes, logits), state.preactivations)]
    L = net.num_stages
    inputs = lambda l: x if l == 1 else a[l - 2]  # a_{l-1}, with a_0 = x
    for l in range(1, L + 1):
      kernel, bias = _least_squares(inputs(l), z[l - 1], ridge)
      stage_params[l - 1] = with_dense_kernel_bias(stage_params[l - 1], kernel, bias)
      m = jnp.matmul(inputs(l), kernel, precision=_HI) + bias
      if l < L:
        w_next, b_next = dense_kernel_bias(stage_params[l])
        b_next = jnp.zeros(w_next.shape[1], w_next.dtype) if b_next is None else b_next
        lhs = beta * jnp.matmul(w_next, w_next.T, precision=_HI) + gamma * jnp.eye(w_next.shape[0])
        h = net.activation(l)(z[l - 1])
        rhs = beta * jnp.matmul(z[l] - b_next, w_next.T, precision=_HI) + gamma * h
        a[l - 1] = jax.scipy.linalg.solve(lhs, rhs.T, assume_a="pos").T
        z[l - 1] = z_updates[l - 1](a[l - 1], m, beta, gamma)
      else:
        z[l - 1] = output_update(m, state.multiplier, y)
        moving = (state.count >= warm_start).astype(m.dtype)
        multiplier = state.multiplier + moving * beta * (z[l - 1] - m)
    new_state = TaylorADMMState(
      count=optax.safe_int32_increment(state.count),
      batch_loss=batch_mean_loss(loss, logits, y).astype(jnp.float32),
      activations=cast_like(a, state.activations),
      preactivations=cast_like(z, state.preactivations),
      multiplier=multiplier.astype(state.multiplier.dtype),
    )
    return stages.params_update(net, stage_params, prep.params), new_state

  return checked_transformation("Taylor ADMM", init_fn, update_fn)
