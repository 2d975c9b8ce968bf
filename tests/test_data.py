"""altmin_jax.data: every loader path (bundle, local IDX / npz / HIGGS csv, TFDS through
``tfds.data_source`` under ``tfds.testing.mock_data`` and from a real ArrayRecord copy), the
paper's splits and normalization, seeded iterators, and clear, fast, offline errors."""

import doctest
import gzip
import hashlib
import os
import socket
import subprocess
import sys
import textwrap
import time
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds

from altmin_jax import data
from altmin_jax.data import bundled, catalog, core, files

TFDS_NAMES = ("mnist", "fashion_mnist", "cifar10", "higgs")


# ----------------------------------------------------------------------------- helpers


def write_idx(path, array, compress=True):
  """Writes ``array`` (uint8) in the IDX format of the MNIST files."""
  array = np.asarray(array, np.uint8)
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
  opener = gzip.open if compress else open
  with opener(path, "wb") as f:
    f.write(header + array.tobytes())


def raw_images(n, shape, seed):
  return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def raw_labels(n, seed, num_classes=10):
  return np.random.default_rng(seed).integers(0, num_classes, n).astype(np.uint8)


def write_mnist_idx(directory, n_train=30, n_test=10, compress=True):
  """The four IDX files of a tiny MNIST-format dataset; returns the raw arrays."""
  directory.mkdir(parents=True, exist_ok=True)
  arrays = {
    "train_images": raw_images(n_train, (28, 28), 1),
    "train_labels": raw_labels(n_train, 2),
    "test_images": raw_images(n_test, (28, 28), 3),
    "test_labels": raw_labels(n_test, 4),
  }
  for key, filename in catalog.IDX_FILES.items():
    name = filename if compress else filename.removesuffix(".gz")
    write_idx(directory / name, arrays[key], compress)
  return arrays


def higgs_table(n, seed=0):
  """A HIGGS-like table: label in {0, 1}, then 28 features with different scales."""
  rng = np.random.default_rng(seed)
  table = np.round(rng.normal(size=(n, 29)) * np.arange(1, 30) + np.arange(29), 4)
  table[:, 0] = rng.integers(0, 2, n)
  return table.astype(np.float32)


def write_higgs_csv(path, table, extra_lines=""):
  with gzip.open(path, "wt") as f:
    np.savetxt(f, table, fmt="%.6f", delimiter=",")
    f.write(extra_lines)


@pytest.fixture(autouse=True)
def system_data_dir(tmp_path, monkeypatch):
  """The system data directory searched after the user's: an empty folder of this test's
  own (so that no test depends on what ``/usr/share/datasets`` holds on the machine)."""
  root = tmp_path / "system_datasets"
  monkeypatch.setattr(catalog, "SYSTEM_DATA_DIRS", (str(root),))
  monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
  return root


@pytest.fixture
def no_network(monkeypatch):
  """Records (and blocks) every attempt to open a network connection."""
  attempts = []

  def refuse(*args, **kwargs):
    attempts.append(args)
    raise OSError("network access attempted in an offline test")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "getaddrinfo", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  return attempts


# ----------------------------------------------------------------------------- bundle


def test_bundled_files_have_the_official_checksums():
  md5 = {}
  for filename in (bundled.IMAGES, bundled.LABELS):
    with gzip.open(bundled.BUNDLED_DIR / filename, "rb") as f:
      md5[filename] = hashlib.md5(f.read()).hexdigest()
  assert md5 == {
    bundled.IMAGES: "2646ac647ad5339dbf082846283269ea",
    bundled.LABELS: "27ae3e4e09519cfbb04c329615203637",
  }
  assert (bundled.BUNDLED_DIR / "ATTRIBUTION.md").is_file()


def test_bundled_default_split_keeps_its_contract():
  images, labels = data.bundled_mnist()
  ds = data.load_dataset("bundled_mnist", num_train=8000, split_seed=None)
  (x, y), (xt, yt) = ds.train, ds.test
  assert (x.shape, y.shape, xt.shape, yt.shape) == ((8000, 784), (8000,), (2000, 784), (2000,))
  assert (x.dtype, y.dtype) == (np.float32, np.int32)
  assert (ds.num_classes, ds.input_shape, ds.source, ds.validation) == (10, (784,), "bundled", None)
  # First 8,000 samples train, the rest is held out, normalised with MNIST's mean and std.
  expected = (images.reshape(10000, -1).astype(np.float32) / 255 - 0.1307) / 0.3081
  np.testing.assert_array_equal(x, expected[:8000])  # bit for bit as before
  np.testing.assert_array_equal(xt, expected[8000:])
  np.testing.assert_array_equal(np.concatenate([y, yt]), labels)
  images_layout = data.load_dataset("bundled_mnist", num_train=8000, flatten=False).train[0]
  assert images_layout.shape == (8000, 28, 28, 1)
  np.testing.assert_array_equal(images_layout.reshape(8000, -1), x)


