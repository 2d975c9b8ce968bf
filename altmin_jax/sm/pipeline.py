r"""Pipeline-parallel surrogate minimization: layer stages on devices, GPipe micro-batches.

Asad et al., "Surrogate Minimization" (SM paper), section 1 and Figure 1: the network's
layers are split over devices and trained with GPipe (Huang et al. 2019) micro-batching;
with SM, every device then minimises the local losses of its own layers for N steps
(Algorithm 1, "do in parallel") without talking to the others, filling the update phase
that plain GPipe + GD leaves idle. SPEC section 5, last paragraph.

Layout. The dense stages of a :class:`~altmin_jax.networks.LayeredNetwork` are stacked on
a leading *layer* axis (:class:`PipelineParams`, :func:`stack_params`), zero-padded to
common widths, and that axis is sharded ``P('stage')`` over the mesh axis ``'stage'``
(``jax.make_mesh((S,), ('stage',))``): with ``L`` stacked layers each of the ``S``
devices holds ``K = L / S`` consecutive layers. Stages whose widths differ from the
rest (the input layer reading 784 pixels, the output layer writing 10 logits) are
either **zero-padded** into the stack (``boundary="pad"``, all layers pipelined) or
**kept outside the pipeline** (``boundary="outside"``: the first and last stage run on
the full batch before / after the pipelined middle layers, replicated on every device).
Padding provably changes no result (see :func:`stack_params`): the padded entries of
every weight, activation, gradient, Hessian-vector product and Lanczos vector are
exact zeros, and the tests compare both choices with the single-device step.

One SM step (:func:`pipelined_surrogate_minimization`) runs four phases (1, 3 and 4 are
``jax.shard_map``\ s over the ``'stage'`` axis, 2 is computed replicated):

1. **forward**: GPipe schedule as a ``lax.scan`` over :math:`M + S - 1` ticks; at tick
   :math:`t` device :math:`s` runs its K layers on micro-batch :math:`j = t - s` (idle,
   ``lax.cond``-skipped, outside :math:`0 \le j < M`) and ``lax.ppermute`` sends the
   result to device :math:`s + 1`. Every device keeps its layers' inputs and outputs
   :math:`z_t^{(i-1)}, z_t^{(i)}` for all micro-batches.
2. the loss :math:`h = \frac1B\sum_b \mathrm{loss}(z^{(m)}_b, y_b)` and
   :math:`g_z^{(m)} = \partial h/\partial z^{(m)}` on the full batch of logits.
3. **backward**: the reverse GPipe scan (micro-batch :math:`j = t - (S - 1 - s)` on
   device :math:`s`, gradients sent to :math:`s - 1`) gives every layer's
   :math:`g_z^{(i)}` (eq. (2) and Appendix B); then the **curvature chain**
   :math:`c_{m+1} = L/B`, :math:`c_i = \max(\lambda_{\max}(\nabla^2_{zz}\psi_i), 0) +
   \delta` runs top-down (Appendix A): device :math:`s` computes the constants of its
   layers once device :math:`s + 1` has sent it :math:`c` of its lowest layer (one scalar
   ``ppermute`` per device, :math:`S` sequential rounds). The paper's Figure 1 does not
   show this chain; it is inherently sequential (:math:`c_i` needs :math:`c_{i+1}` on the
   full batch), so it adds :math:`S - 1` rounds of Lanczos steps in which only one
   device works (:mod:`altmin_jax.sm.schedule_model` accounts for it).
4. **local solves** (a separate ``shard_map`` with no collective at all): every device
   takes N CG or Armijo-GD steps on each of its layers' local losses (Proposition 1,
   eq. (1), :math:`\rho = 0`)

   .. math:: \mathcal L_i(\theta) = \langle g_{\theta_i}, \theta-\theta_t\rangle
      + \tfrac12 \|\theta-\theta_t\|^2_{\mathbb H_i},\qquad
      \mathbb H_i = H^{(i)}_{\theta\theta} + H^{(i)\top}_{z\theta}H^{(i)}_{z\theta}/\delta,

   from data it already holds.

Every step equals :func:`~altmin_jax.sm.surrogate_minimization`'s to float tolerance
(same Lanczos start vectors, same solvers; only summation orders differ).
:func:`pipelined_gradient_descent` is the GPipe + GD baseline: the same forward and
backward passes accumulate the gradient over micro-batches, then one update per pass
(fixed step, or the Armijo search of :func:`~altmin_jax.sm.gd_armijo` whose every trial
is one more pipelined forward pass).

:mod:`altmin_jax.sm.schedule_model` models the busy and idle time of each device for
both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from altmin_jax import losses as losses_lib
from altmin_jax.distributed.workers import _constrain
from altmin_jax.networks import LayeredNetwork, as_arrays
from altmin_jax.networks.layered import dense_kernel_bias, with_dense_kernel_bias
from altmin_jax.sm import local_losses as ll
from altmin_jax.sm import solvers
from altmin_jax.sm import surrogate as sur
from altmin_jax.sm.baselines.gd_armijo import GDArmijoState
from altmin_jax.sm.surrogate import SMState

Array = jax.Array
PyTree = Any

AXIS = "stage"
BOUNDARIES = ("pad", "outside")
_GOLDEN = 2.399963229728653  # the golden angle of ll.start_vector


# ------------------------------------------------------------------ the layout


class PipelineParams(NamedTuple):
  """Dense layers stacked on a leading layer axis (zero-padded) plus the stages kept
  outside the pipeline (``None`` with ``boundary="pad"``)."""

  kernel: Array  # (layers, in_width, out_width)
  bias: Array | None  # (layers, out_width); None when the dense stages have no bias
  head: PyTree  # the first stage's params (boundary="outside"), else None
  tail: PyTree  # the last stage's params (boundary="outside"), else None


@dataclasses.dataclass(frozen=True)
class PipelineLayout:
  """Static plan of a pipeline: which network stages are stacked and their padded widths.

  Attributes:
    widths: real widths ``w_0 (input), w_1, ..., w_m (logits)`` of the network.
    boundary: ``"pad"`` or ``"outside"``.
    first: 0-based index of the first stacked network stage (0 or 1).
    num_layers: number of stacked layers (``m`` or ``m - 2``).
    in_width, out_width: padded input and output width of every stacked layer.
    activation: the hidden activation of the stacked layers.
  """

  widths: tuple[int, ...]
  boundary: str
  first: int
  num_layers: int
  in_width: int
  out_width: int
  activation: Callable[[Array], Array]

  @property
  def num_network_stages(self) -> int:
    return len(self.widths) - 1

  def stage_index(self, layer: int) -> int:
    """1-based network stage of stacked layer ``layer`` (0-based)."""
    return self.first + layer + 1

  @property
  def layer_in_widths(self) -> tuple[int, ...]:
    return tuple(self.widths[self.first + l] for l in range(self.num_layers))

  @property
  def layer_out_widths(self) -> tuple[int, ...]:
    return tuple(self.widths[self.first + l + 1] for l in range(self.num_layers))

  @property
  def is_first(self) -> tuple[bool, ...]:
    return tuple(self.stage_index(l) == 1 for l in range(self.num_layers))

  @property
  def is_last(self) -> tuple[bool, ...]:
    m = self.num_network_stages
    return tuple(self.stage_index(l) == m for l in range(self.num_layers))


def _activation_at_zero(activation) -> float | None:
  try:
    return float(activation(jnp.zeros((), jnp.float32)))
  except Exception:  # any failure means "unknown"
    return None


def pipeline_layout(net: LayeredNetwork, *, boundary: str = "pad") -> PipelineLayout:
  """The :class:`PipelineLayout` of a network of dense stages.

  Raises ``ValueError`` unless every stage is dense with 1-D inputs and outputs, all
  stacked hidden layers share one activation and, where a hidden layer is zero-padded,
  that activation maps 0 to 0 (a padded unit must stay exactly zero).
  """
  net = ll.check_network(net)
  if boundary not in BOUNDARIES:
    raise ValueError(f"boundary must be one of {BOUNDARIES}, got boundary={boundary!r}")
  if len(net.input_shape) != 1:
    raise ValueError(
      f"a pipeline needs flat inputs: the network's input_shape is {net.input_shape}"
    )
  for i, stage in enumerate(net.stages, start=1):
    if not stage.dense or len(stage.output_shape) != 1:
      raise ValueError(
        f"pipelined SM stacks dense stages: stage {i} ({stage.name!r}) is not a dense "
        "stage with a 1-D output"
      )
  m = net.num_stages
  widths = (net.input_shape[0], *(s.output_shape[0] for s in net.stages))
  first = 0 if boundary == "pad" else 1
  num_layers = m - 2 * first
  if num_layers < 1:
    raise ValueError(
      f"boundary='outside' keeps the first and last stage outside the pipeline and needs "
      f"at least 3 stages, got {m}"
    )
  ins = [widths[first + l] for l in range(num_layers)]
  outs = [widths[first + l + 1] for l in range(num_layers)]
  hidden = [net.stages[first + l].activation for l in range(num_layers) if first + l + 1 < m]
  activation = hidden[0] if hidden else net.stages[-1].activation
  if any(a is not activation for a in hidden):
    raise ValueError("the stacked hidden layers must share one activation function")
  out_width = max(outs)
  padded_hidden = any(o < out_width for o, l in zip(outs, range(num_layers)) if first + l + 1 < m)
  if padded_hidden and _activation_at_zero(activation) != 0.0:
    raise ValueError(
      "zero padding needs a hidden activation with activation(0) == 0 (tanh, relu, ...): "
      f"got activation(0) = {_activation_at_zero(activation)}; use equal hidden widths"
    )
  return PipelineLayout(
    widths=widths,
    boundary=boundary,
    first=first,
    num_layers=num_layers,
    in_width=max(ins),
    out_width=out_width,
    activation=activation,
  )


def _fit(a: Array, width: int) -> Array:
  """Zero-pads or truncates the last axis of ``a`` to ``width`` (its own transpose)."""
  have = a.shape[-1]
  if have == width:
    return a
  if have > width:
    return a[..., :width]
  return jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, width - have)])


def _replicated(x: Array) -> Array:
  """``x`` resharded to replicated when its type carries an explicit sharding (needed
  before indexing into a sharded axis of an explicit-axis mesh)."""
  sharding = getattr(jax.typeof(x), "sharding", None)
  spec = getattr(sharding, "spec", ())
  if spec and any(p is not None for p in spec) and not sharding.mesh.empty:
    return jax.sharding.reshard(x, NamedSharding(sharding.mesh, P()))
  return x


def stack_params(
  net: LayeredNetwork,
  params: PyTree,
  *,
  boundary: str = "pad",
  mesh: Mesh | None = None,
  axis_name: str = AXIS,
) -> PipelineParams:
  r"""Stacks a network's dense stages on a leading layer axis, zero-padded.

  Stacked layer ``l`` holds network stage ``l + 1`` (``boundary="pad"``) or ``l + 2``
  (``boundary="outside"``, whose first and last stage go to ``head`` and ``tail``
  unchanged). Its kernel :math:`W` (``w_in x w_out``) becomes the top-left block of a
  zero ``in_width x out_width`` matrix, its bias the first ``w_out`` entries of a zero
  vector. The padded network computes the same function: padded inputs are zero and
  meet zero kernel rows; padded hidden units have pre-activation 0 and output
  :math:`\sigma(0) = 0` (required), and their kernel rows in the next layer are zero;
  padded logits are dropped before the loss. The same holds for every quantity of an SM
  step: gradients of padded entries are exact zeros, the Hessian-vector products of the
  local losses map vectors supported on the real entries to such vectors (padded units
  are decoupled: their pre-activations do not depend on real weights and vice versa),
  and the Lanczos start vectors vanish on padded entries, so CG, Armijo GD and the
  Lanczos recurrences (per sample: padding adds columns, not samples) follow the
  unpadded iterates exactly.

  Args:
    net: a network of dense stages (:func:`~altmin_jax.networks.mlp`).
    params: its params (per-stage tuple or a Flax container).
    boundary: ``"pad"`` (all stages stacked) or ``"outside"``.
    mesh: if given, the stacked arrays are placed with the layer axis sharded over
      ``axis_name`` (also across processes after ``jax.distributed.initialize``: every
      process passes the full params) and head / tail replicated.
    axis_name: the mesh axis of the pipeline stages.

  Returns:
    A :class:`PipelineParams` (a pytree: ``optax.apply_updates`` works on it).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import altmin_jax as amj
    >>> from altmin_jax.sm.pipeline import stack_params, unstack_params
    >>> net = amj.networks.mlp([5, 6, 6, 3], activation=jnp.tanh)
    >>> params = net.init(jax.random.key(0))
    >>> stacked = stack_params(net, params)
    >>> stacked.kernel.shape, stacked.bias.shape
    ((3, 6, 6), (3, 6))
    >>> back = unstack_params(net, stacked)
    >>> bool(jnp.all(back[0]["kernel"] == params[0]["kernel"]))
    True
  """
  lay = pipeline_layout(net, boundary=boundary)
  stage_params = net.stage_params(as_arrays(params))
  kernels, biases = [], []
  for l in range(lay.num_layers):
    kernel, bias = dense_kernel_bias(stage_params[lay.first + l])
    w_in, w_out = kernel.shape
    kernels.append(jnp.pad(kernel, ((0, lay.in_width - w_in), (0, lay.out_width - w_out))))
    biases.append(None if bias is None else jnp.pad(bias, (0, lay.out_width - w_out)))
  if any(b is None for b in biases) and not all(b is None for b in biases):
    raise ValueError("the stacked dense stages must all have a bias or all have none")
  stacked = PipelineParams(
    kernel=jnp.stack(kernels),
    bias=None if biases[0] is None else jnp.stack(biases),
    head=stage_params[0] if boundary == "outside" else None,
    tail=stage_params[-1] if boundary == "outside" else None,
  )
  if mesh is not None:
    stacked = place_params(stacked, mesh, axis_name=axis_name)
  return stacked


def _put(x, mesh: Mesh, axis_name: str | None) -> Array:
  """A global array from the same full value on every process: leading axis sharded
  over ``axis_name`` (replicated for ``None``). The spec names every axis, as the
  shardings of jitted outputs do (equal specs: no recompilation when outputs are fed
  back)."""
  host = np.asarray(x)
  spec = P(*([axis_name] + [None] * (host.ndim - 1))[: host.ndim]) if host.ndim else P()
  sharding = NamedSharding(mesh, spec)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def place_params(stacked: PipelineParams, mesh: Mesh, *, axis_name: str = AXIS):
  """Places :class:`PipelineParams` on ``mesh``: layer axis sharded over ``axis_name``,
  head and tail replicated (from the same full value on every process)."""
  return PipelineParams(
    kernel=_put(stacked.kernel, mesh, axis_name),
    bias=None if stacked.bias is None else _put(stacked.bias, mesh, axis_name),
    head=replicate_on(mesh, stacked.head),
    tail=replicate_on(mesh, stacked.tail),
  )


def unstack_params(net: LayeredNetwork, stacked: PipelineParams, like: PyTree = None) -> PyTree:
  """Inverse of :func:`stack_params`: the network's params (padding dropped).

  Args:
    net: the network the params were stacked from.
    stacked: a :class:`PipelineParams` (sharded or not; jittable).
    like: params in the user's structure (a Flax container); ``None`` gives the tuple of
      ``{'kernel', 'bias'}`` dicts of :func:`~altmin_jax.networks.mlp`.
  """
  boundary = "pad" if stacked.head is None else "outside"
  lay = pipeline_layout(net, boundary=boundary)
  kernel = _replicated(stacked.kernel)
  bias = None if stacked.bias is None else _replicated(stacked.bias)
  like_stages = None if like is None else net.stage_params(as_arrays(like))
  stages = []
  if boundary == "outside":
    stages.append(jax.tree.map(_replicated, stacked.head))
  for l, (w_in, w_out) in enumerate(zip(lay.layer_in_widths, lay.layer_out_widths)):
    k = kernel[l, :w_in, :w_out]
    b = None if bias is None else bias[l, :w_out]
    if like_stages is None:
      stages.append({"kernel": k} if b is None else {"kernel": k, "bias": b})
    else:
      stages.append(with_dense_kernel_bias(like_stages[lay.first + l], k, b))
  if boundary == "outside":
    stages.append(jax.tree.map(_replicated, stacked.tail))
  if like is None:
    return tuple(stages)
  return net.merge_stage_params(stages, as_arrays(like))


def replicate_on(mesh: Mesh, tree: PyTree) -> PyTree:
  """Concrete arrays of ``tree`` placed replicated on ``mesh`` (also across processes:
  every process passes the same values). Steps keep this placement, so placing the
  optimizer state and network-form params this way avoids a recompilation on the
  second step."""
  return jax.tree.map(lambda x: _put(x, mesh, None), tree)


def pipeline_mesh(num_stages: int | None = None, *, axis_name: str = AXIS) -> Mesh:
  """``jax.make_mesh((S,), (axis_name,))`` over the first ``S`` of ``jax.devices()``
  (all by default; across processes after ``jax.distributed.initialize``)."""
  devices = jax.devices()
  n = len(devices) if num_stages is None else num_stages
  if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(devices):
    raise ValueError(f"num_stages={num_stages!r} but {len(devices)} devices are visible")
  return jax.make_mesh((n,), (axis_name,), devices=devices[:n])


# ------------------------------------------------------------- per-layer maths


def _layer_theta(kernel: Array, bias: Array | None) -> dict:
  """One stacked layer's params as a dict (leaf order bias, kernel as in ``mlp``)."""
  return {"kernel": kernel} if bias is None else {"kernel": kernel, "bias": bias}


