r"""Time to a training loss: surrogate minimization's variants against its baselines.

Full batch (the SM paper's deterministic setting): 784-100-...-100-10 ReLU MLPs with 4 and 8
layers (stages) on the first ``--samples`` of the 8,000 bundled MNIST training images, every
method from the same initialisation. Each method runs until its training loss is below the
smallest target (0.01) or its iteration or wall-time budget is spent; the report gives, for
the targets 0.5 / 0.1 / 0.01, the iterations, the wall time (jitted steps, compilation
excluded, the host reading the loss after every step) and the multiply-adds spent before the
loss first reached each target.

Multiply-adds are counted on the jaxpr (``common.jaxpr_multiply_adds``), in units of one
full-batch SGD step (``value_and_grad`` of the loss): per SM iteration the forward and
backward pass, the curvature phases (the logits' Jacobians and the rest bounds) when the
iteration computed them (``SMState.refreshed``), the local gradients, one local
Hessian-vector product on every stage per CG step actually taken (the most any stage took,
``SMState.inner_iterations``) plus one for a warm start, and one forward pass per trial of
the step search (``SMState.search_trials``). GD+Armijo: one gradient plus one forward pass
per trial (the trials recovered from its step sizes); Adam: one SGD step. Each method's
``seconds_per_iteration_ratio_to_adam`` is its wall time per iteration over Adam's (optax,
the baseline of the same run; the methods run one after the other, so machine load shifts
it more than an interleaved timing would).

SM variants (``--methods``): ``sm`` (N = 10 CG steps, no search, curvature every iteration:
Algorithm 1 as the paper states it), ``sm_search`` (N = 10 plus the step search),
``sm_search_warmN`` (N CG steps warm-started, plus the search) and
``sm_search_warmN_refreshK`` (also the curvature every K iterations), ``sm_default`` (the
library's defaults); baselines ``gd_armijo``, ``adam`` (learning rate 1e-2, the best of
{1e-3, 3e-3, 1e-2, 3e-2} on these nets), ``cg_block`` and ``cg_block_armijo``, ``sso``,
``ddg``.

Usage::

  python benchmarks/sm_time_to_loss.py [--quick] [--out results.json] [--layers 4,8]
      [--samples 8000] [--methods sm,sm_search,...]

``--quick``: 1,000 samples, 4 layers, a few methods, short budgets. The last line printed is
one JSON object.
"""

from __future__ import annotations

import math
import re
import time

import common  # benchmarks/common.py: the scripts run from this folder
import jax
import jax.numpy as jnp
import numpy as np
import optax

import altmin_jax as amj
from altmin_jax.networks import stages
from altmin_jax.sm import local_losses as ll
from altmin_jax.sm import majorizers
from altmin_jax.sm import surrogate as sur

TARGETS = (0.5, 0.1, 0.01)
WIDTH = 100
SM_VARIANT = re.compile(r"sm_search_warm(\d+)(?:_refresh(\d+))?$")


def sm_options(name: str) -> dict | None:
  """The SM options of an SM variant's name (``None`` for a baseline)."""
  off = dict(step_search=None, cg_warm_start=False, curvature_refresh=1)
  if name == "sm":
    return dict(off, inner_steps=10)
  if name == "sm_default":
    return {}
  if name == "sm_search":
    return dict(off, inner_steps=10, step_search=ll.STEP_SEARCH)
  found = SM_VARIANT.match(name)
  if found:
    return dict(
      inner_steps=int(found.group(1)),
      step_search=ll.STEP_SEARCH,
      cg_warm_start=True,
      curvature_refresh=int(found.group(2) or 1),
    )
  return None


def build(name: str, net) -> tuple[optax.GradientTransformation, bool]:
  """The transformation and whether it consumes gradients."""
  options = sm_options(name)
  if options is not None:
    return amj.surrogate_minimization(net, **options), False
  if name == "gd_armijo":
    return amj.gd_armijo(net), False
  if name == "adam":
    return optax.adam(1e-2), True
  if name == "cg_block":
    return amj.cg_block(net, inner_steps=10, line_search=None), False
  if name == "cg_block_armijo":
    return amj.cg_block(net, inner_steps=10), False
  if name == "sso":
    return amj.sso(net, inner_steps=10), False
  if name == "ddg":
    return amj.ddg(net, learning_rate=0.1, num_modules=min(4, net.num_stages)), True
  raise ValueError(f"unknown method {name!r}")


