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

Beside the ratios, as ``am_step.py``: the multiply-adds of each compiled step (XLA's cost
analysis of ``make_train_step``'s ``step.jitted``), the achieved rate as a fraction of a
dense matmul with about as many multiply-adds timed in the same interleaved run, and XLA's
peak memory of the compiled step. The RNN's time loop is a ``lax.scan`` whose body XLA
counts once: its multiply-adds are a lower bound (``multiply_adds_is_lower_bound``, marked
``+`` in the printout; the loops' trip counts are in ``while_loop_trip_counts``), and so
is its fraction of the matmul rate; ``forward_multiply_adds_from_shapes`` gives the
forward pass counted from the shapes (batch x T x (input x hidden + hidden^2) plus the
output layer).

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
  """A closure running one step on fixed data, the step (for its cache size) and what
  XLA reports for the step's compiled part ``step.jitted`` (:func:`common.compiled_costs`)."""
  step = amj.training.make_train_step(net.apply, tx, loss=LOSS, uses_gradients=uses_grads)
  params = net.init(jax.random.key(0))
  run_once, costs = common.carried_step(step, params, tx.init(params), x, y)
  return run_once, step, costs


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
  return {name: make_step(net, tx, g, x, y) for name, (tx, g) in methods.items()}, {}


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
  # The time loop is a lax.scan: XLA counts its body once, so the compiled step's
  # multiply-adds miss T - 1 of every T steps. The forward pass counted from the shapes:
  forward = batch * seq_len * (x.shape[-1] * hidden + hidden * hidden) + batch * hidden * 10
  shapes = {"forward_multiply_adds_from_shapes": float(forward), "seq_len": seq_len}
  return {name: make_step(rnn, tx, g, x, y) for name, (tx, g) in methods.items()}, shapes


def main() -> dict:
  args = common.parse_args(__doc__.split("\n")[0], "smaller RNN batch, fewer repeats")
  if args.quick:
    plan = [("lenet5", 128, lenet_steps(128), 5, 3), ("rnn15", 256, rnn_steps(256), 3, 1)]
  else:
    plan = [("lenet5", 128, lenet_steps(128), 15, 10), ("rnn15", 1024, rnn_steps(1024), 7, 2)]
  results = []
  for model, batch, (made, shapes), repeats, inner in plan:
    steps = {name: (run_once, step) for name, (run_once, step, _) in made.items()}
    costs = {name: c for name, (_, _, c) in made.items()}
    medians, rates = common.measure(steps, costs, repeats, inner)
    for name, seconds in medians.items():
      results.append(
        {
          "model": model,
          "batch": batch,
          "method": name,
          "median_step_ms": 1e3 * seconds,
          "ratio_to_adam": seconds / medians["adam"],
          **rates[name],
          **shapes,
        }
      )
  report = common.report("am_arch_step", args.quick, results=results)
  for r in results:
    print(
      f"{r['model']:7s} batch {r['batch']:5d}  {r['method']:12s} {r['median_step_ms']:9.2f} ms  "
      f"{r['ratio_to_adam']:.2f}x adam  " + common.costs_text(r)
    )
  return common.finish(report, args.out)


if __name__ == "__main__":
  main()
