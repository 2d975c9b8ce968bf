r"""Beyond the paper: is there a regime in which pipelined SM beats GPipe + Adam?

Issue 24, requirement 7. The modelled time to a training loss is the number of iterations
a method needs (from its full-batch loss curve, which does not depend on how the layers are
pipelined) times its modelled makespan per iteration
(:func:`~altmin_jax.pipeline.schedule_model.run_times`, every iteration with its own search
trials and curvature refresh). This script sweeps the regime, the depth (4 and 8 layers of
a 784-100-...-100-10 ReLU MLP on the first ``--samples`` bundled MNIST images, full
batch), the number of stages S (dividing the depth), the micro-batches M and the link
latency (a cost added to every transfer, i.e. to every tick of every pass and every round
of a sequential sweep), and reports per SM variant and target the smallest ratio of SM's
time to Adam's, and the smallest latency at which some (S, M) makes it less than 1
(``first_win``).

Operation times come from the multiply-adds of the single-device pieces
(``sm_time_to_loss.unit_costs``, counted on the jaxpr, in units of one full-batch SGD
step), split evenly over the S stages and the M micro-batches: forward pass, backward
pass (SM's: output gradients only; Adam's: also the parameter gradients), the logits'
Jacobians, the rest bounds (``2 k`` passes per Lanczos step, micro-batched), the local
set-up and one CG product per inner step (plus one for a warm start); updates are
elementwise and count 0. This is optimistic for SM: the implemented pipelined sweeps carry
every layer's Lanczos chain through every device (``sm_pipeline.py`` counts that work), and
an even split ignores the wider input layer. Latency is given in SGD-step units and as
multiples of one micro-batch forward through one device.

Methods: ``adam`` (optax, lr 1e-2, GPipe + Adam), and SM as in ``sm_pipeline.SM_RUNS``:
``sm_today`` (Algorithm 1), ``sm_default`` (the library's defaults) and
``sm_warm3_refresh5``, all with micro-batched rest sweeps.

Usage::

  python benchmarks/sm_regimes.py [--quick] [--out results.json] [--samples 1000]

``--quick``: 4 layers only, fewer regimes. The last line printed is one JSON object.
"""

from __future__ import annotations

import itertools

import common  # benchmarks/common.py: the scripts run from this folder
import jax
import jax.numpy as jnp
import optax
import sm_pipeline  # benchmarks/sm_pipeline.py: the loss curves and the SM runs
import sm_time_to_loss  # benchmarks/sm_time_to_loss.py: the multiply-add unit costs

import altmin_jax as amj
from altmin_jax.pipeline import schedule_model as sched
from altmin_jax.sm import local_losses

WIDTH = 100
TARGETS = (0.5, 0.1)
LATENCIES = (0.0, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 10.0, 100.0)  # per transfer, SGD steps
MICROBATCHES = (1, 2, 4, 8, 16, 32)
METHODS = ("adam", *sm_pipeline.SM_RUNS)


def curves_of(net, x, y) -> dict:
  """Every method's full-batch loss curve to the lowest target (single device)."""
  params = net.init(jax.random.key(0))
  out = {
    "adam": sm_pipeline.loss_curve(
      "adam", optax.adam(sm_pipeline.ADAM_LR), net, params, x, y, min(TARGETS), 400
    )
  }
  for name, opts in sm_pipeline.SM_RUNS.items():
    tx = amj.surrogate_minimization(net, **{**sm_pipeline.SM_KW, **opts})
    out[name] = sm_pipeline.loss_curve(name, tx, net, params, x, y, min(TARGETS), 200)
  return out


def durations(units: dict, S: int, M: int, latency: float, adam: bool) -> sched.Durations:
  """Per-device operation times (SGD-step units) of an even split over S stages and M
  micro-batches (module docstring)."""
  k = sm_pipeline.SM_KW["power_iterations"]
  fwd = units["forward"]
  back = (1.0 if adam else units["forward_backward"]) - fwd
  return sched.Durations(
    forward=fwd / (S * M),
    backward=back / (S * M),
    jacobian=units["jacobians"] / (S * M),
    rest=units["rest_bounds"] / (2 * k * S),
    rest_microbatch=units["rest_bounds"] / (2 * k * S * M),
    inner_step=units["product"] / S,
    solve_setup=units["local_setup"] / S,
    comm=latency,
  )


def method_kw(name: str) -> dict:
  if name == "adam":
    return {}
  options = local_losses.SMOptions(**{**sm_pipeline.SM_KW, **sm_pipeline.SM_RUNS[name]})
  return dict(
    inner_steps=options.inner_steps + int(options.cg_warm_start),
    rest_steps=options.power_iterations,
    rest_sweeps="microbatched",
  )


def times_to_targets(name, curve, units, S, M, latency, lockstep=False) -> dict:
  """Modelled time (SGD-step units) to each target, and the iterations."""
  hits = {t: next((i for i, v in enumerate(curve["losses"]) if v <= t), None) for t in TARGETS}
  last = max((h for h in hits.values() if h is not None), default=0)
  d = durations(units, S, M, latency, name == "adam")
  per_it = dict(trials=curve["trials"][:last], lockstep=lockstep, **method_kw(name))
  if name != "adam":
    per_it["refreshed"] = curve["refreshed"][:last]
  times = sched.run_times("sm" if name != "adam" else "gd", S, M, d, **per_it)
  return {t: None if h is None else (h, times[h]) for t, h in hits.items()}


