"""altmin_jax.data local file readers: IDX (compressed or not), ``.npz`` (images and
tables), the HIGGS csv, and unreadable or malformed files named in a ``ValueError``."""

import gzip
from unittest import mock

import numpy as np
import pytest
from data_fixtures import (
  higgs_table,
  raw_images,
  raw_labels,
  system_data_dir_fixture,  # noqa: F401 (autouse: no test reads /usr/share/datasets)
  write_higgs_csv,
  write_mnist_idx,
  write_truncated,
)

from altmin_jax import data
from altmin_jax.data import catalog, core, files

# ----------------------------------------------------------------------------- readers


@pytest.mark.parametrize("name", files.IDX_DATASETS)
@pytest.mark.parametrize("compress", [True, False])
def test_idx_files_give_paper_style_splits(tmp_path, name, compress):
  raw = write_mnist_idx(tmp_path / name, compress=compress)
  ds = data.load_dataset(name, data_dir=tmp_path, source="files", num_train=20)
  assert ds.source == f"files:{tmp_path / name}"
  assert [len(p[0]) for p in (ds.train, ds.validation, ds.test)] == [20, 10, 10]
  mean, std = catalog.SPECS[name].mean[0], catalog.SPECS[name].std[0]
  pixels = raw["train_images"].reshape(30, -1) / 255
  np.testing.assert_allclose(ds.train[0], (pixels[:20] - mean) / std, atol=1e-5)
  np.testing.assert_allclose(ds.validation[0], (pixels[20:] - mean) / std, atol=1e-5)
  np.testing.assert_array_equal(ds.test[1], raw["test_labels"])
  np.testing.assert_array_equal(ds.train[1], raw["train_labels"][:20])


def test_env_var_names_the_data_dir_and_local_files_come_first(tmp_path, monkeypatch):
  write_mnist_idx(tmp_path / "fashion_mnist")
  monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
  monkeypatch.setattr(core, "read_tfds", mock.Mock(side_effect=AssertionError("TFDS used")))
  ds = data.load_dataset("fashion_mnist", num_train=25, num_validation=5)
  assert ds.source.startswith("files:") and len(ds.validation[0]) == 5


@pytest.mark.parametrize("nested", [False, True])
def test_npz_files(tmp_path, nested):
  folder = tmp_path / "mnist" if nested else tmp_path
  folder.mkdir(exist_ok=True)
  x_train, y_train = raw_images(12, (28, 28), 0), raw_labels(12, 1)
  np.savez(
    folder / "mnist.npz",
    x_train=x_train,
    y_train=y_train,
    x_test=raw_images(4, (28, 28, 1), 2),
    y_test=raw_labels(4, 3),
  )
  ds = data.load_dataset("mnist", data_dir=tmp_path, num_train=10, normalization="none")
  assert ds.source == f"files:{folder / 'mnist.npz'}"
  np.testing.assert_allclose(ds.train[0], x_train[:10].reshape(10, -1) / 255, atol=1e-7)
  np.testing.assert_array_equal(ds.validation[1], y_train[10:])
  assert ds.test[0].shape == (4, 784)


def test_malformed_npz_files_fail_clearly(tmp_path):
  np.savez(tmp_path / "mnist.npz", x_train=raw_images(4, (28, 28), 0), y_train=raw_labels(4, 0))
  with pytest.raises(ValueError, match="x_test"):
    data.load_dataset("mnist", data_dir=tmp_path, num_train=2)
  good = dict(
    y_train=raw_labels(4, 0), x_test=raw_images(2, (32, 32, 3), 0), y_test=raw_labels(2, 0)
  )
  np.savez(tmp_path / "cifar10.npz", x_train=raw_images(4, (3, 32, 32), 0), **good)
  with pytest.raises(ValueError, match="shape"):
    data.load_dataset("cifar10", data_dir=tmp_path, num_train=2)
  np.savez(tmp_path / "cifar10.npz", x_train=np.zeros((4, 32, 32, 3)), **good)
  with pytest.raises(ValueError, match="integer pixels"):
    data.load_dataset("cifar10", data_dir=tmp_path, num_train=2)


