"""altmin_jax.data catalog: the facts of each ``DatasetSpec`` and the tables derived from them,
unknown names and bad arguments, the offline ``DataNotAvailableError`` saying how to get a
dataset, and the docstring examples."""

import ast
import pathlib
import re
import time

import numpy as np
import pytest
from data_fixtures import (
  no_network_fixture,  # noqa: F401
  system_data_dir_fixture,  # noqa: F401 (autouse: no test reads /usr/share/datasets)
)

import altmin_jax
from altmin_jax import data
from altmin_jax.data import catalog, core, files

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The file a missing dataset's message names first, by the spec's first file format.
FIRST_FILE = {"idx": "train-images-idx3-ubyte.gz", "higgs_csv": "HIGGS.csv.gz", "npz": "{name}.npz"}


# ----------------------------------------------------------------------------- specs


@pytest.mark.parametrize("name", list(catalog.SPECS))
def test_each_spec_states_consistent_facts(name):
  spec = catalog.SPECS[name]
  assert spec.name == name and spec.is_image != spec.tabular
  if spec.is_image:
    assert len(spec.mean) == len(spec.std) == spec.example_shape[-1]
  else:  # a table: named columns, standardised with training statistics
    assert spec.mean is None and spec.std is None
    assert len(spec.features) == spec.example_shape[0]
  # One test set: the official split, the table's last rows, or the bundle's remaining samples.
  sources = [spec.test_size is not None, spec.test_rows_last is not None, spec.bundled]
  assert sources.count(True) == 1, sources
  assert (spec.test_rows_last is not None) == spec.tabular
  training_pool = spec.pool_size - (spec.test_rows_last or 0)
  assert spec.num_train is None or 0 < spec.num_train < training_pool
  assert (spec.file_formats and set(spec.file_formats) <= set(files.FORMATS)) or spec.bundled
  if spec.tfds_name:
    host, port = spec.download_host
    assert host and port in (80, 443) and spec.tfds_module.startswith("tensorflow_datasets.")
    assert spec.tfds_splits == (("train",) if spec.tabular else ("train", "test"))
  else:
    assert spec.bundled and spec.download_host is None and not spec.file_formats


def test_the_other_tables_derive_from_the_specs():
  specs = catalog.SPECS
  assert data.DATASETS == tuple(specs) and data.SPECS is specs
  assert catalog.TFDS_NAMES == tuple(n for n, s in specs.items() if s.tfds_name)
  assert catalog.DEBIAN_PACKAGES == {
    n: s.debian_package for n, s in specs.items() if s.debian_package
  }
  assert files.IDX_DATASETS == tuple(n for n, s in specs.items() if "idx" in s.file_formats)
  assert set(files.FORMATS) == set(catalog.FILE_FORMATS)
  with pytest.raises(ValueError, match="unknown file_formats"):
    catalog.DatasetSpec("x", 2, (3,), None, None, None, "", file_formats=("csv",))


def _dataset_name_literals(path, names):
  """``(line, name)`` of each dataset name compared, used as a dict key or listed (outside
  ``__all__``, whose ``"bundled_mnist"`` names a function)."""
  tree = ast.parse(path.read_text())
  exports = [
    node.value
    for node in ast.walk(tree)
    if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets)
  ]
  for node in ast.walk(tree):
    if any(node is export for export in exports):
      continue
    if isinstance(node, ast.Compare):
      parts = [node.left, *node.comparators]
    elif isinstance(node, ast.Dict):
      parts = node.keys
    elif isinstance(node, ast.Tuple | ast.List | ast.Set):
      parts = node.elts
    else:
      continue
    for part in parts:
      if isinstance(part, ast.Constant) and part.value in names:
        yield node.lineno, part.value


