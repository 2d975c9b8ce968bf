"""The experiment binary: every config runs its smoke size offline; bad input fails clearly."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from altmin_jax.data import catalog
from experiments import train
from experiments.runners import _training

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(
  p for p in (ROOT / "experiments" / "configs").glob("*.py") if p.stem not in ("__init__", "common")
)


# One representative of each whole-config run stays in the default run; the others train
# every method of their config and are `slow` (CI's slow command runs them, .ci/run).
SMOKE_IN_DEFAULT_RUN = "quickstart"
MOCK_DATA_IN_DEFAULT_RUN = "am_fc_higgs"
ZOOM_IN_DEFAULT_RUN = "rnn_mnist"


def _slow_unless(values, keep: str, name=str):
  """``values`` as parameters named ``name(value)``, each but ``keep`` marked ``slow``."""
  return [
    pytest.param(v, marks=() if name(v) == keep else pytest.mark.slow, id=name(v)) for v in values
  ]


def _load(path: pathlib.Path, arg: str | None):
  spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("path", _slow_unless(CONFIGS, SMOKE_IN_DEFAULT_RUN, lambda p: p.stem))
def test_config_runs_its_smoke_size_offline(path, tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("ALTMIN_JAX_DATA_DIR", str(tmp_path / "no-data-here"))
  config = _load(path, "smoke")
  metrics = train.train_and_evaluate(config, str(tmp_path))
  written = json.loads((tmp_path / "metrics.json").read_text())
  assert written["experiment"] == config.experiment
  assert list(tmp_path.glob("*.png")), "a plot is written"
  assert "metrics.json" in capsys.readouterr().out  # the final table and file names
  assert metrics["summary"], "the summary table has rows"


@pytest.mark.slow
def test_rnn_50_option_runs_its_smoke_size(tmp_path):
  """RNN-50 has its own supplement C.2 hyperparameters (a different path from RNN-15)."""
  path = ROOT / "experiments/configs/rnn_mnist.py"
  config, default = _load(path, "50,smoke"), _load(path, "smoke")
  assert tuple(config.hidden) == (50,) and tuple(default.hidden) == (15,)
  assert config.methods.to_dict() != default.methods.to_dict()
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert {row["method"] for row in metrics["summary"]} == set(config.method_list)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_full_config_is_well_formed(path):
  config = _load(path, None)
  assert config.experiment in train.available_experiments()
  if config.experiment in ("am_fc", "am_arch"):
    assert set(_training.method_labels(config)) <= set(config.methods.keys())
    assert len(config.seeds) >= 3, "several seeds per run (mean and spread)"
    assert len(set(config.seeds)) == len(config.seeds)


COMMON = "experiments.configs.common"


def _imported_modules(source: str, package: str = "experiments.configs") -> set[str]:
  """Every module an ``import`` statement of ``source`` names, at any depth (``from a import
  b`` counts as ``a.b``, relative imports resolved against ``package``)."""
  names = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parent = package.rsplit(".", node.level - 1)[0]
        base = f"{parent}.{base}" if base else parent
      names.update(f"{base}.{alias.name}" for alias in node.names)
  return names


def _allowed_in_configs(module: str, *, common: bool) -> bool:
  """``ml_collections``, the standard library, and for configs other than ``common.py``
  ``experiments.configs.common``."""
  top = module.partition(".")[0]
  if top == "ml_collections" or top in sys.stdlib_module_names:
    return True
  return not common and (module == COMMON or module.startswith(COMMON + "."))


def test_import_check_flags_runners_models_and_sibling_configs():
  """The check below fails on the imports this rule forbids (so it can fail)."""
  bad = (
    "from experiments.runners import am_arch\n"
    "from experiments.configs.distributed_mnist import run_spec\n"
    "def f():\n  import altmin_jax\n"
    "from . import am_fc_mnist\n"
    "import numpy as np\n"
  )
  good = "from __future__ import annotations\nimport ml_collections\nfrom . import common\n"
  found = _imported_modules(bad)
  assert {m for m in found if not _allowed_in_configs(m, common=False)} == found
  assert "experiments.configs.am_fc_mnist" in found and "altmin_jax" in found
  assert all(_allowed_in_configs(m, common=False) for m in _imported_modules(good))
  assert not _allowed_in_configs(COMMON, common=True)


CONFIG_MODULES = sorted((ROOT / "experiments" / "configs").glob("*.py"))


@pytest.mark.parametrize("path", CONFIG_MODULES, ids=[p.stem for p in CONFIG_MODULES])
def test_config_imports_only_ml_collections_stdlib_and_common(path):
  """Configs are plain data: they import ``ml_collections``, the standard library and
  ``experiments/configs/common.py`` only (which itself imports no project module), never a
  runner, the models or a sibling config; the runners resolve the names they hold."""
  is_common = path.stem == "common"
  forbidden = sorted(
    m for m in _imported_modules(path.read_text()) if not _allowed_in_configs(m, common=is_common)
  )
  assert not forbidden, f"{path.name} imports {forbidden}"
  module = importlib.import_module(f"experiments.configs.{path.stem}")
  for name, value in vars(module).items():
    if inspect.ismodule(value):
      origin = value.__name__
    elif inspect.isfunction(value) or inspect.isclass(value):
      origin = value.__module__
    else:
      continue
    assert origin == module.__name__ or _allowed_in_configs(origin, common=is_common), (
      f"{path.name}: {name} comes from {origin}"
    )


# The AM configs whose full size reads a dataset other than the bundle.
AM_DOWNLOAD_CONFIGS = [
  "am_fc_mnist",
  "am_fc_cifar10",
  "am_fc_higgs",
  "lenet5_mnist",
  "lenet5_fashion_mnist",
  "binary_mnist",
  "rnn_mnist",
]


@pytest.mark.parametrize("name", _slow_unless(AM_DOWNLOAD_CONFIGS, MOCK_DATA_IN_DEFAULT_RUN))
def test_am_config_trains_on_its_own_dataset_under_tfds_mock_data(name, tmp_path, monkeypatch):
  """The smoke size, but on the config's own dataset (MNIST, CIFAR-10, Fashion-MNIST,
  HIGGS) served by ``tfds.testing.mock_data``: the full configs' data paths run offline."""
  monkeypatch.setenv("ALTMIN_JAX_DATA_DIR", str(tmp_path / "no-data-here"))
  # and no system copy (Debian's dataset-fashion-mnist) either: TFDS must serve the data
  monkeypatch.setattr(catalog, "SYSTEM_DATA_DIRS", (str(tmp_path / "no-system-data"),))
  path = ROOT / "experiments" / "configs" / f"{name}.py"
  config = _load(path, "smoke")
  config.dataset = _load(path, None).dataset
  assert config.dataset != "bundled_mnist"
  config.batch_size = 16
  if catalog.get_spec(config.dataset).test_rows_last is not None:  # a table: HIGGS
    config.num_train, config.num_test = 0, 16
  else:
    config.num_train = 48
  with tfds.testing.mock_data(num_examples=64):
    metrics = train.train_and_evaluate(config, str(tmp_path))
  assert metrics["source"] == "tfds"
  assert metrics["dataset"] == config.dataset
  for row in metrics["summary"]:  # Taylor's ADMM goes to NaN here; it is reported as diverged
    assert np.isfinite(row["accuracy"]) or (row["method"] == "admm" and row["diverged seeds"]), row


