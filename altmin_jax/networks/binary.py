r"""Binary (sign) activations with a selectable surrogate derivative, and the binary MLP of
the AM paper's section 4.

The sign function has zero derivative almost everywhere, so neither backprop nor the
code subproblems of alternating minimization can move through it. Here the forward
pass always uses the *true* sign, with values in ``{-1, +1}``,

.. math::
   \mathrm{sign}(x) = \begin{cases} +1 & x > 0 \\ -1 & x \le 0 \end{cases}

(``0`` maps to ``-1``, as in the AM paper's reference code), and only the derivative is
replaced (a ``jax.custom_jvp``), selectable by name:

* ``"ste"``: the straight-through estimator, :math:`\partial\,\mathrm{sign}(x) / \partial x := 1`
  (Bengio et al. 2013; the STE backprop baseline of Lee et al. 2015);
* ``"tanh"``: :math:`1 - \tanh^2(x)`, the derivative of the smooth function sign approximates.

Under alternating minimization nothing is differentiated through a layer's activation
except in the code subproblem of that layer's own code (eq. 5 for ``c^1``:
``mu ||c^2 - f_2(W^2, sign(c))||^2 + mu ||c - c^1_init||^2``): the weight subproblems
see ``sign(c^1)`` as a fixed input. So the surrogate is used exactly there, and the
weights and codes still train. Under backprop (the STE baseline) the surrogate is used
wherever the gradient crosses the sign.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from altmin_jax.networks.builders import Initializer, mlp
from altmin_jax.networks.layered import LayeredNetwork

Array = jax.Array

SURROGATES = ("ste", "tanh")


def _hard_sign(x: Array) -> Array:
  return jnp.where(x > 0, 1, -1).astype(x.dtype)


@jax.custom_jvp
def sign_ste(x: Array) -> Array:
  """``sign(x)`` in ``{-1, +1}`` whose derivative is the straight-through identity."""
  return _hard_sign(x)


@sign_ste.defjvp
def _sign_ste_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  return _hard_sign(x), t


@jax.custom_jvp
def sign_tanh(x: Array) -> Array:
  """``sign(x)`` in ``{-1, +1}`` whose derivative is ``1 - tanh(x)^2``."""
  return _hard_sign(x)


@sign_tanh.defjvp
def _sign_tanh_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  return _hard_sign(x), t * (1 - jnp.square(jnp.tanh(x)))


def sign_activation(surrogate: str = "ste") -> Callable[[Array], Array]:
  """The sign activation whose derivative is the named surrogate (``"ste"`` or ``"tanh"``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import altmin_jax as amj
    >>> sign = amj.networks.sign_activation("tanh")
    >>> sign(jnp.array([-0.5, 0.0, 2.0])).tolist()
    [-1.0, -1.0, 1.0]
    >>> round(float(jax.grad(sign)(0.0)), 3), float(jax.grad(amj.networks.sign_ste)(3.0))
    (1.0, 1.0)
  """
  if surrogate == "ste":
    return sign_ste
  if surrogate == "tanh":
    return sign_tanh
  raise ValueError(f"surrogate must be one of {SURROGATES}, got surrogate={surrogate!r}")


def binary_mlp(
  sizes: Sequence[int] = (784, 500, 500, 10),
  *,
  surrogate: str = "ste",
  kernel_init: Initializer | None = None,
  dtype=jnp.float32,
) -> LayeredNetwork:
  r"""The binary network of the AM paper's section 4 (from Lee et al. 2015, DTP).

  A fully connected network whose first hidden layer uses the (non-differentiable) sign
  and whose other hidden layers use tanh: 784-500-500-10 by default,

  .. math::
     c^1 = W^1 x, \quad c^2 = W^2\, \mathrm{sign}(c^1), \quad
     \mathrm{logits} = W^3 \tanh(c^2)

  (biases omitted). The forward pass uses the true sign; ``surrogate`` selects the
  derivative that code subproblems (AM) or backprop (STE baseline) use through it.

  Args:
    sizes: layer widths, input and output included (at least one hidden layer).
    surrogate: ``"ste"`` (straight-through identity) or ``"tanh"`` (``1 - tanh^2``).
    kernel_init: kernel initializer (default LeCun normal).
    dtype: parameter dtype.

  Returns:
    A :class:`LayeredNetwork` like :func:`~altmin_jax.networks.mlp`'s.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import altmin_jax as amj
    >>> net = amj.networks.binary_mlp((6, 5, 4, 3), surrogate="tanh")
    >>> codes, _ = net.forward(net.init(jax.random.key(0)), jnp.ones((2, 6)))
    >>> sorted(set(net.activation(1)(codes[0]).ravel().tolist()))
    [-1.0, 1.0]
  """
  sizes = list(sizes)
  if len(sizes) < 3:
    raise ValueError(f"binary_mlp needs at least one hidden layer, got sizes={sizes!r}")
  activation = sign_activation(surrogate)
  activations = [activation] + [jnp.tanh] * (len(sizes) - 3)
  return mlp(sizes, activations, kernel_init=kernel_init, dtype=dtype)
