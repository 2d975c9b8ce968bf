"""Pipelined AM-Adam and AM-mem against the single-device ``am_adam`` / ``am_mem`` steps:
the AM-mem problems, the references, and the child programs of ``test_am_pipeline.py``
(AM-Adam's problem is that of ``children/pipeline_problems.py``, shared with the SM
pipeline).

* :func:`devices` (one process, n CPU devices): the pipelined steps of :func:`cases` and
  :func:`mem_cases` against :func:`reference_run`, as errors relative to rtol 1e-4 /
  atol 1e-6, plus (4 devices) the collectives in each compiled phase.
* :func:`worker` (one of two ``jax.distributed`` processes, 2 devices each): AM-Adam's
  and AM-mem's steps on pipelines that span both processes.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import altmin_jax as amj
from altmin_jax import pipeline as pl
from altmin_jax.am import _common as am_common
from altmin_jax.am import pipelined
from altmin_jax.am import pipelined_phases as phases
from children.pipeline_problems import (
  ATOL,
  BATCH,
  RTOL,
  SIZES,
  collectives,
  error,
  layers_per_device,
  leaves,
  problem,
  size,
)

# AM-mem: hidden widths vary, so that both boundaries pad the memories of hidden layers;
# 8 stages (pad on 2, 4, 8 devices; outside, 6 middle layers, on 2) and 10 stages
# (outside, 8 middle layers, on 4 and 8 devices)
MEM_SIZES = {8: (7, 6, 5, 6, 4, 6, 6, 6, 3), 10: (7, 6, 5, 6, 4, 6, 6, 5, 6, 6, 3)}
MEM_RTOL, MEM_ATOL = 1e-8, 1e-10  # AM-mem, in float64


def mem_problem(stages: int, n=BATCH, seed=0):
  """The float64 AM-mem problem of ``MEM_SIZES[stages]`` (call under ``jax.enable_x64``:
  the exact solve of a float32 memory amplifies rounding beyond any useful tolerance);
  LeCun-normal params drawn with NumPy (nothing to compile)."""
  sizes = MEM_SIZES[stages]
  net = amj.networks.mlp(list(sizes), activation=jnp.tanh, dtype=jnp.float64)
  rng = np.random.default_rng(seed)
  params = tuple(
    {
      "kernel": jnp.asarray(rng.normal(size=(i, o)) / np.sqrt(i)),
      "bias": jnp.asarray(0.1 * rng.normal(size=o)),
    }
    for i, o in itertools.pairwise(sizes)
  )
  x = jnp.asarray(rng.normal(size=(n, sizes[0])))
  y = jnp.asarray(rng.integers(0, sizes[-1], size=n).astype(np.int32))
  return net, params, x, y


# name -> keyword arguments shared by am_adam and pipelined_am_adam
BASE = dict(code_steps=5, code_lr=0.3, mu=0.2, weight_optimizer=optax.adam(1e-2))
VARIANTS = {
  "sgd": BASE,
  "nesterov": {**BASE, "code_optimizer": "nesterov", "code_lr": 0.1, "weight_steps": 2},
  "adam_codes": {
    **BASE,
    "code_optimizer": "adam",
    "mu": amj.mu_schedule(init=0.1, batch_increment=0.05),
  },
  "no_proximal": {**BASE, "code_proximal": False, "weight_optimizer": optax.sgd(0.1, 0.9)},
  "output_optimizer": {**BASE, "output_optimizer": optax.sgd(0.2)},  # boundary="outside"
}
# name -> keyword arguments shared by am_mem and pipelined_am_mem
MEM_BASE = dict(
  code_steps=2, code_lr=0.3, mu=0.2, forgetting=0.9, output_optimizer=optax.sgd(0.1, 0.9)
)
MEM_VARIANTS = {
  "mem_bcd": {**MEM_BASE, "sweeps": 2},
  "mem_exact": {
    **MEM_BASE,
    "solver": "exact",
    "ridge": 1e-3,
    "code_optimizer": "nesterov",
    "code_lr": 0.1,
    "output_steps": 2,
  },
}


def method(variant):
  """``(single-device factory, pipelined factory, keyword arguments)`` of a variant."""
  if variant in MEM_VARIANTS:
    return amj.am_mem, amj.pipelined_am_mem, MEM_VARIANTS[variant]
  return amj.am_adam, amj.pipelined_am_adam, VARIANTS[variant]


def cases(n: int, full: bool):
  """(variant, M, boundary, params form, steps) checked on n devices."""
  outside_fits = (len(SIZES) - 3) % n == 0  # 6 middle layers split evenly
  if full:
    for variant in VARIANTS:
      for m in (1, 2, 3, 4, 6, 12):
        if variant != "output_optimizer":
          yield variant, m, "pad", "stacked", 2
        if outside_fits and m in (1, 4):
          yield variant, m, "outside", "network", 2
    return
  if n == 2:  # 3 layers per device between the first and last stage
    yield "output_optimizer", 3, "outside", "network", 2
  elif n == 4:  # 2 layers per device
    yield "nesterov", 2, "pad", "stacked", 2
  else:  # 1 layer per device
    yield "adam_codes", 4, "pad", "stacked", 2


def mem_cases(n: int, full: bool):
  """(variant, M, boundary, params form, steps, stages) of AM-mem checked on n devices,
  three steps each (memories carried): by default one case per n (both solvers, both
  boundaries among them; ``worker`` runs both boundaries across processes), in the full
  sweep both solvers with either boundary on every n."""
  if full:
    for variant in MEM_VARIANTS:
      for m in (1, 2, 3, 4, 6, 12):
        yield variant, m, "pad", "stacked", 3, 8
        if m in (1, 4):
          yield variant, m, "outside", "stacked", 3, 8 if n == 2 else 10
    return
  if n == 2:  # 3 layers per device between the first and last stage
    yield "mem_exact", 2, "outside", "stacked", 3, 8
  elif n == 4:  # 2 layers per device
    yield "mem_bcd", 2, "pad", "stacked", 3, 8
  else:  # 1 layer per device
    yield "mem_exact", 4, "pad", "stacked", 3, 8


def case_name(variant, m, boundary, form, steps, stages=None) -> str:
  name = f"{variant}/M={m}/{boundary}/{form}/steps={steps}"
  return name if stages is None else f"{name}/stages={stages}"


def reference_run(variant, net, params, x, y, steps):
  """Single-device ``am_adam`` (``am_mem``) steps: (params, state) after each step."""
  factory, _, kwargs = method(variant)
  tx = factory(net, **kwargs)
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(None, s, p, batch=(x, y)))
  out = []
  for _ in range(steps):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
    out.append((params, state))
  return out


def comparable(net, state, boundary):
  """The parts of a pipelined state that ``AMState`` holds: count, batch loss, the
  per-stage optimizer states and (AM-mem) the co-activation memories."""
  states = pipelined.unstack_weight_states(net, state, boundary=boundary)
  if isinstance(state.memory, tuple) and not state.memory:
    return (state.count, state.batch_loss, states)
  memory = pipelined.unstack_memory(net, state, boundary=boundary)
  return (state.count, state.batch_loss, states, memory)


def reference_comparable(state):
  if not state.memory:
    return (state.count, state.batch_loss, state.weight_states)
  return (state.count, state.batch_loss, state.weight_states, state.memory)


def padding(net, stacked, boundary):
  """The largest padded entry of stacked params (0: the padding stayed exactly zero)."""
  lay = pl.pipeline_layout(net, boundary=boundary)
  kernel, bias = leaves((stacked.kernel, stacked.bias))
  most = 0.0
  for l, (w_in, w_out) in enumerate(zip(lay.layer_in_widths, lay.layer_out_widths)):
    for pad in (kernel[l, w_in:], kernel[l, :, w_out:], bias[l, w_out:]):
      most = max(most, float(np.max(np.abs(pad), initial=0.0)))
  return most


def pipelined_run(variant, net, params, x, y, steps, mesh, m, boundary, form):
  """Pipelined steps: (network params, comparable state) after each step, the last
  updates and the largest padded entry of the stacked params (stacked form, else 0)."""
  _, factory, kwargs = method(variant)
  tx = factory(net, mesh=mesh, num_microbatches=m, boundary=boundary, **kwargs)
  if form == "stacked":
    params = pl.stack_params(net, params, boundary=boundary, mesh=mesh)
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(None, s, p, batch=(x, y)))
  # one program (instead of a compiled op per slice) for the padding-dropping views
  net_form = pl.unstack_params if form == "stacked" else lambda net, p: p
  view = jax.jit(lambda p, s: (net_form(net, p), comparable(net, s, boundary)))
  out = []
  for _ in range(steps):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
    # the layout's check of activation(0) == 0 for padded hidden layers needs a value
    # while the view is traced
    with jax.ensure_compile_time_eval():
      out.append(view(params, state))
  return out, updates, padding(net, params, boundary) if form == "stacked" else 0.0


def _compiled(fn, *args):
  """``(collectives in the compiled fn, fn(*args))``: compiled once, run once."""
  compiled = jax.jit(fn).lower(*args).compile()
  return collectives(compiled), compiled(*args)


def phase_collectives(net, params, x, y, mesh) -> dict[str, list[str]]:
  """The collectives in each compiled phase of a step (pad boundary, M = 2), each phase
  run on the previous one's outputs; ``weight_updates_mem`` is AM-mem's weight phase
  (memory updates and block-coordinate sweeps) on the same codes."""
  loss, two = amj.losses.softmax_cross_entropy, pl.PipelineOptions(mesh, num_microbatches=2)
  kw = VARIANTS["sgd"]
  rule = am_common.gradient_rule(net, kw["weight_optimizer"], None, weight_steps=1)
  codes = amj.am.CodeStepOptions.from_arguments(kw)
  pipe, cfg = pipelined.am_pipeline(am_common.am_config(net, loss, codes, rule), two)
  stacked = pl.stack_params(net, params, mesh=mesh)
  tx = amj.pipelined_am_adam(net, mesh=mesh, num_microbatches=2, **VARIANTS["sgd"])
  states = tx.init(stacked).weight_states
  prep = pl.gpipe.prepare(pipe, net, stacked, (x, y), "test")
  lay, M, b = pipe.layout, 2, x.shape[0] // 2
  xin = pl.gpipe.microbatches(pl.layout.fit(prep.x, lay.in_width), M)
  carry = (jnp.zeros((M, b, lay.out_width)), pl.gpipe.microbatches(prep.y, M))
  shared = (jnp.asarray(0.1), jnp.asarray(0.9), jnp.asarray(1e-3))
  mu = shared[0]
  hlo = {}
  hlo["forward"], zin = _compiled(lambda th: pipe.forward(th, xin)[0], prep.theta)
  hlo["input_codes"], (cin, _) = _compiled(
    lambda th, z: phases.input_codes(pipe, th, z, xin, top=False), prep.theta, zin
  )
  hlo["code_updates"], ((cin_new, cout_new), _) = _compiled(
    lambda th, c: phases.code_updates(pipe, cfg, th, c, carry, mu, bottom=False),
    prep.theta,
    cin,
  )
  hlo["weight_updates"], _ = _compiled(
    lambda th, s, a, c: phases.weight_updates(pipe, cfg, th, s, (), a, c, prep.y, shared),
    prep.theta,
    states,
    cin_new,
    cout_new,
  )
  kw = MEM_VARIANTS["mem_bcd"]
  rule = am_common.memory_rule(
    net,
    kw["output_optimizer"],
    output_steps=1,
    sweeps=kw["sweeps"],
    solver="bcd",
    forgetting=kw["forgetting"],
    ridge=1e-6,
  )
  codes = amj.am.CodeStepOptions.from_arguments(kw)
  mem_pipe, mem_cfg = pipelined.am_pipeline(am_common.am_config(net, loss, codes, rule), two)
  mem_state = amj.pipelined_am_mem(
    net, mesh=mesh, num_microbatches=2, **MEM_VARIANTS["mem_bcd"]
  ).init(stacked)
  hlo["weight_updates_mem"], _ = _compiled(
    lambda th, s, mem, a, c: phases.weight_updates(
      mem_pipe, mem_cfg, th, s, mem, a, c, prep.y, shared
    ),
    prep.theta,
    mem_state.weight_states,
    mem_state.memory,
    cin_new,
    cout_new,
  )
  return hlo


def max_abs(got, want) -> float:
  """The largest absolute difference between two trees' leaves."""
  return max(float(np.max(np.abs(a - b), initial=0.0)) for a, b in zip(leaves(got), leaves(want)))


