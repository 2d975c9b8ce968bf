r"""Step time of AM-Adam on LeNet-5 and on the Elman RNN against optax Adam on the same model.

Measures the median wall time of one jitted training step of

* LeNet-5 on 28x28x1 inputs, batch 128 (supplement B): ``adam`` (backprop +
  ``optax.adam``, the baseline), ``am_adam_k1`` (the paper's one code and one weight
  iteration) and ``am_adam_k5`` (five code steps);
* the Elman RNN with 15 hidden units on sequential MNIST (T = 784), batch 1024 as in
  supplement C.2 (256 with ``--quick``): ``adam`` (backprop through time) and
  ``am_adam_rnn`` (five code and five weight iterations, the paper's setting);

all in the same run, steps of one model interleaved round-robin so that machine noise hits
every method alike, and reports each method's ratio to Adam on the same model.

Usage::

  python benchmarks/am_arch_step.py [--quick] [--out results.json]

The last line printed is one JSON object.
"""

from __future__ import annotations

import common  # benchmarks/common.py: the scripts run from this folder
import jax
import jax.numpy as jnp
import numpy as np
import optax

import altmin_jax as amj

LOSS = amj.losses.softmax_cross_entropy


def make_step(net, tx, uses_grads, x, y):
  """A closure running one step on fixed data, and the jitted step (for its cache size)."""
  step = amj.training.make_train_step(net.apply, tx, loss=LOSS, uses_gradients=uses_grads)
  params = net.init(jax.random.key(0))
  carry = [params, tx.init(params)]

  def run_once():
    carry[0], carry[1], value = step(carry[0], carry[1], x, y)
    jax.block_until_ready(value)

  return run_once, step


def lenet_steps(batch: int) -> dict:
  net = amj.networks.lenet5()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, 28, 28, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, size=batch), jnp.int32)
  am = lambda k: amj.am_adam(
    net,
    code_steps=k,
    code_lr=1.0 / 128,
    code_optimizer="nesterov",
    weight_optimizer=optax.adam(2e-3),
  )
  methods = {
    "adam": (optax.adam(2e-3), True),
    "am_adam_k1": (am(1), False),
    "am_adam_k5": (am(5), False),
  }
  return {name: make_step(net, tx, g, x, y) for name, (tx, g) in methods.items()}


def rnn_steps(batch: int, hidden: int = 15, seq_len: int = 784) -> dict:
  rnn = amj.networks.elman_rnn(hidden, seq_len=seq_len)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, seq_len, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, size=batch), jnp.int32)
  methods = {
    "adam": (optax.adam(5e-3), True),
    "am_adam_rnn": (
      amj.am.am_adam_rnn(
        rnn, weight_optimizer=optax.adam(5e-3), code_steps=5, weight_steps=5, code_lr=0.003
      ),
      False,
    ),
  }
  return {name: make_step(rnn, tx, g, x, y) for name, (tx, g) in methods.items()}


def main() -> dict:
  args = common.parse_args(__doc__.split("\n")[0], "smaller RNN batch, fewer repeats")
  if args.quick:
    plan = [("lenet5", 128, lenet_steps(128), 5, 3), ("rnn15", 256, rnn_steps(256), 3, 1)]
  else:
    plan = [("lenet5", 128, lenet_steps(128), 15, 10), ("rnn15", 1024, rnn_steps(1024), 7, 2)]
  results = []
  for model, batch, steps, repeats, inner in plan:
    medians = common.time_steps(steps, repeats, inner)
    for name, seconds in medians.items():
      results.append(
        {
          "model": model,
          "batch": batch,
          "method": name,
          "median_step_ms": 1e3 * seconds,
          "ratio_to_adam": seconds / medians["adam"],
        }
      )
  report = {
    "benchmark": "am_arch_step",
    **common.environment(),
    "quick": args.quick,
    "results": results,
  }
  for r in results:
    print(
      f"{r['model']:7s} batch {r['batch']:5d}  {r['method']:12s} {r['median_step_ms']:9.2f} ms  "
      f"{r['ratio_to_adam']:.2f}x adam"
    )
  return common.finish(report, args.out)


if __name__ == "__main__":
  main()
