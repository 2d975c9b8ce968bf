"""Pipelined SM and GD against the single-device step: the variants, their references, and
the child programs of ``test_sm_pipeline.py`` (the problem is that of
``children/pipeline_problems.py``, shared with the AM pipeline).

* :func:`devices` (one process, n CPU devices): the pipelined steps of :func:`cases`
  against :func:`reference_run`, as errors relative to rtol 1e-4 / atol 1e-6, plus (4
  devices) the collectives in each compiled phase.
* :func:`worker` (one of two ``jax.distributed`` processes, 2 devices each): one SM and
  one GD+Armijo step of a 4-stage pipeline that spans both processes.
"""

from __future__ import annotations

import itertools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import altmin_jax as amj
from altmin_jax import pipeline as pl
from altmin_jax.core import meshes as core_meshes
from altmin_jax.sm import gd_armijo, pipelined, surrogate_minimization
from children.pipeline_problems import (
  SIZES,
  collectives,
  error,
  layers_per_device,
  leaves,
  problem,
  size,
)

LOSS = amj.losses.softmax_cross_entropy
SM_KW = dict(inner_steps=4, delta=0.1, power_iterations=5)
LAGGED = dict(curvature_refresh=2, cg_warm_start=True)
BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "benchmarks")


# name -> (pipelined factory kwargs, single-device reference)
VARIANTS = {
  "sm": (dict(kind="sm", **SM_KW), lambda net: surrogate_minimization(net, **SM_KW)),
  "sm_armijo": (
    dict(kind="sm", solver="armijo", **SM_KW),
    lambda net: surrogate_minimization(net, solver="armijo", **SM_KW),
  ),
  "sm_scalar": (
    dict(kind="sm", curvature="scalar", **SM_KW),
    lambda net: surrogate_minimization(net, curvature="scalar", **SM_KW),
  ),
  "sm_lagged": (
    dict(kind="sm", **LAGGED, **SM_KW),
    lambda net: surrogate_minimization(net, **LAGGED, **SM_KW),
  ),
  "gd_armijo": (dict(kind="gd"), lambda net: gd_armijo(net)),
  "gd_fixed": (dict(kind="gd", learning_rate=0.3), lambda net: optax.sgd(0.3)),
}


def cases(n: int, full: bool):
  """(variant, M, boundary, mesh kind, steps, params form) checked on n devices."""
  if full:
    for variant in VARIANTS:
      for m in (1, 2, 3, 4, 6, 12):
        yield variant, m, "pad", "make_mesh", 2, "stacked"
      if (len(SIZES) - 3) % n == 0:
        for m in (1, 4):
          yield variant, m, "outside", "make_mesh", 2, "network"
    return
  if n == 2:  # 4 layers per device
    yield from [
      ("sm", 4, "pad", "make_mesh", 1, "network"),
      ("sm", 2, "outside", "make_mesh", 1, "network"),
      ("sm_armijo", 3, "pad", "make_mesh", 2, "stacked"),
      ("sm_lagged", 1, "outside", "make_mesh", 3, "stacked"),
      ("gd_armijo", 3, "outside", "make_mesh", 1, "network"),
    ]
  elif n == 4:
    yield from [
      ("sm", 2, "pad", "make_mesh", 2, "stacked"),
      ("sm", 4, "pad", "make_mesh", 1, "network"),
      ("sm_scalar", 3, "pad", "auto_mesh", 1, "network"),
      ("sm_lagged", 2, "pad", "make_mesh", 3, "stacked"),
      ("gd_fixed", 4, "pad", "make_mesh", 1, "stacked"),
    ]
  else:  # 1 layer per device
    yield from [
      ("sm", 1, "pad", "make_mesh", 1, "network"),
      ("sm", 4, "pad", "make_mesh", 1, "stacked"),
      ("sm_lagged", 4, "pad", "make_mesh", 3, "network"),
      ("gd_armijo", 6, "pad", "make_mesh", 2, "stacked"),
    ]


