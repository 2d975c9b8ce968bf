r"""Pipeline-parallel SM: measured time per component, the schedule model, utilization.

A 784-w-...-w-10 ReLU MLP on bundled MNIST images is pipelined over S devices with M
GPipe micro-batches, in two layouts: ``pad`` (the paper's setting: 8 layers, 2 per
device for S = 4, the 784-wide input and 10 logits zero-padded into the stack) and
``outside`` (2 + 2S layers: the first and last layer outside the pipeline, 2 unpadded
w x w layers per device). For every platform (always the CPU, with S fake devices from
``XLA_FLAGS=--xla_force_host_platform_device_count``; also the accelerator when one is
present, over up to S of its devices) the benchmark

1. times each phase of a step as its own jitted ``shard_map`` (median over repeats,
   compilation excluded, ``block_until_ready``, the phases interleaved round-robin with
   ``benchmarks/common.py``'s ``time_steps``): the GPipe forward pass, SM's backward
   pass, GD's backward pass (parameter gradients accumulated), the logits' Jacobians, the
   rest bounds (micro-batched, and with one micro-batch, ``rest_sequential``: ``S``
   sequential full-batch rounds per sweep, the form before the sweeps were micro-batched),
   the local solves with N and with 1 inner step (giving the set-up and the time per inner
   step), GD's and Adam's updates, one Armijo trial (forward pass and loss) and the
   point-to-point transfers alone; and counts each phase's multiply-adds (one device's
   program, ``scan``\ s their length times, CG's ``while`` loop its N steps);
2. turns them into per-device operation times in two views (:class:`~altmin_jax.pipeline.
   schedule_model.Durations`: a pass of ``M + S - 1`` ticks gives the time per micro-batch
   and device; a rest pass ``M + S - 1`` ticks, a sequential sweep ``S`` rounds):
   ``seconds`` (the measured times) and ``multiply_adds`` (in units of one micro-batch
   forward through one device; elementwise updates and transfers count 0), and models one
   iteration of GPipe + GD (fixed step; Armijo with one trial), GPipe + Adam and GPipe +
   SM with N inner steps, dependency-driven (the SM paper's Figure 1) and lockstep (as
   implemented), with per-device busy and idle times and utilization;
3. times whole steps, interleaved the same way: pipelined SM (the library's defaults),
   pipelined GD (fixed step and Armijo), single-device SM, the optax baselines (one
   backprop ``optax.sgd`` and ``optax.adam`` step on one device; full runs also pipelined
   SM as Algorithm 1 and with 3 warm-started CG steps and the curvature every 5
   iterations), reporting each as a ratio to SGD, and the *measured* utilization (modelled
   busy time over S times the measured step time). ``padded_params_ratio`` (stacked /
   real parameters) is the price of zero-padding (``pad``: every layer gets the
   784-wide input layer's shape);
4. trains GD+Armijo for 30 full-batch iterations on the benchmark batch (single device:
   the pipelined steps equal the single-device ones, ``tests/test_sm_pipeline.py``), then
   Adam (learning rate 1e-2, as ``sm_time_to_loss.py``) and SM (``SM_RUNS``: today's,
   the paper's Algorithm 1 without the step search; the library's defaults; 3 warm-started
   CG steps with the curvature every 5 iterations) until they reach GD+Armijo's final
   loss, recording every iteration's search trials (GD+Armijo's recovered from its step
   sizes) and whether SM refreshed its curvature. Each iteration is modelled with its own
   trials and refresh (:func:`~altmin_jax.pipeline.schedule_model.run_times`), SM with
   sequential and with micro-batched rest sweeps: per method the mean modelled makespan
   per iteration and the *modelled time to GD+Armijo's final loss*, and the issue's
   ratios (``ratios``): the new SM (defaults, micro-batched sweeps) over today's
   (Algorithm 1, sequential sweeps), per iteration (target <= 0.6) and to the loss
   (target <= 0.25), and every SM against GPipe + Adam.

On fake CPU devices all S "devices" share the machine's cores, so phases that run in
parallel on real devices are serialised here: the measured numbers show the structure
and the model's use, not a speed-up. Dividing a pass by its ticks charges a
micro-batched pass for the devices that share the cores in a tick, while a sequential
round runs one device at a time: the ``seconds`` view is pessimistic for the
micro-batched sweeps; the ``multiply_adds`` view counts the work itself.

Each whole step of 3. also reports (``step_costs``) its multiply-adds (XLA's cost
analysis of the compiled step), its rate as a fraction of a dense matmul with about as many
multiply-adds timed in the same interleaved run, and its peak memory, as ``am_step.py``.
A pipelined step is one ``shard_map`` program: XLA analyses the program of one device
(``per_device_program``), and its GPipe ticks, inner solves and Lanczos sweeps are
``while`` loops counted once, so those counts are lower bounds
(``multiply_adds_is_lower_bound``).

Usage::

  python benchmarks/sm_pipeline.py [--quick] [--out results.json] [--stages 4]

``--quick`` (13-14 minutes on 2 shared cores at load average 5-8): both layouts, width
64, 256 samples, M = 4, N = 10, 3 repeats. Full: width 128, 1024 samples, M in {2, 8}, N
in {10, 20}, both layouts, 7 repeats. The last line printed is one JSON object.
"""

