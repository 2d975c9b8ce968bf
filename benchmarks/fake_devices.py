"""Fake CPU devices for the pipeline benchmarks; import and call before JAX starts.

``configure()`` reads ``--stages S`` from the command line (default 4) and sets
``XLA_FLAGS=--xla_force_host_platform_device_count=S`` unless a device count is already
set (on a GPU machine this only affects the CPU), and ``PJRT_NPROC`` to 4 XLA:CPU pool
threads per fake device (a smaller pool can deadlock in collectives; BUILD.md,
"Multi-device and multi-process runs on one CPU"). Imports nothing from JAX.
"""

from __future__ import annotations

import os
import sys


def stages_from_argv(default: int = 4) -> int:
  """``S`` of ``--stages S`` / ``--stages=S`` on the command line, else ``default``."""
  for i, arg in enumerate(sys.argv):
    if arg == "--stages" and i + 1 < len(sys.argv):
      return int(sys.argv[i + 1])
    if arg.startswith("--stages="):
      return int(arg.split("=", 1)[1])
  return default


def configure(default: int = 4) -> int:
  """Sets the environment for ``S`` fake CPU devices and returns ``S``."""
  stages = stages_from_argv(default)
  if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={stages}"
    ).strip()
  os.environ.setdefault("PJRT_NPROC", str(max(os.cpu_count() or 1, 4 * stages)))
  return stages