def _common_state(state):
  """An SM state without the fields whose layout differs between the single-device and the
  pipelined step (per-stage lists there, stacked layers here): the stored curvature and
  the previous steps, which the following steps' equality checks."""
  if not hasattr(state, "stored_curvature"):
    return state
  return state._replace(stored_curvature=(), previous_step=())


def case_name(variant, m, boundary, mesh_kind, steps, form) -> str:
  return f"{variant}/M={m}/{boundary}/{mesh_kind}/steps={steps}/{form}"


def make(variant, net, mesh, m, boundary):
  """The pipelined transformation of a variant."""
  kw = dict(VARIANTS[variant][0])
  kind = kw.pop("kind")
  factory = amj.pipelined_surrogate_minimization if kind == "sm" else amj.pipelined_gradient_descent
  return factory(net, mesh=mesh, num_microbatches=m, boundary=boundary, **kw)


def reference_run(variant, net, params, x, y, steps):
  """Single-device steps: params after each step and the states (gd_fixed: optax.sgd on
  the gradient of the batch-mean loss)."""
  tx = VARIANTS[variant][1](net)
  state = tx.init(params)
  grad = jax.grad(lambda p: jnp.mean(LOSS(net.apply(p, x), y)))
  step = jax.jit(
    lambda p, s: tx.update(grad(p) if variant == "gd_fixed" else None, s, p, batch=(x, y))
  )
  out = []
  for _ in range(steps):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
    out.append((params, state))
  return out


def _pipelined_run(tx, net, params, x, y, steps, form, mesh, boundary):
  if form == "stacked":
    params = pl.stack_params(net, params, boundary=boundary, mesh=mesh)
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(None, s, p, batch=(x, y)))
  out = []
  for _ in range(steps):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
    out.append((pl.unstack_params(net, params) if form == "stacked" else params, state))
  return out, updates


def devices(n: int, full: bool = False) -> dict:
  """Child: every case of ``cases(n, full)`` on n CPU devices, and (n = 4, not full) the
  collectives of each compiled pipeline phase (``benchmarks/pipeline_phases.py``)."""
  assert len(jax.devices()) == n, jax.devices()
  net, params, x, y = problem()
  x, y = jnp.asarray(x), jnp.asarray(y)
  meshes = {
    "make_mesh": pl.pipeline_mesh(n),
    "auto_mesh": core_meshes.make_mesh(n, pl.AXIS, explicit=False),
  }
  todo = list(cases(n, full))
  refs, results = {}, {}
  for variant, m, boundary, mesh_kind, steps, form in todo:
    if variant not in refs:
      most = max(c[4] for c in todo if c[0] == variant)
      refs[variant] = reference_run(variant, net, params, x, y, most)
    mesh = meshes[mesh_kind]
    tx = make(variant, net, mesh, m, boundary)
    got, updates = _pipelined_run(tx, net, params, x, y, steps, form, mesh, boundary)
    want = refs[variant][:steps]
    results[case_name(variant, m, boundary, mesh_kind, steps, form)] = {
      "params_error": max(error(g[0], w[0]) for g, w in zip(got, want)),
      "state_error": 0.0
      if variant == "gd_fixed"
      else max(error(_common_state(g[1]), _common_state(w[1])) for g, w in zip(got, want)),
      # refreshed on each step (the lagged-curvature variant's steps 1 and 3, not 2) and
      # whether a step without a refresh kept the stored curvature bit for bit
      "refreshed": [bool(getattr(g[1], "refreshed", True)) for g in got],
      "kept_stored": [
        all(
          np.array_equal(a, b)
          for a, b in zip(leaves(g[1].stored_curvature), leaves(p[1].stored_curvature))
        )
        for p, g in itertools.pairwise(got)
        if not bool(g[1].refreshed)
      ]
      if variant == "sm_lagged"
      else [],
      "moved": size(jax.tree.map(lambda a, b: a - b, want[-1][0], params)),
      # layers of the stacked update held by each device (stacked form only)
      "layers_per_device": layers_per_device(updates.kernel) if form == "stacked" else [],
    }
  hlo, rest = {}, {}
  if n == 4 and not full:
    rest = rest_bound_errors(net, params, x, y, meshes["make_mesh"])
    sys.path.insert(0, BENCHMARKS)
    import pipeline_phases  # the benchmark's phase functions

    pipe = pipelined.sm_pipeline(
      net, pipeline=pl.PipelineOptions(meshes["make_mesh"], num_microbatches=2), **SM_KW
    )
    for name, (fn, args) in pipeline_phases.phase_functions(pipe, net, params, (x, y)).items():
      hlo[name] = collectives(fn.lower(*args).compile())
  return {"cases": results, "hlo": hlo, "rest": rest}


