r"""Step time of online alternating minimization against optax Adam on the same MLP.

For 784-w-w-10 ReLU MLPs (w = 100 and 500) and batches of 200, measures the median
wall time of one jitted training step of

* ``adam``: backprop (``jax.value_and_grad``) plus ``optax.adam``, the baseline;
* ``am_adam_k1`` / ``am_adam_k5``: AM-Adam with 1 and 5 code steps;
* ``am_mem``: AM-mem with one block-coordinate sweep per layer;

all in the same run, steps interleaved round-robin so that machine noise hits every
method alike, and reports each method's ratio to Adam. Targets (issue 2): AM-Adam
with 5 code steps at most 2.0x Adam, with 1 code step at most 1.3x Adam.

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

TARGETS = {"am_adam_k5": 2.0, "am_adam_k1": 1.3}


def make_steps(width: int, batch: int) -> dict:
  net = amj.networks.mlp([784, width, width, 10], activation=jax.nn.relu)
  loss = amj.losses.softmax_cross_entropy
  methods = {
    "adam": (optax.adam(2e-3), True),
    "am_adam_k1": (amj.am_adam(net, code_steps=1, weight_optimizer=optax.adam(2e-3)), False),
    "am_adam_k5": (amj.am_adam(net, code_steps=5, weight_optimizer=optax.adam(2e-3)), False),
    "am_mem": (amj.am_mem(net, code_steps=5, output_optimizer=optax.adam(2e-3)), False),
  }
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, 784)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, size=batch), jnp.int32)
  steps = {}
  for name, (tx, uses_grads) in methods.items():
    step = amj.training.make_train_step(net.apply, tx, loss=loss, uses_gradients=uses_grads)
    params = net.init(jax.random.key(0))
    carry = [params, tx.init(params)]

    def run_once(step=step, carry=carry):
      carry[0], carry[1], value = step(carry[0], carry[1], x, y)
      jax.block_until_ready(value)

    steps[name] = (run_once, step)
  return steps


def main() -> dict:
  args = common.parse_args(__doc__.split("\n")[0], "fewer repeats (under 60 s)")
  repeats, inner = (7, 10) if args.quick else (25, 20)
  results = []
  for width in (100, 500):
    medians = common.time_steps(make_steps(width, 200), repeats, inner)
    for name, seconds in medians.items():
      results.append(
        {
          "width": width,
          "batch": 200,
          "method": name,
          "median_step_ms": 1e3 * seconds,
          "ratio_to_adam": seconds / medians["adam"],
        }
      )
  checks = {
    f"{r['method']}@{r['width']}": r["ratio_to_adam"] <= TARGETS[r["method"]]
    for r in results
    if r["method"] in TARGETS
  }
  report = {
    "benchmark": "am_step",
    **common.environment(),
    "quick": args.quick,
    "results": results,
    "targets": TARGETS,
    "targets_met": checks,
  }
  for r in results:
    print(
      f"width {r['width']:4d}  {r['method']:11s} {r['median_step_ms']:8.3f} ms  "
      f"{r['ratio_to_adam']:.2f}x adam"
    )
  return common.finish(report, args.out)


if __name__ == "__main__":
  main()
