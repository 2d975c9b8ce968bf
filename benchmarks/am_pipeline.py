r"""Pipeline-parallel online AM-Adam: measured phase times, the schedule model, utilization.

The MLP of ``sm_pipeline.py`` (784-w-...-w-10, ReLU, bundled MNIST images) pipelined over
S devices with M GPipe micro-batches, ``pad`` layout (8 layers, every layer zero-padded to
the 784-wide input layer's shape) and, in the full run, ``outside`` (2 + 2S layers, the
first and last outside the pipeline). On S fake CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count``; also the accelerator's devices
when one is present) the benchmark

1. times each phase of a step as its own jitted ``shard_map`` (median over repeats,
   compilation excluded, ``block_until_ready``, interleaved round-robin by
   ``benchmarks/common.py``'s ``time_steps``): the GPipe forward pass, GD's backward pass
   (parameter gradients accumulated), Adam's update of the stacked layers, SM's backward
   pass, Jacobian pass, curvature chain and local solves (N and 1 inner step), and
   pipelined AM-Adam's phases (:mod:`altmin_jax.am.pipelined`): the input codes (local
   work and one ``ppermute``), the top-down code updates (a reverse pass of ``M + S - 1``
   ticks, ``code_steps`` code-optimizer steps per layer) and the weight updates (Adam
   steps on every device's layers, full batch, no collective); and the pipeline's
   point-to-point transfers alone;
2. turns them into per-device operation times
   (:class:`~altmin_jax.pipeline.schedule_model.Durations`: a pass of ``M + S - 1`` ticks gives
   the time per micro-batch and device; a transfer is half the communication phase per
   tick; the input codes are their phase less one transfer) and models one iteration of
   GPipe + backprop with Adam (``"gd"`` with Adam's update time), GPipe + SM with N inner
   steps and pipelined AM-Adam, dependency-driven and lockstep (as implemented), with every
   device's busy and idle time and the utilization;
3. times whole steps, interleaved the same way: pipelined AM-Adam, single-device
   ``am_adam``, pipelined AM-mem (co-activation memories on the devices that hold the
   layers, one block-coordinate sweep) and single-device ``am_mem``, pipelined SM and
   single-device SM, each as a ratio to one ``optax.adam`` backprop step on one device,
   and the *measured* utilization of pipelined AM-Adam and SM (modelled busy time over S
   times the measured step time).

Like ``sm_pipeline.py``, a phase that runs on all S devices at once is measured as a whole
(all fake devices share the host's cores, so their work is serialised): the numbers show
the structure and the model's use, not a speed-up. The outside layout's first and last
layer are not part of the modelled busy time.

Each whole step of 3. also reports (``step_costs``) its multiply-adds (XLA's cost
analysis of the compiled step), its rate as a fraction of a dense matmul with about as many
multiply-adds timed in the same interleaved run, and its peak memory, as ``am_step.py``.
A pipelined step is one ``shard_map`` program: XLA analyses the program of one device
(``per_device_program``), and its GPipe ticks, code steps, inner solves and Lanczos sweeps
are ``while`` loops counted once, so those counts are lower bounds
(``multiply_adds_is_lower_bound``).

Usage::

  python benchmarks/am_pipeline.py [--quick] [--out results.json] [--stages 4]

``--quick`` (about 70 CPU-seconds, so under two minutes on an idle 2-core CPU): ``pad``,
width 64, 256 samples, M = 4, N = 10, 5 code steps, 3 repeats. Full: width 128, 1024
samples, M in {2, 8}, both layouts, 7 repeats. The last line printed is one JSON object.
"""

from __future__ import annotations

import fake_devices  # benchmarks/fake_devices.py: S fake CPU devices, before JAX starts

fake_devices.configure()

import common  # noqa: E402  (benchmarks/common.py: the scripts run from this folder)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
import pipeline_phases  # noqa: E402

import altmin_jax as amj  # noqa: E402
from altmin_jax import pipeline as pl  # noqa: E402
from altmin_jax.am import pipelined as am_pl  # noqa: E402
from altmin_jax.pipeline import schedule_model as sched  # noqa: E402

LAYERS = 8
SM_KW = dict(power_iterations=3)
LEARNING_RATE = 1e-3  # Adam's, for the baseline, GPipe + Adam and AM's weight steps
AM_KW = dict(code_steps=5, code_lr=0.1, mu=0.1, weight_steps=1)  # as the notebook (mu fixed)
MEM_KW = dict(code_steps=5, code_lr=0.1, mu=0.1, sweeps=1)  # AM-mem: one sweep, SGD output layer