def test_bundled_split_seed_shuffles_deterministically():
  _, labels = data.bundled_mnist()
  a = data.load_dataset("bundled_mnist", num_train=8000, split_seed=3)
  b = data.load_dataset("bundled_mnist", num_train=8000, split_seed=3)
  c = data.load_dataset("bundled_mnist", num_train=8000, split_seed=4)
  np.testing.assert_array_equal(a.train[0], b.train[0])
  assert not np.array_equal(a.train[1], c.train[1])
  order = np.random.default_rng(3).permutation(10000)
  np.testing.assert_array_equal(np.concatenate([a.train[1], a.test[1]]), labels[order])


def test_bundled_validation_part_sits_between_train_and_test():
  full = data.load_dataset("bundled_mnist", num_train=8000)
  ds = data.load_dataset("bundled_mnist", num_train=6000, num_validation=2000)
  assert [len(p[0]) for p in (ds.train, ds.validation, ds.test)] == [6000, 2000, 2000]
  np.testing.assert_array_equal(ds.validation[0], full.train[0][6000:])
  np.testing.assert_array_equal(ds.test[0], full.test[0])
  with pytest.raises(ValueError, match="num_train=8000"):
    data.load_dataset("bundled_mnist", num_train=8000, num_validation=2000)  # no test left


# ----------------------------------------------------------------------------- normalization


def test_normalization_modes_on_the_bundle():
  images, _ = data.bundled_mnist()
  pixels = images[:8000].reshape(8000, -1).astype(np.float32) / 255
  standard = data.load_dataset("bundled_mnist")
  assert standard.mean.tolist() == pytest.approx([0.1307]) and standard.std.tolist() == (
    pytest.approx([0.3081])
  )
  np.testing.assert_allclose(standard.train[0] * 0.3081 + 0.1307, pixels, atol=1e-6)
  train = data.load_dataset("bundled_mnist", normalization="train")
  assert abs(train.train[0].mean()) < 1e-4 and abs(train.train[0].std() - 1) < 1e-4
  assert train.mean[0] == pytest.approx(pixels.mean(), abs=1e-6)  # training part only
  test_pixels = images[8000:].reshape(2000, -1) / 255
  np.testing.assert_allclose(train.test[0], (test_pixels - train.mean) / train.std, atol=1e-5)
  none = data.load_dataset("bundled_mnist", normalization="none")
  assert none.mean is None and none.std is None
  np.testing.assert_allclose(none.train[0], pixels, atol=0)


def test_cifar10_normalises_per_channel(tmp_path):
  rng = np.random.default_rng(0)
  offsets = np.array([30, 120, 200], np.int64)  # channels with different means
  x_train = np.clip(rng.integers(0, 50, (40, 32, 32, 3)) + offsets, 0, 255).astype(np.uint8)
  x_test = raw_images(8, (32, 32, 3), 1)
  np.savez(
    tmp_path / "cifar10.npz",
    x_train=x_train,
    y_train=raw_labels(40, 2),
    x_test=x_test,
    y_test=raw_labels(8, 3),
  )
  ds = data.load_dataset("cifar10", data_dir=tmp_path, num_train=30, flatten=False)
  assert ds.train[0].shape == (30, 32, 32, 3) and ds.validation[0].shape == (10, 32, 32, 3)
  mean, std = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2470, 0.2435, 0.2616])
  np.testing.assert_allclose(ds.train[0] * std + mean, x_train[:30] / 255, atol=1e-5)
  per_channel = data.load_dataset(
    "cifar10", data_dir=tmp_path, num_train=30, flatten=False, normalization="train"
  )
  x = per_channel.train[0].reshape(-1, 3)
  np.testing.assert_allclose(x.mean(0), 0, atol=1e-4)
  np.testing.assert_allclose(x.std(0), 1, atol=1e-4)
  np.testing.assert_allclose(
    per_channel.mean, (x_train[:30] / 255).reshape(-1, 3).mean(0), atol=1e-6
  )
  # Flattened vectors keep the (H, W, C) order.
  flat = data.load_dataset("cifar10", data_dir=tmp_path, num_train=30)
  np.testing.assert_array_equal(flat.train[0], ds.train[0].reshape(30, -1))


