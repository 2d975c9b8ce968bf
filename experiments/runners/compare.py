"""One network, many methods: hyperparameters selected on the validation split, then test
accuracy, training loss and wall time to a stated accuracy (issue 15, requirement 6).

Trains the same fully connected net (``config.hidden``, ``config.activation``) with methods
of several families, each through its own runner's training function:
:mod:`experiments.runners.families` registers them (today ``am_fc``, ``sm`` and
``distributed``) and says what each trains and reads; this runner has no code per family.

Every method gets the same budget of ``config.epochs`` passes over the training images
(an iteration of a minibatch method sees ``batch`` images, a distributed round
``num_workers * worker_batch_size``) and is evaluated about every ``config.eval_samples``
training images (offline AM methods: after every iteration); the recorded training time
excludes compilation and evaluation.

Config fields (besides the data fields of :func:`experiments.runners._training.load_dataset`
and ``seeds``, ``progress``, ``num_train_eval``, ``resume``, ``overwrite``):

* ``method_list``: labels, each a key of ``methods``;
* ``methods``: label -> ``family`` (a registered family), ``method`` (a name of that family)
  and the method's hyperparameters as its family's runner reads them (see
  :mod:`experiments.runners.families`);
* ``grid``: label -> field -> candidate values (the product of a method's fields is tried);
* ``select``: stage 1, every grid point of every method in ``grid`` is trained with the
  first seed and evaluated on the validation split (``data.validation``); the point with the
  highest validation accuracy at the end of the budget wins (ties: the first in grid order;
  a diverged run scores below every finished one);
* ``final``: stage 2, every method of ``method_list`` with its selected (or, unselected,
  configured) hyperparameters is trained with every seed and evaluated on the test split;
* ``target_accuracy``: the accuracy whose first crossing time is reported.

Writes to the workdir: ``metrics.json`` after every evaluation (selection runs are labelled
``select/<label>/<field>=<value>``), at the end ``table.md`` (the machine, its load, the
budget, the selection table and the final table), ``accuracy_vs_time.png`` (held-out
accuracy against training wall time, one line per method) and prints the final table.
Each run's record holds ``os.getloadavg()`` before and after it (``loadavg``) and its wall
time including compilation and evaluation (``wall_s``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import platform
import time
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np

from experiments import models, reporting, workdir
from experiments.configs import common
from experiments.runners import _training, families

TABLE = "table.md"
PLOT = "accuracy_vs_time.png"


# ---------------------------------------------------------------------- checks


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the config's fields before any data is read (``common.ConfigError``)."""
  common.check_run_fields(config)
  common.check_int(config, "epochs", minimum=1)
  for key in ("num_train", "num_validation", "sm_batch_size"):
    common.check_int(config, key, minimum=0)
  for key in ("batch_size", "worker_batch_size", "eval_samples"):
    common.check_int(config, key, minimum=1)
  common.check_int_list(config, "hidden", minimum=1)
  common.check_choice(config, "activation", models.ACTIVATIONS)
  common.check_choice(config, "delay", ("round_robin", "random"))
  common.check_bool(config, "select")
  common.check_bool(config, "final")
  common.check_number(config, "target_accuracy", positive=True)
  labels = common.check_names(config, "method_list", list(config.methods))
  common.check_hyperparameters(config, "methods")
  for label in labels:
    name = common.check_choice(config, f"methods.{label}.family", families.REGISTRY)
    family = families.get(name)
    common.check_choice(config, f"methods.{label}.method", family.methods)
    family.check(config, label)
  for label, fields in config.grid.items():
    if label not in config.methods:
      raise common.ConfigError(
        f"config.grid.{label}: no method {label!r} in config.methods ({sorted(config.methods)})"
      )
    for field, values in fields.items():
      if field not in config.methods[label]:
        raise common.ConfigError(
          f"config.grid.{label}.{field}: config.methods.{label} has no field {field!r}"
        )
      ok = isinstance(values, (tuple, list)) and values
      ok = ok and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
      )
      if not ok:
        raise common.ConfigError(
          f"config.grid.{label}.{field} must be a non-empty list of finite numbers, got {values!r}"
        )