def _layer_fn(activation, is_last) -> ll.StageFn:
  """``f_i(theta, z)`` of a stacked layer: the activation unless it is the logits."""

  def fn(theta, z):
    c = z @ theta["kernel"]
    if "bias" in theta:
      c = c + theta["bias"]
    return jnp.where(is_last, c, activation(c))

  return fn


def _masked_index(padded_shape: tuple[int, ...], real_shape: tuple[Array, ...]):
  """Row-major index of each entry within ``real_shape`` (traced), a mask of the real
  entries, and the real size."""
  idx = jnp.zeros(padded_shape, jnp.int32)
  mask = jnp.ones(padded_shape, bool)
  stride = jnp.ones([], jnp.int32)
  for d in reversed(range(len(padded_shape))):
    i = lax.broadcasted_iota(jnp.int32, padded_shape, d)
    idx = idx + i * stride
    mask = mask & (i < real_shape[d])
    stride = stride * real_shape[d]
  return idx, mask, stride


def _padded_start_vector(seed: Array, leaves_and_shapes, dtype) -> list[Array]:
  """:func:`~altmin_jax.sm.local_losses.start_vector` of the unpadded pytree, embedded
  in the padded one (zeros on padded entries); ``leaves_and_shapes`` lists
  ``(padded_shape, real_shape)`` in flatten order."""
  out, offset = [], jnp.zeros([], jnp.int32)
  for padded_shape, real_shape in leaves_and_shapes:
    idx, mask, size = _masked_index(padded_shape, real_shape)
    k = (idx + offset).astype(dtype)
    out.append(jnp.where(mask, jnp.cos(_GOLDEN * k + seed), 0.0).astype(dtype))
    offset = offset + size
  return out


