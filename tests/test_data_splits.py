"""altmin_jax.data splits and normalization: the bundled MNIST split, the paper's default
splits, ``split_seed``, per-dataset and training-statistics normalization, seeded batches."""

import gzip
import hashlib

import numpy as np
import pytest
from data_fixtures import (
  raw_images,
  raw_labels,
  system_data_dir_fixture,  # noqa: F401 (autouse: no test reads /usr/share/datasets)
  write_mnist_idx,
)

from altmin_jax import data
from altmin_jax.data import bundled, catalog, core

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


# ----------------------------------------------------------------------------- paper splits


def test_default_split_sizes_follow_the_paper():
  """MNIST / Fashion-MNIST 50,000 + 10,000, CIFAR-10 40,000 + 10,000, HIGGS 10.5M + 0.5M."""
  for name, pool, train in [
    ("mnist", 60_000, 50_000),
    ("fashion_mnist", 60_000, 50_000),
    ("cifar10", 50_000, 40_000),
  ]:
    assert catalog.SPECS[name].pool_size == pool
    idx = np.arange(pool)
    tr, val, test = core._split(
      catalog.SPECS[name], (idx, idx), (idx[:5], idx[:5]), None, None, None, None
    )
    np.testing.assert_array_equal(tr[0], idx[:train])
    np.testing.assert_array_equal(val[0], idx[train:])
  assert catalog.SPECS["higgs"].pool_size == 11_000_000
  rows = np.arange(11_000_000, dtype=np.int32)
  tr, val, test = core._split(catalog.SPECS["higgs"], (rows, rows), None, None, None, None, None)
  assert (len(tr[0]), val, len(test[0])) == (10_500_000, None, 500_000)
  assert tr[0][-1] == 10_499_999 and test[0][0] == 10_500_000


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


def test_too_few_samples_for_the_default_split(tmp_path):
  write_mnist_idx(tmp_path / "mnist")
  with pytest.raises(ValueError, match="num_train=50000"):
    data.load_dataset("mnist", data_dir=tmp_path)
  with pytest.raises(ValueError, match="num_validation=20"):
    data.load_dataset("mnist", data_dir=tmp_path, num_train=20, num_validation=20)


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
