"""Shared by the benchmark scripts: interleaved step timing, what XLA says about a compiled
step (multiply-adds, bytes, peak memory), the rate of a dense matmul of the same size timed
beside it, and the JSON report."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core


def parse_args(description: str, quick_help: str = "fewer repeats (under 60 s)"):
  """``--quick`` and ``--out PATH``, the options every benchmark takes."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--quick", action="store_true", help=quick_help)
  parser.add_argument("--out", default=None, help="also write the JSON report to this file")
  return parser.parse_args()


def time_steps(
  steps: dict[str, tuple[Callable[[], None], Callable]], repeats: int, inner: int, warmup: int = 2
) -> dict[str, float]:
  """Median seconds per step of every method, measured in the same run.

  ``steps`` maps a name to ``(run_once, jitted_step)``: ``run_once()`` takes one step and
  blocks until it is done. After ``warmup`` steps each (compilation), the methods take
  turns, ``inner`` consecutive steps at a time, ``repeats`` times, so that machine noise
  hits all of them alike. Asserts that no jitted step recompiled.
  """
  for run_once, _ in steps.values():
    for _ in range(warmup):
      run_once()
  samples = {name: [] for name in steps}
  for _ in range(repeats):
    for name, (run_once, _) in steps.items():
      start = time.perf_counter()
      for _ in range(inner):
        run_once()
      samples[name].append((time.perf_counter() - start) / inner)
  for name, (_, step) in steps.items():
    jitted = getattr(step, "jitted", step)  # training.make_train_step's compiled part
    assert jitted._cache_size() == 1, f"{name} recompiled"
  return {name: statistics.median(v) for name, v in samples.items()}


def compiled_costs(jitted: Callable, *args) -> dict:
  """What XLA reports for ``jitted`` compiled at ``args``.

  ``multiply_adds`` is half of XLA's flop count (a multiply-add is two flops; elementwise
  work adds a little). XLA counts the body of a ``while`` loop (``lax.fori_loop``,
  ``lax.scan``) once, whatever its trip count: steps with such loops are undercounted.
  ``while_loop_trip_counts`` lists the trip count XLA found for every ``while`` loop of the
  compiled program (``None`` where unknown; nested loops appear once each), so that
  ``multiply_adds_is_lower_bound`` says where the count misses loop iterations.
  Where loops are, ``jaxpr_matmul_multiply_adds`` (:func:`jaxpr_multiply_adds`) counts
  the matrix work of every loop iteration from the shapes.
  ``peak_memory_bytes`` is the memory the compiled step holds at once: arguments, outputs
  (less those aliased to donated arguments) and XLA's temporary allocation, whose size is
  the buffer assignment's peak of the temporaries (``temp_bytes``); or XLA's own
  ``peak_memory_in_bytes`` (``xla_peak_memory_bytes``) where that is larger. On XLA:CPU
  the latter can be far below the temporaries alone (1.9 MB against 10 MB of temporaries
  for LeNet-5's Adam step), so it is not used by itself. For a program
  partitioned over several devices (``shard_map``) XLA analyses the per-device program.
  """
  compiled = jitted.lower(*args).compile()
  loops = while_loops(compiled)
  cost = compiled.cost_analysis()
  if isinstance(cost, list | tuple):  # older JAX: one dict per computation
    cost = cost[0]
  memory = compiled.memory_analysis()
  live = int(
    memory.argument_size_in_bytes
    + memory.output_size_in_bytes
    + memory.temp_size_in_bytes
    - memory.alias_size_in_bytes
  )
  return {
    "multiply_adds": float(cost.get("flops", 0.0)) / 2,
    "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
    "peak_memory_bytes": max(int(memory.peak_memory_in_bytes), live),
    "xla_peak_memory_bytes": int(memory.peak_memory_in_bytes),
    "argument_bytes": int(memory.argument_size_in_bytes),
    "temp_bytes": int(memory.temp_size_in_bytes),
    "while_loop_trip_counts": loops,
    "multiply_adds_is_lower_bound": any(n is None or n > 1 for n in loops),
    **jaxpr_multiply_adds(jitted, *args),
  }


