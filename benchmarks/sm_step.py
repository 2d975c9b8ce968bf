r"""Step time of surrogate minimization against GD+Armijo and a backprop step.

For 784-100-...-100-10 ReLU MLPs with 4 and 8 layers (stages) on a fixed full batch
of bundled MNIST training images (the paper's deterministic setting), measures in one
run the median wall time of one jitted iteration of

* ``sgd``: one backprop step (``jax.value_and_grad`` + ``optax.sgd``), the baseline;
* ``gd_armijo``: GD with Armijo line search (one gradient plus one forward pass per
  trial step);
* ``sm_cg`` / ``sm_armijo``: surrogate minimization with N = 10 CG / GD+Armijo steps
  per local loss (curvature constants from 10 Lanczos steps per stage), at the library's
  defaults: the step search along the SM step included (one forward pass per trial);
* full mode also ``sso`` (N = 10), ``cg_block`` (N = 10) and ``ddg`` (K = 4 modules);

and the phases of one ``sm_cg`` step, the phase functions of :mod:`altmin_jax.sm.surrogate`
that the step composes, each jitted on its own from the previous phase's (materialised)
outputs: ``forward_backward`` (one forward and one backward pass), ``jacobians``
(``curvature``: the loss's per-sample Hessians, every stage's level and the logits'
Jacobians by one reverse pass), ``rest_bounds`` (the per-sample Lanczos bounds of the rest
of the network) and ``local_solves`` (N = 10 CG steps on every local loss and the update
:math:`\theta + d`). Their sum exceeds the fused step by what XLA saves across phase
boundaries (and by the stages' levels, rebuilt in ``jacobians`` and ``rest_bounds``). Each
phase's matrix multiply-adds (jaxpr count, the CG loop's N iterations included) are reported as a
multiple of the SGD step's (``<phase>_multiply_adds_ratio_to_sgd``) beside its time, and
its rate relative to the SGD step's (``<phase>_rate_ratio_to_sgd_rate``), so a slow phase
is told apart from a phase with much arithmetic. ``one_product_per_stage_ratio_to_sgd`` is
one local Hessian-vector product on every stage (a CG step's matrix work: two stage-sized
products per dense stage, :math:`J_\theta v` and :math:`J_\theta^\top w`) over the SGD
step's multiply-adds, and ``cg_products_ratio_to_sgd`` N times it: the arithmetic floor of
the N CG steps alone. The ``memory`` section gives the peak memory of the 4-layer steps at
widths 100 and 300 and batches 500 and 2000 (compiled, not run), to show how it grows.

(each step returns the loss at its start: ``sgd`` from its ``value_and_grad``, the others
from their state, so no method pays for an extra forward pass) with the jitted
steps interleaved round-robin so that machine noise hits every method alike, and reports
each method's ratio to ``sgd`` and to ``gd_armijo``. Then every method trains from the
same initialisation for the same wall-clock budget (compilation excluded) and the
training loss it reached is reported.

Beside the ratios, as ``am_step.py``: each method's multiply-adds per step (XLA's cost
analysis of the compiled step), its rate as a fraction of a dense matmul with about as many
multiply-adds timed in the same interleaved run, and XLA's peak memory of the compiled
step. SM's CG solves, Lanczos sweeps and line searches (and GD+Armijo's backtracking) are
``while`` loops whose body XLA counts once: there the multiply-adds and the fraction are
lower bounds (``multiply_adds_is_lower_bound``, ``+`` in the printout; trip counts in
``while_loop_trip_counts``, ``None`` for a data-dependent line search).

Usage::

  python benchmarks/sm_step.py [--quick] [--out results.json]

``--quick`` (under a minute on a laptop CPU): 500 samples, the core methods only,
fewer repeats, 3 s per method for the equal-time run. The last line printed is one
JSON object.
"""

from __future__ import annotations

import time

import common  # benchmarks/common.py: the scripts run from this folder
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pipeline_phases  # benchmarks/pipeline_phases.py: JittedPhases

import altmin_jax as amj
from altmin_jax import sm
from altmin_jax.networks import stages
from altmin_jax.sm import local_losses as ll
from altmin_jax.sm import majorizers
from altmin_jax.sm import surrogate as sur

