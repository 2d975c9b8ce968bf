r"""The GPipe schedule (Huang et al. 2019) of a pipeline of stacked dense layers: forward
and backward passes over micro-batches as ``lax.scan``\ s inside ``jax.shard_map`` over the
``'stage'`` mesh axis, plus the plumbing every pipelined method shares (validating and
placing a step's inputs, the loss on the full batch, updates in the params' own form).

**Forward** (:meth:`Pipeline.forward`): :math:`M + S - 1` ticks; at tick :math:`t` device
:math:`s` runs its :math:`K` layers on micro-batch :math:`j = t - s` (idle,
``lax.cond``-skipped, outside :math:`0 \le j < M`) and ``lax.ppermute`` sends the result to
device :math:`s + 1`; every device keeps its layers' inputs and outputs for all
micro-batches. **Backward** (:meth:`Pipeline.backward`): the reverse scan, micro-batch
:math:`j = t - (S - 1 - s)` on device :math:`s`, gradients sent to :math:`s - 1`; it gives
every layer's output gradient and, on request, the parameter gradients accumulated over
micro-batches. :meth:`Pipeline.reverse` is the general reverse pass (any per-sample carry),
:meth:`Pipeline.chain` runs a chain whose every link needs the value of the previous
device up or down the pipeline as the same kind of pass, and
:meth:`Pipeline.map_layers` a computation on every local layer with no collective.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from altmin_jax.core import batches, meshes, trees
from altmin_jax.core.types import Array, Loss, PyTree
from altmin_jax.networks import LayeredNetwork, as_arrays
from altmin_jax.networks.stages import batch_mean_loss, stage_function
from altmin_jax.pipeline.layout import (
  PipelineLayout,
  PipelineParams,
  fit,
  layer_fn,
  layer_theta,
  pipeline_layout,
  stack_params,
  unstack_params,
)
from altmin_jax.pipeline.options import PipelineOptions


@dataclasses.dataclass(frozen=True, eq=False)
class Pipeline:
  """The phases of a pipelined step on a mesh, each a ``jax.shard_map``.

  Arrays named ``theta`` are the stacked layers in compute precision as a dict
  ``{'kernel': (L, in, out), 'bias': (L, out)}``; per-layer buffers ``zin``, ``zout``,
  ``gz`` have shape ``(L, M, b, width)`` (micro-batch ``j`` holds samples ``j*b`` to
  ``(j+1)*b - 1``); all of them are sharded over the layer axis. Built by the factories;
  exposed for benchmarks and tests.
  """

  layout: PipelineLayout
  mesh: Mesh
  axis_name: str
  num_microbatches: int

  # ------------------------------------------------------------------ helpers
  @property
  def num_stages(self) -> int:
    return self.mesh.shape[self.axis_name]

  @property
  def layers_per_stage(self) -> int:
    return self.layout.num_layers // self.num_stages

  def specs(self, tree, spec):
    return jax.tree.map(lambda _: spec, tree)

  def shard_map(self, fn, in_specs, out_specs):
    return jax.shard_map(
      fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
    )

  def place(self, tree, spec):
    """Constrains every leaf of ``tree`` to ``NamedSharding(mesh, spec)``."""
    sharding = NamedSharding(self.mesh, spec)
    return jax.tree.map(lambda x: meshes.place(x, sharding), tree)

  def shift(self, x, up: bool):
    """``x`` from the previous device (``up``: s-1 -> s) or the next one (s+1 -> s)."""
    S = self.num_stages
    if S == 1:
      return jnp.zeros_like(x)
    perm = [(i, i + 1) for i in range(S - 1)] if up else [(i + 1, i) for i in range(S - 1)]
    return lax.ppermute(x, self.axis_name, perm)

  def broadcast_from(self, x, device: int):
    """Device ``device``'s value of ``x`` on every device (a psum of one non-zero)."""
    s = lax.axis_index(self.axis_name)
    return lax.psum(jnp.where(s == device, x, jnp.zeros_like(x)), self.axis_name)

  def _tables(self):
    """Per-layer static facts as int32/bool arrays, indexed by the global layer."""
    lay = self.layout
    return (
      jnp.asarray(lay.is_first),
      jnp.asarray(lay.is_last),
      jnp.asarray(lay.layer_in_widths, jnp.int32),
      jnp.asarray(lay.layer_out_widths, jnp.int32),
      jnp.asarray([lay.stage_index(l) for l in range(lay.num_layers)], jnp.int32),
    )

  def local_flags(self, k: int):
    s = lax.axis_index(self.axis_name)
    g = s * self.layers_per_stage + k
    return tuple(t[g] for t in self._tables())

  @staticmethod
  def take(theta, k):
    return jax.tree.map(lambda a: a[k], theta)

  def _run_layers(self, theta, z):
    """This device's K layers on one micro-batch: their inputs, outputs and the input
    of the next device."""
    lay = self.layout
    zins, zouts = [], []
    for k in range(self.layers_per_stage):
      is_last = self.local_flags(k)[1]
      zins.append(z)
      out = layer_fn(lay.activation, is_last)(self.take(theta, k), z)
      zouts.append(out)
      z = fit(out, lay.in_width)
    return z, jnp.stack(zins), jnp.stack(zouts)

  # ------------------------------------------------------------------ phases
  def forward(self, theta, xin, *, store: bool = True):
    """GPipe forward pass: ``M + S - 1`` ticks, one ``ppermute`` each.

    Args:
      theta: stacked layers (sharded).
      xin: ``(M, b, in_width)`` pipeline input (replicated).
      store: keep every layer's inputs and outputs (else only the top outputs).

    Returns:
      ``(zin, zout, top)``: per-layer buffers (``None`` unless ``store``) and the last
      layer's outputs ``(M, b, out_width)`` on every device.
    """
    lay, S, K, M = self.layout, self.num_stages, self.layers_per_stage, self.num_microbatches
    b = xin.shape[1]

    def device(theta, xin):
      s = lax.axis_index(self.axis_name)
      dtype = xin.dtype
      zin = jnp.zeros((K, M, b, lay.in_width), dtype) if store else None
      zout = jnp.zeros((K, M, b, lay.out_width), dtype) if store else None
      top = jnp.zeros((M, b, lay.out_width), dtype)

      def tick(carry, t):
        recv, bufs = carry
        j = t - s
        valid = (j >= 0) & (j < M)
        jc = jnp.clip(j, 0, M - 1)
        inp = jnp.where(s == 0, xin[jc], recv)

        def work(bufs):
          zin, zout, top = bufs
          z, zins, zouts = self._run_layers(theta, inp)
          if store:
            zin = zin.at[:, jc].set(zins)
            zout = zout.at[:, jc].set(zouts)
          return (zin, zout, top.at[jc].set(zouts[-1])), z

        bufs, send = lax.cond(valid, work, lambda bufs: (bufs, jnp.zeros_like(inp)), bufs)
        return (self.shift(send, up=True), bufs), None

      init = (jnp.zeros((b, lay.in_width), dtype), (zin, zout, top))
      (_, (zin, zout, top)), _ = lax.scan(tick, init, jnp.arange(M + S - 1))
      return zin, zout, self.broadcast_from(top, S - 1)

    layer = P(self.axis_name)
    fn = self.shard_map(
      device,
      in_specs=(self.specs(theta, layer), P()),
      out_specs=(layer if store else None, layer if store else None, P()),
    )
    return fn(theta, xin)

  def reverse(
    self,
    step: Callable,
    theta,
    per_layer,
    top,
    *,
    to_carry: Callable,
    stored_like=None,
    increment_like=None,
    bottom_like=None,
    shared=None,
  ):
    """A reverse GPipe pass: ``M + S - 1`` ticks, micro-batch :math:`j = t - (S - 1 - s)`
    on device :math:`s`, a carry travelling from the top layer down.

    Every local layer ``k``, from the top down, runs ``step(k, theta_k, per_layer_k,
    carry) -> (stored, increment, below)`` on one micro-batch: ``stored`` is kept per
    layer and micro-batch, ``increment`` summed per layer over micro-batches (parameter
    gradients), and ``to_carry(below)`` becomes the carry of the layer below (then of the
    device below, one ``ppermute`` per tick).

    Args:
      step: the per-layer function (above).
      theta: stacked layers (sharded).
      per_layer: a pytree of ``(L, M, b, ...)`` per-layer buffers (sharded).
      top: ``(M, b, ...)`` carries entering the top layer (replicated).
      to_carry: maps ``below`` to the carry's shape (``fit`` to the layers' output width).
      stored_like, increment_like, bottom_like: shapes and dtypes of one micro-batch's
        ``stored``, of one layer's ``increment`` and of the lowest layer's ``below``
        (``None``: not kept / summed / returned).
      shared: a replicated pytree every step reads (traced scalars such as a penalty
        weight: values of an explicit-axis mesh cannot be closed over in a
        ``shard_map``); given, it is ``step``'s fifth argument.

    Returns:
      ``(stored (L, M, b, ...), increments (L, ...), bottom (M, b, ...) on every device)``,
      each ``None`` when not asked for.
    """
    S, K, M = self.num_stages, self.layers_per_stage, self.num_microbatches
    zeros = lambda like, lead: jax.tree.map(lambda a: jnp.zeros((*lead, *a.shape), a.dtype), like)

    def device(theta, per_layer, top, shared):
      s = lax.axis_index(self.axis_name)
      init_state = (
        None if stored_like is None else zeros(stored_like, (K, M)),
        None if increment_like is None else zeros(increment_like, (K,)),
        None if bottom_like is None else zeros(bottom_like, (M,)),
      )

      def tick(carry, t):
        recv, state = carry
        j = t - (S - 1 - s)
        jc = jnp.clip(j, 0, M - 1)
        c_in = jax.tree.map(lambda a, r: jnp.where(s == S - 1, a[jc], r), top, recv)

        def work(state):
          stored, acc, bot = state
          c = c_in
          for k in reversed(range(K)):
            mb = jax.tree.map(lambda a, k=k: a[k, jc], per_layer)
            args = (k, self.take(theta, k), mb, c) + (() if shared is None else (shared,))
            out, inc, below = step(*args)
            if stored is not None:
              stored = jax.tree.map(lambda buf, o, k=k: buf.at[k, jc].set(o), stored, out)
            if acc is not None:
              acc = jax.tree.map(lambda a, u, k=k: a.at[k].add(u), acc, inc)
            c = to_carry(below)
          if bot is not None:
            bot = jax.tree.map(lambda buf, o: buf.at[jc].set(o), bot, below)
          return (stored, acc, bot), c

        zero = jax.tree.map(jnp.zeros_like, c_in)
        state, send = lax.cond((j >= 0) & (j < M), work, lambda st: (st, zero), state)
        return (jax.tree.map(lambda x: self.shift(x, up=False), send), state), None

      init = (jax.tree.map(lambda a: jnp.zeros_like(a[0]), top), init_state)
      (_, (stored, acc, bot)), _ = lax.scan(tick, init, jnp.arange(M + S - 1))
      bot = None if bot is None else jax.tree.map(lambda b: self.broadcast_from(b, 0), bot)
      return stored, acc, bot

    layer = P(self.axis_name)
    fn = self.shard_map(
      device,
      in_specs=(
        self.specs(theta, layer),
        self.specs(per_layer, layer),
        self.specs(top, P()),
        self.specs(shared, P()),
      ),
      out_specs=(
        None if stored_like is None else self.specs(stored_like, layer),
        None if increment_like is None else self.specs(increment_like, layer),
        None if bottom_like is None else self.specs(bottom_like, P()),
      ),
    )
    return fn(theta, per_layer, top, shared)

  def backward(self, theta, zin, g_top, *, grads: bool = False, bottom: bool = False):
    """GPipe backward pass (:meth:`reverse`): every layer's output gradient
    :math:`g^{(i)}`, optionally the parameter gradients summed over micro-batches and the
    gradient in the pipeline input (``(M, b, in_width)``, on every device)."""
    lay, M = self.layout, self.num_microbatches
    b = g_top.shape[1]

    def step(k, th, z, g):
      fn = layer_fn(lay.activation, self.local_flags(k)[1])
      if grads:
        _, vjp = jax.vjp(fn, th, z)
        g_th, g_prev = vjp(g)
      else:
        _, vjp = jax.vjp(lambda zz: fn(th, zz), z)
        (g_prev,), g_th = vjp(g), None
      return g, g_th, g_prev

    like = lambda *shape: jax.ShapeDtypeStruct(shape, g_top.dtype)
    th_like = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), theta)
    del M
    return self.reverse(
      step,
      theta,
      zin,
      g_top,
      to_carry=lambda g: fit(g, lay.out_width),
      stored_like=like(b, lay.out_width),
      increment_like=th_like if grads else None,
      bottom_like=like(b, lay.in_width) if bottom else None,
    )

  def chain(self, work: Callable, first: Callable, out, *, up: bool):
    """Inside a ``shard_map``: a GPipe pass of a chain whose every link needs the previous
    device's value, over the micro-batches: ``M + S - 1`` ticks, one ``ppermute`` each.

    At tick :math:`t` the device at position :math:`p = t - j` of the chain (device
    :math:`s` going up from device 0, device :math:`S - 1 - s` going down) runs micro-batch
    :math:`j` (idle, ``lax.cond``-skipped, outside :math:`0 \\le j < M`) as ``work(j, c) ->
    (out_j, c_next)`` on the carry ``c`` the previous device sent (``first(j)`` on the first
    device) and sends ``c_next`` on. With :math:`M = 1` it is :math:`S` sequential rounds.

    Args:
      work: the per-device, per-micro-batch link (above); ``j`` is traced.
      first: ``j -> carry`` entering the first device (traced ``j``).
      out: ``(M, ...)`` buffers; ``out_j`` is written at ``[j]`` on the device that ran it.
      up: from device 0 up (``True``) or from device ``S - 1`` down.

    Returns:
      ``(out, last)``: this device's ``out`` and the ``(M, ...)`` carries the last device
      produced, on every device.
    """
    S, M = self.num_stages, self.num_microbatches
    s = lax.axis_index(self.axis_name)
    pos = s if up else S - 1 - s
    like = jax.eval_shape(first, 0)
    zero = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), like)
    last0 = jax.tree.map(lambda a: jnp.zeros((M, *a.shape), a.dtype), like)

    def tick(state, t):
      recv, out, last = state
      j = t - pos
      jc = jnp.clip(j, 0, M - 1)
      c_in = jax.tree.map(lambda a, r: jnp.where(pos == 0, a, r), first(jc), recv)

      def link(out, last):
        o, c = work(jc, c_in)
        out = jax.tree.map(lambda buf, v: buf.at[jc].set(v), out, o)
        last = jax.tree.map(lambda buf, v: buf.at[jc].set(v), last, c)
        return out, last, c

      out, last, send = lax.cond(
        (j >= 0) & (j < M), link, lambda out, last: (out, last, zero), out, last
      )
      return (jax.tree.map(lambda x: self.shift(x, up=up), send), out, last), None

    (_, out, last), _ = lax.scan(tick, (zero, out, last0), jnp.arange(M + S - 1))
    # the last device's carries: share them
    return out, jax.tree.map(lambda x: self.broadcast_from(x, S - 1 if up else 0), last)

  def map_layers(self, fn: Callable, *args, out_specs, shared=None):
    """``fn(*per_layer_args, *flags, shared)`` on every stacked layer, vmapped over each
    device's layers with no collective; ``flags`` are the layer's ``(is_first, is_last,
    w_in, w_out, stage)`` (traced, devices hold different layers) and ``shared`` a
    replicated pytree every layer reads."""
    K = self.layers_per_stage

    def device(shared, *args):
      flags = [self.local_flags(k) for k in range(K)]
      flags = tuple(jnp.stack(f) for f in zip(*flags))
      return jax.vmap(lambda *a: fn(*a, shared))(*args, *flags)

    layer = P(self.axis_name)
    in_specs = (self.specs(shared, P()), *(self.specs(a, layer) for a in args))
    sm = self.shard_map(device, in_specs=in_specs, out_specs=out_specs)
    return sm(shared, *args)

  def communication(self, xin, g_top):
    """The pipeline's point-to-point traffic alone: the ``2 (M + S - 1)`` activation
    and gradient ``ppermute``s of one forward and backward pass, no compute (for the
    benchmark)."""
    S, M = self.num_stages, self.num_microbatches

    def device(xin, g_top):
      def fwd(recv, t):
        return self.shift(recv + xin[t % M], up=True), None

      def bwd(recv, t):
        return self.shift(recv + g_top[t % M], up=False), None

      a, _ = lax.scan(fwd, jnp.zeros_like(xin[0]), jnp.arange(M + S - 1))
      g, _ = lax.scan(bwd, jnp.zeros_like(g_top[0]), jnp.arange(M + S - 1))
      return jnp.reshape(jnp.sum(a) + jnp.sum(g), (1,))

    return self.shard_map(device, in_specs=(P(), P()), out_specs=P(self.axis_name))(xin, g_top)


