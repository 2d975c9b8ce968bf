"""Datasets from TensorFlow Datasets through ``tfds.data_source`` (ArrayRecord, no TensorFlow).

``tfds.data_source`` reads a prepared ArrayRecord copy with random access and decodes examples
with numpy (PNG images with OpenCV or Pillow), so reading never imports TensorFlow. Nothing is
downloaded unless ``download=True``; without it a missing copy fails at once (TFDS finds no
prepared split on disk and touches no network). With it, a prepared copy is still read
without network; otherwise the download host is probed first, so that an offline machine
fails within seconds instead of after TFDS's minutes of retries.

Notes on tensorflow-datasets 4.9:

- TFDS imports its dataset modules lazily and stops at the first module whose optional
  dependency is missing (``h5py`` for ``nearest_neighbors``), which can leave ``higgs``
  unregistered; :func:`read_tfds` imports the builder module of the dataset it reads
  (``DatasetSpec.tfds_module``) explicitly.
- Preparing (``download=True``) an image dataset encodes PNGs with TensorFlow, so that one
  step needs TensorFlow installed; HIGGS and all reading do not.
- TFDS ``higgs`` has a single ``train`` split of 11,000,000 rows stored in a shuffled order,
  so its last 500,000 rows are a random held-out set, not the UCI file's last rows. TFDS
  decodes it example by example, about 0.3 ms per row here (about an hour for all rows,
  against about two minutes for ``HIGGS.csv.gz``): prefer the CSV in a data directory, or
  ``max_rows``.
"""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Sequence
from typing import Any

import numpy as np

from altmin_jax.data.catalog import TFDS_NAMES, DatasetSpec, get_spec
from altmin_jax.data.files import Arrays, binary_labels, image_arrays

PROBE_TIMEOUT_S = 10.0
_PROGRESS_MIN = 100_000  # show a progress bar when reading at least this many examples


class TfdsUnavailableError(RuntimeError):
  """TFDS could not provide the data (not installed, not prepared, or the download failed)."""


def read_tfds(
  name: str,
  *,
  data_dir: str | os.PathLike | None = None,
  download: bool = False,
  max_rows: int | None = None,
) -> tuple[Arrays, Arrays | None]:
  """Reads dataset ``name`` with ``tfds.data_source``.

  Args:
    name: a dataset of ``catalog.TFDS_NAMES``: ``"mnist"``, ``"fashion_mnist"``,
      ``"cifar10"`` or ``"higgs"``.
    data_dir: the TFDS data directory (``None``: TFDS's default, ``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``).
    download: when no prepared copy is found, download and prepare one as ArrayRecord
      (needs network; fails within seconds when the download host cannot be reached);
      ``False`` only reads what is prepared.
    max_rows: tables (HIGGS) only: read only the first ``max_rows`` rows of the split.

  Returns:
    ``(pool, test)`` as in :func:`altmin_jax.data.files.read_local_files`: images ``uint8
    (N, H, W, C)`` and ``int32`` labels of the official train and test splits; for HIGGS the
    rows of its single split and ``None`` (the spec's ``tfds_splits``).

  Raises:
    TfdsUnavailableError: TFDS is not installed, the dataset is not prepared in ``data_dir``
      (and ``download`` is false), or downloading failed; the TFDS error is chained.
  """
  if name not in TFDS_NAMES:
    raise ValueError(f"name={name!r} is not a TFDS dataset here; TFDS datasets: {TFDS_NAMES}")
  spec = get_spec(name)
  splits = list(spec.tfds_splits)
  try:
    import tensorflow_datasets as tfds  # slow; only when TFDS is used

    importlib.import_module(spec.tfds_module)
  except ImportError as err:
    raise TfdsUnavailableError(f"tensorflow_datasets cannot be imported: {err}") from err
  try:
    sources = _data_source(tfds, spec.tfds_name, splits, data_dir, download=False)
  except TfdsUnavailableError:
    if not download:
      raise
    probe_download_host(name)  # fail in seconds, not after TFDS's minutes of retries
    sources = _data_source(tfds, spec.tfds_name, splits, data_dir, download=True)
  whats = [f"tfds {spec.tfds_name}/{split}" for split in splits]
  if spec.tabular:
    return _table_rows(spec, sources[0], whats[0], max_rows), None
  train, test = (_image_split(name, s, what) for s, what in zip(sources, whats))
  return train, test


def _data_source(tfds, name: str, splits: list[str], data_dir, *, download: bool) -> list[Any]:
  """``tfds.data_source`` for ArrayRecord files; TFDS errors become TfdsUnavailableError."""
  try:
    return tfds.data_source(
      name,
      split=splits,
      data_dir=None if data_dir is None else os.fspath(data_dir),
      download=download,
      builder_kwargs={"file_format": "array_record"},
      try_gcs=False,
    )
  except Exception as err:  # TFDS raises KeyError, NotImplementedError, OSError, ...
    what = "download or prepare" if download else "find a prepared ArrayRecord copy of"
    raise TfdsUnavailableError(
      f"TFDS could not {what} {name!r}: {type(err).__name__}: {err}"
    ) from err


def probe_download_host(name: str) -> None:
  """Raises :class:`TfdsUnavailableError` within ``PROBE_TIMEOUT_S`` seconds when the host
  TFDS downloads ``name`` from (its spec's ``download_host``) cannot be reached: offline,
  TFDS itself retries with exponential backoff for minutes before failing."""
  host, port = get_spec(name).download_host
  try:
    socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
  except OSError as err:
    raise TfdsUnavailableError(
      f"download=True but {host}:{port} cannot be reached ({err}); no network?"
    ) from err


def _indices(n: int, what: str):
  """``range(n)``, with a progress bar when ``n`` is large."""
  if n < _PROGRESS_MIN:
    return range(n)
  import tqdm

  return tqdm.tqdm(range(n), desc=f"reading {what}", unit="ex", leave=False)


def _image_split(name: str, source: Sequence[Any], what: str) -> Arrays:
  """All examples of one split, read one at a time (works for every data source, including
  ``tfds.testing.mock_data``'s) into preallocated arrays."""
  n = len(source)
  if n == 0:
    raise ValueError(f"{what} is empty")
  images = np.empty((n, *get_spec(name).example_shape), np.uint8)
  labels = np.empty(n, np.int64)
  for i in _indices(n, what):
    example = source[i]
    image = np.asarray(example["image"])
    if image.shape != images.shape[1:]:
      raise ValueError(f"{what}: example {i} has image shape {image.shape}")
    images[i], labels[i] = image, example["label"]
  return image_arrays(name, what, images, labels)


def _table_rows(spec: DatasetSpec, source: Sequence[Any], what: str, max_rows: int | None):
  """The first ``max_rows`` rows of a table's split, features in the file's column order."""
  n = len(source) if max_rows is None else min(len(source), max_rows)
  x = np.empty((n, len(spec.features)), np.float32)
  labels = np.empty(n, np.float32)
  for i in _indices(n, what):
    example = source[i]
    x[i] = [example[f] for f in spec.features]  # the CSV's column order
    labels[i] = example[spec.label_feature]
  return x, binary_labels(labels, what, exact=False)  # a float feature
