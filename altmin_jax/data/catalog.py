"""What ``altmin_jax.data`` knows about each dataset: shapes, split sizes, normalization
constants, the local files it reads, and the error raised when a dataset is missing."""

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

#: Debian packages that install a dataset into a system data directory.
DEBIAN_PACKAGES = {"fashion_mnist": "dataset-fashion-mnist"}

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
HIGGS_LABEL = "class_label"
HIGGS_CSV = "HIGGS.csv.gz"
HIGGS_NUM_TEST = 500_000  # the standard (and the paper's) test set: the last 500,000 rows

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
    name: the name ``load_dataset`` takes (also the TFDS name, except ``bundled_mnist``).
    num_classes: number of label classes.
    example_shape: shape of one raw example, ``(H, W, C)`` for images, ``(28,)`` for HIGGS.
    num_train: training samples taken from the training pool by default; the rest of the
      pool is the validation set (``None``: the whole pool, no validation).
    mean, std: per-channel normalization constants for images in ``[0, 1]`` (``None`` for
      HIGGS, standardised with training statistics instead).
    homepage: where the original files come from.
  """

  name: str
  num_classes: int
  example_shape: tuple[int, ...]
  num_train: int | None
  mean: tuple[float, ...] | None
  std: tuple[float, ...] | None
  homepage: str

  @property
  def is_image(self) -> bool:
    return len(self.example_shape) == 3


SPECS: dict[str, DatasetSpec] = {
  # The 10k MNIST test split shipped inside the package (see bundled.py).
  "bundled_mnist": DatasetSpec(
    "bundled_mnist", 10, (28, 28, 1), 8000, (0.1307,), (0.3081,), "bundled"
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
  ),
  # Paper, section 4: 10.5M training rows, the last 500,000 rows for testing.
  "higgs": DatasetSpec(
    "higgs",
    2,
    (len(HIGGS_FEATURES),),
    None,
    None,
    None,
    "https://archive.ics.uci.edu/ml/datasets/HIGGS",
  ),
}
TFDS_NAMES = ("mnist", "fashion_mnist", "cifar10", "higgs")


class DataNotAvailableError(FileNotFoundError):
  """A dataset is neither in the data directory nor prepared by TFDS (and not downloaded).

  The message lists what was tried and how to get the data.
  """


def get_spec(name: str) -> DatasetSpec:
  """The :class:`DatasetSpec` of ``name``; ``ValueError`` listing the known names otherwise."""
  if name not in SPECS:
    raise ValueError(f"unknown dataset name={name!r}; known datasets: {', '.join(SPECS)}")
  return SPECS[name]


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
  if name in ("mnist", "fashion_mnist"):
    files = ", ".join(IDX_FILES.values())
    lines.append(f"  (b) place the IDX files {files} (from {spec.homepage}) in {where}/,")
    lines.append(
      f"      or {where}.npz with uint8 arrays x_train (N, 28, 28), y_train, x_test, y_test."
    )
    hyphenated = folder_names(name)[-1]
    system = ", ".join(os.path.join(root, hyphenated) for root in SYSTEM_DATA_DIRS)
    if name in DEBIAN_PACKAGES:
      lines.append(
        f"  (c) on Debian or Ubuntu: `sudo apt-get install {DEBIAN_PACKAGES[name]}` installs"
        f" the IDX files in {system}/, which is searched after data_dir (no flag needed)."
      )
    else:
      lines.append(f"  (c) a system package installing the IDX files in {system}/ is found too.")
  elif name == "cifar10":
    lines.append(
      f"  (b) place {where}.npz with uint8 arrays x_train (50000, 32, 32, 3), y_train,"
      f" x_test (10000, 32, 32, 3), y_test (from {spec.homepage})."
    )
  elif name == "higgs":
    lines.append(
      f"  (b) place {HIGGS_CSV} (from {spec.homepage}; label first, then 28 features) in"
      f" {where}/, or {where}.npz with arrays x (N, 28) and y (N,) in the CSV's row order."
    )
  lines.append("  The bundled MNIST 10k split is always available offline: 'bundled_mnist'.")
  return "\n".join(lines)