# ---------------------------------------------------------------------- grid


def grid_points(config, label: str) -> list[dict]:
  """The hyperparameter settings tried for ``label`` (the product of its grid's fields, in
  order); ``[]`` when it has no grid."""
  fields = config.grid.get(label)
  if not fields:
    return []
  keys = list(fields)
  return [dict(zip(keys, values)) for values in itertools.product(*(fields[k] for k in keys))]


def point_name(point: Mapping) -> str:
  return ",".join(f"{k}={v:g}" for k, v in point.items())


def selection_label(label: str, point: Mapping) -> str:
  return f"select/{label}/{point_name(point)}"


def with_point(entry: ml_collections.ConfigDict, point: Mapping) -> ml_collections.ConfigDict:
  """``entry`` with the grid ``point``'s values (an integer field keeps integer values)."""
  fields = entry.to_dict()
  for key, value in point.items():
    whole = isinstance(fields[key], int) and float(value).is_integer()
    fields[key] = int(value) if whole else float(value)
  return ml_collections.ConfigDict(fields)


def score(record: Mapping) -> float:
  """The held-out accuracy at the end of the budget; ``-inf`` for a diverged run."""
  if "diverged_at_step" in record or not record.get("accuracy"):
    return -math.inf
  value = record["accuracy"][-1]
  return float(value) if value is not None and math.isfinite(value) else -math.inf


# ------------------------------------------------------------------- training


def train_one(config, data, entry, seed: int, hooks: workdir.RunHooks) -> dict:
  """One method (``entry``), one seed on ``data`` (whose ``test`` is the held-out split of
  this stage), through its family's ``train_one``; that record plus ``loadavg`` and
  ``wall_s``."""
  family = families.get(entry.family)
  load_before, start = os.getloadavg(), time.perf_counter()
  record = family.train_one(config, data, entry, seed, hooks)
  record["wall_s"] = time.perf_counter() - start
  record["loadavg"] = {"before": list(load_before), "after": list(os.getloadavg())}
  return record


def time_to(record: Mapping, target: float) -> float | None:
  """Training time at the first evaluation with held-out accuracy >= ``target``."""
  for t, acc in zip(record["time"], record["accuracy"]):
    if acc is not None and acc >= target:
      return float(t)
  return None


# -------------------------------------------------------------------- reports


def machine() -> dict:
  return {
    "node": platform.node(),
    "processor": platform.processor() or platform.machine(),
    "cpu_count": os.cpu_count(),
    "jax_backend": jax.default_backend(),
    "jax_devices": [str(d) for d in jax.devices()],
    "jax_version": jax.__version__,
  }


def hyperparameter_text(entry, point: Mapping | None) -> str:
  return point_name(point) if point else "as configured"


def summary_rows(config, runs: Mapping, labels, chosen: Mapping) -> list[dict]:
  target = config.target_accuracy
  to_target = f"time to {100 * target:g}% (s)"
  rows = []
  for label in labels:
    records = runs[label]
    row = _training.final_row(records)
    times = [time_to(r, target) for r in records]
    reached = all(t is not None for t in times)
    load = [np.mean([r["loadavg"]["before"][0], r["loadavg"]["after"][0]]) for r in records]
    rows.append(
      {
        "method": label,
        "family": config.methods[label].family,
        "hyperparameters": hyperparameter_text(config.methods[label], chosen.get(label)),
        "test accuracy": row["accuracy"],
        "spread": row["spread"],
        "train loss": row.get("train loss"),
        "train accuracy": row.get("train accuracy"),
        to_target: float(np.mean(times)) if reached else None,
        "reached": f"{sum(t is not None for t in times)}/{len(times)}",
        "train time (s)": row["train time (s)"],
        "wall (s)": float(np.mean([r["wall_s"] for r in records])),
        "load": float(np.mean(load)),
        "diverged seeds": row["diverged seeds"],
      }
    )
  return rows


