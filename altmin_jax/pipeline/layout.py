r"""The layout of a pipeline: which dense stages are stacked on the ``'stage'`` mesh axis,
their common (zero-padded) widths, and the conversion of params to and from that form.

The dense stages of a :class:`~altmin_jax.networks.LayeredNetwork` are stacked on a
leading *layer* axis (:class:`PipelineParams`, :func:`stack_params`), zero-padded to common
widths, and that axis is sharded ``P('stage')`` over the mesh axis ``'stage'``
(:func:`pipeline_mesh`): with ``L`` stacked layers each of the ``S`` devices holds
``K = L / S`` consecutive layers. Stages whose widths differ from the rest (the input
layer reading 784 pixels, the output layer writing 10 logits) are either **zero-padded**
into the stack (``boundary="pad"``, all layers pipelined) or **kept outside the pipeline**
(``boundary="outside"``: the first and last stage run on the full batch before / after the
pipelined middle layers, replicated on every device). Padding provably changes no result
(see :func:`stack_params`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from altmin_jax.core import checks, meshes
from altmin_jax.core.meshes import STAGE_AXIS as AXIS
from altmin_jax.core.meshes import replicate_on
from altmin_jax.core.types import Array, PyTree
from altmin_jax.networks import LayeredNetwork, as_arrays
from altmin_jax.networks.layered import dense_kernel_bias, with_dense_kernel_bias
from altmin_jax.networks.stages import StageFn, check_network

BOUNDARIES = ("pad", "outside")

__all__ = [
  "AXIS",
  "BOUNDARIES",
  "PipelineLayout",
  "PipelineParams",
  "fit",
  "layer_fn",
  "layer_theta",
  "pipeline_layout",
  "pipeline_mesh",
  "place_params",
  "replicate_on",
  "stack_params",
  "unstack_params",
]


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
    # evaluated now even when the layout is built inside jit / eval_shape (a traced value
    # cannot be read back)
    with jax.ensure_compile_time_eval():
      return float(activation(jnp.zeros((), jnp.float32)))
  except Exception:  # any failure means "unknown"
    return None


def pipeline_layout(net: LayeredNetwork, *, boundary: str = "pad") -> PipelineLayout:
  """The :class:`PipelineLayout` of a network of dense stages.

  Raises ``ValueError`` unless every stage is dense with 1-D inputs and outputs, all
  stacked hidden layers share one activation and, where a hidden layer is zero-padded,
  that activation maps 0 to 0 (a padded unit must stay exactly zero).
  """
  net = check_network(net)
  checks.check_choice("boundary", boundary, BOUNDARIES)
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


def fit(a: Array, width: int) -> Array:
  """Zero-pads or truncates the last axis of ``a`` to ``width`` (its own transpose)."""
  have = a.shape[-1]
  if have == width:
    return a
  if have > width:
    return a[..., :width]
  return jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, width - have)])


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
    >>> from altmin_jax.pipeline import stack_params, unstack_params
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


def place_params(stacked: PipelineParams, mesh: Mesh, *, axis_name: str = AXIS):
  """Places :class:`PipelineParams` on ``mesh``: layer axis sharded over ``axis_name``,
  head and tail replicated (from the same full value on every process)."""
  return PipelineParams(
    kernel=meshes.put_global(stacked.kernel, mesh, axis_name),
    bias=None if stacked.bias is None else meshes.put_global(stacked.bias, mesh, axis_name),
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
  kernel = meshes.replicated(stacked.kernel)
  bias = None if stacked.bias is None else meshes.replicated(stacked.bias)
  like_stages = None if like is None else net.stage_params(as_arrays(like))
  stages = []
  if boundary == "outside":
    stages.append(jax.tree.map(meshes.replicated, stacked.head))
  for l, (w_in, w_out) in enumerate(zip(lay.layer_in_widths, lay.layer_out_widths)):
    k = kernel[l, :w_in, :w_out]
    b = None if bias is None else bias[l, :w_out]
    if like_stages is None:
      stages.append({"kernel": k} if b is None else {"kernel": k, "bias": b})
    else:
      stages.append(with_dense_kernel_bias(like_stages[lay.first + l], k, b))
  if boundary == "outside":
    stages.append(jax.tree.map(meshes.replicated, stacked.tail))
  if like is None:
    return tuple(stages)
  return net.merge_stage_params(stages, as_arrays(like))


def pipeline_mesh(
  num_stages: int | None = None, *, axis_name: str = AXIS, devices: Sequence | None = None
) -> Mesh:
  """A 1-D mesh with the explicit axis ``axis_name`` over the first ``num_stages`` (all by
  default) of ``devices`` (``jax.devices()`` by default: across processes after
  ``jax.distributed.initialize``): ``jax.make_mesh((S,), (axis_name,), devices=devices[:S])``."""
  return meshes.make_mesh(num_stages, axis_name, explicit=True, what="num_stages", devices=devices)


def layer_theta(kernel: Array, bias: Array | None) -> dict:
  """One stacked layer's params as a dict (leaf order bias, kernel as in ``mlp``)."""
  return {"kernel": kernel} if bias is None else {"kernel": kernel, "bias": bias}


def layer_fn(activation: Callable[[Array], Array], is_last) -> StageFn:
  """``f_i(theta, z)`` of a stacked layer: the activation unless it is the logits
  (``is_last`` may be traced: devices hold different layers)."""

  def fn(theta, z):
    c = z @ theta["kernel"]
    if "bias" in theta:
      c = c + theta["bias"]
    return jnp.where(is_last, c, activation(c))

  return fn
