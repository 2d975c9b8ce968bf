"""The comparison runner (``experiments/runners/compare.py``): selection on the validation
split, final runs on the test split, resume, the report (issue 15, requirement 6)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from experiments import train
from experiments.configs import common, fashion_mnist_compare
from experiments.runners import compare, families


def _smoke():
  return fashion_mnist_compare.get_config("smoke")


def test_grid_points_are_the_product_in_order_and_keep_integer_fields():
  config = _smoke()
  config.grid = {"sm": {"delta": (1e-3, 3e-3), "inner_steps": (1, 10)}}
  points = compare.grid_points(config, "sm")
  assert points == [
    {"delta": 1e-3, "inner_steps": 1},
    {"delta": 1e-3, "inner_steps": 10},
    {"delta": 3e-3, "inner_steps": 1},
    {"delta": 3e-3, "inner_steps": 10},
  ]
  assert compare.grid_points(config, "adam") == []
  entry = compare.with_point(config.methods.sm, points[1])
  assert entry.inner_steps == 10 and isinstance(entry.inner_steps, int)
  assert entry.delta == 1e-3 and entry.solver == "cg"
  assert compare.selection_label("sm", points[1]) == "select/sm/delta=0.001,inner_steps=10"


def test_score_and_time_to_target():
  record = {"accuracy": [0.1, 0.6, 0.9, 0.85], "time": [0.0, 1.0, 2.0, 3.0]}
  assert compare.score(record) == 0.85  # the end of the budget, not the best point
  assert compare.time_to(record, 0.85) == 2.0
  assert compare.time_to(record, 0.95) is None
  assert compare.score({**record, "diverged_at_step": 3}) == -math.inf


def _fake_train(calls):
  """A ``train_one`` that trains nothing: the held-out accuracy is read from the learning
  rate (lr=0.003 wins), and the call records which split it was evaluated on."""

  def fake(config, data, entry, seed, hooks):
    calls.append((entry.method, dict(entry), seed, len(data.test[0])))
    acc = {0.001: 0.6, 0.003: 0.7, 0.01: float("nan")}.get(entry.get("lr"), 0.5)
    return {
      "step": [0, 1],
      "time": [0.0, 0.5],
      "accuracy": [0.1, acc],
      "loss": [2.0, 1.0],
      "train_accuracy": [0.1, acc],
      "train_loss": [2.0, 1.0],
      "wall_s": 1.0,
      "loadavg": {"before": [1.0, 1.0, 1.0], "after": [1.0, 1.0, 1.0]},
    }

  return fake


def test_selection_runs_on_validation_then_final_on_test_and_resume_retrains_nothing(
  tmp_path, monkeypatch, capsys
):
  calls = []
  monkeypatch.setattr(compare, "train_one", _fake_train(calls))
  config = _smoke()
  config.grid.adam.lr = (1e-3, 3e-3, 1e-2)  # 1e-2 "diverges" (NaN accuracy)
  metrics = train.train_and_evaluate(config, str(tmp_path))
  # bundled smoke split: 1,000 train, 500 validation, 8,500 test
  selection_calls = [c for c in calls if c[3] == 500]
  final_calls = [c for c in calls if c[3] == 8500]
  assert [c[1]["lr"] for c in selection_calls] == [1e-3, 3e-3, 1e-2]
  assert [c[0] for c in final_calls] == ["adam", "ddg", "dc_asgd"]
  assert final_calls[0][1]["lr"] == 3e-3, "the final run uses the selected value"
  assert metrics["selected"] == {"adam": {"lr": 3e-3}}
  assert [r["chosen"] for r in metrics["selection"]] == ["", "yes", ""]
  assert metrics["selection"][2]["validation accuracy"] is None
  rows = {r["method"]: r for r in metrics["summary"]}
  assert rows["adam"]["hyperparameters"] == "lr=0.003"
  assert rows["ddg"]["hyperparameters"] == "as configured"
  assert rows["adam"]["time to 50% (s)"] == 0.5
  table = (tmp_path / "table.md").read_text()
  assert "| adam | lr=0.003 | 0.7000 | yes |" in table and "## Final (test split)" in table
  assert "| adam | lr=0.01 | diverged |" in table
  assert (tmp_path / compare.PLOT).exists()
  written = json.loads((tmp_path / "metrics.json").read_text())
  assert written["complete"] and "select/adam/lr=0.001" in written["runs"]
  assert len(written["loadavg_at_start"]) == 3
  capsys.readouterr()
  calls.clear()
  config.resume = True
  again = train.train_and_evaluate(config, str(tmp_path))
  assert calls == [], "every finished run of the resumed workdir is reused"
  assert again["summary"] == metrics["summary"]


def test_select_only_reports_the_chosen_values(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(compare, "train_one", _fake_train([]))
  config = _smoke()
  config.final = False
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert [r["hyperparameters"] for r in metrics["summary"]] == ["lr=0.003"]
  assert "## Final" not in (tmp_path / "table.md").read_text()


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("grid", {"adam": {"beta": (0.1,)}}, "config.methods.adam has no field 'beta'"),
    ("grid", {"lbfgs": {"lr": (0.1,)}}, "no method 'lbfgs'"),
    ("grid", {"adam": {"lr": ()}}, "non-empty list of finite numbers"),
    ("methods.adam.method", "lbfgs", "config.methods.adam.method must be one of"),
    ("methods.adam.family", "nope", "config.methods.adam.family must be one of"),
    ("methods.dc_asgd.num_workers", 0, "num_workers must be an integer >= 1"),
    ("target_accuracy", 0.0, "target_accuracy must be a finite number > 0"),
  ],
)
def test_bad_fields_fail_with_one_line_naming_them(field, value, message):
  config = _smoke()
  node, *path = field.split(".")
  if path:
    target = config[node]
    for part in path[:-1]:
      target = target[part]
    target[path[-1]] = value
  else:
    config[node] = value
  with pytest.raises(common.ConfigError, match=message.replace("(", r"\(")):
    compare.validate(config)


def test_full_config_lists_every_method_of_the_issue_with_a_grid():
  config = fashion_mnist_compare.get_config(None)
  compare.validate(config)
  labels = set(config.method_list)
  single = {"am_adam", "am_mem", "sm", "gd_armijo", "cg_block", "sso", "ddg", "sgd", "adam"}
  assert single <= labels
  workers = {config.methods[m].num_workers for m in labels if m not in single}
  assert workers == {4}
  assert labels <= set(config.grid), "every method's values come from a validation grid"
  assert config.num_train == 0 and config.num_validation == 0  # 50,000 / 10,000 by default
  am = fashion_mnist_compare.get_config("am_fc,500")
  assert tuple(am.hidden) == (500, 500) and "am_mem_offline" in am.method_list
  wide = fashion_mnist_compare.get_config("wide")
  compare.validate(wide)
  for m in wide.method_list:  # moved past one end: the old end value is shared, nothing else
    assert wide.methods[m].family == "distributed"
    old, new = set(config.grid[m].lr), set(wide.grid[m].lr)
    assert len(old & new) == 1 and (min(new) > min(old) or max(new) < max(old)), m
  with pytest.raises(common.ConfigError, match="500 goes with am_fc"):
    fashion_mnist_compare.get_config("500")


def test_a_registered_family_is_trained_checked_and_reported_without_code_in_the_runner(
  tmp_path, monkeypatch, capsys
):
  """A family added to the registry (here a fake one that trains nothing) is validated,
  trained, reported and plotted by the comparison runner as the built-in ones are."""
  calls = []

  def toy_check(config, label):
    if config.methods[label].rounds > 3:
      raise common.ConfigError(f"config.methods.{label}: the toy family trains 3 rounds at most")

  def toy_train(config, data, entry, seed, hooks):
    calls.append((entry.method, entry.lr, seed, len(data.test[0])))
    return {**_fake_train([])(config, data, entry, seed, hooks), "epoch": [0.0, 1.0]}

  monkeypatch.setattr(families, "REGISTRY", dict(families.REGISTRY))
  families.register(
    families.Family(
      name="toy",
      methods=("toy_sgd",),
      train_one=toy_train,
      batch_text=lambda config: "7",
      line_style="-.",
      check=toy_check,
    )
  )
  config = _smoke()
  config.methods.toy = {"family": "toy", "method": "toy_sgd", "lr": 0.1, "rounds": 1}
  config.methods.toy_fast = {"family": "toy", "method": "toy_sgd", "lr": 0.01, "rounds": 3}
  config.method_list = ("toy", "toy_fast")
  config.grid = {"toy": {"lr": (0.001, 0.003)}}
  compare.validate(config)
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert calls == [
    ("toy_sgd", 0.001, 0, 500),
    ("toy_sgd", 0.003, 0, 500),
    ("toy_sgd", 0.003, 0, 8500),
    ("toy_sgd", 0.01, 0, 8500),
  ]
  assert [(r["method"], r["family"]) for r in metrics["summary"]] == [
    ("toy", "toy"),
    ("toy_fast", "toy"),
  ]
  assert "7 (toy family)" in (tmp_path / "table.md").read_text()
  assert (tmp_path / compare.PLOT).exists()
  config.methods.toy.rounds = 4
  with pytest.raises(common.ConfigError, match="toy: the toy family trains 3 rounds at most"):
    compare.validate(config)
  config.methods.toy.update({"rounds": 1, "method": "sgd"})
  with pytest.raises(
    common.ConfigError, match=r"config.methods.toy.method must be one of \['toy_sgd'\]"
  ):
    compare.validate(config)
  with pytest.raises(ValueError, match="a family named 'toy' is registered already"):
    families.register(families.REGISTRY["toy"])


def test_an_unknown_family_is_refused_with_the_registered_ones():
  registered = r"registered families: \['am_fc', 'distributed', 'sm'\]"
  with pytest.raises(ValueError, match="unknown family 'nope'; " + registered):
    families.get("nope")
  entry = _smoke().methods.adam
  entry.family = "nope"
  with pytest.raises(ValueError, match=registered):
    compare.train_one(_smoke(), None, entry, 0, None)


@pytest.mark.slow
def test_every_method_of_the_comparison_runs_its_smoke_size(tmp_path, capsys):
  """All methods of the full comparison plus the offline AM ones, smoke-sized, through the
  real training functions of their families."""
  config = _smoke()
  config.method_list = tuple(fashion_mnist_compare.METHODS) + tuple(fashion_mnist_compare.OFFLINE)
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert [r["method"] for r in metrics["summary"]] == list(config.method_list)
  for row in metrics["summary"]:
    assert np.isfinite(row["test accuracy"]) and row["diverged seeds"] == 0, row
    # tau = 10 exceeds the smoke run's 8 rounds: the EASGD / DOWNPOUR centres never move
    if "communication_period" not in config.methods[row["method"]]:
      assert row["test accuracy"] > 0.2, row


def test_sm_tables_trains_on_minibatches_when_the_config_asks():
  """``sm_tables.train_one`` with ``config.batch_size``: one iteration per shuffled minibatch,
  evaluations every ``config.eval_every`` iterations, ``epoch`` counting passes."""
  import ml_collections

  from altmin_jax.data import load_dataset
  from experiments.runners import sm_tables

  data = load_dataset("bundled_mnist", num_train=400)
  config = ml_collections.ConfigDict(
    dict(
      width=16,
      activation="relu",
      epochs=1,
      progress=False,
      batch_size=100,
      eval_every=2,
      num_train_eval=200,
      methods={"ddg": {"learning_rate": 0.1, "momentum": 0.0, "max_modules": 2}},
    )
  )
  record = sm_tables.train_one(config, data, 2, "ddg", None, 0)
  assert record["step"] == [0, 2, 4]
  assert record["epoch"] == [0.0, 0.5, 1.0]
  assert record["train_loss"][-1] < record["train_loss"][0]


def test_sm_tables_runs_sm_with_and_without_its_step_search_and_adam():
  """``sm`` with ``step_search=True`` (the library's default) never raises the training loss
  and differs from ``sm_paper`` (the paper's Algorithm 1, the step as it is), which ignores
  the field; ``adam`` trains on the gradient the step computes."""
  import itertools

  import ml_collections

  from altmin_jax.data import load_dataset
  from experiments.configs import sm_mnist
  from experiments.runners import sm_tables

  data = load_dataset("bundled_mnist", num_train=300)
  methods = sm_mnist.get_config("smoke").methods.to_dict()
  methods["sm_paper"]["step_search"] = True  # not read: sm_paper takes the step as it is
  config = ml_collections.ConfigDict(
    dict(width=16, activation="relu", epochs=3, progress=False, methods=methods)
  )
  runs = {m: sm_tables.train_one(config, data, 2, m, 2, 0) for m in ("sm", "sm_paper", "adam")}
  searched, paper = runs["sm"]["train_loss"], runs["sm_paper"]["train_loss"]
  assert all(b <= a for a, b in itertools.pairwise(searched)), searched
  assert searched[-1] != paper[-1]
  assert runs["adam"]["train_loss"][-1] < runs["adam"]["train_loss"][0]
