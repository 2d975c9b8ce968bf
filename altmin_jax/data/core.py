"""Datasets, splits, normalization and batch iterators: the entry point :func:`load_dataset`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import numpy as np

from altmin_jax.data.bundled import bundled_mnist
from altmin_jax.data.catalog import (
  DATA_DIR_ENV,
  DataNotAvailableError,
  DatasetSpec,
  get_spec,
  how_to_get,
  names_where,
  resolve_data_dir,
)
from altmin_jax.data.files import Arrays, read_local_files, search_local_files
from altmin_jax.data.tfds import TfdsUnavailableError, read_tfds

SOURCES = ("auto", "files", "tfds", "bundled")
NORMALIZATIONS = ("standard", "train", "none")
_CHUNK = 1 << 18  # rows per chunk when computing statistics (bounds float64 temporaries)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Train / validation / test arrays of one dataset, ready for a model.

  Attributes:
    name: dataset name.
    train: ``(x, y)`` training arrays (``x`` float32, ``y`` int32).
    test: ``(x, y)`` test arrays: the official test split, the last ``num_test`` HIGGS rows,
      or for ``bundled_mnist`` the samples after the training (and validation) part.
    num_classes: number of label classes.
    source: where the data came from: ``"bundled"``, ``"tfds"`` or ``"files:<path>"``.
    input_shape: (property) shape of one example, ``x.shape[1:]``.
    validation: ``(x, y)`` held out from the training split, or ``None`` when empty.
    mean, std: the statistics used, ``x = (raw - mean) / std`` per channel (images, with raw
      pixels scaled to ``[0, 1]``) or per feature (HIGGS); ``None`` for no normalization.
  """

  name: str
  train: tuple[np.ndarray, np.ndarray]
  test: tuple[np.ndarray, np.ndarray]
  num_classes: int
  source: str
  validation: tuple[np.ndarray, np.ndarray] | None = None
  mean: np.ndarray | None = None
  std: np.ndarray | None = None

  @property
  def input_shape(self) -> tuple[int, ...]:
    """Shape of one input example, e.g. ``(784,)`` or ``(28, 28, 1)``."""
    return tuple(self.train[0].shape[1:])