from __future__ import annotations

import fake_devices  # benchmarks/fake_devices.py: S fake CPU devices, before JAX starts

fake_devices.configure()

import dataclasses  # noqa: E402
import inspect  # noqa: E402
import math  # noqa: E402

import common  # noqa: E402  (benchmarks/common.py: the scripts run from this folder)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import altmin_jax as amj  # noqa: E402
from altmin_jax.pipeline import schedule_model as sched  # noqa: E402
from altmin_jax.sm import local_losses  # noqa: E402
from altmin_jax.sm import pipelined as sm_pipelined  # noqa: E402

LAYERS = 8
SM_KW = dict(power_iterations=3)
ITERATIONS = 30  # GD+Armijo's run: its final loss is the target of every method
MAX_ITERATIONS = {"adam": 300, "gd_armijo": ITERATIONS}  # the others: 100
ADAM_LR = 1e-2  # as benchmarks/sm_time_to_loss.py
#: the SM runs of the table: their SM options beside ``SM_KW`` (``sm_today``: the paper's
#: Algorithm 1, the pipelined step before micro-batched sweeps; ``sm_default``: the
#: library's defaults; ``sm_warm3_refresh5``: 3 warm-started CG steps, the curvature every
#: 5 iterations, the search)
SM_RUNS = {
  "sm_today": dict(step_search=None, cg_warm_start=False, curvature_refresh=1),
  "sm_default": {},
  "sm_warm3_refresh5": dict(inner_steps=3, cg_warm_start=True, curvature_refresh=5),
}


def gd_armijo_trials(prev, state, search: amj.numerics.ArmijoSearch) -> int:
  """Trials (forward passes and losses) of the GD+Armijo search that took ``prev`` to
  ``state``: recovered from the step sizes (each search starts at ``min(previous next
  step, max_step)``, backtracks by ``backtrack_factor`` and carries ``step_growth`` times
  the step taken), plus the fallback's evaluation when the search failed."""
  if hasattr(state, "search_trials"):
    return int(state.search_trials)
  first = min(float(prev.step_size), search.max_step)
  taken = float(state.step_size) / search.step_growth
  backtracks = max(
    0, round(math.log(max(taken, 1e-30) / first) / math.log(search.backtrack_factor))
  )
  failed = int(state.failed_count) - int(prev.failed_count)
  return 1 + min(backtracks, search.max_backtracks) + failed


