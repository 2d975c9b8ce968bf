"""Conformance cases of the AM family on a small MLP: online AM-Adam (plain, recorded
codes, Nesterov and Adam code steps), AM-mem (CG and exact solves), and the offline
methods (AM-Adam, AM-mem and Taylor ADMM on a fixed sample).

Each case trains the 6-8-8-3 tanh (ReLU for Taylor ADMM) network of
``helpers.small_mlp`` on the teacher problem of ``helpers.teacher_classification``:
minibatches of 16 from 64 samples online, the same 32 samples every step offline.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from conformance import Case, Problem
from helpers import small_mlp, teacher_classification

import altmin_jax as amj


def _am_problem(
  factory: Callable, *, offline: bool = False, activation=jnp.tanh, **kwargs
) -> Callable:
  def make(dtype) -> Problem:
    net = small_mlp(dtype, activation=activation)
    params = net.init(jax.random.key(0))
    x, y = teacher_classification(0, n=32 if offline else 64)
    x = x.astype(dtype)

    if offline:
      extra = lambda step: {"batch": (x, y)}
    else:
      batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
      extra = lambda step: {"batch": batches[step % len(batches)]}

    def loss(p, args):
      return jnp.mean(amj.losses.softmax_cross_entropy(net.apply(p, x), y).astype(jnp.float32))

    bx, by = extra(0)["batch"]
    tx = factory(net, **({"num_samples": 32} if offline else {}), **kwargs)
    return Problem(
      tx=tx,
      params=params,
      extra_args=extra,
      loss=loss,
      bad_extra_args={"batch": (jnp.ones((bx.shape[0], 5), dtype), by)},
      nonfinite_extra_args={"batch": (bx.at[0, 0].set(jnp.nan), by)},
      num_classes=3,
    )

  return make


def _net():
  return small_mlp()


AM_KW = dict(code_steps=3, code_lr=0.03, mu=0.05)

CASES: list[Case] = [
  Case(
    "am_adam",
    _am_problem(amj.am_adam, weight_optimizer=optax.adam(3e-2), **AM_KW),
    bad_hyperparams=[
      (lambda: amj.am_adam(_net(), code_steps=-1), "code_steps=-1"),
      (lambda: amj.am_adam(_net(), code_lr=-0.5), "code_lr=-0.5"),
      (lambda: amj.am_adam(_net(), mu=0.0), "mu=0.0"),
      (lambda: amj.am_adam(_net(), weight_steps=0), "weight_steps=0"),
      (lambda: amj.am_adam(_net(), code_optimizer="lbfgs"), "code_optimizer='lbfgs'"),
      (lambda: amj.am_adam(_net(), mu=amj.mu_schedule(init=-1.0)), "init=-1.0"),
      (lambda: amj.am_adam(_net(), weight_optimizer="adam"), "weight_optimizer='adam'"),
    ],
  ),
  Case(
    "am_adam_record_codes",
    _am_problem(amj.am_adam, weight_optimizer=optax.adam(3e-2), record_codes=16, **AM_KW),
    bad_hyperparams=[(lambda: amj.am_adam(_net(), record_codes=0), "record_codes=0")],
  ),
  Case(
    "am_adam_nesterov_codes",
    _am_problem(
      amj.am_adam,
      weight_optimizer=optax.adam(3e-2),
      code_optimizer="nesterov",
      code_lr=0.01,
      code_steps=3,
      mu=0.05,
    ),
  ),
  Case(
    "am_adam_adam_codes_no_prox_long_loops",
    _am_problem(
      amj.am_adam,
      weight_optimizer=optax.adam(3e-2),
      code_optimizer="adam",
      code_lr=0.01,
      code_steps=10,
      weight_steps=9,
      code_proximal=False,
      mu=0.05,
    ),
  ),
  Case(
    "am_mem",
    _am_problem(amj.am_mem, output_optimizer=optax.adam(3e-2), **AM_KW),
    bad_hyperparams=[
      (lambda: amj.am_mem(_net(), sweeps=0), "sweeps=0"),
      (lambda: amj.am_mem(_net(), solver="cg"), "solver='cg'"),
      (lambda: amj.am_mem(_net(), forgetting=1.5), "forgetting=1.5"),
      (lambda: amj.am_mem(_net(), ridge=-1.0), "ridge=-1.0"),
    ],
  ),
  Case(
    "am_mem_exact",
    _am_problem(amj.am_mem, output_optimizer=optax.adam(3e-2), solver="exact", **AM_KW),
  ),
  Case(
    "am_adam_offline",
    _am_problem(amj.am_adam_offline, offline=True, weight_optimizer=optax.adam(3e-2), **AM_KW),
    bad_hyperparams=[
      (lambda: amj.am_adam_offline(_net(), num_samples=0), "num_samples=0"),
    ],
  ),
  Case(
    "taylor_admm",
    _am_problem(
      amj.am.taylor_admm, offline=True, activation=jax.nn.relu, beta=1.0, gamma=10.0, warm_start=2
    ),
    bad_hyperparams=[
      (lambda: amj.am.taylor_admm(_net(), num_samples=10), "ReLU or identity"),
      (
        lambda: amj.am.taylor_admm(small_mlp(activation=jax.nn.relu), num_samples=10, beta=-2.0),
        "beta=-2.0",
      ),
    ],
  ),
  Case(
    "am_mem_offline",
    _am_problem(amj.am_mem_offline, offline=True, output_optimizer=optax.adam(3e-2), **AM_KW),
    bad_hyperparams=[
      (lambda: amj.am_mem_offline(_net(), num_samples=10, forgetting=-0.1), "forgetting=-0.1"),
    ],
  ),
]