CORE = ("sgd", "gd_armijo", "sm_cg")
ALL = (*CORE, "sm_armijo", "sso", "cg_block", "ddg")
WIDTH = 100
PHASES = ("forward_backward", "jacobians", "rest_bounds", "local_solves")
MEMORY_WIDTHS, MEMORY_BATCHES = (100, 300), (500, 2000)


def build(name: str, net) -> tuple[optax.GradientTransformation, bool]:
  """The method and whether it consumes gradients."""
  if name == "sgd":
    return optax.sgd(0.1), True
  if name == "gd_armijo":
    return sm.gd_armijo(net), False
  if name == "sm_cg":
    return sm.surrogate_minimization(net, inner_steps=10), False
  if name == "sm_armijo":
    return sm.surrogate_minimization(net, inner_steps=10, solver="armijo"), False
  if name == "sso":
    return sm.sso(net, inner_steps=10), False
  if name == "cg_block":
    return sm.cg_block(net, inner_steps=10, damping=0.1), False
  if name == "ddg":
    return sm.ddg(net, learning_rate=0.1, num_modules=4), False
  raise ValueError(name)


def train_step(net, tx, uses_grads: bool):
  """A jitted ``step(params, state, x, y) -> (params, state, loss)``.

  A gradient method gets ``jax.value_and_grad`` of the batch-mean loss (one forward and
  one backward pass, as ``training.make_train_step``). The SM family computes its own
  forward and backward passes, so its step calls ``update`` with no gradients and returns
  the loss the method's state records (h(theta_t), before the update): no extra forward
  pass is timed (``make_train_step(uses_gradients=False)`` would evaluate the loss once
  more).
  """
  if uses_grads:
    loss = amj.losses.softmax_cross_entropy
    return amj.training.make_train_step(net.apply, tx, loss=loss, uses_gradients=True)

  @jax.jit
  def step(params, state, x, y):
    updates, state = tx.update(None, state, params, batch=(x, y))
    return optax.apply_updates(params, updates), state, state.loss

  return step


def make_steps(layers: int, x, y, methods) -> dict:
  net = amj.networks.mlp([784] + [WIDTH] * (layers - 1) + [10], activation=jax.nn.relu)
  params = net.init(jax.random.key(0))
  out = {}
  for name in methods:
    tx, uses_grads = build(name, net)
    step = train_step(net, tx, uses_grads)
    run_once, costs = common.carried_step(step, params, tx.init(params), x, y)
    out[name] = {"run_once": run_once, "step": step, "tx": tx, "params": params, "costs": costs}
  return out


