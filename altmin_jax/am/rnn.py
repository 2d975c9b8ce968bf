r"""Online alternating minimization for the Elman RNN (AM paper, supplement C.1).

The RNN of :class:`~altmin_jax.networks.ElmanRNN` is unfolded in time and every
time step's pre-activation ``c^t`` becomes a code (eq. 17); the output sequence ``z``
is a second code set that breaks the chain between the classifier and the recurrent
unit. With ``h^{t-1} = \tanh(c^{t-1})``, ``h^0 = 0``, the relaxed objective (eq. 3 for
this architecture, mean over the minibatch) is

.. math::
   F = \mathcal{L}(y, C\, \mathrm{ReLU}(z))
     + \mu \sum_{t=1}^{T} \|c^t - (U x^t + W h^{t-1} + b)\|^2
     + \mu \sum_{t=1}^{T} \|z^t - V \tanh(c^t)\|^2 .

One ``update`` on a batch ``(x, y)``:

1. **Encode**: a forward pass gives ``c^1..c^T`` and ``z``.
2. **Output codes** (eq. 4 analogue): ``K_c`` code-optimizer steps on
   ``\mathcal{L}(y, C\, \mathrm{ReLU}(z)) + \mu \|z - z_{\rm init}\|^2``.
3. **Recurrent codes, backwards in time** (eq. 5 analogue), ``t = T, \dots, 1`` in a
   ``lax.scan``, each with the already-updated ``c^{t+1}`` and ``z^t``:

   .. math::
      c^t \leftarrow \arg\min_c\ \mu \|z^t - V \tanh(c)\|^2
        + \mu \|c^{t+1} - (U x^{t+1} + W \tanh(c) + b)\|^2 + \mu \|c - c^t_{\rm init}\|^2

   (no ``c^{t+1}`` term at ``t = T``).
4. **Weights**, three independent subproblems, each ``K_w`` steps of its own persistent
   optax optimizer: the classifier ``C`` on the loss; the readout ``V`` on
   ``\mu \sum_t \|z^t - V \tanh(c^t)\|^2``; the shared ``U, W, b`` on
   ``\mu \sum_t \|c^t - (U x^t + W \tanh(c^{t-1}) + b)\|^2``, *one* regression over all
   time steps (their rows stacked), not a backprop-through-time problem.

As in :mod:`altmin_jax.am.codes`, each code subproblem is solved on the per-sample
objective divided by ``mu`` (summed over the batch), and weight objectives average
over the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from altmin_jax import losses as losses_lib
from altmin_jax.am._common import CodeStepOptions, in_compute_dtype, optimizers_per_part
from altmin_jax.am.codes import minimize, squared_norm, with_proximal
from altmin_jax.core.batches import require_params, unpack_batch
from altmin_jax.core.checks import check_instance, check_int, check_loss
from altmin_jax.core.options import documented
from altmin_jax.core.states import checked_transformation
from altmin_jax.core.trees import update_difference
from altmin_jax.core.types import Array, Loss, Optimizers, ScalarOrSchedule
from altmin_jax.loops import optimizer_steps
from altmin_jax.networks.rnn import ElmanRNN
from altmin_jax.networks.stages import batch_mean_loss

PARTS = ("recurrent", "readout", "classifier")


class RNNAMState(NamedTuple):
  """State of AM-Adam for Elman RNNs: step count, last batch loss, optimizer states."""

  count: Array  # int32 scalar, minibatches seen
  batch_loss: Array  # float32 scalar, mean loss of the last batch before its update
  weight_states: tuple  # optax states of the (recurrent, readout, classifier) subproblems


# ------------------------------------------------------------------ codes


def output_code_objective(
  rnn: ElmanRNN, classifier, y: Array, loss: Loss, anchor: Array, proximal: bool, mu
) -> Callable[[Array], Array]:
  """``L(y, C ReLU(z)) / mu + ||z - z_init||^2`` summed over the batch, a function of ``z``."""
  fit = lambda z: jnp.sum(loss(rnn.classify(classifier, z), y)) / mu
  return with_proximal(fit, anchor, proximal)


def time_step_objective(
  rnn: ElmanRNN,
  params,
  z_t: Array,
  anchor_t: Array,
  proximal: bool,
  c_next: Array | None = None,
  x_next: Array | None = None,
) -> Callable[[Array], Array]:
  """The subproblem of ``c^t`` divided by ``mu``, summed over the batch:
  ``||z^t - V tanh(c)||^2 + ||c^{t+1} - (U x^{t+1} + W tanh(c) + b)||^2 + ||c - c^t_init||^2``
  (the middle term only when ``c_next`` is given, i.e. ``t < T``)."""
  V = params["readout"]["V"]

  def fit(c):
    h = rnn.activation(c)
    value = squared_norm(z_t - h @ V)
    if c_next is not None:
      value = value + squared_norm(c_next - rnn.step_inputs(params["recurrent"], x_next, h))
    return value

  return with_proximal(fit, anchor_t, proximal)


def update_rnn_codes(
  rnn: ElmanRNN,
  params,
  x: Array,
  y: Array,
  codes: tuple[Array, Array],
  anchors: tuple[Array, Array],
  *,
  loss: Loss,
  mu,
  tx: optax.GradientTransformation,
  steps: int,
  proximal: bool = True,
) -> tuple[Array, Array]:
  """Output codes, then recurrent codes backwards in time (``lax.scan``, ``t = T..1``).

  Args:
    rnn: the network.
    params: its params.
    x: inputs ``(B, T, m)``.
    y: labels.
    codes: starting codes ``(c, z)``, shapes ``(B, T, d)`` and ``(B, T, m_out)``.
    anchors: the proximal centres ``(c_init, z_init)``; equal to ``codes`` online.
    loss: per-sample loss.
    mu: current penalty weight.
    tx: code optimizer (its state is reset for every subproblem).
    steps: ``K_c`` iterations per subproblem.
    proximal: keep the ``mu ||c - c_init||^2`` terms.

  Returns:
    The updated codes ``(c, z)``.
  """
  c0, z0 = codes
  c_anchor, z_anchor = anchors
  # Output codes: eq. (4) with the classifier of eq. (16) as the top layer.
  z = minimize(
    output_code_objective(rnn, params["classifier"], y, loss, z_anchor, proximal, mu), z0, tx, steps
  )
  # Recurrent codes, eq. (5) per time step with c^{t+1} as the code above (eq. 17).
  # t = T: only the output term (and the proximal term).
  last = minimize(
    time_step_objective(rnn, params, z[:, -1], c_anchor[:, -1], proximal), c0[:, -1], tx, steps
  )

  def backward_step(c_next, inputs):
    c0_t, anchor_t, z_t, x_next = inputs
    objective = time_step_objective(rnn, params, z_t, anchor_t, proximal, c_next, x_next)
    c_t = minimize(objective, c0_t, tx, steps)
    return c_t, c_t

  time_major = lambda a: jnp.swapaxes(a, 0, 1)
  xs = (
    time_major(c0[:, :-1]),
    time_major(c_anchor[:, :-1]),
    time_major(z[:, :-1]),
    time_major(x[:, 1:].astype(c0.dtype)),
  )
  _, earlier = jax.lax.scan(backward_step, last, xs, reverse=True)
  c = jnp.concatenate([time_major(earlier), last[:, None]], axis=1)
  return c, z


# ---------------------------------------------------------------- weights


def _gram(features: Array, targets: Array) -> tuple[Array, Array, Array]:
  """``F^T F``, ``F^T Y`` and ``||Y||^2`` of rows stacked over samples and time steps."""
  dtype = jnp.promote_types(features.dtype, jnp.float32)
  f = features.reshape(-1, features.shape[-1]).astype(dtype)
  y = targets.reshape(-1, targets.shape[-1]).astype(dtype)
  hi = jax.lax.Precision.HIGHEST
  return jnp.matmul(f.T, f, precision=hi), jnp.matmul(f.T, y, precision=hi), jnp.sum(y * y)


def _quadratic(theta: Array, gram, scale) -> Array:
  """``scale * ||Y - F theta||^2`` from the Gram statistics of ``(F, Y)``."""
  A, G, yy = gram
  theta = theta.astype(A.dtype)
  hi = jax.lax.Precision.HIGHEST
  return scale * (jnp.sum(theta * jnp.matmul(A, theta, precision=hi)) - 2 * jnp.sum(theta * G) + yy)


def recurrent_features(rnn: ElmanRNN, x: Array, codes: Array) -> Array:
  """Rows ``[x^t, tanh(c^{t-1}), 1]`` of the shared-weight regression, ``(B, T, m + d + 1)``."""
  h_prev = rnn.previous_states(codes)
  ones = jnp.ones((*codes.shape[:2], 1), codes.dtype)
  return jnp.concatenate([x.astype(codes.dtype), h_prev, ones], axis=-1)


def recurrent_objective(rnn: ElmanRNN, x: Array, codes: Array, mu) -> Callable:
  r"""``mu / B sum_{n,t} ||c^t_n - (U x^t_n + W tanh(c^{t-1}_n) + b)||^2``: one linear
  regression of the shared ``U, W, b`` over all ``B T`` (sample, time step) rows.

  With ``F`` the stacked rows ``[x^t, \tanh(c^{t-1}), 1]`` and ``Y`` the stacked codes,
  the objective is ``mu / B ||Y - F \Theta||^2`` with ``\Theta = [U; W; b]``; it is
  evaluated from the Gram statistics ``F^T F``, ``F^T Y`` (computed once per minibatch),
  so each of the ``K_w`` optimizer steps costs ``O((m + d)^2 d)``, not ``O(B T d^2)``.
  """
  gram = _gram(recurrent_features(rnn, x, codes), codes)
  scale = mu / codes.shape[0]

  def objective(recurrent):
    theta = jnp.concatenate([recurrent["U"], recurrent["W"], recurrent["b"][None]], axis=0)
    return _quadratic(theta, gram, scale)

  return objective


def readout_objective(rnn: ElmanRNN, codes: Array, z: Array, mu) -> Callable:
  """``mu / B sum_{n,t} ||z^t_n - V tanh(c^t_n)||^2`` (from Gram statistics, as above)."""
  gram = _gram(rnn.activation(codes), z)
  scale = mu / codes.shape[0]
  return lambda readout: _quadratic(readout["V"], gram, scale)


def classifier_objective(rnn: ElmanRNN, z: Array, y: Array, loss: Loss) -> Callable:
  """``1 / B sum_n L(y_n, C ReLU(z_n))``."""
  return lambda classifier: jnp.mean(loss(rnn.classify(classifier, z), y))


# ------------------------------------------------------------- transform


@documented(CodeStepOptions)
def am_adam_rnn(
  rnn: ElmanRNN,
  loss: Loss = losses_lib.softmax_cross_entropy,
  *,
  weight_optimizer: Optimizers | None = None,
  output_optimizer: optax.GradientTransformation | None = None,
  weight_steps: int = 5,
  code_steps: int = CodeStepOptions.code_steps,
  code_lr: float | None = CodeStepOptions.code_lr,
  code_optimizer: str | optax.GradientTransformation = CodeStepOptions.code_optimizer,
  mu: ScalarOrSchedule = CodeStepOptions.mu,
  code_proximal: bool = CodeStepOptions.code_proximal,
) -> optax.GradientTransformationExtraArgs:
  r"""Online alternating minimization (AM-Adam) for the Elman RNN of supplement C.1.

  Per minibatch, the steps of :mod:`altmin_jax.am.rnn`: encode ``c^t`` (eq. 17) and
  ``z^t`` (eq. 15); update ``z``, then the ``c^t`` backwards in time (eqs. 4-5 for this
  architecture, :func:`update_rnn_codes`); then take ``weight_steps`` steps of a
  persistent optimizer on each of three independent subproblems (eq. 6): the classifier
  ``C`` on the loss (:func:`classifier_objective`), the readout ``V``
  (:func:`readout_objective`) and the shared ``U, W, b`` as one regression over all
  time steps (:func:`recurrent_objective`).

  Args:
    rnn: an :class:`~altmin_jax.networks.ElmanRNN`.
    loss: per-sample loss ``loss(logits, labels) -> (batch,)``.
    weight_optimizer: optimizer of every part (each keeps its own state) or one per
      part ``(recurrent, readout, classifier)``; default ``optax.adam(5e-3)``, the
      paper's learning rate (supplement C.2).
    output_optimizer: optional optimizer for the classifier only.
    weight_steps: ``K_w >= 1`` steps per part and minibatch (paper: 5).
    code_steps, code_lr, code_optimizer, mu, code_proximal: the code-step options
      (:class:`~altmin_jax.am.CodeStepOptions`).

  The paper uses ``code_steps=5`` and starts ``mu`` from 0.01 (supplement C.2); it does
  not report a code step size: on sequential MNIST ``code_lr=0.003`` learned fastest of
  0.001-0.3 (``experiments/configs/rnn_mnist.py``).

  Real hyperparameters (``mu``, ``code_lr``) can be injected with
  ``optax.inject_hyperparams``; list ``rnn``, ``loss``, ``weight_steps`` and
  ``code_steps`` in its ``static_args``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(grads, state, params, *,
    batch=(x, y))`` (``x`` of shape ``(B, T, m)``) returns ``new_params - params``;
    ``grads`` is ignored and may be ``None``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import altmin_jax as amj
    >>> rnn = amj.networks.elman_rnn(4, seq_len=6, num_classes=3)
    >>> params = rnn.init(jax.random.key(0))
    >>> tx = amj.am.am_adam_rnn(rnn, code_steps=2, weight_steps=2)
    >>> state = tx.init(params)
    >>> x, y = jnp.ones((5, 6, 1)), jnp.array([0, 1, 2, 0, 1])
    >>> updates, state = tx.update(None, state, params, batch=(x, y))
    >>> params = optax.apply_updates(params, updates)
    >>> int(state.count)
    1
  """
  check_instance("rnn", rnn, ElmanRNN, "an altmin_jax.networks.ElmanRNN")
  loss = check_loss(loss)
  txs = optimizers_per_part(
    weight_optimizer, output_optimizer, 3, f"part {PARTS}", optax.adam(5e-3)
  )
  weight_steps = check_int("weight_steps", weight_steps, 1)
  codes = CodeStepOptions.from_arguments(locals())

  def init_fn(params):
    return RNNAMState(
      count=jnp.zeros([], jnp.int32),
      batch_loss=jnp.zeros([], jnp.float32),
      weight_states=tuple(  # in the compute dtype, at least float32
        tx.init(in_compute_dtype(params[part])[0]) for tx, part in zip(txs, PARTS)
      ),
    )

  def update_fn(updates, state, params=None, *, batch, **extra_args):
    del updates, extra_args  # AM does not use gradients; unknown extra args are ignored.
    user_params = require_params(params, "alternating minimization")
    x, y = unpack_batch(rnn, batch, loss)
    params, dtype = in_compute_dtype(dict(user_params))  # at least float32
    x = x.astype(dtype)
    mu_t = codes.schedule(state.count)
    start, logits = rnn.forward(params, x)
    c, z = update_rnn_codes(
      rnn,
      params,
      x,
      y,
      start,
      start,
      loss=loss,
      mu=mu_t,
      tx=codes.tx,
      steps=codes.code_steps,
      proximal=codes.code_proximal,
    )
    objectives = (  # eq. (6) for the shared U, W, b (eq. 17) and for V (eq. 15); eq. (16)
      recurrent_objective(rnn, x, c, mu_t),
      readout_objective(rnn, c, z, mu_t),
      classifier_objective(rnn, z, y, loss),
    )
    new_params, new_states = dict(params), []
    for part, objective, tx, s in zip(PARTS, objectives, txs, state.weight_states):
      new_params[part], s = optimizer_steps(objective, params[part], s, tx, weight_steps)
      new_states.append(s)
    new_state = RNNAMState(
      count=optax.safe_int32_increment(state.count),
      batch_loss=batch_mean_loss(loss, logits, y).astype(jnp.float32),
      weight_states=tuple(new_states),
    )
    return update_difference(new_params, dict(user_params)), new_state

  return checked_transformation("RNN alternating minimization", init_fn, update_fn)
