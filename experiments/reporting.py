"""Metrics files, plots, tables and progress bars shared by the experiment runners."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def progress(iterable: Iterable, *, desc: str, total: int | None = None, enabled: bool = True):
  """A tqdm progress bar on stderr (plain iteration when disabled)."""
  if not enabled:
    return iterable
  from tqdm.auto import tqdm

  return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
  """Mean and standard deviation over seeds (0 spread for one seed)."""
  arr = np.asarray(values, np.float64)
  return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def summarize_curves(runs: Mapping[str, Sequence[Sequence[float]]]) -> dict[str, dict]:
  """Per method, the mean and spread over seeds of equally long curves."""
  out = {}
  for method, curves in runs.items():
    arr = np.asarray(curves, np.float64)
    out[method] = {
      "mean": arr.mean(axis=0).tolist(),
      "std": (arr.std(axis=0, ddof=1) if len(arr) > 1 else np.zeros(arr.shape[1])).tolist(),
    }
  return out


def save_json(workdir: str, name: str, payload: Mapping) -> str:
  """Writes ``payload`` to ``workdir/name`` (non-finite floats become null)."""

  def clean(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
      return None
    if isinstance(obj, Mapping):
      return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
      return [clean(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
      return clean(obj.item())
    return obj

  path = os.path.join(workdir, name)
  with open(path, "w") as f:
    json.dump(clean(dict(payload)), f, indent=2)
  return path


def plot_curves(
  path: str,
  curves: Mapping[str, Mapping[str, Sequence]],
  *,
  xlabel: str,
  ylabel: str,
  title: str,
  logy: bool = False,
) -> str:
  """Mean curve per method (``{"x", "mean", "std"}``) with a band of one standard deviation
  over seeds."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  for method, c in curves.items():
    mean, std = np.asarray(c["mean"]), np.asarray(c["std"])
    x = np.asarray(c.get("x", np.arange(len(mean))))
    ax.plot(x, mean, label=method, linewidth=1.6)
    ax.fill_between(x, mean - std, mean + std, alpha=0.2)
  if logy:
    ax.set_yscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def format_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
  """A plain-text table with one row per mapping."""

  def fmt(v):
    if isinstance(v, float):
      return f"{v:.4f}"
    return str(v)

  cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
  line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
  sep = "  ".join("-" * w for w in widths)
  body = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
  return "\n".join([line, sep, *body])


def write_report(
  workdir: str,
  metrics: dict,
  columns: Sequence[str],
  *,
  xlabel: str,
  ylabel: str,
  title: str,
) -> dict:
  """Writes ``workdir/metrics.json`` and a plot of ``metrics["curves"]`` to
  ``workdir/accuracy.png``, prints the table of ``metrics["summary"]`` with ``columns``
  and where both files went, and returns ``metrics``."""
  save_json(workdir, "metrics.json", metrics)
  plot_curves(
    os.path.join(workdir, "accuracy.png"),
    metrics["curves"],
    xlabel=xlabel,
    ylabel=ylabel,
    title=title,
  )
  print(format_table(metrics["summary"], columns))
  print(f"metrics: {workdir}/metrics.json  plot: {workdir}/accuracy.png")
  return metrics
