"""The training loop, data loading and summary shared by the AM runners (``am_fc``, ``am_arch``).

A runner builds, per method and seed, a jitted step ``step(params, opt_state, x, y) ->
(params, opt_state, loss)`` and calls :func:`train_and_record`; it then hands the records of
all methods and seeds to :func:`write_report`, which writes ``metrics.json`` and
``accuracy.png`` and prints the final table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import jax
import ml_collections
import numpy as np

import altmin_jax as amj
from experiments import reporting

EVAL_SPLITS = ("test", "validation")


def method_labels(config: ml_collections.ConfigDict) -> list[str]:
  """``config.method_list`` as a list; ``--config.method_list=adam,am_adam`` arrives as one
  comma-separated string."""
  return [t.strip() for m in config.method_list for t in str(m).split(",") if t.strip()]


def load_dataset(config: ml_collections.ConfigDict, **kwargs) -> amj.data.Dataset:
  """:func:`altmin_jax.data.load_dataset` with the config's data fields.

  Fields: ``dataset``, ``data_dir`` (``""``: ``$ALTMIN_JAX_DATA_DIR``), ``download`` (let
  TFDS download; needs network), ``num_train`` / ``num_validation`` (``0``: the dataset's
  default split), and for HIGGS ``max_rows`` / ``num_test`` (``0``: all rows / the last
  500,000). ``kwargs`` are passed on (``flatten``).

  Raises:
    ValueError: a HIGGS ``max_rows`` that leaves no training rows after the test rows.
    DataNotAvailableError: the dataset is missing; the message adds the config fields that
      get it (``--config.download=True`` or ``--config.data_dir``).
  """
  if config.get("eval_split", "test") not in EVAL_SPLITS:
    raise ValueError(f"config.eval_split must be one of {EVAL_SPLITS}, got {config.eval_split!r}")
  for field in ("num_train", "num_validation", "max_rows", "num_test"):
    if config.get(field):
      kwargs[field] = int(config[field])
  if config.dataset != "bundled_mnist":
    kwargs["data_dir"] = config.data_dir or None
    kwargs["download"] = bool(config.get("download", False))
  if config.dataset == "higgs" and kwargs.get("max_rows"):
    num_test = kwargs.get("num_test", amj.data.catalog.HIGGS_NUM_TEST)
    if num_test >= kwargs["max_rows"]:
      raise ValueError(
        f"config.max_rows={kwargs['max_rows']} leaves no HIGGS training rows before the"
        f" {num_test} test rows: set --config.num_test below max_rows"
      )
  try:
    return amj.data.load_dataset(config.dataset, **kwargs)
  except amj.data.DataNotAvailableError as err:
    hint = (
      "From the experiment binary: --config.download=True downloads it (network needed), or"
      " --config.data_dir=DIR reads the files described above from DIR."
    )
    raise amj.data.DataNotAvailableError(f"{err}\n{hint}") from err


def eval_data(config: ml_collections.ConfigDict, data: amj.data.Dataset):
  """The ``(x, y)`` the curves are measured on: ``data.test``, or ``data.validation`` when
  ``config.eval_split == "validation"`` (for choosing hyperparameters)."""
  if config.get("eval_split", "test") == "test":
    return data.test
  if data.validation is None:
    raise ValueError(
      "config.eval_split='validation' needs a validation split: set --config.num_validation"
      " (bundled_mnist: for example --config.num_train=7000 --config.num_validation=1000)"
    )
  return data.validation


def train_and_record(
  step: Callable,
  params,
  opt_state,
  *,
  epoch_batches: Callable[[int], Iterable],
  epochs: int,
  calls_per_epoch: int,
  evaluate: Callable[..., Mapping[str, float]],
  warmup_batch: tuple,
  steps_per_call: int = 1,
  max_steps: int = 0,
  eval_every: int = 0,
  per_call_eval: bool = False,
  desc: str = "",
  progress: bool = True,
) -> dict:
  """Trains for ``epochs`` and records held-out metrics with the training wall time.

  Args:
    step: ``step(params, opt_state, x, y) -> (params, opt_state, loss)``, pure and jitted.
    params, opt_state: the starting point.
    epoch_batches: ``epoch -> iterable of (x, y)``, the batches of one epoch.
    epochs: number of epochs.
    calls_per_epoch: calls of ``step`` per epoch (for the progress bar).
    evaluate: ``params -> {"accuracy": ..., "loss": ...}`` on the held-out data.
    warmup_batch: ``(x, y)`` for one discarded call that compiles ``step`` outside the
      timed region (steps are pure, so the call is harmless).
    steps_per_call: minibatches one call of ``step`` counts as (an offline pass over the
      training set counts as an epoch of minibatches).
    max_steps: stop after this many minibatches (``0``: no limit); used by the zoom.
    eval_every: also evaluate every this many minibatches (``0``: once per epoch).
    per_call_eval: evaluate after every call (the zoom).
    desc, progress: the progress bar's label and whether to show it.

  Returns:
    ``{"step", "accuracy", "loss", "time"}``: lists with one entry per evaluation, at
    minibatch count ``step`` and cumulative training time ``time`` (seconds, evaluation and
    compilation excluded); the first entry is the initialization, the last the end.
  """
  record = {"step": [], "accuracy": [], "loss": [], "time": []}
  elapsed, done = 0.0, 0

  def log():
    metrics = evaluate(params)
    for key, value in (("step", done), ("time", elapsed), *metrics.items()):
      record[key].append(value)

  log()
  jax.block_until_ready(step(params, opt_state, *warmup_batch))
  total_calls = epochs * calls_per_epoch
  if max_steps:
    total_calls = min(total_calls, -(-max_steps // steps_per_call))
  bar = reporting.progress(range(total_calls), desc=desc, enabled=progress)
  bar_iter = iter(bar)
  for epoch in range(epochs):
    for x, y in epoch_batches(epoch):
      if max_steps and done >= max_steps:
        break
      start = time.perf_counter()
      params, opt_state, _ = step(params, opt_state, x, y)
      jax.block_until_ready(params)
      elapsed += time.perf_counter() - start
      done += steps_per_call
      next(bar_iter, None)
      if per_call_eval or (eval_every and done % eval_every == 0):
        log()
    if not per_call_eval and not eval_every:
      log()
  if record["step"][-1] != done:
    log()
  if hasattr(bar, "close"):
    bar.close()
  return record


def summarize(
  runs: Mapping[str, Sequence[Mapping]], steps_per_epoch: int, per_step: bool
) -> tuple[dict, list[dict], str]:
  """Curves (mean and spread over seeds, with their x values), the final table's rows and
  the x-axis label of the records of every method."""
  curves, rows = {}, []
  for m, records in runs.items():
    curves[m] = reporting.summarize_curves({m: [r["accuracy"] for r in records]})[m]
    steps = records[0]["step"]
    curves[m]["x"] = steps if per_step else [s / steps_per_epoch for s in steps]
    mean, spread = reporting.mean_and_spread([r["accuracy"][-1] for r in records])
    rows.append(
      {
        "method": m,
        "accuracy": mean,
        "spread": spread,
        "train time (s)": float(np.mean([r["time"][-1] for r in records])),
      }
    )
  return curves, rows, "minibatches" if per_step else "epoch"


def write_report(
  workdir: str,
  header: Mapping,
  config: ml_collections.ConfigDict,
  runs: Mapping[str, Sequence[Mapping]],
  *,
  steps_per_epoch: int,
  per_step: bool,
  title: str,
) -> dict:
  """Writes ``metrics.json`` (``header``, then ``x_axis``, ``seeds``, ``summary``,
  ``curves``, ``runs``, ``config``) and ``accuracy.png``, prints the final table, and
  returns the metrics."""
  curves, rows, x_label = summarize(runs, steps_per_epoch, per_step)
  metrics = {
    **header,
    "x_axis": x_label,
    "seeds": list(config.seeds),
    "summary": rows,
    "curves": curves,
    "runs": runs,
    "config": config.to_dict(),
  }
  split = config.get("eval_split", "test")
  return reporting.write_report(
    workdir,
    metrics,
    ["method", "accuracy", "spread", "train time (s)"],
    xlabel=x_label,
    ylabel="held-out accuracy" if split == "test" else "validation accuracy",
    title=title,
  )