def loss_curve(name, tx, net, params, x, y, target=None, max_iterations=None) -> dict:
  """Full-batch training: the loss before the first iteration and after each, and per
  iteration the trials of its search and (SM) whether it refreshed the curvature; stops
  after ``max_iterations`` (default ``MAX_ITERATIONS``) or once the loss is at most
  ``target``. ``name`` ``"adam"`` gets gradients, ``"gd_armijo"`` its trials recovered."""
  grads = name == "adam"
  mean_loss = lambda p: jnp.mean(amj.losses.softmax_cross_entropy(net.apply(p, x), y))

  @jax.jit
  def step(p, s):
    updates, s = tx.update(jax.grad(mean_loss)(p) if grads else None, s, p, batch=(x, y))
    return optax.apply_updates(p, updates), s

  state, losses, trials, refreshed = tx.init(params), [float(jax.jit(mean_loss)(params))], [], []
  for _ in range(max_iterations or MAX_ITERATIONS.get(name, 100)):
    prev = state
    params, state = step(params, state)
    losses.append(float(jax.jit(mean_loss)(params)))
    if name == "gd_armijo":
      trials.append(gd_armijo_trials(prev, state, amj.numerics.ArmijoSearch()))
    else:
      trials.append(int(getattr(state, "search_trials", 0)))
    refreshed.append(bool(getattr(state, "refreshed", True)))
    if target is not None and losses[-1] <= target:
      break
  return {"losses": losses, "trials": trials, "refreshed": refreshed}


def _multiply_adds(fn, *args, while_trips: int = 1) -> float:
  """Multiply-adds of ``fn(*args)``'s jaxpr (one device's program inside a ``shard_map``;
  :func:`common.jaxpr_multiply_adds`) with ``while`` bodies counted ``while_trips`` times
  (two counts tell a CG solve's set-up from its steps); of a ``cond`` the costliest branch
  (a pass's idle ticks count as busy: divide by the ticks)."""
  return common.jaxpr_multiply_adds(fn, *args, while_trips=while_trips)[
    "jaxpr_matmul_multiply_adds"
  ]


def extra_phases(prob, phases: dict, N: int) -> None:
  """Adds to ``phases``: ``rest_sequential``, the rest bounds of the same inputs with one
  micro-batch (``M = 1``: the pass is ``S`` sequential full-batch rounds, the form before
  the sweeps were micro-batched), and ``adam_update``, Adam's update of the stacked
  layers (elementwise, no collective)."""
  seq = dataclasses.replace(prob, microbatches=1).sm_pipeline(N, **SM_KW)
  delta = local_losses.scales(seq.cfg, prob.batch, jnp.float32).delta
  one = lambda a: jax.lax.reshape(  # (L, M, b, w) as (L, 1, B, w), sharded the same way
    a, (a.shape[0], 1, a.shape[1] * a.shape[2], a.shape[3]), out_sharding=jax.typeof(a).sharding
  )
  rest = lambda th, zi, g, s: seq.rest_bounds(th, one(zi), one(g), delta, s)
  phases["rest_sequential"] = (jax.jit(rest), phases["rest"][1])
  theta, grads = phases["gd_update"][1]
  adam = optax.adam(ADAM_LR)

  def adam_update(th, g):  # from zero moments: the same elementwise work as any step
    mu = jax.tree.map(jnp.zeros_like, th)
    state = optax.ScaleByAdamState(jnp.ones([], jnp.int32), mu, mu)
    u, _ = adam.update(g, (state, optax.EmptyState()), th)
    return optax.apply_updates(th, u)

  phases["adam_update"] = (jax.jit(adam_update), (theta, grads))


def rest_is_microbatched() -> bool:
  """Whether the pipelined rest bounds are GPipe passes over the micro-batches."""
  return "chain(" in inspect.getsource(sm_pipelined.SMPipeline.rest_bounds)


def durations_of(per_op: dict) -> sched.Durations:
  """The model's durations from per-operation times (``per_op``: one view)."""
  keys = set(sched.Durations._fields)
  return sched.Durations(**{k: v for k, v in per_op.items() if k in keys})


