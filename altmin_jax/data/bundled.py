"""The offline default dataset shipped inside the package: the MNIST 10k test split.

See ``mnist/ATTRIBUTION.md`` beside this file for its origin and license.
"""

from __future__ import annotations

import functools
import pathlib

import numpy as np

from altmin_jax.data.idx import read_idx

BUNDLED_DIR = pathlib.Path(__file__).parent / "mnist"
IMAGES = "t10k-images-idx3-ubyte.gz"
LABELS = "t10k-labels-idx1-ubyte.gz"


@functools.cache
def _read() -> tuple[np.ndarray, np.ndarray]:
  images = read_idx(BUNDLED_DIR / IMAGES)
  labels = read_idx(BUNDLED_DIR / LABELS)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def bundled_mnist() -> tuple[np.ndarray, np.ndarray]:
  """The 10,000 bundled MNIST images ``(10000, 28, 28) uint8`` and labels ``(10000,)``."""
  images, labels = _read()
  return images, labels.astype(np.int32)
