"""Datasets from local files in a data directory (no network, no TFDS).

Directories searched, in order, the first complete set of files wins:

1. the user's data directory: ``data_dir=`` or, when it is not given,
   ``$ALTMIN_JAX_DATA_DIR``;
2. the system data directories :data:`~altmin_jax.data.catalog.SYSTEM_DATA_DIRS`
   (``/usr/share/datasets``, where Debian's ``dataset-fashion-mnist`` package installs
   ``fashion-mnist/``), read only.

Layout of a searched directory ``D``, one entry per file format (a dataset's spec lists
its formats in search order, ``DatasetSpec.file_formats``); ``<folder>`` is the dataset's name
or its hyphenated form (``fashion_mnist`` or ``fashion-mnist``):

- ``"idx"`` (``mnist``, ``fashion_mnist``): the four original IDX files in ``D/<folder>/``
  (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
  ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``; uncompressed files without
  ``.gz`` work too), or, in the user's directory only, directly in ``D`` (unless ``D``'s own
  name is that of the other dataset: ``data_dir=".../fashion-mnist"`` never loads as
  ``mnist``). A folder holding only some of the four files is reported with the missing
  ones named.
- ``"higgs_csv"`` (``higgs``): ``D/higgs/HIGGS.csv.gz`` or ``D/HIGGS.csv.gz`` (or
  ``HIGGS.csv``), the UCI file: no header, the label (``0.0`` / ``1.0``) in the first
  column, then the 28 features.
- ``"npz"``, images (``mnist``, ``fashion_mnist``, ``cifar10``): ``D/<name>.npz`` or
  ``D/<folder>/<name>.npz`` with integer pixel arrays ``x_train`` ``(N, H, W)`` or
  ``(N, H, W, C)`` in ``0..255``, integer labels ``y_train`` ``(N,)``, and ``x_test`` /
  ``y_test`` likewise (the official splits; ``keras.datasets`` arrays saved with
  ``np.savez`` have this form). Float labels are rejected, not rounded.
- ``"npz"``, tables (``higgs``): the same places, arrays ``x`` ``(N, 28)`` and ``y``
  ``(N,)`` holding the table rows in the CSV's order (the test set is carved from the end
  as for the CSV).

Unreadable files (a truncated or non-gzip ``.gz``, a corrupt ``.npz``, an invalid IDX
header) raise ``ValueError`` naming the file.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import warnings
import zipfile
import zlib
from collections.abc import Callable

import numpy as np

from altmin_jax.data import catalog
from altmin_jax.data.catalog import (
  HIGGS_CSV,
  HIGGS_FEATURES,
  IDX_FILES,
  NPZ_IMAGE_KEYS,
  NPZ_TABLE_KEYS,
  DatasetSpec,
  folder_names,
  get_spec,
  names_where,
)
from altmin_jax.data.idx import read_idx

Arrays = tuple[np.ndarray, np.ndarray]
#: Datasets stored as the four IDX files (their folders are told apart by name).
IDX_DATASETS = names_where(lambda spec: "idx" in spec.file_formats)
# Errors of a truncated, corrupt or mislabelled compressed file (gzip.BadGzipFile is an
# OSError; zipfile reports a bad archive or a bad CRC as BadZipFile).
_CORRUPT = (EOFError, zlib.error, gzip.BadGzipFile, zipfile.BadZipFile)


@dataclasses.dataclass(frozen=True)
class LocalSearch:
  """What :func:`search_local_files` found.

  Attributes:
    path: the directory of IDX files, the CSV or the ``.npz`` to read, or ``None``.
    tried: one line per searched place without a complete set (partial IDX sets name
      their missing files), for the error message.
    file_format: the format (of ``catalog.FILE_FORMATS``) ``path`` holds, or ``None``.
  """

  path: str | None
  tried: tuple[str, ...]
  file_format: str | None = None


def search_directories(data_dir: str | None) -> list[tuple[str, bool]]:
  """``(directory, is_users)`` in search order: the user's ``data_dir`` (if any), then the
  system data directories of :data:`~altmin_jax.data.catalog.SYSTEM_DATA_DIRS`."""
  dirs = [] if data_dir is None else [(data_dir, True)]
  return dirs + [(root, False) for root in catalog.SYSTEM_DATA_DIRS]


def search_local_files(name: str, data_dir: str | None) -> LocalSearch:
  """Finds dataset ``name`` in ``data_dir``, then in the system data directories.

  The first complete set of files wins. A folder with some but not all of the four IDX
  files is skipped with a warning when a complete set is found later, and reported with the
  missing files named otherwise.
  """
  tried, partial = [], []
  for directory, users in search_directories(data_dir):
    if not users and not os.path.isdir(directory):
      tried.append(f"{directory} (system data directory): not present")
      continue
    path, file_format, lines, partial_here = _search_directory(name, directory, users)
    partial += partial_here
    if path is not None:
      for line in partial:
        warnings.warn(f"{line}; reading the complete set in {path} instead", stacklevel=3)
      return LocalSearch(path, tuple(tried), file_format)
    tried += lines
  return LocalSearch(None, tuple(tried))


def _search_directory(name: str, directory: str, users: bool):
  """``(path or None, its format, tried lines, partial-set lines)`` for one directory: the
  spec's file formats in order, the first found wins."""
  spec = get_spec(name)
  lines, partial = [], []
  for file_format in spec.file_formats:
    path = FORMATS[file_format].find(spec, directory, users, lines, partial)
    if path is not None:
      return path, file_format, lines, partial
  kind = "data_dir" if users else "system data directory"
  if partial:
    lines += [f"{line} ({kind})" for line in partial]
  else:
    lines.append(f"{directory} ({kind}): no {name} files ({_layouts(spec, directory, users)})")
  return None, None, lines, partial