def _theta_start_vector(seed, theta: dict, w_in, w_out) -> dict:
  keys = sorted(theta)  # jax flattens dicts in sorted key order: bias, kernel
  real = {"kernel": (w_in, w_out), "bias": (w_out,)}
  dtype = theta["kernel"].dtype
  vecs = _padded_start_vector(seed, [(theta[k].shape, real[k]) for k in keys], dtype)
  return dict(zip(keys, vecs))


def _z_start_vector(seed, z: Array, width) -> Array:
  return _padded_start_vector(seed, [(z.shape, (z.shape[0], width))], z.dtype)[0]


def _local_quadratic(psi, z, theta, delta: float, is_first) -> ll.LocalQuadratic:
  """:func:`~altmin_jax.sm.local_losses.local_quadratic` with a traced first-stage flag
  (the first stage has no coupling term)."""
  (_, g_theta), lin_theta = jax.linearize(lambda th: jax.grad(psi, argnums=(0, 1))(z, th), theta)
  _, lin_coupling_t = jax.linearize(lambda zz: jax.grad(psi, argnums=1)(zz, theta), z)

  def matvec(v):
    # Appendix A: H_i = H_thetatheta + H_ztheta^T H_ztheta / delta (condition (2)).
    h_z, h_theta = lin_theta(v)
    coupled = optax.tree.add_scale(h_theta, 1.0 / delta, lin_coupling_t(h_z))
    return jax.tree.map(lambda a, b: jnp.where(is_first, a, b), h_theta, coupled)

  return ll.LocalQuadratic(g_theta=g_theta, matvec=matvec)


def _solve_layer(cfg: sur.SMConfig, activation, theta, z_prev, g_out, z_out, c_next, step0, flags):
  """:func:`altmin_jax.sm.surrogate.solve_local_loss` for one padded stacked layer."""
  is_first, is_last, w_in, w_out = flags
  psi = ll.make_psi(_layer_fn(activation, is_last), g_out, z_out, c_next)
  lq = _local_quadratic(psi, z_prev, theta, cfg.delta, is_first)
  g = lq.g_theta
  if cfg.curvature == "scalar":
    v0 = _theta_start_vector(cfg.seed + 1000, theta, w_in, w_out)
    lam = ll.top_eigenvalue(lq.matvec, v0, cfg.power_iterations)
    pos = lam > 0
    inv = jnp.where(pos, 1.0 / jnp.where(pos, lam, 1.0), 0.0)
    d = optax.tree.scale(-inv, g)
    model = -0.5 * inv * optax.tree.vdot(g, g)
    return sur.StageSolve(d, model, pos.astype(jnp.int32), step0)
  if cfg.solver == "cg":
    res = solvers.conjugate_gradient(
      lq.matvec, optax.tree.scale(-1.0, g), steps=cfg.inner_steps, curvature_tol=cfg.curvature_tol
    )
    model = optax.tree.vdot(g, res.x) + 0.5 * optax.tree.vdot(res.x, res.Ax)
    return sur.StageSolve(res.x, model, res.iterations, step0)
  res = solvers.quadratic_armijo_gd(
    lq.matvec,
    g,
    steps=cfg.inner_steps,
    init_step=step0,
    config=cfg.line_search,
    curvature_tol=cfg.curvature_tol,
  )
  return sur.StageSolve(res.x, res.value, res.iterations, res.next_step)


def _stage_curvature(fn, theta, z_in, g_out, z_out, c_next, v0, cfg: sur.SMConfig) -> Array:
  """:math:`c_i = \\max(\\lambda_{\\max}(\\nabla^2_{zz}\\psi_i), 0) + \\delta` (Appendix A)."""
  psi = ll.make_psi(fn, g_out, z_out, c_next)
  mv = ll.hzz_product(psi, z_in, theta)
  # dense layers map samples independently: H_zz is block diagonal over the batch
  lam = ll.top_eigenvalue(mv, v0, cfg.power_iterations, per_sample=True)
  return jnp.maximum(lam, 0.0) + cfg.delta


