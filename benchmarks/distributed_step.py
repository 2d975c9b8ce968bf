r"""Step time of the distributed methods against plain SGD on the same stacked workers.

p workers of a 784-h-10 ReLU MLP are stacked on a leading axis on one device (the
simulation mode of :mod:`altmin_jax.distributed`); one training step computes every
worker's gradient on its own batch (``jax.vmap(jax.value_and_grad(loss))``) and applies
the method's update. Measured in the same run, steps interleaved round-robin so that
machine noise hits every method alike:

* ``results``: the median jitted step time of each method with p workers and its ratio
  to ``sgd``, plain ``optax.sgd`` on the same stacked params and gradients (p
  independent SGD runs, no communication): the per-step overhead of the method's
  communication and bookkeeping;
* ``scaling``: the step time of SGD, EASGD and DC-ASGD for p = 1 ... 16 and its growth
  relative to p = 1 (the gradient work grows linearly with p on one device; the
  methods' extra cost is the gather / pmean and, for the asynchronous ones, the
  p-push ``lax.scan`` of the server).

Beside the ratios, as ``am_step.py``: each step's multiply-adds (XLA's cost analysis of
the compiled step), its rate as a fraction of a dense matmul with about as many
multiply-adds timed in the same interleaved run, and XLA's peak memory of the compiled
step (``scaling`` gives the multiply-adds and peak memory, untimed against a matmul). The
asynchronous methods' server applies the p pushes in a ``lax.scan`` whose body XLA counts
once: their multiply-adds are lower bounds (``multiply_adds_is_lower_bound``, ``+`` in
the printout).

Usage::

  python benchmarks/distributed_step.py [--quick] [--out results.json]

The last line printed is one JSON object.
"""

from __future__ import annotations

import time

import common  # benchmarks/common.py: the scripts run from this folder
import jax
import jax.numpy as jnp
import numpy as np
import optax

import altmin_jax.distributed as dist

LR = 0.05


def methods(p: int) -> dict:
  """name -> transformation for p stacked workers."""
  return {
    "sgd": optax.sgd(LR),
    "async_sgd": dist.async_sgd(LR, num_workers=p),
    "dc_asgd": dist.dc_asgd(LR, num_workers=p),
    "dc_asgd_adaptive": dist.dc_asgd_adaptive(LR, num_workers=p),
    "ssgd": dist.ssgd(LR, num_workers=p),
    "dc_ssgd": dist.dc_ssgd(LR, num_workers=p),
    "easgd": dist.easgd(LR, num_workers=p),
    "async_easgd": dist.async_easgd(LR, num_workers=p, communication_period=4),
    "eamsgd": dist.eamsgd(LR, num_workers=p, communication_period=4),
    "downpour": dist.downpour(LR, num_workers=p, communication_period=4),
    "mdownpour": dist.mdownpour(LR, num_workers=p),
    "averaged_sgd": dist.averaged_sgd(LR),
    "mvasgd": dist.mvasgd(LR),
    "msgd": dist.msgd(LR),
  }


def make_step(tx, p: int, width: int, batch: int):
  """A ``run_once()`` closure over a jitted step of ``tx`` on p stacked workers, the step,
  and what XLA reports for the compiled step (:func:`common.compiled_costs`)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(p, batch, 784)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, size=(p, batch)), jnp.int32)
  k1, k2 = jax.random.split(jax.random.key(0))
  one = {
    "w1": jax.random.normal(k1, (784, width)) / 28.0,
    "b1": jnp.zeros(width),
    "w2": jax.random.normal(k2, (width, 10)) / np.sqrt(width),
    "b2": jnp.zeros(10),
  }

  def loss(params, x, y):
    h = jax.nn.relu(x @ params["w1"] + params["b1"])
    logits = h @ params["w2"] + params["b2"]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

  @jax.jit
  def step(params, state, x, y):
    values, grads = jax.vmap(jax.value_and_grad(loss))(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, jnp.mean(values)

  params = dist.replicate(one, p)
  run_once, costs = common.carried_step(step, params, tx.init(params), x, y)
  return run_once, step, costs


def main() -> dict:
  args = common.parse_args(__doc__.split("\n")[0], "fewer repeats and sizes (< 60 s)")
  if args.quick:
    repeats, inner, width, batch, p = 5, 5, 64, 32, 8
    scaling_ps, scaling_methods = (1, 4, 16), ("sgd", "easgd", "dc_asgd")
  else:
    repeats, inner, width, batch, p = 15, 10, 100, 64, 8
    scaling_ps, scaling_methods = (1, 2, 4, 8, 16), ("sgd", "easgd", "dc_asgd", "downpour")
  start = time.perf_counter()

  made = {name: make_step(tx, p, width, batch) for name, tx in methods(p).items()}
  steps = {name: (run_once, step) for name, (run_once, step, _) in made.items()}
  medians, rates = common.measure(
    steps, {name: c for name, (_, _, c) in made.items()}, repeats, inner
  )
  results = [
    {
      "method": name,
      "workers": p,
      "median_step_ms": 1e3 * seconds,
      "ratio_to_sgd": seconds / medians["sgd"],
      **rates[name],
    }
    for name, seconds in medians.items()
  ]

  scaling = []
  for q in scaling_ps:
    txs = methods(q)
    made = {name: make_step(txs[name], q, width, batch) for name in scaling_methods}
    steps = {name: (run_once, step) for name, (run_once, step, _) in made.items()}
    for name, seconds in common.time_steps(steps, repeats, inner).items():
      scaling.append(
        {
          "method": name,
          "workers": q,
          "median_step_ms": 1e3 * seconds,
          "multiply_adds": made[name][2]["multiply_adds"],
          "peak_memory_bytes": made[name][2]["peak_memory_bytes"],
        }
      )
  base = {r["method"]: r["median_step_ms"] for r in scaling if r["workers"] == scaling_ps[0]}
  for r in scaling:
    r["growth_from_p1"] = r["median_step_ms"] / base[r["method"]]

  report = common.report(
    "distributed_step",
    args.quick,
    model=f"mlp 784-{width}-10, batch {batch} per worker",
    results=results,
    scaling=scaling,
    seconds=time.perf_counter() - start,
  )
  for r in results:
    print(
      f"p={p:2d} {r['method']:17s} {r['median_step_ms']:8.3f} ms  {r['ratio_to_sgd']:.2f}x sgd  "
      + common.costs_text(r)
    )
  for r in scaling:
    print(
      f"scaling {r['method']:9s} p={r['workers']:2d} {r['median_step_ms']:8.3f} ms  "
      f"{r['growth_from_p1']:.2f}x p=1"
    )
  return common.finish(report, args.out)


if __name__ == "__main__":
  main()