def make_pipeline(net: LayeredNetwork, options: PipelineOptions) -> Pipeline:
  """A validated :class:`Pipeline`: the layout of ``net`` on validated
  :class:`~altmin_jax.pipeline.options.PipelineOptions` whose mesh axis splits the
  stacked layers evenly."""
  layout = pipeline_layout(net, boundary=options.boundary)
  what = f"stacked layers (boundary={options.boundary!r})"
  meshes.check_mesh(options.mesh, options.axis_name, count=layout.num_layers, what=what)
  return Pipeline(layout, options.mesh, options.axis_name, options.num_microbatches)


class Prepared(NamedTuple):
  """A pipelined step's validated inputs in compute precision, placed on the mesh."""

  x: Array  # (B, w_0) in the compute dtype, replicated
  y: Array
  stacked: PipelineParams  # the params as given, stacked
  theta: dict  # stacked layers in compute precision, sharded
  head: PyTree  # compute precision, replicated (or None)
  tail: PyTree
  dtype: Any
  user_params: PyTree  # the params as given (None when they came stacked)


def check_stacked(stacked: PipelineParams, layout: PipelineLayout) -> None:
  want = (layout.num_layers, layout.in_width, layout.out_width)
  if tuple(jnp.shape(stacked.kernel)) != want:
    raise ValueError(
      f"stacked kernel has shape {tuple(jnp.shape(stacked.kernel))}, expected {want} "
      f"(stack_params(net, params, boundary={layout.boundary!r}))"
    )
  if (stacked.head is None) != (layout.boundary == "pad"):
    raise ValueError(f"params were stacked for another boundary than {layout.boundary!r}")


