"""Conformance cases of online AM beyond MLPs: LeNet-5 (conv stages), the binary sign
network and the Elman RNN (issue 4).

Each case trains a miniature of its architecture on minibatches of a teacher problem:
LeNet-5 on 12x12 images with 2 and 3 channels, the binary net 6-10-8-3 (tanh'
surrogate; the straight-through one is tested in ``test_am_binary.py``), the RNN with 8
hidden units and 2 outputs per step on sequences of 6 steps.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from conformance import Case, Problem
from helpers import teacher_classification

import altmin_jax as amj
from altmin_jax.am import am_adam_rnn


def _lenet(dtype=jnp.float32):
  return amj.networks.lenet5((12, 12, 1), 3, features=(2, 3), hidden=(8, 6), dtype=dtype)


def _binary(dtype=jnp.float32, surrogate="tanh"):
  return amj.networks.binary_mlp((6, 10, 8, 3), surrogate=surrogate, dtype=dtype)


def _rnn(dtype=jnp.float32):
  return amj.networks.elman_rnn(8, seq_len=6, output_size=2, num_classes=3, dtype=dtype)


def _problem(build_net: Callable, factory: Callable, *, shape, bad_shape, **kwargs) -> Callable:
  """A method on a network whose per-sample input shape is ``shape``; the teacher's 6-d
  inputs are tiled to fill it."""

  def make(dtype) -> Problem:
    net = build_net(dtype)
    params = net.init(jax.random.key(0))
    x, y = teacher_classification(0, n=64)
    size = 1
    for s in shape:
      size *= s
    x = jnp.tile(x, (1, -(-size // 6)))[:, :size].reshape(64, *shape).astype(dtype)
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]

    def loss(p, args):
      return jnp.mean(amj.losses.softmax_cross_entropy(net.apply(p, x), y).astype(jnp.float32))

    bx, by = batches[0]
    return Problem(
      tx=factory(net, **kwargs),
      params=params,
      extra_args=lambda step: {"batch": batches[step % len(batches)]},
      loss=loss,
      bad_extra_args={"batch": (jnp.ones((16, *bad_shape), dtype), by)},
      nonfinite_extra_args={"batch": (bx.at[(0,) * bx.ndim].set(jnp.nan), by)},
      num_classes=3,
    )

  return make


AM_KW = dict(code_steps=3, code_lr=0.03, mu=0.05)

CASES: list[Case] = [
  Case(
    "am_adam_lenet5",
    _problem(
      _lenet,
      amj.am_adam,
      shape=(12, 12, 1),
      bad_shape=(12, 12, 2),
      weight_optimizer=optax.adam(3e-2),
      code_steps=1,
      code_lr=0.1,
      mu=0.05,
    ),
    bad_hyperparams=[
      (lambda: amj.networks.lenet5((28, 28)), "input_shape=(28, 28)"),
      (lambda: amj.networks.lenet5(features=(6,)), "features=(6,)"),
      (lambda: amj.networks.lenet5(pool=0), "pool=0"),
      (lambda: amj.networks.lenet5((8, 8, 1)), "does not fit inputs of 4x4"),
      (lambda: amj.networks.conv_stage((8, 8, 1), 4, padding="FULL"), "padding='FULL'"),
    ],
  ),
  Case(
    "am_adam_binary_tanh",
    _problem(
      _binary,
      amj.am_adam,
      shape=(6,),
      bad_shape=(5,),
      weight_optimizer=optax.adam(3e-2),
      **AM_KW,
    ),
    bad_hyperparams=[
      (lambda: amj.networks.binary_mlp(surrogate="relu"), "surrogate='relu'"),
      (lambda: amj.networks.binary_mlp((784, 10)), "sizes=[784, 10]"),
    ],
  ),
  Case(
    "am_adam_rnn",
    _problem(
      _rnn,
      am_adam_rnn,
      shape=(6, 1),
      bad_shape=(6, 2),
      weight_optimizer=optax.adam(3e-2),
      weight_steps=3,
      code_steps=3,
      code_lr=0.003,
      mu=0.05,
    ),
    bad_hyperparams=[
      (lambda: am_adam_rnn(_rnn(), code_steps=-1), "code_steps=-1"),
      (lambda: am_adam_rnn(_rnn(), weight_steps=0), "weight_steps=0"),
      (lambda: am_adam_rnn(_rnn(), code_lr=-0.5), "code_lr=-0.5"),
      (lambda: am_adam_rnn(_rnn(), mu=0.0), "mu=0.0"),
      (lambda: am_adam_rnn(_rnn(), code_optimizer="lbfgs"), "code_optimizer='lbfgs'"),
      (lambda: am_adam_rnn(_rnn(), weight_optimizer="adam"), "weight_optimizer='adam'"),
      (lambda: am_adam_rnn(_rnn(), weight_optimizer=[optax.sgd(0.1)] * 2), "2 entries"),
      (lambda: am_adam_rnn(amj.networks.mlp([4, 3])), "rnn=LayeredNetwork"),
      (lambda: amj.networks.elman_rnn(0), "hidden=0"),
    ],
  ),
]