def phase_steps(layers: int, x, y, inner_steps: int = 10) -> tuple[dict, dict]:
  """The phases of one SM step, as the step composes them (the phase functions of
  :mod:`altmin_jax.sm.surrogate`), each jitted on its own from the previous phase's
  outputs: ``(run_once, jitted)`` pairs for ``common.time_steps`` and each phase's matrix
  multiply-adds."""
  net = amj.networks.mlp([784] + [WIDTH] * (layers - 1) + [10], activation=jax.nn.relu)
  loss = amj.losses.softmax_cross_entropy
  cfg = ll.sm_config(net, loss, ll.SMOptions(inner_steps=inner_steps))
  m = net.num_stages
  params = net.init(jax.random.key(0))
  stage_params = stages.prepare(net, params, (x, y), "benchmark", loss).stage_params
  steps = jnp.full([m], cfg.options.line_search.init_step, jnp.float32)
  sc = ll.scales(cfg, x.shape[0], jnp.float32)
  young = cfg.options.majorizer  # majorizers.Young: its phases

  def forward_backward(sp):
    return sur.forward_backward(cfg, sp, x, y)

  def jacobians(sp, fb):
    # The stages' levels are rebuilt in each phase (a few elementwise ops for dense stages).
    return young.curvature(cfg, fb, y, young.levels(cfg, sp, fb))

  def rest_bounds(sp, fb):
    return young.rest_bounds(cfg, fb, sc, young.levels(cfg, sp, fb))

  def local_solves(sp, fb, curv, es):
    data = ll.stage_data(sp, fb, young.assemble(curv, es))
    return sur.update(sp, sur.local_solves(cfg, data, sc, steps))

  def local_setup(sp, fb, curv, es, product: bool):
    """Every stage's local loss (its gradient) and, with ``product``, one Hessian-vector
    product on it: the difference of the two counts is a CG step's matrix work."""
    out = []
    for i, d in enumerate(ll.stage_data(sp, fb, young.assemble(curv, es)), start=1):
      kind = majorizers.stage_kind(net, i)
      lq = ll.local_quadratic(cfg.options, kind, i == 1, i == m, float(i), d, sc)
      out.append(lq.matvec(lq.g_theta) if product else lq.g_theta)
    return out

  phases = pipeline_phases.JittedPhases()
  fb = phases.add("forward_backward", forward_backward, stage_params)
  curv = phases.add("jacobians", jacobians, stage_params, fb)
  es = phases.add("rest_bounds", rest_bounds, stage_params, fb)
  phases.add("local_solves", local_solves, stage_params, fb, curv, es)
  counts = {name: common.jaxpr_multiply_adds(fn, *args) for name, (fn, args) in phases.items()}
  args = phases["local_solves"][1]
  setup, with_product = (
    common.jaxpr_multiply_adds(lambda *a, p=p: local_setup(*a, product=p), *args)[
      "jaxpr_matmul_multiply_adds"
    ]
    for p in (False, True)
  )
  # The CG loop is a while loop (it stops early on negative curvature) that the jaxpr
  # count counts once: add the other N - 1 iterations' products.
  product = with_product - setup
  counts["local_solves"]["jaxpr_matmul_multiply_adds"] += (inner_steps - 1) * product
  counts["local_setup"] = setup
  counts["one_product_per_stage"] = product
  counts["inner_steps"] = inner_steps
  return common.calls(phases), counts


def peak_memory(layers: int, width: int, batch: int, methods) -> dict[str, int]:
  """Peak memory of each method's compiled step (compiled only, not run)."""
  net = amj.networks.mlp([784] + [width] * (layers - 1) + [10], activation=jax.nn.relu)
  params = net.init(jax.random.key(0))
  x = jax.ShapeDtypeStruct((batch, 784), jnp.float32)
  y = jax.ShapeDtypeStruct((batch,), jnp.int32)
  peaks = {}
  for name in methods:
    tx, uses_grads = build(name, net)
    step = train_step(net, tx, uses_grads)
    jitted = getattr(step, "jitted", step)
    peaks[name] = common.compiled_costs(jitted, params, tx.init(params), x, y)["peak_memory_bytes"]
  return peaks


def phase_arithmetic(counts: dict, phases: dict, medians: dict, rates: dict) -> dict:
  """Each phase's matrix multiply-adds (jaxpr count, CG iterations included) as a multiple
  of the SGD step's, and its rate as a fraction of the SGD step's rate: whether a phase is
  slow because of its arithmetic or because it runs the machine less well."""
  sgd_work = rates["sgd"]["jaxpr_matmul_multiply_adds"]
  sgd_rate = sgd_work / medians["sgd"]
  product, n = counts["one_product_per_stage"], counts["inner_steps"]
  out = {
    "sgd_multiply_adds": sgd_work,
    # a CG step's matrix work: one local Hessian-vector product on every stage
    "one_product_per_stage_multiply_adds": product,
    "one_product_per_stage_ratio_to_sgd": product / sgd_work,
    # the local losses' own data (pre-activations, gradients), once per step
    "local_setup_multiply_adds": counts["local_setup"],
    # N products: the matrix work of the N CG steps alone, as a multiple of the SGD step's
    "cg_products_ratio_to_sgd": n * product / sgd_work,
  }
  for k in PHASES:
    work = counts[k]["jaxpr_matmul_multiply_adds"]
    out[f"{k}_multiply_adds"] = work
    out[f"{k}_multiply_adds_ratio_to_sgd"] = work / sgd_work
    out[f"{k}_rate_ratio_to_sgd_rate"] = work / phases[k] / sgd_rate
  return out


