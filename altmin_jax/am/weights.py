r"""Weight subproblems of alternating minimization (Algorithm 2.3, ``updateWeights``).

With the codes fixed, the objective (eq. 3) splits into ``L + 1`` independent
layer-wise problems; no gradient flows between layers:

.. math::
   W^{L+1} &\leftarrow \arg\min_W\ \tfrac1B \textstyle\sum_n
      \mathcal{L}(y_n, f_{L+1}(W, \sigma_L(c_n^L))) \\
   W^l &\leftarrow \arg\min_W\ \tfrac{\mu}{B} \textstyle\sum_n
      \|c_n^l - f_l(W, \sigma_{l-1}(c_n^{l-1}))\|^2 \qquad (\text{eq. 6}, l = 1..L)

*AM-Adam* takes ``K_w`` steps of a persistent optax optimizer per layer.
*AM-mem* (dense layers) keeps co-activation memories (eq. 7),
``A^l \leftarrow \beta A^l + \sum_n a_n a_n^\top`` and
``B^l \leftarrow \beta B^l + \sum_n c_n a_n^\top`` with ``a = [\sigma(c^{l-1}); 1]``
(the bias by augmentation), and minimises
``\mathrm{Tr}(W^\top W A) - 2\,\mathrm{Tr}(W^\top B)`` by block-coordinate sweeps over
the columns of ``W`` (Mairal et al. 2009), ``w_j \leftarrow w_j + (b_j - W a_j) / A_{jj}``,
or exactly, ``W = B A^{-1}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from altmin_jax.core.types import Array, Loss
from altmin_jax.loops import optimizer_steps, repeat
from altmin_jax.networks import (
  LayeredNetwork,
  dense_kernel_bias,
  flatten_batch,
  with_dense_kernel_bias,
)


def layer_objective(
  net: LayeredNetwork,
  l: int,
  a_prev: Array,
  target: Array,
  *,
  loss: Loss,
  mu,
) -> Callable:
  """The layer-``l`` weight objective as a function of that layer's params.

  ``target`` is the updated code ``c^l`` for hidden layers and the labels for the
  output layer ``l = L + 1``; ``a_prev = sigma_{l-1}(c^{l-1})`` (``x`` for ``l = 1``).
  """
  if l == net.num_stages:
    return lambda w: jnp.mean(loss(net.stage_apply(l, w, a_prev), target))

  def objective(w):
    diff = target - net.stage_apply(l, w, a_prev)
    return mu * jnp.mean(jnp.sum(jnp.reshape(jnp.square(diff), (diff.shape[0], -1)), axis=-1))

  return objective


# ------------------------------------------------------------------ AM-mem


def augmented_input(a_prev: Array, use_bias: bool) -> Array:
  """``[flatten(a); 1]`` per sample (the bias column only when the layer has one)."""
  a = flatten_batch(a_prev)
  if use_bias:
    a = jnp.concatenate([a, jnp.ones((a.shape[0], 1), a.dtype)], axis=1)
  return a


def memory_shapes(fan_in: int, fan_out: int, use_bias: bool) -> tuple[tuple, tuple]:
  """Shapes of ``A`` ``(d, d)`` and ``B`` ``(fan_out, d)`` with ``d = fan_in (+1)``."""
  d = fan_in + int(use_bias)
  return (d, d), (fan_out, d)


def update_memory(
  A: Array, B: Array, a_prev: Array, code: Array, use_bias: bool, forgetting
) -> tuple[Array, Array]:
  """``A <- beta A + sum_n a_n a_n^T``, ``B <- beta B + sum_n c_n a_n^T`` (updateMemory)."""
  a = augmented_input(a_prev, use_bias).astype(A.dtype)
  c = flatten_batch(code).astype(B.dtype)
  hi = jax.lax.Precision.HIGHEST
  return (
    forgetting * A + jnp.matmul(a.T, a, precision=hi),
    forgetting * B + jnp.matmul(c.T, a, precision=hi),
  )


def weights_to_matrix(params) -> tuple[Array, bool]:
  """The augmented matrix ``[kernel^T, bias]`` of shape ``(fan_out, d)``."""
  kernel, bias = dense_kernel_bias(params)
  W = kernel.T
  if bias is not None:
    W = jnp.concatenate([W, bias[:, None]], axis=1)
  return W, bias is not None


def matrix_to_weights(W: Array, like):
  """Inverse of :func:`weights_to_matrix`, in the dtype of ``like``."""
  kernel, bias = dense_kernel_bias(like)
  if bias is not None:
    return with_dense_kernel_bias(
      like, W[:, :-1].T.astype(kernel.dtype), W[:, -1].astype(bias.dtype)
    )
  return with_dense_kernel_bias(like, W.T.astype(kernel.dtype), None)


BLOCK_SIZE = 16  # columns per block of the blocked sweep (a power of 2; see the sweep)


def _upper_triangular_inverses(T: Array) -> Array:
  """Inverses of a stack of upper-triangular ``(n, k, k)`` matrices, ``k`` a power of 2.

  Recursive doubling, as LAPACK's ``trtri``: the inverses of the diagonal blocks of size
  ``s`` give those of size ``2 s`` by
  ``[[T11, T12], [0, T22]]^{-1} = [[X11, -X11 T12 X22], [0, X22]]``, ``X = T^{-1}``;
  ``log2 k`` batched matrix products, no sequential loop over columns.
  """
  n, k, _ = T.shape
  hi = jax.lax.Precision.HIGHEST
  X = (1.0 / jnp.diagonal(T, axis1=1, axis2=2))[:, :, None, None]  # (n, k, 1, 1)
  s = 1
  while s < k:
    pairs = k // (2 * s)
    grid = T.reshape(n, pairs, 2, s, pairs, 2, s)[:, :, 0, :, :, 1, :]  # (n, p, s, p, s)
    T12 = jnp.moveaxis(jnp.diagonal(grid, axis1=1, axis2=3), -1, 1)  # (n, p, s, s)
    X11, X22 = X[:, 0::2], X[:, 1::2]
    X12 = -jnp.matmul(jnp.matmul(X11, T12, precision=hi), X22, precision=hi)
    X = jnp.concatenate(
      [
        jnp.concatenate([X11, X12], axis=-1),
        jnp.concatenate([jnp.zeros_like(X22), X22], axis=-1),
      ],
      axis=-2,
    )
    s *= 2
  return X.reshape(n, k, k)


def block_coordinate_sweeps(
  W: Array, A: Array, B: Array, sweeps: int, block_size: int = BLOCK_SIZE
) -> Array:
  r"""Block-coordinate descent on ``Tr(W^T W A) - 2 Tr(W^T B)`` over the columns of ``W``.

  One sweep visits the columns in order, each update
  ``w_j <- w_j + (b_j - W a_j) / A_jj`` the exact minimiser in ``w_j`` with the other
  columns fixed (a Gauss-Seidel sweep on ``W A = B``); columns with ``A_jj = 0`` (inputs
  never active) are left unchanged. ``A`` is symmetric (a co-activation memory).

  The sweep is computed ``block_size`` columns at a time, with the same result up to
  rounding: writing ``T_J = triu(A_JJ)`` for the diagonal block of the columns ``J``,
  the column updates inside ``J`` together are

  .. math:: W_J \leftarrow W_J + (B_J - W A_{:J})\, T_J^{-1},

  where ``W`` holds the already updated blocks before ``J``. The inverses of the
  ``T_J`` depend on ``A`` only and are formed once per call (``T_J`` gets a unit
  diagonal at dead columns, whose residual is zeroed). Their rounding errors grow with
  the block: on the nearly singular input-layer memory of Fashion-MNIST (pixels that are
  almost always background) blocks of 128 made AM-mem diverge within 30 minibatches,
  while blocks of 8, 16 and 32 and the column-at-a-time sweep stayed bounded; the default
  is 16 (a triangular solve instead of the inverse is stable but, as LAPACK's ``trsm``
  on XLA:CPU, about 70x slower than the product). A sweep is one ``W A`` product
  plus ``m d k`` multiply-adds in ``ceil(d / k)`` sequential steps, instead of ``d``
  dependent matrix-vector products.
  """
  if block_size < 1 or block_size & (block_size - 1):
    raise ValueError(f"block_size={block_size!r} must be a power of 2")
  d = A.shape[0]
  k = min(block_size, 1 << max(d - 1, 0).bit_length())
  nblocks = -(-d // k)
  pad = nblocks * k - d
  hi = jax.lax.Precision.HIGHEST
  live = jnp.diagonal(A) > 0
  unit = jnp.concatenate([jnp.where(live, 0.0, 1.0), jnp.ones((pad,), A.dtype)]).astype(A.dtype)
  padded = jnp.pad(A, ((0, pad), (0, pad))) + jnp.diag(unit)
  diagonal_blocks = jnp.stack(
    [padded[i * k : (i + 1) * k, i * k : (i + 1) * k] for i in range(nblocks)]
  )
  # Transposed: the row block V_J = W_J^T gets T_J^{-T} (B_J^T - A_{J:} V).
  steps = jnp.swapaxes(_upper_triangular_inverses(jnp.triu(diagonal_blocks)), 1, 2)
  bounds = [(i * k, min((i + 1) * k, d)) for i in range(nblocks)]
  Bt = B.T

  def sweep(_, W):
    V = W.T
    for i, (start, stop) in enumerate(bounds):
      residual = Bt[start:stop] - jnp.matmul(A[start:stop], V, precision=hi)
      residual = jnp.where(live[start:stop, None], residual, 0.0)
      size = stop - start
      V = V.at[start:stop].add(jnp.matmul(steps[i, :size, :size], residual, precision=hi))
    return V.T

  return repeat(sweep, W, 0, sweeps)


def exact_solve(A: Array, B: Array, ridge, live: Array | None = None) -> Array:
  """``W = B (A + lambda I)^{-1}``, the minimiser of the (regularised) memory surrogate,
  ``lambda = ridge * Tr(A) / d``, restricted to the numerically significant part of ``A``.

  ``A`` is a Gram matrix ``sum a a^T`` accumulated in the compute dtype, so it is off by
  rounding errors of order ``eps * ||A||`` (measured on bundled MNIST in float32: 5 to 8
  times that). When the inputs are collinear (the standardized MNIST pixels that are
  background in every image are copies of the bias column; ReLU units that never fire)
  this leaves ``A`` indefinite, a small ``lambda`` does not make it positive definite, and
  a Cholesky solve returns NaN (the default ``ridge = 1e-6`` on 300 or 1,000 bundled
  MNIST images). The solve therefore goes through the eigendecomposition
  ``A = V diag(e) V^T`` and drops the directions whose regularised eigenvalue
  ``e + lambda`` is not above ``sqrt(d) * eps * max |e|``, which is above that rounding
  level: with ``ridge = 0`` the minimum-norm least-squares solution ``B A^+`` (dead
  inputs get zero weight), with ``ridge > 0`` the Tikhonov solution on the kept
  directions. One rule for every ``ridge``, so ``ridge`` may be traced. This is also the
  weight solve of :func:`altmin_jax.am.taylor_admm`.

  Cost: one symmetric eigendecomposition of ``A`` plus two ``m x d x d`` products; on
  CPU about 8 times a Cholesky solve at ``d = 785`` (2.5 times faster than the SVD
  least squares used before for ``ridge = 0``).

  ``live`` (optional, boolean ``(d,)``, may be traced) marks the real rows and columns of
  a zero-padded ``A`` and ``B`` (a layer stacked into a pipeline at a common width): the
  solve is that of the real block alone. ``d`` counts the live entries, the padded
  diagonal is set to ``Tr(A) / d`` (at most the largest eigenvalue, so the cutoff is
  unchanged, and away from zero, so no padded direction is inverted near zero; ``B`` is
  zero there, so it contributes nothing) and the padded columns of ``W`` are zero.
  """
  hi = jax.lax.Precision.HIGHEST
  trace = jnp.trace(A)
  if live is None:
    d = A.shape[0]
  else:
    d = jnp.maximum(jnp.sum(live), 1).astype(A.dtype)
    A = A + jnp.diag(jnp.where(live, 0.0, trace / d).astype(A.dtype))
  eigenvalues, V = jnp.linalg.eigh(A)
  regularised = eigenvalues + ridge * trace / d
  cutoff = d**0.5 * jnp.finfo(A.dtype).eps * jnp.max(jnp.abs(eigenvalues))
  keep = regularised > cutoff
  inverse = jnp.where(keep, 1.0 / jnp.where(keep, regularised, 1.0), 0.0)
  BV = jnp.matmul(B.astype(A.dtype), V, precision=hi)
  W = jnp.matmul(BV * inverse, V.T, precision=hi)
  return W if live is None else jnp.where(live, W, 0.0)


# --------------------------------------------------------- all layers at once


class CoactivationMemory(NamedTuple):
  """AM-mem memory of one dense layer: ``A = sum a a^T`` and ``B = sum c a^T``."""

  A: Array
  B: Array


MEMORY_SOLVERS = ("bcd", "exact")


@dataclasses.dataclass(frozen=True)
class WeightRule:
  """Static configuration of the weight step of every layer.

  Attributes:
    optimizers: per stage, the optax optimizer of its gradient subproblem, or
      ``None`` for layers solved from co-activation memory.
    steps: ``K_w`` gradient iterations per minibatch.
    sweeps: block-coordinate sweeps per minibatch (memory layers).
    solver: ``"bcd"`` or ``"exact"`` (memory layers).
    forgetting: ``beta`` in ``A <- beta A + sum a a^T`` (memory layers).
    ridge: Tikhonov term of the exact solve relative to ``Tr(A) / d`` (memory layers).
    inputs: ``"codes"`` (eq. 6: each layer is fitted on the updated code below it) or
      ``"forward"`` (on the code below as the encoding pass computed it; see
      :func:`altmin_jax.am_adam`'s ``weight_inputs``).

  ``forgetting`` and ``ridge`` may be traced scalars (injected hyperparameters).
  """

  optimizers: tuple
  steps: int = 1
  sweeps: int = 1
  solver: str = "bcd"
  forgetting: Any = 1.0
  ridge: Any = 0.0
  inputs: str = "codes"

  def uses_memory(self, l: int) -> bool:
    return self.optimizers[l - 1] is None


def memory_step(
  rule: WeightRule, params, memory: CoactivationMemory, a_prev: Array, target: Array, live=None
) -> tuple[Any, CoactivationMemory]:
  """The AM-mem weight step of one dense layer: ``updateMemory`` with ``rule.forgetting``,
  then ``rule.sweeps`` block-coordinate sweeps from the current weights or, with
  ``rule.solver == "exact"``, :func:`exact_solve` (``live``: its mask of the real columns
  of a zero-padded layer). Returns ``(new_params, new_memory)``."""
  W, use_bias = weights_to_matrix(params)
  A, B = update_memory(memory.A, memory.B, a_prev, target, use_bias, rule.forgetting)
  if rule.solver == "exact":
    W = exact_solve(A, B, rule.ridge, live)
  else:
    W = block_coordinate_sweeps(W.astype(A.dtype), A, B, rule.sweeps)
  return matrix_to_weights(W, params), CoactivationMemory(A, B)


def init_weights_state(rule: WeightRule, net: LayeredNetwork, stage_params) -> tuple[tuple, tuple]:
  """Optimizer states (one per stage) and co-activation memories (one per memory layer)."""
  opt_states, memories = [], []
  for l, p in enumerate(stage_params, start=1):
    if rule.uses_memory(l):
      opt_states.append(optax.EmptyState())
      W, _ = weights_to_matrix(p)
      dtype = jnp.promote_types(W.dtype, jnp.float32)
      memories.append(
        CoactivationMemory(
          A=jnp.zeros((W.shape[1], W.shape[1]), dtype), B=jnp.zeros(W.shape, dtype)
        )
      )
    else:
      opt_states.append(rule.optimizers[l - 1].init(p))
  return tuple(opt_states), tuple(memories)


def update_weights(
  rule: WeightRule,
  net: LayeredNetwork,
  stage_params,
  x: Array,
  y: Array,
  codes,
  opt_states,
  memories,
  *,
  loss: Loss,
  mu,
  input_codes=None,
):
  """One ``updateWeights`` call: every layer independently from the fixed codes.

  Layer ``l`` fits ``codes[l-1]`` (the labels for the output layer) from the activation of
  ``input_codes[l-2]`` (``x`` for the first layer); ``input_codes`` defaults to ``codes``.

  Returns:
    ``(new_stage_params, new_opt_states, new_memories)``.
  """
  below = codes if input_codes is None else input_codes
  inputs = (x, *tuple(net.activation(l)(c) for l, c in enumerate(below, start=1)))
  targets = (*tuple(codes), y)
  new_params, new_states, new_memories = [], [], []
  memory_iter = iter(memories)
  for l, p in enumerate(stage_params, start=1):
    a_prev, target = inputs[l - 1], targets[l - 1]
    if rule.uses_memory(l):
      w, memory = memory_step(rule, p, next(memory_iter), a_prev, target)
      new_params.append(w)
      new_states.append(opt_states[l - 1])
      new_memories.append(memory)
    else:
      objective = layer_objective(net, l, a_prev, target, loss=loss, mu=mu)
      w, s = optimizer_steps(objective, p, opt_states[l - 1], rule.optimizers[l - 1], rule.steps)
      new_params.append(w)
      new_states.append(s)
  return tuple(new_params), tuple(new_states), tuple(new_memories)
