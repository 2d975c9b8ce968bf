"""Builders for the layered networks used in the papers' experiments."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from altmin_jax.networks.layered import LayeredNetwork, Stage, flatten_batch, identity

Initializer = Callable[..., jax.Array]

# activations that ``mlp`` takes by name, as Flax's and optax's users write them
ACTIVATIONS = {
  "relu": jax.nn.relu,
  "tanh": jnp.tanh,
  "sigmoid": jax.nn.sigmoid,
  "softplus": jax.nn.softplus,
  "gelu": jax.nn.gelu,
  "silu": jax.nn.silu,
  "elu": jax.nn.elu,
  "identity": identity,
}


def activation_fn(activation) -> Callable[[jax.Array], jax.Array]:
  """``activation`` itself when callable, else the function of its name in
  :data:`ACTIVATIONS`; anything else raises a ``ValueError`` naming the known names."""
  if callable(activation):
    return activation
  if isinstance(activation, str) and activation in ACTIVATIONS:
    return ACTIVATIONS[activation]
  raise ValueError(
    f"activation must be a function or one of {sorted(ACTIVATIONS)}, got {activation!r}"
  )


def dense_stage(
  fan_in: int,
  fan_out: int,
  activation: Callable[[jax.Array], jax.Array] = identity,
  *,
  kernel_init: Initializer | None = None,
  use_bias: bool = True,
  dtype=jnp.float32,
  name: str = "",
) -> Stage:
  """A fully connected stage ``c = flatten(a) @ kernel + bias``.

  Args:
    fan_in: number of input features (the flattened size of ``a``).
    fan_out: number of output units.
    activation: ``sigma`` applied to the code to feed the next stage.
    kernel_init: a ``jax.nn.initializers`` initializer (default LeCun normal, as
      ``flax.nnx.Linear``).
    use_bias: whether the stage has a bias vector (initialised to zero).
    dtype: parameter dtype.
    name: label for reports.
  """
  for label, v in (("fan_in", fan_in), ("fan_out", fan_out)):
    if not isinstance(v, int) or v < 1:
      raise ValueError(f"{label} must be a positive integer, got {v!r}")
  kernel_init = kernel_init or jax.nn.initializers.lecun_normal()

  def init(key):
    params = {"kernel": kernel_init(key, (fan_in, fan_out), dtype)}
    if use_bias:
      params["bias"] = jnp.zeros((fan_out,), dtype)
    return params

  def apply(params, a):
    c = flatten_batch(a) @ params["kernel"]
    return c + params["bias"] if "bias" in params else c

  return Stage(
    init=init,
    apply=apply,
    output_shape=(fan_out,),
    activation=activation,
    dense=True,
    name=name or f"dense_{fan_in}x{fan_out}",
  )


def mlp(
  sizes: Sequence[int],
  activation: Callable[[jax.Array], jax.Array] | Sequence[Callable] = jax.nn.relu,
  *,
  kernel_init: Initializer | None = None,
  use_bias: bool = True,
  dtype=jnp.float32,
) -> LayeredNetwork:
  """A fully connected network ``sizes[0] -> ... -> sizes[-1]`` as a layered network.

  The network has ``len(sizes) - 1`` stages and ``len(sizes) - 2`` codes. Inputs must be
  batches of vectors of size ``sizes[0]``: flatten images first.

  Args:
    sizes: layer widths, input and output included (``[784, 100, 100, 10]``).
    activation: one activation for every hidden layer, or one per hidden layer: functions
      or names from :data:`ACTIVATIONS` (``"relu"``, ``"tanh"``, ...).
    kernel_init: kernel initializer (default LeCun normal).
    use_bias: whether dense stages have biases.
    dtype: parameter dtype (``jnp.float32`` or ``jnp.bfloat16``).

  Returns:
    A :class:`LayeredNetwork` whose params are a tuple of ``{'kernel', 'bias'}`` dicts.

  Example:
    >>> import jax, altmin_jax as amj
    >>> net = amj.networks.mlp([784, 100, 100, 10], activation=jax.nn.relu)
    >>> net.num_codes
    2
  """
  sizes = list(sizes)
  if len(sizes) < 2:
    raise ValueError(f"mlp needs at least input and output sizes, got sizes={sizes!r}")
  num_hidden = len(sizes) - 2
  if callable(activation) or isinstance(activation, str):
    activations = [activation_fn(activation)] * num_hidden
  else:
    activations = [activation_fn(a) for a in activation]
    if len(activations) != num_hidden:
      raise ValueError(f"got {len(activations)} activations for {num_hidden} hidden layers")
  activations.append(identity)
  stages = tuple(
    dense_stage(
      sizes[i],
      sizes[i + 1],
      activations[i],
      kernel_init=kernel_init,
      use_bias=use_bias,
      dtype=dtype,
      name=f"dense_{i + 1}",
    )
    for i in range(len(sizes) - 1)
  )
  return LayeredNetwork(stages=stages, input_shape=(sizes[0],))
