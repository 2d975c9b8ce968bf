"""Datasets, splits and batch iterators."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from altmin_jax.data.bundled import bundled_mnist

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Train / held-out arrays of one dataset, ready for a model.

  Attributes:
    name: dataset name.
    train: ``(x, y)`` training arrays.
    test: ``(x, y)`` held-out arrays.
    num_classes: number of label classes.
    source: where the data came from (``"bundled"``, a directory, ``"tfds"``).
  """

  name: str
  train: tuple[np.ndarray, np.ndarray]
  test: tuple[np.ndarray, np.ndarray]
  num_classes: int
  source: str

  @property
  def input_shape(self) -> tuple[int, ...]:
    return tuple(self.train[0].shape[1:])


def normalize_mnist(images: np.ndarray, flatten: bool = True) -> np.ndarray:
  """Scales pixels to [0, 1] and standardises with the MNIST mean and std."""
  x = (images.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD
  return x.reshape(len(x), -1) if flatten else x[..., None]


def load_dataset(
  name: str = "bundled_mnist",
  *,
  num_train: int = 8000,
  split_seed: int | None = None,
  flatten: bool = True,
) -> Dataset:
  """Loads a dataset split into train and held-out parts.

  Args:
    name: ``"bundled_mnist"``, the MNIST 10k test split shipped with the package.
    num_train: samples in the training part; the rest is held out.
    split_seed: ``None`` takes the first ``num_train`` samples for training and the
      rest for held-out evaluation (the papers' convention); an integer shuffles the
      samples with that seed first.
    flatten: return images as vectors (``True``) or ``(28, 28, 1)`` arrays.
  """
  if name != "bundled_mnist":
    raise ValueError(f"unknown dataset {name!r}; available offline: 'bundled_mnist'")
  images, labels = bundled_mnist()
  if not 0 < num_train < len(images):
    raise ValueError(f"num_train must lie in (0, {len(images)}), got num_train={num_train!r}")
  order = (
    np.arange(len(images))
    if split_seed is None
    else np.random.default_rng(split_seed).permutation(len(images))
  )
  x = normalize_mnist(images[order], flatten)
  y = labels[order]
  return Dataset(
    name=name,
    train=(x[:num_train], y[:num_train]),
    test=(x[num_train:], y[num_train:]),
    num_classes=10,
    source="bundled",
  )


def iterate_batches(
  x: np.ndarray,
  y: np.ndarray,
  batch_size: int,
  *,
  seed: int = 0,
  epoch: int = 0,
  shuffle: bool = True,
  drop_remainder: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Minibatches of one epoch; the order depends only on ``(seed, epoch)``."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got batch_size={batch_size!r}")
  n = len(x)
  order = np.random.default_rng((seed, epoch)).permutation(n) if shuffle else np.arange(n)
  stop = n - n % batch_size if drop_remainder else n
  for start in range(0, stop, batch_size):
    idx = order[start : start + batch_size]
    yield x[idx], y[idx]
