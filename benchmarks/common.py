"""Shared by the benchmark scripts: the command line, interleaved step timing, what XLA says
about a compiled step (multiply-adds, bytes, peak memory), the rate of a dense matmul of the
same size timed beside it, the printed cost summary and the JSON report; for the pipeline
benchmarks (``sm_pipeline.py``, ``am_pipeline.py``) also the platforms, the problem, the
pipelined and single-device whole steps and the driver loop."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import pipeline_phases  # benchmarks/pipeline_phases.py
from jax.extend import core as jax_core

import altmin_jax as amj
from altmin_jax import pipeline
from altmin_jax.sm import local_losses
from altmin_jax.sm import pipelined as sm_pipelined


def parse_args(
  description: str,
  quick_help: str = "fewer repeats (under 60 s)",
  stages: bool = False,
  options: dict[str, tuple[type, str]] | None = None,
):
  """``--quick`` and ``--out PATH``, the options every benchmark takes; with ``stages`` also
  ``--stages S`` (the pipeline benchmarks' devices, read before JAX starts by
  ``fake_devices.configure``); ``options`` adds ``--name`` options, ``{name: (type,
  help)}``, default ``None``."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--quick", action="store_true", help=quick_help)
  parser.add_argument("--out", default=None, help="also write the JSON report to this file")
  if stages:
    parser.add_argument("--stages", type=int, default=4, help="pipeline devices S")
  for name, (kind, text) in (options or {}).items():
    parser.add_argument(f"--{name}", type=kind, default=None, help=text)
  return parser.parse_args()


def calls(fns: dict[str, tuple[Callable, tuple]]) -> dict[str, tuple[Callable[[], None], Callable]]:
  """``{name: (fn, args)}`` as :func:`time_steps` takes it: ``(run_once, fn)``, where
  ``run_once()`` calls ``fn(*args)`` and blocks until it is done."""

  def once(fn, args):
    return lambda: jax.block_until_ready(fn(*args))

  return {name: (once(fn, args), fn) for name, (fn, args) in fns.items()}


def median_times(fns: dict[str, tuple[Callable, tuple]], repeats: int, costs: dict | None = None):
  """Median seconds of each jitted ``fn(*args)`` in ``{name: (fn, args)}``, measured
  together by :func:`time_steps`: two warm-up calls each (compilation), then the functions
  take turns, one call at a time, ``repeats`` times; asserts no recompilation. With
  ``costs`` (:func:`compiled_costs` of each function) the functions are timed beside their
  matmul references (:func:`measure`) and ``(medians, rates)`` returned."""
  if costs is not None:
    return measure(calls(fns), costs, repeats, inner=1)
  return time_steps(calls(fns), repeats, inner=1)


def carried_step(step: Callable, params, state, *batch) -> tuple[Callable[[], None], dict]:
  """A training step ``step(params, state, *batch) -> (params, state, value)`` on fixed
  data, its params and state carried from call to call: ``run_once()`` for
  :func:`time_steps`, and :func:`compiled_costs` of the compiled step (``step.jitted`` for
  ``training.make_train_step``'s steps) with the state's bytes (``state_bytes``)."""
  carry = [params, state]
  costs = {
    **compiled_costs(getattr(step, "jitted", step), params, state, *batch),
    "state_bytes": tree_bytes(state),
  }

  def run_once():
    carry[0], carry[1], value = step(carry[0], carry[1], *batch)
    jax.block_until_ready(value)

  return run_once, costs


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


