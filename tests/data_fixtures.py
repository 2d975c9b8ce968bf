"""Shared data-test helpers: writers of tiny IDX / HIGGS files and the fixtures that keep
the ``altmin_jax.data`` tests offline and independent of the machine's system data directory.

Imported by the ``tests/test_data_*.py`` modules. A module imports the fixtures
(``*_fixture``, registered under the name without the suffix) to use them: the autouse
``system_data_dir`` then applies to that module only, never to the rest of the suite."""

import gzip
import socket

import numpy as np
import pytest

from altmin_jax import data
from altmin_jax.data import catalog


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


def write_truncated(path, keep=0.5):
  content = path.read_bytes()
  path.write_bytes(content[: int(len(content) * keep)])


@pytest.fixture(autouse=True, name="system_data_dir")
def system_data_dir_fixture(tmp_path, monkeypatch):
  """The system data directory searched after the user's: an empty folder of this test's
  own (so that no test depends on what ``/usr/share/datasets`` holds on the machine)."""
  root = tmp_path / "system_datasets"
  monkeypatch.setattr(catalog, "SYSTEM_DATA_DIRS", (str(root),))
  monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
  return root


@pytest.fixture(name="no_network")
def no_network_fixture(monkeypatch):
  """Records (and blocks) every attempt to open a network connection."""
  attempts = []

  def refuse(*args, **kwargs):
    attempts.append(args)
    raise OSError("network access attempted in an offline test")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "getaddrinfo", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  return attempts
