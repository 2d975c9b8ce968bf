"""The workdir of one run: its checks, its metrics file and its checkpoints.

Layout of ``workdir``:

* ``metrics.json``: rewritten atomically (a temporary file, then ``os.replace``) after every
  evaluation of every method and seed; ``"complete": false`` until the last run has
  finished and the summary is written, then ``true``. Every record in ``runs`` carries its
  ``seed`` and ``finished``.
* ``checkpoints/<label>/seed<seed>/<calls>/``: the orbax checkpoint of ``{"params",
  "opt_state"}`` after ``calls`` training calls, and ``<calls>.json`` beside it with what
  the training loop needs to continue exactly (position in the data, the record so far,
  the training time, the state of host random generators). Only the latest checkpoint of
  a run is kept. Non-finite params or state are never written.

:func:`prepare` runs before any data is read: it makes sure the workdir is writable and
refuses one that holds another run's results unless ``config.overwrite`` (delete them) or
``config.resume`` (continue them; the stored config must equal this one up to the fields in
``IGNORED_ON_RESUME``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

import altmin_jax as amj
from experiments import reporting
from experiments.configs import common

METRICS = "metrics.json"
CHECKPOINTS = "checkpoints"
# Fields that may differ between an interrupted run and its resumption.
IGNORED_ON_RESUME = ("resume", "overwrite", "progress")


class WorkdirError(ValueError):
  """A workdir that cannot be used as asked (one line naming the directory and the way out)."""


def jsonable_config(config: ml_collections.ConfigDict) -> dict:
  """``config`` as ``metrics.json`` stores it (tuples become lists)."""
  return json.loads(json.dumps(reporting.clean_json(config.to_dict())))


def load_metrics(path: str) -> dict | None:
  """The ``metrics.json`` in ``path``, or ``None`` when there is none.

  Raises:
    WorkdirError: the file exists but is not valid JSON.
  """
  file = os.path.join(path, METRICS)
  if not os.path.exists(file):
    return None
  try:
    with open(file) as f:
      return json.load(f)
  except (OSError, ValueError) as err:
    raise WorkdirError(
      f"{file} cannot be read ({err}); pass --config.overwrite=True to replace it"
    ) from err


def _config_differences(stored: Mapping, current: Mapping, prefix: str = "") -> list[str]:
  keys = sorted(set(stored) | set(current))
  out = []
  for key in keys:
    if not prefix and key in IGNORED_ON_RESUME:
      continue
    a, b = stored.get(key, "<absent>"), current.get(key, "<absent>")
    if isinstance(a, Mapping) and isinstance(b, Mapping):
      out.extend(_config_differences(a, b, f"{prefix}{key}."))
    elif a != b:
      out.append(f"{prefix}{key} ({a!r} stored, {b!r} now)")
  return out


def prepare(path: str, config: ml_collections.ConfigDict) -> None:
  """Checks ``path`` before any training: creates it, checks that a file can be written in
  it, and applies the results policy (see the module docstring).

  Raises:
    WorkdirError: the directory cannot be created or written; it holds results and neither
      ``config.resume`` nor ``config.overwrite`` is set; ``config.resume`` with results of a
      different config.
  """
  if not path:
    raise WorkdirError("workdir is empty: pass --workdir=DIR")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as err:
    raise WorkdirError(f"workdir={path!r} cannot be created: {err.strerror or err}") from err
  try:
    with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-") as f:
      f.write(b"ok")
      f.flush()
  except OSError as err:
    raise WorkdirError(
      f"workdir={path!r} is not writable ({err.strerror or err}): choose another --workdir"
    ) from err
  existing = load_metrics(path)
  checkpoints = os.path.join(path, CHECKPOINTS)
  if existing is None and not os.path.isdir(checkpoints):
    return
  if config.get("overwrite", False):
    if existing is not None:
      os.remove(os.path.join(path, METRICS))
    shutil.rmtree(checkpoints, ignore_errors=True)
    print(f"workdir {path}: removed the earlier run's metrics.json and checkpoints (overwrite)")
    return
  if config.get("resume", False):
    if existing is None:
      raise WorkdirError(
        f"workdir={path!r} has checkpoints but no metrics.json to resume from; pass"
        " --config.overwrite=True to start afresh"
      )
    differences = _config_differences(existing.get("config", {}), jsonable_config(config))
    if differences:
      shown = "; ".join(differences[:3]) + ("; ..." if len(differences) > 3 else "")
      raise WorkdirError(
        f"cannot resume in workdir={path!r}: its run has another config ({shown}); resume"
        " with the same config and overrides, or pass --config.overwrite=True"
      )
    return
  state = "a complete" if existing and existing.get("complete") else "an incomplete"
  what = existing.get("experiment", "experiment") if existing else "experiment"
  raise WorkdirError(
    f"workdir={path!r} already holds the results of {state} {what} run; pass"
    " --config.resume=True to continue it, --config.overwrite=True to replace it, or choose"
    " another --workdir"
  )


def _safe(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.=-]", "_", str(name))


class Checkpoints:
  """The checkpoints of one method and seed (only the latest is kept).

  ``tree`` is any pytree of arrays (the runners store ``{"params", "opt_state"}``);
  ``meta`` is JSON-serializable and must hold ``"calls"`` (it names the checkpoint).
  """

  def __init__(self, directory: str):
    self.directory = directory

  def _saved(self) -> list[int]:
    if not os.path.isdir(self.directory):
      return []
    found = []
    for name in os.listdir(self.directory):
      if name.endswith(".json") and name[:-5].isdigit():
        if os.path.isdir(os.path.join(self.directory, name[:-5])):
          found.append(int(name[:-5]))
    return sorted(found)

  def latest(self, like: Any) -> tuple[Any, dict] | None:
    """``(tree, meta)`` of the latest checkpoint restored into the structure of ``like``,
    or ``None`` when there is none."""
    saved = self._saved()
    if not saved:
      return None
    name = f"{saved[-1]:010d}"
    with open(os.path.join(self.directory, name + ".json")) as f:
      meta = json.load(f)
    return amj.training.restore_checkpoint(os.path.join(self.directory, name), like), meta

  def save(self, tree: Any, meta: Mapping) -> bool:
    """Writes ``tree`` and ``meta`` and deletes older checkpoints; returns ``False`` (writing
    nothing) when ``tree`` holds NaN or inf, so a diverged run never replaces a good
    checkpoint."""
    if not bool(amj.training.all_finite(tree)):
      return False
    older = self._saved()
    name = f"{int(meta['calls']):010d}"
    target = os.path.join(self.directory, name)
    os.makedirs(self.directory, exist_ok=True)
    if os.path.exists(target):
      shutil.rmtree(target)
    amj.training.save_checkpoint(target, tree)
    reporting.save_json(self.directory, name + ".json", meta)  # after the arrays: marks it whole
    for calls in older:
      if calls != int(meta["calls"]):
        shutil.rmtree(os.path.join(self.directory, f"{calls:010d}"), ignore_errors=True)
        os.remove(os.path.join(self.directory, f"{calls:010d}.json"))
    return True


@dataclasses.dataclass
class RunHooks:
  """What the training loop of one method and seed reports to: its checkpoints (``None``:
  none are written) and ``publish(record)``, called after every evaluation."""

  checkpoints: Checkpoints | None = None
  publish: Callable[[dict], None] = lambda record: None


class RunLog:
  """The records of every method and seed of a run, written to ``metrics.json`` after every
  evaluation; with ``config.resume``, the finished records of the interrupted run.

  Args:
    path: the workdir (already checked by :func:`prepare`).
    config: the run's config (stored in ``metrics.json``).
    header: fields written first (``experiment``, ``dataset``, ...).
  """

  def __init__(self, path: str, config: ml_collections.ConfigDict, header: Mapping):
    self.path = path
    self.header = dict(header)
    self.config = config
    self.seeds = common.check_seeds(config)
    self.runs: dict[str, dict[int, dict]] = {}
    self._finished: dict[tuple[str, int], dict] = {}
    previous = load_metrics(path) if config.get("resume", False) else None
    for label, records in (previous or {}).get("runs", {}).items():
      for record in records:
        if record.get("finished"):
          self._finished[(label, int(record["seed"]))] = record
          self.runs.setdefault(label, {})[int(record["seed"])] = record

  def finished(self, label: str, seed: int) -> dict | None:
    """The finished record of ``label`` and ``seed`` from the resumed run, if any."""
    return self._finished.get((label, seed))

  def hooks(self, label: str, seed: int) -> RunHooks:
    directory = os.path.join(self.path, CHECKPOINTS, _safe(label), f"seed{seed}")
    return RunHooks(Checkpoints(directory), lambda record: self.publish(label, seed, record))

  def publish(self, label: str, seed: int, record: Mapping, *, finished: bool = False) -> None:
    """Stores the record of ``label`` and ``seed`` and rewrites ``metrics.json``."""
    self.runs.setdefault(label, {})[seed] = {
      **record,
      "seed": seed,
      "finished": finished,
    }
    self.write(complete=False)

  def records(self) -> dict[str, list[dict]]:
    """Per label, the records in the order of ``config.seeds``."""
    seeds = self.seeds
    return {label: [runs[s] for s in seeds if s in runs] for label, runs in self.runs.items()}

  def payload(self, extra: Mapping | None = None, *, complete: bool) -> dict:
    """The contents of ``metrics.json``: the header, ``complete``, ``seeds``, ``extra`` (the
    summary and curves at the end), ``runs`` and ``config``."""
    return {
      **self.header,
      "complete": complete,
      "seeds": self.seeds,
      **(extra or {}),
      "runs": self.records(),
      "config": self.config.to_dict(),
    }

  def write(self, extra: Mapping | None = None, *, complete: bool) -> str:
    """Writes :meth:`payload` to ``metrics.json`` atomically."""
    return reporting.save_json(self.path, METRICS, self.payload(extra, complete=complete))

  def run_all(self, labels, train: Callable[[str, int, RunHooks], dict]) -> dict[str, list[dict]]:
    """Every label and seed: the resumed run's finished record, or
    ``train(label, seed, hooks)``; returns :meth:`records`."""
    for label in labels:
      for seed in self.seeds:
        if self.finished(label, seed) is None:
          self.publish(label, seed, train(label, seed, self.hooks(label, seed)), finished=True)
    return self.records()