@pytest.mark.parametrize("name", _slow_unless(["am_fc_mnist", "rnn_mnist"], ZOOM_IN_DEFAULT_RUN))
def test_zoom_records_every_minibatch_with_wall_time_and_a_progress_bar(name, tmp_path, capsys):
  """The first-epoch zoom (paper Figure 1): one record per minibatch (plus the initial
  one), wall time that never decreases, minibatches on the x axis, and a tqdm bar."""
  config = _load(ROOT / "experiments" / "configs" / f"{name}.py", "bundled,zoom,smoke")
  config.progress = True
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert metrics["x_axis"] == "minibatches"
  # am_fc: zoom_batches minibatches; the RNN's zoom evaluates every minibatch of an epoch.
  steps = config.zoom_batches if name == "am_fc_mnist" else config.num_train // config.batch_size
  assert steps >= 3
  for label, runs in metrics["runs"].items():
    for run in runs:
      assert run["step"] == list(range(steps + 1)), label
      assert len(run["accuracy"]) == len(run["time"]) == steps + 1, label
      assert run["time"][0] == 0.0 and run["time"][-1] > 0, label
      assert np.all(np.diff(run["time"]) >= 0), label
  written = json.loads((tmp_path / "metrics.json").read_text())
  assert written["runs"] == json.loads(json.dumps(metrics["runs"]))
  assert "seed 0" in capsys.readouterr().err  # the progress bar's description