def plot_accuracy_vs_time(path: str, runs: Mapping, labels, config, *, ylabel: str) -> str:
  """Held-out accuracy (mean over seeds) against training wall time (mean over seeds), one
  line per method, log time axis; line style by family; the target accuracy dashed."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  cmap = plt.get_cmap("tab20")
  fig, ax = plt.subplots(figsize=(9, 5.5))
  top = 0.0
  for i, label in enumerate(labels):
    records = runs[label]
    acc = reporting.summarize_curves({label: [r["accuracy"] for r in records]})[label]["mean"]
    t = reporting.summarize_curves({label: [r["time"] for r in records]})[label]["mean"]
    acc, t = np.asarray(acc, np.float64)[1:], np.asarray(t, np.float64)[1:]
    keep = np.isfinite(acc) & np.isfinite(t) & (t > 0)
    if keep.any():
      top = max(top, float(acc[keep].max()))
    ax.plot(
      t[keep],
      acc[keep],
      label=label,
      color=cmap(i % 20),
      linestyle=families.get(config.methods[label].family).line_style,
      linewidth=1.5,
      marker=".",
      markersize=3,
    )
  target = config.target_accuracy
  ax.axhline(target, color="gray", linewidth=0.8, linestyle="--")
  ax.set_xscale("log")
  ax.set_ylim(max(0.0, min(target, top) - 0.15), max(top, target) + 0.01)
  ax.set_xlabel("training wall time (s, compilation and evaluation excluded)")
  ax.set_ylabel(ylabel)
  hidden = "-".join(map(str, config.hidden))
  ax.set_title(f"{config.dataset}, {hidden} hidden, {config.epochs} epochs per method")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=7, ncol=2, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def markdown_report(config, header: Mapping, selection: list[dict], summary: list[dict]) -> str:
  target = f"time to {100 * config.target_accuracy:g}% (s)"
  batches = ", ".join(
    f"{family.batch_text(config)} ({family.name} family)" for family in families.REGISTRY.values()
  )
  parts = [
    f"# {header['dataset']}: one {'-'.join(map(str, config.hidden))} net, every method",
    "",
    f"Data: {header['num_train']} training, {header['num_validation']} validation (selection),"
    f" {header['num_test']} test images ({header['source']}).",
    f"Budget: {config.epochs} passes over the training images per method; minibatches of"
    f" {batches}; evaluation about every {config.eval_samples} training images. Seeds:"
    f" selection {header['seeds'][0]},"
    f" final {', '.join(map(str, header['seeds']))}.",
    f"Machine: {header['machine']['cpu_count']} CPUs, JAX {header['machine']['jax_backend']};"
    f" load average (1, 5, 15 min) at the start of this process:"
    f" {', '.join(f'{v:.2f}' for v in header['loadavg_at_start'])}. 'load' below: mean of the"
    " 1-min load average before and after the run. 'train time': timed steps only; 'wall':"
    " including compilation and evaluation.",
  ]
  if selection:
    parts += [
      "",
      "## Selection (validation accuracy at the end of the budget, first seed)",
      "",
      reporting.markdown_table(
        [
          {**r, "validation accuracy": "diverged"} if r["validation accuracy"] is None else r
          for r in selection
        ],
        ["method", "hyperparameters", "validation accuracy", "chosen", "wall (s)"],
      ),
    ]
  if summary and "test accuracy" in summary[0]:
    parts += [
      "",
      "## Final (test split)",
      "",
      reporting.markdown_table(
        [{**r, target: "not reached" if r[target] is None else r[target]} for r in summary],
        [
          "method",
          "family",
          "hyperparameters",
          "test accuracy",
          "spread",
          "train loss",
          target,
          "reached",
          "train time (s)",
          "wall (s)",
          "load",
        ],
      ),
      "",
      f"Plot: `{PLOT}`.",
    ]
  return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------ run


def _one_seed(log: workdir.RunLog, label: str, seed: int, train) -> dict:
  if log.finished(label, seed) is None:
    log.publish(label, seed, train(log.hooks(label, seed)), finished=True)
  return log.runs[label][seed]


def run(config: ml_collections.ConfigDict, workdir_path: str) -> dict:
  """Selection, then the final runs (each as configured); writes the reports and returns
  the metrics."""
  validate(config)
  labels = common.names(config, "method_list")
  data = _training.load_dataset(config)
  if config.select and data.validation is None:
    raise common.ConfigError(
      "config.select=True needs a validation split: set --config.num_validation (the full"
      " datasets hold out the end of the training set by default)"
    )
  seeds = common.check_seeds(config)
  header = {
    "experiment": "compare",
    "dataset": config.dataset,
    "source": data.source,
    "hidden": list(config.hidden),
    "num_train": len(data.train[0]),
    "num_validation": 0 if data.validation is None else len(data.validation[0]),
    "num_test": len(data.test[0]),
    "machine": machine(),
    "loadavg_at_start": list(os.getloadavg()),
  }
  log = workdir.RunLog(workdir_path, config, header)
  on_validation = (
    dataclasses.replace(data, test=data.validation) if data.validation is not None else None
  )
  chosen, selection = {}, []
  if config.select:
    for label in labels:
      points = grid_points(config, label)
      scored = []
      for point in points:
        entry = with_point(config.methods[label], point)
        record = _one_seed(
          log,
          selection_label(label, point),
          seeds[0],
          lambda hooks, entry=entry: train_one(config, on_validation, entry, seeds[0], hooks),
        )
        scored.append((score(record), point, record))
      if not scored:
        continue
      best = max(range(len(scored)), key=lambda i: (scored[i][0], -i))
      chosen[label] = scored[best][1]
      for i, (value, point, record) in enumerate(scored):
        selection.append(
          {
            "method": label,
            "hyperparameters": point_name(point),
            "validation accuracy": value if math.isfinite(value) else None,
            "chosen": "yes" if i == best else "",
            "wall (s)": record.get("wall_s"),
          }
        )
  summary, curves = [], {}
  if config.final:
    for label in labels:
      entry = with_point(config.methods[label], chosen.get(label, {}))
      for seed in seeds:
        _one_seed(
          log,
          label,
          seed,
          lambda hooks, entry=entry, seed=seed: train_one(config, data, entry, seed, hooks),
        )
    runs = {label: [log.runs[label][s] for s in seeds] for label in labels}
    summary = summary_rows(config, runs, labels, chosen)
    plot_accuracy_vs_time(
      os.path.join(workdir_path, PLOT), runs, labels, config, ylabel="test accuracy"
    )
    curves = _training.curves_of(runs, list)
  else:
    summary = [r for r in selection if r["chosen"]]
    runs = {
      label: [log.runs[selection_label(label, chosen[label])][seeds[0]]]
      for label in labels
      if label in chosen
    }
    if runs:
      plot_accuracy_vs_time(
        os.path.join(workdir_path, PLOT), runs, list(runs), config, ylabel="validation accuracy"
      )
  report = markdown_report(config, {**header, "seeds": seeds}, selection, summary)
  with open(os.path.join(workdir_path, TABLE), "w") as f:
    f.write(report)
  extra = {
    "summary": summary,
    "selection": selection,
    "selected": chosen,
    "target_accuracy": config.target_accuracy,
    "loadavg_at_end": list(os.getloadavg()),
    "total_wall_s": float(sum(r.get("wall_s", 0.0) for s in log.runs.values() for r in s.values())),
    **curves,
  }
  metrics = log.payload(extra, complete=True)
  reporting.save_json(workdir_path, workdir.METRICS, metrics)
  print(report)
  print(f"metrics: {workdir_path}/metrics.json  table: {workdir_path}/{TABLE}  plot: {PLOT}")
  return metrics
