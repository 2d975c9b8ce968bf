"""Conformance cases of the surrogate-minimization family (SM and its baselines).

Each case trains a small tanh MLP on minibatches of a teacher problem. The network has
two stages (one hidden layer): every part of SM (curvature chain, coupling term,
local solves) is exercised while the many compilations of the suite stay cheap.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from conformance import Case, Problem
from helpers import small_mlp, teacher_classification

import altmin_jax as amj
from altmin_jax.numerics import ArmijoSearch
from altmin_jax.sm import cg_block, ddg, gd_armijo, sso, surrogate_minimization

SIZES = (6, 8, 3)


def _net(dtype=jnp.float32):
  return small_mlp(dtype, sizes=SIZES)


def _sm_problem(factory: Callable, **kwargs) -> Callable:
  def make(dtype) -> Problem:
    net = _net(dtype)
    params = net.init(jax.random.key(0))
    x, y = teacher_classification(0, n=64)
    x = x.astype(dtype)
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]

    def loss(p, args):
      return jnp.mean(amj.losses.softmax_cross_entropy(net.apply(p, x), y).astype(jnp.float32))

    bx, by = batches[0]
    return Problem(
      tx=factory(net, **kwargs),
      params=params,
      extra_args=lambda step: {"batch": batches[step % len(batches)]},
      loss=loss,
      bad_extra_args={"batch": (jnp.ones((bx.shape[0], 5), dtype), by)},
      nonfinite_extra_args={"batch": (bx.at[0, 0].set(jnp.nan), by)},
      num_classes=3,
    )

  return make


def _custom_loss(logits, labels):
  return amj.losses.softmax_cross_entropy(logits, labels)


CASES: list[Case] = [
  Case(
    "sm_cg",
    _sm_problem(surrogate_minimization, inner_steps=5, delta=0.1, power_iterations=5),
    bad_hyperparams=[
      (lambda: surrogate_minimization(_net(), inner_steps=0), "inner_steps=0"),
      (lambda: surrogate_minimization(_net(), solver="lbfgs"), "solver='lbfgs'"),
      (lambda: surrogate_minimization(_net(), delta=0.0), "delta=0.0"),
      (lambda: surrogate_minimization(_net(), delta=float("nan")), "delta=nan"),
      (lambda: surrogate_minimization(_net(), power_iterations=0), "power_iterations=0"),
      (lambda: surrogate_minimization(_net(), curvature="diag"), "curvature='diag'"),
      (lambda: surrogate_minimization(_net(), loss_smoothness=-1.0), "loss_smoothness=-1.0"),
      (lambda: surrogate_minimization(_net(), _custom_loss), "loss_smoothness=None"),
      (
        lambda: surrogate_minimization(_net(), line_search=ArmijoSearch(armijo_c=1.5)),
        "armijo_c=1.5",
      ),
      (
        lambda: surrogate_minimization(_net(), line_search=ArmijoSearch(backtrack_factor=1.0)),
        "backtrack_factor=1.0",
      ),
      (
        lambda: surrogate_minimization(_net(), line_search=ArmijoSearch(max_backtracks=-1)),
        "max_backtracks=-1",
      ),
      (lambda: surrogate_minimization("net"), "net='net'"),
    ],
  ),
  Case(
    "sm_armijo",
    _sm_problem(
      surrogate_minimization, inner_steps=5, solver="armijo", delta=1e-2, power_iterations=5
    ),
    bad_hyperparams=[
      (
        lambda: surrogate_minimization(
          _net(), solver="armijo", line_search=ArmijoSearch(init_step=0.0)
        ),
        "init_step=0.0",
      ),
      (
        lambda: surrogate_minimization(_net(), line_search=ArmijoSearch(step_growth=0.5)),
        "step_growth=0.5",
      ),
      (
        lambda: surrogate_minimization(_net(), line_search=ArmijoSearch(fallback_step=-1.0)),
        "fallback_step=-1.0",
      ),
    ],
  ),
  Case(
    "gd_armijo",
    _sm_problem(gd_armijo, line_search=ArmijoSearch(step_growth=1.0)),
    bad_hyperparams=[
      (lambda: gd_armijo(_net(), line_search=ArmijoSearch(armijo_c=0.0)), "armijo_c=0.0"),
      (lambda: gd_armijo(_net(), line_search=ArmijoSearch(max_step=0.5)), "max_step=0.5"),
    ],
  ),
  Case(
    "cg_block",
    _sm_problem(cg_block, inner_steps=5, damping=1.0),
    bad_hyperparams=[
      (lambda: cg_block(_net(), inner_steps=0), "inner_steps=0"),
      (lambda: cg_block(_net(), damping=-1.0), "damping=-1.0"),
    ],
  ),
  Case(
    "sso",
    _sm_problem(sso, inner_steps=5),
    bad_hyperparams=[
      (lambda: sso(_net(), inner_steps=0), "inner_steps=0"),
      (lambda: sso(_net(), eta=0.0), "eta=0.0"),
    ],
  ),
  Case(
    "ddg",
    _sm_problem(ddg, learning_rate=0.5, num_modules=2),
    bad_hyperparams=[
      (lambda: ddg(_net(), num_modules=3), "num_modules=3"),
      (lambda: ddg(_net(), num_modules=0), "num_modules=0"),
      (lambda: ddg(_net(), module_sizes=(1, 2)), "module_sizes=(1, 2)"),
      (lambda: ddg(_net(), momentum=1.0), "momentum=1.0"),
      (lambda: ddg(_net(), learning_rate=-0.1), "learning_rate=-0.1"),
    ],
  ),
]