def run_cases(todo, mesh) -> dict:
  """Results of the cases ``(variant, M, boundary, form, steps, stages)`` of ``todo`` on
  ``mesh``, each against its single-device reference (one per variant and problem)."""
  problems, refs, results = {}, {}, {}
  for variant, m, boundary, form, steps, stages in todo:
    if stages not in problems:
      if stages is None:
        net, params, x, y = problem()
        problems[stages] = (net, params, jnp.asarray(x), jnp.asarray(y))
      else:
        problems[stages] = mem_problem(stages)
    net, params, x, y = problems[stages]
    if (variant, stages) not in refs:
      most = max(c[4] for c in todo if (c[0], c[5]) == (variant, stages))
      refs[variant, stages] = reference_run(variant, net, params, x, y, most)
    got, updates, pad = pipelined_run(variant, net, params, x, y, steps, mesh, m, boundary, form)
    want = [(p, reference_comparable(s)) for p, s in refs[variant, stages][:steps]]
    tol = (RTOL, ATOL) if stages is None else (MEM_RTOL, MEM_ATOL)
    results[case_name(variant, m, boundary, form, steps, stages)] = {
      "params_error": max(error(g[0], w[0], *tol) for g, w in zip(got, want)),
      "state_error": max(error(g[1], w[1], *tol) for g, w in zip(got, want)),
      "params_max_abs": max(max_abs(g[0], w[0]) for g, w in zip(got, want)),
      "state_max_abs": max(max_abs(g[1], w[1]) for g, w in zip(got, want)),
      "padding": pad,
      "moved": size(jax.tree.map(lambda a, b: a - b, want[-1][0], params)),
      "layers_per_device": layers_per_device(updates.kernel) if form == "stacked" else [],
    }
  return results


