"""A two-process data-parallel training run for ``test_fault_tolerance.py``.

:func:`train` is one of the two processes (one CPU device each). It joins the job itself
through :func:`altmin_jax.distributed.processes.initialize` with short timeouts (the test
starts it without ``--processes``, so ``children/__main__`` does not join with the
defaults) and trains synchronous EASGD with ``WORKERS`` workers on a mesh spanning both
processes (one all-reduce per step): a linear least-squares model, each worker's batch at
every step drawn from a seed of (step, worker), so that the result depends only on the
steps taken, not on where a run was stopped. Every finished step prints a line
(``process R: step T done``) that the test watches. A run can save an orbax checkpoint
after a step and stop there, start from such a checkpoint, or stall at a step (sleep
outside any collective, as a process stuck in its own code would).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import altmin_jax as amj
import altmin_jax.distributed as dist
from altmin_jax.distributed import processes

WORKERS = 4
FEATURES = 8
BATCH = 16


def batches(step: int, rows) -> tuple[np.ndarray, np.ndarray]:
  """Inputs ``(len(rows), BATCH, FEATURES)`` and targets ``(len(rows), BATCH)`` of the
  workers ``rows`` at ``step``: a fixed linear teacher plus noise."""
  teacher = np.linspace(-1.0, 1.0, FEATURES).astype(np.float32)
  xs, ys = [], []
  for row in rows:
    rng = np.random.default_rng([step, row])
    x = rng.normal(size=(BATCH, FEATURES)).astype(np.float32)
    xs.append(x)
    ys.append(x @ teacher + 0.1 * rng.normal(size=BATCH).astype(np.float32))
  return np.stack(xs), np.stack(ys)


def _loss(w, x, y):
  return jnp.mean((x @ w - y) ** 2)


def _say(message: str) -> None:
  print(f"process {jax.process_index()}: {message}", flush=True)


def train(coordinator: str, rank: int, options: dict) -> dict | None:
  """One process of the run; returns the gathered worker params, centre and step count on
  process 0 (``None`` on process 1).

  ``options`` (JSON):
    steps: the step count the run ends at (counted from the start of training, also when
      resuming).
    save_at: after this many steps, write an orbax checkpoint (params and optimizer state)
      to ``checkpoint`` and stop.
    checkpoint: the checkpoint directory.
    resume: start from the checkpoint in ``checkpoint`` instead of from step 0.
    stall_at: at this step, sleep ``stall_seconds`` before the step's collective.
    heartbeat_timeout, collective_timeout, shutdown_timeout: for ``initialize``.
  """
  timeouts = ("heartbeat_timeout", "collective_timeout", "shutdown_timeout")
  processes.initialize(coordinator, 2, rank, **{k: options[k] for k in timeouts if k in options})
  with processes.fail_fast():
    return _train(**{k: v for k, v in options.items() if k not in timeouts})


def _train(
  steps: int,
  save_at: int | None = None,
  checkpoint: str | None = None,
  resume: bool = False,
  stall_at: int | None = None,
  stall_seconds: float = 600.0,
) -> dict | None:
  mesh = dist.worker_mesh()
  assert len(jax.devices()) == 2 and len(jax.local_devices()) == 1
  rows = dist.workers.process_rows(WORKERS, mesh)
  tx = dist.easgd(0.05, num_workers=WORKERS, mesh=mesh)

  @jax.jit
  def step_fn(params, state, x, y):
    grads = jax.vmap(jax.grad(_loss))(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = dist.global_workers(np.zeros((len(rows), FEATURES), np.float32), mesh)
  state = tx.init(params)
  start = 0
  if resume:
    restored = amj.training.restore_checkpoint(
      checkpoint, _layout({"params": params, "state": state}, mesh)
    )
    params, state = restored["params"], restored["state"]
    start = _count(state)
    _say(f"resumed at step {start}")
  for t in range(start, steps):
    if t == stall_at:
      _say(f"stalling at step {t}")
      time.sleep(stall_seconds)
    x, y = batches(t, rows)
    params, state = step_fn(
      params, state, dist.global_workers(x, mesh), dist.global_workers(y, mesh)
    )
    jax.block_until_ready((params, state))
    _say(f"step {t} done")
    if save_at is not None and t + 1 == save_at:
      amj.training.save_checkpoint(checkpoint, {"params": params, "state": state})
      _say(f"saved a checkpoint after step {t}")
      break
  result = dist.fetch({"params": params, "centre": dist.centre(state)})
  return {**result, "count": _count(state)} if jax.process_index() == 0 else None


def _count(state) -> int:
  """The step count, replicated on every device (EASGD's ``init`` leaves it an array of
  this process only, ``fetch`` would stack the processes' copies)."""
  return int(np.asarray(state.count.addressable_data(0)))


def _layout(tree, mesh):
  """Shapes, dtypes and shardings to restore ``tree`` into: arrays sharded over the mesh
  keep their sharding, all others are replicated over the mesh."""
  replicated = NamedSharding(mesh, P())

  def one(a):
    sharding = a.sharding if isinstance(a.sharding, NamedSharding) else replicated
    return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)

  return jax.tree.map(one, tree)