def rest_bound_errors(net, params, x, y, mesh) -> dict:
  """The rest bounds of the pipelined step's micro-batched GPipe sweeps
  (``SMPipeline.rest_bounds``) against the single-device sequential recurrence
  (``Young.rest_bounds``), for M in {1, 2, 4}: the largest difference relative to the
  largest bound (same operator and start vectors, only summation orders differ)."""
  from altmin_jax.networks import stages
  from altmin_jax.pipeline import gpipe
  from altmin_jax.sm import local_losses as ll
  from altmin_jax.sm import surrogate

  cfg = ll.sm_config(net, LOSS, ll.SMOptions(**SM_KW))
  prep = stages.prepare(net, params, (x, y), "sm", cfg.loss)
  fb = surrogate.forward_backward(cfg, prep.stage_params, prep.x, prep.y)
  sc = ll.scales(cfg, x.shape[0], fb.value.dtype)
  young = cfg.options.majorizer
  # stage i's bound is the rest above its output, i.e. at stacked layer i's input (pad)
  want = np.stack(
    leaves(young.rest_bounds(cfg, fb, sc, young.levels(cfg, prep.stage_params, fb)))[:-1]
  )
  out = {}
  for m in (1, 2, 4):
    sp = pipelined.sm_pipeline(net, pipeline=pl.PipelineOptions(mesh, num_microbatches=m), **SM_KW)

    @jax.jit
    def bounds(params, x, y, sp=sp):
      p = gpipe.prepare(sp.pipe, net, params, (x, y), "rest bounds")
      fw = gpipe.forward_and_loss(sp.pipe, net, LOSS, p, p.theta, p.head, p.tail)
      gz, _, _ = sp.pipe.backward(p.theta, fw.zin, fw.g_top)
      e = sp.rest_bounds(p.theta, fw.zin, gz, sc.delta, jnp.zeros([], p.dtype))
      return gpipe.to_replicated(sp.pipe, e)

    got = leaves(bounds(params, x, y))[0][1:]
    out[m] = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
  return out


def worker() -> dict[str, np.ndarray]:
  """Child, one of two processes (2 CPU devices each): a 4-stage pipeline spanning both.
  Returns the new params and state leaves of each variant and the global layer indices
  of the stacked kernel that live on this process's devices."""
  rank = jax.process_index()
  mesh = pl.pipeline_mesh()
  assert len(jax.devices()) == 4 and len(jax.local_devices()) == 2
  net, params, x, y = problem()
  xg, yg = amj.distributed.global_replicated((x, y), mesh)
  saved = {}
  for variant in ("sm", "gd_armijo"):
    tx = make(variant, net, mesh, 2, "pad")
    stacked = pl.stack_params(net, params, mesh=mesh)
    state = tx.init(stacked)
    updates, state = jax.jit(lambda p, s, tx=tx: tx.update(None, s, p, batch=(xg, yg)))(
      stacked, state
    )
    new = pl.unstack_params(net, optax.apply_updates(stacked, updates))
    for i, leaf in enumerate(leaves((new, state))):
      saved[f"{variant}/{i}"] = leaf
    owned = sorted(i for s in updates.kernel.addressable_shards for i in range(8)[s.index[0]])
    saved[f"{variant}/owned/{rank}"] = np.asarray(owned)
  return saved