def while_loops(compiled) -> list[int | None]:
  """The known trip count of each ``while`` loop in a compiled program's HLO text."""
  trips = []
  for line in compiled.as_text().splitlines():
    if " while(" in line:
      found = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
      trips.append(int(found.group(1)) if found else None)
  return trips


def jaxpr_multiply_adds(fn: Callable, *args) -> dict:
  """Multiply-adds of the ``dot_general`` and convolution ops of ``fn(*args)``'s jaxpr,
  with every ``scan`` body (``lax.scan``; ``lax.fori_loop`` with static bounds) counted
  its ``length`` times: the count of the matrix work that XLA's cost analysis misses in
  loops. A ``while_loop`` (a data-dependent trip count, e.g. a line search) is counted
  once and reported in ``unbounded_loops``; of a ``cond`` the costliest branch counts.
  Elementwise work is not counted."""
  unbounded = [0]

  def count(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
      name, params = eqn.primitive.name, eqn.params
      if name == "dot_general":
        (lc, _), _ = params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        out = eqn.outvars[0].aval.shape
        contracted = 1
        for d in lc:
          contracted *= lhs[d]
        total += float(_prod(out)) * contracted
      elif name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        out = eqn.outvars[0].aval.shape
        # every output element: kernel spatial size x input features (per group)
        total += float(_prod(out)) * _prod(rhs) / rhs[params["dimension_numbers"].rhs_spec[0]]
      elif name == "scan":
        total += params["length"] * count(params["jaxpr"].jaxpr)
      elif name == "while":
        unbounded[0] += 1
        total += count(params["body_jaxpr"].jaxpr) + count(params["cond_jaxpr"].jaxpr)
      elif name == "cond":
        total += max(count(b.jaxpr) for b in params["branches"])
      else:
        for value in params.values():
          for sub in value if isinstance(value, list | tuple) else (value,):
            if isinstance(sub, jax_core.ClosedJaxpr):  # pjit, custom_jvp / vjp, remat
              total += count(sub.jaxpr)
            elif isinstance(sub, jax_core.Jaxpr):  # shard_map
              total += count(sub)
    return total

  closed = jax.make_jaxpr(fn)(*args)
  return {"jaxpr_matmul_multiply_adds": count(closed.jaxpr), "unbounded_loops": unbounded[0]}


def _prod(shape) -> int:
  out = 1
  for d in shape:
    out *= int(d)
  return out


def tree_bytes(tree) -> int:
  """Bytes held by the arrays of a pytree (an optimizer state, say)."""
  return int(sum(jnp.asarray(leaf).nbytes for leaf in jax.tree.leaves(tree)))


def matmul_size(multiply_adds: float, multiple: int = 16) -> int:
  """``n`` of the square ``n x n x n`` matmul with about ``multiply_adds`` (``n^3``)."""
  return max(multiple, multiple * round(multiply_adds ** (1 / 3) / multiple))


def matmul_reference(n: int, dtype=jnp.float32) -> tuple[Callable[[], None], Callable]:
  """``(run_once, jitted)`` of a dense ``n x n`` by ``n x n`` product, for :func:`time_steps`.

  Timed in the same run as the steps it is compared with, it gives the rate the machine
  reaches on dense matmul work of the same size at that moment (load included).
  """
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  jitted = jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST))

  def run_once():
    jax.block_until_ready(jitted(a, b))

  return run_once, jitted


def with_matmul_references(
  steps: dict[str, tuple[Callable[[], None], Callable]], costs: dict[str, dict]
) -> tuple[dict, dict[str, str]]:
  """``steps`` plus one :func:`matmul_reference` per distinct size ``n`` of
  :func:`matmul_size` of the steps' multiply-adds (named ``matmul_<n>``), and the
  name of each step's reference."""
  reference_of = {name: f"matmul_{matmul_size(costs[name]['multiply_adds'])}" for name in steps}
  timed = dict(steps)
  for ref in sorted(set(reference_of.values())):
    timed[ref] = matmul_reference(int(ref.split("_")[1]))
  return timed, reference_of


