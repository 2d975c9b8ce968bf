"""Datasets from local files in a data directory (no network, no TFDS).

Layout of a data directory ``D`` (given as ``data_dir=`` or ``$ALTMIN_JAX_DATA_DIR``), one
entry per dataset name, the first found wins:

- ``mnist``, ``fashion_mnist``: the four original IDX files in ``D/<name>/``
  (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
  ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``; uncompressed files without
  ``.gz`` work too).
- ``higgs``: ``D/higgs/HIGGS.csv.gz`` or ``D/HIGGS.csv.gz`` (or ``HIGGS.csv``), the UCI file:
  no header, the label (``0.0`` / ``1.0``) in the first column, then the 28 features.
- any of ``mnist``, ``fashion_mnist``, ``cifar10``: ``D/<name>.npz`` or ``D/<name>/<name>.npz``
  with integer pixel arrays ``x_train`` ``(N, H, W)`` or ``(N, H, W, C)`` in ``0..255``,
  integer labels ``y_train`` ``(N,)``, and ``x_test`` / ``y_test`` likewise (the official
  splits; ``keras.datasets`` arrays saved with ``np.savez`` have this form).
- ``higgs`` as ``.npz``: arrays ``x`` ``(N, 28)`` and ``y`` ``(N,)`` holding the table rows
  in the CSV's order (the test set is carved from the end as for the CSV).
"""

from __future__ import annotations

import gzip
import os

import numpy as np

from altmin_jax.data.catalog import (
  HIGGS_CSV,
  HIGGS_FEATURES,
  IDX_FILES,
  NPZ_IMAGE_KEYS,
  NPZ_TABLE_KEYS,
  get_spec,
)
from altmin_jax.data.idx import read_idx

Arrays = tuple[np.ndarray, np.ndarray]


def find_local_files(name: str, data_dir: str) -> str | None:
  """The path (a directory of IDX files, a CSV or an ``.npz``) holding ``name`` in ``data_dir``.

  Returns ``None`` when none of the layouts in this module's docstring is present.
  """
  spec = get_spec(name)
  sub = os.path.join(data_dir, name)
  if name in ("mnist", "fashion_mnist") and all(
    _existing(os.path.join(sub, f)) for f in IDX_FILES.values()
  ):
    return sub
  if name == "higgs":
    for folder in (sub, data_dir):
      if path := _existing(os.path.join(folder, HIGGS_CSV)):
        return path
  if spec.name != "bundled_mnist":
    for path in (os.path.join(data_dir, f"{name}.npz"), os.path.join(sub, f"{name}.npz")):
      if os.path.isfile(path):
        return path
  return None


def read_local_files(
  name: str, path: str, *, max_rows: int | None = None
) -> tuple[Arrays, Arrays | None]:
  """Reads what :func:`find_local_files` found.

  Returns:
    ``(pool, test)``: the official training split and test split as raw arrays (images
    ``uint8 (N, H, W, C)``, labels ``int32``); for HIGGS ``pool`` holds all rows read
    (features ``float32 (N, 28)``) and ``test`` is ``None``.

  Raises:
    ValueError: if the files do not have the shapes or values the dataset needs.
  """
  spec = get_spec(name)
  if path.endswith(".npz"):
    if spec.is_image:
      return _read_image_npz(name, path)
    return _read_table_npz(path, max_rows), None
  if name == "higgs":
    return read_higgs_csv(path, max_rows=max_rows), None
  files = {k: _existing(os.path.join(path, f)) for k, f in IDX_FILES.items()}
  train = image_arrays(name, path, read_idx(files["train_images"]), read_idx(files["train_labels"]))
  test = image_arrays(name, path, read_idx(files["test_images"]), read_idx(files["test_labels"]))
  return train, test