def jaxpr_multiply_adds(fn: Callable, *args, while_trips: int | None = None) -> dict:
  """Multiply-adds of the ``dot_general`` and convolution ops of ``fn(*args)``'s jaxpr,
  with every ``scan`` body (``lax.scan``; ``lax.fori_loop`` with static bounds) counted
  its ``length`` times: the count of the matrix work that XLA's cost analysis misses in
  loops. A ``while_loop`` (a data-dependent trip count, e.g. a line search) is counted
  once and reported in ``unbounded_loops`` (or, given ``while_trips``, its body that many
  times); of a ``cond`` the costliest branch counts.
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
      elif name == "while" and while_trips is not None:  # a known trip count: the body's
        total += while_trips * count(params["body_jaxpr"].jaxpr)
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


def costs_text(r: dict) -> str:
  """A step's costs as printed: multiply-adds (``+`` where loops make them a lower bound),
  the fraction of the matmul rate and the peak memory."""
  bound = "+" if r.get("multiply_adds_is_lower_bound") else " "
  return (
    f"{r['multiply_adds'] / 1e6:8.1f} M mult-adds{bound} "
    f"{r['fraction_of_matmul_rate']:.2f} of matmul_{r['matmul_reference_n']}  "
    f"peak {r['peak_memory_bytes'] / 2**20:6.1f} MiB"
  )


def pipeline_run_lines(run: dict) -> list[str]:
  """The printed detail of one run of a pipeline benchmark (``sm_pipeline.py``,
  ``am_pipeline.py``): each step's costs, the phase times and the modelled and measured
  utilization."""
  steps = "  ".join(f"{k} {' '.join(costs_text(c).split())}" for k, c in run["step_costs"].items())
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


def report(name: str, quick: bool, **fields) -> dict:
  """The JSON report of benchmark ``name``: its :func:`environment`, ``quick`` and
  ``fields``."""
  return {"benchmark": name, **environment(), "quick": quick, **fields}


def finish(report: dict, out: str | None) -> dict:
  """Writes the report to ``out`` (if given) and prints it as the last stdout line."""
  if out:
    with open(out, "w") as f:
      json.dump(report, f, indent=2)
  print(json.dumps(report))
  return report


# ------------------------------------------------------------------ pipeline benchmarks


def platforms() -> dict[str, list]:
  """Where a pipeline benchmark runs: always the CPU (S fake devices,
  ``fake_devices.configure``), and the accelerator's devices when one is present."""
  out = {"cpu": jax.devices("cpu")}
  if jax.default_backend() != "cpu":
    out[jax.default_backend()] = jax.devices()
  return out


@dataclasses.dataclass(frozen=True)
class PipelineProblem:
  """A pipeline benchmark's problem on one platform: a 784-w-...-w-10 ReLU MLP and the
  first ``batch`` bundled MNIST training images on the first device, the mesh of S of the
  platform's devices (:func:`altmin_jax.pipeline.pipeline_mesh`), M micro-batches and the
  ``boundary`` layout; the params stacked on the mesh and the batch replicated on it."""

  devices: list
  stages: int
  boundary: str
  microbatches: int
  width: int
  batch: int
  mesh: Any
  net: Any
  params: Any
  x: Any
  y: Any
  stacked: Any

  @property
  def kw(self) -> dict:
    """The pipeline keywords of the pipelined factories."""
    return dict(mesh=self.mesh, num_microbatches=self.microbatches, boundary=self.boundary)

  def sm_pipeline(self, inner_steps: int, **sm_kw):
    """:func:`altmin_jax.sm.pipelined.sm_pipeline` of this problem."""
    options = pipeline.PipelineOptions(**self.kw)
    return sm_pipelined.sm_pipeline(self.net, pipeline=options, inner_steps=inner_steps, **sm_kw)

  def sm_phases(self, inner_steps: int, **sm_kw) -> tuple[Any, dict]:
    """The :class:`~altmin_jax.sm.pipelined.SMPipeline` and its phases
    (``pipeline_phases.phase_functions``) plus ``solve_1_step``, the local solves with one
    inner step on the same inputs (the set-up and the time per inner step are told apart
    by the difference)."""
    sp = self.sm_pipeline(inner_steps, **sm_kw)
    phases = pipeline_phases.phase_functions(sp, self.net, self.params, (self.x, self.y))
    one = self.sm_pipeline(1, **sm_kw)
    sc = local_losses.scales(one.cfg, self.batch, jnp.float32)
    solve_1 = lambda th, zi, zo, g, j, e, st, hs: one.solve(th, zi, zo, g, j, e, st, hs, sc)
    phases["solve_1_step"] = (jax.jit(solve_1), phases["solve"][1])
    return sp, phases

  def pipelined(self, tx) -> tuple[Callable, tuple]:
    """A pipelined method's whole step as ``(jitted, args)`` on the stacked params."""
    xm, ym = pipeline.replicate_on(self.mesh, (self.x, self.y))
    step = jax.jit(lambda p, s: tx.update(None, s, p, batch=(xm, ym)))
    return step, (self.stacked, tx.init(self.stacked))

  def single(self, tx, grads: bool) -> tuple[Callable, tuple]:
    """A single-device method's whole step as ``(jitted, args)``, given the gradients of
    the batch-mean loss when ``grads``."""
    net, x, y = self.net, self.x, self.y
    g = jax.grad(lambda p: jnp.mean(amj.losses.softmax_cross_entropy(net.apply(p, x), y)))
    step = jax.jit(lambda p, s: tx.update(g(p) if grads else None, s, p, batch=(x, y)))
    return step, (self.params, tx.init(self.params))

  def time_steps(self, steps: dict, repeats: int, baseline: str) -> dict:
    """Times the whole ``steps`` (``{name: (jitted, args)}``, interleaved beside their
    matmul references): ``step_seconds``, ``step_costs`` (:func:`compiled_costs`; a
    pipelined step is a ``shard_map`` program, analysed as one device's program,
    ``per_device_program``) and each step's ratio to ``baseline``."""
    costs = {name: compiled_costs(fn, *args) for name, (fn, args) in steps.items()}
    seconds, rates = median_times(steps, repeats, costs)
    return {
      "step_seconds": seconds,
      "step_costs": {
        name: {**r, "per_device_program": name.startswith("pipelined")} for name, r in rates.items()
      },
      f"ratio_to_{baseline}": {k: v / seconds[baseline] for k, v in seconds.items()},
    }

  def fields(self, layers_per_device: int) -> dict:
    """What every run of a pipeline benchmark reports about its problem."""
    real = sum(a.size for a in jax.tree.leaves(self.params))
    padded = sum(a.size for a in jax.tree.leaves(self.stacked))
    return {
      "device": self.devices[0].device_kind,
      "platform": self.devices[0].platform,
      "stages": self.stages,
      "boundary": self.boundary,
      "layers": self.net.num_stages,
      "layers_per_device": layers_per_device,
      "width": self.width,
      "padded_params_ratio": padded / real,
      "batch": self.batch,
      "microbatches": self.microbatches,
    }


