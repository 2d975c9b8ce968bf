r"""The phases of a pipelined online AM step (:mod:`altmin_jax.am.pipelined`), each one
``jax.shard_map`` over the ``'stage'`` axis of a :class:`~altmin_jax.pipeline.gpipe.
Pipeline` (exposed for benchmarks and tests): the input codes (:func:`input_codes`, one
``ppermute``), the top-down code updates as a reverse GPipe pass (:func:`code_updates`,
eqs. 4-5) and every stacked layer's weight update where it lives (:func:`weight_updates`,
eqs. 6-7, no collective) under the weight rule of the configuration: a persistent optax
optimizer per layer (AM-Adam) or co-activation memories (AM-mem).

Zero padding changes nothing. Padded code entries start at zero, their gradients (zero
kernel rows and columns) and proximal terms vanish, and padded inputs are masked to zero;
so a gradient rule gives padded weights zero gradients (they stay zero under every optax
optimizer that maps a zero gradient with a zero state to a zero update), and a padded
layer's memories are those of the real layer bordered by zeros: ``A``'s padded rows and
columns and ``B``'s padded rows and columns are zero. The block-coordinate sweeps leave
a column with ``A_jj = 0`` unchanged, keep at zero a zero row of ``W`` whose row of ``B``
is zero, and visit the real columns in the real layer's order (the bias column,
augmented last, stays last); the exact solve is restricted to the real block (``live`` of
:func:`~altmin_jax.am.weights.exact_solve`, which also zeroes the padded columns of its
solution), so padded weights stay exactly zero.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from altmin_jax.am import codes as codes_lib
from altmin_jax.am import weights as weights_lib
from altmin_jax.am._common import AMConfig
from altmin_jax.core.types import Array
from altmin_jax.loops import optimizer_steps
from altmin_jax.networks import LayeredNetwork, identity
from altmin_jax.pipeline import gpipe
from altmin_jax.pipeline.layout import fit

# --------------------------------------------------------------- layer maths


def _code(theta: dict, a: Array) -> Array:
  """The pre-activation code ``c = a @ kernel + bias`` of a stacked dense layer."""
  c = a @ theta["kernel"]
  return c + theta["bias"] if "bias" in theta else c


def _input_activation(net: LayeredNetwork, pipe: gpipe.Pipeline) -> Callable:
  """``(c, layer, w_in) -> sigma(c)``: the activation of the stage below a stacked layer
  (traced ``layer``: the identity on the input, the first stage's below an outside
  boundary), the padded entries beyond the layer's real input width ``w_in`` zeroed."""
  lay = pipe.layout
  lowest = identity if lay.first == 0 else net.activation(lay.first)

  def apply(c, layer, w_in):
    a = lay.activation(c)
    if lowest is not lay.activation:
      a = jnp.where(layer == 0, lowest(c), a)
    return jnp.where(jnp.arange(c.shape[-1]) < w_in, a, jnp.zeros_like(a))

  return apply


def _layer_index(pipe: gpipe.Pipeline, k: int):
  """``(global stacked layer, is_last, w_in)`` of this device's local layer ``k``."""
  _, is_last, w_in, _, stage = pipe.local_flags(k)
  return stage - pipe.layout.first - 1, is_last, w_in


# ------------------------------------------------------------------- phases


def input_codes(pipe: gpipe.Pipeline, theta, zin, bottom, *, top: bool):
  """Phase 2: every stacked layer's input code ``c^{i-1}`` (``(L, M, b, in_width)``; the
  lowest layer's is ``bottom``, replicated) and, with ``top``, the top layer's output
  code ``(M, b, out_width)`` on every device."""
  lay, K, S = pipe.layout, pipe.layers_per_stage, pipe.num_stages

  def device(theta, zin, bottom):
    s = lax.axis_index(pipe.axis_name)
    outs = [_code(pipe.take(theta, k), zin[k]) for k in range(K)]
    below = pipe.shift(fit(outs[-1], lay.in_width), up=True)  # from device s - 1
    lowest = jnp.where(s == 0, bottom, below)
    cin = jnp.stack([lowest, *(fit(c, lay.in_width) for c in outs[:-1])])
    return cin, pipe.broadcast_from(outs[-1], S - 1) if top else None

  layer = P(pipe.axis_name)
  fn = pipe.shard_map(
    device,
    in_specs=(pipe.specs(theta, layer), layer, P()),
    out_specs=(layer, P() if top else None),
  )
  return fn(theta, zin, bottom)


