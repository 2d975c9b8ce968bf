"""Fault tolerance of two-process runs (``jax.distributed`` on localhost, gloo CPU
collectives): a process that dies or stops responding mid-run makes the other exit with a
clear error within bounded time, and a run checkpointed, stopped and resumed in fresh
processes ends exactly where an uninterrupted run does.

The processes run ``children/fault_tolerance.py:train``, started here rather than by
``helpers.start_child`` (whose launcher kills every process as soon as one fails, which
is the very thing under test), with the same environment (``helpers.child_environment``:
one CPU device each, the XLA:CPU thread pool sized against its collective deadlock). Every
wait has a timeout and every process is killed at the end: a hang fails the test, it
never blocks the suite.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import TESTS, child_environment, free_port, tree_equal

from altmin_jax.distributed import processes

STARTUP_TIMEOUT = 120.0  # seconds for both processes to start and finish a few steps
DETECTION_BOUND = 45.0  # seconds from the fault to the survivor's exit
HEARTBEAT = 10  # heartbeat timeout of the fault runs
COLLECTIVE = 20  # collective timeout of the fault runs
PEER_FAILURE = "PeerFailure: process {rank} of 2: a cross-process collective failed because"
XLA_PEER_DIED = "This most likely indicates that another task died"


class Job:
  """The two processes of one run of ``fault_tolerance.train``."""

  def __init__(self, directory, options: dict | list[dict]):
    options = options if isinstance(options, list) else [options, options]
    self.dir = directory
    coordinator = f"127.0.0.1:{free_port()}"
    env = {**os.environ, **child_environment(1)}
    self.procs = []
    for rank, opts in enumerate(options):
      args = json.dumps([coordinator, rank, opts])
      command = [sys.executable, "-m", "children", "fault_tolerance", "train", args]
      command.append(self._path(rank, "pkl"))
      with open(self._path(rank, "out"), "w") as out, open(self._path(rank, "err"), "w") as err:
        self.procs.append(
          subprocess.Popen(
            command, cwd=TESTS, env=env, stdout=out, stderr=err, start_new_session=True
          )
        )

  def _path(self, rank, kind):
    return os.path.join(self.dir, f"{rank}.{kind}")

  def read(self, rank, kind) -> str:
    with open(self._path(rank, kind)) as f:
      return f.read()

  def report(self) -> str:
    lines = []
    for rank, proc in enumerate(self.procs):
      lines.append(f"--- process {rank}: exit code {proc.poll()}; stdout tail:")
      lines.append(self.read(rank, "out")[-1000:])
      lines.append("stderr tail:")
      lines.append(self.read(rank, "err")[-4000:])
    return "\n".join(lines)

  def wait_for_output(self, rank: int, text: str, timeout: float) -> None:
    """Waits until process ``rank`` printed ``text``; fails when a process exits first or
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while text not in self.read(rank, "out"):
      if any(proc.poll() is not None for proc in self.procs):
        pytest.fail(f"a process exited before process {rank} printed {text!r}\n{self.report()}")
      if time.monotonic() > deadline:
        pytest.fail(f"process {rank} did not print {text!r} in {timeout:.0f} s\n{self.report()}")
      time.sleep(0.05)

  def wait_exit(self, rank: int, timeout: float, since: str = "the fault") -> float:
    """Seconds until process ``rank`` exits; fails after ``timeout`` seconds."""
    start = time.monotonic()
    try:
      self.procs[rank].wait(timeout)
    except subprocess.TimeoutExpired:
      pytest.fail(f"process {rank} still runs {timeout:.0f} s after {since}\n{self.report()}")
    return time.monotonic() - start

  def results(self, timeout: float = STARTUP_TIMEOUT) -> list:
    """Both processes' return values, once both exited with status 0."""
    for rank in range(len(self.procs)):
      self.wait_exit(rank, timeout, "the results were awaited")
    if any(proc.returncode != 0 for proc in self.procs):
      pytest.fail(f"a process failed\n{self.report()}")
    out = []
    for rank in range(len(self.procs)):
      with open(self._path(rank, "pkl"), "rb") as f:
        out.append(pickle.load(f))
    return out

  def kill(self) -> None:
    for proc in self.procs:
      if proc.poll() is None:
        try:
          os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # exited meanwhile
          pass
        proc.wait()


def _fault_run(tmp_path, extra=({}, {})):
  """A run that never ends by itself, with the fault tests' timeouts; ``extra`` holds
  each process's further options."""
  base = {
    "steps": 10**6,
    "heartbeat_timeout": HEARTBEAT,
    "collective_timeout": COLLECTIVE,
    "shutdown_timeout": 10,
  }
  return Job(str(tmp_path), [{**base, **options} for options in extra])


@pytest.mark.multidevice
@pytest.mark.parametrize("victim", [1, 0], ids=["worker_killed", "coordinator_killed"])
def test_survivor_of_a_killed_process_exits_with_a_clear_error(tmp_path, victim):
  """Both processes train; once both finished step 10, one is killed with SIGKILL (process
  1, or process 0, which also hosts the job's coordination service). The other exits with
  status 1 within ``DETECTION_BOUND`` seconds (measured: under a second, the dead process's
  sockets close at once) and says which process it is and that another one died."""
  job = _fault_run(tmp_path)
  try:
    for rank in (0, 1):
      job.wait_for_output(rank, "step 10 done", STARTUP_TIMEOUT)
    os.killpg(job.procs[victim].pid, signal.SIGKILL)
    survivor = 1 - victim
    seconds = job.wait_exit(survivor, DETECTION_BOUND)
    print(f"survivor {survivor} exited {seconds:.2f} s after process {victim} was killed")
    stderr = job.read(survivor, "err")
    assert job.procs[survivor].returncode != 0, job.report()
    assert PEER_FAILURE.format(rank=survivor) in stderr or XLA_PEER_DIED in stderr, job.report()
  finally:
    job.kill()


