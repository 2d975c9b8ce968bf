"""altmin_jax.data search order: the user's data directory, then the system data directories
(Debian's ``dataset-*`` folders) found without a flag, folder names, partial IDX sets, and
errors that never suggest writing into a package-managed folder."""

from unittest import mock

import numpy as np
import pytest
from data_fixtures import (
  system_data_dir_fixture,  # noqa: F401 (autouse: no test reads /usr/share/datasets)
  write_mnist_idx,
)

from altmin_jax import data
from altmin_jax.data import catalog, core, files

# ----------------------------------------------------------------------------- search order


def test_system_data_dir_is_found_without_a_flag(system_data_dir, monkeypatch):
  """Debian's dataset-fashion-mnist layout: /usr/share/datasets/fashion-mnist/*.gz."""
  raw = write_mnist_idx(system_data_dir / "fashion-mnist")
  monkeypatch.setattr(core, "read_tfds", mock.Mock(side_effect=AssertionError("TFDS used")))
  ds = data.load_dataset("fashion_mnist", num_train=20, normalization="none")
  assert ds.source == f"files:{system_data_dir / 'fashion-mnist'}"
  np.testing.assert_array_equal(ds.train[1], raw["train_labels"][:20])
  np.testing.assert_array_equal(ds.test[1], raw["test_labels"])
  # The two failing calls: the system root and the package folder itself.
  for data_dir in (system_data_dir, system_data_dir / "fashion-mnist"):
    ds = data.load_dataset("fashion_mnist", data_dir=data_dir, num_train=20)
    assert ds.source == f"files:{system_data_dir / 'fashion-mnist'}"


@pytest.mark.parametrize("name", files.IDX_DATASETS)
def test_users_data_dir_comes_before_the_system_one(tmp_path, system_data_dir, name):
  write_mnist_idx(system_data_dir / name.replace("_", "-"), n_train=40)
  write_mnist_idx(tmp_path / "mine" / name, n_train=30)
  ds = data.load_dataset(name, data_dir=tmp_path / "mine", num_train=20)
  assert ds.source == f"files:{tmp_path / 'mine' / name}" and len(ds.validation[0]) == 10
  from_system = data.load_dataset(name, data_dir=tmp_path / "empty", num_train=20)
  assert from_system.source == f"files:{system_data_dir / name.replace('_', '-')}"
  assert len(from_system.validation[0]) == 20


@pytest.mark.parametrize("folder", ["fashion_mnist", "fashion-mnist", "."])
def test_folder_names_and_idx_files_directly_in_data_dir(tmp_path, folder):
  raw = write_mnist_idx(tmp_path / "d" / folder, compress=folder != ".")
  ds = data.load_dataset("fashion_mnist", data_dir=tmp_path / "d", num_train=20)
  expected = tmp_path / "d" if folder == "." else tmp_path / "d" / folder
  assert ds.source == f"files:{expected}"
  np.testing.assert_array_equal(ds.validation[1], raw["train_labels"][20:])


def test_a_folder_named_after_the_other_dataset_is_not_read_as_this_one(tmp_path):
  write_mnist_idx(tmp_path / "fashion-mnist")
  with pytest.raises(data.DataNotAvailableError) as info:
    data.load_dataset("mnist", data_dir=tmp_path / "fashion-mnist", source="files")
  assert "the folder's name says they hold 'fashion_mnist'" in str(info.value)
  ds = data.load_dataset("fashion_mnist", data_dir=tmp_path / "fashion-mnist", num_train=20)
  assert ds.source == f"files:{tmp_path / 'fashion-mnist'}"


@pytest.mark.parametrize("missing", ["train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"])
def test_a_partial_set_of_idx_files_names_the_missing_ones(tmp_path, missing):
  write_mnist_idx(tmp_path / "mnist")
  (tmp_path / "mnist" / missing).unlink()
  with pytest.raises(data.DataNotAvailableError) as info:
    data.load_dataset("mnist", data_dir=tmp_path, source="files")
  message = str(info.value)
  assert f"{tmp_path / 'mnist'} holds" in message and f"but lacks {missing}" in message
  assert "none of the expected files" not in message and "no mnist files" not in message


def test_a_partial_set_warns_when_a_complete_one_follows(tmp_path, system_data_dir):
  write_mnist_idx(tmp_path / "fashion_mnist")
  (tmp_path / "fashion_mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
  write_mnist_idx(system_data_dir / "fashion-mnist")
  with pytest.warns(
    UserWarning, match=r"lacks t10k-labels-idx1-ubyte.gz .*; reading the complete set in"
  ):
    ds = data.load_dataset("fashion_mnist", data_dir=tmp_path, num_train=20)
  assert ds.source == f"files:{system_data_dir / 'fashion-mnist'}"


@pytest.mark.parametrize("name", files.IDX_DATASETS)
def test_errors_never_suggest_writing_into_the_system_data_dir(system_data_dir, name):
  system_data_dir.mkdir()
  with pytest.raises(data.DataNotAvailableError) as info:
    data.load_dataset(name, data_dir=system_data_dir, source="files")
  message = str(info.value)
  place = [line for line in message.splitlines() if "place" in line or "npz with" in line]
  assert place and all(str(system_data_dir) not in line for line in place)
  assert f"<your data_dir>/{name}/" in message
  package = catalog.SPECS[name].debian_package
  if package:  # fashion_mnist's Debian package, found without a flag once installed
    assert f"apt-get install {package}" in message
    assert f"{system_data_dir / name.replace('_', '-')}/" in message