def pipeline_problem(devices, n_stages: int, config: dict, pad_layers: int) -> PipelineProblem:
  """The :class:`PipelineProblem` of ``config`` (``width``, ``batch``, ``M``, ``boundary``)
  on S = min(``n_stages``, devices) devices: ``pad_layers`` layers with ``boundary="pad"``,
  2 + 2S (2 stacked layers per device) with ``"outside"``."""
  width, batch, boundary = config["width"], config["batch"], config["boundary"]
  S = min(n_stages, len(devices))
  layers = pad_layers if boundary == "pad" else 2 + 2 * S
  mesh = pipeline.pipeline_mesh(S, devices=devices)
  home = devices[0]
  data = amj.data.load_dataset("bundled_mnist", num_train=8000)
  x = jax.device_put(jnp.asarray(data.train[0][:batch]), home)
  y = jax.device_put(jnp.asarray(data.train[1][:batch]), home)
  net = amj.networks.mlp([784] + [width] * (layers - 1) + [10], activation=jax.nn.relu)
  params = jax.device_put(net.init(jax.random.key(0)), home)
  stacked = pipeline.stack_params(net, params, boundary=boundary, mesh=mesh)
  return PipelineProblem(
    devices, S, boundary, config["M"], width, batch, mesh, net, params, x, y, stacked
  )


def run_pipelines(
  name: str,
  description: str,
  run_platform: Callable[[list, int, dict, int], dict],
  quick: list[dict],
  full: list[dict],
  notes: list[str],
  headline: Callable[[dict], str],
  more_lines: Callable[[dict], list[str]] = lambda run: [],
) -> dict:
  """A pipeline benchmark's command line and driver: ``run_platform(devices, S, config,
  repeats)`` on every platform (:func:`platforms`) for every config (``quick``, 3 repeats,
  with ``--quick``; else ``full``, 7 repeats), each run printed (``headline(run)`` after its
  setting, :func:`pipeline_run_lines`, ``more_lines(run)``), and the report (``notes``,
  ``runs``) finished."""
  args = parse_args(description, "one small configuration", stages=True)
  configs, repeats = (quick, 3) if args.quick else (full, 7)
  runs = []
  for platform_name, devices in platforms().items():
    for config in configs:
      r = run_platform(devices, args.stages, config, repeats)
      runs.append(r)
      print(
        f"{platform_name} {r['boundary']} L={r['layers']} S={r['stages']} "
        f"M={r['microbatches']} w={r['width']}: {headline(r)}"
      )
      for line in pipeline_run_lines(r) + more_lines(r):
        print(line)
  return finish(report(name, args.quick, notes=notes, runs=runs), args.out)