def equal_time(steps: dict, x, y, budget: float) -> dict[str, dict]:
  """Training loss reached by each method from the same start after ``budget`` seconds."""
  out = {}
  for name, s in steps.items():
    params, state = s["params"], s["tx"].init(s["params"])
    iterations, elapsed = 0, 0.0
    while elapsed < budget:
      start = time.perf_counter()
      params, state, _ = s["step"](params, state, x, y)
      jax.block_until_ready(params)
      elapsed += time.perf_counter() - start
      iterations += 1
    final = s["step"](params, state, x, y)[2]  # loss at the final params (before a step)
    out[name] = {"iterations": iterations, "seconds": elapsed, "train_loss": float(final)}
  return out


def main() -> dict:
  args = common.parse_args(__doc__.split("\n")[0], "core methods, fewer repeats")
  n, methods, repeats, inner, budget = (
    (500, CORE, 3, 2, 3.0) if args.quick else (2000, ALL, 7, 5, 20.0)
  )
  x, y = amj.data.load_dataset("bundled_mnist", num_train=8000).train
  x, y = jnp.asarray(x[:n]), jnp.asarray(y[:n])
  results, trained, breakdown = [], [], []
  for layers in (4, 8):
    steps = make_steps(layers, x, y, methods)
    medians, rates = common.measure(
      {name: (s["run_once"], s["step"]) for name, s in steps.items()},
      {name: s["costs"] for name, s in steps.items()},
      repeats,
      inner,
    )
    phase_calls, phase_counts = phase_steps(layers, x, y)
    phases = common.time_steps(phase_calls, repeats, inner)
    sgd_again = common.time_steps(
      {"sgd": (steps["sgd"]["run_once"], steps["sgd"]["step"])}, 3, inner
    )
    sgd_ref = 0.5 * (medians["sgd"] + sgd_again["sgd"])  # the SGD step around the phases
    breakdown.append(
      {
        "layers": layers,
        "batch": n,
        "sgd_step_ms": 1e3 * sgd_ref,
        "sm_cg_step_ms": 1e3 * medians["sm_cg"],
        **{f"{k}_ms": 1e3 * v for k, v in phases.items()},
        **{f"{k}_ratio_to_sgd": v / sgd_ref for k, v in phases.items()},
        **phase_arithmetic(phase_counts, phases, medians, rates),
      }
    )
    for name, seconds in medians.items():
      results.append(
        {
          "layers": layers,
          "batch": n,
          "method": name,
          "median_step_ms": 1e3 * seconds,
          "ratio_to_sgd": seconds / medians["sgd"],
          "ratio_to_gd_armijo": seconds / medians["gd_armijo"],
          **rates[name],
        }
      )
    for name, r in equal_time(steps, x, y, budget).items():
      trained.append({"layers": layers, "method": name, "budget_s": budget, **r})
  memory = [
    {"layers": 4, "width": width, "batch": batch, "method": name, "peak_memory_bytes": v}
    for width in MEMORY_WIDTHS
    for batch in MEMORY_BATCHES
    for name, v in peak_memory(4, width, batch, CORE).items()
  ]
  report = common.report(
    "sm_step",
    args.quick,
    width=WIDTH,
    step_times=results,
    sm_phases=breakdown,
    equal_wall_time=trained,
    memory=memory,
  )
  for r in results:
    print(
      f"{r['layers']} layers  {r['method']:10s} {r['median_step_ms']:9.2f} ms  "
      f"{r['ratio_to_sgd']:6.2f}x sgd  {r['ratio_to_gd_armijo']:5.2f}x gd_armijo  "
      + common.costs_text(r)
    )
  for r in breakdown:
    print(
      f"{r['layers']} layers  SM phases, time (multiply-adds) x sgd: "
      + "  ".join(
        f"{k} {r[f'{k}_ratio_to_sgd']:.2f} ({r[f'{k}_multiply_adds_ratio_to_sgd']:.2f})"
        for k in PHASES
      )
    )
  for r in trained:
    print(
      f"{r['layers']} layers  {r['method']:10s} {r['iterations']:5d} iterations in "
      f"{r['seconds']:.1f} s -> train loss {r['train_loss']:.4f}"
    )
  for r in memory:
    print(
      f"memory: 4 layers, width {r['width']}, batch {r['batch']}, {r['method']:10s} "
      f"peak {r['peak_memory_bytes'] / 2**20:6.1f} MiB"
    )
  return common.finish(report, args.out)


if __name__ == "__main__":
  np.set_printoptions(precision=4)
  main()
