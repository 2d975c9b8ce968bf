"""The launcher of the multi-device and multi-process child programs
(``helpers.start_child``, ``children/``): each child sees the CPU devices and processes it
asked for, with an XLA:CPU thread pool large enough for its collectives (BUILD.md), and a
failing or hanging child fails the test with its stderr instead of hanging it."""

from __future__ import annotations

import time

import pytest
from helpers import THREADS_PER_DEVICE, child_environment, run_child


def test_child_environment_sets_devices_platform_and_thread_pool(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3 --xla_dump_to=/x")
  env = child_environment(8)
  assert env["XLA_FLAGS"].split() == [
    "--xla_dump_to=/x",
    "--xla_force_host_platform_device_count=8",
  ]
  assert env["JAX_PLATFORMS"] == "cpu"
  assert int(env["PJRT_NPROC"]) >= THREADS_PER_DEVICE * 8


@pytest.mark.multidevice
def test_child_gets_its_devices_and_a_thread_pool_per_device():
  """Eight CPU devices in one process, a psum over them, and at least
  ``THREADS_PER_DEVICE`` intra-op pool threads per device (XLA alone gives max(cores, 8))."""
  got = run_child("probe.environment", devices=8, timeout=300)[0]
  assert got["platform"] == "cpu" and got["devices"] == got["local_devices"] == 8
  assert got["psum"] == 8.0
  assert got["intra_op_threads"] >= THREADS_PER_DEVICE * 8, got


@pytest.mark.multidevice
def test_two_processes_join_one_job():
  got = run_child("probe.environment", devices=2, processes=2, timeout=300)
  assert [g["process_index"] for g in got] == [0, 1]
  for g in got:
    assert g["devices"] == 4 and g["local_devices"] == 2 and g["psum"] == 4.0, g
    assert g["intra_op_threads"] >= THREADS_PER_DEVICE * 2, g


@pytest.mark.multidevice
def test_failing_child_fails_fast_with_its_stderr():
  """Process 1 raises while process 0 would sleep for 5 minutes: the test fails at once,
  showing the exception."""
  start = time.monotonic()
  with pytest.raises(AssertionError, match=r"(?s)failed.*RuntimeError: boom in 1"):
    run_child("probe.fail", "boom in 1", 1, 300.0, devices=1, processes=2, timeout=300)
  assert time.monotonic() - start < 120


def test_hanging_child_is_killed_and_reported():
  """One process, one device (the default run's check of the launcher): a child past its
  timeout is killed and reported, without waiting for it."""
  start = time.monotonic()
  with pytest.raises(AssertionError, match="ran past its timeout of 2 s"):
    run_child("probe.sleep", 300.0, timeout=2)
  assert time.monotonic() - start < 120
