"""The experiment binary: every config runs its smoke size offline; bad input fails clearly."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from experiments import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(
  p for p in (ROOT / "experiments" / "configs").glob("*.py") if p.stem not in ("__init__", "common")
)


def _load(path: pathlib.Path, arg: str | None):
  spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_runs_its_smoke_size_offline(path, tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("ALTMIN_JAX_DATA_DIR", str(tmp_path / "no-data-here"))
  config = _load(path, "smoke")
  metrics = train.train_and_evaluate(config, str(tmp_path))
  written = json.loads((tmp_path / "metrics.json").read_text())
  assert written["experiment"] == config.experiment
  assert list(tmp_path.glob("*.png")), "a plot is written"
  assert "metrics.json" in capsys.readouterr().out  # the final table and file names
  assert metrics["summary"], "the summary table has rows"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_full_config_is_well_formed(path):
  config = _load(path, None)
  assert config.experiment in train.available_experiments()
  if config.experiment == "am_fc":
    assert set(config.method_list) <= set(config.methods.keys())
    assert len(config.seeds) >= 1


def test_unknown_experiment_method_and_dataset_fail_clearly(tmp_path):
  config = _load(ROOT / "experiments/configs/quickstart.py", "smoke")
  config.experiment = "nope"
  with pytest.raises(ValueError, match=r"unknown experiment 'nope'; known experiments: .*am_fc"):
    train.train_and_evaluate(config, str(tmp_path))
  config = _load(ROOT / "experiments/configs/quickstart.py", "smoke")
  config.method_list = ("am_adam", "lbfgs")
  with pytest.raises(ValueError, match=r"unknown methods \['lbfgs'\]"):
    train.train_and_evaluate(config, str(tmp_path))
  config = _load(ROOT / "experiments/configs/quickstart.py", "smoke")
  config.dataset = "imagenet"
  with pytest.raises(ValueError, match="imagenet"):
    train.train_and_evaluate(config, str(tmp_path))
  with pytest.raises(ValueError, match=r"unknown config options \['huge'\]"):
    _load(ROOT / "experiments/configs/am_fc_mnist.py", "huge")


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


def test_binary_rejects_unknown_config_keys(tmp_path):
  out = _main(
    "--config=experiments/configs/quickstart.py:smoke",
    f"--workdir={tmp_path}",
    "--config.learning_rate=0.1",
    tmp_path=tmp_path,
  )
  assert out.returncode != 0
  assert "learning_rate" in out.stderr


def test_binary_runs_with_overrides_and_reports_missing_data(tmp_path):
  out = _main(
    "--config=experiments/configs/quickstart.py:smoke",
    f"--workdir={tmp_path}/a",
    "--config.epochs=1",
    "--config.method_list=adam,am_adam",
    tmp_path=tmp_path,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
  assert [r["method"] for r in metrics["summary"]] == ["adam", "am_adam"]
  assert metrics["config"]["epochs"] == 1
  out = _main(
    "--config=experiments/configs/am_fc_mnist.py",
    f"--workdir={tmp_path}/b",
    "--config.seeds=0",
    tmp_path=tmp_path,
  )
  assert out.returncode != 0
  assert "mnist" in out.stderr and "download" in out.stderr.lower()