# ---------------------------------------------------------------- the pipeline


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
  cfg: sur.SMConfig | None = None

  # ------------------------------------------------------------------ helpers
  @property
  def num_stages(self) -> int:
    return self.mesh.shape[self.axis_name]

  @property
  def layers_per_stage(self) -> int:
    return self.layout.num_layers // self.num_stages

  def _specs(self, tree, spec):
    return jax.tree.map(lambda _: spec, tree)

  def _shard_map(self, fn, in_specs, out_specs):
    return jax.shard_map(
      fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
    )

  def place(self, tree, spec):
    """Constrains every leaf of ``tree`` to ``NamedSharding(mesh, spec)``."""
    sharding = NamedSharding(self.mesh, spec)

    def one(x):
      if isinstance(x, jax.core.Tracer):
        return _constrain(x, sharding)
      return jax.device_put(x, sharding)  # eager: also moves committed arrays

    return jax.tree.map(one, tree)

  def _shift(self, x, up: bool):
    """``x`` from the previous device (``up``: s-1 -> s) or the next one (s+1 -> s)."""
    S = self.num_stages
    if S == 1:
      return jnp.zeros_like(x)
    perm = [(i, i + 1) for i in range(S - 1)] if up else [(i + 1, i) for i in range(S - 1)]
    return lax.ppermute(x, self.axis_name, perm)

  def _broadcast_from(self, x, device: int):
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

  def _local_flags(self, k: int):
    s = lax.axis_index(self.axis_name)
    g = s * self.layers_per_stage + k
    return tuple(t[g] for t in self._tables())

  @staticmethod
  def _take(theta, k):
    return jax.tree.map(lambda a: a[k], theta)

  def _run_layers(self, theta, z):
    """This device's K layers on one micro-batch: their inputs, outputs and the input
    of the next device."""
    lay = self.layout
    zins, zouts = [], []
    for k in range(self.layers_per_stage):
      is_last = self._local_flags(k)[1]
      zins.append(z)
      out = _layer_fn(lay.activation, is_last)(self._take(theta, k), z)
      zouts.append(out)
      z = _fit(out, lay.in_width)
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
        return (self._shift(send, up=True), bufs), None

      init = (jnp.zeros((b, lay.in_width), dtype), (zin, zout, top))
      (_, (zin, zout, top)), _ = lax.scan(tick, init, jnp.arange(M + S - 1))
      return zin, zout, self._broadcast_from(top, S - 1)

    layer = P(self.axis_name)
    fn = self._shard_map(
      device,
      in_specs=(self._specs(theta, layer), P()),
      out_specs=(layer if store else None, layer if store else None, P()),
    )
    return fn(theta, xin)

  def backward(self, theta, zin, g_top, *, grads: bool = False, bottom: bool = False):
    """GPipe backward pass (reverse order of stages): ``M + S - 1`` ticks.

    Args:
      theta: stacked layers; zin: their inputs from :meth:`forward`.
      g_top: ``(M, b, out_width)`` gradient of ``h`` in the last layer's outputs.
      grads: also accumulate the parameter gradients over micro-batches.
      bottom: also return the gradient in the pipeline input (``(M, b, in_width)``, on
        every device).

    Returns:
      ``(gz, grads or None, bottom or None)``; ``gz`` holds every layer's output
      gradient :math:`g_z^{(i)}`.
    """
    lay, S, K, M = self.layout, self.num_stages, self.layers_per_stage, self.num_microbatches
    b = g_top.shape[1]

    def device(theta, zin, g_top):
      s = lax.axis_index(self.axis_name)
      dtype = g_top.dtype
      gz = jnp.zeros((K, M, b, lay.out_width), dtype)
      acc = jax.tree.map(jnp.zeros_like, theta) if grads else None
      gbot = jnp.zeros((M, b, lay.in_width), dtype)

      def tick(carry, t):
        recv, state = carry
        j = t - (S - 1 - s)
        valid = (j >= 0) & (j < M)
        jc = jnp.clip(j, 0, M - 1)
        g_in = jnp.where(s == S - 1, g_top[jc], recv)

        def work(state):
          gz, acc, gbot = state
          g = g_in
          for k in reversed(range(K)):
            gz = gz.at[k, jc].set(g)
            fn = _layer_fn(lay.activation, self._local_flags(k)[1])
            th = self._take(theta, k)
            if grads:
              _, vjp = jax.vjp(fn, th, zin[k, jc])
              g_th, g_prev = vjp(g)
              acc = jax.tree.map(lambda a, u, k=k: a.at[k].add(u), acc, g_th)
            else:
              _, vjp = jax.vjp(lambda z, fn=fn, th=th: fn(th, z), zin[k, jc])
              (g_prev,) = vjp(g)
            g = _fit(g_prev, lay.out_width)
          return (gz, acc, gbot.at[jc].set(g_prev)), g

        state, send = lax.cond(valid, work, lambda st: (st, jnp.zeros_like(g_in)), state)
        return (self._shift(send, up=False), state), None

      init = (jnp.zeros((b, lay.out_width), dtype), (gz, acc, gbot))
      (_, (gz, acc, gbot)), _ = lax.scan(tick, init, jnp.arange(M + S - 1))
      return gz, acc, self._broadcast_from(gbot, 0) if bottom else None

    layer = P(self.axis_name)
    fn = self._shard_map(
      device,
      in_specs=(self._specs(theta, layer), layer, P()),
      out_specs=(layer, self._specs(theta, layer) if grads else None, P() if bottom else None),
    )
    return fn(theta, zin, g_top)

  def curvature(self, theta, zin, zout, gz, c_top):
    """The curvature chain of Appendix A over the stacked layers, top-down.

    Device ``s`` works in round ``S - 1 - s`` on the full batch of its layers and sends
    the constant of its lowest layer to device ``s - 1`` (one scalar ``ppermute`` per
    round).

    Args:
      theta, zin, zout, gz: stacked layers and buffers from the passes.
      c_top: :math:`c_{i+1}` of the top stacked layer (``L / B`` or the tail's).

    Returns:
      ``(c_next, c_bottom)``: ``(L,)`` constants :math:`c_{i+1}` each layer uses, and the
      constant computed by the lowest stacked layer (for a head outside the pipeline).
    """
    lay, S, K = self.layout, self.num_stages, self.layers_per_stage
    cfg = self.cfg

    def device(theta, zin, zout, gz, c_top):
      s = lax.axis_index(self.axis_name)
      full = lambda a: a.reshape(a.shape[0], -1, a.shape[-1])  # (K, M, b, w) -> (K, B, w)
      zin, zout, gz = full(zin), full(zout), full(gz)

      def chain(c):
        cs = [None] * K
        for k in reversed(range(K)):
          cs[k] = c
          is_first, is_last, w_in, _, stage = self._local_flags(k)
          fn = _layer_fn(lay.activation, is_last)

          def compute(c, k=k, fn=fn, w_in=w_in, stage=stage):
            v0 = _z_start_vector(cfg.seed + stage, zin[k], w_in)
            return _stage_curvature(fn, self._take(theta, k), zin[k], gz[k], zout[k], c, v0, cfg)

          # the first network stage needs no c_1
          c = lax.cond(is_first, lambda c: c, compute, c) if k == 0 else compute(c)
        return jnp.stack(cs), c

      def round_(r, carry):
        recv, cs, c_out = carry
        c_in = jnp.where(s == S - 1, c_top, recv)
        cs, c_out = lax.cond(s == S - 1 - r, chain, lambda _: (cs, c_out), c_in)
        return self._shift(c_out, up=False), cs, c_out

      init = (jnp.zeros_like(c_top), jnp.zeros((K,), c_top.dtype), jnp.zeros_like(c_top))
      _, cs, c_out = lax.fori_loop(0, S, round_, init)
      return cs, self._broadcast_from(c_out, 0)

    layer = P(self.axis_name)
    fn = self._shard_map(
      device,
      in_specs=(self._specs(theta, layer), layer, layer, layer, P()),
      out_specs=(layer, P()),
    )
    return fn(theta, zin, zout, gz, c_top)

  def solve(self, theta, zin, zout, gz, c_next, step0):
    """Every device minimises the local losses of its layers (no collectives).

    Returns:
      A :class:`~altmin_jax.sm.surrogate.StageSolve` of stacked ``(L, ...)`` arrays.
    """
    lay, K = self.layout, self.layers_per_stage
    cfg = self.cfg

    def device(theta, zin, zout, gz, c_next, step0):
      full = lambda a: a.reshape(a.shape[0], -1, a.shape[-1])
      flags = [self._local_flags(k)[:4] for k in range(K)]
      flags = tuple(jnp.stack(f) for f in zip(*flags))

      def one(th, z_prev, z_out, g_out, c, step, *flag):
        return _solve_layer(cfg, lay.activation, th, z_prev, g_out, z_out, c, step, flag)

      # Algorithm 1, "do in parallel": N inner steps on each local loss (Prop. 1, eq. (1)).
      return jax.vmap(one)(theta, full(zin), full(zout), full(gz), c_next, step0, *flags)

    layer = P(self.axis_name)
    specs = sur.StageSolve(self._specs(theta, layer), layer, layer, layer)
    fn = self._shard_map(
      device,
      in_specs=(self._specs(theta, layer), layer, layer, layer, layer, layer),
      out_specs=specs,
    )
    return fn(theta, zin, zout, gz, c_next, step0)

  def communication(self, xin, g_top):
    """The pipeline's point-to-point traffic alone: the ``2 (M + S - 1)`` activation
    and gradient ``ppermute``s of one forward and backward pass, no compute (for the
    benchmark)."""
    S, M = self.num_stages, self.num_microbatches

    def device(xin, g_top):
      def fwd(recv, t):
        return self._shift(recv + xin[t % M], up=True), None

      def bwd(recv, t):
        return self._shift(recv + g_top[t % M], up=False), None

      a, _ = lax.scan(fwd, jnp.zeros_like(xin[0]), jnp.arange(M + S - 1))
      g, _ = lax.scan(bwd, jnp.zeros_like(g_top[0]), jnp.arange(M + S - 1))
      return jnp.reshape(jnp.sum(a) + jnp.sum(g), (1,))

    return self._shard_map(device, in_specs=(P(), P()), out_specs=P(self.axis_name))(xin, g_top)