def _layouts(spec: DatasetSpec, directory: str, users: bool) -> str:
  """The layouts looked for in ``directory``, in words."""
  looked = [FORMATS[f].looked_for(spec, directory, users) for f in spec.file_formats]
  return "looked for " + ", and ".join(looked)


def _idx_folders(spec: DatasetSpec, directory: str, users: bool) -> list[str]:
  """Folders that may hold ``spec``'s IDX files: ``<folder>`` in ``directory`` and, for the
  user's directory, ``directory`` itself unless its name is that of another IDX dataset."""
  folders = [os.path.join(directory, f) for f in folder_names(spec.name)]
  if users and _other_idx_dataset(spec.name, directory) is None:
    folders.append(directory)
  return folders


def _find_idx(spec: DatasetSpec, directory: str, users: bool, lines, partial) -> str | None:
  """The folder with all four IDX files; partial sets are added to ``partial``."""
  if users and (other := _other_idx_dataset(spec.name, directory)) is not None:
    if any(_existing(os.path.join(directory, f)) for f in IDX_FILES.values()):
      lines.append(
        f"{directory}: its IDX files are not read as {spec.name!r}: the folder's name says"
        f" they hold {other!r}"
      )
  for folder in _idx_folders(spec, directory, users):
    present = [f for f in IDX_FILES.values() if _existing(os.path.join(folder, f))]
    if len(present) == len(IDX_FILES):
      return folder
    if present:
      missing = [f for f in IDX_FILES.values() if f not in present]
      partial.append(
        f"{folder} holds {', '.join(present)} but lacks {', '.join(missing)}"
        " (or the same names without .gz)"
      )
  return None


def _looked_for_idx(spec: DatasetSpec, directory: str, users: bool) -> str:
  folders = " or ".join(f"{f}/" for f in folder_names(spec.name))
  top = " or at the top" if directory in _idx_folders(spec, directory, users) else ""
  return f"the four IDX files in {folders}{top}"


def _find_higgs_csv(spec: DatasetSpec, directory: str, users: bool, lines, partial):
  for folder in (os.path.join(directory, spec.name), directory):
    if path := _existing(os.path.join(folder, HIGGS_CSV)):
      return path
  return None


def _looked_for_higgs_csv(spec: DatasetSpec, directory: str, users: bool) -> str:
  return f"{HIGGS_CSV} in {spec.name}/ or at the top"


def _find_npz(spec: DatasetSpec, directory: str, users: bool, lines, partial) -> str | None:
  npz = [os.path.join(directory, f"{spec.name}.npz")]
  npz += [os.path.join(directory, f, f"{spec.name}.npz") for f in folder_names(spec.name)]
  return next((path for path in npz if os.path.isfile(path)), None)


def _looked_for_npz(spec: DatasetSpec, directory: str, users: bool) -> str:
  if len(spec.file_formats) > 1:  # after the main format: named briefly
    return f"{spec.name}.npz"
  folders = " or ".join(f"{f}/" for f in folder_names(spec.name))
  return f"{spec.name}.npz at the top or in {folders}"


def _other_idx_dataset(name: str, directory: str) -> str | None:
  """The other IDX dataset whose folder name ``directory`` has (``None`` when none)."""
  base = os.path.basename(os.path.normpath(directory)).lower()
  for other in IDX_DATASETS:
    if other != name and base in folder_names(other):
      return other
  return None


