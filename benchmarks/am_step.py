r"""Step time of online alternating minimization against optax Adam on the same MLP.

For 784-w-w-10 ReLU MLPs (w = 100 and 500) and batches of 200, measures the median
wall time of one jitted training step of

* ``adam``: backprop (``jax.value_and_grad``) plus ``optax.adam``, the baseline;
* ``am_adam_k1`` / ``am_adam_k5``: AM-Adam with 1 and 5 code steps;
* ``am_mem``: AM-mem's default weight rule (one blocked block-coordinate sweep per layer);

all in the same run, steps interleaved round-robin so that machine noise hits every
method alike, and reports each method's ratio to Adam. Targets: AM-Adam with 5 code steps
at most 2.0x Adam, with 1 code step at most 1.3x Adam (issue 2); AM-mem at most 2.0x Adam
(issue 16).

Beside the ratios, for each step: its multiply-adds (XLA's cost analysis of the compiled
step, half its flop count), the achieved rate as a fraction of the rate of a dense
``n x n x n`` float32 matmul with about as many multiply-adds (timed in the same
interleaved run, so under the same load), XLA's peak memory of the compiled step and the
bytes of the optimizer state (AM-mem: memories ``A`` of ``d x d`` per hidden layer). For
AM-mem, ``memory_and_sweep_multiply_adds`` counts from the shapes the work its weight update
cannot avoid (adding the batch into the memories and one sweep's ``W A``), with its ratio to
Adam's multiply-adds and the time it would take at the full rate of the reference matmul,
relative to Adam's measured step (``memory_and_sweep_at_matmul_rate_ratio_to_adam``). The
``memory`` section repeats the peak memory at batch 1000 (compiled, not timed), to show how
it grows with width and batch. The 1, 5 and 15 minute load averages are in the report.

Usage::

  python benchmarks/am_step.py [--quick] [--out results.json]

The last line printed is one JSON object.
"""

from __future__ import annotations

import common  # benchmarks/common.py: the scripts run from this folder
import jax
import jax.numpy as jnp
import numpy as np
import optax

import altmin_jax as amj

TARGETS = {"am_adam_k5": 2.0, "am_adam_k1": 1.3, "am_mem": 2.0}
BATCH, MEMORY_BATCHES = 200, (200, 1000)


def make_methods(net) -> dict:
  """name -> (optax transformation, whether it uses the gradients of the loss)."""
  return {
    "adam": (optax.adam(2e-3), True),
    "am_adam_k1": (amj.am_adam(net, code_steps=1, weight_optimizer=optax.adam(2e-3)), False),
    "am_adam_k5": (amj.am_adam(net, code_steps=5, weight_optimizer=optax.adam(2e-3)), False),
    "am_mem": (amj.am_mem(net, code_steps=5, output_optimizer=optax.adam(2e-3)), False),
  }


def memory_work(width: int, batch: int) -> float:
  """Multiply-adds AM-mem cannot avoid in its weight update, from the shapes: for each
  hidden layer with ``p = fan_in + 1`` inputs and ``n`` outputs, adding the batch into its
  memories (``A += a a^T``: ``batch p^2``; ``B += c a^T``: ``batch n p``) and one sweep,
  whose residuals need ``W A`` (``n p^2``)."""
  layers = [(784 + 1, width), (width + 1, width)]
  return float(sum(batch * p * p + batch * n * p + n * p * p for p, n in layers))


def compiled_step(net, tx, uses_grads: bool):
  """The compiled part of ``training.make_train_step``'s step, the program
  :func:`common.compiled_costs` analyses."""
  loss = amj.losses.softmax_cross_entropy
  return amj.training.make_train_step(net.apply, tx, loss=loss, uses_gradients=uses_grads).jitted


def make_steps(width: int, batch: int) -> tuple[dict, dict]:
  """``(steps, costs)``: for each method ``(run_once, jitted)`` for
  :func:`common.time_steps`, and the compiled step's costs and state size."""
  net = amj.networks.mlp([784, width, width, 10], activation=jax.nn.relu)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, 784)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, size=batch), jnp.int32)
  steps, costs = {}, {}
  for name, (tx, uses_grads) in make_methods(net).items():
    step = compiled_step(net, tx, uses_grads)
    params = net.init(jax.random.key(0))
    run_once, costs[name] = common.carried_step(step, params, tx.init(params), x, y)
    steps[name] = (run_once, step)
  return steps, costs


def peak_memory(width: int, batch: int) -> dict[str, int]:
  """Peak memory of each method's compiled step (compiled only, not run)."""
  net = amj.networks.mlp([784, width, width, 10], activation=jax.nn.relu)
  x = jax.ShapeDtypeStruct((batch, 784), jnp.float32)
  y = jax.ShapeDtypeStruct((batch,), jnp.int32)
  peaks = {}
  for name, (tx, uses_grads) in make_methods(net).items():
    step = compiled_step(net, tx, uses_grads)
    params = net.init(jax.random.key(0))
    peaks[name] = common.compiled_costs(step, params, tx.init(params), x, y)["peak_memory_bytes"]
  return peaks


def main() -> dict:
  args = common.parse_args(__doc__.split("\n")[0], "fewer repeats (under 90 s)")
  repeats, inner = (7, 10) if args.quick else (25, 20)
  results, memory = [], []
  for width in (100, 500):
    steps, costs = make_steps(width, BATCH)
    timed, reference_of = common.with_matmul_references(steps, costs)
    medians = common.time_steps(timed, repeats, inner)
    for name in steps:
      ref = reference_of[name]
      results.append(
        {
          "width": width,
          "batch": BATCH,
          "method": name,
          "median_step_ms": 1e3 * medians[name],
          "ratio_to_adam": medians[name] / medians["adam"],
          **costs[name],
          **common.matmul_fraction(costs[name]["multiply_adds"], medians[name], ref, medians[ref]),
        }
      )
      if name == "am_mem":
        work = memory_work(width, BATCH)
        ref_rate = results[-1]["matmul_reference_multiply_adds_per_s"]
        results[-1].update(
          memory_and_sweep_multiply_adds=work,
          memory_and_sweep_ratio_to_adam_multiply_adds=work / costs["adam"]["multiply_adds"],
          # that work alone at the full rate of the reference matmul, over Adam's step time
          memory_and_sweep_at_matmul_rate_ratio_to_adam=work / ref_rate / medians["adam"],
        )
    for batch in MEMORY_BATCHES:
      if batch == BATCH:
        peaks = {name: c["peak_memory_bytes"] for name, c in costs.items()}
      else:
        peaks = peak_memory(width, batch)
      memory += [
        {"width": width, "batch": batch, "method": k, "peak_memory_bytes": v}
        for k, v in peaks.items()
      ]
  checks = {
    f"{r['method']}@{r['width']}": r["ratio_to_adam"] <= TARGETS[r["method"]]
    for r in results
    if r["method"] in TARGETS
  }
  report = common.report(
    "am_step", args.quick, results=results, memory=memory, targets=TARGETS, targets_met=checks
  )
  for r in results:
    print(
      f"width {r['width']:4d}  {r['method']:12s} {r['median_step_ms']:8.3f} ms  "
      f"{r['ratio_to_adam']:5.2f}x adam  " + common.costs_text(r)
    )
  return common.finish(report, args.out)


if __name__ == "__main__":
  main()