def unit_costs(net, x, y) -> dict:
  """Multiply-adds of the building blocks, in units of one SGD step."""
  loss = amj.losses.softmax_cross_entropy
  params = net.init(jax.random.key(0))
  sp = stages.prepare(net, params, (x, y), "benchmark", loss).stage_params
  cfg = ll.sm_config(net, loss, ll.SMOptions())
  young, m = cfg.options.majorizer, net.num_stages
  sc = ll.scales(cfg, x.shape[0], jnp.float32)
  h = lambda sp: stages.batch_mean_loss(loss, net.forward_stages(sp, x)[1], y)
  count = lambda fn, *a: common.jaxpr_multiply_adds(fn, *a)["jaxpr_matmul_multiply_adds"]
  sgd = count(jax.value_and_grad(h), sp)
  fb = sur.forward_backward(cfg, sp, x, y)
  levels = lambda sp, fb: young.levels(cfg, sp, fb)

  def local(sp, fb, product):
    out = []
    for i, d in enumerate(sur.stage_data(cfg, sp, fb, y, sc), start=1):
      kind = majorizers.stage_kind(net, i)
      lq = ll.local_quadratic(cfg.options, kind, i == 1, i == m, float(i), d, sc)
      out.append(lq.matvec(lq.g_theta) if product else lq.g_theta)
    return out

  curv_and_rest = count(lambda sp, fb: sur.curvature_bounds(cfg, sp, fb, y, sc), sp, fb)
  setup = count(lambda sp, fb: local(sp, fb, False), sp, fb) - curv_and_rest
  product = count(lambda sp, fb: local(sp, fb, True), sp, fb) - curv_and_rest - setup
  return {
    "sgd_multiply_adds": sgd,
    "forward": count(h, sp) / sgd,
    "forward_backward": count(lambda sp: sur.forward_backward(cfg, sp, x, y), sp) / sgd,
    "jacobians": count(lambda sp, fb: young.curvature(cfg, fb, y, levels(sp, fb)), sp, fb) / sgd,
    "rest_bounds": count(lambda sp, fb: young.rest_bounds(cfg, fb, sc, levels(sp, fb)), sp, fb)
    / sgd,
    "local_setup": setup / sgd,
    "product": product / sgd,
  }


def iteration_cost(name: str, state, prev_state, units: dict, options: dict | None) -> float:
  """Multiply-adds of the iteration that produced ``state``, in SGD steps."""
  if options is not None:
    warm = bool(state.previous_step) and int(state.count) > 1
    refreshed = bool(state.refreshed)
    inner = int(np.max(np.asarray(state.inner_iterations)))
    return (
      units["forward_backward"]
      + refreshed * (units["jacobians"] + units["rest_bounds"])
      + units["local_setup"]
      + (inner + warm) * units["product"]
      + int(state.search_trials) * units["forward"]
    )
  if name == "gd_armijo":
    search = amj.numerics.ArmijoSearch()
    first = min(float(prev_state.step_size), search.max_step)
    taken = float(state.step_size) / search.step_growth
    trials = 1 + max(
      0, round(math.log(max(taken, 1e-30) / first) / math.log(search.backtrack_factor))
    )
    return 1.0 + trials * units["forward"]
  if name == "adam":
    return 1.0
  return float("nan")  # the other baselines: wall time only


