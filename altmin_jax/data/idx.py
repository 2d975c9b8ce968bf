"""Reader for the IDX format of the MNIST family (``*-idx3-ubyte[.gz]``)."""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file (optionally gzip-compressed) into a numpy array.

  Raises:
    ValueError: naming the file, if it is not a valid IDX file or a ``.gz`` file is not a
      complete gzip stream (truncated, or not compressed at all).
  """
  path = os.fspath(path)
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except (EOFError, zlib.error, gzip.BadGzipFile) as err:
    raise ValueError(f"{path} is not a complete gzip file (truncated or not gzip): {err}") from err
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
    raise ValueError(f"{path} is not an IDX file (bad magic number)")
  dtype, ndim = np.dtype(_DTYPES[data[2]]), data[3]
  header = 4 + 4 * ndim
  shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
  expected = header + int(np.prod(shape)) * dtype.itemsize
  if len(data) != expected:
    raise ValueError(f"{path} holds {len(data)} bytes, its header implies {expected}")
  return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
