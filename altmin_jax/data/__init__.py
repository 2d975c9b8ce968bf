"""Datasets as numpy arrays, offline first.

``load_dataset(name, ...)`` is the entry point: ``bundled_mnist`` (the MNIST 10k test split
shipped in the package, always available), and ``mnist``, ``fashion_mnist``, ``cifar10``,
``higgs`` from local files in a data directory (``data_dir=`` or ``$ALTMIN_JAX_DATA_DIR``,
then ``SYSTEM_DATA_DIRS``: ``/usr/share/datasets``, where Debian's ``dataset-fashion-mnist``
installs Fashion-MNIST, found without a flag) or from a TFDS copy prepared as ArrayRecord
(read with ``tfds.data_source``, no TensorFlow).
Nothing is downloaded unless ``download=True``. ``iterate_batches`` gives seeded minibatches.

Example:
  >>> from altmin_jax import data
  >>> ds = data.load_dataset("bundled_mnist", num_train=8000)
  >>> x, y = next(data.iterate_batches(*ds.train, 200, seed=0, epoch=0))
  >>> x.shape, y.shape, ds.num_classes
  ((200, 784), (200,), 10)
"""

from altmin_jax.data.bundled import bundled_mnist
from altmin_jax.data.catalog import (
  DATA_DIR_ENV,
  SPECS,
  SYSTEM_DATA_DIRS,
  DataNotAvailableError,
  DatasetSpec,
)
from altmin_jax.data.core import Dataset, iterate_batches, load_dataset
from altmin_jax.data.files import read_higgs_csv
from altmin_jax.data.idx import read_idx

#: Names ``load_dataset`` accepts.
DATASETS = tuple(SPECS)

__all__ = [
  "DATASETS",
  "DATA_DIR_ENV",
  "SPECS",
  "SYSTEM_DATA_DIRS",
  "DataNotAvailableError",
  "Dataset",
  "DatasetSpec",
  "bundled_mnist",
  "iterate_batches",
  "load_dataset",
  "read_higgs_csv",
  "read_idx",
]