def test_eval_split_validation_measures_the_validation_samples(tmp_path):
  config = _load(ROOT / "experiments/configs/quickstart.py", "smoke")
  config.method_list = ("adam",)
  config.num_train, config.num_validation, config.eval_split = 700, 100, "validation"
  data = _training.load_dataset(config)
  assert (len(data.train[0]), len(data.validation[0])) == (700, 100)
  x_eval, _ = _training.eval_data(config, data)
  np.testing.assert_array_equal(x_eval, data.validation[0])
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert metrics["summary"][0]["method"] == "adam"
  config.eval_split = "train"
  with pytest.raises(ValueError, match="eval_split"):
    _training.load_dataset(config)
  config.eval_split, config.num_validation = "validation", 0
  with pytest.raises(ValueError, match="num_validation"):
    _training.eval_data(config, _training.load_dataset(config))


def test_unknown_experiment_method_and_dataset_fail_clearly(tmp_path):
  config = _load(ROOT / "experiments/configs/quickstart.py", "smoke")
  config.experiment = "nope"
  with pytest.raises(ValueError, match=r"unknown experiment 'nope'; known experiments: .*am_fc"):
    train.train_and_evaluate(config, str(tmp_path))
  config = _load(ROOT / "experiments/configs/quickstart.py", "smoke")
  config.method_list = ("am_adam", "lbfgs")
  with pytest.raises(ValueError, match=r"config.method_list has unknown names \['lbfgs'\]"):
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


@pytest.mark.extended
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
  assert "mnist" in out.stderr and "--config.download=True" in out.stderr
  assert "--config.data_dir" in out.stderr


def test_am_arch_method_builds_the_safeguarded_code_step_and_the_weight_epsilon():
  """``code_safeguard`` and ``weight_eps`` of an am_arch method reach the transformation:
  one step equals am_adam built by hand with the same chain and Adam epsilon."""
  import jax
  import optax

  import altmin_jax as amj
  from experiments.configs import common
  from experiments.runners import am_arch

  m = common.am_arch_method(
    weight_lr=0.01, code_lr=0.5, code_steps=1, weight_steps=1, code_safeguard=True, weight_eps=1e-9
  )
  net = amj.networks.mlp([6, 8, 7, 3])
  tx, uses_grads = am_arch.build_method(ml_collections_config("mlp"), m, net, steps_per_epoch=4)
  guard = optax.chain(optax.sgd(0.5), amj.am.scale_by_model_minimizer())
  by_hand = amj.am_adam(
    net,
    weight_optimizer=optax.adam(0.01, eps=1e-9),
    code_steps=1,
    code_lr=None,
    code_optimizer=guard,
    mu=am_arch.mu_schedule(m, 4),
  )
  params = net.init(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (5, 6))
  y = jax.numpy.array([0, 1, 2, 0, 1])
  got, _ = tx.update(None, tx.init(params), params, batch=(x, y))
  want, _ = by_hand.update(None, by_hand.init(params), params, batch=(x, y))
  assert not uses_grads
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_array_equal(a, b)
  plain = am_arch.build_method(
    ml_collections_config("mlp"),
    common.am_arch_method(weight_lr=0.01, code_lr=0.5, code_steps=1, weight_steps=1),
    net,
    steps_per_epoch=4,
  )[0]
  other, _ = plain.update(None, plain.init(params), params, batch=(x, y))
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(other)))