def prepare_params(pipe: Pipeline, net: LayeredNetwork, params):
  """``(stacked, theta, head, tail, dtype, user_params)`` of :class:`Prepared` from params in
  either form (checked), in the compute precision and placed on the mesh."""
  lay = pipe.layout
  if isinstance(params, PipelineParams):
    stacked, user = params, None
  else:
    user = as_arrays(params)
    stacked = stack_params(net, user, boundary=lay.boundary)
  check_stacked(stacked, lay)
  dtype = trees.compute_dtype((stacked.kernel, stacked.head, stacked.tail))
  theta = pipe.place(layer_theta(stacked.kernel, stacked.bias), P(pipe.axis_name))
  theta = trees.cast_tree(theta, dtype)
  head = pipe.place(trees.cast_tree(stacked.head, dtype), P())
  tail = pipe.place(trees.cast_tree(stacked.tail, dtype), P())
  return stacked, theta, head, tail, dtype, user


def prepare(pipe: Pipeline, net: LayeredNetwork, params, batch, method: str) -> Prepared:
  """Validates params and batch (static shapes) and casts to the compute precision."""
  batches.require_params(params, method)
  x, y = batches.unpack_batch(net, batch)
  M = pipe.num_microbatches
  if x.shape[0] % M:
    raise ValueError(
      f"batch x has shape {tuple(x.shape)}: its size must be a multiple of num_microbatches={M}"
    )
  stacked, theta, head, tail, dtype, user = prepare_params(pipe, net, params)
  x = pipe.place(x.astype(dtype), P())
  y = pipe.place(y, P())
  return Prepared(x, y, stacked, theta, head, tail, dtype, user)


