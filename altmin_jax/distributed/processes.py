"""Multi-process runs that fail fast: when a process dies, the others end with a clear error.

A ``jax.distributed`` job left with its defaults can hang for a long time after one of
its processes dies: a survivor blocked in a cross-process collective waits for the
collective's timeout (on CPU, XLA's default is 30 minutes), a dead process is declared
dead after 100 s without heartbeats, and a survivor leaving with an error then waits up to
300 s in the job's shutdown barrier for the process that will never arrive. Start every
process of a run with :func:`initialize` instead of ``jax.distributed.initialize``, and
run its work inside :func:`fail_fast`:

.. code-block:: python

   from altmin_jax.distributed import processes

   processes.initialize("10.0.0.1:1234", num_processes=2, process_id=rank)
   with processes.fail_fast():
     train()  # collectives over a mesh spanning both processes

How a failure reaches the other processes, all within bounded time:

* **A process dies** (killed, crashed, ``os._exit``): the operating system closes its
  sockets, so a survivor's pending or next cross-process collective fails at once
  ("Connection closed by peer" / "Connection reset by peer" from gloo on CPU).
  :func:`fail_fast` reports it as a :class:`PeerFailure` naming this process and exits
  with status 1 at once, without waiting in the shutdown barrier.
* **A process stops responding** (frozen, its machine gone): it stops sending heartbeats
  and the job's coordination service declares it dead after ``heartbeat_timeout``
  seconds; XLA then terminates every other process (status -6, SIGABRT) with "Terminating
  process because the JAX distributed service detected fatal errors. This most likely
  indicates that another task died", listing the tasks that "stopped sending heartbeats".
  When the coordinator (process 0) itself stops, the others' heartbeats fail after the same
  time, with the same message.
* **A process is alive but never joins a collective** (stuck in its own code): its
  heartbeats continue, so only the collective's own timeout ends the wait:
  ``collective_timeout`` seconds (XLA's ``--xla_cpu_collective_timeout_seconds``), then a
  :class:`PeerFailure` as above.

The timeouts must exceed the longest legitimate pause: a collective's timeout must
outlast the time one process may spend before joining a collective the others already
wait in (compiling, writing a checkpoint, evaluating on process 0 only).
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Iterator

import jax

from altmin_jax.core.checks import check_int

COLLECTIVE_TIMEOUT_FLAG = "--xla_cpu_collective_timeout_seconds"

# What the CPU collectives (gloo) report when the process at the other end of a socket
# died or did not answer in time.
_PEER_FAILURE_SIGNS = (
  "connection closed by peer",
  "connection reset by peer",
  "broken pipe",
  "timed out waiting",
  "connection refused",
)


class PeerFailure(RuntimeError):
  """A cross-process collective failed because another process of the job died or stopped
  responding (raised by :func:`check_peer_failure`, reported by :func:`fail_fast`)."""


def initialize(
  coordinator_address: str,
  num_processes: int,
  process_id: int,
  *,
  heartbeat_timeout: int = 30,
  collective_timeout: int = 300,
  shutdown_timeout: int = 30,
  initialization_timeout: int = 300,
  cpu_collectives: str | None = "gloo",
) -> None:
  """Joins a ``jax.distributed`` job whose failures are detected within bounded time.

  Call it in every process of the job before any other JAX work (``jax.devices()``
  included): it sets XLA's CPU collective timeout, which XLA reads when it starts.
  Afterwards ``jax.devices()`` spans all processes.

  Args:
    coordinator_address: ``"host:port"`` of process 0, e.g. ``"127.0.0.1:12345"``.
    num_processes: number of processes in the job.
    process_id: this process's rank in ``[0, num_processes)``.
    heartbeat_timeout: seconds without heartbeats after which the job declares a process
      dead and terminates the others (JAX's default: 100).
    collective_timeout: seconds a CPU collective waits for the other processes before it
      fails (``--xla_cpu_collective_timeout_seconds``, appended to ``XLA_FLAGS`` unless
      already set there; XLA's default: 1800).
    shutdown_timeout: seconds a process leaving the job normally waits for the others in
      the shutdown barrier (JAX's default: 300).
    initialization_timeout: seconds to wait for all processes to join (JAX's default: 300).
    cpu_collectives: CPU cross-process collectives implementation (``"gloo"``; ``None``
      leaves ``jax_cpu_collectives_implementation`` unchanged).

  Raises:
    ValueError: for an invalid argument.
    RuntimeError: when JAX is already running in this process (devices or computations
      already used, or a job already joined), or when the job cannot be joined within
      ``initialization_timeout``.
  """
  if not isinstance(coordinator_address, str) or ":" not in coordinator_address:
    raise ValueError(
      f'coordinator_address must be a "host:port" string, got {coordinator_address!r}'
    )
  num_processes = check_int("num_processes", num_processes, 1)
  process_id = check_int("process_id", process_id, 0, num_processes - 1)
  heartbeat_timeout = check_int("heartbeat_timeout", heartbeat_timeout, 1)
  collective_timeout = check_int("collective_timeout", collective_timeout, 1)
  shutdown_timeout = check_int("shutdown_timeout", shutdown_timeout, 1)
  initialization_timeout = check_int("initialization_timeout", initialization_timeout, 1)
  if jax.distributed.is_initialized():
    raise RuntimeError(
      "altmin_jax.distributed.processes.initialize: this process already joined a "
      "jax.distributed job; call initialize once per process"
    )
  from jax._src import xla_bridge  # no public API tells whether the backends started

  if xla_bridge.backends_are_initialized():
    raise RuntimeError(
      "altmin_jax.distributed.processes.initialize must run before any other JAX work in "
      "the process (jax.devices(), a computation, ...): JAX has already started its "
      "backends, so the process can no longer join a jax.distributed job"
    )
  flags = os.environ.get("XLA_FLAGS", "")
  if COLLECTIVE_TIMEOUT_FLAG not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {COLLECTIVE_TIMEOUT_FLAG}={collective_timeout}".strip()
  if cpu_collectives is not None:
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  try:
    jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
      initialization_timeout=initialization_timeout,
      heartbeat_timeout_seconds=heartbeat_timeout,
      shutdown_timeout_seconds=shutdown_timeout,
    )
  except Exception as error:
    raise RuntimeError(
      f"process {process_id} of {num_processes} could not join the jax.distributed job "
      f"coordinated at {coordinator_address} within {initialization_timeout} s (are all "
      f"{num_processes} processes started, with the same address and distinct process "
      f"ids?): {type(error).__name__}: {error}"
    ) from error


def _where() -> str:
  if jax.distributed.is_initialized():
    return f"process {jax.process_index()} of {jax.process_count()}"
  return "this process"


def check_peer_failure(error: BaseException) -> PeerFailure | None:
  """A :class:`PeerFailure` describing ``error`` when it is a collective that failed because
  another process died or stopped responding; ``None`` for any other error."""
  text = str(error).lower()
  if not any(sign in text for sign in _PEER_FAILURE_SIGNS):
    return None
  failure = PeerFailure(
    f"{_where()}: a cross-process collective failed because another process of the "
    "jax.distributed job died or stopped responding (see that process's log for why). "
    f"Underlying error: {type(error).__name__}: {error}"
  )
  failure.__cause__ = error
  return failure


@contextlib.contextmanager
def fail_fast(exit_code: int = 1) -> Iterator[None]:
  """Ends the process at once, with status ``exit_code``, when the body raises.

  Prints the traceback and a one-line summary to stderr: for a collective that failed
  because another process died or stopped responding (:func:`check_peer_failure`), the
  :class:`PeerFailure` message naming this process; for any other error, that this
  process failed. Then exits with ``os._exit``, skipping ``jax.distributed``'s shutdown
  barrier, where a survivor would otherwise wait ``shutdown_timeout`` seconds for a
  process that will never arrive (and then abort). The other processes of the job see this
  one leave and fail in turn. Standard output and error are flushed first; ``atexit``
  handlers do not run. ``SystemExit`` with status 0 passes through unchanged.
  """
  exit_code = check_int("exit_code", exit_code, 1, 255)
  try:
    yield
  except SystemExit as error:
    if error.code in (None, 0):
      raise
    _exit(error, exit_code)
  except BaseException as error:  # any failure must end the process
    _exit(error, exit_code)


def _exit(error: BaseException, exit_code: int) -> None:
  failure = check_peer_failure(error)
  traceback.print_exception(error, file=sys.stderr)
  if failure is not None:
    summary = f"{type(failure).__name__}: {failure}"
  else:
    summary = (
      f"{_where()} failed with {type(error).__name__}: {error}; exiting at once so that the "
      "other processes of the job fail fast instead of waiting for this one"
    )
  print(f"altmin_jax.distributed: {summary}", file=sys.stderr)
  with contextlib.suppress(Exception):
    sys.stdout.flush()
  with contextlib.suppress(Exception):
    sys.stderr.flush()
  os._exit(exit_code)