# ----------------------------------------------------------------------------- local files


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
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


def test_split_seed_shuffles_only_the_training_pool(tmp_path):
  raw = write_mnist_idx(tmp_path / "mnist")
  kwargs = dict(data_dir=tmp_path, num_train=20)
  a, b = (
    data.load_dataset("mnist", split_seed=1, **kwargs),
    data.load_dataset("mnist", split_seed=1, **kwargs),
  )
  ordered = data.load_dataset("mnist", **kwargs)
  np.testing.assert_array_equal(a.train[0], b.train[0])
  np.testing.assert_array_equal(a.validation[1], b.validation[1])
  np.testing.assert_array_equal(a.test[0], ordered.test[0])  # the official test split stays
  order = np.random.default_rng(1).permutation(30)
  np.testing.assert_array_equal(a.train[1], raw["train_labels"][order[:20]])
  np.testing.assert_array_equal(a.validation[1], raw["train_labels"][order[20:]])


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


def test_default_split_sizes_follow_the_paper():
  """MNIST / Fashion-MNIST 50,000 + 10,000, CIFAR-10 40,000 + 10,000, HIGGS 10.5M + 0.5M."""
  for name, pool, train in [
    ("mnist", 60_000, 50_000),
    ("fashion_mnist", 60_000, 50_000),
    ("cifar10", 50_000, 40_000),
  ]:
    idx = np.arange(pool)
    tr, val, test = core._split(
      catalog.SPECS[name], (idx, idx), (idx[:5], idx[:5]), None, None, None, None
    )
    np.testing.assert_array_equal(tr[0], idx[:train])
    np.testing.assert_array_equal(val[0], idx[train:])
  rows = np.arange(11_000_000, dtype=np.int32)
  tr, val, test = core._split(catalog.SPECS["higgs"], (rows, rows), None, None, None, None, None)
  assert (len(tr[0]), val, len(test[0])) == (10_500_000, None, 500_000)
  assert tr[0][-1] == 10_499_999 and test[0][0] == 10_500_000


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


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
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


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_errors_never_suggest_writing_into_the_system_data_dir(system_data_dir, name):
  system_data_dir.mkdir()
  with pytest.raises(data.DataNotAvailableError) as info:
    data.load_dataset(name, data_dir=system_data_dir, source="files")
  message = str(info.value)
  place = [line for line in message.splitlines() if "place" in line or "npz with" in line]
  assert place and all(str(system_data_dir) not in line for line in place)
  assert f"<your data_dir>/{name}/" in message
  if name == "fashion_mnist":  # the Debian package, found without a flag once installed
    assert "apt-get install dataset-fashion-mnist" in message
    assert f"{system_data_dir / 'fashion-mnist'}/" in message


# ----------------------------------------------------------------------------- bad files


def write_truncated(path, keep=0.5):
  content = path.read_bytes()
  path.write_bytes(content[: int(len(content) * keep)])


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


@pytest.mark.parametrize("split_seed", [-1, 1.5, "3", True, np.float32(2)])
def test_bad_split_seed_names_the_argument(split_seed):
  with pytest.raises(ValueError, match=r"split_seed must be None .* got split_seed="):
    data.load_dataset("bundled_mnist", split_seed=split_seed)


# ----------------------------------------------------------------------------- TFDS


@pytest.mark.parametrize("name", TFDS_NAMES)
def test_tfds_data_source_under_mock_data(name, no_network):
  spec = catalog.SPECS[name]
  kwargs = dict(num_test=4) if name == "higgs" else dict(num_train=8)
  with tfds.testing.mock_data(num_examples=12):
    ds = data.load_dataset(name, source="tfds", normalization="none", flatten=False, **kwargs)
    raw = tfds.data_source(name, split="train", download=False)
    raw = [raw[i] for i in range(12)]
  assert ds.source == "tfds" and ds.num_classes == spec.num_classes and no_network == []
  assert ds.train[0].dtype == np.float32 and ds.train[1].dtype == np.int32
  if name == "higgs":  # one split: the last num_test rows test, the rest train
    assert (ds.train[0].shape, ds.validation, ds.test[0].shape) == ((8, 28), None, (4, 28))
    expected = [[ex[f] for f in catalog.HIGGS_FEATURES] for ex in raw]  # CSV column order
    np.testing.assert_allclose(ds.train[0], np.asarray(expected[:8], np.float32))
    np.testing.assert_allclose(ds.test[0], np.asarray(expected[8:], np.float32))
    np.testing.assert_array_equal(ds.train[1], [round(float(ex["class_label"])) for ex in raw[:8]])
  else:  # official train split -> train + validation, official test split -> test
    assert ds.train[0].shape == (8, *spec.example_shape) and len(ds.validation[0]) == 4
    assert len(ds.test[0]) == 12
    np.testing.assert_allclose(
      ds.train[0] * 255, np.stack([ex["image"] for ex in raw[:8]]), atol=1e-4
    )
    np.testing.assert_array_equal(ds.validation[1], [ex["label"] for ex in raw[8:]])


