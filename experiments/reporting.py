"""Metrics files, plots, tables and progress bars shared by the experiment runners."""

from __future__ import annotations

import json
import math
import os
import tempfile
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
  """Per method, the mean and spread over seeds of its curves; a curve shorter than the
  longest (a run stopped by divergence) is padded with NaN, which marks its missing points."""
  out = {}
  for method, curves in runs.items():
    length = max(len(c) for c in curves)
    arr = np.full((len(curves), length), np.nan)
    for i, c in enumerate(curves):
      arr[i, : len(c)] = np.asarray(c, np.float64)
    out[method] = {
      "mean": arr.mean(axis=0).tolist(),
      "std": (arr.std(axis=0, ddof=1) if len(arr) > 1 else np.zeros(length)).tolist(),
    }
  return out


def clean_json(obj):
  """``obj`` with NumPy scalars as Python numbers and non-finite floats as ``None``."""
  if isinstance(obj, (np.floating, np.integer, np.bool_)):
    obj = obj.item()
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  if isinstance(obj, Mapping):
    return {str(k): clean_json(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [clean_json(v) for v in obj]
  return obj


def save_json(workdir: str, name: str, payload: Mapping) -> str:
  """Writes ``payload`` to ``workdir/name`` atomically (a temporary file in ``workdir``, then
  ``os.replace``: a reader or a crash never sees half a file); non-finite floats become
  null."""
  path = os.path.join(workdir, name)
  fd, tmp = tempfile.mkstemp(dir=workdir, prefix=f".{name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(clean_json(dict(payload)), f, indent=2)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def trained_range(curves: Mapping[str, Mapping[str, Sequence]]) -> tuple[float, float] | None:
  """The y range of the curves' mean +- spread without their first point (the untrained
  model), with a 5% margin; ``None`` when nothing finite is left."""
  values = []
  for c in curves.values():
    mean, std = np.asarray(c["mean"], np.float64)[1:], np.asarray(c["std"], np.float64)[1:]
    values.extend([mean - std, mean + std])
  values = np.concatenate(values) if values else np.zeros(0)
  values = values[np.isfinite(values)]
  if not values.size:
    return None
  low, high = float(values.min()), float(values.max())
  margin = 0.05 * (high - low) or 0.05 * max(abs(high), 1e-3)
  return low - margin, high + margin


def plot_curves(
  path: str,
  curves: Mapping[str, Mapping[str, Sequence]],
  *,
  xlabel: str,
  ylabel: str,
  title: str,
  logy: bool = False,
  dashed: Mapping[str, Mapping[str, Sequence]] | None = None,
  panels: Sequence[tuple[str, Mapping, Mapping | None]] = (),
) -> str:
  """Mean curve per method (``{"x", "mean", "std"}``) with a band of one standard deviation
  over seeds; ``dashed``: a second set of curves per method drawn dashed in the same colour
  (training metrics beside held-out ones). ``panels``: further ``(ylabel, curves, dashed)``
  panels to the right. The y axis of every linear panel spans the trained range (the first
  point, the untrained model, may leave the plot): see :func:`trained_range`."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  all_panels = [(ylabel, curves, dashed), *panels]
  fig, axes = plt.subplots(1, len(all_panels), figsize=(6 * len(all_panels), 4), squeeze=False)
  for ax, (label, solid, dash) in zip(axes[0], all_panels):
    for i, (method, c) in enumerate(solid.items()):
      mean, std = np.asarray(c["mean"]), np.asarray(c["std"])
      x = np.asarray(c.get("x", np.arange(len(mean))))
      ax.plot(x, mean, label=method, linewidth=1.6, color=f"C{i}")
      ax.fill_between(x, mean - std, mean + std, alpha=0.2, color=f"C{i}")
      if dash and method in dash:
        d = dash[method]
        ax.plot(x, np.asarray(d["mean"]), linestyle="--", linewidth=1.2, color=f"C{i}")
    if logy:
      ax.set_yscale("log")
    else:
      limits = trained_range({**solid, **{f"{k} (dashed)": v for k, v in (dash or {}).items()}})
      if limits is not None:
        ax.set_ylim(*limits)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(label + (" (dashed: training)" if dash else ""))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def epoch_line(desc: str, position: str, metrics: Mapping[str, float], elapsed: float) -> str:
  """One line of progress (printed per epoch when progress bars are off)."""

  def pair(prefix):
    acc, loss = metrics.get(f"{prefix}accuracy"), metrics.get(f"{prefix}loss")
    parts = []
    if acc is not None:
      parts.append(f"accuracy {acc:.4f}")
    if loss is not None:
      parts.append(f"loss {loss:.4f}")
    return " ".join(parts)

  train, held_out = pair("train_"), pair("")
  text = f"{desc} {position}:"
  if train:
    text += f" train {train} |"
  return f"{text} held-out {held_out} | {elapsed:.1f} s training"


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
  """Writes ``workdir/metrics.json`` (atomically) and ``workdir/accuracy.png``, prints the
  table of ``metrics["summary"]`` with ``columns`` and where both files went, and returns
  ``metrics``.

  The plot shows ``metrics["curves"]`` (held-out accuracy) with ``metrics["train_curves"]``
  dashed when present, and a second panel of ``metrics["loss_curves"]`` (held-out loss) with
  ``metrics["train_loss_curves"]`` dashed when present.
  """
  save_json(workdir, "metrics.json", metrics)
  panels = []
  if metrics.get("loss_curves"):
    panels.append(("loss", metrics["loss_curves"], metrics.get("train_loss_curves")))
  plot_curves(
    os.path.join(workdir, "accuracy.png"),
    metrics["curves"],
    xlabel=xlabel,
    ylabel=ylabel,
    title=title,
    dashed=metrics.get("train_curves"),
    panels=panels,
  )
  print(format_table(metrics["summary"], columns))
  print(f"metrics: {workdir}/metrics.json  plot: {workdir}/accuracy.png")
  return metrics


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
  """A GitHub markdown table with one row per mapping (floats with 4 decimals, ``None`` as
  an empty cell)."""

  def fmt(v):
    if v is None:
      return ""
    if isinstance(v, float):
      return f"{v:.4f}" if math.isfinite(v) else "nan"
    return str(v).replace("|", "\\|")

  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
  return "\n".join(lines)
