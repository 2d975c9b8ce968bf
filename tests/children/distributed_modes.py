"""Stacked workers (vmap) against workers on a device mesh (shard_map): the methods, the
problem, and the child programs of ``test_distributed_modes.py``.

* :func:`modes` (one process, 4 CPU devices): every configuration of
  :func:`configurations` run both ways, as the largest difference.
* :func:`worker` (one of two ``jax.distributed`` processes, 2 devices each): the
  ``MULTIPROCESS`` methods with 8 workers on a mesh spanning both processes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import altmin_jax.distributed as dist

STEPS = 5

# name -> factory(p, mesh) of every p-worker method
METHODS = {
  "dc_asgd": lambda p, mesh: dist.dc_asgd(0.3, lambda_0=0.5, num_workers=p, mesh=mesh),
  "dc_asgd_adaptive": lambda p, mesh: dist.dc_asgd_adaptive(0.3, 0.5, num_workers=p, mesh=mesh),
  "async_sgd": lambda p, mesh: dist.async_sgd(0.3, num_workers=p, mesh=mesh),
  "ssgd": lambda p, mesh: dist.ssgd(0.3, num_workers=p, mesh=mesh),
  "dc_ssgd": lambda p, mesh: dist.dc_ssgd(0.3, 0.5, num_workers=p, mesh=mesh),
  "easgd": lambda p, mesh: dist.easgd(0.3, num_workers=p, communication_period=2, mesh=mesh),
  "async_easgd": lambda p, mesh: dist.async_easgd(0.3, num_workers=p, mesh=mesh),
  "eamsgd": lambda p, mesh: dist.eamsgd(0.1, num_workers=p, momentum=0.9, mesh=mesh),
  "downpour": lambda p, mesh: dist.downpour(0.3, num_workers=p, communication_period=2, mesh=mesh),
  "mdownpour": lambda p, mesh: dist.mdownpour(0.1, num_workers=p, momentum=0.5, mesh=mesh),
}

# methods run across two processes: both families, synchronous and asynchronous
MULTIPROCESS = ("easgd", "eamsgd", "downpour", "dc_asgd", "ssgd")


def problem(p):
  """Initial stacked params, per-step targets and a random push schedule."""
  rng = np.random.default_rng(p)
  params = {"w": np.full((p, 3, 2), 0.1, np.float32), "b": np.zeros((p, 2), np.float32)}
  targets = {
    "w": rng.normal(size=(STEPS, p, 3, 2)).astype(np.float32),
    "b": rng.normal(size=(STEPS, p, 2)).astype(np.float32),
  }
  schedule = dist.random_delays(jax.random.key(p), p, STEPS, participation=0.75)
  return params, targets, np.asarray(schedule.order), np.asarray(schedule.active)


def _step(tx):
  def step(params, state, target, order, active):
    grads = jax.tree.map(lambda x, t: x - t, params, target)  # quadratic per worker
    updates, state = tx.update(grads, state, params, order=order, active=active)
    return optax.apply_updates(params, updates), state

  return jax.jit(step)


def run_method(name, p, mesh=None, place=None):
  """``STEPS`` steps of a method; ``place(tree, per_worker: bool)`` puts inputs on devices."""
  params, targets, order, active = problem(p)
  tx = METHODS[name](p, mesh)
  place = place or (lambda tree, per_worker: jax.tree.map(jnp.asarray, tree))
  params = place(params, True)
  state = tx.init(params)
  step = _step(tx)
  for r in range(STEPS):
    target = place({k: v[r] for k, v in targets.items()}, True)
    params, state = step(params, state, target, place(order[r], False), place(active[r], False))
  return params, state


def flat(tree):
  return [np.asarray(x, np.float64) for x in jax.tree.leaves(dist.fetch(tree))]


def max_difference(a, b):
  return max(float(np.max(np.abs(x - y))) for x, y in zip(flat(a), flat(b)))


def configurations(full: bool):
  """(method, p, mesh kind): every method with 2 workers per device on an auto-axis mesh;
  1 worker per device and explicit mesh axes for two methods (all methods when ``full``)."""
  for name in METHODS:
    yield name, 8, "auto"
    if full or name in ("easgd", "dc_asgd"):
      yield name, 4, "explicit"
    if full:
      yield name, 4, "auto"
      yield name, 8, "explicit"


def modes(full: bool = False) -> dict:
  """Child (4 CPU devices): per configuration, the largest difference between the stacked
  and the mesh run, the workers held by each device and how far the run moved; and
  whether the mesh update is a shard_map with a psum."""
  assert len(jax.devices()) == 4
  results = {}
  meshes = {
    "auto": dist.worker_mesh(4),  # axis "workers"
    "explicit": jax.make_mesh((4,), ("workers",)),  # explicit axis type in jax 0.10
  }
  stacked_runs = {}
  for name, p, label in configurations(full):
    if (name, p) not in stacked_runs:
      stacked_runs[name, p] = run_method(name, p)
    stacked = stacked_runs[name, p]
    m = meshes[label]
    on_mesh = run_method(name, p, m, lambda t, w, m=m: dist.shard_workers(t, m) if w else t)
    rows = {s.data.shape[0] for s in jax.tree.leaves(on_mesh[0])[0].addressable_shards}
    results[f"{name}/p={p}/{label}"] = {
      "max_difference": max_difference(stacked, on_mesh),
      "rows_per_device": sorted(rows),
      "moved": max_difference(stacked[0], problem(p)[0]),
    }
  # the mesh mode really is a shard_map with collectives
  params = problem(4)[0]
  tx = METHODS["easgd"](4, meshes["auto"])
  jaxpr = str(jax.make_jaxpr(lambda g, s, x: tx.update(g, s, x))(params, tx.init(params), params))
  results["jaxpr"] = {"shard_map": "shard_map" in jaxpr, "psum": "psum" in jaxpr}
  return results


def worker() -> dict[str, np.ndarray] | None:
  """Child, one of two processes (2 CPU devices each): the ``MULTIPROCESS`` methods with 8
  workers on a 4-device mesh; process 0 returns the gathered params and centres."""
  mesh = dist.worker_mesh()  # 4 devices, 2 per process
  assert len(jax.devices()) == 4 and len(jax.local_devices()) == 2
  saved = {}
  for name in MULTIPROCESS:
    p = 8
    rows = dist.workers.process_rows(p, mesh)

    def place(tree, per_worker, rows=rows):
      if per_worker:
        return dist.global_workers(jax.tree.map(lambda x: np.asarray(x)[rows], tree), mesh)
      return dist.global_replicated(tree, mesh)

    params, state = run_method(name, p, mesh, place)
    for i, leaf in enumerate(flat((params, dist.centre(state)))):
      saved[f"{name}/{i}"] = leaf
  return saved if jax.process_index() == 0 else None