@pytest.mark.parametrize("name", TFDS_NAMES)
def test_tfds_download_flag_and_auto_fallback_under_mock_data(tmp_path, name, monkeypatch):
  """``download=True`` tries the prepared copy first, then probes the host and asks TFDS
  to download (here: a missing copy is simulated, the probe and the download are mocked);
  ``source="auto"`` without local files falls back to TFDS."""
  from altmin_jax.data import tfds as tfds_loader

  real, calls = tfds_loader._data_source, []

  def missing_until_downloaded(tfds_module, name_, splits, data_dir, *, download):
    calls.append(download)
    if not download:
      raise tfds_loader.TfdsUnavailableError("no prepared copy (simulated)")
    return real(tfds_module, name_, splits, data_dir, download=False)  # mock_data's copy

  kwargs = dict(num_test=2) if name == "higgs" else dict(num_train=4)
  with tfds.testing.mock_data(num_examples=6):
    with monkeypatch.context() as patch:
      patch.setattr(tfds_loader, "_data_source", missing_until_downloaded)
      patch.setattr(tfds_loader, "probe_download_host", lambda n: calls.append(f"probe {n}"))
      with pytest.raises(data.DataNotAvailableError):
        data.load_dataset(name, source="tfds", tfds_data_dir=tmp_path / "tfds", **kwargs)
      assert calls == [False]
      downloaded = data.load_dataset(name, source="tfds", download=True, **kwargs)
      assert calls == [False, False, f"probe {name}", True]
    auto = data.load_dataset(name, data_dir=tmp_path, **kwargs)  # no local files here
  assert downloaded.source == auto.source == "tfds"
  size = int(np.prod(catalog.SPECS[name].example_shape))
  assert downloaded.train[0].shape == (4, size)
  if name != "higgs":
    mean = np.asarray(catalog.SPECS[name].mean, np.float32)
    np.testing.assert_array_equal(auto.mean, mean)  # the paper's constants, not mock statistics


def test_download_without_network_fails_fast(tmp_path, no_network):
  start = time.perf_counter()
  unreachable = r"archive\.ics\.uci\.edu:443 cannot be reached"
  with pytest.raises(data.DataNotAvailableError, match=unreachable):
    data.load_dataset("higgs", source="tfds", download=True, tfds_data_dir=tmp_path)
  assert time.perf_counter() - start < 10 and len(no_network) == 1  # one probe, no retries


@pytest.fixture(scope="module")
def prepared_higgs(tmp_path_factory):
  """A real (not mocked) TFDS ``higgs`` ArrayRecord copy, prepared offline from a tiny CSV."""
  root = tmp_path_factory.mktemp("tfds_higgs")
  table = higgs_table(40, seed=2)
  np.savetxt(root / "HIGGS.csv", table, fmt="%.6f", delimiter=",")
  fake_download = lambda self, url: os.fspath(root / "HIGGS.csv")
  with mock.patch.object(tfds.download.DownloadManager, "download_and_extract", fake_download):
    builder = tfds.builder("higgs", data_dir=root / "tfds", file_format="array_record")
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
        compute_stats=tfds.download.ComputeStatsMode.SKIP
      )
    )
  return root / "tfds", table