def read_higgs_csv(path: str | os.PathLike, *, max_rows: int | None = None) -> Arrays:
  """Reads the HIGGS table (``HIGGS.csv.gz`` or plain ``.csv``).

  Args:
    path: the file; rows are ``label,f1,...,f28`` with no header.
    max_rows: read only the first ``max_rows`` rows (``None``: all 11,000,000, about two
      minutes and 1.3 GB of memory).

  Returns:
    ``(x float32 (N, 28), y int32 (N,))``.

  Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "HIGGS.csv")
    >>> with open(path, "w") as f:
    ...   _ = f.write("1.0" + ",0.5" * 28 + "\\n" + "0.0" + ",-1" * 28 + "\\n")
    >>> x, y = read_higgs_csv(path)
    >>> x.shape, y.tolist()
    ((2, 28), [1, 0])
  """
  path = os.fspath(path)
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.float32, max_rows=max_rows, ndmin=2)
  width = 1 + len(HIGGS_FEATURES)
  if table.shape[1] != width:
    raise ValueError(
      f"{path}: rows must hold a label and 28 features ({width} columns), got shape {table.shape}"
    )
  return table[:, 1:], binary_labels(table[:, 0], path)  # a view: avoids a 1.2 GB copy


def binary_labels(labels: np.ndarray, what: str) -> np.ndarray:
  """``0.0`` / ``1.0`` HIGGS labels as ``int32``; ``ValueError`` for anything else."""
  y = np.rint(np.asarray(labels, np.float64)).astype(np.int32)
  if y.size and (y.min() < 0 or y.max() > 1):
    raise ValueError(f"{what}: HIGGS labels must be 0 or 1, got values in [{y.min()}, {y.max()}]")
  return y


def image_arrays(name: str, what: str, images: np.ndarray, labels: np.ndarray) -> Arrays:
  """Checks raw images and labels of dataset ``name``; returns ``uint8 (N, H, W, C)``, ``int32``.

  Raises:
    ValueError: on a wrong shape, a non-integer pixel array, or labels out of range.
  """
  spec = get_spec(name)
  images, labels = np.asarray(images), np.asarray(labels)
  if images.ndim == 3 and spec.example_shape[-1] == 1:
    images = images[..., None]
  if images.shape[1:] != spec.example_shape or labels.shape != images.shape[:1]:
    raise ValueError(
      f"{what}: {name} needs images of shape (N, *{spec.example_shape}) and"
      f" labels of shape (N,), got shapes {images.shape} and {labels.shape}"
    )
  if not np.issubdtype(images.dtype, np.integer):
    raise ValueError(
      f"{what}: {name} images must hold integer pixels 0..255, got dtype {images.dtype}"
    )
  if images.size and (images.min() < 0 or images.max() > 255):
    raise ValueError(f"{what}: {name} pixels must lie in 0..255")
  if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
    raise ValueError(f"{what}: {name} labels must lie in 0..{spec.num_classes - 1}")
  return images.astype(np.uint8, copy=False), labels.astype(np.int32)


def _read_image_npz(name: str, path: str) -> tuple[Arrays, Arrays]:
  with np.load(path, allow_pickle=False) as f:
    missing = [k for k in NPZ_IMAGE_KEYS if k not in f]
    if missing:
      raise ValueError(f"{path} lacks arrays {missing}; expected keys {list(NPZ_IMAGE_KEYS)}")
    train = image_arrays(name, path, f["x_train"], f["y_train"])
    test = image_arrays(name, path, f["x_test"], f["y_test"])
  return train, test


def _read_table_npz(path: str, max_rows: int | None) -> Arrays:
  with np.load(path, allow_pickle=False) as f:
    missing = [k for k in NPZ_TABLE_KEYS if k not in f]
    if missing:
      raise ValueError(f"{path} lacks arrays {missing}; expected keys {list(NPZ_TABLE_KEYS)}")
    x, y = f["x"][:max_rows], f["y"][:max_rows]
  if x.ndim != 2 or x.shape[1] != len(HIGGS_FEATURES) or y.shape != x.shape[:1]:
    raise ValueError(
      f"{path}: higgs needs x of shape (N, 28) and y of shape (N,), got shapes"
      f" {x.shape} and {y.shape}"
    )
  return x.astype(np.float32), binary_labels(y, path)


def _existing(path: str) -> str | None:
  """``path`` or ``path`` without ``.gz`` when that file exists, else ``None``."""
  for candidate in (path, path.removesuffix(".gz")):
    if os.path.isfile(candidate):
      return candidate
  return None