# ------------------------------------------------------------ shared plumbing


def _check_mesh(mesh: Any, axis_name: str, layout: PipelineLayout) -> int:
  if not isinstance(mesh, Mesh):
    raise ValueError(f"mesh must be a jax.sharding.Mesh (jax.make_mesh), got mesh={mesh!r}")
  if axis_name not in mesh.axis_names:
    raise ValueError(
      f"mesh has no axis axis_name={axis_name!r}; its axes are {tuple(mesh.axis_names)}"
    )
  S = mesh.shape[axis_name]
  if layout.num_layers % S:
    raise ValueError(
      f"{layout.num_layers} pipelined layers cannot be split evenly over {S} devices "
      f"(mesh axis {axis_name}={S}; boundary={layout.boundary!r})"
    )
  return S


class _Prepared(NamedTuple):
  x: Array  # (B, w_0) in the compute dtype, replicated
  y: Array
  stacked: PipelineParams  # the params as given, stacked
  theta: dict  # stacked layers in compute precision, sharded
  head: PyTree  # compute precision, replicated (or None)
  tail: PyTree
  dtype: Any
  user_params: PyTree  # the params as given (None when they came stacked)


def _check_stacked(stacked: PipelineParams, layout: PipelineLayout) -> None:
  want = (layout.num_layers, layout.in_width, layout.out_width)
  if tuple(jnp.shape(stacked.kernel)) != want:
    raise ValueError(
      f"stacked kernel has shape {tuple(jnp.shape(stacked.kernel))}, expected {want} "
      f"(stack_params(net, params, boundary={layout.boundary!r}))"
    )
  if (stacked.head is None) != (layout.boundary == "pad"):
    raise ValueError(f"params were stacked for another boundary than {layout.boundary!r}")


def _prepare(pipe: Pipeline, net: LayeredNetwork, params, batch, method: str) -> _Prepared:
  """Validates params and batch (static shapes) and casts to the compute precision."""
  if params is None:
    raise ValueError(f"{method} needs params: call update(grads, state, params, batch=(x, y))")
  x, y = ll.unpack_batch(net, batch)
  M = pipe.num_microbatches
  if x.shape[0] % M:
    raise ValueError(
      f"batch x has shape {tuple(x.shape)}: its size must be a multiple of num_microbatches={M}"
    )
  lay = pipe.layout
  if isinstance(params, PipelineParams):
    stacked, user = params, None
  else:
    user = as_arrays(params)
    stacked = stack_params(net, user, boundary=lay.boundary)
  _check_stacked(stacked, lay)
  dtype = ll.compute_dtype((stacked.kernel, stacked.head, stacked.tail))
  theta = pipe.place(_layer_theta(stacked.kernel, stacked.bias), P(pipe.axis_name))
  theta = ll.cast_tree(theta, dtype)
  head = pipe.place(ll.cast_tree(stacked.head, dtype), P())
  tail = pipe.place(ll.cast_tree(stacked.tail, dtype), P())
  x = pipe.place(x.astype(dtype), P())
  y = pipe.place(y, P())
  return _Prepared(x, y, stacked, theta, head, tail, dtype, user)


def _updates(net, prep: _Prepared, new_theta: dict, new_head, new_tail):
  """``new_params - params`` in the structure and dtypes the params came in."""
  diff = lambda n, p: (n.astype(p.dtype) - p).astype(p.dtype)
  s = prep.stacked
  upd = PipelineParams(
    kernel=diff(new_theta["kernel"], s.kernel),
    bias=None if s.bias is None else diff(new_theta["bias"], s.bias),
    head=None if s.head is None else jax.tree.map(diff, new_head, s.head),
    tail=None if s.tail is None else jax.tree.map(diff, new_tail, s.tail),
  )
  if prep.user_params is None:
    return upd
  new = PipelineParams(new_theta["kernel"], new_theta.get("bias"), new_head, new_tail)
  new_user = unstack_params(net, new, like=prep.user_params)
  return jax.tree.map(diff, new_user, prep.user_params)