def test_tfds_reads_a_prepared_array_record_copy(prepared_higgs, tmp_path, no_network):
  tfds_dir, table = prepared_higgs
  ds = data.load_dataset(
    "higgs", data_dir=tmp_path, tfds_data_dir=tfds_dir, num_test=10, normalization="none"
  )
  assert ds.source == "tfds" and no_network == []
  rows = np.concatenate([np.c_[ds.train[1], ds.train[0]], np.c_[ds.test[1], ds.test[0]]])
  # TFDS stores the rows shuffled: the same rows, columns in the CSV's order.
  sort = lambda t: t[np.lexsort(t.T[::-1])]
  np.testing.assert_allclose(sort(rows), sort(table), atol=1e-5)
  first = data.load_dataset(
    "higgs", source="tfds", tfds_data_dir=tfds_dir, max_rows=15, num_test=5, normalization="none"
  )
  np.testing.assert_array_equal(first.test[0], ds.train[0][10:15])
  again = data.load_dataset(
    "higgs", source="tfds", download=True, tfds_data_dir=tfds_dir, num_test=10, normalization="none"
  )  # prepared: no network needed
  np.testing.assert_array_equal(again.train[0], ds.train[0])
  assert no_network == []


def test_reading_never_imports_tensorflow():
  """All four TFDS datasets load in a process where TensorFlow cannot be imported."""
  script = textwrap.dedent(
    """
    import sys

    class HideTensorFlow:  # wraps each import finder: TensorFlow looks not installed
      def __init__(self, finder):
        self.finder = finder

      def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
          return None
        return self.finder.find_spec(name, path, target)

      def __getattr__(self, attr):
        return getattr(self.finder, attr)

    sys.meta_path[:] = [HideTensorFlow(finder) for finder in sys.meta_path]
    import tensorflow_datasets as tfds
    from altmin_jax import data

    with tfds.testing.mock_data(num_examples=6):
      for name in ("mnist", "fashion_mnist", "cifar10"):
        assert data.load_dataset(name, source="tfds", num_train=4).train[0].shape[0] == 4
      assert data.load_dataset("higgs", source="tfds", num_test=2).test[0].shape == (2, 28)
    assert not any(m.split(".")[0] == "tensorflow" for m in sys.modules)
    print("ok")
    """
  )
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  result = subprocess.run(
    [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
  )
  assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", TFDS_NAMES)
def test_missing_dataset_fails_fast_offline_and_says_how_to_get_it(name, tmp_path, no_network):
  start = time.perf_counter()
  with pytest.raises(data.DataNotAvailableError) as info:
    data.load_dataset(name, data_dir=tmp_path, tfds_data_dir=tmp_path / "tfds")
  assert time.perf_counter() - start < 10 and no_network == []
  message = str(info.value)
  assert isinstance(info.value, FileNotFoundError)
  assert "download=True" in message and str(tmp_path / name) in message
  assert "not available" in message and "bundled_mnist" in message
  expected_file = {"higgs": "HIGGS.csv.gz", "cifar10": "cifar10.npz"}.get(
    name, "train-images-idx3-ubyte.gz"
  )
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


def test_too_few_samples_for_the_default_split(tmp_path):
  write_mnist_idx(tmp_path / "mnist")
  with pytest.raises(ValueError, match="num_train=50000"):
    data.load_dataset("mnist", data_dir=tmp_path)
  with pytest.raises(ValueError, match="num_validation=20"):
    data.load_dataset("mnist", data_dir=tmp_path, num_train=20, num_validation=20)


# ----------------------------------------------------------------------------- batches


def test_iterate_batches_is_seeded_per_epoch_and_covers_each_example_once():
  x, y = np.arange(50, dtype=np.float32)[:, None], np.arange(50)
  epoch = lambda **kw: [b[1] for b in data.iterate_batches(x, y, 8, seed=1, **kw)]
  first, again, second = epoch(epoch=0), epoch(epoch=0), epoch(epoch=1)
  assert len(first) == 6 and all(len(b) == 8 for b in first)  # 50 // 8, remainder dropped
  np.testing.assert_array_equal(np.concatenate(first), np.concatenate(again))
  assert not np.array_equal(np.concatenate(first), np.concatenate(second))
  full = epoch(epoch=2, drop_remainder=False)
  assert len(full[-1]) == 2 and sorted(np.concatenate(full).tolist()) == list(range(50))
  ordered = epoch(shuffle=False)
  np.testing.assert_array_equal(np.concatenate(ordered), np.arange(48))
  for bx, by in data.iterate_batches(x, y, 8, seed=3):
    np.testing.assert_array_equal(bx[:, 0], by)  # inputs stay paired with their labels
  with pytest.raises(ValueError, match="shape"):
    next(data.iterate_batches(x, y[:10], 8))
  with pytest.raises(ValueError, match="batch_size=0"):
    next(data.iterate_batches(x, y, 0))


def test_docstring_examples_run():
  for module in (data, core, files):
    result = doctest.testmod(module, raise_on_error=False, verbose=False)
    assert result.attempted > 0 and result.failed == 0, module.__name__