def per_operation(total: dict, S: int, M: int, N: int, micro: bool) -> dict:
  """Per-device, per-operation times (or multiply-adds) from whole-phase ones: a pass of
  ``M + S - 1`` ticks gives the time per micro-batch and device; the rest bounds' ``2 k``
  passes (micro-batched) or ``2 S k`` rounds (sequential); the local solves with N and one
  inner step give the set-up and the time per inner step."""
  ticks, k = M + S - 1, SM_KW["power_iterations"]
  inner = max(total["solve"] - total["solve_1_step"], 0.0) / max(N - 1, 1)
  rest_round = total["rest_sequential"] / (2 * S * k)
  return {
    "forward": total["forward"] / ticks,
    "backward": total["backward"] / ticks,
    "gd_backward": total["gd_backward"] / ticks,
    "jacobian": total["jacobians"] / ticks,
    "rest": rest_round,
    # before the micro-batched sweeps landed: a full-batch round's work split M ways
    "rest_microbatch": total["rest"] / (2 * k * ticks) if micro else rest_round / M,
    "inner_step": inner,
    "solve_setup": max(total["solve_1_step"] - inner, 0.0),
    "update": total["gd_update"],
    "adam_update": total["adam_update"],
    "comm": total["communication"] / (2 * ticks),
  }


def model_table(ops: dict, S: int, M: int, curves: dict, target: float) -> dict:
  """Per method: the modelled makespan of a mean iteration (over the iterations to the
  target, dependency-driven; and lockstep), the iterations to the target and the modelled
  time to it (:func:`~altmin_jax.pipeline.schedule_model.run_times`, each iteration with
  its own trials and refresh)."""
  d = durations_of(ops)
  gd = d._replace(backward=ops["gd_backward"])
  adam = gd._replace(update=ops["adam_update"])
  k = SM_KW["power_iterations"]
  rows = {
    "gpipe_adam": ("gd", adam, "adam", {}),
    "gpipe_gd_armijo": ("gd", gd, "gd_armijo", {}),
  }
  for name, opts in SM_RUNS.items():
    options = local_losses.SMOptions(**{**SM_KW, **opts})
    # a warm start costs one more product of the local quadratic
    n = options.inner_steps + int(options.cg_warm_start)
    for sweeps in ("sequential", "microbatched"):
      kw = dict(inner_steps=n, rest_steps=k, rest_sweeps=sweeps)
      rows[f"{name}_{sweeps}"] = ("sm", d, name, kw)
  out = {}
  for row, (method, dur, run, kw) in rows.items():
    c = curves[run]
    hit = next((i for i, v in enumerate(c["losses"]) if v <= target), None)
    n_its = hit if hit else len(c["trials"])
    per_it = dict(trials=c["trials"][:n_its], **kw)
    if method == "sm":
      per_it["refreshed"] = c["refreshed"][:n_its]
    free = sched.run_times(method, S, M, dur, **per_it)
    lock = sched.run_times(method, S, M, dur, lockstep=True, **per_it)
    out[row] = {
      "iterations_to_target": hit,
      "mean_trials": sum(per_it["trials"]) / max(n_its, 1),
      "refresh_fraction": (sum(per_it["refreshed"]) / max(n_its, 1) if method == "sm" else None),
      "makespan_per_iteration": free[-1] / max(n_its, 1),
      "lockstep_makespan_per_iteration": lock[-1] / max(n_its, 1),
      "time_to_target": None if hit is None else free[-1],
      "lockstep_time_to_target": None if hit is None else lock[-1],
    }
  return out


def ratios(table: dict) -> dict:
  """The issue's ratios: the new SM (library defaults, micro-batched sweeps) against
  today's (Algorithm 1, sequential sweeps): makespan per iteration (target <= 0.6) and
  time to GD+Armijo's final loss (target <= 0.25); and Adam plainly."""
  today, new, adam = (
    table["sm_today_sequential"],
    table["sm_default_microbatched"],
    table["gpipe_adam"],
  )
  fast = table["sm_warm3_refresh5_microbatched"]
  div = lambda a, b: None if a is None or b is None or b == 0 else a / b
  out = {}
  for view in ("", "lockstep_"):
    m, t = f"{view}makespan_per_iteration", f"{view}time_to_target"
    out[view + "ratios"] = {
      "sm_default_vs_today_makespan": div(new[m], today[m]),
      "sm_default_vs_today_time_to_target": div(new[t], today[t]),
      "sm_warm3_refresh5_vs_today_makespan": div(fast[m], today[m]),
      "sm_warm3_refresh5_vs_today_time_to_target": div(fast[t], today[t]),
      "sm_default_vs_adam_makespan": div(new[m], adam[m]),
      "sm_default_vs_adam_time_to_target": div(new[t], adam[t]),
      "sm_warm3_refresh5_vs_adam_time_to_target": div(fast[t], adam[t]),
      "sm_today_vs_adam_time_to_target": div(today[t], adam[t]),
      "gd_armijo_vs_adam_time_to_target": div(table["gpipe_gd_armijo"][t], adam[t]),
    }
  return {"targets": {"makespan": 0.6, "time_to_target": 0.25}, **out}


