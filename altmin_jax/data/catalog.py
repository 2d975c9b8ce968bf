"""Every fact ``altmin_jax.data`` knows about each dataset, one :class:`DatasetSpec` each:
shapes, split sizes, normalization constants, the local file formats and TFDS builder it is
read from, its download host and Debian package; and the error raised when it is missing.

The other tables (:data:`TFDS_NAMES`, :data:`DEBIAN_PACKAGES`, the TFDS builder modules and
download hosts, the IDX datasets of :mod:`altmin_jax.data.files`) are derived from
:data:`SPECS`; the loaders read a spec's attributes and never compare a dataset's name.
"""

from __future__ import annotations

import dataclasses
import os

#: Environment variable naming the default directory for local dataset files.
DATA_DIR_ENV = "ALTMIN_JAX_DATA_DIR"

#: Directories searched for local files after the user's data directory, in this order:
#: where Debian's ``dataset-*`` packages install datasets (``dataset-fashion-mnist`` puts the
#: four IDX files in ``/usr/share/datasets/fashion-mnist/``). Managed by the package manager:
#: read, never written to or suggested as a place for files.
SYSTEM_DATA_DIRS = ("/usr/share/datasets",)

#: HIGGS columns in the order of ``HIGGS.csv`` after the label (21 low-level kinematic
#: features, then 7 high-level ones); TFDS uses the same names as feature keys.
HIGGS_FEATURES = (
  "lepton_pT",
  "lepton_eta",
  "lepton_phi",
  "missing_energy_magnitude",
  "missing_energy_phi",
  "jet_1_pt",
  "jet_1_eta",
  "jet_1_phi",
  "jet_1_b-tag",
  "jet_2_pt",
  "jet_2_eta",
  "jet_2_phi",
  "jet_2_b-tag",
  "jet_3_pt",
  "jet_3_eta",
  "jet_3_phi",
  "jet_3_b-tag",
  "jet_4_pt",
  "jet_4_eta",
  "jet_4_phi",
  "jet_4_b-tag",
  "m_jj",
  "m_jjj",
  "m_lv",
  "m_jlv",
  "m_bb",
  "m_wbb",
  "m_wwbb",
)
HIGGS_CSV = "HIGGS.csv.gz"

