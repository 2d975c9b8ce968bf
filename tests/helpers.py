"""Shared test helpers: a small problem zoo, tree comparisons and the launcher of the
multi-device / multi-process child programs (``tests/children/``)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import altmin_jax as amj


def tree_allclose(a, b, rtol=1e-6, atol=1e-6) -> bool:
  """Same structure and every leaf close."""
  if jax.tree.structure(a) != jax.tree.structure(b):
    return False
  return all(
    np.allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=atol)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def tree_close_normwise(a, b, rtol: float) -> bool:
  """Same structure and ``max |a - b| <= rtol * max |b|`` over all leaves at once: for
  results whose rounding error is relative to the whole tree's size (a nearly singular solve)
  rather than to each entry."""
  if jax.tree.structure(a) != jax.tree.structure(b):
    return False
  largest = lambda x: float(np.max(np.abs(np.asarray(x, np.float64)), initial=0.0))
  diff = max(
    largest(np.subtract(x, y, dtype=np.float64))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )
  size = max(largest(y) for y in jax.tree.leaves(b))
  return diff <= rtol * size


def tree_equal(a, b) -> bool:
  """Same structure and bitwise-equal leaves."""
  if jax.tree.structure(a) != jax.tree.structure(b):
    return False
  return all(
    np.array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def teacher_classification(seed: int = 0, n: int = 64, d: int = 6, classes: int = 3):
  """Inputs ``(n, d)`` and labels of a random tanh teacher network (learnable)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  w1 = rng.normal(size=(d, 16))
  w2 = rng.normal(size=(16, classes))
  y = np.argmax(np.tanh(x @ w1) @ w2, axis=1).astype(np.int32)
  return jnp.asarray(x), jnp.asarray(y)


def small_mlp(dtype=jnp.float32, sizes=(6, 8, 8, 3), activation=jnp.tanh):
  return amj.networks.mlp(list(sizes), activation=activation, dtype=dtype)


@functools.cache
def bundled_split(split_seed: int | None = None):
  """The bundled MNIST 10k split: the first 8,000 for training, the last 2,000 held out
  (``split_seed`` shuffles first)."""
  return amj.data.load_dataset("bundled_mnist", num_train=8000, split_seed=split_seed)


# ----------------------------------------------------------- child programs

TESTS = os.path.dirname(os.path.abspath(__file__))

# XLA:CPU runs each device's share of a program on its intra-op thread pool, and an
# in-process collective blocks its thread until every device has joined. The pool has
# max(cores, devices) threads, but the thunk executor runs independent collectives of one
# device at the same time (a loop of collective-permutes beside an all-gather), so on a
# 2-core machine the devices that arrive first can hold every thread while the others
# wait for one: a deadlock that XLA ends after 40 s ("Termination timeout for ...
# RendezvousKey"). Children get this many pool threads per device instead, through
# PJRT_NPROC, which XLA reads as the machine's core count (BUILD.md).
THREADS_PER_DEVICE = 4


def child_environment(devices: int) -> dict[str, str]:
  """Environment of a child with ``devices`` CPU devices: ``XLA_FLAGS`` (any device count
  already there replaced), the CPU platform, and an XLA:CPU thread pool of at least
  ``THREADS_PER_DEVICE`` threads per device."""
  flags = os.environ.get("XLA_FLAGS", "").split()
  flags = [f for f in flags if not f.startswith("--xla_force_host_platform_device_count")]
  flags.append(f"--xla_force_host_platform_device_count={devices}")
  threads = max(os.cpu_count() or 1, THREADS_PER_DEVICE * devices)
  return {"XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu", "PJRT_NPROC": str(threads)}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Child:
  """The processes of one child program, started by :func:`start_child`."""

  def __init__(self, program: str, args: tuple, devices: int, processes: int, timeout: float):
    module, function = program.rsplit(".", 1)
    self.name = f"{program}{args} on {processes} x {devices} devices"
    self.timeout = timeout
    self.dir = tempfile.mkdtemp(prefix="altmin_jax_child_")
    coordinator = f"127.0.0.1:{free_port()}" if processes > 1 else ""
    env = {**os.environ, **child_environment(devices)}
    self.procs = []
    for rank in range(processes):
      command = [sys.executable, "-m", "children", module, function, json.dumps(list(args))]
      command += [self._path(rank, "pkl"), "--rank", str(rank), "--processes", str(processes)]
      command += ["--coordinator", coordinator] if coordinator else []
      with open(self._path(rank, "out"), "w") as out, open(self._path(rank, "err"), "w") as err:
        self.procs.append(
          subprocess.Popen(
            command, cwd=TESTS, env=env, stdout=out, stderr=err, start_new_session=True
          )
        )
    self.started = time.monotonic()

  def _path(self, rank: int, kind: str) -> str:
    return os.path.join(self.dir, f"{rank}.{kind}")

  def _kill(self):
    for proc in self.procs:
      if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):  # it may have exited meanwhile
          os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

  def kill(self):
    """Ends the child's processes that still run (a no-op once :meth:`wait` returned)."""
    self._kill()
    shutil.rmtree(self.dir, ignore_errors=True)

  def _report(self, why: str) -> str:
    lines = [f"child {self.name} {why}"]
    for rank, proc in enumerate(self.procs):
      with open(self._path(rank, "err")) as f:
        stderr = f.read()
      lines.append(f"--- process {rank}: exit code {proc.returncode}; stderr tail:")
      lines.append(stderr[-4000:])
    return "\n".join(lines)

  def wait(self) -> list:
    """The child function's return value in each process (rank order). Raises
    ``AssertionError`` with the stderr tails when a process fails (the others are
    killed) or when the child runs past its timeout."""
    try:
      while True:
        codes = [proc.poll() for proc in self.procs]
        if any(code not in (None, 0) for code in codes):
          self._kill()
          raise AssertionError(self._report("failed"))
        if all(code == 0 for code in codes):
          break
        if time.monotonic() - self.started > self.timeout:
          self._kill()
          raise AssertionError(self._report(f"ran past its timeout of {self.timeout:.0f} s"))
        time.sleep(0.1)
      results = []
      for rank in range(len(self.procs)):
        with open(self._path(rank, "pkl"), "rb") as f:
          results.append(pickle.load(f))
      return results
    finally:
      shutil.rmtree(self.dir, ignore_errors=True)


def start_child(
  program: str, *args, devices: int = 1, processes: int = 1, timeout: float = 600.0
) -> Child:
  """Starts ``tests/children/<module>.py:<function>(*args)`` (``program`` is
  ``"<module>.<function>"``, ``args`` JSON values) in ``processes`` fresh Python
  processes with ``devices`` CPU devices each (``child_environment``); with several
  processes they join one ``jax.distributed`` job on a free localhost port, gloo CPU
  collectives. ``.wait()`` returns the results."""
  return Child(program, args, devices, processes, timeout)


def run_child(
  program: str, *args, devices: int = 1, processes: int = 1, timeout: float = 600.0
) -> list:
  """:func:`start_child`, then the function's return value in each process (rank order)."""
  return start_child(program, *args, devices=devices, processes=processes, timeout=timeout).wait()
