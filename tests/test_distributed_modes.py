"""One implementation, two execution modes: stacked workers (vmap) and workers on a device
mesh (shard_map), on 4 CPU devices in one process and across 2 processes
(``jax.distributed`` on localhost).

The multi-device parts run this file as a script in subprocesses, since the number of
CPU devices is fixed when JAX starts: ``python test_distributed_modes.py modes`` (one
process, 4 devices) and ``... worker RANK PORT OUT`` (one of two processes, 2 devices
each).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import aborted_by_xla_watchdog, communicate_retrying

import altmin_jax.distributed as dist

STEPS = 5
FOUR_DEVICES = "--xla_force_host_platform_device_count=4"
HERE = os.path.dirname(os.path.abspath(__file__))

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


def _problem(p):
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
  params, targets, order, active = _problem(p)
  tx = METHODS[name](p, mesh)
  place = place or (lambda tree, per_worker: jax.tree.map(jnp.asarray, tree))
  params = place(params, True)
  state = tx.init(params)
  step = _step(tx)
  for r in range(STEPS):
    target = place({k: v[r] for k, v in targets.items()}, True)
    params, state = step(params, state, target, place(order[r], False), place(active[r], False))
  return params, state


def _flat(tree):
  return [np.asarray(x, np.float64) for x in jax.tree.leaves(dist.fetch(tree))]


def _max_difference(a, b):
  return max(float(np.max(np.abs(x - y))) for x, y in zip(_flat(a), _flat(b)))


# ------------------------------------------------------------- child processes


def _configurations(full):
  """(method, p, mesh kind): every method with 2 workers per device on an auto-axis mesh;
  1 worker per device and explicit mesh axes for two methods (all methods when ``full``)."""
  for name in METHODS:
    yield name, 8, "auto"
    if full or name in ("easgd", "dc_asgd"):
      yield name, 4, "explicit"
    if full:
      yield name, 4, "auto"
      yield name, 8, "explicit"


def _child_modes(full):
  assert len(jax.devices()) == 4
  results = {}
  meshes = {
    "auto": dist.worker_mesh(4),  # axis "workers"
    "explicit": jax.make_mesh((4,), ("workers",)),  # explicit axis type in jax 0.10
  }
  stacked_runs = {}
  for name, p, label in _configurations(full):
    if (name, p) not in stacked_runs:
      stacked_runs[name, p] = run_method(name, p)
    stacked = stacked_runs[name, p]
    m = meshes[label]
    on_mesh = run_method(name, p, m, lambda t, w, m=m: dist.shard_workers(t, m) if w else t)
    rows = {s.data.shape[0] for s in jax.tree.leaves(on_mesh[0])[0].addressable_shards}
    results[f"{name}/p={p}/{label}"] = {
      "max_difference": _max_difference(stacked, on_mesh),
      "rows_per_device": sorted(rows),
      "moved": _max_difference(stacked[0], _problem(p)[0]),
    }
  # the mesh mode really is a shard_map with collectives
  params = _problem(4)[0]
  tx = METHODS["easgd"](4, meshes["auto"])
  jaxpr = str(jax.make_jaxpr(lambda g, s, x: tx.update(g, s, x))(params, tx.init(params), params))
  results["jaxpr"] = {"shard_map": "shard_map" in jaxpr, "psum": "psum" in jaxpr}
  print(json.dumps(results))


# methods run across two processes: both families, synchronous and asynchronous
MULTIPROCESS = ("easgd", "eamsgd", "downpour", "dc_asgd", "ssgd")


def _child_worker(rank, port, out):
  dist.initialize_multiprocess(f"127.0.0.1:{port}", 2, rank)
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
    for i, leaf in enumerate(_flat((params, dist.centre(state)))):
      saved[f"{name}/{i}"] = leaf
  if rank == 0:
    np.savez(out, **saved)


# ------------------------------------------------------------------ the tests


def _python(args, env_extra, timeout):
  env = {**os.environ, **env_extra}
  return subprocess.Popen(
    [sys.executable, os.path.join(HERE, "test_distributed_modes.py"), *args],
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _check_modes(full):
  start = lambda: _python(["modes-full" if full else "modes"], {"XLA_FLAGS": FOUR_DEVICES}, 600)
  code, stdout, stderr = communicate_retrying(start, 600)  # see helpers.XLA_RENDEZVOUS_ABORT
  assert code == 0, stderr[-4000:]
  results = json.loads(stdout.strip().splitlines()[-1])
  assert results.pop("jaxpr") == {"shard_map": True, "psum": True}
  assert len(results) == len(list(_configurations(full)))
  for key, r in results.items():
    p = int(key.split("/")[1][2:])
    assert r["max_difference"] <= 1e-6, (key, r)
    assert r["rows_per_device"] == [p // 4], (key, r)
    assert r["moved"] > 0.05, (key, r)  # the runs did something


def test_stacked_and_mesh_modes_agree_on_four_devices():
  """Every p-worker method, 5 steps with random push orders and delays: stacked workers
  under vmap and workers sharded over a 4-device mesh under shard_map give the same
  params and states (to 1e-6: an all-reduce may sum in another order; most agree
  bitwise), and each device holds only its own workers. Default: 8 workers (2 per
  device) on an auto-axis mesh for all methods, 4 on an explicit-axis mesh for two."""
  _check_modes(full=False)


@pytest.mark.slow
def test_stacked_and_mesh_modes_agree_for_every_layout():
  """The same for every method with 4 and 8 workers on auto- and explicit-axis meshes."""
  _check_modes(full=True)


def test_only_xla_watchdog_aborts_are_retried():
  """The retry of multi-device children (helpers.communicate_retrying) applies to XLA:CPU's
  collective watchdog abort and to nothing else."""
  watchdog = (
    "F1201 rendezvous.cc:161] [id=0] Termination timeout for `all gather RendezvousKey{"
    "run_id=RunId: 1, global_devices=[0, 1, 2, 3]}` of 40 seconds exceeded."
  )
  assert aborted_by_xla_watchdog(-6, watchdog)
  assert not aborted_by_xla_watchdog(0, watchdog)
  assert not aborted_by_xla_watchdog(1, "AssertionError: params differ")
  assert not aborted_by_xla_watchdog(-6, "Termination timeout for a socket")
  calls = []

  class Child:
    def __init__(self, code, err):
      self.returncode, self.err = code, err

    def communicate(self, timeout):
      return "", self.err

  results = iter([Child(-6, watchdog), Child(-6, watchdog), Child(0, "")])
  start = lambda: calls.append(1) or next(results)
  assert communicate_retrying(start, 1)[0] == 0 and len(calls) == 3
  results = iter([Child(1, "AssertionError"), Child(0, "")])
  calls.clear()
  assert communicate_retrying(start, 1)[0] == 1 and len(calls) == 1


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_stacked_workers(tmp_path):
  """Two processes (jax.distributed on localhost, gloo CPU collectives, 2 devices each)
  run EASGD, EAMSGD, DOWNPOUR, DC-ASGD and SSGD with 8 workers on a mesh spanning both;
  the gathered params and centres equal the stacked single-device run."""
  port, out = _free_port(), tmp_path / "multiprocess.npz"
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  procs = [_python(["worker", str(rank), str(port), str(out)], env, 300) for rank in (0, 1)]
  outputs = [proc.communicate(timeout=300) for proc in procs]
  for proc, (_, stderr) in zip(procs, outputs):
    assert proc.returncode == 0, stderr[-4000:]
  got = np.load(out)
  assert {key.split("/")[0] for key in got.files} == set(MULTIPROCESS)
  for name in MULTIPROCESS:
    params, state = run_method(name, 8)
    for i, want in enumerate(_flat((params, dist.centre(state)))):
      np.testing.assert_allclose(got[f"{name}/{i}"], want, rtol=1e-6, atol=1e-6, err_msg=name)


if __name__ == "__main__":
  if sys.argv[1] in ("modes", "modes-full"):
    _child_modes(sys.argv[1] == "modes-full")
  else:
    _child_worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