def run_method(name: str, net, x, y, budget_iters: int, budget_seconds: float, units) -> dict:
  loss = amj.losses.softmax_cross_entropy
  tx, uses_grads = build(name, net)
  options = sm_options(name)
  params = net.init(jax.random.key(0))
  h = jax.jit(lambda p: stages.batch_mean_loss(loss, net.apply(p, x), y))

  @jax.jit
  def step(params, state):
    grads = jax.grad(lambda p: stages.batch_mean_loss(loss, net.apply(p, x), y))(params)
    updates, state = tx.update(grads if uses_grads else None, state, params, batch=(x, y))
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  # compile, on copies: the second step compiles once more when the state fills its stored
  # curvature (curvature_refresh > 1)
  jax.block_until_ready(step(*step(params, state)))
  losses, seconds, costs = [float(h(params))], [0.0], [0.0]
  refreshes = trials = 0
  multiples = []
  spent = 0.0
  for _ in range(budget_iters):
    prev = state
    t0 = time.perf_counter()
    params, state = jax.block_until_ready(step(params, state))
    dt = time.perf_counter() - t0
    spent += dt
    losses.append(float(h(params)))
    seconds.append(seconds[-1] + dt)
    costs.append(costs[-1] + iteration_cost(name, state, prev, units, options))
    if options is not None:
      refreshes += bool(state.refreshed)
      trials += int(state.search_trials)
      multiples.append(float(state.step_multiple))
    if losses[-1] < TARGETS[-1] or spent > budget_seconds or not math.isfinite(losses[-1]):
      break
  out = {"iterations": len(losses) - 1, "final_loss": losses[-1], "seconds": seconds[-1]}
  out["seconds_per_iteration"] = seconds[-1] / max(1, len(losses) - 1)
  out["sgd_steps_per_iteration"] = costs[-1] / max(1, len(losses) - 1)
  for target in TARGETS:
    hit = next((i for i, v in enumerate(losses) if v < target), None)
    out[f"to_{target}"] = (
      None
      if hit is None
      else {
        "iterations": hit,
        "seconds": seconds[hit],
        "sgd_steps": costs[hit],
      }
    )
  if options is not None:
    out["refreshes"] = refreshes
    out["search_trials"] = trials
    out["median_step_multiple"] = float(np.median(multiples)) if multiples else None
  out["losses"] = [round(v, 5) for v in losses[:: max(1, len(losses) // 40)]]
  return out


def main() -> dict:
  args = common.parse_args(
    __doc__.splitlines()[0],
    quick_help="1,000 samples, 4 layers, short budgets",
    options={
      "layers": (str, "comma-separated layer counts (default 4,8)"),
      "samples": (int, "training images, full batch (default 8000)"),
      "methods": (str, "comma-separated methods (module docstring)"),
      "iterations": (int, "iteration budget per method (default 400)"),
      "seconds": (float, "wall-time budget per method (default 240 s)"),
    },
  )
  quick = args.quick
  layers = [int(v) for v in (args.layers or ("4" if quick else "4,8")).split(",")]
  samples = args.samples or (1000 if quick else 8000)
  methods = (args.methods or "sm,sm_default,sm_search_warm3,gd_armijo,adam").split(",")
  budget_iters = args.iterations or (40 if quick else 400)
  budget_seconds = args.seconds or (20.0 if quick else 240.0)
  x, y = amj.data.load_dataset("bundled_mnist", num_train=8000).train
  x, y = jnp.asarray(x[:samples]), jnp.asarray(y[:samples])
  results = {}
  for L in layers:
    net = amj.networks.mlp([784] + [WIDTH] * (L - 1) + [10], activation=jax.nn.relu)
    units = unit_costs(net, x, y)
    res = {"unit_costs": units}
    for name in methods:
      res[name] = run_method(name, net, x, y, budget_iters, budget_seconds, units)
      r = res[name]
      hits = "  ".join(
        f"{t}: "
        + (
          "-"
          if r[f"to_{t}"] is None
          else f"{r[f'to_{t}']['iterations']} it {r[f'to_{t}']['seconds']:.1f} s "
          f"{r[f'to_{t}']['sgd_steps']:.0f} sgd"
        )
        for t in TARGETS
      )
      print(
        f"{L} layers {name:28s} final {r['final_loss']:.4f} after {r['iterations']} it | {hits}",
        flush=True,
      )
    if "adam" in res:  # the optax baseline of the same run
      base = res["adam"]["seconds_per_iteration"]
      for name in methods:
        res[name]["seconds_per_iteration_ratio_to_adam"] = res[name]["seconds_per_iteration"] / base
    results[f"{L}_layers"] = res
  return common.finish(
    common.report("sm_time_to_loss", quick, samples=samples, results=results), args.out
  )


if __name__ == "__main__":
  main()