#: The local file formats :mod:`altmin_jax.data.files` reads: ``"idx"``, the four original
#: IDX files of the MNIST family (:data:`IDX_FILES`); ``"higgs_csv"``, the UCI HIGGS table
#: (:data:`HIGGS_CSV`: no header, the label, then the features); ``"npz"``, a ``.npz``
#: archive with the arrays :data:`NPZ_IMAGE_KEYS` (images) or :data:`NPZ_TABLE_KEYS`
#: (tables).
FILE_FORMATS = ("idx", "higgs_csv", "npz")
IDX_FILES = {
  "train_images": "train-images-idx3-ubyte.gz",
  "train_labels": "train-labels-idx1-ubyte.gz",
  "test_images": "t10k-images-idx3-ubyte.gz",
  "test_labels": "t10k-labels-idx1-ubyte.gz",
}
NPZ_IMAGE_KEYS = ("x_train", "y_train", "x_test", "y_test")
NPZ_TABLE_KEYS = ("x", "y")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Facts about one dataset.

  Attributes:
    name: the name ``load_dataset`` takes.
    num_classes: number of label classes.
    example_shape: shape of one raw example, ``(H, W, C)`` for images, ``(28,)`` for HIGGS.
    num_train: training samples taken from the training pool by default; the rest of the
      pool is the validation set (``None``: the whole pool, no validation).
    mean, std: per-channel normalization constants for images in ``[0, 1]`` (``None`` for
      tables, standardised with training statistics instead).
    homepage: where the original files come from.
    pool_size: examples in the full training pool: the official training split, all rows of
      a table, or all bundled samples.
    test_size: examples in the official test split (``None``: the test set is carved from
      the pool, see ``test_rows_last`` and ``bundled``).
    test_rows_last: tables: the default number of final rows forming the test set, never
      shuffled (``None``: not a table read in rows; ``num_test`` and ``max_rows`` apply only
      when set).
    file_formats: the local file formats (of :data:`FILE_FORMATS`) searched for, in order.
    tfds_name: the TensorFlow Datasets name (``None``: not read through TFDS).
    tfds_module: the module that registers the TFDS builder, imported before reading.
    tfds_splits: the TFDS splits read: ``("train", "test")``, or ``("train",)`` for a table
      whose test rows are carved from its single split.
    download_host: ``(host, port)`` TFDS downloads the files from, probed before a download.
    debian_package: the Debian package installing the files in a system data directory.
    features: tables: the feature names in the file's column order (also the TFDS feature
      keys); ``label_feature`` is the TFDS key of the label.
    bundled: shipped inside the package (always available); the samples after the training
      (and validation) part form the test set.
  """

  name: str
  num_classes: int
  example_shape: tuple[int, ...]
  num_train: int | None
  mean: tuple[float, ...] | None
  std: tuple[float, ...] | None
  homepage: str
  pool_size: int = 0
  test_size: int | None = None
  test_rows_last: int | None = None
  file_formats: tuple[str, ...] = ()
  tfds_name: str | None = None
  tfds_module: str | None = None
  tfds_splits: tuple[str, ...] = ("train", "test")
  download_host: tuple[str, int] | None = None
  debian_package: str | None = None
  features: tuple[str, ...] = ()
  label_feature: str = "label"
  bundled: bool = False

  def __post_init__(self):
    unknown = [f for f in self.file_formats if f not in FILE_FORMATS]
    if unknown:
      raise ValueError(f"{self.name}: unknown file_formats {unknown}; known: {FILE_FORMATS}")
    if self.tabular and len(self.features) != self.example_shape[0]:
      raise ValueError(f"{self.name}: features must name the {self.example_shape[0]} columns")

  @property
  def is_image(self) -> bool:
    """Images ``(H, W, C)`` with pixels ``0..255``."""
    return len(self.example_shape) == 3

  @property
  def tabular(self) -> bool:
    """Rows of real features (standardised with training statistics)."""
    return len(self.example_shape) == 1


_MNIST_FILES = dict(file_formats=("idx", "npz"))
_MNIST_MODULE = "tensorflow_datasets.image_classification.mnist"

SPECS: dict[str, DatasetSpec] = {
  # The 10k MNIST test split shipped inside the package (see bundled.py).
  "bundled_mnist": DatasetSpec(
    "bundled_mnist",
    10,
    (28, 28, 1),
    8000,
    (0.1307,),
    (0.3081,),
    "bundled",
    pool_size=10_000,
    bundled=True,
  ),
  # Paper, supplement D.1: first 50,000 training samples train, last 10,000 validate.
  "mnist": DatasetSpec(
    "mnist",
    10,
    (28, 28, 1),
    50_000,
    (0.1307,),
    (0.3081,),
    "http://yann.lecun.com/exdb/mnist/",
    pool_size=60_000,
    test_size=10_000,
    tfds_name="mnist",
    tfds_module=_MNIST_MODULE,
    download_host=("storage.googleapis.com", 443),
    **_MNIST_FILES,
  ),
  # Paper, supplement B: 5/6 of the training split (50,000) train, the other 1/6 validates.
  "fashion_mnist": DatasetSpec(
    "fashion_mnist",
    10,
    (28, 28, 1),
    50_000,
    (0.2860,),
    (0.3530,),
    "https://github.com/zalandoresearch/fashion-mnist",
    pool_size=60_000,
    test_size=10_000,
    tfds_name="fashion_mnist",
    tfds_module=_MNIST_MODULE,
    download_host=("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80),
    debian_package="dataset-fashion-mnist",
    **_MNIST_FILES,
  ),
  # Paper, supplement D.2: first 40,000 training samples train, last 10,000 validate.
  "cifar10": DatasetSpec(
    "cifar10",
    10,
    (32, 32, 3),
    40_000,
    (0.4914, 0.4822, 0.4465),
    (0.2470, 0.2435, 0.2616),
    "https://www.cs.toronto.edu/~kriz/cifar.html",
    pool_size=50_000,
    test_size=10_000,
    file_formats=("npz",),
    tfds_name="cifar10",
    tfds_module="tensorflow_datasets.image_classification.cifar",
    download_host=("www.cs.toronto.edu", 443),
  ),
  # Paper, section 4: 10.5M training rows, the last 500,000 rows (the standard test set).
  "higgs": DatasetSpec(
    "higgs",
    2,
    (len(HIGGS_FEATURES),),
    None,
    None,
    None,
    "https://archive.ics.uci.edu/ml/datasets/HIGGS",
    pool_size=11_000_000,
    test_rows_last=500_000,
    file_formats=("higgs_csv", "npz"),
    tfds_name="higgs",
    tfds_module="tensorflow_datasets.structured.higgs",
    tfds_splits=("train",),
    download_host=("archive.ics.uci.edu", 443),
    features=HIGGS_FEATURES,
    label_feature="class_label",
  ),
}

#: Datasets read through TensorFlow Datasets.
TFDS_NAMES = tuple(name for name, spec in SPECS.items() if spec.tfds_name)
#: Debian packages that install a dataset into a system data directory.
DEBIAN_PACKAGES = {name: spec.debian_package for name, spec in SPECS.items() if spec.debian_package}


class DataNotAvailableError(FileNotFoundError):
  """A dataset is neither in the data directory nor prepared by TFDS (and not downloaded).

  The message lists what was tried and how to get the data.
  """


def get_spec(name: str) -> DatasetSpec:
  """The :class:`DatasetSpec` of ``name``; ``ValueError`` listing the known names otherwise."""
  if name not in SPECS:
    raise ValueError(f"unknown dataset name={name!r}; known datasets: {', '.join(SPECS)}")
  return SPECS[name]


def names_where(predicate) -> tuple[str, ...]:
  """The names of the datasets whose spec satisfies ``predicate``, in catalog order."""
  return tuple(name for name, spec in SPECS.items() if predicate(spec))


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str | None:
  """``data_dir``, else ``$ALTMIN_JAX_DATA_DIR``, else ``None`` (no local directory)."""
  if data_dir is not None:
    return os.fspath(data_dir)
  return os.environ.get(DATA_DIR_ENV) or None


def folder_names(name: str) -> tuple[str, ...]:
  """Folder names that hold dataset ``name``: the name and its hyphenated form
  (``fashion_mnist``, ``fashion-mnist``: Debian's packages use hyphens)."""
  hyphenated = name.replace("_", "-")
  return (name,) if hyphenated == name else (name, hyphenated)


def is_system_dir(path: str | os.PathLike) -> bool:
  """Whether ``path`` is (inside) one of :data:`SYSTEM_DATA_DIRS`."""
  real = os.path.realpath(path)
  for root in SYSTEM_DATA_DIRS:
    root = os.path.realpath(root)
    if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
      return True
  return False


def how_to_get(name: str, data_dir: str | None) -> str:
  """Instructions for obtaining dataset ``name`` (part of :class:`DataNotAvailableError`).

  Never suggests placing files in a system data directory (package-managed): when
  ``data_dir`` is one, the instructions name a directory of the user's instead.
  """
  spec = get_spec(name)
  user_dir = data_dir if data_dir and not is_system_dir(data_dir) else None
  where = os.path.join(user_dir, name) if user_dir else f"<your data_dir>/{name}"
  lines = [
    f"To get {name!r} (data_dir is the argument or ${DATA_DIR_ENV}):",
    f"  (a) with network access: load_dataset({name!r}, download=True) downloads and prepares"
    " it with TFDS as ArrayRecord (into tfds_data_dir, default $TFDS_DATA_DIR or"
    " ~/tensorflow_datasets); later loads need no network.",
  ]
  if spec.is_image:
    lines.append(
      "      Preparing image datasets with tensorflow-datasets 4.9 encodes PNGs with"
      " TensorFlow, so that one step needs `pip install tensorflow-cpu`; reading does not."
    )
  lines += _how_to_place(spec, where)
  bundled = ", ".join(repr(n) for n in names_where(lambda s: s.bundled))
  lines.append(f"  The bundled MNIST 10k split is always available offline: {bundled}.")
  return "\n".join(lines)


def _how_to_place(spec: DatasetSpec, where: str) -> list[str]:
  """The ``(b)`` (and ``(c)``) lines of :func:`how_to_get`: which files to place, chosen by
  the spec's first file format."""
  formats = spec.file_formats
  if not formats:
    return []
  if formats[0] == "idx":
    files = ", ".join(IDX_FILES.values())
    height, width = spec.example_shape[:2]
    lines = [
      f"  (b) place the IDX files {files} (from {spec.homepage}) in {where}/,",
      f"      or {where}.npz with uint8 arrays x_train (N, {height}, {width}), y_train, x_test,"
      " y_test.",
    ]
    hyphenated = folder_names(spec.name)[-1]
    system = ", ".join(os.path.join(root, hyphenated) for root in SYSTEM_DATA_DIRS)
    if spec.debian_package:
      lines.append(
        f"  (c) on Debian or Ubuntu: `sudo apt-get install {spec.debian_package}` installs"
        f" the IDX files in {system}/, which is searched after data_dir (no flag needed)."
      )
    else:
      lines.append(f"  (c) a system package installing the IDX files in {system}/ is found too.")
    return lines
  if formats[0] == "higgs_csv":
    n = len(spec.features)
    return [
      f"  (b) place {HIGGS_CSV} (from {spec.homepage}; label first, then {n} features) in"
      f" {where}/, or {where}.npz with arrays x (N, {n}) and y (N,) in the CSV's row order."
    ]
  return [
    f"  (b) place {where}.npz with uint8 arrays x_train {(spec.pool_size, *spec.example_shape)},"
    f" y_train, x_test {(spec.test_size, *spec.example_shape)}, y_test (from {spec.homepage})."
  ]
