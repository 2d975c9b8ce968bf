"""The training loop, data loading and summary shared by the runners.

A runner builds, per method and seed, a jitted step ``step(params, opt_state, *batch) ->
(params, opt_state, ...)`` and calls :func:`train_and_record` with the run's
:class:`experiments.workdir.RunHooks` (``metrics.json`` rewritten after every evaluation,
checkpoints to resume from); :meth:`experiments.workdir.RunLog.run_all` does this for every
method and seed, and :func:`write_report` writes the final ``metrics.json`` and
``accuracy.png`` and prints the final table (the AM runners ``am_fc`` and ``am_arch``).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import jax
import ml_collections
import numpy as np

import altmin_jax as amj
from experiments import models, reporting, workdir
from experiments.configs import common

EVAL_SPLITS = ("test", "validation")


def method_labels(config: ml_collections.ConfigDict) -> list[str]:
  """``config.method_list`` as a list; ``--config.method_list=adam,am_adam`` arrives as one
  comma-separated string."""
  return common.names(config, "method_list")


def validate(config: ml_collections.ConfigDict, methods: Sequence[str]) -> None:
  """The fields the AM runners share (:func:`experiments.configs.common.check_run_fields`,
  ``epochs``, ``eval_every``, data sizes, ``activation``, the hyperparameters under
  ``config.methods``) and ``config.method_list`` against ``methods``.

  Raises:
    ConfigError: the first field that breaks its rule.
  """
  common.check_run_fields(config)
  common.check_int(config, "epochs", minimum=1)
  for key in ("num_train", "num_validation", "max_rows", "num_test", "zoom_batches"):
    if key in config:
      common.check_int(config, key, minimum=0)
  if "activation" in config:
    common.check_choice(config, "activation", models.ACTIVATIONS)
  if "hidden" in config:
    common.check_int_list(config, "hidden", minimum=1, empty=True)
  common.check_names(config, "method_list", methods)
  common.check_hyperparameters(config, "methods")


def load_dataset(config: ml_collections.ConfigDict, **kwargs) -> amj.data.Dataset:
  """:func:`altmin_jax.data.load_dataset` with the config's data fields.

  Fields: ``dataset``, ``data_dir`` (``""``: ``$ALTMIN_JAX_DATA_DIR``), ``download`` (let
  TFDS download; needs network), ``num_train`` / ``num_validation`` (``0``: the dataset's
  default split), and for HIGGS ``max_rows`` / ``num_test`` (``0``: all rows / the last
  500,000). ``kwargs`` are passed on (``flatten``).

  Raises:
    ConfigError: ``eval_split`` not in ``EVAL_SPLITS``, or a HIGGS ``max_rows`` that leaves no
      training rows after the test rows.
    DataNotAvailableError: the dataset is missing; the message adds the config fields that
      get it (``--config.download=True`` or ``--config.data_dir``).
  """
  if config.get("eval_split", "test") not in EVAL_SPLITS:
    raise common.ConfigError(
      f"config.eval_split must be one of {EVAL_SPLITS}, got {config.eval_split!r}"
    )
  for field in ("num_train", "num_validation", "max_rows", "num_test"):
    if config.get(field):
      kwargs[field] = int(config[field])
  kwargs["data_dir"] = config.data_dir or None  # the bundled set ignores both
  kwargs["download"] = bool(config.get("download", False))
  spec = amj.data.SPECS.get(config.dataset)  # an unknown name fails in load_dataset
  if spec is not None and spec.test_rows_last is not None and kwargs.get("max_rows"):
    num_test = kwargs.get("num_test", spec.test_rows_last)
    if num_test >= kwargs["max_rows"]:
      raise common.ConfigError(
        f"config.max_rows={kwargs['max_rows']} leaves no {config.dataset} training rows"
        f" before the {num_test} test rows: set --config.num_test below max_rows"
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
    raise common.ConfigError(
      "config.eval_split='validation' needs a validation split: set --config.num_validation"
      " (bundled_mnist: for example --config.num_train=7000 --config.num_validation=1000)"
    )
  return data.validation


# Mid-epoch evaluations (``eval_every``, the zoom) also checkpoint when this many seconds of
# wall time have passed since the last checkpoint; every epoch's end checkpoints.
CHECKPOINT_INTERVAL_S = 60.0


def train_and_record(
  step: Callable,
  params,
  opt_state,
  *,
  epoch_batches: Callable[[int, int], Iterable],
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
  line_per_eval: bool = False,
  hooks: workdir.RunHooks | None = None,
  host_rngs: Sequence[np.random.Generator] = (),
) -> dict:
  """Trains for ``epochs`` and records metrics with the training wall time; resumable.

  Args:
    step: ``step(params, opt_state, *batch) -> (params, opt_state, ...)``, pure and jitted.
    params, opt_state: the starting point.
    epoch_batches: ``(epoch, start) -> iterable of batch tuples``: the batches of one epoch
      from the ``start``-th on (``start > 0`` when resuming inside an epoch).
    epochs: number of epochs.
    calls_per_epoch: calls of ``step`` per epoch (for the progress bar).
    evaluate: ``(params, opt_state) -> {"accuracy": ..., "loss": ..., ...}``: the held-out
      metrics and, with a ``train_`` prefix, the training ones.
    warmup_batch: a batch for one discarded call that compiles ``step`` outside the
      timed region (steps are pure, so the call is harmless).
    steps_per_call: minibatches one call of ``step`` counts as (an offline pass over the
      training set counts as an epoch of minibatches).
    max_steps: stop after this many minibatches (``0``: no limit); used by the zoom.
    eval_every: also evaluate every this many minibatches (``0``: once per epoch).
    per_call_eval: evaluate after every call (the zoom).
    desc, progress: the progress bar's label and whether to show it; without a bar one line
      is printed per epoch (per evaluation with ``line_per_eval``).
    hooks: ``publish(record)`` is called after every evaluation; ``checkpoints`` (when
      set) are written at the end of every epoch and, at most every
      ``CHECKPOINT_INTERVAL_S`` seconds, at mid-epoch evaluations, and the latest one is
      restored at the start (the run continues from there and ends with the numbers of an
      uninterrupted run).
    host_rngs: NumPy generators the batches draw from; their states are checkpointed.

  Returns:
    ``{"step", "time", <metrics>}``: lists with one entry per evaluation, at minibatch count
    ``step`` and cumulative training time ``time`` (seconds, evaluation and compilation
    excluded); the first entry is the initialization, the last the end. When the params or
    the optimizer state become non-finite, training stops at that evaluation and
    ``"diverged_at_step"`` holds its step (the curves end there).
  """
  hooks = hooks or workdir.RunHooks()
  record: dict = {"step": [], "time": []}
  elapsed, calls, epoch, start = 0.0, 0, 0, 0
  restored = None
  if hooks.checkpoints is not None:
    restored = hooks.checkpoints.latest({"params": params, "opt_state": opt_state})
  if restored is not None:
    tree, meta = restored
    params, opt_state = tree["params"], tree["opt_state"]
    record, elapsed = meta["record"], meta["time"]
    calls, epoch, start = meta["calls"], meta["epoch"], meta["batch"]
    for rng, state in zip(host_rngs, meta["host_rngs"]):
      rng.bit_generator.state = state

  def log() -> bool:
    """Evaluates and publishes; ``False`` when params or state are no longer finite."""
    finite = bool(amj.training.all_finite((params, opt_state)))
    metrics = evaluate(params, opt_state)
    record["step"].append(calls * steps_per_call)
    record["time"].append(elapsed)
    for key, value in metrics.items():
      record.setdefault(key, []).append(value)
    if not finite:
      record["diverged_at_step"] = calls * steps_per_call
    hooks.publish(record)
    return finite

  def checkpoint():
    meta = {
      "calls": calls,
      "epoch": epoch,
      "batch": start,
      "time": elapsed,
      "record": record,
      "host_rngs": [rng.bit_generator.state for rng in host_rngs],
    }
    return hooks.checkpoints is not None and hooks.checkpoints.save(
      {"params": params, "opt_state": opt_state}, meta
    )

  def say(position):
    if not progress:
      latest = {k: v[-1] for k, v in record.items() if isinstance(v, list) and v}
      print(reporting.epoch_line(desc, position, latest, elapsed), flush=True)

  if restored is None and not log():
    return record
  jax.block_until_ready(step(params, opt_state, *warmup_batch))
  total_calls = epochs * calls_per_epoch
  if max_steps:
    total_calls = min(total_calls, -(-max_steps // steps_per_call))
  bar = reporting.progress(range(calls, total_calls), desc=desc, enabled=progress)
  bar_iter = iter(bar)
  last_checkpoint = time.monotonic()
  stopped = False
  while epoch < epochs and not stopped:
    for batch in epoch_batches(epoch, start):
      if max_steps and calls * steps_per_call >= max_steps:
        stopped = True
        break
      t0 = time.perf_counter()
      params, opt_state, *_ = step(params, opt_state, *batch)
      jax.block_until_ready(params)
      elapsed += time.perf_counter() - t0
      calls, start = calls + 1, start + 1
      next(bar_iter, None)
      done = calls * steps_per_call
      if per_call_eval or (eval_every and done % eval_every == 0):
        if not log():
          stopped = True
          break
        if line_per_eval:
          say(f"step {done}")
        if time.monotonic() - last_checkpoint >= CHECKPOINT_INTERVAL_S:
          checkpoint()
          last_checkpoint = time.monotonic()
    if stopped:
      break
    epoch, start = epoch + 1, 0
    if not per_call_eval and not eval_every and not log():
      break
    if not line_per_eval:
      say(f"epoch {epoch}/{epochs}")
    checkpoint()
    last_checkpoint = time.monotonic()
  if "diverged_at_step" not in record and record["step"][-1] != calls * steps_per_call:
    log()
  if hasattr(bar, "close"):
    bar.close()
  if "diverged_at_step" in record:
    print(
      f"{desc}: params or optimizer state non-finite at step {record['diverged_at_step']};"
      " this run stops there (no checkpoint holds non-finite values)"
    )
  return record


def minibatches(x, y, batch_size: int, seed: int) -> tuple[int, Callable]:
  """``(calls_per_epoch, epoch_batches)`` for :func:`train_and_record`: shuffled
  minibatches of ``batch_size`` from ``(x, y)`` (``amj.data.iterate_batches``, a pass per
  epoch, the last incomplete batch dropped), ``epoch_batches(epoch, start)`` resuming
  within an epoch. A batch larger than the training set is a ``ConfigError``."""
  calls_per_epoch = len(x) // batch_size
  if calls_per_epoch < 1:
    raise common.ConfigError(
      f"config.batch_size={batch_size} exceeds the {len(x)} training samples"
    )

  def epoch_batches(epoch, start):
    batches = amj.data.iterate_batches(x, y, batch_size, seed=seed, epoch=epoch)
    return itertools.islice(batches, start, None)

  return calls_per_epoch, epoch_batches


def training_subset(config: ml_collections.ConfigDict, data: amj.data.Dataset):
  """The first ``config.num_train_eval`` training samples (all of them for ``0``), on which
  the training accuracy and loss are measured."""
  x, y = data.train
  n = int(config.get("num_train_eval", 0))
  return (x[:n], y[:n]) if n else (x, y)


def evaluator(apply_fn: Callable, config, data, *, params_of: Callable = lambda p, s: p):
  """``(params, opt_state) -> {"accuracy", "loss", "train_accuracy", "train_loss"}`` of the
  model ``params_of(params, opt_state)`` on the held-out data (:func:`eval_data`) and on
  :func:`training_subset`."""
  loss = amj.losses.softmax_cross_entropy
  x_eval, y_eval = eval_data(config, data)
  x_fit, y_fit = training_subset(config, data)

  def evaluate(params, opt_state):
    model = params_of(params, opt_state)
    held_out = amj.training.evaluate(apply_fn, model, x_eval, y_eval, loss=loss)
    train = amj.training.evaluate(apply_fn, model, x_fit, y_fit, loss=loss)
    return {**held_out, **{f"train_{k}": v for k, v in train.items()}}

  return evaluate


CURVE_METRICS = {  # metrics.json key -> record key
  "curves": "accuracy",
  "train_curves": "train_accuracy",
  "loss_curves": "loss",
  "train_loss_curves": "train_loss",
}


def curves_of(runs: Mapping[str, Sequence[Mapping]], x_of: Callable[[Sequence], list]) -> dict:
  """Per ``CURVE_METRICS`` key, per label: mean and spread over seeds and ``x``
  (``x_of(steps)`` of the longest record's steps)."""
  out = {}
  for key, metric in CURVE_METRICS.items():
    curves = {}
    for label, records in runs.items():
      if not all(metric in r for r in records):
        continue
      curves[label] = reporting.summarize_curves({label: [r[metric] for r in records]})[label]
      longest = max(records, key=lambda r: len(r["step"]))
      curves[label]["x"] = x_of(longest["step"])
    if curves:
      out[key] = curves
  return out


def final_row(records: Sequence[Mapping]) -> dict:
  """The final table's numbers of one label: held-out and training accuracy and loss (mean
  over seeds at the last evaluation; NaN for a seed that diverged), the spread of the
  held-out accuracy, the training time and the number of diverged seeds."""

  def last(metric):
    return [r[metric][-1] if "diverged_at_step" not in r else float("nan") for r in records]

  mean, spread = reporting.mean_and_spread(last("accuracy"))
  row = {"accuracy": mean, "spread": spread}
  for metric in ("loss", "train_accuracy", "train_loss"):
    if all(metric in r for r in records):
      row[metric.replace("_", " ")] = reporting.mean_and_spread(last(metric))[0]
  row["train time (s)"] = float(np.mean([r["time"][-1] for r in records]))
  row["diverged seeds"] = sum("diverged_at_step" in r for r in records)
  return row


def write_report(
  log: workdir.RunLog,
  config: ml_collections.ConfigDict,
  runs: Mapping[str, Sequence[Mapping]],
  *,
  steps_per_epoch: int,
  per_step: bool,
  title: str,
) -> dict:
  """Writes the final ``metrics.json`` (``complete: true``; the header, ``x_axis``,
  ``seeds``, ``summary``, the curves, ``runs``, ``config``) and ``accuracy.png``, prints the
  final table, and returns the metrics."""
  x_label = "minibatches" if per_step else "epoch"
  curves = curves_of(runs, lambda x: x if per_step else [s / steps_per_epoch for s in x])
  rows = [{"method": m, **final_row(records)} for m, records in runs.items()]
  metrics = log.payload({"x_axis": x_label, "summary": rows, **curves}, complete=True)
  split = config.get("eval_split", "test")
  return reporting.write_report(
    log.path,
    metrics,
    ["method", "accuracy", "spread", "train accuracy", "train loss", "train time (s)"],
    xlabel=x_label,
    ylabel="held-out accuracy" if split == "test" else "validation accuracy",
    title=title,
  )