def test_higgs_csv_first_rows_test_tail_and_training_statistics(tmp_path):
  table = higgs_table(60)
  # Rows after the 50th are not parseable: reading only the first rows must skip them.
  write_higgs_csv(tmp_path / "HIGGS.csv.gz", table, extra_lines="not,a,number\n")
  ds = data.load_dataset("higgs", data_dir=tmp_path, max_rows=50, num_test=10)
  assert ds.source == f"files:{tmp_path / 'HIGGS.csv.gz'}" and ds.num_classes == 2
  assert (ds.train[0].shape, ds.validation, ds.test[0].shape) == ((40, 28), None, (10, 28))
  features, labels = table[:, 1:], table[:, 0].astype(np.int32)
  np.testing.assert_array_equal(ds.train[1], labels[:40])
  np.testing.assert_array_equal(ds.test[1], labels[40:50])  # the last rows read test
  mean, std = features[:40].mean(0), features[:40].std(0)
  np.testing.assert_allclose(ds.mean, mean, rtol=1e-5)
  np.testing.assert_allclose(ds.std, std, rtol=1e-5)
  np.testing.assert_allclose(ds.train[0].mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(ds.test[0], (features[40:50] - mean) / std, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError):  # the whole file includes the malformed line
    data.load_dataset("higgs", data_dir=tmp_path, num_test=10)
  with pytest.raises(ValueError, match="num_test=500000"):  # the standard 500k test rows
    data.load_dataset("higgs", data_dir=tmp_path, max_rows=50)


def test_higgs_subdirectory_npz_and_bad_labels(tmp_path):
  table = higgs_table(20, seed=1)
  (tmp_path / "higgs").mkdir()
  write_higgs_csv(tmp_path / "higgs" / "HIGGS.csv.gz", table)
  from_csv = data.load_dataset("higgs", data_dir=tmp_path, num_test=5, num_train=12, split_seed=0)
  assert [len(p[0]) for p in (from_csv.train, from_csv.validation, from_csv.test)] == [12, 3, 5]
  np.testing.assert_array_equal(from_csv.test[1], table[15:, 0])  # test rows never shuffled
  npz_dir = tmp_path / "npz"  # a CSV would be found before an npz in the same directory
  npz_dir.mkdir()
  np.savez(npz_dir / "higgs.npz", x=table[:, 1:], y=table[:, 0])
  from_npz = data.load_dataset("higgs", data_dir=npz_dir, num_test=5, num_train=12, split_seed=0)
  assert from_npz.source.endswith("higgs.npz")
  np.testing.assert_allclose(from_npz.train[0], from_csv.train[0], atol=1e-5)
  np.savez(npz_dir / "higgs.npz", x=table[:, 1:], y=table[:, 0] * 2 - 1)  # -1 / +1 labels
  with pytest.raises(ValueError, match="0 or 1"):
    data.load_dataset("higgs", data_dir=npz_dir, num_test=5)


# ----------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("damage", ["truncated", "not gzip"])
def test_unreadable_gz_files_name_the_file(tmp_path, damage):
  write_mnist_idx(tmp_path / "mnist")
  bad = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
  if damage == "truncated":
    write_truncated(bad)
  else:  # an uncompressed IDX file under the .gz name
    with gzip.open(bad, "rb") as f:
      bad.write_bytes(f.read())
  with pytest.raises(ValueError, match=rf"{bad} is not a complete gzip file"):
    data.load_dataset("mnist", data_dir=tmp_path, num_train=20)
  write_higgs_csv(tmp_path / "HIGGS.csv.gz", higgs_table(200))
  write_truncated(tmp_path / "HIGGS.csv.gz")
  with pytest.raises(ValueError, match=rf"{tmp_path / 'HIGGS.csv.gz'} is not a complete gzip"):
    data.load_dataset("higgs", data_dir=tmp_path, num_test=5)


def test_truncated_uncompressed_idx_file_names_the_file(tmp_path):
  write_mnist_idx(tmp_path / "mnist", compress=False)
  bad = tmp_path / "mnist" / "t10k-labels-idx1-ubyte"
  write_truncated(bad, keep=0.9)
  with pytest.raises(ValueError, match=rf"{bad} holds \d+ bytes, its header implies"):
    data.load_dataset("mnist", data_dir=tmp_path, num_train=20)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "npy"])
def test_corrupt_npz_files_name_the_file(tmp_path, damage):
  path = tmp_path / "cifar10.npz"
  arrays = dict(
    x_train=raw_images(4, (32, 32, 3), 0),
    y_train=raw_labels(4, 0),
    x_test=raw_images(2, (32, 32, 3), 1),
    y_test=raw_labels(2, 1),
  )
  np.savez(path, **arrays)
  if damage == "truncated":
    write_truncated(path)
  elif damage == "garbage":
    path.write_bytes(b"not an archive" * 100)
  else:  # a plain .npy saved under the .npz name
    with open(path, "wb") as f:
      np.save(f, arrays["x_train"])
  with pytest.raises(ValueError, match=rf"{path} (is not a readable|holds a single array)"):
    data.load_dataset("cifar10", data_dir=tmp_path, num_train=2)


@pytest.mark.parametrize("labels", [[0.0, 1.0, 2.0, 3.0], [0.5, 1.0, 2.0, 3.9]])
def test_float_labels_in_npz_are_rejected_not_truncated(tmp_path, labels):
  np.savez(
    tmp_path / "mnist.npz",
    x_train=raw_images(4, (28, 28), 0),
    y_train=np.asarray(labels),
    x_test=raw_images(2, (28, 28), 1),
    y_test=raw_labels(2, 1),
  )
  with pytest.raises(ValueError, match=r"mnist\.npz: mnist labels y_train must be integers"):
    data.load_dataset("mnist", data_dir=tmp_path, num_train=2)
  table = higgs_table(20)
  for y in (table[:, 0] * 0.6, table[:, 0] + 0.4):  # 0.6 and 1.4 are neither 0 nor 1
    np.savez(tmp_path / "higgs.npz", x=table[:, 1:], y=y)
    with pytest.raises(ValueError, match=r"higgs\.npz \(y\): HIGGS labels must be 0 or 1"):
      data.load_dataset("higgs", data_dir=tmp_path, num_test=5)