def load_dataset(
  name: str = "bundled_mnist",
  *,
  data_dir: str | os.PathLike | None = None,
  source: str = "auto",
  tfds_data_dir: str | os.PathLike | None = None,
  download: bool = False,
  num_train: int | None = None,
  num_validation: int | None = None,
  num_test: int | None = None,
  max_rows: int | None = None,
  split_seed: int | None = None,
  flatten: bool = True,
  normalization: str = "standard",
) -> Dataset:
  """Loads a dataset as normalised numpy arrays split into train / validation / test.

  Datasets (``altmin_jax.data.catalog.SPECS``):

  ============= ========================= ====================== ==========================
  name          raw data                  default split          ``"standard"`` normalization
  ============= ========================= ====================== ==========================
  bundled_mnist MNIST 10k test set,       first 8,000 train,     mean 0.1307, std 0.3081
                shipped in the package    the rest test
  mnist         60k train / 10k test      first 50,000 train,    mean 0.1307, std 0.3081
                                          last 10,000 validation
  fashion_mnist 60k train / 10k test      as mnist               mean 0.2860, std 0.3530
  cifar10       50k train / 10k test      first 40,000 train,    per channel mean (0.4914,
                32x32x3                   last 10,000 validation 0.4822, 0.4465), std
                                                                 (0.2470, 0.2435, 0.2616)
  higgs         11M rows, 28 features,    last 500,000 rows      per feature, with the
                label 0/1                 test, the rest train   training rows' statistics
  ============= ========================= ====================== ==========================

  The splits follow the AM paper (Choromanska et al. 2019, section 4 and supplement D):
  MNIST's first 50,000 and CIFAR-10's first 40,000 training samples train and the rest of
  the training split validates; the official test split tests; HIGGS uses 10.5M rows to
  train and the last 500,000 to test. Image normalization constants are the usual
  per-dataset (per-channel for CIFAR-10) pixel mean and standard deviation of the full
  training split.

  Where the data comes from (``source``):

  - ``"files"``: files in ``data_dir`` (default ``$ALTMIN_JAX_DATA_DIR``), then in the
    system data directories (``/usr/share/datasets``, where Debian's
    ``dataset-fashion-mnist`` installs ``fashion-mnist/``): IDX ``.gz`` files in
    ``<dir>/<name>/`` or ``<dir>/<hyphenated-name>/`` (or directly in ``data_dir``) for
    mnist / fashion_mnist, ``HIGGS.csv.gz`` in ``<dir>/higgs/`` or ``<dir>/``, or
    ``<dir>/<name>.npz`` with arrays ``x_train, y_train, x_test, y_test`` (HIGGS: ``x, y``);
    see :mod:`altmin_jax.data.files`.
  - ``"tfds"``: a copy prepared by TFDS in ArrayRecord format, read with
    ``tfds.data_source`` (no TensorFlow); see :mod:`altmin_jax.data.tfds`.
  - ``"bundled"``: only for ``bundled_mnist``.
  - ``"auto"``: local files if ``data_dir`` (or the variable) or a system data directory
    holds them, else a prepared
    TFDS copy (downloaded first when ``download=True``); ``bundled_mnist`` is always read
    from the package.

  Nothing is downloaded unless ``download=True``. A dataset that is not available raises
  :class:`DataNotAvailableError` at once, listing what was tried and how to get the data.

  Args:
    name: ``"bundled_mnist"``, ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"`` or ``"higgs"``.
    data_dir: directory with local files; ``None`` uses ``$ALTMIN_JAX_DATA_DIR`` if set.
      The system data directories are searched after it in every case.
    source: ``"auto"``, ``"files"``, ``"tfds"`` or ``"bundled"``.
    tfds_data_dir: TFDS data directory (``None``: ``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``).
    download: let TFDS download and prepare the dataset (needs network).
    num_train: training samples, taken from the front of the training pool (the official
      training split; the bundle; the HIGGS rows before the test rows); default as above.
    num_validation: validation samples following the training ones; default: the rest of
      the pool (none for ``bundled_mnist``, whose remaining samples form the test set).
    num_test: HIGGS only: the number of final rows forming the test set (default 500,000;
      set it when reading a part of the file with ``max_rows``).
    max_rows: HIGGS only: read only the first ``max_rows`` rows.
    split_seed: ``None`` keeps the file order (the paper's convention); an integer >= 0 shuffles
      the pool with ``np.random.default_rng(split_seed)`` before splitting it (the official
      test split and the HIGGS test rows stay fixed).
    flatten: return each example as a vector (for MLPs) instead of ``(H, W, C)``.
    normalization: ``"standard"`` (the constants above; HIGGS: training statistics),
      ``"train"`` (mean and std of the training part: per channel for images, per feature
      for HIGGS) or ``"none"`` (pixels scaled to [0, 1]; HIGGS unchanged).

  Returns:
    A :class:`Dataset`; ``x`` is float32 (``(N, D)`` flattened or ``(N, H, W, C)``), ``y``
    int32.

  Raises:
    ValueError: unknown ``name`` (the message lists the known ones), an invalid argument,
      or unreadable or malformed files (the message names the file).
    DataNotAvailableError: the dataset is not available from the requested source.

  Example:
    >>> ds = load_dataset("bundled_mnist", num_train=8000, split_seed=None)
    >>> ds.train[0].shape, ds.test[0].shape, ds.train[1].dtype, ds.validation
    ((8000, 784), (2000, 784), dtype('int32'), None)
    >>> load_dataset("bundled_mnist", num_train=6000, num_validation=2000,
    ...              flatten=False).validation[0].shape
    (2000, 28, 28, 1)
  """
  spec = get_spec(name)
  _check_arguments(
    spec, source, download, num_train, num_validation, num_test, max_rows, split_seed, normalization
  )
  pool, test, where = _read(spec, data_dir, source, tfds_data_dir, download, max_rows)
  train, validation, test = _split(
    spec, pool, test, num_train, num_validation, num_test, split_seed
  )
  mean, std = _statistics(spec, train[0], normalization)
  prepare = lambda part: (
    None if part is None else (_normalize(spec, part[0], mean, std, flatten), part[1])
  )
  return Dataset(
    name=name,
    train=prepare(train),
    test=prepare(test),
    num_classes=spec.num_classes,
    source=where,
    validation=prepare(validation),
    mean=mean,
    std=std,
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
  """Minibatches of one epoch; the order depends only on ``(seed, epoch)``.

  Args:
    x, y: inputs and labels with the same leading dimension.
    batch_size: examples per batch.
    seed, epoch: the permutation is ``np.random.default_rng((seed, epoch))``'s, so epochs
      differ and a run is reproducible.
    shuffle: ``False`` yields the examples in order.
    drop_remainder: drop the last incomplete batch (keeps shapes static under ``jax.jit``).

  Example:
    >>> x, y = np.arange(10.0)[:, None], np.arange(10)
    >>> [b[1].tolist() for b in iterate_batches(x, y, 4, shuffle=False)]
    [[0, 1, 2, 3], [4, 5, 6, 7]]
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got batch_size={batch_size!r}")
  if len(x) != len(y):
    raise ValueError(
      f"x and y need the same leading shape, got shapes {np.shape(x)} and {np.shape(y)}"
    )
  n = len(x)
  order = np.random.default_rng((seed, epoch)).permutation(n) if shuffle else np.arange(n)
  stop = n - n % batch_size if drop_remainder else n
  for start in range(0, stop, batch_size):
    idx = order[start : start + batch_size]
    yield x[idx], y[idx]


def _check_arguments(
  spec: DatasetSpec,
  source,
  download,
  num_train,
  num_validation,
  num_test,
  max_rows,
  split_seed,
  normalization,
):
  """Validates the arguments of :func:`load_dataset` before any data is read."""
  if split_seed is not None and (
    isinstance(split_seed, bool) or not isinstance(split_seed, int | np.integer) or split_seed < 0
  ):
    raise ValueError(
      f"split_seed must be None (keep the file order) or a non-negative integer, got"
      f" split_seed={split_seed!r}"
    )
  if source not in SOURCES:
    raise ValueError(f"unknown source={source!r}; choose one of {SOURCES}")
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"unknown normalization={normalization!r}; choose one of {NORMALIZATIONS}")
  if spec.bundled and source not in ("auto", "bundled"):
    raise ValueError(f"{spec.name} is read from the package; got source={source!r}")
  if not spec.bundled and source == "bundled":
    bundled = _names(lambda s: s.bundled)
    raise ValueError(f"only {bundled} is bundled, got source={source!r} for {spec.name!r}")
  if download and source not in ("auto", "tfds"):
    raise ValueError(f"download=True needs source 'auto' or 'tfds', got source={source!r}")
  for arg, value in (("num_train", num_train), ("num_validation", num_validation)):
    if value is not None and (not isinstance(value, int | np.integer) or value < 0):
      raise ValueError(f"{arg} must be a non-negative integer, got {arg}={value!r}")
  for arg, value in (("num_test", num_test), ("max_rows", max_rows)):
    if value is None:
      continue
    if spec.test_rows_last is None:  # a table whose test rows are its last rows
      tables = _names(lambda s: s.test_rows_last is not None)
      raise ValueError(f"{arg} applies to {tables} only, got {arg}={value!r} for {spec.name!r}")
    if not isinstance(value, int | np.integer) or value < 1:
      raise ValueError(f"{arg} must be a positive integer, got {arg}={value!r}")


def _names(predicate) -> str:
  """The quoted names of the datasets whose spec satisfies ``predicate``, for messages."""
  return " or ".join(repr(name) for name in names_where(predicate))


def _read(spec: DatasetSpec, data_dir, source, tfds_data_dir, download, max_rows):
  """``(pool, test, source description)`` of raw arrays from the first source that has them."""
  if spec.bundled:
    images, labels = bundled_mnist()
    return (images[..., None], labels), None, "bundled"
  directory = resolve_data_dir(data_dir)
  tried, cause = [], None
  if source in ("auto", "files"):
    search = search_local_files(spec.name, directory)
    if search.path is not None:
      pool, test = read_local_files(
        spec.name, search.path, file_format=search.file_format, max_rows=max_rows
      )
      return pool, test, f"files:{search.path}"
    if directory is None:
      tried.append(f"local files: no data directory given (data_dir= or ${DATA_DIR_ENV})")
    tried += [f"local files: {line}" for line in search.tried]
  if source in ("auto", "tfds"):
    try:
      pool, test = read_tfds(
        spec.name, data_dir=tfds_data_dir, download=download, max_rows=max_rows
      )
      return pool, test, "tfds"
    except TfdsUnavailableError as err:
      tried.append(f"TFDS ({'download' if download else 'no download'}): {err}")
      cause = err
  message = "\n".join(
    [f"dataset {spec.name!r} is not available (source={source!r}). Tried:"]
    + [f"  - {line}" for line in tried]
    + [how_to_get(spec.name, directory)]
  )
  raise DataNotAvailableError(message) from cause


def _split(
  spec: DatasetSpec,
  pool: Arrays,
  test: Arrays | None,
  num_train,
  num_validation,
  num_test,
  split_seed,
) -> tuple[Arrays, Arrays | None, Arrays]:
  x, y = pool
  if spec.test_rows_last is not None:  # the test rows are the table's last rows, never shuffled
    n_test = spec.test_rows_last if num_test is None else num_test
    if n_test >= len(x):
      raise ValueError(
        f"num_test={n_test!r} must be smaller than the {len(x)} {spec.name} rows read;"
        " pass a smaller num_test (for example with max_rows)"
      )
    test = (x[len(x) - n_test :], y[len(x) - n_test :])
    x, y = x[: len(x) - n_test], y[: len(x) - n_test]
  n = len(x)
  if split_seed is not None:
    order = np.random.default_rng(split_seed).permutation(n)
    x, y = x[order], y[order]
  n_train = (spec.num_train or n) if num_train is None else num_train
  if spec.bundled:  # the samples after the training (and validation) part test
    n_val = 0 if num_validation is None else num_validation
    if not (0 < n_train and n_train + n_val < n):
      raise ValueError(
        f"num_train must lie in (0, {n - n_val}) so that test samples remain,"
        f" got num_train={n_train!r}"
      )
  else:
    if not 0 < n_train <= n:
      raise ValueError(
        f"num_train must lie in (0, {n}] for the {n} {spec.name} training"
        f" samples, got num_train={n_train!r}"
      )
    n_val = n - n_train if num_validation is None else num_validation
    if n_train + n_val > n:
      raise ValueError(
        f"num_train + num_validation exceed the {n} {spec.name} training"
        f" samples, got num_validation={n_val!r}"
      )
  stop = n_train + n_val
  validation = (x[n_train:stop], y[n_train:stop]) if n_val else None
  if spec.bundled:
    test = (x[stop:], y[stop:])
  return (x[:n_train], y[:n_train]), validation, test


def _statistics(spec: DatasetSpec, x_train: np.ndarray, normalization: str):
  """``(mean, std)`` float32 arrays (per channel or feature) for ``normalization``."""
  if normalization == "none":
    return None, None
  if spec.is_image and normalization == "standard":
    return np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
  rows = x_train.reshape(-1, x_train.shape[-1])  # one column per channel or feature
  scale = 255.0 if spec.is_image else 1.0
  chunks = range(0, len(rows), _CHUNK)
  mean = sum(rows[i : i + _CHUNK].sum(0, dtype=np.float64) for i in chunks) / len(rows)
  var = sum(np.square(rows[i : i + _CHUNK] - mean).sum(0) for i in chunks) / len(rows)
  std = np.sqrt(var)
  std = np.where(std > 0, std, scale)  # constant channels or features stay unscaled
  return (mean / scale).astype(np.float32), (std / scale).astype(np.float32)


def _normalize(spec: DatasetSpec, x: np.ndarray, mean, std, flatten: bool) -> np.ndarray:
  x = x.astype(np.float32)  # a new array: the operations below work in place
  if spec.is_image:
    x /= np.float32(255.0)
  if mean is not None:
    x -= mean
    x /= std
  return x.reshape(len(x), -1) if flatten else x
