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
   pass, GD's backward pass (parameter gradients accumulated), the curvature chain, the
   local solves with N and with 1 inner step (giving the set-up and the time per inner
   step), GD's update, one Armijo trial (forward pass and loss) and the point-to-point
   transfers alone;
2. turns them into per-device operation times (:class:`~altmin_jax.pipeline.schedule_model.
   Durations`: a pass of ``M + S - 1`` ticks gives the time per micro-batch and device)
   and models one iteration of GPipe + GD (fixed step; and Armijo with one trial) and
   GPipe + SM with N inner steps, dependency-driven (the SM paper's Figure 1) and
   lockstep (as implemented), with per-device busy and idle times and utilization, and
   SM with the idle time after the local solves filled with more inner steps;
3. times whole steps, interleaved the same way: pipelined SM, pipelined GD (fixed step
   and Armijo), single-device SM, and the matching optax baseline (one backprop
   ``optax.sgd`` step on one device), reporting each as a ratio to the baseline, and the
   *measured* utilization (modelled
   busy time over S times the measured step time). ``padded_params_ratio`` (stacked /
   real parameters) is the price of zero-padding (``pad``: every layer gets the
   784-wide input layer's shape).

4. trains single-device SM and GD+Armijo (the pipelined steps equal them,
   ``tests/test_sm_pipeline.py``) for ``iterations`` full-batch iterations on the
   benchmark batch and combines the loss curves with the modelled makespans: the
   *modelled time to a training loss* on S real devices (target: the loss GD+Armijo
   reaches in its last iteration; GD+Armijo modelled with one Armijo trial per iteration,
   the fewest it takes). SM trains at the library's defaults, whose step search adds about
   two forward passes per iteration that the modelled SM makespan does not include yet: its
   modelled time to the target is a lower bound.

On fake CPU devices all S "devices" share the machine's cores, so phases that run in
parallel on real devices are serialised here: the measured numbers show the structure
and the model's use, not a speed-up.

Each whole step of 3. also reports (``step_costs``) its multiply-adds (XLA's cost
analysis of the compiled step), its rate as a fraction of a dense matmul with about as many
multiply-adds timed in the same interleaved run, and its peak memory, as ``am_step.py``.
A pipelined step is one ``shard_map`` program: XLA analyses the program of one device
(``per_device_program``), and its GPipe ticks, inner solves and Lanczos sweeps are
``while`` loops counted once, so those counts are lower bounds
(``multiply_adds_is_lower_bound``).

Usage::

  python benchmarks/sm_pipeline.py [--quick] [--out results.json] [--stages 4]

``--quick`` (under a minute on a 2-core CPU): the ``pad`` layout, width 64, 256
samples, M = 4, N = 10, 3 repeats. Full: width 128, 1024 samples, M in {2, 8}, N in
{10, 20}, both layouts, 7 repeats. The last line printed is one JSON object.
"""

from __future__ import annotations

import fake_devices  # benchmarks/fake_devices.py: S fake CPU devices, before JAX starts

fake_devices.configure()

import common  # noqa: E402  (benchmarks/common.py: the scripts run from this folder)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import altmin_jax as amj  # noqa: E402
from altmin_jax.pipeline import schedule_model as sched  # noqa: E402

LAYERS = 8
SM_KW = dict(power_iterations=3)
ITERATIONS = 30


def loss_curve(tx, net, params, x, y) -> list[float]:
  """Training loss before each of ``ITERATIONS`` full-batch iterations, and after the last."""
  step = jax.jit(lambda p, s: tx.update(None, s, p, batch=(x, y)))
  mean_loss = jax.jit(lambda p: jnp.mean(amj.losses.softmax_cross_entropy(net.apply(p, x), y)))
  state, out = tx.init(params), [float(mean_loss(params))]
  for _ in range(ITERATIONS):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
    out.append(float(mean_loss(params)))
  return out


def run_platform(devices, n_stages: int, config: dict, repeats: int):
  N = config["N"]
  prob = common.pipeline_problem(devices, n_stages, config, LAYERS)
  S, M, net, params, x, y = prob.stages, prob.microbatches, prob.net, prob.params, prob.x, prob.y

  # 1. phases
  pipe, phases = prob.sm_phases(N, **SM_KW)
  measured = common.median_times(phases, repeats)

  # 2. per-device operation times and the model
  ticks, k = M + S - 1, SM_KW["power_iterations"]
  inner = max(measured["solve"] - measured["solve_1_step"], 0.0) / max(N - 1, 1)
  durations = sched.Durations(
    forward=measured["forward"] / ticks,
    backward=measured["backward"] / ticks,
    update=measured["gd_update"],
    jacobian=measured["jacobians"] / ticks,
    rest=measured["rest"] / (2 * S * SM_KW["power_iterations"]),
    inner_step=inner,
    solve_setup=max(measured["solve_1_step"] - inner, 0.0),
    comm=measured["communication"] / (2 * ticks),
  )
  gd_durations = durations._replace(backward=measured["gd_backward"] / ticks)
  model = {
    "gd": sched.gpipe_schedule("gd", S, M, gd_durations).as_dict(),
    "gd_armijo_1_trial": sched.gpipe_schedule(
      "gd", S, M, gd_durations, line_search_trials=1
    ).as_dict(),
    "sm": sched.gpipe_schedule("sm", S, M, durations, inner_steps=N, rest_steps=k).as_dict(),
    "sm_filled": sched.gpipe_schedule(
      "sm", S, M, durations, inner_steps=N, rest_steps=k, fill=True
    ).as_dict(),
    "gd_lockstep": sched.gpipe_schedule("gd", S, M, gd_durations, lockstep=True).as_dict(),
    "sm_lockstep": sched.gpipe_schedule(
      "sm", S, M, durations, inner_steps=N, rest_steps=k, lockstep=True
    ).as_dict(),
  }

  # 3. whole steps
  sm = amj.sm.surrogate_minimization
  steps = {
    "optax_sgd": prob.single(optax.sgd(0.1), True),
    "sm_single_device": prob.single(sm(net, inner_steps=N, **SM_KW), False),
    "pipelined_sm": prob.pipelined(
      amj.pipelined_surrogate_minimization(net, inner_steps=N, **prob.kw, **SM_KW)
    ),
    "pipelined_gd": prob.pipelined(
      amj.pipelined_gradient_descent(net, learning_rate=0.1, **prob.kw)
    ),
    "pipelined_gd_armijo": prob.pipelined(amj.pipelined_gradient_descent(net, **prob.kw)),
  }
  whole = prob.time_steps(steps, repeats, "optax_sgd")
  step_times = whole["step_seconds"]
  busy = {k: sum(model[k]["busy"]) for k in ("gd", "sm", "gd_armijo_1_trial")}
  # 4. modelled time to a training loss
  curves = {
    "sm": loss_curve(sm(net, inner_steps=N, **SM_KW), net, params, x, y),
    "gd_armijo": loss_curve(amj.sm.gd_armijo(net), net, params, x, y),
  }
  target = curves["gd_armijo"][-1]
  makespan = {"sm": model["sm"]["makespan"], "gd_armijo": model["gd_armijo_1_trial"]["makespan"]}
  time_to_loss = {"target_loss": target, "iterations": len(curves["sm"]) - 1}
  for name, curve in curves.items():
    hit = next((i for i, v in enumerate(curve) if v <= target), None)
    time_to_loss[name] = {
      "final_loss": curve[-1],
      "iterations_to_target": hit,
      "modelled_seconds_to_target": None if hit is None else hit * makespan[name],
    }
  return {
    **prob.fields(pipe.pipe.layers_per_stage),
    "inner_steps": N,
    "phase_seconds": measured,
    "durations": durations._asdict(),
    "model": model,
    **whole,
    "modelled_utilization": {k: v["utilization"] for k, v in model.items()},
    "measured_utilization": {
      "pipelined_gd": busy["gd"] / (S * step_times["pipelined_gd"]),
      "pipelined_gd_armijo": busy["gd_armijo_1_trial"] / (S * step_times["pipelined_gd_armijo"]),
      "pipelined_sm": busy["sm"] / (S * step_times["pipelined_sm"]),
    },
    "modelled_time_to_loss": time_to_loss,
    "modelled_lockstep_step_seconds": {
      "pipelined_gd": model["gd_lockstep"]["makespan"],
      "pipelined_sm": model["sm_lockstep"]["makespan"],
    },
  }


def main() -> dict:
  full = [
    dict(width=128, batch=1024, M=m, N=n, boundary=b)
    for b in ("pad", "outside")
    for m in (2, 8)
    for n in (10, 20)
  ]

  def more_lines(r):
    t = r["modelled_time_to_loss"]
    return [
      f"  modelled time to loss {t['target_loss']:.4f}: "
      + "  ".join(
        f"{k} {t[k]['iterations_to_target']} its / {t[k]['modelled_seconds_to_target']} s"
        for k in ("sm", "gd_armijo")
      )
    ]

  return common.run_pipelines(
    "sm_pipeline",
    __doc__.split("\n")[0],
    run_platform,
    quick=[dict(width=64, batch=256, M=4, N=10, boundary="pad")],
    full=full,
    notes=[
      "fake CPU devices share the host's cores: parallel phases are serialised",
      "boundary 'outside': the first and last layer run replicated on every device and "
      "are not part of the modelled busy time",
    ],
    headline=lambda r: (
      f"N={r['inner_steps']} "
      + "  ".join(f"{k} {1e3 * v:.1f} ms" for k, v in r["step_seconds"].items())
    ),
    more_lines=more_lines,
  )


if __name__ == "__main__":
  main()
