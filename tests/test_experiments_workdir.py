"""The experiment binary never loses or misreports results.

``metrics.json`` is rewritten atomically after every evaluation and says whether the run is
complete; the workdir is checked before training; results already there are refused unless
the config says to resume or overwrite; a resumed run ends with exactly the numbers of an
uninterrupted one for every method and seed; a diverged run never reaches a checkpoint; bad
options and overrides end in one line, not a traceback.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import altmin_jax as amj
from experiments import reporting, train, workdir
from experiments.configs import common
from experiments.runners import _training

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "experiments" / "configs"


def _load(name: str, arg: str | None):
  path = CONFIG_DIR / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _tiny_am_fc():
  """Every am_fc method, 2 epochs of 2 minibatches on the bundled digits."""
  config = _load("quickstart", "smoke")
  config.method_list = (
    "sgd",
    "adam",
    "am_adam",
    "am_mem",
    "am_adam_offline",
    "am_mem_offline",
    "admm",
  )
  config.methods = _load("am_fc_mnist", None).methods
  config.num_train, config.batch_size, config.num_train_eval = 200, 100, 100
  return config


class Crash(Exception):
  """Stands for a crash or Ctrl-C in the middle of a run."""


def _crash_after(monkeypatch, publishes: int) -> list[dict]:
  """Makes the ``publishes``-th call of ``RunLog.publish`` raise :class:`Crash` after it
  wrote ``metrics.json``; returns the payloads written before."""
  original = workdir.RunLog.publish
  seen: list[dict] = []

  def publish(self, label, seed, record, *, finished=False):
    original(self, label, seed, record, finished=finished)
    seen.append(json.loads((pathlib.Path(self.path) / workdir.METRICS).read_text()))
    if len(seen) == publishes:
      raise Crash(f"after {publishes} publishes")

  monkeypatch.setattr(workdir.RunLog, "publish", publish)
  return seen


def _numbers(metrics: dict) -> str:
  """Every recorded number except wall times, as JSON text (NaN compares equal to NaN)."""
  runs = {
    label: [{k: v for k, v in r.items() if k != "time"} for r in records]
    for label, records in metrics["runs"].items()
  }
  return json.dumps(reporting.clean_json(runs), sort_keys=True)


def _summary_numbers(metrics: dict) -> str:
  """The final table without its wall times, as JSON text."""
  rows = [{k: v for k, v in row.items() if "time" not in k} for row in metrics["summary"]]
  return json.dumps(reporting.clean_json(rows))


def _resume_matches_uninterrupted(config, tmp_path, monkeypatch, crashes) -> tuple[dict, int]:
  """Runs ``config`` uninterrupted, then crashed after each count of publishes in
  ``crashes`` and resumed, and checks that the numbers agree; returns the reference
  metrics and how many runs were continued from a checkpoint."""
  restored = []
  latest = workdir.Checkpoints.latest

  def counting_latest(self, like):
    found = latest(self, like)
    restored.extend([self.directory] if found is not None else [])
    return found

  monkeypatch.setattr(workdir.Checkpoints, "latest", counting_latest)
  reference = train.train_and_evaluate(config, str(tmp_path / "reference"))
  assert not restored
  interrupted = tmp_path / "interrupted"
  for publishes in crashes:
    with monkeypatch.context() as m:
      seen = _crash_after(m, publishes)
      with pytest.raises(Crash):
        train.train_and_evaluate(config, str(interrupted))
    written = json.loads((interrupted / workdir.METRICS).read_text())
    assert written == seen[-1] and written["complete"] is False
    assert not [p for p in interrupted.iterdir() if p.name.endswith(".tmp")], "no temp files"
    config.resume = True
  resumed = train.train_and_evaluate(config, str(interrupted))
  assert resumed["complete"] is True
  assert _numbers(resumed) == _numbers(reference)
  assert _summary_numbers(resumed) == _summary_numbers(reference)
  on_disk = json.loads((interrupted / workdir.METRICS).read_text())
  assert on_disk["complete"] is True and _numbers(on_disk) == _numbers(reference)
  return reference, len(restored)


@pytest.mark.extended
def test_am_fc_resumes_every_method_to_the_uninterrupted_numbers(tmp_path, monkeypatch):
  """A crash in the second epoch of every method, each followed by a resume from the first
  epoch's checkpoint: every method ends with the uninterrupted run's accuracy, loss,
  training accuracy and training loss at every epoch, bit for bit. (Taylor's ADMM goes
  to NaN in its first iteration at this size, whatever its gammas: its record says so,
  identically, and it has no checkpoint to resume from.)"""
  config = _tiny_am_fc()
  # A run publishes 4 times (start, epoch 1, epoch 2, finished): the first crash is in
  # sgd's epoch 2; every resumed process publishes 2 more (the rest of the crashed run)
  # before the next method's epoch 2.
  methods = len(config.method_list)
  reference, restored = _resume_matches_uninterrupted(
    config, tmp_path, monkeypatch, crashes=(3,) + (5,) * (methods - 1)
  )
  first_epoch = config.num_train // config.batch_size
  stopped_early = [  # a run that diverged in its first epoch ends before any checkpoint
    label
    for label, (r,) in reference["runs"].items()
    if r.get("diverged_at_step", 1e9) <= first_epoch
  ]
  assert stopped_early in ([], ["admm"]), stopped_early
  assert restored == methods - len(stopped_early), (
    "every other method continued from its checkpoint"
  )
  for label, (record,) in reference["runs"].items():
    assert len(record["train_accuracy"]) == len(record["accuracy"]), label


def test_zoom_resumes_inside_an_epoch_from_a_mid_epoch_checkpoint(tmp_path, monkeypatch):
  """The zoom evaluates (and, with the interval at 0, checkpoints) after every minibatch;
  a crash inside the first epoch resumes from the minibatch it reached."""
  monkeypatch.setattr(_training, "CHECKPOINT_INTERVAL_S", 0.0)
  config = _load("am_fc_mnist", "bundled,zoom,smoke")
  config.method_list = ("am_adam", "adam")
  config.num_train_eval = 100
  _, restored = _resume_matches_uninterrupted(config, tmp_path, monkeypatch, crashes=(3,))
  assert restored == 1


@pytest.mark.extended
def test_am_arch_resumes_every_kind_and_seed(tmp_path, monkeypatch):
  """The am_arch runner with each kind of method (AM-Adam on the sign/tanh net, Adam with
  the straight-through estimator, SGD with its per-epoch decay: a schedule of the step
  count in the state), two seeds, a narrow net."""
  config = _load("binary_mnist", "smoke")
  config.hidden = (32, 32)
  config.methods.sgd = {"kind": "sgd", "lr": 0.02, "lr_decay": 0.9}
  config.method_list = ("am_adam", "ste_adam", "sgd")
  config.num_train, config.epochs, config.num_train_eval = 256, 2, 128
  config.seeds = (0, 1)
  # 4 publishes per method and seed: crash in seed 1's second epoch of am_adam, then in
  # seed 0's of ste_adam (2 publishes end am_adam seed 1, 3 more reach the next epoch 2),
  # then in seed 0's of sgd (2 + 4 + 3), then in seed 1's of sgd (2 + 3).
  _, restored = _resume_matches_uninterrupted(config, tmp_path, monkeypatch, crashes=(7, 5, 9, 5))
  assert restored == 4


@pytest.mark.extended
def test_distributed_resumes_with_its_batch_generators(tmp_path, monkeypatch):
  """The distributed runner draws batches (and crops) from NumPy generators; their states
  travel in the checkpoint, so the resumed rounds see the same batches."""
  monkeypatch.setattr(_training, "CHECKPOINT_INTERVAL_S", 0.0)
  config = _load("distributed_mnist", "smoke")
  config.rounds, config.eval_every = 6, 2
  config.num_train_eval = 100
  # A run publishes at rounds 0, 2, 4, 6 and when finished: crash at round 4 of the first
  # run, then (3 publishes end it, from round 2) at round 4 of the second.
  reference, restored = _resume_matches_uninterrupted(config, tmp_path, monkeypatch, crashes=(3, 6))
  assert restored == 2
  for name, (record,) in reference["runs"].items():
    assert record["round"] == [0, 2, 4, 6], name


@pytest.mark.extended
def test_sm_tables_resumes_every_method_and_inner_step_count(tmp_path, monkeypatch):
  """The SM tables runner (full-batch iterations, one per epoch): a crash in the second
  epoch of every (method, N) run, each followed by a resume from its first epoch's
  checkpoint, ends with the uninterrupted tables."""
  from experiments.runners import sm_tables

  config = _load("sm_mnist", "smoke")
  config.num_train = 128
  # N in (1, 2) for SM, SM as in the paper, CGBlock (both) and SSO; one run of the others
  with_n = sum(m in sm_tables.N_METHODS for m in config.method_list)
  runs = with_n * 2 + len(config.method_list) - with_n
  reference, restored = _resume_matches_uninterrupted(
    config, tmp_path, monkeypatch, crashes=(3,) + (5,) * (runs - 1)
  )
  stopped_early = [k for k, (r,) in reference["runs"].items() if r.get("diverged_at_step", 9) <= 1]
  assert restored == runs - len(stopped_early)
  assert (
    json.loads((tmp_path / "interrupted" / "metrics.json").read_text())["tables_markdown"]
    == reference["tables_markdown"]
  )


def test_metrics_file_is_rewritten_after_every_epoch_and_marked(tmp_path, monkeypatch):
  config = _load("quickstart", "smoke")
  config.method_list = ("adam",)
  config.num_train, config.batch_size, config.epochs = 300, 100, 3
  seen = _crash_after(monkeypatch, publishes=100)
  metrics = train.train_and_evaluate(config, str(tmp_path))
  # initial, 3 epochs, finished: each a whole file, incomplete, growing by one epoch
  assert [len(m["runs"]["adam"][0]["accuracy"]) for m in seen] == [1, 2, 3, 4, 4]
  assert all(m["complete"] is False for m in seen)
  assert [m["runs"]["adam"][0]["finished"] for m in seen] == [False] * 4 + [True]
  final = json.loads((tmp_path / "metrics.json").read_text())
  assert final["complete"] is True and metrics["complete"] is True


def test_progress_off_prints_one_line_per_epoch_with_training_metrics(tmp_path, capsys):
  config = _load("quickstart", "smoke")
  config.method_list = ("sgd",)
  config.epochs, config.num_train = 3, 300
  metrics = train.train_and_evaluate(config, str(tmp_path))
  lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("sgd seed 0")]
  assert [line.split(":")[0] for line in lines] == [f"sgd seed 0 epoch {e}/3" for e in (1, 2, 3)]
  assert all("train accuracy" in line and "held-out accuracy" in line for line in lines)
  (record,) = metrics["runs"]["sgd"]
  assert len(record["train_loss"]) == len(record["loss"]) == 4
  assert record["train_loss"][-1] < record["train_loss"][0]
  row = metrics["summary"][0]
  assert row["train accuracy"] == record["train_accuracy"][-1]
  assert metrics["train_curves"]["sgd"]["mean"] == record["train_accuracy"]


def test_plot_range_leaves_out_the_untrained_point():
  curves = {"a": {"mean": [0.1, 0.90, 0.95], "std": [0.0, 0.01, 0.0]}}
  low, high = reporting.trained_range(curves)
  assert 0.85 < low < 0.89 and 0.95 < high < 0.97
  assert reporting.trained_range({"a": {"mean": [0.1], "std": [0.0]}}) is None


def test_divergence_never_reaches_a_checkpoint(tmp_path):
  """SGD with an absurd step size: the run stops at the first evaluation with non-finite
  params, says so in its record and the summary, and its latest checkpoint is finite."""
  config = _load("quickstart", "smoke")
  config.method_list = ("sgd",)
  config.methods.sgd.lr = 1e30
  config.epochs, config.num_train = 3, 300
  metrics = train.train_and_evaluate(config, str(tmp_path))
  (record,) = metrics["runs"]["sgd"]
  assert "diverged_at_step" in record
  assert metrics["summary"][0]["diverged seeds"] == 1
  assert np.isnan(metrics["summary"][0]["accuracy"])
  checkpoints = workdir.Checkpoints(str(tmp_path / "checkpoints" / "sgd" / "seed0"))
  saved = checkpoints._saved()
  assert all(calls * 1 < record["diverged_at_step"] for calls in saved)
  tree = {"a": np.zeros(2, np.float32)}
  assert not checkpoints.save({"a": np.array([np.nan], np.float32)}, {"calls": 99})
  assert checkpoints._saved() == saved
  assert checkpoints.save(tree, {"calls": 99}) and checkpoints._saved() == [99]
  restored, meta = checkpoints.latest(tree)
  assert bool(amj.training.all_finite(restored)) and meta["calls"] == 99


# ------------------------------------------------------------------- workdir


def test_workdir_with_results_is_refused_unless_resume_or_overwrite(tmp_path):
  config = _load("quickstart", "smoke")
  config.method_list, config.epochs, config.num_train = ("sgd",), 1, 200
  train.train_and_evaluate(config, str(tmp_path))
  with pytest.raises(workdir.WorkdirError, match=r"already holds .*complete am_fc run.*resume"):
    train.train_and_evaluate(config, str(tmp_path))
  config.resume = True  # a complete run resumes to its own numbers without training
  again = train.train_and_evaluate(config, str(tmp_path))
  assert (
    again["runs"]["sgd"][0]["accuracy"]
    == json.loads((tmp_path / "metrics.json").read_text())["runs"]["sgd"][0]["accuracy"]
  )
  config.epochs = 2
  with pytest.raises(workdir.WorkdirError, match=r"another config \(epochs \(1 stored, 2 now\)"):
    train.train_and_evaluate(config, str(tmp_path))
  config.resume, config.overwrite = False, True
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert len(metrics["runs"]["sgd"][0]["accuracy"]) == 3
  config.resume = True
  with pytest.raises(common.ConfigError, match=r"resume and config\.overwrite"):
    train.train_and_evaluate(config, str(tmp_path))


def test_unusable_workdir_fails_before_any_data_is_read(tmp_path, monkeypatch):
  def no_data(*args, **kwargs):
    raise AssertionError("data was read before the workdir was checked")

  monkeypatch.setattr(_training, "load_dataset", no_data)
  config = _load("quickstart", "smoke")
  blocker = tmp_path / "a-file"
  blocker.write_text("")
  with pytest.raises(workdir.WorkdirError, match="cannot be created"):
    train.train_and_evaluate(config, str(blocker / "run"))

  def read_only(*args, **kwargs):
    raise PermissionError(13, "Permission denied")

  monkeypatch.setattr(workdir.tempfile, "NamedTemporaryFile", read_only)
  with pytest.raises(workdir.WorkdirError, match=r"is not writable \(Permission denied\)"):
    train.train_and_evaluate(config, str(tmp_path / "ro"))
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "metrics.json").write_text("{truncated")
  monkeypatch.undo()
  with pytest.raises(workdir.WorkdirError, match="cannot be read"):
    workdir.prepare(str(tmp_path / "bad"), config)


# ---------------------------------------------------------------- validation

CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem not in ("__init__", "common"))


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_rejects_a_misspelt_option_and_lists_the_valid_ones(name):
  with pytest.raises(common.ConfigError, match=r"unknown config options \['smok'\].*'smoke'"):
    _load(name, "smok")
  config = _load(name, "smoke")
  assert config.resume is False and config.overwrite is False, "every config can resume"


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_validates_its_overrides_before_the_workdir(name, tmp_path):
  """Bad values of the shared fields fail with a ``ConfigError`` naming the field, before
  the workdir is created."""
  target = tmp_path / "never-created"
  for field, value, pattern in (
    ("batch_size", 0, r"config.batch_size must be an integer >= 1, got 0"),
    ("seeds", (), r"config.seeds must list at least one seed"),
    ("seeds", ("a",), r"config.seeds must be non-negative integers"),
    ("num_train_eval", -1, r"config.num_train_eval must be an integer >= 0, got -1"),
  ):
    config = _load(name, "smoke")
    if field not in config:
      continue
    config[field] = value
    with pytest.raises(common.ConfigError, match=pattern):
      train.train_and_evaluate(config, str(target))
  config = _load(name, "smoke")
  if "activation" in config:
    config.activation = "gelu"
    with pytest.raises(common.ConfigError, match=r"config.activation must be one of .*'relu'"):
      train.train_and_evaluate(config, str(target))
  config = _load(name, "smoke")
  key = "method_list" if "method_list" in config else "run_list"
  if key in config:
    config[key] = ("nope",)
    with pytest.raises(common.ConfigError, match=rf"config.{key} has unknown names \['nope'\]"):
      train.train_and_evaluate(config, str(target))
  assert not target.exists()


def _main(*args, tmp_path):
  env = {**os.environ, "ALTMIN_JAX_DATA_DIR": str(tmp_path / "none")}
  return subprocess.run(
    [sys.executable, "-m", "experiments.main", *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.parametrize(
  "args, message",
  [
    (["quickstart.py:smok"], r"unknown config options \['smok'\] in 'smok'; allowed .*'smoke'"),
    (["quickstart.py:smoke", "--config.batch_size=0"], r"config.batch_size must be .* got 0"),
    (["quickstart.py:smoke", "--config.activation=gelu"], r"config.activation must be one of"),
    (["quickstart.py:smoke", "--config.seeds="], r"config.seeds must list at least one seed"),
    (["quickstart.py:smoke", "--config.nope=1"], r"--config.nope=1: the config has no field"),
    (["quickstart.py:smoke", "--config.epochs=x"], r"--config.epochs=x: invalid literal"),
    (["nothere.py"], r"--config: cannot load the config file"),
  ],
)
def test_binary_reports_bad_options_and_overrides_in_one_line(args, message, tmp_path):
  config, *overrides = args
  out = _main(
    f"--config=experiments/configs/{config}",
    f"--workdir={tmp_path}/w",
    *overrides,
    tmp_path=tmp_path,
  )
  assert out.returncode == 2, out.stderr[-2000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert lines[0].startswith("experiments.main: error: ")
  assert __import__("re").search(message, lines[0]), lines[0]
  assert not (tmp_path / "w").exists()


def test_checkpoint_restores_into_the_structure_of_a_method_state(tmp_path):
  """Orbax round trip of an AM state (a NamedTuple of arrays), bit for bit."""
  config = _tiny_am_fc()
  data = _training.load_dataset(config)
  from experiments import models
  from experiments.runners import am_fc

  net = models.mlp(data.input_shape, (8,), data.num_classes)
  tx, _ = am_fc.build_method("am_adam", config.methods.am_adam, net, steps_per_epoch=4, num_train=1)
  params = net.init(jax.random.key(0))
  tree = {"params": params, "opt_state": tx.init(params)}
  checkpoints = workdir.Checkpoints(str(tmp_path / "c"))
  assert checkpoints.save(tree, {"calls": 3})
  restored, meta = checkpoints.latest(tree)
  assert jax.tree.structure(restored) == jax.tree.structure(tree) and meta == {"calls": 3}
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(tree)):
    np.testing.assert_array_equal(a, b)