def find_local_files(name: str, data_dir: str | None) -> str | None:
  """The path (a directory of IDX files, a CSV or an ``.npz``) holding ``name`` in
  ``data_dir`` or a system data directory; ``None`` when no complete set is found."""
  return search_local_files(name, data_dir).path


def read_local_files(
  name: str, path: str, *, file_format: str, max_rows: int | None = None
) -> tuple[Arrays, Arrays | None]:
  """Reads what :func:`search_local_files` found, with the reader of ``file_format``.

  Returns:
    ``(pool, test)``: the official training split and test split as raw arrays (images
    ``uint8 (N, H, W, C)``, labels ``int32``); for a table (HIGGS) ``pool`` holds all rows
    read (features ``float32 (N, 28)``) and ``test`` is ``None``.

  Raises:
    ValueError: if the files are unreadable or do not have the shapes, dtypes or values the
      dataset needs (the message names the file).
  """
  return FORMATS[file_format].read(get_spec(name), path, max_rows)


def _read_idx_folder(spec: DatasetSpec, path: str, max_rows: int | None):
  files = {k: _existing(os.path.join(path, f)) for k, f in IDX_FILES.items()}
  parts = []
  for split in ("train", "test"):
    images, labels = files[f"{split}_images"], files[f"{split}_labels"]
    what = f"{images} and {labels}"
    parts.append(image_arrays(spec.name, what, read_idx(images), read_idx(labels)))
  return parts[0], parts[1]


def _read_higgs_csv(spec: DatasetSpec, path: str, max_rows: int | None):
  return read_higgs_csv(path, max_rows=max_rows), None


def _read_npz(spec: DatasetSpec, path: str, max_rows: int | None):
  if spec.tabular:
    return _read_table_npz(spec, path, max_rows), None
  return _read_image_npz(spec.name, path)


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
  try:
    with opener(path, "rt") as f:
      table = np.loadtxt(f, delimiter=",", dtype=np.float32, max_rows=max_rows, ndmin=2)
  except _CORRUPT as err:
    raise ValueError(f"{path} is not a complete gzip file (truncated or not gzip): {err}") from err
  except ValueError as err:
    raise ValueError(f"{path}: rows must be comma-separated numbers: {err}") from err
  width = 1 + len(HIGGS_FEATURES)
  if table.shape[1] != width:
    raise ValueError(
      f"{path}: rows must hold a label and 28 features ({width} columns), got shape {table.shape}"
    )
  return table[:, 1:], binary_labels(table[:, 0], path)  # a view: avoids a 1.2 GB copy


def binary_labels(labels: np.ndarray, what: str, *, exact: bool = True) -> np.ndarray:
  """``0`` / ``1`` HIGGS labels (integers or the CSV's ``0.0`` / ``1.0``) as ``int32``.

  ``exact=True`` rejects any other value (``0.6`` is an error, not rounded); ``exact=False``
  rounds to the nearest integer first (TFDS's float ``class_label`` feature, which
  ``tfds.testing.mock_data`` fills with random floats). Values outside ``{0, 1}`` after
  rounding are always a ``ValueError``.
  """
  labels = np.asarray(labels)
  if not exact:
    labels = np.rint(labels.astype(np.float64))
  if labels.size and not np.all((labels == 0) | (labels == 1)):
    bad = labels[(labels != 0) & (labels != 1)].ravel()[0]
    raise ValueError(f"{what}: HIGGS labels must be 0 or 1, got the value {bad!r}")
  return labels.astype(np.int32)


def image_arrays(
  name: str, what: str, images: np.ndarray, labels: np.ndarray, keys: tuple[str, str] = ("", "")
) -> Arrays:
  """Checks raw images and labels of dataset ``name``; returns ``uint8 (N, H, W, C)``, ``int32``.

  Args:
    name: the dataset.
    what: where the arrays come from (file names), for messages.
    images, labels: the raw arrays.
    keys: the arrays' names in ``what`` (``.npz`` keys), for messages.

  Raises:
    ValueError: on a wrong shape, non-integer pixels or labels (float labels are never
      truncated), or values out of range.
  """
  spec = get_spec(name)
  x_key, y_key = (f" {k}" if k else "" for k in keys)
  images, labels = np.asarray(images), np.asarray(labels)
  if images.ndim == 3 and spec.example_shape[-1] == 1:
    images = images[..., None]
  if images.shape[1:] != spec.example_shape or labels.shape != images.shape[:1]:
    raise ValueError(
      f"{what}: {name} needs images{x_key} of shape (N, *{spec.example_shape}) and"
      f" labels{y_key} of shape (N,), got shapes {images.shape} and {labels.shape}"
    )
  if not np.issubdtype(images.dtype, np.integer):
    raise ValueError(
      f"{what}: {name} images{x_key} must hold integer pixels 0..255, got dtype {images.dtype}"
    )
  if images.size and (images.min() < 0 or images.max() > 255):
    raise ValueError(f"{what}: {name} pixels{x_key} must lie in 0..255")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
      f"{what}: {name} labels{y_key} must be integers 0..{spec.num_classes - 1}, got dtype"
      f" {labels.dtype} (float labels are not rounded or truncated)"
    )
  if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
    raise ValueError(
      f"{what}: {name} labels{y_key} must lie in 0..{spec.num_classes - 1}, got values in"
      f" [{labels.min()}, {labels.max()}]"
    )
  return images.astype(np.uint8, copy=False), labels.astype(np.int32)