def ml_collections_config(architecture: str):
  import ml_collections

  return ml_collections.ConfigDict({"architecture": architecture})


def test_am_arch_method_passes_the_weight_inputs():
  """``weight_inputs`` of an am_arch method reaches am_adam (one step equals the one built by
  hand and differs from the default's); unknown values and the RNN's are refused."""
  import jax
  import optax

  import altmin_jax as amj
  from experiments.configs import common
  from experiments.runners import am_arch

  kw = dict(weight_lr=0.01, code_lr=0.5, code_steps=1, weight_steps=1)
  net = amj.networks.mlp([6, 8, 7, 3])
  params = net.init(jax.random.key(0))
  batch = (jax.random.normal(jax.random.key(1), (5, 6)), jax.numpy.array([0, 1, 2, 0, 1]))
  steps = {}
  for inputs in ("forward", "codes"):
    m = common.am_arch_method(weight_inputs=inputs, **kw)
    tx, _ = am_arch.build_method(ml_collections_config("mlp"), m, net, steps_per_epoch=4)
    by_hand = amj.am_adam(
      net,
      weight_optimizer=optax.adam(0.01),
      code_steps=1,
      code_lr=0.5,
      code_optimizer="sgd",
      mu=am_arch.mu_schedule(m, 4),
      weight_inputs=inputs,
    )
    steps[inputs], _ = tx.update(None, tx.init(params), params, batch=batch)
    want, _ = by_hand.update(None, by_hand.init(params), params, batch=batch)
    for a, b in zip(jax.tree.leaves(steps[inputs]), jax.tree.leaves(want), strict=True):
      np.testing.assert_array_equal(a, b)
  pairs = zip(jax.tree.leaves(steps["forward"]), jax.tree.leaves(steps["codes"]), strict=True)
  assert not all(np.array_equal(a, b) for a, b in pairs)
  rnn = common.am_arch_method(weight_inputs="forward", **kw)
  with pytest.raises(ValueError, match="weight_inputs"):
    am_arch.build_method(ml_collections_config("elman_rnn"), rnn, None, steps_per_epoch=4)
  config = _load(ROOT / "experiments/configs/lenet5_mnist.py", "smoke")
  config.methods.am_adam.weight_inputs = "updated"
  with pytest.raises(ValueError, match="weight_inputs"):
    am_arch.validate(config)


@pytest.mark.extended
def test_am_arch_method_trains_in_float64_when_asked(tmp_path):
  """``dtype="float64"`` trains that method in double precision only: its run equals a
  float64 run built by hand, and x64 is off again afterwards; other dtypes are refused."""
  import jax

  from experiments.runners import am_arch

  config = _load(ROOT / "experiments/configs/lenet5_mnist.py", "smoke")
  config.num_train, config.epochs, config.method_list = 256, 1, ("am_adam",)
  config.methods.am_adam.dtype = "float64"
  config.methods.am_adam.weight_eps = 1e-16
  data = am_arch.load_data(config)
  record = am_arch.train_one(config, data, "am_adam", 0)
  assert not jax.config.x64_enabled
  config.methods.am_adam.dtype = "float32"
  single = am_arch.train_one(config, data, "am_adam", 0)
  # the first evaluation (untrained weights) agrees to float32 rounding, training differs
  np.testing.assert_allclose(record["loss"][0], single["loss"][0], rtol=1e-5)
  assert record["loss"][-1] != single["loss"][-1]
  assert np.isfinite(record["loss"][-1])
  config.methods.am_adam.dtype = "float16"
  with pytest.raises(ValueError, match="dtype"):
    am_arch.validate(config)
