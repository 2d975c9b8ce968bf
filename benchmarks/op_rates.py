r"""Why some steps reach less than half of the matmul rate: their dominant products alone.

The speed table (``run_all.py``) gives every step's rate as a fraction of a square
``n x n x n`` float32 matmul with about as many multiply-adds. Some steps stay far below
half of it: LeNet-5 (about 0.1), the Elman RNN (about 0.1), the distributed steps on
8 stacked workers (0.2-0.4) and the per-sample work of SM (the logits' Jacobians and the
Lanczos bounds). This benchmark times, in one interleaved run, the products that dominate
those steps on their own, with the shapes of the benchmarked steps, beside the equivalent
plain matmul (same multiply-adds, the products' own shapes) and the square reference:

* ``lenet5_conv1`` / ``lenet5_conv2``: the two convolutions of LeNet-5 at batch 128
  (``28x28x1 -> 6``, "SAME", and ``14x14x6 -> 16``, "VALID", 5x5 kernels) as XLA
  convolutions, and the im2col products they amount to, ``(128*28*28, 25) @ (25, 6)`` and
  ``(128*10*10, 150) @ (150, 16)`` (patches precomputed);
* ``rnn15_scan``: the Elman recurrence :math:`h_t = \tanh(x_t u + h_{t-1} W)` with 15 hidden
  units over T = 784 steps at batch 256 (a ``lax.scan``), against one product with the same
  multiply-adds, ``(256*784, 16) @ (16, 15)``;
* ``workers_vmap``: a forward product of 8 stacked workers' 784-64 layers at 32 samples per
  worker (``vmap`` of ``(32, 784) @ (784, 64)``) against one ``(256, 784) @ (784, 64)``;
* ``per_sample_jacobian``: SM's projection through the logits' Jacobian,
  ``einsum('bkn,bn->bk')`` with 500 samples, 10 logits, 100 units (a batch of
  matrix-vector products) against ``(500, 100) @ (100, 10)``.

For each: the median time, the multiply-adds, the rate as a fraction of the square matmul
of the same multiply-adds, and the ratio of the op's time to its plain-matmul form. The
last stdout line is one JSON object (also written to ``--out``).

Usage::

  python benchmarks/op_rates.py [--quick] [--out results.json]
"""

from __future__ import annotations

import common  # benchmarks/common.py: the scripts run from this folder
import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def _normal(seed: int, shape) -> jax.Array:
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _conv(a, k, padding):
  return jax.lax.conv_general_dilated(
    a, k, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=HIGHEST
  )


def _matmul(a, b):
  return jnp.matmul(a, b, precision=HIGHEST)