def load_npz(path: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
  """The arrays ``keys`` of the ``.npz`` archive ``path``.

  Raises:
    ValueError: naming ``path``, when it is not a readable ``.npz`` archive (corrupt,
      truncated, a plain ``.npy``, pickled objects) or lacks one of ``keys``.
  """
  # The file is opened here, not by np.load, which leaks its handle when the zip is bad.
  with open(path, "rb") as handle:
    try:
      archive = np.load(handle, allow_pickle=False)
    except (*_CORRUPT, ValueError, OSError) as err:
      message = f"{path} is not a readable .npz archive (corrupt or truncated): {err}"
      raise ValueError(message) from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
      raise ValueError(f"{path} holds a single array, not an .npz archive with keys {list(keys)}")
    with archive:
      missing = [k for k in keys if k not in archive.files]
      if missing:
        raise ValueError(f"{path} lacks arrays {missing}; expected keys {list(keys)}")
      try:
        return {k: archive[k] for k in keys}
      except (*_CORRUPT, ValueError, OSError) as err:
        message = f"{path}: cannot read its arrays (corrupt or truncated): {err}"
        raise ValueError(message) from err


def _read_image_npz(name: str, path: str) -> tuple[Arrays, Arrays]:
  f = load_npz(path, NPZ_IMAGE_KEYS)
  train = image_arrays(name, path, f["x_train"], f["y_train"], ("x_train", "y_train"))
  test = image_arrays(name, path, f["x_test"], f["y_test"], ("x_test", "y_test"))
  return train, test


def _read_table_npz(spec: DatasetSpec, path: str, max_rows: int | None) -> Arrays:
  f = load_npz(path, NPZ_TABLE_KEYS)
  x, y = f["x"][:max_rows], f["y"][:max_rows]
  width = len(spec.features)
  if x.ndim != 2 or x.shape[1] != width or y.shape != x.shape[:1]:
    raise ValueError(
      f"{path}: {spec.name} needs x of shape (N, {width}) and y of shape (N,), got shapes"
      f" {x.shape} and {y.shape}"
    )
  if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
    raise ValueError(f"{path}: {spec.name} features x must be real numbers, got dtype {x.dtype}")
  return x.astype(np.float32), binary_labels(y, f"{path} (y)")


def _existing(path: str) -> str | None:
  """``path`` or ``path`` without ``.gz`` when that file exists, else ``None``."""
  for candidate in (path, path.removesuffix(".gz")):
    if os.path.isfile(candidate):
      return candidate
  return None


@dataclasses.dataclass(frozen=True)
class FileFormat:
  """How one local file format is found in a directory and read.

  Attributes:
    find: ``(spec, directory, users, lines, partial) -> path or None``; appends to ``lines``
      what the error message should say about ``directory`` and to ``partial`` incomplete
      sets of files.
    read: ``(spec, path, max_rows) -> (pool, test)``, as :func:`read_local_files`.
    looked_for: ``(spec, directory, users) -> str``, the layout searched, in words.
  """

  find: Callable[..., str | None]
  read: Callable[[DatasetSpec, str, int | None], tuple[Arrays, Arrays | None]]
  looked_for: Callable[[DatasetSpec, str, bool], str]


#: The reader of each format of ``catalog.FILE_FORMATS``.
FORMATS = {
  "idx": FileFormat(_find_idx, _read_idx_folder, _looked_for_idx),
  "higgs_csv": FileFormat(_find_higgs_csv, _read_higgs_csv, _looked_for_higgs_csv),
  "npz": FileFormat(_find_npz, _read_npz, _looked_for_npz),
}