def run_platform(devices, n_stages: int, config: dict, repeats: int):
  N = config["N"]
  prob = common.pipeline_problem(devices, n_stages, config, LAYERS)
  S, M, net, params, x, y = prob.stages, prob.microbatches, prob.net, prob.params, prob.x, prob.y

  # 1. phases: wall time and multiply-adds (one device's program)
  pipe, phases = prob.sm_phases(N, **SM_KW)
  extra_phases(prob, phases, N)
  measured = common.median_times(phases, repeats)
  counts = {name: _multiply_adds(fn, *args) for name, (fn, args) in phases.items()}
  for name in ("solve", "solve_1_step"):  # CG is a while loop: count its steps
    fn, args = phases[name]
    trips = N if name == "solve" else 1
    counts[name] = _multiply_adds(fn, *args, while_trips=trips)
  micro = rest_is_microbatched()

  # 2. per-device operation times, in two views, and the model
  seconds = per_operation(measured, S, M, N, micro)
  work = per_operation(counts, S, M, N, micro)  # elementwise updates and transfers: 0
  unit = work["forward"]  # the multiply-add view in micro-batch forward passes
  work = {k: v / unit for k, v in work.items()}
  durations = durations_of(seconds)
  gd_durations = durations._replace(backward=seconds["gd_backward"])
  k = SM_KW["power_iterations"]
  sm_kw = dict(inner_steps=N, rest_steps=k, rest_sweeps="microbatched")
  model = {
    "gd": sched.gpipe_schedule("gd", S, M, gd_durations).as_dict(),
    "gd_armijo_1_trial": sched.gpipe_schedule(
      "gd", S, M, gd_durations, line_search_trials=1
    ).as_dict(),
    "gpipe_adam": sched.gpipe_schedule(
      "gd", S, M, gd_durations._replace(update=seconds["adam_update"])
    ).as_dict(),
    "sm_sequential": sched.gpipe_schedule(
      "sm", S, M, durations, inner_steps=N, rest_steps=k
    ).as_dict(),
    "sm": sched.gpipe_schedule("sm", S, M, durations, **sm_kw).as_dict(),
    "sm_filled": sched.gpipe_schedule("sm", S, M, durations, fill=True, **sm_kw).as_dict(),
    "gd_lockstep": sched.gpipe_schedule("gd", S, M, gd_durations, lockstep=True).as_dict(),
    "sm_lockstep": sched.gpipe_schedule("sm", S, M, durations, lockstep=True, **sm_kw).as_dict(),
  }

  # 3. whole steps
  sm = amj.sm.surrogate_minimization
  steps = {
    "optax_sgd": prob.single(optax.sgd(0.1), True),
    "optax_adam": prob.single(optax.adam(ADAM_LR), True),
    "sm_single_device": prob.single(sm(net, inner_steps=N, **SM_KW), False),
    "pipelined_sm": prob.pipelined(
      amj.pipelined_surrogate_minimization(net, inner_steps=N, **prob.kw, **SM_KW)
    ),
    "pipelined_gd": prob.pipelined(
      amj.pipelined_gradient_descent(net, learning_rate=0.1, **prob.kw)
    ),
    "pipelined_gd_armijo": prob.pipelined(amj.pipelined_gradient_descent(net, **prob.kw)),
  }
  for name in ("sm_today", "sm_warm3_refresh5") if config.get("all_steps") else ():
    try:  # the pipelined step takes curvature_refresh > 1 and warm starts once they landed
      tx = amj.pipelined_surrogate_minimization(
        net, **{"inner_steps": N, **prob.kw, **SM_KW, **SM_RUNS[name]}
      )
      steps["pipelined_" + name] = prob.pipelined(tx)
    except ValueError:
      pass
  whole = prob.time_steps(steps, repeats, "optax_sgd")
  step_times = whole["step_seconds"]
  busy = {k: sum(model[k]["busy"]) for k in ("gd", "sm", "gd_armijo_1_trial")}

  # 4. loss curves (single device: the pipelined steps equal them) and the time to
  # GD+Armijo's final loss
  curves = {"gd_armijo": loss_curve("gd_armijo", amj.sm.gd_armijo(net), net, params, x, y)}
  target = curves["gd_armijo"]["losses"][-1]
  curves["adam"] = loss_curve("adam", optax.adam(ADAM_LR), net, params, x, y, target)
  for name, opts in SM_RUNS.items():
    tx = sm(net, **{"inner_steps": N, **SM_KW, **opts})
    curves[name] = loss_curve(name, tx, net, params, x, y, target)
  tables = {
    "seconds": model_table(seconds, S, M, curves, target),
    "multiply_adds": model_table(work, S, M, curves, target),
  }
  return {
    **prob.fields(pipe.pipe.layers_per_stage),
    "inner_steps": N,
    "rest_microbatched_in_library": micro,
    "phase_seconds": measured,
    "phase_multiply_adds": counts,
    "durations": durations._asdict(),
    "operation_seconds": seconds,
    "operation_work_in_microbatch_forwards": work,
    "model": model,
    **whole,
    "modelled_utilization": {k: v["utilization"] for k, v in model.items()},
    "measured_utilization": {
      "pipelined_gd": busy["gd"] / (S * step_times["pipelined_gd"]),
      "pipelined_gd_armijo": busy["gd_armijo_1_trial"] / (S * step_times["pipelined_gd_armijo"]),
      "pipelined_sm": busy["sm"] / (S * step_times["pipelined_sm"]),
    },
    "target_loss": target,
    "curves": {
      name: {**c, "losses": [round(v, 5) for v in c["losses"]]} for name, c in curves.items()
    },
    "time_to_loss": tables,
    "ratios": {view: ratios(t) for view, t in tables.items()},
    "modelled_lockstep_step_seconds": {
      "pipelined_gd": model["gd_lockstep"]["makespan"],
      "pipelined_sm": model["sm_lockstep"]["makespan"],
    },
  }


