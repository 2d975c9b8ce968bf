"""Shared by the benchmark scripts: interleaved step timing and the JSON report."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import jax


def parse_args(description: str, quick_help: str = "fewer repeats (under 60 s)"):
  """``--quick`` and ``--out PATH``, the options every benchmark takes."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--quick", action="store_true", help=quick_help)
  parser.add_argument("--out", default=None, help="also write the JSON report to this file")
  return parser.parse_args()


def time_steps(
  steps: dict[str, tuple[Callable[[], None], Callable]], repeats: int, inner: int, warmup: int = 2
) -> dict[str, float]:
  """Median seconds per step of every method, measured in the same run.

  ``steps`` maps a name to ``(run_once, jitted_step)``: ``run_once()`` takes one step and
  blocks until it is done. After ``warmup`` steps each (compilation), the methods take
  turns, ``inner`` consecutive steps at a time, ``repeats`` times, so that machine noise
  hits all of them alike. Asserts that no jitted step recompiled.
  """
  for run_once, _ in steps.values():
    for _ in range(warmup):
      run_once()
  samples = {name: [] for name in steps}
  for _ in range(repeats):
    for name, (run_once, _) in steps.items():
      start = time.perf_counter()
      for _ in range(inner):
        run_once()
      samples[name].append((time.perf_counter() - start) / inner)
  for name, (_, step) in steps.items():
    assert step._cache_size() == 1, f"{name} recompiled"
  return {name: statistics.median(v) for name, v in samples.items()}


def environment() -> dict:
  """Where the numbers were measured."""
  return {
    "device": jax.devices()[0].device_kind,
    "platform": platform.platform(),
    "jax": jax.__version__,
  }


def finish(report: dict, out: str | None) -> dict:
  """Writes the report to ``out`` (if given) and prints it as the last stdout line."""
  if out:
    with open(out, "w") as f:
      json.dump(report, f, indent=2)
  print(json.dumps(report))
  return report
