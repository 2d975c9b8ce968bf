"""The networks the experiment runners build, by name.

Configs name a network with plain data (``config.activation``, ``config.architecture``,
``config.model``); the runners read those fields and call these builders:

* :func:`mlp`: a fully connected net of :func:`altmin_jax.networks.mlp` (``am_fc``,
  ``sm_tables``, and ``distributed``'s ``mlp`` model);
* :func:`am_architecture`: LeNet-5, the Elman RNN and the binary sign/tanh MLP of the AM
  paper's section 4 (``am_arch``);
* :func:`classifier`: ``(init, apply)`` of the distributed runner's models, the MLP or the
  Flax CIFAR models :class:`ConvNet7` and :class:`ResNet20` (``distributed``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

import altmin_jax as amj

# the activations the configs offer, by the library's names (networks.ACTIVATIONS)
ACTIVATIONS = {k: amj.networks.ACTIVATIONS[k] for k in ("relu", "tanh", "sigmoid")}
ARCHITECTURES = ("lenet5", "elman_rnn", "binary_mlp")
CLASSIFIERS = ("mlp", "convnet7", "resnet20")


# ------------------------------------------------------------ fully connected


def mlp(
  input_shape: Sequence[int],
  hidden: Sequence[int],
  num_classes: int,
  activation: str = "relu",
) -> amj.networks.LayeredNetwork:
  """``prod(input_shape) - hidden... - num_classes`` with ``ACTIVATIONS[activation]`` between
  the layers (the inputs are flattened images or feature vectors)."""
  sizes = [int(np.prod(input_shape)), *hidden, num_classes]
  return amj.networks.mlp(sizes, activation=ACTIVATIONS[activation])


# -------------------------------------------------- AM paper, section 4 networks


def am_architecture(
  architecture: str,
  input_shape: Sequence[int],
  num_classes: int,
  *,
  hidden: Sequence[int] = (),
  surrogate: str = "ste",
) -> amj.networks.LayeredNetwork | amj.networks.ElmanRNN:
  """One of ``ARCHITECTURES``:

  * ``lenet5``: LeNet-5 on ``(H, W, C)`` images;
  * ``elman_rnn``: the Elman RNN of supplement C.1 with ``hidden == (d,)`` units on
    ``(T, 1)`` pixel sequences;
  * ``binary_mlp``: the sign/tanh MLP on flattened images, with the ``surrogate``
    (``"ste"`` or ``"tanh"``) derivative of the sign.
  """
  if architecture == "lenet5":
    return amj.networks.lenet5(input_shape, num_classes)
  if architecture == "binary_mlp":
    sizes = (input_shape[0], *hidden, num_classes)
    return amj.networks.binary_mlp(sizes, surrogate=surrogate)
  if architecture == "elman_rnn":
    (units,) = hidden
    return amj.networks.elman_rnn(units, seq_len=input_shape[0], num_classes=num_classes)
  raise ValueError(
    f"unknown architecture {architecture!r}; known architectures: {', '.join(ARCHITECTURES)}"
  )


# ------------------------------------------------------- distributed runner


class ConvNet7(nn.Module):
  """A 7-layer CIFAR convnet after the EASGD paper's description (3 convolutions with
  max pooling, a fully connected layer, softmax output); ``width`` scales the channels."""

  width: int = 64
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    for channels, kernel in ((self.width, 5), (2 * self.width, 5), (self.width, 3)):
      x = nn.relu(nn.Conv(channels, (kernel, kernel), padding="SAME")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    x = nn.relu(nn.Dense(4 * self.width)(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.num_classes)(x)


class ResNet20(nn.Module):
  """ResNet-20 for CIFAR (3 stages of 3 basic blocks, 16/32/64 channels). Batch
  normalization always uses the current batch's statistics (no running averages), so
  the stacked workers carry no extra model state."""

  width: int = 16
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    def norm(h):
      return nn.BatchNorm(use_running_average=False, momentum=0.9)(h)

    x = nn.relu(norm(nn.Conv(self.width, (3, 3), use_bias=False)(x)))
    for stage, channels in enumerate((self.width, 2 * self.width, 4 * self.width)):
      for block in range(3):
        stride = 2 if stage > 0 and block == 0 else 1
        y = nn.relu(norm(nn.Conv(channels, (3, 3), (stride, stride), use_bias=False)(x)))
        y = norm(nn.Conv(channels, (3, 3), use_bias=False)(y))
        if x.shape != y.shape:
          x = norm(nn.Conv(channels, (1, 1), (stride, stride), use_bias=False)(x))
        x = nn.relu(x + y)
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


def classifier(
  name: str,
  input_shape: Sequence[int],
  num_classes: int,
  *,
  hidden: Sequence[int] = (100, 100),
  width: int = 16,
) -> tuple[Callable, Callable]:
  """``(init(key) -> params, apply(params, x) -> logits)`` of one of ``CLASSIFIERS``.

  ``mlp``: a ReLU :func:`mlp` with ``hidden`` units that flattens its inputs;
  ``convnet7`` / ``resnet20``: :class:`ConvNet7` / :class:`ResNet20` with ``width`` on
  ``(H, W, C)`` images (ResNet-20's batch statistics are recomputed on every call).
  """
  if name == "mlp":
    net = mlp(input_shape, hidden, num_classes)
    return net.init, lambda p, x: net.apply(p, x.reshape(x.shape[0], -1))
  modules = {"convnet7": ConvNet7, "resnet20": ResNet20}
  if name not in modules:
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(CLASSIFIERS)}")
  module = modules[name](width=width, num_classes=num_classes)
  dummy = jnp.zeros((1, *input_shape), jnp.float32)

  def init(key):
    return module.init(key, dummy)["params"]

  def apply(params, x):
    if name == "resnet20":
      return module.apply({"params": params}, x, mutable=["batch_stats"])[0]
    return module.apply({"params": params}, x)

  return init, apply