def main() -> dict:
  args = common.parse_args(
    __doc__.splitlines()[0],
    quick_help="4 layers, fewer regimes",
    options={"samples": (int, "training images, full batch (default 1000)")},
  )
  samples = args.samples or 1000
  depths = (4,) if args.quick else (4, 8)
  data = amj.data.load_dataset("bundled_mnist", num_train=8000)
  x, y = jnp.asarray(data.train[0][:samples]), jnp.asarray(data.train[1][:samples])
  report = {"samples": samples, "width": WIDTH, "depths": {}}
  best_overall = None
  for L in depths:
    net = amj.networks.mlp([784] + [WIDTH] * (L - 1) + [10], activation=jax.nn.relu)
    units = sm_time_to_loss.unit_costs(net, x, y)
    curves = curves_of(net, x, y)
    stages = [S for S in (1, 2, 4, 8) if L % S == 0]
    micro = MICROBATCHES[:4] if args.quick else MICROBATCHES
    rows = []
    for S, lat in itertools.product(stages, LATENCIES):
      t = {
        M: {name: times_to_targets(name, curves[name], units, S, M, lat) for name in METHODS}
        for M in micro
      }
      for target in TARGETS:
        adam = {M: t[M]["adam"][target] for M in micro if t[M]["adam"][target]}
        if not adam:
          continue
        a_m = min(adam, key=lambda M: adam[M][1])  # each method at its own best M
        for name in METHODS[1:]:
          sm = {M: t[M][name][target] for M in micro if t[M][name][target]}
          if not sm:
            continue
          s_m = min(sm, key=lambda M: sm[M][1])
          same = min((sm[M][1] / adam[M][1], M) for M in sm if M in adam)
          (its, time_sm), (its_a, time_a) = sm[s_m], adam[a_m]
          rows.append(
            {
              "layers": L,
              "stages": S,
              "latency_sgd_steps": lat,
              # a transfer as a multiple of the whole network's full-batch forward pass
              "latency_network_forwards": lat / units["forward"],
              "target": target,
              "method": name,
              "sm_microbatches": s_m,
              "adam_microbatches": a_m,
              "iterations": its,
              "adam_iterations": its_a,
              "iterations_ratio": its / its_a,
              "makespan_ratio": (time_sm / its) / (time_a / its_a),
              "time_ratio": time_sm / time_a,
              "same_microbatches_time_ratio": same[0],
              "same_microbatches": same[1],
            }
          )
    best = {}
    for target, name in itertools.product(TARGETS, METHODS[1:]):
      mine = [r for r in rows if r["target"] == target and r["method"] == name]
      if mine:
        b = min(mine, key=lambda r: r["time_ratio"])
        # the same regime, lockstep (as implemented)
        lock = [
          times_to_targets(m, curves[m], units, b["stages"], M, b["latency_sgd_steps"], True)[
            target
          ][1]
          for m, M in ((name, b["sm_microbatches"]), ("adam", b["adam_microbatches"]))
        ]
        wins = [r for r in mine if r["time_ratio"] < 1.0]
        b = dict(
          b,
          lockstep_time_ratio=lock[0] / lock[1],
          # the smallest latency at which some (S, M) lets SM win, and that regime
          first_win=min(wins, key=lambda r: (r["latency_sgd_steps"], r["time_ratio"]))
          if wins
          else None,
        )
        best[f"{name}@{target}"] = b
        if best_overall is None or b["time_ratio"] < best_overall["time_ratio"]:
          best_overall = b
    report["depths"][L] = {
      "unit_costs_sgd_steps": units,
      "curves": {
        name: {
          "iterations_to": {
            str(t): next((i for i, v in enumerate(c["losses"]) if v <= t), None) for t in TARGETS
          },
          "mean_trials": sum(c["trials"]) / max(len(c["trials"]), 1),
          "refresh_fraction": sum(c["refreshed"]) / max(len(c["refreshed"]), 1),
          "final_loss": c["losses"][-1],
        }
        for name, c in curves.items()
      },
      "best_regime_per_method_and_target": best,
      "regimes": rows,
    }
    for key, b in best.items():
      print(
        f"L={L} {key}: best S={b['stages']} latency {b['latency_sgd_steps']:g} SGD steps "
        f"(M={b['sm_microbatches']} for SM, {b['adam_microbatches']} for Adam): SM/Adam time "
        f"{b['time_ratio']:.2f} (iterations {b['iterations']}/{b['adam_iterations']} = "
        f"{b['iterations_ratio']:.2f}, per iteration {b['makespan_ratio']:.2f}; lockstep "
        f"{b['lockstep_time_ratio']:.2f}; same M {b['same_microbatches_time_ratio']:.2f})"
      )
      w = b["first_win"]
      if w:
        print(
          f"  wins from latency {w['latency_sgd_steps']:g} SGD steps "
          f"({w['latency_network_forwards']:.3g} network forwards) at S={w['stages']}: "
          f"{w['time_ratio']:.2f}"
        )
  beats = best_overall is not None and best_overall["time_ratio"] < 1.0
  report["answer"] = {
    "sm_beats_adam_somewhere": beats,
    "best": best_overall,
  }
  print(
    "answer: "
    + ("a regime lets pipelined SM beat GPipe + Adam" if beats else "no regime does")
    + f" (best SM/Adam modelled time {best_overall['time_ratio']:.2f})"
  )
  return common.finish(common.report("sm_regimes", args.quick, **report), args.out)


if __name__ == "__main__":
  main()