def matmul_fraction(multiply_adds: float, seconds: float, ref: str, ref_seconds: float) -> dict:
  """A step's rate (multiply-adds per second) and its fraction of the reference matmul's."""
  n = int(ref.split("_")[1])
  rate, ref_rate = multiply_adds / seconds, n**3 / ref_seconds
  return {
    "multiply_adds_per_s": rate,
    "matmul_reference_n": n,
    "matmul_reference_multiply_adds_per_s": ref_rate,
    "fraction_of_matmul_rate": rate / ref_rate,
  }


def measure(
  steps: dict[str, tuple[Callable[[], None], Callable]],
  costs: dict[str, dict],
  repeats: int,
  inner: int,
  warmup: int = 2,
) -> tuple[dict[str, float], dict[str, dict]]:
  """Times ``steps`` (as :func:`time_steps`) together with their matmul references
  (:func:`with_matmul_references`) and returns the medians of the steps alone and, for
  each step, its ``costs`` entry plus :func:`matmul_fraction` (and, from the jaxpr's
  count of the matrix work in every loop iteration,
  ``fraction_of_matmul_rate_jaxpr_count``). The reference matmul is sized by XLA's
  count."""
  timed, reference_of = with_matmul_references(steps, costs)
  medians = time_steps(timed, repeats, inner, warmup)
  rates = {}
  for name in steps:
    ref = reference_of[name]
    fraction = matmul_fraction(costs[name]["multiply_adds"], medians[name], ref, medians[ref])
    if "jaxpr_matmul_multiply_adds" in costs[name]:
      fraction["fraction_of_matmul_rate_jaxpr_count"] = matmul_fraction(
        costs[name]["jaxpr_matmul_multiply_adds"], medians[name], ref, medians[ref]
      )["fraction_of_matmul_rate"]
    rates[name] = {**costs[name], **fraction}
  return {name: medians[name] for name in steps}, rates


def pipeline_run_lines(run: dict) -> list[str]:
  """The printed detail of one run of a pipeline benchmark (``sm_pipeline.py``,
  ``am_pipeline.py``): each step's costs, the phase times and the modelled and measured
  utilization."""
  steps = "  ".join(
    f"{k} {c['multiply_adds'] / 1e6:.1f} M mult-adds"
    f"{'+' if c['multiply_adds_is_lower_bound'] else ''} "
    f"{c['fraction_of_matmul_rate']:.2f} of matmul, "
    f"peak {c['peak_memory_bytes'] / 2**20:.1f} MiB"
    for k, c in run["step_costs"].items()
  )
  phases = "  ".join(f"{k} {1e3 * v:.2f} ms" for k, v in run["phase_seconds"].items())
  modelled = "  ".join(f"{k} {v:.2f}" for k, v in run["modelled_utilization"].items())
  measured = "  ".join(f"{k} {v:.2f}" for k, v in run["measured_utilization"].items())
  return [
    f"  steps: {steps}",
    f"  phases: {phases}",
    f"  utilization modelled: {modelled} | measured: {measured}",
  ]


def load_average() -> list[float] | None:
  """The 1, 5 and 15 minute load averages (``uptime``), where the platform has them."""
  try:
    return [round(v, 2) for v in os.getloadavg()]
  except (AttributeError, OSError):
    return None


def environment() -> dict:
  """Where the numbers were measured."""
  return {
    "device": jax.devices()[0].device_kind,
    "platform": platform.platform(),
    "jax": jax.__version__,
    "cpu_count": os.cpu_count(),
    "load_average": load_average(),
  }


def finish(report: dict, out: str | None) -> dict:
  """Writes the report to ``out`` (if given) and prints it as the last stdout line."""
  if out:
    with open(out, "w") as f:
      json.dump(report, f, indent=2)
  print(json.dumps(report))
  return report
