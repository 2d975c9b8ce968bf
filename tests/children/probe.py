"""Child programs that check the launcher itself (``test_child_launcher.py``)."""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np


def environment() -> dict:
  """The devices and processes this child sees, and the size of XLA:CPU's intra-op
  thread pool (its threads are named ``tf_XLAEigen``) after a psum over all devices."""
  n = len(jax.devices())
  mesh = jax.make_mesh((n,), ("d",))
  spec = jax.sharding.PartitionSpec("d")
  sharding = jax.sharding.NamedSharding(mesh, spec)
  x = jax.make_array_from_callback((n,), sharding, lambda index: np.ones(n, np.float32)[index])
  psum = jax.shard_map(lambda v: jax.lax.psum(v, "d"), mesh=mesh, in_specs=spec, out_specs=spec)
  value = float(jnp.max(jax.jit(psum)(x).addressable_shards[0].data))
  tasks = "/proc/self/task"  # Linux: one entry per thread, its name in comm
  threads = [open(f"{tasks}/{t}/comm").read().strip() for t in os.listdir(tasks)]
  return {
    "devices": len(jax.devices()),
    "local_devices": len(jax.local_devices()),
    "process_index": jax.process_index(),
    "psum": value,
    "intra_op_threads": threads.count("tf_XLAEigen"),
    "platform": jax.devices()[0].platform,
  }


def fail(message: str, rank: int = 0, others_sleep: float = 0.0) -> None:
  """Raises in process ``rank``; the other processes sleep ``others_sleep`` seconds."""
  if jax.process_index() == rank:
    raise RuntimeError(message)
  time.sleep(others_sleep)


def sleep(seconds: float) -> None:
  time.sleep(seconds)