def am_phase_functions(net, params, x, y, mesh, M: int, boundary: str) -> dict:
  """Pipelined AM-Adam's phases as ``{name: (jitted fn, args)}``: ``input_codes``,
  ``code_updates`` and ``weight_updates``, each on the previous phase's outputs (as in a
  step, with ``mu`` fixed)."""
  am_kw = dict(mesh=mesh, num_microbatches=M, boundary=boundary, **AM_KW)
  codes = amj.am.CodeStepOptions.from_arguments(AM_KW)
  rule = am_pl.gradient_rule(net, optax.adam(LEARNING_RATE), None, AM_KW["weight_steps"])
  cfg = am_pl.am_config(net, amj.losses.softmax_cross_entropy, codes, rule)
  pipe, cfg = am_pl.am_pipeline(cfg, pl.PipelineOptions(mesh, M, boundary))
  tx = amj.pipelined_am_adam(net, weight_optimizer=optax.adam(LEARNING_RATE), **am_kw)
  stacked = pl.stack_params(net, params, boundary=boundary, mesh=mesh)
  states = tx.init(stacked).weight_states
  prep = pl.gpipe.prepare(pipe, net, stacked, (x, y), "am_pipeline benchmark")
  lay, b, mu = pipe.layout, x.shape[0] // M, jnp.asarray(AM_KW["mu"])
  shared = (mu, jnp.asarray(1.0), jnp.asarray(0.0))  # mu, forgetting, ridge (unused by Adam)
  outside = boundary == "outside"
  per_micro = lambda a: pl.gpipe.microbatches(pl.layout.fit(a, lay.in_width), M)
  # what enters the pipeline and the top code's carry, as in am_pipeline.am_step
  bottom = net.stage_apply(1, prep.head, prep.x) if outside else prep.x
  first = net.activation(1)(bottom) if outside else prep.x
  xin, bin_ = per_micro(first), per_micro(bottom)
  if outside:  # the top code (updated outside the pipeline) enters the reverse pass
    carry = (jnp.zeros((M, b, lay.out_width), prep.dtype), None)
  else:
    carry = (jnp.zeros((M, b, lay.out_width), prep.dtype), pl.gpipe.microbatches(prep.y, M))
  zin = jax.jit(lambda th: pipe.forward(th, xin)[0])(prep.theta)
  out = pipeline_phases.JittedPhases()
  add = out.add

  cin, _ = add(
    "input_codes",
    lambda th, z: am_pl.input_codes(pipe, th, z, bin_, top=outside),
    prep.theta,
    zin,
  )
  (cin_new, cout_new), _ = add(
    "code_updates",
    lambda th, c: am_pl.code_updates(pipe, cfg, th, c, carry, mu, bottom=outside),
    prep.theta,
    cin,
  )
  add(
    "weight_updates",
    lambda th, s, a, c: am_pl.weight_updates(pipe, cfg, th, s, (), a, c, prep.y, shared),
    prep.theta,
    states,
    cin_new,
    cout_new,
  )
  return out