def main() -> dict:
  full = [
    dict(width=128, batch=1024, M=m, N=n, boundary=b, all_steps=True)
    for b in ("pad", "outside")
    for m in (2, 8)
    for n in (10, 20)
  ]

  def more_lines(r):
    lines = [f"  time to GD+Armijo's final loss {r['target_loss']:.4f} (modelled):"]
    for view, unit in (("seconds", "s"), ("multiply_adds", "fwd")):
      table = r["time_to_loss"][view]
      for name, row in table.items():
        t = row["time_to_target"]
        lines.append(
          f"    [{view}] {name}: {row['iterations_to_target']} its, "
          f"{row['makespan_per_iteration']:.4g} {unit}/it, "
          f"to target {'-' if t is None else f'{t:.4g}'} {unit}"
        )
      for key, v in r["ratios"][view]["ratios"].items():
        lines.append(f"    [{view}] {key}: {'-' if v is None else f'{v:.3f}'}")
    return lines

  return common.run_pipelines(
    "sm_pipeline",
    __doc__.split("\n")[0],
    run_platform,
    quick=[
      dict(width=64, batch=256, M=4, N=10, boundary="pad"),
      dict(width=64, batch=256, M=4, N=10, boundary="outside"),
    ],
    full=full,
    notes=[
      "fake CPU devices share the host's cores: parallel phases are serialised",
      "boundary 'outside': the first and last layer run replicated on every device and "
      "are not part of the modelled busy time",
      "multiply-add view: per-operation multiply-adds of one device's program in units of "
      "one micro-batch forward through one device; elementwise updates and transfers 0",
    ],
    headline=lambda r: (
      f"N={r['inner_steps']} "
      + "  ".join(f"{k} {1e3 * v:.1f} ms" for k, v in r["step_seconds"].items())
    ),
    more_lines=more_lines,
  )


if __name__ == "__main__":
  main()
