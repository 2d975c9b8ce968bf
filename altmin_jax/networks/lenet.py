"""LeNet-5 as a layered network (AM paper, section 4 and supplement B).

The convolutional network of LeCun et al. (1998) on 28x28 MNIST images, with ReLU
activations and max pooling as in the AM paper's experiments::

  x (28, 28, 1) -> conv 5x5, 6 ("SAME")  -> c^1 (28, 28, 6)
    relu -> pool 2x2 -> conv 5x5, 16 ("VALID") -> c^2 (10, 10, 16)
    relu -> pool 2x2 -> flatten (400) -> dense 120 -> c^3 (120,)
    relu -> dense 84 -> c^4 (84,)
    relu -> dense 10 -> logits

The four codes (one per hidden stage, AM paper sec. 2) are the convolution outputs
*before* the activation and the pooling, then the two hidden dense layers'
pre-activations. The activation ``sigma_l`` of every stage is elementwise; the 2x2 max
pooling (and the flattening) belong to the *next* stage's input map, so stage 2 computes
``conv(pool(a^1))`` and stage 3 ``dense(flatten(pool(a^2)))``. The composition
``f_{l+1}(W, sigma_l(c))`` that the code and weight subproblems see is the same either
way; keeping ``sigma`` elementwise keeps the code subproblems' curvature local and lets
a non-differentiable activation's surrogate derivative act entry by entry.

The first convolution pads by 2 ("SAME"), which is the classic LeNet-5 on 32x32
inputs applied to 28x28 MNIST (400 features after the second pooling).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from altmin_jax.networks.builders import dense_stage
from altmin_jax.networks.layered import LayeredNetwork, Stage, identity

Array = jax.Array
Initializer = Callable[..., Array]


def max_pool(a: Array, window: int = 2) -> Array:
  """Non-overlapping ``window x window`` max pooling of ``(B, H, W, C)`` ("VALID": a
  trailing row or column that does not fill a window is dropped)."""
  if window == 1:
    return a
  b, h, w, c = a.shape
  hh, ww = h // window, w // window
  a = a[:, : hh * window, : ww * window]
  return jnp.max(a.reshape(b, hh, window, ww, window, c), axis=(2, 4))


def conv_output_size(size: int, kernel: int, padding: str) -> int:
  """Spatial size after a stride-1 convolution (``"SAME"`` or ``"VALID"``)."""
  return size if padding == "SAME" else size - kernel + 1


def conv_stage(
  in_shape: Sequence[int],
  features: int,
  kernel_size: int = 5,
  activation: Callable[[Array], Array] = identity,
  *,
  padding: str = "VALID",
  input_map: Callable[[Array], Array] = identity,
  input_map_shape: Sequence[int] | None = None,
  kernel_init: Initializer | None = None,
  use_bias: bool = True,
  dtype=jnp.float32,
  name: str = "",
) -> Stage:
  """A 2-D convolution stage ``c = conv(input_map(a), kernel) + bias`` (NHWC, stride 1).

  Args:
    in_shape: per-sample shape ``(H, W, C)`` of the stage input ``a`` (before ``input_map``).
    features: output channels.
    kernel_size: square kernel size.
    activation: ``sigma`` applied to the code to feed the next stage.
    padding: ``"SAME"`` or ``"VALID"``.
    input_map: parameter-free map applied to ``a`` first (pooling).
    input_map_shape: per-sample shape after ``input_map`` (default ``in_shape``).
    kernel_init: initializer of the ``(k, k, C, features)`` kernel (default LeCun normal).
    use_bias: whether the stage has a bias (initialised to zero).
    dtype: parameter dtype.
    name: label for reports.
  """
  if padding not in ("SAME", "VALID"):
    raise ValueError(f"padding must be 'SAME' or 'VALID', got padding={padding!r}")
  h, w, c = tuple(input_map_shape or in_shape)
  out_h, out_w = (conv_output_size(s, kernel_size, padding) for s in (h, w))
  if out_h < 1 or out_w < 1:
    raise ValueError(f"a {kernel_size}x{kernel_size} convolution does not fit inputs of {h}x{w}")
  kernel_init = kernel_init or jax.nn.initializers.lecun_normal()

  def init(key):
    params = {"kernel": kernel_init(key, (kernel_size, kernel_size, c, features), dtype)}
    if use_bias:
      params["bias"] = jnp.zeros((features,), dtype)
    return params

  def apply(params, a):
    a = input_map(a)
    kernel = params["kernel"]
    out = jax.lax.conv_general_dilated(
      a.astype(kernel.dtype),
      kernel,
      window_strides=(1, 1),
      padding=padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return out + params["bias"] if "bias" in params else out

  return Stage(
    init=init,
    apply=apply,
    output_shape=(out_h, out_w, features),
    activation=activation,
    dense=False,
    name=name or f"conv_{kernel_size}x{kernel_size}x{features}",
  )


def _pool_then(stage: Stage, pool: int) -> Stage:
  """``stage`` with ``max_pool`` applied to its input first (not dense any more)."""
  inner = stage.apply
  return Stage(
    init=stage.init,
    apply=lambda params, a: inner(params, max_pool(a, pool)),
    output_shape=stage.output_shape,
    activation=stage.activation,
    dense=False,
    name=stage.name,
  )


def lenet5(
  input_shape: Sequence[int] = (28, 28, 1),
  num_classes: int = 10,
  *,
  features: Sequence[int] = (6, 16),
  hidden: Sequence[int] = (120, 84),
  kernel_size: int = 5,
  pool: int = 2,
  first_padding: str = "SAME",
  activation: Callable[[Array], Array] = jax.nn.relu,
  kernel_init: Initializer | None = None,
  dtype=jnp.float32,
) -> LayeredNetwork:
  r"""LeNet-5 as a :class:`LayeredNetwork` with four codes.

  .. math::
     c^1 &= \mathrm{conv}(W^1, x), &
     c^2 &= \mathrm{conv}(W^2, \mathrm{pool}(\sigma(c^1))), \\
     c^3 &= W^3\, \mathrm{flatten}(\mathrm{pool}(\sigma(c^2))), &
     c^4 &= W^4 \sigma(c^3), \qquad \mathrm{logits} = W^5 \sigma(c^4)

  (biases omitted). Codes are pre-activation and pre-pooling; pooling and flattening
  are part of the next stage's input map (see the module docstring).

  Args:
    input_shape: per-sample image shape ``(H, W, C)``.
    num_classes: number of outputs.
    features: channels of the two convolutions.
    hidden: widths of the two hidden dense layers.
    kernel_size: square convolution kernel size.
    pool: max-pooling window (and stride) after each convolution.
    first_padding: padding of the first convolution (``"SAME"`` keeps 28x28).
    activation: ``sigma`` of every hidden stage (elementwise).
    kernel_init: kernel initializer of every stage (default LeCun normal).
    dtype: parameter dtype.

  Returns:
    A :class:`LayeredNetwork` of 5 stages whose params are a tuple of
    ``{'kernel', 'bias'}`` dicts (conv kernels ``(k, k, C_in, C_out)``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import altmin_jax as amj
    >>> net = amj.networks.lenet5()
    >>> codes, logits = net.forward(net.init(jax.random.key(0)), jnp.ones((2, 28, 28, 1)))
    >>> [c.shape for c in codes], logits.shape
    ([(2, 28, 28, 6), (2, 10, 10, 16), (2, 120), (2, 84)], (2, 10))
  """
  input_shape = tuple(int(s) for s in input_shape)
  if len(input_shape) != 3:
    raise ValueError(f"input_shape must be (H, W, C), got input_shape={input_shape!r}")
  if len(features) != 2 or len(hidden) != 2:
    raise ValueError(
      f"LeNet-5 has 2 convolutions and 2 hidden dense layers, got features={tuple(features)!r}, "
      f"hidden={tuple(hidden)!r}"
    )
  if not isinstance(pool, int) or pool < 1:
    raise ValueError(f"pool must be a positive integer, got pool={pool!r}")
  kw = dict(kernel_init=kernel_init, dtype=dtype)
  conv1 = conv_stage(
    input_shape, features[0], kernel_size, activation, padding=first_padding, name="conv1", **kw
  )
  h1, w1, c1 = conv1.output_shape
  pooled1 = (h1 // pool, w1 // pool, c1)
  conv2 = conv_stage(
    conv1.output_shape,
    features[1],
    kernel_size,
    activation,
    padding="VALID",
    input_map=lambda a: max_pool(a, pool),
    input_map_shape=pooled1,
    name="conv2",
    **kw,
  )
  h2, w2, c2 = conv2.output_shape
  flat = (h2 // pool) * (w2 // pool) * c2
  if flat < 1:
    raise ValueError(f"input_shape={input_shape!r} is too small for LeNet-5's two poolings")
  dense1 = _pool_then(dense_stage(flat, hidden[0], activation, name="dense1", **kw), pool)
  dense2 = dense_stage(hidden[0], hidden[1], activation, name="dense2", **kw)
  out = dense_stage(hidden[1], num_classes, identity, name="output", **kw)
  return LayeredNetwork(stages=(conv1, conv2, dense1, dense2, out), input_shape=input_shape)