def run_platform(devices, n_stages: int, config: dict, repeats: int):
  N, boundary = config["N"], config["boundary"]
  prob = common.pipeline_problem(devices, n_stages, config, LAYERS)
  S, M, net, params, x, y = prob.stages, prob.microbatches, prob.net, prob.params, prob.x, prob.y

  # 1. phases: GPipe and SM's (pipeline_phases), Adam's update, AM's
  pipe, sm_phases = prob.sm_phases(N, **SM_KW)
  keep = ("forward", "backward", "gd_backward", "jacobians", "rest", "solve", "solve_1_step")
  phases = {name: sm_phases[name] for name in (*keep, "communication")}
  gd_backward, gd_args = sm_phases["gd_backward"]
  theta, grads = gd_args[0], gd_backward(*gd_args)[1]
  adam = optax.adam(LEARNING_RATE)

  def adam_update(th, g, st):
    updates, st = adam.update(g, st, th)
    return optax.apply_updates(th, updates), st

  with jax.set_mesh(prob.mesh):  # Adam's step count placed on the mesh with the moments
    adam_state = jax.jit(adam.init)(theta)
  phases["adam_update"] = (jax.jit(adam_update), (theta, grads, adam_state))
  phases.update(am_phase_functions(net, params, x, y, prob.mesh, M, boundary))
  measured = common.median_times(phases, repeats)

  # 2. per-device operation times and the model
  ticks, k = M + S - 1, SM_KW["power_iterations"]
  comm = measured["communication"] / (2 * ticks)
  inner = max(measured["solve"] - measured["solve_1_step"], 0.0) / max(N - 1, 1)
  durations = sched.Durations(
    forward=measured["forward"] / ticks,
    backward=measured["backward"] / ticks,
    jacobian=measured["jacobians"] / ticks,
    # the library's rest sweeps: 2 GPipe passes of M + S - 1 ticks per Lanczos step
    rest_microbatch=measured["rest"] / (2 * k * ticks),
    inner_step=inner,
    solve_setup=max(measured["solve_1_step"] - inner, 0.0),
    input_code=max(measured["input_codes"] - comm, 0.0),
    code_update=measured["code_updates"] / ticks,
    weight_update=measured["weight_updates"],
    comm=comm,
  )
  adam_durations = durations._replace(
    backward=measured["gd_backward"] / ticks, update=measured["adam_update"]
  )
  model = {}
  for lockstep in (False, True):
    suffix = "_lockstep" if lockstep else ""
    model["gpipe_adam" + suffix] = sched.gpipe_schedule(
      "gd", S, M, adam_durations, lockstep=lockstep
    ).as_dict()
    model["sm" + suffix] = sched.gpipe_schedule(
      "sm",
      S,
      M,
      durations,
      inner_steps=N,
      rest_steps=k,
      rest_sweeps="microbatched",
      lockstep=lockstep,
    ).as_dict()
    model["am_adam" + suffix] = sched.gpipe_schedule(
      "am", S, M, durations, lockstep=lockstep
    ).as_dict()

  # 3. whole steps
  am_kw = dict(weight_optimizer=optax.adam(LEARNING_RATE), **AM_KW)
  sm = amj.sm.surrogate_minimization
  steps = {
    "optax_adam": prob.single(optax.adam(LEARNING_RATE), True),
    "am_adam_single_device": prob.single(amj.am_adam(net, **am_kw), False),
    "pipelined_am_adam": prob.pipelined(amj.pipelined_am_adam(net, **prob.kw, **am_kw)),
    "am_mem_single_device": prob.single(amj.am_mem(net, **MEM_KW), False),
    "pipelined_am_mem": prob.pipelined(amj.pipelined_am_mem(net, **prob.kw, **MEM_KW)),
    "sm_single_device": prob.single(sm(net, inner_steps=N, **SM_KW), False),
    "pipelined_sm": prob.pipelined(
      amj.pipelined_surrogate_minimization(net, inner_steps=N, **prob.kw, **SM_KW)
    ),
  }
  whole = prob.time_steps(steps, repeats, "optax_adam")
  step_times = whole["step_seconds"]
  busy = {name: sum(model[name]["busy"]) for name in ("am_adam", "sm")}
  return {
    **prob.fields(pipe.pipe.layers_per_stage),
    "sm_inner_steps": N,
    "am": {**AM_KW, "weight_optimizer": f"adam({LEARNING_RATE})"},
    "am_mem": {**MEM_KW, "output_optimizer": "sgd(0.1)"},
    "phase_seconds": measured,
    "durations": durations._asdict(),
    "gpipe_adam_durations": adam_durations._asdict(),
    "model": model,
    **whole,
    "modelled_utilization": {name: v["utilization"] for name, v in model.items()},
    "modelled_busy": {name: v["busy"] for name, v in model.items()},
    "modelled_idle": {name: v["idle"] for name, v in model.items()},
    "measured_utilization": {
      "pipelined_am_adam": busy["am_adam"] / (S * step_times["pipelined_am_adam"]),
      "pipelined_sm": busy["sm"] / (S * step_times["pipelined_sm"]),
    },
    "modelled_step_seconds": {name: v["makespan"] for name, v in model.items()},
  }


def main() -> dict:
  return common.run_pipelines(
    "am_pipeline",
    __doc__.split("\n")[0],
    run_platform,
    quick=[dict(width=64, batch=256, M=4, N=10, boundary="pad")],
    full=[
      dict(width=128, batch=1024, M=m, N=10, boundary=b) for b in ("pad", "outside") for m in (2, 8)
    ],
    notes=[
      "fake CPU devices share the host's cores: parallel phases are serialised",
      "GPipe + Adam is modelled only (schedule model 'gd' with Adam's update time)",
      "boundary 'outside': the first and last layer run replicated on every device and "
      "are not part of the modelled busy time",
    ],
    headline=lambda r: "  ".join(
      f"{k} {1e3 * v:.1f} ms ({r['ratio_to_optax_adam'][k]:.1f}x Adam)"
      for k, v in r["step_seconds"].items()
    ),
  )


if __name__ == "__main__":
  main()