def devices(n: int, full: bool = False) -> dict:
  """Child: every case of ``cases(n, full)`` and (in float64) ``mem_cases(n, full)`` on n
  CPU devices, and (n = 4, not full) the collectives of each compiled phase."""
  assert len(jax.devices()) == n, jax.devices()
  mesh = pl.pipeline_mesh(n)
  results = run_cases([(*case, None) for case in cases(n, full)], mesh)
  hlo = {}
  if n == 4 and not full:
    net, params, x, y = problem()
    hlo = phase_collectives(net, params, jnp.asarray(x), jnp.asarray(y), mesh)
  with jax.enable_x64(True):
    results.update(run_cases(list(mem_cases(n, full)), mesh))
  return {"cases": results, "hlo": hlo}


def worker() -> dict[str, np.ndarray]:
  """Child, one of two processes (2 CPU devices each): two pipelined AM-Adam steps of a
  4-device pipeline spanning both, and (float64) three AM-mem steps (``mem_bcd``, 8
  stages) with ``boundary="pad"`` on that pipeline and ``"outside"`` on a 2-device
  pipeline of one device per process. Returns the params and state leaves after each
  step and the global layer indices of the stacked kernel on this process's devices."""
  rank = jax.process_index()
  mesh = pl.pipeline_mesh()
  assert len(jax.devices()) == 4 and len(jax.local_devices()) == 2
  net, params, x, y = problem()
  xg, yg = amj.distributed.global_replicated((x, y), mesh)
  got, updates, _ = pipelined_run("sgd", net, params, xg, yg, 2, mesh, 2, "pad", "stacked")
  saved = {}
  for t, step in enumerate(got):
    for i, leaf in enumerate(leaves(step)):
      saved[f"{t}/{i}"] = leaf
  owned = sorted(i for s in updates.kernel.addressable_shards for i in range(8)[s.index[0]])
  saved[f"owned/{rank}"] = np.asarray(owned)
  first = [next(d for d in jax.devices() if d.process_index == p) for p in (0, 1)]
  pair = pl.pipeline_mesh(2, devices=first)
  with jax.enable_x64(True):
    net, params, x, y = mem_problem(8)
    for boundary, on in (("pad", mesh), ("outside", pair)):
      xg, yg = amj.distributed.global_replicated((x, y), on)
      got, updates, pad = pipelined_run(
        "mem_bcd", net, params, xg, yg, 3, on, 2, boundary, "stacked"
      )
      for t, step in enumerate(got):
        for i, leaf in enumerate(leaves(step)):
          saved[f"mem/{boundary}/{t}/{i}"] = leaf
      layers = updates.kernel.shape[0]
      shards = updates.kernel.addressable_shards
      owned = sorted(i for s in shards for i in range(layers)[s.index[0]])
      saved[f"mem/{boundary}/owned/{rank}"] = np.asarray(owned)
      saved[f"mem/{boundary}/padding"] = np.asarray(pad)
  return saved
