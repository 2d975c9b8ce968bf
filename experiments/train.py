"""Importable entry point of the experiment binary: ``train_and_evaluate(config, workdir)``.

``config.experiment`` names a runner module ``experiments/runners/<experiment>.py``
whose ``run(config, workdir) -> dict`` does the work; notebooks call this function
directly. Before anything is trained, the runner's ``validate(config)`` checks every field
(one-line ``ConfigError``) and :func:`experiments.workdir.prepare` checks the workdir
(writable; results of another run refused unless ``config.resume`` or ``config.overwrite``).
"""

from __future__ import annotations

import importlib
import pathlib

import ml_collections

from experiments import workdir as workdir_lib
from experiments.configs import common

RUNNERS_DIR = pathlib.Path(__file__).parent / "runners"


def available_experiments() -> list[str]:
  """Names accepted by ``config.experiment``."""
  return sorted(p.stem for p in RUNNERS_DIR.glob("*.py") if not p.stem.startswith("_"))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs ``config`` and returns its metrics (also written to ``workdir``).

  Raises:
    ConfigError: an unknown ``config.experiment`` or a field that breaks its rule.
    WorkdirError: ``workdir`` is not usable as the config asks (see
      :func:`experiments.workdir.prepare`).
  """
  name = config.get("experiment")
  known = available_experiments()
  if name not in known:
    raise common.ConfigError(f"unknown experiment {name!r}; known experiments: {', '.join(known)}")
  runner = importlib.import_module(f"experiments.runners.{name}")
  if hasattr(runner, "validate"):
    runner.validate(config)
  else:
    common.check_run_fields(config)
  workdir_lib.prepare(workdir, config)
  return runner.run(config, workdir)
