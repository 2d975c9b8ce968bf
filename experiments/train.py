"""Importable entry point of the experiment binary: ``train_and_evaluate(config, workdir)``.

``config.experiment`` names a runner module ``experiments/runners/<experiment>.py``
whose ``run(config, workdir) -> dict`` does the work; notebooks call this function
directly.
"""

from __future__ import annotations

import importlib
import os
import pathlib

import ml_collections

RUNNERS_DIR = pathlib.Path(__file__).parent / "runners"


def available_experiments() -> list[str]:
  """Names accepted by ``config.experiment``."""
  return sorted(p.stem for p in RUNNERS_DIR.glob("*.py") if not p.stem.startswith("_"))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs ``config`` and returns its metrics (also written to ``workdir``)."""
  name = config.get("experiment")
  known = available_experiments()
  if name not in known:
    raise ValueError(f"unknown experiment {name!r}; known experiments: {', '.join(known)}")
  os.makedirs(workdir, exist_ok=True)
  runner = importlib.import_module(f"experiments.runners.{name}")
  return runner.run(config, workdir)
