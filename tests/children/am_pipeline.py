"""Pipelined AM-Adam against the single-device ``am_adam`` step: the problem, its
reference, and the child programs of ``test_am_pipeline.py``.

* :func:`devices` (one process, n CPU devices): the pipelined steps of :func:`cases`
  against :func:`reference_run`, as errors relative to rtol 1e-4 / atol 1e-6, plus (4
  devices) the collectives in each compiled phase.
* :func:`worker` (one of two ``jax.distributed`` processes, 2 devices each): two steps of
  a 4-device pipeline that spans both processes.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

import altmin_jax as amj
from altmin_jax.am import pipelined
from altmin_jax.sm import pipeline as pl

SIZES = (7, 6, 6, 6, 6, 6, 6, 6, 3)  # 8 stages: input 7 and logits 3 are zero-padded to 7/6
BATCH = 12
RTOL, ATOL = 1e-4, 1e-6
COLLECTIVES = (
  "all-reduce",
  "all-gather",
  "collective-permute",
  "all-to-all",
  "reduce-scatter",
  "collective-broadcast",
)


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
  assert len(a) == len(b), (len(a), len(b))
  return max(float(np.max(np.abs(x - y) / (ATOL + RTOL * np.abs(y)))) for x, y in zip(a, b))


def size(tree):
  return max(float(np.max(np.abs(x))) for x in leaves(tree))


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


def case_name(variant, m, boundary, form, steps) -> str:
  return f"{variant}/M={m}/{boundary}/{form}/steps={steps}"


def reference_run(variant, net, params, x, y, steps):
  """Single-device ``am_adam`` steps: (params, state) after each step."""
  tx = amj.am_adam(net, **VARIANTS[variant])
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(None, s, p, batch=(x, y)))
  out = []
  for _ in range(steps):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
    out.append((params, state))
  return out


def comparable(net, state, boundary):
  """The parts of a pipelined state that ``AMState`` holds: count, batch loss and the
  per-stage optimizer states."""
  states = pipelined.unstack_weight_states(net, state, boundary=boundary)
  return (state.count, state.batch_loss, states)


def reference_comparable(state):
  return (state.count, state.batch_loss, state.weight_states)


def pipelined_run(variant, net, params, x, y, steps, mesh, m, boundary, form):
  """Pipelined steps: (network params, comparable state) after each step and the last
  updates."""
  tx = amj.pipelined_am_adam(
    net, mesh=mesh, num_microbatches=m, boundary=boundary, **VARIANTS[variant]
  )
  if form == "stacked":
    params = pl.stack_params(net, params, boundary=boundary, mesh=mesh)
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(None, s, p, batch=(x, y)))
  out = []
  for _ in range(steps):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
    net_params = pl.unstack_params(net, params) if form == "stacked" else params
    out.append((net_params, comparable(net, state, boundary)))
  return out, updates


def _compiled(fn, *args):
  """``(collectives in the compiled fn, fn(*args))``: compiled once, run once."""
  compiled = jax.jit(fn).lower(*args).compile()
  return sorted(set(re.findall("|".join(COLLECTIVES), compiled.as_text()))), compiled(*args)


def phase_collectives(net, params, x, y, mesh) -> dict[str, list[str]]:
  """The collectives in each compiled phase of a step (pad boundary, M = 2), each phase
  run on the previous one's outputs."""
  pipe, cfg = pipelined.am_pipeline(net, mesh=mesh, num_microbatches=2, **VARIANTS["sgd"])
  stacked = pl.stack_params(net, params, mesh=mesh)
  tx = amj.pipelined_am_adam(net, mesh=mesh, num_microbatches=2, **VARIANTS["sgd"])
  states = tx.init(stacked).weight_states
  prep = pl.gpipe.prepare(pipe, net, stacked, (x, y), "test")
  lay, M, b = pipe.layout, 2, x.shape[0] // 2
  xin = pl.gpipe.microbatches(pl.layout.fit(prep.x, lay.in_width), M)
  carry = (jnp.zeros((M, b, lay.out_width)), pl.gpipe.microbatches(prep.y, M))
  mu = jnp.asarray(0.1)
  hlo = {}
  hlo["forward"], zin = _compiled(lambda th: pipe.forward(th, xin)[0], prep.theta)
  hlo["input_codes"], (cin, _) = _compiled(
    lambda th, z: pipelined.input_codes(pipe, th, z, xin, top=False), prep.theta, zin
  )
  hlo["code_updates"], ((cin_new, cout_new), _) = _compiled(
    lambda th, c: pipelined.code_updates(pipe, cfg, th, c, carry, mu, bottom=False),
    prep.theta,
    cin,
  )
  hlo["weight_updates"], _ = _compiled(
    lambda th, s, a, c: pipelined.weight_updates(pipe, cfg, th, s, a, c, prep.y, mu),
    prep.theta,
    states,
    cin_new,
    cout_new,
  )
  return hlo


def devices(n: int, full: bool = False) -> dict:
  """Child: every case of ``cases(n, full)`` on n CPU devices, and (n = 4, not full) the
  collectives of each compiled phase."""
  assert len(jax.devices()) == n, jax.devices()
  net, params, x, y = problem()
  x, y = jnp.asarray(x), jnp.asarray(y)
  mesh = pl.pipeline_mesh(n)
  todo = list(cases(n, full))
  refs, results = {}, {}
  for variant, m, boundary, form, steps in todo:
    if variant not in refs:
      most = max(c[4] for c in todo if c[0] == variant)
      refs[variant] = reference_run(variant, net, params, x, y, most)
    got, updates = pipelined_run(variant, net, params, x, y, steps, mesh, m, boundary, form)
    want = refs[variant][:steps]
    results[case_name(variant, m, boundary, form, steps)] = {
      "params_error": max(error(g[0], w[0]) for g, w in zip(got, want)),
      "state_error": max(error(g[1], reference_comparable(w[1])) for g, w in zip(got, want)),
      "moved": size(jax.tree.map(lambda a, b: a - b, want[-1][0], params)),
      "layers_per_device": sorted({s.data.shape[0] for s in updates.kernel.addressable_shards})
      if form == "stacked"
      else [],
    }
  hlo = phase_collectives(net, params, x, y, mesh) if n == 4 and not full else {}
  return {"cases": results, "hlo": hlo}


def worker() -> dict[str, np.ndarray]:
  """Child, one of two processes (2 CPU devices each): two pipelined AM-Adam steps of a
  4-device pipeline spanning both. Returns the params and state leaves after each step
  and the global layer indices of the stacked kernel on this process's devices."""
  rank = jax.process_index()
  mesh = pl.pipeline_mesh()
  assert len(jax.devices()) == 4 and len(jax.local_devices()) == 2
  net, params, x, y = problem()
  xg, yg = amj.distributed.global_replicated((x, y), mesh)
  got, updates = pipelined_run("sgd", net, params, xg, yg, 2, mesh, 2, "pad", "stacked")
  saved = {}
  for t, step in enumerate(got):
    for i, leaf in enumerate(leaves(step)):
      saved[f"{t}/{i}"] = leaf
  owned = sorted(i for s in updates.kernel.addressable_shards for i in range(8)[s.index[0]])
  saved[f"owned/{rank}"] = np.asarray(owned)
  return saved
