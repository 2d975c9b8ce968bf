"""Pipelined SM and GD against the single-device step: the problem, its reference, and
the child programs of ``test_sm_pipeline.py``.

* :func:`devices` (one process, n CPU devices): the pipelined steps of :func:`cases`
  against :func:`reference_run`, as errors relative to rtol 1e-4 / atol 1e-6, plus (4
  devices) the collectives in each compiled phase.
* :func:`worker` (one of two ``jax.distributed`` processes, 2 devices each): one SM and
  one GD+Armijo step of a 4-stage pipeline that spans both processes.
"""

from __future__ import annotations

import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import altmin_jax as amj
from altmin_jax.sm import gd_armijo, surrogate_minimization
from altmin_jax.sm import pipeline as pl

LOSS = amj.losses.softmax_cross_entropy
SIZES = (7, 6, 6, 6, 6, 6, 6, 6, 3)  # 8 stages: input 7 and logits 3 are zero-padded to 6/7
BATCH = 12
SM_KW = dict(inner_steps=4, delta=0.1, power_iterations=5)
RTOL, ATOL = 1e-4, 1e-6
COLLECTIVES = (
  "all-reduce",
  "all-gather",
  "collective-permute",
  "all-to-all",
  "reduce-scatter",
  "collective-broadcast",
)
BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "benchmarks")


def problem(sizes=SIZES, n=BATCH, seed=0):
  """A tanh MLP of the given layer sizes, its params and a batch of n samples."""
  net = amj.networks.mlp(list(sizes), activation=jnp.tanh)
  params = net.init(jax.random.key(seed))
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, sizes[0])).astype(np.float32)
  y = rng.integers(0, sizes[-1], size=n).astype(np.int32)
  return net, params, x, y


def leaves(tree):
  return [np.asarray(a, np.float64) for a in jax.tree.leaves(amj.distributed.fetch(tree))]


def error(got, want):
  """max over entries of |got - want| / (ATOL + RTOL |want|): <= 1 means allclose."""
  a, b = leaves(got), leaves(want)
  assert len(a) == len(b)
  return max(float(np.max(np.abs(x - y) / (ATOL + RTOL * np.abs(y)))) for x, y in zip(a, b))


def size(tree):
  return max(float(np.max(np.abs(x))) for x in leaves(tree))


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
      ("gd_armijo", 3, "outside", "make_mesh", 1, "network"),
    ]
  elif n == 4:
    yield from [
      ("sm", 2, "pad", "make_mesh", 2, "stacked"),
      ("sm", 4, "pad", "make_mesh", 1, "network"),
      ("sm_scalar", 3, "pad", "auto_mesh", 1, "network"),
      ("gd_fixed", 4, "pad", "make_mesh", 1, "stacked"),
    ]
  else:  # 1 layer per device
    yield from [
      ("sm", 1, "pad", "make_mesh", 1, "network"),
      ("sm", 4, "pad", "make_mesh", 1, "stacked"),
      ("gd_armijo", 6, "pad", "make_mesh", 2, "stacked"),
    ]


def case_name(variant, m, boundary, mesh_kind, steps, form) -> str:
  return f"{variant}/M={m}/{boundary}/{mesh_kind}/steps={steps}/{form}"


def make(variant, net, mesh, m, boundary):
  """The pipelined transformation of a variant."""
  kw = dict(VARIANTS[variant][0])
  kind = kw.pop("kind")
  factory = pl.pipelined_surrogate_minimization if kind == "sm" else pl.pipelined_gradient_descent
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


def _hlo_collectives(fn, args) -> list[str]:
  text = fn.lower(*args).compile().as_text()
  return sorted(set(re.findall("|".join(COLLECTIVES), text)))


def devices(n: int, full: bool = False) -> dict:
  """Child: every case of ``cases(n, full)`` on n CPU devices, and (n = 4, not full) the
  collectives of each compiled pipeline phase (``benchmarks/pipeline_phases.py``)."""
  assert len(jax.devices()) == n, jax.devices()
  net, params, x, y = problem()
  x, y = jnp.asarray(x), jnp.asarray(y)
  meshes = {
    "make_mesh": pl.pipeline_mesh(n),
    "auto_mesh": jax.sharding.Mesh(np.asarray(jax.devices()), ("stage",)),
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
      else max(error(g[1], w[1]) for g, w in zip(got, want)),
      "moved": size(jax.tree.map(lambda a, b: a - b, want[-1][0], params)),
      # layers of the stacked update held by each device (stacked form only)
      "layers_per_device": sorted({s.data.shape[0] for s in updates.kernel.addressable_shards})
      if form == "stacked"
      else [],
    }
  hlo = {}
  if n == 4 and not full:
    sys.path.insert(0, BENCHMARKS)
    import pipeline_phases  # the benchmark's phase functions

    pipe = pl.sm_pipeline(net, mesh=meshes["make_mesh"], num_microbatches=2, **SM_KW)
    for name, (fn, args) in pipeline_phases.phase_functions(pipe, net, params, (x, y)).items():
      hlo[name] = _hlo_collectives(fn, args)
  return {"cases": results, "hlo": hlo}


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