def cases() -> dict[str, dict]:
  """``{name: {'op': (fn, args), 'matmul': (fn, args), 'multiply_adds': n}}``."""
  out = {}
  for name, (hw, c, f, padding) in {
    "lenet5_conv1": (28, 1, 6, "SAME"),
    "lenet5_conv2": (14, 6, 16, "VALID"),
  }.items():
    a, k = _normal(0, (128, hw, hw, c)), _normal(1, (5, 5, c, f))
    out_hw = hw if padding == "SAME" else hw - 4
    rows, depth = 128 * out_hw * out_hw, 25 * c
    out[name] = {
      "op": (jax.jit(lambda a, k, p=padding: _conv(a, k, p)), (a, k)),
      "matmul": (
        jax.jit(lambda a, b: _matmul(a, b)),
        (_normal(2, (rows, depth)), _normal(3, (depth, f))),
      ),
      "multiply_adds": rows * depth * f,
      "shape": f"conv {hw}x{hw}x{c} -> {f}, 5x5 {padding}; "
      f"im2col ({rows}, {depth}) @ ({depth}, {f})",
    }

  batch, steps, hidden = 256, 784, 15
  xs, u, w = _normal(4, (steps, batch, 1)), _normal(5, (1, hidden)), _normal(6, (hidden, hidden))

  def recurrence(xs, u, w):
    def step(h, x):
      h = jnp.tanh(_matmul(x, u) + _matmul(h, w))
      return h, None

    return jax.lax.scan(step, jnp.zeros((batch, hidden)), xs)[0]

  rows = batch * steps
  out["rnn15_scan"] = {
    "op": (jax.jit(recurrence), (xs, u, w)),
    "matmul": (
      jax.jit(lambda a, b: _matmul(a, b)),
      (_normal(7, (rows, hidden + 1)), _normal(8, (hidden + 1, hidden))),
    ),
    "multiply_adds": rows * (hidden + 1) * hidden,
    "shape": f"scan of {steps} steps of ({batch}, 1) @ (1, {hidden}) + ({batch}, {hidden}) @ "
    f"({hidden}, {hidden}); one ({rows}, {hidden + 1}) @ ({hidden + 1}, {hidden})",
  }

  workers, per_worker, fan_in, fan_out = 8, 32, 784, 64
  xw, ww = _normal(9, (workers, per_worker, fan_in)), _normal(10, (workers, fan_in, fan_out))
  out["workers_vmap"] = {
    "op": (jax.jit(jax.vmap(_matmul)), (xw, ww)),
    "matmul": (
      jax.jit(lambda a, b: _matmul(a, b)),
      (_normal(11, (workers * per_worker, fan_in)), _normal(12, (fan_in, fan_out))),
    ),
    "multiply_adds": workers * per_worker * fan_in * fan_out,
    "shape": f"vmap over {workers} of ({per_worker}, {fan_in}) @ ({fan_in}, {fan_out}); one "
    f"({workers * per_worker}, {fan_in}) @ ({fan_in}, {fan_out}) (one worker's weights)",
  }

  b, k, n = 500, 10, 100
  jac, t = _normal(13, (b, k, n)), _normal(14, (b, n))
  out["per_sample_jacobian"] = {
    "op": (jax.jit(lambda j, t: jnp.einsum("bkn,bn->bk", j, t, precision=HIGHEST)), (jac, t)),
    "matmul": (jax.jit(lambda a, b: _matmul(a, b)), (_normal(15, (b, n)), _normal(16, (n, k)))),
    "multiply_adds": b * k * n,
    "shape": f"einsum bkn,bn->bk with b={b}, k={k}, n={n}; ({b}, {n}) @ ({n}, {k})",
  }
  return out


def main() -> dict:
  args = common.parse_args(__doc__.split("\n")[0])
  repeats, inner = (5, 5) if args.quick else (11, 20)
  specs = cases()

  steps = common.calls(
    {f"{name}/{form}": spec[form] for name, spec in specs.items() for form in ("op", "matmul")}
  )
  costs = {
    key: {"multiply_adds": float(specs[key.split("/")[0]]["multiply_adds"])} for key in steps
  }
  medians, rates = common.measure(steps, costs, repeats, inner)
  results = []
  for name, spec in specs.items():
    op, mm = rates[f"{name}/op"], rates[f"{name}/matmul"]
    results.append(
      {
        "op": name,
        "shape": spec["shape"],
        "multiply_adds": spec["multiply_adds"],
        "median_ms": 1e3 * medians[f"{name}/op"],
        "plain_matmul_ms": 1e3 * medians[f"{name}/matmul"],
        "ratio_to_plain_matmul": medians[f"{name}/op"] / medians[f"{name}/matmul"],
        "fraction_of_matmul_rate": op["fraction_of_matmul_rate"],
        "plain_matmul_fraction_of_matmul_rate": mm["fraction_of_matmul_rate"],
        "matmul_reference_n": op["matmul_reference_n"],
      }
    )
  report = common.report("op_rates", args.quick, results=results)
  for r in results:
    print(
      f"{r['op']:20s} {r['median_ms']:8.3f} ms  {r['multiply_adds'] / 1e6:7.1f} M mult-adds  "
      f"{r['fraction_of_matmul_rate']:.3f} of matmul_{r['matmul_reference_n']}  "
      f"(as a plain matmul {r['plain_matmul_ms']:.3f} ms, "
      f"{r['plain_matmul_fraction_of_matmul_rate']:.3f})"
    )
  return common.finish(report, args.out)


if __name__ == "__main__":
  main()