def test_no_module_outside_the_catalog_branches_on_a_dataset_name():
  """Loaders read spec attributes (``tabular``, ``bundled``, ``test_rows_last``, the file
  formats) instead of comparing names or keeping tables keyed by them."""
  package = pathlib.Path(altmin_jax.__file__).parent
  found = {
    f"{path.relative_to(package)}:{line}": name
    for path in sorted(package.rglob("*.py"))
    if path != package / "data" / "catalog.py"
    for line, name in _dataset_name_literals(path, set(catalog.SPECS))
  }
  assert found == {}


def test_docstring_table_and_readme_describe_every_dataset():
  doc = core.load_dataset.__doc__
  readme = (ROOT / "README.md").read_text()
  data_section = readme.split("## Data", 1)[1].split("\n## ", 1)[0]
  for name, spec in catalog.SPECS.items():
    assert re.search(rf"^ +{name} ", doc, re.M), name  # a row of the table
    assert f"`{name}`" in data_section, name
    if spec.num_train:
      assert f"{spec.num_train:,}" in doc, name
    if spec.mean:
      assert f"{spec.mean[0]:.4f}" in doc and f"{spec.std[0]:.4f}" in doc, name
    if spec.test_rows_last:
      assert f"{spec.test_rows_last:,}" in doc and f"{spec.test_rows_last:,}" in data_section
  packages = re.findall(r"apt-get install ([\w-]+)", data_section)
  assert packages and set(packages) == set(catalog.DEBIAN_PACKAGES.values())


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", catalog.TFDS_NAMES)
def test_missing_dataset_fails_fast_offline_and_says_how_to_get_it(name, tmp_path, no_network):
  start = time.perf_counter()
  with pytest.raises(data.DataNotAvailableError) as info:
    data.load_dataset(name, data_dir=tmp_path, tfds_data_dir=tmp_path / "tfds")
  assert time.perf_counter() - start < 10 and no_network == []
  message = str(info.value)
  assert isinstance(info.value, FileNotFoundError)
  assert "download=True" in message and str(tmp_path / name) in message
  assert "not available" in message and "bundled_mnist" in message
  expected_file = FIRST_FILE[catalog.SPECS[name].file_formats[0]].format(name=name)
  assert expected_file in message


def test_missing_dataset_errors_per_source(tmp_path, monkeypatch, no_network):
  monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
  with pytest.raises(data.DataNotAvailableError, match=data.DATA_DIR_ENV):
    data.load_dataset("mnist", source="files")
  with pytest.raises(data.DataNotAvailableError, match="TFDS") as info:
    data.load_dataset("cifar10", source="tfds", tfds_data_dir=tmp_path)
  assert "local files" not in str(info.value).split("To get")[0]
  assert no_network == []


def test_unknown_names_and_bad_arguments_fail_clearly():
  with pytest.raises(
    ValueError, match=r"name='mnsit'.*bundled_mnist, mnist, fashion_mnist, cifar10, higgs"
  ):
    data.load_dataset("mnsit")
  bad = [
    (dict(name="mnist", source="web"), "source='web'"),
    (dict(name="mnist", normalization="zca"), "normalization='zca'"),
    (dict(name="mnist", max_rows=10), "max_rows=10"),
    (dict(name="cifar10", num_test=10), "num_test=10"),
    (dict(name="bundled_mnist", source="tfds"), "source='tfds'"),
    (dict(name="mnist", source="bundled"), "source='bundled'"),
    (dict(name="mnist", source="files", download=True), "download=True"),
    (dict(name="bundled_mnist", num_train=-1), "num_train=-1"),
    (dict(name="higgs", max_rows=0), "max_rows=0"),
  ]
  for kwargs, match in bad:
    with pytest.raises(ValueError, match=match.replace("(", r"\(")):
      data.load_dataset(**kwargs)


@pytest.mark.parametrize("split_seed", [-1, 1.5, "3", True, np.float32(2)])
def test_bad_split_seed_names_the_argument(split_seed):
  with pytest.raises(ValueError, match=r"split_seed must be None .* got split_seed="):
    data.load_dataset("bundled_mnist", split_seed=split_seed)