def _microbatches(a: Array, M: int) -> Array:
  return a.reshape(M, a.shape[0] // M, *a.shape[1:])


def _flat(a: Array) -> Array:
  """``(M, b, w)`` -> ``(B, w)``."""
  return a.reshape(-1, a.shape[-1])


def _to_replicated(pipe: Pipeline, tree):
  return pipe.place(tree, P())


class _Forward(NamedTuple):
  value: Array
  zin: Array | None
  zout: Array | None
  z_head: Array | None  # z^(1) (boundary="outside")
  z_below_tail: Array | None  # z^(m-1) (boundary="outside")
  logits: Array
  g_logits: Array  # dh/dlogits
  g_top: Array  # (M, b, out_width) gradient in the stacked top layer's outputs
  tail_vjp: Any


def _forward_and_loss(pipe: Pipeline, net, loss, prep: _Prepared, theta, head, tail, store=True):
  """Head (outside), pipelined forward, tail (outside) and the loss on the full batch."""
  lay, M = pipe.layout, pipe.num_microbatches
  x, y = prep.x, prep.y
  z_head = None
  if lay.boundary == "outside":
    z_head = ll.stage_function(net, 1)(head, x)
    xin = z_head
  else:
    xin = x
  xin = _microbatches(_fit(xin, lay.in_width), M)
  zin, zout, top = pipe.forward(theta, xin, store=store)
  top = _flat(top)
  tail_vjp = z_below = None
  if lay.boundary == "outside":
    z_below = top[:, : lay.widths[-2]]
    logits, tail_vjp = jax.vjp(ll.stage_function(net, net.num_stages), tail, z_below)
  else:
    logits = top[:, : lay.widths[-1]]
  # eq. (2): g_z^(m) = grad l(z_t^(m)) for the batch-mean loss.
  value, g_logits = jax.value_and_grad(lambda o: ll.batch_mean_loss(loss, o, y))(logits)
  g_top = g_logits if tail_vjp is None else tail_vjp(g_logits)[1]
  g_top = _microbatches(_fit(g_top, lay.out_width), M)
  return _Forward(value, zin, zout, z_head, z_below, logits, g_logits, g_top, tail_vjp)


# ------------------------------------------------------------------- SM step


# keyword arguments of surrogate_minimization that configure the SM iteration
SM_DEFAULTS = dict(
  inner_steps=10,
  solver="cg",
  delta=1e-2,
  power_iterations=10,
  loss_smoothness=None,
  curvature="full",
  curvature_tol=0.0,
  init_step=1.0,
  armijo_c=solvers.ARMIJO_C,
  backtrack_factor=solvers.BACKTRACK_FACTOR,
  max_backtracks=solvers.MAX_BACKTRACKS,
  fallback_step=solvers.FALLBACK_STEP,
  step_growth=2.0,
  max_step=1e3,
  seed=0,
)
_LINE_SEARCH = (
  "init_step",
  "armijo_c",
  "backtrack_factor",
  "max_backtracks",
  "fallback_step",
  "step_growth",
  "max_step",
)


def _sm_config(net, loss, options: dict) -> sur.SMConfig:
  """The validated :class:`~altmin_jax.sm.surrogate.SMConfig` (same checks as
  :func:`~altmin_jax.sm.surrogate_minimization`) from :data:`SM_DEFAULTS` overridden by
  ``options``."""
  unknown = sorted(set(options) - set(SM_DEFAULTS))
  if unknown:
    raise ValueError(f"unknown SM options {unknown}; known: {sorted(SM_DEFAULTS)}")
  kw = {**SM_DEFAULTS, **options}
  net = ll.check_network(net)
  loss = ll.check_loss(loss)
  if kw["solver"] not in sur.SOLVERS:
    raise ValueError(f"solver must be one of {sur.SOLVERS}, got solver={kw['solver']!r}")
  if kw["curvature"] not in sur.CURVATURES:
    raise ValueError(
      f"curvature must be one of {sur.CURVATURES}, got curvature={kw['curvature']!r}"
    )
  return sur.SMConfig(
    net=net,
    loss=loss,
    inner_steps=solvers.check_int("inner_steps", kw["inner_steps"], 1),
    solver=kw["solver"],
    delta=solvers.check_positive("delta", kw["delta"]),
    power_iterations=solvers.check_int("power_iterations", kw["power_iterations"], 1),
    loss_smoothness=ll.resolve_loss_smoothness(loss, kw["loss_smoothness"]),
    curvature=kw["curvature"],
    line_search=solvers.line_search_config(**{k: kw[k] for k in _LINE_SEARCH}),
    curvature_tol=solvers.check_positive("curvature_tol", kw["curvature_tol"], allow_zero=True),
    seed=solvers.check_int("seed", kw["seed"], 0),
    vmap_stages=True,
  )


def _check_microbatches(num_microbatches: Any) -> int:
  return solvers.check_int("num_microbatches", num_microbatches, 1)


def make_pipeline(
  net: LayeredNetwork,
  mesh: Mesh,
  *,
  num_microbatches: int,
  boundary: str = "pad",
  axis_name: str = AXIS,
  cfg: sur.SMConfig | None = None,
) -> Pipeline:
  """A validated :class:`Pipeline` (its phases are what the factories compose)."""
  layout = pipeline_layout(net, boundary=boundary)
  _check_mesh(mesh, axis_name, layout)
  return Pipeline(layout, mesh, axis_name, _check_microbatches(num_microbatches), cfg)


def sm_pipeline(
  net: LayeredNetwork,
  loss: ll.Loss = losses_lib.softmax_cross_entropy,
  *,
  mesh: Mesh,
  num_microbatches: int = 1,
  boundary: str = "pad",
  axis_name: str = AXIS,
  **options,
) -> Pipeline:
  """The :class:`Pipeline` of a pipelined SM step (its phases, for benchmarks and tests).

  ``options`` are :func:`~altmin_jax.sm.surrogate_minimization`'s keyword arguments
  (``inner_steps``, ``delta``, ... ; defaults in :data:`SM_DEFAULTS`), validated the
  same way; the other arguments are those of :func:`pipelined_surrogate_minimization`.
  """
  cfg = _sm_config(net, loss, options)
  return make_pipeline(
    net, mesh, num_microbatches=num_microbatches, boundary=boundary, axis_name=axis_name, cfg=cfg
  )


def _sm_iteration(pipe: Pipeline, net, prep: _Prepared, step_size: Array):
  """One pipelined SM iteration. Returns ``(new_theta, new_head, new_tail, value,
  curvature (m,), (local_loss, inner_iterations, step_size))``, the per-stage arrays
  over all ``m`` network stages."""
  cfg, lay = pipe.cfg, pipe.layout
  m = net.num_stages
  theta, head, tail = prep.theta, prep.head, prep.tail
  outside = lay.boundary == "outside"
  # Algorithm 1, "access the gradient oracle": one forward and one backward pass.
  fw = _forward_and_loss(pipe, net, cfg.loss, prep, theta, head, tail)
  gz, _, g_bottom = pipe.backward(theta, fw.zin, fw.g_top, bottom=outside)
  c_last = jnp.asarray(cfg.loss_smoothness / prep.x.shape[0], prep.dtype)  # c_{m+1} = L / B
  step_size = _to_replicated(pipe, step_size)
  rep = lambda a: _to_replicated(pipe, a)
  if not outside:
    c_next, _ = pipe.curvature(theta, fw.zin, fw.zout, gz, c_last)
    body = pipe.solve(theta, fw.zin, fw.zout, gz, c_next, pipe.place(step_size, P(pipe.axis_name)))
    per_stage = (rep(body.model), rep(body.iterations), rep(body.step))
    return optax.tree.add(theta, body.d), None, None, fw.value, rep(c_next), per_stage

  # Appendix A for the tail (c_m from c_{m+1}), the stacked layers (c_{m-1}, ..., c_2),
  # then the head's and tail's local losses on the full batch, replicated.
  fn_1, fn_m = ll.stage_function(net, 1), ll.stage_function(net, m)
  v0 = ll.start_vector(cfg.seed + m, fw.z_below_tail)
  c_m = _stage_curvature(fn_m, tail, fw.z_below_tail, fw.g_logits, fw.logits, c_last, v0, cfg)
  c_next, c_2 = pipe.curvature(theta, fw.zin, fw.zout, gz, c_m)
  steps = pipe.place(step_size[1:-1], P(pipe.axis_name))
  body = pipe.solve(theta, fw.zin, fw.zout, gz, c_next, steps)
  seed = cfg.seed + 1000  # as surrogate_minimization's local solves
  g_head = _flat(g_bottom)[:, : lay.widths[1]]
  head_solve = sur.solve_local_loss(
    cfg, fn_1, True, prep.x, head, g_head, fw.z_head, c_2, step_size[0], seed=seed
  )
  tail_solve = sur.solve_local_loss(
    cfg,
    fn_m,
    False,
    fw.z_below_tail,
    tail,
    fw.g_logits,
    fw.logits,
    c_last,
    step_size[-1],
    seed=seed,
  )
  cat = lambda h, b, t: jnp.concatenate([jnp.reshape(h, (1,)), rep(b), jnp.reshape(t, (1,))])
  per_stage = tuple(
    cat(getattr(head_solve, f), getattr(body, f), getattr(tail_solve, f))
    for f in ("model", "iterations", "step")
  )
  return (
    optax.tree.add(theta, body.d),
    optax.tree.add(head, head_solve.d),
    optax.tree.add(tail, tail_solve.d),
    fw.value,
    cat(c_2, c_next, c_last),
    per_stage,
  )


def pipelined_surrogate_minimization(
  net: LayeredNetwork,
  loss: ll.Loss = losses_lib.softmax_cross_entropy,
  *,
  mesh: Mesh,
  num_microbatches: int = 1,
  boundary: str = "pad",
  axis_name: str = AXIS,
  inner_steps: int = 10,
  solver: str = "cg",
  delta: float = 1e-2,
  power_iterations: int = 10,
  loss_smoothness: float | None = None,
  curvature: str = "full",
  curvature_tol: float = 0.0,
  init_step: float = 1.0,
  armijo_c: float = solvers.ARMIJO_C,
  backtrack_factor: float = solvers.BACKTRACK_FACTOR,
  max_backtracks: int = solvers.MAX_BACKTRACKS,
  fallback_step: float = solvers.FALLBACK_STEP,
  step_growth: float = 2.0,
  max_step: float = 1e3,
  seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""Surrogate minimization with the layers pipelined over the devices of a mesh axis.

  The same iteration as :func:`~altmin_jax.sm.surrogate_minimization` (SM paper,
  Algorithm 1 with :math:`\rho = 0`, Proposition 1, Appendix A), executed as in the
  paper's Figure 1(b): a GPipe forward and backward pass over ``num_microbatches``
  micro-batches gives every device the stage outputs :math:`z_t^{(i)}` and output
  gradients :math:`g_z^{(i)} = \partial h/\partial z^{(i)}` of its layers; the constants

  .. math:: c_{m+1} = L/B,\qquad c_i = \max(\lambda_{\max}(\nabla^2_{zz}\psi_i), 0) + \delta,
     \qquad \psi_i(z,\theta) = \langle g_z^{(i)}, f_i(z,\theta) - z_t^{(i)}\rangle
     + \tfrac{c_{i+1}}{2}\|f_i(z,\theta) - z_t^{(i)}\|^2

  pass down the pipeline; then every device minimises each of its local losses
  :math:`\mathcal L_i(\theta) = \langle \partial h/\partial\theta_i, \theta - \theta_t
  \rangle + \frac12\|\theta - \theta_t\|^2_{\mathbb H_i}` with ``inner_steps`` = N steps
  of CG or Armijo GD, with no communication. See :mod:`altmin_jax.sm.pipeline` for the
  schedule and :func:`stack_params` for why zero padding changes no result.

  Args:
    net: a network of dense stages (:func:`~altmin_jax.networks.mlp`).
    loss: per-sample loss; the objective is its batch mean.
    mesh: a mesh with axis ``axis_name`` of ``S`` devices (``jax.make_mesh((S,),
      ('stage',))``, :func:`pipeline_mesh`); the stacked layers must split evenly.
    num_microbatches: M, GPipe micro-batches per batch (the batch size must be a
      multiple).
    boundary: ``"pad"`` (all stages pipelined, zero-padded to common widths) or
      ``"outside"`` (first and last stage run on the full batch outside the pipeline).
    axis_name: the mesh axis of the pipeline stages.
    inner_steps, solver, delta, power_iterations, loss_smoothness, curvature,
      curvature_tol, init_step, armijo_c, backtrack_factor, max_backtracks,
      fallback_step, step_growth, max_step, seed: as in
      :func:`~altmin_jax.sm.surrogate_minimization`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state
    :class:`~altmin_jax.sm.SMState`. ``update(grads, state, params, *, batch=(x, y))``
    ignores ``grads`` and takes either :class:`PipelineParams` (from
    :func:`stack_params`, the layer axis sharded over the mesh: the efficient form,
    updates come back the same way) or the network's own params (stacked and unstacked
    inside the step; place them with :func:`replicate_on` so that every step sees the
    placement the previous one returned, with no recompilation).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import altmin_jax as amj
    >>> from altmin_jax.sm import pipeline
    >>> net = amj.networks.mlp([4, 6, 6, 3], activation=jnp.tanh)
    >>> mesh = pipeline.pipeline_mesh(1)
    >>> tx = pipeline.pipelined_surrogate_minimization(net, mesh=mesh, num_microbatches=2)
    >>> params = pipeline.stack_params(net, net.init(jax.random.key(0)), mesh=mesh)
    >>> x, y = jnp.ones((6, 4)), jnp.array([0, 1, 2, 0, 1, 2])
    >>> updates, state = tx.update(None, tx.init(params), params, batch=(x, y))
    >>> params = optax.apply_updates(params, updates)
    >>> state.curvature.shape
    (3,)
  """
  pipe = sm_pipeline(
    net,
    loss,
    mesh=mesh,
    num_microbatches=num_microbatches,
    boundary=boundary,
    axis_name=axis_name,
    inner_steps=inner_steps,
    solver=solver,
    delta=delta,
    power_iterations=power_iterations,
    loss_smoothness=loss_smoothness,
    curvature=curvature,
    curvature_tol=curvature_tol,
    init_step=init_step,
    armijo_c=armijo_c,
    backtrack_factor=backtrack_factor,
    max_backtracks=max_backtracks,
    fallback_step=fallback_step,
    step_growth=step_growth,
    max_step=max_step,
    seed=seed,
  )
  cfg = pipe.cfg
  m = net.num_stages

  def init_fn(params):
    del params
    # replicated on the mesh, where the step puts it (no recompilation on step two)
    return replicate_on(
      mesh,
      SMState(
        count=np.zeros([], np.int32),
        loss=np.zeros([], np.float32),
        curvature=np.zeros([m], np.float32),
        local_loss=np.zeros([m], np.float32),
        inner_iterations=np.zeros([m], np.int32),
        step_size=np.full([m], cfg.line_search.init_step, np.float32),
      ),
    )

  @jax.jit
  def iterate(params, x, y, state):
    prep = _prepare(pipe, net, params, (x, y), "pipelined surrogate minimization")
    new_theta, new_head, new_tail, value, curv, (model, iters, steps) = _sm_iteration(
      pipe, net, prep, state.step_size.astype(prep.dtype)
    )
    new_state = SMState(
      count=optax.safe_int32_increment(state.count),
      loss=value.astype(jnp.float32),
      curvature=curv.astype(jnp.float32),
      local_loss=model.astype(jnp.float32),
      inner_iterations=iters.astype(jnp.int32),
      step_size=steps.astype(jnp.float32),
    )
    return _updates(net, prep, new_theta, new_head, new_tail), new_state

  def update_fn(updates, state, params=None, *, batch, **extra_args):
    del updates, extra_args  # SM needs no gradients; unknown extra args are ignored.
    if params is None:
      raise ValueError("pipelined SM needs params: call update(grads, state, params, batch=...)")
    x, y = ll.unpack_batch(net, batch)  # shape checks before tracing the step
    return iterate(params, x, y, state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ------------------------------------------------------------------- GD baseline


def _gd_gradients(pipe: Pipeline, net, loss, prep: _Prepared):
  """The batch-mean loss and its gradient ``(theta, head, tail)`` from one GPipe
  forward and backward pass (gradients accumulated over micro-batches)."""
  lay = pipe.layout
  outside = lay.boundary == "outside"
  fw = _forward_and_loss(pipe, net, loss, prep, prep.theta, prep.head, prep.tail)
  _, g_theta, g_bottom = pipe.backward(prep.theta, fw.zin, fw.g_top, grads=True, bottom=outside)
  g_head = g_tail = None
  if outside:
    g_tail = fw.tail_vjp(fw.g_logits)[0]
    g_z1 = _flat(g_bottom)[:, : lay.widths[1]]
    _, head_vjp = jax.vjp(lambda th: ll.stage_function(net, 1)(th, prep.x), prep.head)
    (g_head,) = head_vjp(g_z1)
  return fw.value, (g_theta, g_head, g_tail)


def pipelined_gradient_descent(
  net: LayeredNetwork,
  loss: ll.Loss = losses_lib.softmax_cross_entropy,
  *,
  mesh: Mesh,
  num_microbatches: int = 1,
  boundary: str = "pad",
  axis_name: str = AXIS,
  learning_rate: float | None = None,
  init_step: float = 1.0,
  armijo_c: float = solvers.ARMIJO_C,
  backtrack_factor: float = solvers.BACKTRACK_FACTOR,
  max_backtracks: int = solvers.MAX_BACKTRACKS,
  fallback_step: float = solvers.FALLBACK_STEP,
  step_growth: float = 2.0,
  max_step: float = 1e3,
) -> optax.GradientTransformationExtraArgs:
  r"""GPipe + GD: one gradient update per pipelined forward and backward pass.

  The SM paper's baseline in the setting of its Figure 1(a). One GPipe forward and
  backward pass over ``num_microbatches`` micro-batches accumulates :math:`\nabla
  h(\theta_t)` (each device for its own layers), then

  .. math:: \theta_{t+1} = \theta_t - \alpha_t \nabla h(\theta_t)

  with :math:`\alpha_t` = ``learning_rate`` (then the step equals ``optax.sgd`` on the
  gradient of the batch-mean loss), or, when ``learning_rate`` is ``None``, chosen by
  the Armijo search of :func:`~altmin_jax.sm.gd_armijo` (:math:`h(\theta_t -
  \alpha\nabla h) \le h(\theta_t) - c\,\alpha\|\nabla h\|^2`), where every trial step
  is one more pipelined forward pass and the step equals ``gd_armijo``'s.

  Args:
    net, mesh, num_microbatches, boundary, axis_name: as in
      :func:`pipelined_surrogate_minimization`.
    loss: per-sample loss; the objective is its batch mean.
    learning_rate: a fixed step, or ``None`` for the Armijo search.
    init_step, armijo_c, backtrack_factor, max_backtracks, fallback_step, step_growth,
      max_step: the Armijo search (as in :func:`~altmin_jax.sm.gd_armijo`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state
    :class:`~altmin_jax.sm.GDArmijoState`; ``update`` computes its own gradient (pass
    ``None``) and takes :class:`PipelineParams` or the network's params.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import altmin_jax as amj
    >>> from altmin_jax.sm import pipeline
    >>> net = amj.networks.mlp([4, 6, 3], activation=jnp.tanh)
    >>> tx = pipeline.pipelined_gradient_descent(net, mesh=pipeline.pipeline_mesh(1))
    >>> params = net.init(jax.random.key(0))
    >>> x, y = jnp.ones((6, 4)), jnp.array([0, 1, 2, 0, 1, 2])
    >>> updates, state = tx.update(None, tx.init(params), params, batch=(x, y))
    >>> int(state.count)
    1
  """
  net = ll.check_network(net)
  loss = ll.check_loss(loss)
  search = solvers.line_search_config(
    init_step=init_step,
    armijo_c=armijo_c,
    backtrack_factor=backtrack_factor,
    max_backtracks=max_backtracks,
    fallback_step=fallback_step,
    step_growth=step_growth,
    max_step=max_step,
  )
  if learning_rate is not None:
    learning_rate = solvers.check_positive("learning_rate", learning_rate)
  pipe = make_pipeline(
    net, mesh, num_microbatches=num_microbatches, boundary=boundary, axis_name=axis_name
  )

  def init_fn(params):
    del params
    first = search.init_step if learning_rate is None else learning_rate
    return replicate_on(
      mesh,
      GDArmijoState(
        count=np.zeros([], np.int32),
        loss=np.zeros([], np.float32),
        step_size=np.asarray(first, np.float32),
        failed_count=np.zeros([], np.int32),
      ),
    )

  @jax.jit
  def iterate(params, x, y, state):
    prep = _prepare(pipe, net, params, (x, y), "pipelined gradient descent")
    value, grads = _gd_gradients(pipe, net, loss, prep)
    point = (prep.theta, prep.head, prep.tail)
    if learning_rate is None:

      def value_at(a):
        th, hd, tl = optax.tree.add_scale(point, -a, grads)
        return _forward_and_loss(pipe, net, loss, prep, th, hd, tl, store=False).value

      # ||grad h||^2 (a sum of squares: a dot product over the sharded layer axis of an
      # explicit-axis mesh has no unambiguous output sharding)
      gg = sum(jnp.sum(jnp.real(g * g)) for g in jax.tree.leaves(grads))
      step0 = jnp.asarray(state.step_size, jnp.float32)
      ls = solvers.armijo_backtracking(value_at, value, -gg, step0, search)
      step, next_step = ls.step.astype(gg.dtype), solvers.next_init_step(ls, search)
      failed = (~ls.accepted).astype(jnp.int32)
    else:
      step, next_step, failed = learning_rate, state.step_size, jnp.zeros([], jnp.int32)
    new_theta, new_head, new_tail = optax.tree.add_scale(point, -step, grads)
    new_state = GDArmijoState(
      count=optax.safe_int32_increment(state.count),
      loss=value.astype(jnp.float32),
      step_size=jnp.asarray(next_step, jnp.float32),
      failed_count=state.failed_count + failed,
    )
    return _updates(net, prep, new_theta, new_head, new_tail), new_state

  def update_fn(updates, state, params=None, *, batch, **extra_args):
    del updates, extra_args
    if params is None:
      raise ValueError("pipelined GD needs params: call update(grads, state, params, batch=...)")
    x, y = ll.unpack_batch(net, batch)
    return iterate(params, x, y, state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ------------------------------------------------------------- phase functions


def phase_functions(
  pipe: Pipeline, net: LayeredNetwork, params: PyTree, batch: Any, *, learning_rate: float = 0.1
) -> dict[str, tuple[Callable, tuple]]:
  """Each phase of a pipelined SM and GD step as a jitted function with concrete inputs.

  For benchmarks and tests (``pipe`` from :func:`sm_pipeline`; with
  ``boundary="outside"`` the phases cover the stacked layers and the trial includes the
  head and tail). Returns ``{name: (fn, args)}`` for ``forward`` (GPipe forward pass
  storing every layer's inputs and outputs), ``backward`` (SM's backward pass: output
  gradients only), ``curvature`` (the chain), ``solve`` (local solves, no
  collectives), ``gd_backward`` (backward pass accumulating parameter gradients),
  ``gd_update`` (``theta - learning_rate * grad``), ``trial_forward`` (one forward pass
  and the loss: an Armijo trial) and ``communication`` (the passes' ``ppermute``\\ s
  alone); ``fn(*args)`` runs the phase.
  """
  if pipe.cfg is None:
    raise ValueError("phase_functions needs an SM pipeline (sm_pipeline)")
  net = ll.check_network(net)
  prep = _prepare(pipe, net, params, batch, "phase_functions")
  cfg, lay, M, dtype = pipe.cfg, pipe.layout, pipe.num_microbatches, prep.dtype
  out = {}

  def add(name, fn, *args):
    fn = jax.jit(fn)
    out[name] = (fn, args)
    return fn(*args)

  def loss_pass(x, y, theta, head, tail):
    p = _Prepared(x, y, None, theta, head, tail, dtype, None)
    return _forward_and_loss(pipe, net, cfg.loss, p, theta, head, tail, store=False)

  @jax.jit
  def inputs(x, y, theta, head, tail):
    """The pipeline input, the top gradient and the top layer's c_{i+1} (as in a step)."""
    fw = loss_pass(x, y, theta, head, tail)
    c_top = jnp.asarray(cfg.loss_smoothness / x.shape[0], dtype)
    if lay.boundary == "pad":
      return _microbatches(_fit(x, lay.in_width), M), fw.g_top, c_top
    z_head = ll.stage_function(net, 1)(head, x)
    v0 = ll.start_vector(cfg.seed + net.num_stages, fw.z_below_tail)
    fn_m = ll.stage_function(net, net.num_stages)
    c_top = _stage_curvature(fn_m, tail, fw.z_below_tail, fw.g_logits, fw.logits, c_top, v0, cfg)
    return _microbatches(_fit(z_head, lay.in_width), M), fw.g_top, c_top

  xin, g_top, c_top = inputs(prep.x, prep.y, prep.theta, prep.head, prep.tail)
  zin, zout, _ = add("forward", lambda th, xi: pipe.forward(th, xi), prep.theta, xin)
  gz, _, _ = add("backward", lambda th, zi, g: pipe.backward(th, zi, g), prep.theta, zin, g_top)
  c_next, _ = add("curvature", pipe.curvature, prep.theta, zin, zout, gz, c_top)
  steps = pipe.place(jnp.full((lay.num_layers,), 1.0, dtype), P(pipe.axis_name))
  add("solve", pipe.solve, prep.theta, zin, zout, gz, c_next, steps)
  _, grads, _ = add(
    "gd_backward", lambda th, zi, g: pipe.backward(th, zi, g, grads=True), prep.theta, zin, g_top
  )
  add("gd_update", lambda th, g: optax.tree.add_scale(th, -learning_rate, g), prep.theta, grads)
  trial = lambda x, y, th, hd, tl: loss_pass(x, y, th, hd, tl).value
  add("trial_forward", trial, prep.x, prep.y, prep.theta, prep.head, prep.tail)
  add("communication", pipe.communication, xin, g_top)
  return out