def code_updates(pipe, cfg: AMConfig, theta, cin, carry_top, mu, *, bottom: bool):
  """Phase 3: the top-down code updates as a reverse GPipe pass.

  The carry entering a layer is ``(c^i updated, labels or None)``; layer ``i`` updates
  ``c^{i-1}`` (eq. 4 for the output layer, eq. 5 otherwise; the input layer has no code
  below) and passes it down. Returns ``((c^{i-1}, c^i) per layer (L, M, b, width),
  bottom)``: the updated codes entering and leaving every layer, and (``bottom``) the
  code below the lowest layer on every device.
  """
  lay, net, cs = pipe.layout, cfg.net, cfg.codes
  logits = lay.widths[-1]
  activation = _input_activation(net, pipe)
  pad = lay.boundary == "pad"

  def step(k, th, c_init, carry, mu):
    above, labels = carry
    layer, is_last, w_in = _layer_index(pipe, k)
    sigma = lambda c: activation(c, layer, w_in)

    def solve(term):
      objective = codes_lib.with_proximal(term, c_init, cs.code_proximal)
      return codes_lib.minimize(objective, c_init, cs.tx, cs.code_steps)

    # eq. (5) divided by mu: the updated code above against this layer's map of c
    hidden = lambda: solve(lambda c: codes_lib.squared_norm(above - _code(th, sigma(c))))
    if pad:
      # eq. (4) divided by mu (the output layer) and the input layer (x: nothing to update)
      top = lambda: solve(lambda c: jnp.sum(cfg.loss(_code(th, sigma(c))[:, :logits], labels)) / mu)
      branch = jnp.where(layer == 0, 0, jnp.where(is_last, 1, 2))
      new = lax.switch(branch, (lambda: c_init, top, hidden))
    else:
      new = hidden()
    return (new, above), None, (new, labels)

  b = cin.shape[2]
  like = lambda w: jax.ShapeDtypeStruct((b, w), cin.dtype)
  labels = carry_top[1]
  labels_like = None if labels is None else jax.ShapeDtypeStruct(labels.shape[1:], labels.dtype)
  stored, _, bot = pipe.reverse(
    step,
    theta,
    cin,
    carry_top,
    to_carry=lambda below: (fit(below[0], lay.out_width), below[1]),
    stored_like=(like(lay.in_width), like(lay.out_width)),
    bottom_like=(like(lay.in_width), labels_like) if bottom else None,
    shared=mu,
  )
  return stored, None if bot is None else bot[0]


def weight_updates(pipe, cfg: AMConfig, theta, states, memory, cin, cout, y, shared):
  """Phase 4: every stacked layer's weight step on its own subproblem over the whole
  batch, where the layer lives (no collective).

  A gradient layer takes ``weight_steps`` steps of the stacked layers' optimizer (eq. 6,
  or the loss for the output layer); a memory layer (AM-mem's hidden layers) accumulates
  its co-activation memories and solves its memory surrogate
  (:func:`~altmin_jax.am.weights.memory_step`). ``memory`` is ``()`` without memory
  layers; ``shared = (mu, forgetting, ridge)`` (replicated, possibly traced).
  Returns ``(theta, states, memory)``, updated.
  """
  lay, K = pipe.layout, pipe.layers_per_stage
  tx = stacked_optimizer(cfg, lay)
  logits = lay.widths[-1]
  activation = _input_activation(cfg.net, pipe)
  pad, uses_memory = lay.boundary == "pad", cfg.weights.uses_memory(lay.first + 1)
  flat = lambda a: a.reshape(-1, a.shape[-1])

  def device(theta, states, memory, cin, cout, y, shared):
    mu, forgetting, ridge = shared
    rule = dataclasses.replace(cfg.weights, forgetting=forgetting, ridge=ridge)
    new = []
    for k in range(K):
      layer, is_last, w_in = _layer_index(pipe, k)
      a, target = activation(flat(cin[k]), layer, w_in), flat(cout[k])
      th, st, mem = (pipe.take(tree, k) for tree in (theta, states, memory))

      def hidden(a=a, target=target, th=th, st=st, mem=mem, w_in=w_in):
        if uses_memory:  # eq. (7): updateMemory, then the sweeps or the exact solve
          d = mem.A.shape[-1]
          live = (jnp.arange(d) < w_in) | ((jnp.arange(d) == d - 1) & ("bias" in th))
          new_th, mem = weights_lib.memory_step(rule, th, mem, a, target, live)
          return new_th, st, mem
        objective = lambda p: mu * jnp.mean(jnp.sum(jnp.square(target - _code(p, a)), axis=-1))
        return (*optimizer_steps(objective, th, st, tx, rule.steps), mem)  # eq. (6)

      def output(a=a, th=th, st=st, mem=mem):
        objective = lambda p: jnp.mean(cfg.loss(_code(p, a)[:, :logits], y))
        return (*optimizer_steps(objective, th, st, tx, rule.steps), mem)

      new.append(lax.cond(is_last, output, hidden) if pad else hidden())
    stack = lambda trees: jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)
    return tuple(stack(trees) for trees in zip(*new))

  layer = P(pipe.axis_name)
  specs = tuple(pipe.specs(tree, layer) for tree in (theta, states, memory))
  fn = pipe.shard_map(device, in_specs=(*specs, layer, layer, P(), P()), out_specs=specs)
  return fn(theta, states, memory, cin, cout, y, shared)


def stacked_optimizer(cfg: AMConfig, lay):
  """The one optax optimizer of the stacked layers that are trained by gradient steps
  (all of them under AM-Adam, the output layer under AM-mem with ``boundary="pad"``), or
  ``None`` when every stacked layer is a memory layer."""
  stacked = cfg.weights.optimizers[lay.first : lay.first + lay.num_layers]
  gradient = [tx for tx in stacked if tx is not None]
  return gradient[0] if gradient else None
