r"""The Elman RNN of the AM paper's supplement C.1 (sequential MNIST).

At each time step ``t = 1..T`` the recurrent unit reads ``x^t`` (``m`` features) and
produces a hidden state and an output (eqs. 14-15), and a final classifier reads the
rectified output sequence (eq. 16):

.. math::
   c^t &= U x^t + W h^{t-1} + b \qquad (\text{eq. 17}), \qquad h^t = \tanh(c^t), \quad h^0 = 0 \\
   z^t &= V h^t \qquad (\text{eq. 15}) \\
   \mathrm{logits} &= C\, \mathrm{ReLU}([z^1; \dots; z^T]) + c_0 \qquad (\text{eq. 16})

Sequential MNIST feeds the 784 pixels of an image one at a time (``T = 784``, ``m = 1``)
and classifies after the last one. Alternating minimization
(:func:`altmin_jax.am.am_adam_rnn`) treats the pre-activations ``c^t`` of every time
step and the output sequence ``z`` as auxiliary variables (codes).

Parameters use the row-vector (Flax) convention, ``c^t = x^t U + h^{t-1} W + b`` with
``U (m, d)``, ``W (d, d)``, ``V (d, m_out)``, the transposes of the paper's matrices:
``{"recurrent": {"U", "W", "b"}, "readout": {"V"}, "classifier": {"kernel", "bias"}}``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Params = Any


@dataclasses.dataclass(frozen=True, eq=False)
class ElmanRNN:
  """An Elman RNN classifier of fixed-length sequences (supplement C.1).

  Attributes:
    hidden: ``d``, hidden units.
    seq_len: ``T``, time steps per sequence.
    input_size: ``m``, features per time step (1 for pixel-by-pixel MNIST).
    output_size: features of each output ``z^t`` (the paper's ``m``).
    num_classes: classifier outputs.
    activation: the hidden nonlinearity (``tanh``).
    output_activation: applied to the output sequence before the classifier (``ReLU``).
    dtype: parameter dtype.
  """

  hidden: int
  seq_len: int
  input_size: int = 1
  output_size: int = 1
  num_classes: int = 10
  activation: Callable[[Array], Array] = jnp.tanh
  output_activation: Callable[[Array], Array] = jax.nn.relu
  dtype: Any = jnp.float32

  def __post_init__(self):
    for name in ("hidden", "seq_len", "input_size", "output_size", "num_classes"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")

  # ----------------------------------------------------------------- structure
  @property
  def input_shape(self) -> tuple[int, int]:
    """Per-sample input shape ``(T, m)``."""
    return (self.seq_len, self.input_size)

  @property
  def output_shape(self) -> tuple[int]:
    return (self.num_classes,)

  @property
  def code_shapes(self) -> tuple[tuple[int, int], tuple[int, int]]:
    """Per-sample shapes of the two code sets: ``c`` ``(T, d)`` and ``z`` ``(T, m_out)``."""
    return ((self.seq_len, self.hidden), (self.seq_len, self.output_size))

  def init(self, key: Array) -> Params:
    """Initial params: ``U, W, b, V`` uniform in ``+-1/sqrt(d)`` (PyTorch's RNN default),
    classifier LeCun normal with a zero bias."""
    d, m, mo, T = self.hidden, self.input_size, self.output_size, self.seq_len
    bound = 1.0 / math.sqrt(d)
    k = jax.random.split(key, 5)
    uniform = lambda key, shape: jax.random.uniform(key, shape, self.dtype, -bound, bound)
    return {
      "recurrent": {
        "U": uniform(k[0], (m, d)),
        "W": uniform(k[1], (d, d)),
        "b": uniform(k[2], (d,)),
      },
      "readout": {"V": uniform(k[3], (d, mo))},
      "classifier": {
        "kernel": jax.nn.initializers.lecun_normal()(k[4], (T * mo, self.num_classes), self.dtype),
        "bias": jnp.zeros((self.num_classes,), self.dtype),
      },
    }

  def check_input(self, x: Array, what: str = "x") -> None:
    """Raises ``ValueError`` unless ``x`` is a batch of ``(T, m)`` sequences."""
    shape = tuple(x.shape)
    if shape[1:] != self.input_shape:
      raise ValueError(
        f"{what} has shape {shape}; the RNN expects a batch of shape "
        f"(batch, {self.seq_len}, {self.input_size}) (batch, time, features)"
      )

  # ------------------------------------------------------------------ pieces
  def previous_states(self, codes: Array) -> Array:
    """``h^{t-1} = tanh(c^{t-1})`` for ``t = 1..T`` with ``h^0 = 0``, ``(B, T, d)``."""
    h = self.activation(codes)
    return jnp.concatenate([jnp.zeros_like(h[:, :1]), h[:, :-1]], axis=1)

  def step_inputs(self, recurrent: Params, x: Array, h_prev: Array) -> Array:
    """``x U + h_prev W + b`` on arrays with any leading axes."""
    U, W, b = recurrent["U"], recurrent["W"], recurrent["b"]
    return x.astype(U.dtype) @ U + h_prev @ W + b

  def readout(self, readout: Params, codes: Array) -> Array:
    """``z^t = V tanh(c^t)`` (eq. 15) for every ``t``, ``(B, T, m_out)``."""
    return self.activation(codes) @ readout["V"]

  def classify(self, classifier: Params, z: Array) -> Array:
    """``C ReLU(z) + c_0`` on the flattened output sequence (eq. 16), ``(B, classes)``."""
    a = self.output_activation(z).reshape(z.shape[0], -1)
    return a @ classifier["kernel"] + classifier["bias"]

  def encode(self, recurrent: Params, x: Array) -> Array:
    """The codes ``c^1..c^T`` of a forward pass (``lax.scan`` over time), ``(B, T, d)``."""
    U = recurrent["U"]
    h0 = jnp.zeros((x.shape[0], self.hidden), U.dtype)

    def step(h, x_t):
      c = self.step_inputs(recurrent, x_t, h)
      return self.activation(c), c

    _, codes = jax.lax.scan(step, h0, jnp.swapaxes(x, 0, 1))
    return jnp.swapaxes(codes, 0, 1)

  # ------------------------------------------------------------------ forward
  def forward(self, params: Params, x: Array) -> tuple[tuple[Array, Array], Array]:
    """Encodes ``x``: the codes ``(c, z)`` and the logits."""
    codes = self.encode(params["recurrent"], x)
    z = self.readout(params["readout"], codes)
    return (codes, z), self.classify(params["classifier"], z)

  def apply(self, params: Params, x: Array) -> Array:
    """The logits for a batch of sequences ``(B, T, m)``."""
    return self.forward(params, x)[1]

  __call__ = apply


def elman_rnn(
  hidden: int,
  *,
  seq_len: int = 784,
  input_size: int = 1,
  output_size: int = 1,
  num_classes: int = 10,
  dtype=jnp.float32,
) -> ElmanRNN:
  """The Elman RNN of supplement C.1: ``tanh`` hidden units, ReLU on the outputs, a linear
  classifier of the whole output sequence.

  Args:
    hidden: ``d`` (15 and 50 in the paper).
    seq_len: ``T`` (784 for pixel-by-pixel MNIST).
    input_size: features per time step.
    output_size: features of each output ``z^t``.
    num_classes: classifier outputs.
    dtype: parameter dtype.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import altmin_jax as amj
    >>> rnn = amj.networks.elman_rnn(15, seq_len=784)
    >>> params = rnn.init(jax.random.key(0))
    >>> (c, z), logits = rnn.forward(params, jnp.ones((2, 784, 1)))
    >>> c.shape, z.shape, logits.shape
    ((2, 784, 15), (2, 784, 1), (2, 10))
  """
  return ElmanRNN(
    hidden=hidden,
    seq_len=seq_len,
    input_size=input_size,
    output_size=output_size,
    num_classes=num_classes,
    dtype=dtype,
  )


def as_sequences(x: Array, input_size: int = 1) -> Array:
  """Images ``(B, ...)`` as sequences ``(B, T, input_size)`` in row-major pixel order
  (sequential MNIST: ``(B, 784)`` or ``(B, 28, 28, 1)`` -> ``(B, 784, 1)``)."""
  return x.reshape(x.shape[0], -1, input_size)