def updates(net, prep: Prepared, new_theta: dict, new_head, new_tail):
  """``new_params - params`` in the structure and dtypes the params came in."""
  new = PipelineParams(new_theta["kernel"], new_theta.get("bias"), new_head, new_tail)
  if prep.user_params is None:
    return trees.update_difference(new, prep.stacked)
  new_user = unstack_params(net, new, like=prep.user_params)
  return trees.update_difference(new_user, prep.user_params)


def microbatches(a: Array, M: int) -> Array:
  return a.reshape(M, a.shape[0] // M, *a.shape[1:])


def flat(a: Array) -> Array:
  """``(M, b, w)`` -> ``(B, w)``."""
  return a.reshape(-1, a.shape[-1])


def to_replicated(pipe: Pipeline, tree):
  return pipe.place(tree, P())


class Forward(NamedTuple):
  """The pipelined forward pass and the loss on the full batch."""

  value: Array
  zin: Array | None
  zout: Array | None
  z_head: Array | None  # z^(1) (boundary="outside")
  z_below_tail: Array | None  # z^(m-1) (boundary="outside")
  logits: Array
  g_logits: Array  # dh/dlogits
  g_top: Array  # (M, b, out_width) gradient in the stacked top layer's outputs
  tail_vjp: Any


def forward_and_loss(
  pipe: Pipeline, net, loss: Loss, prep: Prepared, theta, head, tail, store=True
):
  """Head (outside), pipelined forward, tail (outside) and the loss on the full batch."""
  lay, M = pipe.layout, pipe.num_microbatches
  x, y = prep.x, prep.y
  z_head = None
  if lay.boundary == "outside":
    z_head = stage_function(net, 1)(head, x)
    xin = z_head
  else:
    xin = x
  xin = microbatches(fit(xin, lay.in_width), M)
  zin, zout, top = pipe.forward(theta, xin, store=store)
  top = flat(top)
  tail_vjp = z_below = None
  if lay.boundary == "outside":
    z_below = top[:, : lay.widths[-2]]
    logits, tail_vjp = jax.vjp(stage_function(net, net.num_stages), tail, z_below)
  else:
    logits = top[:, : lay.widths[-1]]
  # eq. (2): g_z^(m) = grad l(z_t^(m)) for the batch-mean loss.
  value, g_logits = jax.value_and_grad(lambda o: batch_mean_loss(loss, o, y))(logits)
  g_top = g_logits if tail_vjp is None else tail_vjp(g_logits)[1]
  g_top = microbatches(fit(g_top, lay.out_width), M)
  return Forward(value, zin, zout, z_head, z_below, logits, g_logits, g_top, tail_vjp)
