"""Conformance cases of the distributed family (DC-ASGD and EASGD).

The p-worker methods run on P stacked workers of a linear softmax model: ``params`` carry a leading
worker axis and the problem's loss sums the workers' losses on their own batches, so
``jax.grad`` of it gives every worker the gradient at its own copy. The single-worker
baselines (averaged SGD, MVASGD, MSGD) run on plain params. None of them reads a batch
itself (no wrong-feature-size check), but a NaN in the workers' batches reaches their
gradients, so the non-finite checks apply.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from conformance import Case, Problem
from helpers import teacher_classification

import altmin_jax as amj
import altmin_jax.distributed as dist

P = 3  # workers
B = 8  # batch per worker


def _worker_batches(dtype):
  x, y = teacher_classification(1, n=4 * P * B)
  x = x.astype(dtype).reshape(4, P, B, -1)
  y = y.reshape(4, P, B)
  return [(x[i], y[i]) for i in range(4)]


# The methods that can skip a worker (the ``active`` extra arg).
SKIPS_WORKERS = (dist.dc_asgd, dist.dc_asgd_adaptive, dist.async_sgd, dist.mdownpour)


def _problem(factory, *, stacked: bool = True, **kwargs):
  def make(dtype) -> Problem:
    # A linear softmax model: few leaves keep the many compilations of the suite cheap.
    one = {
      "kernel": (0.3 * jax.random.normal(jax.random.key(0), (6, 3))).astype(dtype),
      "bias": jnp.zeros(3, dtype),
    }
    params = dist.replicate(one, P) if stacked else one
    batches = _worker_batches(dtype)

    def worker_loss(p, x, y):
      logits = x @ p["kernel"] + p["bias"]
      return jnp.mean(amj.losses.softmax_cross_entropy(logits, y).astype(jnp.float32))

    def loss(p, args):
      x, y = args["batch"]
      if stacked:
        return jnp.sum(jax.vmap(worker_loss)(p, x, y))
      return worker_loss(p, x.reshape(-1, x.shape[-1]), y.reshape(-1))

    bx, by = batches[0]
    tx = factory(**({"num_workers": P} if stacked else {}), **kwargs)
    return Problem(
      tx=tx,
      params=params,
      extra_args=lambda step: {"batch": batches[step % len(batches)]},
      loss=loss,
      nonfinite_extra_args={"batch": (bx.at[0, 0, 0].set(jnp.nan), by)},
      uses_grads=True,
      num_workers=P if stacked else 1,
      skips_workers=factory in SKIPS_WORKERS,
    )

  return make


def _bad(factory, text, **kwargs):
  return (lambda: factory(**kwargs), text)


CASES: list[Case] = [
  Case(
    "dc_asgd",
    _problem(dist.dc_asgd, learning_rate=0.3, lambda_0=0.04),
    bad_hyperparams=[
      _bad(dist.dc_asgd, "lambda_0=-0.1", learning_rate=0.1, lambda_0=-0.1, num_workers=2),
      _bad(dist.dc_asgd, "num_workers=0", learning_rate=0.1, num_workers=0),
      _bad(dist.dc_asgd, "learning_rate=0.0", learning_rate=0.0, num_workers=2),
      _bad(dist.dc_asgd, "mesh='cpu'", learning_rate=0.1, num_workers=2, mesh="cpu"),
    ],
  ),
  Case(
    "dc_asgd_adaptive",
    _problem(dist.dc_asgd_adaptive, learning_rate=0.3, lambda_0=2.0),
    bad_hyperparams=[
      _bad(dist.dc_asgd_adaptive, "momentum=1.0", learning_rate=0.1, num_workers=2, momentum=1.0),
      _bad(dist.dc_asgd_adaptive, "eps=0.0", learning_rate=0.1, num_workers=2, eps=0.0),
    ],
  ),
  Case(
    "async_sgd",
    _problem(dist.async_sgd, learning_rate=0.3),
    bad_hyperparams=[_bad(dist.async_sgd, "num_workers=2.0", learning_rate=0.1, num_workers=2.0)],
  ),
  Case(
    "ssgd",
    _problem(dist.ssgd, learning_rate=0.5),
    bad_hyperparams=[_bad(dist.ssgd, "learning_rate=-1.0", learning_rate=-1.0, num_workers=2)],
  ),
  Case(
    "dc_ssgd",
    _problem(dist.dc_ssgd, learning_rate=0.5, lambda_0=0.5),
    bad_hyperparams=[
      _bad(dist.dc_ssgd, "lambda_0=nan", learning_rate=0.1, num_workers=2, lambda_0=float("nan"))
    ],
  ),
  Case(
    "easgd",
    _problem(dist.easgd, learning_rate=0.3, rho=0.5, communication_period=2),
    bad_hyperparams=[
      _bad(dist.easgd, "beta=2.5", learning_rate=0.1, num_workers=2, beta=2.5),
      _bad(dist.easgd, "rho=-1.0", learning_rate=0.1, num_workers=2, rho=-1.0),
      _bad(dist.easgd, "rho=1.0", learning_rate=0.1, num_workers=2, rho=1.0, beta=0.5),
      _bad(
        dist.easgd,
        "communication_period=0",
        learning_rate=0.1,
        num_workers=2,
        communication_period=0,
      ),
    ],
  ),
  Case(
    "async_easgd",
    _problem(dist.async_easgd, learning_rate=0.3, communication_period=2),
    bad_hyperparams=[_bad(dist.async_easgd, "beta=0", learning_rate=0.1, num_workers=2, beta=0)],
  ),
  Case(
    "eamsgd",
    _problem(dist.eamsgd, learning_rate=0.05, momentum=0.9, communication_period=2),
    bad_hyperparams=[
      _bad(dist.eamsgd, "momentum=-0.5", learning_rate=0.1, num_workers=2, momentum=-0.5)
    ],
  ),
  Case(
    "downpour",
    _problem(dist.downpour, learning_rate=0.1, communication_period=2),
    bad_hyperparams=[
      _bad(
        dist.downpour,
        "communication_period=1.5",
        learning_rate=0.1,
        num_workers=2,
        communication_period=1.5,
      )
    ],
  ),
  Case(
    "mdownpour",
    _problem(dist.mdownpour, learning_rate=0.05, momentum=0.5),
    bad_hyperparams=[
      _bad(dist.mdownpour, "momentum=1.5", learning_rate=0.1, num_workers=2, momentum=1.5)
    ],
  ),
  Case(
    "averaged_sgd",
    _problem(dist.averaged_sgd, stacked=False, learning_rate=0.5),
    bad_hyperparams=[_bad(dist.averaged_sgd, "start=-1", learning_rate=0.1, start=-1)],
  ),
  Case(
    "mvasgd",
    _problem(dist.mvasgd, stacked=False, learning_rate=0.5, moving_rate=0.001),
    bad_hyperparams=[_bad(dist.mvasgd, "moving_rate=0.0", learning_rate=0.1, moving_rate=0.0)],
  ),
  Case(
    "msgd",
    _problem(dist.msgd, stacked=False, learning_rate=0.05, momentum=0.9),
    bad_hyperparams=[_bad(dist.msgd, "momentum=1.0", learning_rate=0.1, momentum=1.0)],
  ),
]
