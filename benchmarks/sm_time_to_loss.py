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
per trial. CGBlock: every block's gradient and linearisation (``jax.linearize`` of
``jax.grad``, counted per block), one block Hessian-vector product per CG step each block
took (``CGBlockState.inner_iterations``, one more where the curvature guard stopped it),
the loss value, and with its search one forward pass per trial. SSO: the output and its
loss gradient, N surrogate gradients and one forward pass per trial of its N searches. DDG
and Adam: one SGD step. Trials are not in the states: they are recovered from the step
sizes, each search starting at the previous one's ``step_growth`` times its accepted step
(N searches: ``next = first * growth^N * backtrack_factor^backtracks``), plus the fallback
step's evaluation for a failed search. Where ``max_step`` caps the next first trial (CGBlock's
search, capped at 1) the accepted step is hidden: ``sgd_steps`` counts the most trials
consistent with the cap, ``sgd_steps_fewest`` the fewest (``trial_counts_bounded``: such
iterations). Each method's
``seconds_per_iteration_ratio_to_adam`` is its wall time per iteration over Adam's (optax,
the baseline of the same run; the methods run one after the other, so machine load shifts
it more than an interleaved timing would).

SM variants (``--methods``): ``sm`` (N = 10 CG steps, no search, curvature every iteration:
Algorithm 1 as the paper states it), ``sm_search`` (N = 10 plus the step search),
``sm_search_warmN`` (N CG steps warm-started, plus the search) and
``sm_search_warmN_refreshK`` (also the curvature every K iterations), ``sm_default`` (the
library's defaults); baselines ``gd_armijo``, ``adam`` (learning rate 1e-2, the best of
{1e-3, 3e-3, 1e-2, 3e-2} on these nets), ``cg_block`` (the paper's plain step, damping 1)
and ``cg_block_armijo`` (undamped, with its Armijo search), ``sso`` (eta 2) and ``ddg``
(SGD 0.1, 4 modules), with N = 10 and the hyperparameters of the SM tables'
config (``experiments/configs/sm_mnist.py``).

Usage::

  python benchmarks/sm_time_to_loss.py [--quick] [--out results.json] [--layers 4,8]
      [--samples 8000] [--methods sm,sm_search,...] [--plot PREFIX]

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
from altmin_jax.sm import _common as sm_common
from altmin_jax.sm import local_losses as ll
from altmin_jax.sm import majorizers
from altmin_jax.sm import surrogate as sur
from altmin_jax.sm.baselines.cg_block import NEWTON_SEARCH, block_hessian_products

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
    return amj.cg_block(net, inner_steps=10, damping=1.0, line_search=None), False
  if name == "cg_block_armijo":
    return amj.cg_block(net, inner_steps=10, damping=0.0), False
  if name == "sso":
    return amj.sso(net, inner_steps=10, eta=2.0), False
  if name == "ddg":
    return amj.ddg(net, learning_rate=0.1, momentum=0.0, num_modules=min(4, net.num_stages)), False
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

  # CGBlock: every block's gradient and linearisation, then block i's product alone
  full = sm_common.network_loss(net, loss, x, y)
  blocks = lambda sp: [g for g, _ in block_hessian_products(full, sp)]
  block_setup = count(blocks, sp)

  def block_product(sp, i):
    pairs = block_hessian_products(full, sp)
    return [g for g, _ in pairs], pairs[i][1](pairs[i][0])

  block_products = [count(lambda sp, i=i: block_product(sp, i), sp) - block_setup for i in range(m)]

  # SSO: the surrogate of its inner steps (as sso.py builds it)
  f_t = net.forward_stages(sp, x)[1]
  g_f = jax.grad(lambda f: stages.batch_mean_loss(loss, f, y))(f_t)

  def surrogate(sp):
    diff = net.forward_stages(sp, x)[1] - f_t
    return jnp.vdot(g_f, diff) + jnp.vdot(diff, diff)

  return {
    "sgd_multiply_adds": sgd,
    "forward": count(h, sp) / sgd,
    "forward_backward": count(lambda sp: sur.forward_backward(cfg, sp, x, y), sp) / sgd,
    "jacobians": count(lambda sp, fb: young.curvature(cfg, fb, y, levels(sp, fb)), sp, fb) / sgd,
    "rest_bounds": count(lambda sp, fb: young.rest_bounds(cfg, fb, sc, levels(sp, fb)), sp, fb)
    / sgd,
    "local_setup": setup / sgd,
    "product": product / sgd,
    "block_setup": block_setup / sgd,
    "block_products": [b / sgd for b in block_products],
    "surrogate_gradient": count(jax.value_and_grad(surrogate), sp) / sgd,
    "surrogate_value": count(surrogate, sp) / sgd,
  }


def armijo_trials(first: float, following: float, failed: int, search, searches: int = 1):
  """The fewest and the most trials (function values) of ``searches`` consecutive Armijo
  searches consistent with the first trial step of the first (``first``) and of the next
  search (``following``): each search starts at ``step_growth`` times the step the one
  before accepted (after a failed search, its smallest trial), and a failed search also
  evaluates the fallback step. Equal unless ``max_step`` capped ``following``: then one
  search accepted a step of at least ``max_step / step_growth``, and several searches are
  not recovered (NaN)."""
  log_beta = math.log(search.backtrack_factor)
  capped = following >= search.max_step * (1 - 1e-6)
  if capped and searches == 1:
    smallest_accepted = search.max_step / search.step_growth
    most = max(0, math.floor(math.log(smallest_accepted / first) / log_beta + 1e-9))
    return 1 + failed, 1 + most + failed
  # following = first * growth^searches * beta^backtracks
  raw = math.log(following / (first * search.step_growth**searches)) / log_beta
  if capped or abs(raw - round(raw)) > 0.05 or raw < -0.05:
    return math.nan, math.nan
  trials = searches + round(raw) + failed
  return trials, trials


def iteration_cost(
  name: str, state, prev_state, units: dict, options: dict | None
) -> tuple[float, float]:
  """Multiply-adds of the iteration that produced ``state``, in SGD steps: the fewest and
  the most consistent with its record (equal unless the step search's trials are hidden,
  module docstring)."""
  if options is not None:
    warm = bool(state.previous_step) and int(state.count) > 1
    refreshed = bool(state.refreshed)
    inner = int(np.max(np.asarray(state.inner_iterations)))
    cost = (
      units["forward_backward"]
      + refreshed * (units["jacobians"] + units["rest_bounds"])
      + units["local_setup"]
      + (inner + warm) * units["product"]
      + int(state.search_trials) * units["forward"]
    )
    return cost, cost
  if name in ("adam", "ddg"):
    return 1.0, 1.0
  first, following = float(prev_state.step_size), float(state.step_size)
  failed = int(state.failed_count) - int(prev_state.failed_count)
  if name == "gd_armijo":
    trials = armijo_trials(first, following, failed, amj.numerics.ArmijoSearch())
    return tuple(1.0 + t * units["forward"] for t in trials)
  if name == "sso":
    search, n = amj.numerics.ArmijoSearch(), 10
    trials = armijo_trials(first, following, failed, search, searches=n)
    fixed = units["forward"] + n * units["surrogate_gradient"]
    return tuple(fixed + t * units["surrogate_value"] for t in trials)
  if name in ("cg_block", "cg_block_armijo"):
    products = np.asarray(state.inner_iterations) + np.asarray(state.negative_curvature)
    cost = units["block_setup"] + float(np.dot(products, units["block_products"]))
    cost += units["forward"]  # the loss value
    if name == "cg_block":
      return cost, cost
    trials = armijo_trials(first, following, failed, NEWTON_SEARCH)
    return tuple(cost + t * units["forward"] for t in trials)
  raise ValueError(f"no cost model for {name!r}")


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
  losses, seconds, costs, fewest = [float(h(params))], [0.0], [0.0], [0.0]
  refreshes = trials = bounded = 0
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
    low, high = iteration_cost(name, state, prev, units, options)
    costs.append(costs[-1] + high)
    fewest.append(fewest[-1] + low)
    bounded += low != high
    if options is not None:
      refreshes += bool(state.refreshed)
      trials += int(state.search_trials)
      multiples.append(float(state.step_multiple))
    if losses[-1] < TARGETS[-1] or spent > budget_seconds or not math.isfinite(losses[-1]):
      break
  out = {"iterations": len(losses) - 1, "final_loss": losses[-1], "seconds": seconds[-1]}
  out["seconds_per_iteration"] = seconds[-1] / max(1, len(losses) - 1)
  out["sgd_steps_per_iteration"] = costs[-1] / max(1, len(losses) - 1)
  out["trial_counts_bounded"] = bounded
  for target in TARGETS:
    hit = next((i for i, v in enumerate(losses) if v < target), None)
    out[f"to_{target}"] = (
      None
      if hit is None
      else {
        "iterations": hit,
        "seconds": seconds[hit],
        "sgd_steps": costs[hit],
        "sgd_steps_fewest": fewest[hit],
      }
    )
  if options is not None:
    out["refreshes"] = refreshes
    out["search_trials"] = trials
    out["median_step_multiple"] = float(np.median(multiples)) if multiples else None
  out["losses"] = [float(f"{v:.4g}") for v in losses]  # after every iteration
  out["sgd_steps"] = [round(v, 2) for v in costs]  # spent before each of those losses
  return out


LABELS = {
  "sm_default": "SM (default: step search)",
  "sm": "SM (paper's Algorithm 1)",
  "gd_armijo": "GD+Armijo",
  "cg_block": "CGBlock (paper's plain step)",
  "cg_block_armijo": "CGBlock+Armijo",
  "sso": "SSO",
  "ddg": "DDG",
  "adam": "Adam, lr 1e-2",
}


def plot(path: str, res: dict, title: str) -> str:
  """Training loss against iterations and against multiply-adds (SGD steps)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
  for k, (name, r) in enumerate((n, r) for n, r in res.items() if n != "unit_costs"):
    style = dict(color=f"C{k}", label=LABELS.get(name, name), linewidth=1.5)
    axes[0].plot(range(len(r["losses"])), r["losses"], **style)
    axes[1].plot(r["sgd_steps"][1:], r["losses"][1:], **style)  # log axis: from iteration 1
  for ax, label in zip(axes, ("iteration (full batch)", "multiply-adds, in full-batch SGD steps")):
    ax.set_yscale("log")
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)
    for target in TARGETS:
      ax.axhline(target, color="0.6", linewidth=0.8, linestyle=":")
  axes[1].set_xscale("log")
  axes[0].set_ylabel("training loss")
  axes[0].legend(fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def hit_text(hit: dict | None) -> str:
  """``iterations, seconds, SGD steps`` to a target (``fewest-most`` where they differ)."""
  if hit is None:
    return "-"
  low, high = hit["sgd_steps_fewest"], hit["sgd_steps"]
  cost = f"{high:.0f}" if round(low) == round(high) else f"{low:.0f}-{high:.0f}"
  return f"{hit['iterations']} it {hit['seconds']:.1f} s {cost} sgd"


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
      "plot": (str, "also plot each depth's curves to PLOT_<L>layers_train_loss.png"),
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
      hits = "  ".join(f"{t}: {hit_text(r[f'to_{t}'])}" for t in TARGETS)
      print(
        f"{L} layers {name:28s} final {r['final_loss']:.4f} after {r['iterations']} it | {hits}",
        flush=True,
      )
    if "adam" in res:  # the optax baseline of the same run
      base = res["adam"]["seconds_per_iteration"]
      for name in methods:
        res[name]["seconds_per_iteration_ratio_to_adam"] = res[name]["seconds_per_iteration"] / base
    results[f"{L}_layers"] = res
    if args.plot:
      title = f"{samples} bundled MNIST images, full batch, {L}-layer ReLU MLP (width {WIDTH})"
      plot(f"{args.plot}_{L}layers_train_loss.png", res, title)
  return common.finish(
    common.report("sm_time_to_loss", quick, samples=samples, results=results), args.out
  )


if __name__ == "__main__":
  main()