@pytest.mark.multidevice
@pytest.mark.parametrize(
  "victim, sign",
  [(1, "stopped sending heartbeats"), (0, "CoordinationService/Heartbeat")],
  ids=["worker_frozen", "coordinator_frozen"],
)
def test_survivor_of_a_frozen_process_exits_within_the_heartbeat_timeout(tmp_path, victim, sign):
  """One process is frozen (SIGSTOP) mid-run: its sockets stay open, so only the missing
  heartbeats reveal it (process 1's to the coordination service in process 0, or process
  0's service no longer answering process 1's). The other exits non-zero within
  ``DETECTION_BOUND`` seconds (measured: about ``HEARTBEAT``) with XLA's message that
  another task died and why it was declared dead."""
  job = _fault_run(tmp_path)
  try:
    for rank in (0, 1):
      job.wait_for_output(rank, "step 10 done", STARTUP_TIMEOUT)
    os.kill(job.procs[victim].pid, signal.SIGSTOP)
    survivor = 1 - victim
    seconds = job.wait_exit(survivor, DETECTION_BOUND)
    print(f"survivor {survivor} exited {seconds:.2f} s after process {victim} was frozen")
    stderr = job.read(survivor, "err")
    assert job.procs[survivor].returncode != 0, job.report()
    assert XLA_PEER_DIED in stderr and sign in stderr, job.report()
  finally:
    job.kill()


@pytest.mark.multidevice
def test_process_stuck_outside_collectives_ends_with_the_collective_timeout(tmp_path):
  """Process 1 stalls in its own code at step 10 (alive, heartbeats continue, never joins
  the step's all-reduce). Process 0's collective fails after ``COLLECTIVE`` seconds (XLA's
  default would be 30 minutes) and it exits with status 1 and the ``PeerFailure``
  message."""
  job = _fault_run(tmp_path, ({}, {"stall_at": 10}))
  try:
    job.wait_for_output(1, "stalling at step 10", STARTUP_TIMEOUT)
    seconds = job.wait_exit(0, COLLECTIVE + DETECTION_BOUND)
    print(f"process 0 exited {seconds:.2f} s after process 1 stalled")
    assert job.procs[0].returncode == 1, job.report()
    assert PEER_FAILURE.format(rank=0) in job.read(0, "err"), job.report()
    assert seconds >= COLLECTIVE - 1, seconds  # the timeout, not another failure, ended it
  finally:
    job.kill()


@pytest.mark.multidevice
def test_checkpointed_and_resumed_run_equals_an_uninterrupted_run(tmp_path):
  """A two-process run saves an orbax checkpoint after step 7 of 15 and stops; two fresh
  processes restore it and finish. Params, centre and step count equal those of an
  uninterrupted 15-step run bit for bit."""
  steps, save_at = 15, 7
  checkpoint = str(tmp_path / "checkpoint")
  runs = {}
  for name, options in [
    ("uninterrupted", {"steps": steps}),
    ("first half", {"steps": steps, "save_at": save_at, "checkpoint": checkpoint}),
    ("resumed", {"steps": steps, "checkpoint": checkpoint, "resume": True}),
  ]:
    directory = tmp_path / name.replace(" ", "_")
    directory.mkdir()
    job = Job(str(directory), options)
    try:
      runs[name] = job.results()[0]
      runs[name + " log"] = job.read(0, "out")
    finally:
      job.kill()
  assert int(runs["first half"]["count"]) == save_at
  assert f"resumed at step {save_at}" in runs["resumed log"]
  assert int(runs["resumed"]["count"]) == steps
  assert tree_equal(runs["resumed"], runs["uninterrupted"])
  assert not tree_equal(runs["first half"]["params"], runs["uninterrupted"]["params"])
  assert np.all(np.isfinite(runs["uninterrupted"]["params"]))


def test_initialize_rejects_bad_arguments():
  """Arguments are checked before anything starts; once JAX runs in the process, valid
  arguments are refused with a clear RuntimeError instead of a late failure."""
  jax.devices()  # JAX running in this process
  with pytest.raises(ValueError, match="coordinator_address"):
    processes.initialize("localhost", 2, 0)
  with pytest.raises(ValueError, match="process_id"):
    processes.initialize("127.0.0.1:1234", 2, 2)
  with pytest.raises(ValueError, match="heartbeat_timeout"):
    processes.initialize("127.0.0.1:1234", 2, 0, heartbeat_timeout=0)
  with pytest.raises(RuntimeError, match="before any other JAX work"):
    processes.initialize("127.0.0.1:1234", 2, 0)


def test_check_peer_failure_recognises_collective_failures():
  error = RuntimeError("Gloo all-reduce failed: [pair.cc:547] Connection closed by peer")
  failure = processes.check_peer_failure(error)
  assert isinstance(failure, processes.PeerFailure)
  assert "another process of the jax.distributed job died" in str(failure)
  assert failure.__cause__ is error
  assert processes.check_peer_failure(ValueError("labels out of range")) is None
