"""altmin_jax.data through TFDS: ``tfds.data_source`` under ``tfds.testing.mock_data`` for
every TFDS dataset of the catalog, the download flag and its fast offline failure, a real
ArrayRecord copy prepared offline, and reading without TensorFlow."""

import importlib
import inspect
import os
import subprocess
import sys
import textwrap
import time
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds
from data_fixtures import (
  higgs_table,
  no_network_fixture,  # noqa: F401
  system_data_dir_fixture,  # noqa: F401 (autouse: no test reads /usr/share/datasets)
)

from altmin_jax import data
from altmin_jax.data import catalog

# ----------------------------------------------------------------------------- TFDS


@pytest.mark.parametrize("name", catalog.TFDS_NAMES)
def test_each_tfds_spec_names_its_builder_module_and_download_host(name):
  """The catalog's TFDS facts agree with tensorflow-datasets: the module registers the
  builder, and the builder downloads from the host that is probed."""
  spec = catalog.SPECS[name]
  module = importlib.import_module(spec.tfds_module)
  assert tfds.builder_cls(spec.tfds_name).__module__ == spec.tfds_module
  host, port = spec.download_host
  assert f"{'https' if port == 443 else 'http'}://{host}" in inspect.getsource(module)


@pytest.mark.parametrize("name", catalog.TFDS_NAMES)
def test_tfds_data_source_under_mock_data(name, no_network):
  spec = catalog.SPECS[name]
  kwargs = dict(num_test=4) if spec.tabular else dict(num_train=8)
  with tfds.testing.mock_data(num_examples=12):
    ds = data.load_dataset(name, source="tfds", normalization="none", flatten=False, **kwargs)
    raw = tfds.data_source(spec.tfds_name, split="train", download=False)
    raw = [raw[i] for i in range(12)]
  assert ds.source == "tfds" and ds.num_classes == spec.num_classes and no_network == []
  assert ds.train[0].dtype == np.float32 and ds.train[1].dtype == np.int32
  if spec.tabular:  # HIGGS, one split: the last num_test rows test, the rest train
    assert (ds.train[0].shape, ds.validation, ds.test[0].shape) == ((8, 28), None, (4, 28))
    expected = [[ex[f] for f in spec.features] for ex in raw]  # CSV column order
    np.testing.assert_allclose(ds.train[0], np.asarray(expected[:8], np.float32))
    np.testing.assert_allclose(ds.test[0], np.asarray(expected[8:], np.float32))
    labels = [round(float(ex[spec.label_feature])) for ex in raw[:8]]
    np.testing.assert_array_equal(ds.train[1], labels)
  else:  # official train split -> train + validation, official test split -> test
    assert ds.train[0].shape == (8, *spec.example_shape) and len(ds.validation[0]) == 4
    assert len(ds.test[0]) == 12
    np.testing.assert_allclose(
      ds.train[0] * 255, np.stack([ex["image"] for ex in raw[:8]]), atol=1e-4
    )
    np.testing.assert_array_equal(ds.validation[1], [ex["label"] for ex in raw[8:]])


@pytest.mark.parametrize("name", catalog.TFDS_NAMES)
def test_tfds_download_flag_and_auto_fallback_under_mock_data(tmp_path, name, monkeypatch):
  """``download=True`` tries the prepared copy first, then probes the host and asks TFDS
  to download (here: a missing copy is simulated, the probe and the download are mocked);
  ``source="auto"`` without local files falls back to TFDS."""
  from altmin_jax.data import tfds as tfds_loader

  real, calls = tfds_loader._data_source, []

  def missing_until_downloaded(tfds_module, name_, splits, data_dir, *, download):
    calls.append(download)
    if not download:
      raise tfds_loader.TfdsUnavailableError("no prepared copy (simulated)")
    return real(tfds_module, name_, splits, data_dir, download=False)  # mock_data's copy

  spec = catalog.SPECS[name]
  kwargs = dict(num_test=2) if spec.tabular else dict(num_train=4)
  with tfds.testing.mock_data(num_examples=6):
    with monkeypatch.context() as patch:
      patch.setattr(tfds_loader, "_data_source", missing_until_downloaded)
      patch.setattr(tfds_loader, "probe_download_host", lambda n: calls.append(f"probe {n}"))
      with pytest.raises(data.DataNotAvailableError):
        data.load_dataset(name, source="tfds", tfds_data_dir=tmp_path / "tfds", **kwargs)
      assert calls == [False]
      downloaded = data.load_dataset(name, source="tfds", download=True, **kwargs)
      assert calls == [False, False, f"probe {name}", True]
    auto = data.load_dataset(name, data_dir=tmp_path, **kwargs)  # no local files here
  assert downloaded.source == auto.source == "tfds"
  size = int(np.prod(spec.example_shape))
  assert downloaded.train[0].shape == (4, size)
  if spec.is_image:
    mean = np.asarray(spec.mean, np.float32)
    np.testing.assert_array_equal(auto.mean, mean)  # the paper's constants, not mock statistics


def test_download_without_network_fails_fast(tmp_path, no_network):
  start = time.perf_counter()
  unreachable = r"archive\.ics\.uci\.edu:443 cannot be reached"
  with pytest.raises(data.DataNotAvailableError, match=unreachable):
    data.load_dataset("higgs", source="tfds", download=True, tfds_data_dir=tmp_path)
  assert time.perf_counter() - start < 10 and len(no_network) == 1  # one probe, no retries


@pytest.fixture(scope="module")
def prepared_higgs(tmp_path_factory):
  """A real (not mocked) TFDS ``higgs`` ArrayRecord copy, prepared offline from a tiny CSV."""
  root = tmp_path_factory.mktemp("tfds_higgs")
  table = higgs_table(40, seed=2)
  np.savetxt(root / "HIGGS.csv", table, fmt="%.6f", delimiter=",")
  fake_download = lambda self, url: os.fspath(root / "HIGGS.csv")
  with mock.patch.object(tfds.download.DownloadManager, "download_and_extract", fake_download):
    builder = tfds.builder("higgs", data_dir=root / "tfds", file_format="array_record")
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
        compute_stats=tfds.download.ComputeStatsMode.SKIP
      )
    )
  return root / "tfds", table


def test_tfds_reads_a_prepared_array_record_copy(prepared_higgs, tmp_path, no_network):
  tfds_dir, table = prepared_higgs
  ds = data.load_dataset(
    "higgs", data_dir=tmp_path, tfds_data_dir=tfds_dir, num_test=10, normalization="none"
  )
  assert ds.source == "tfds" and no_network == []
  rows = np.concatenate([np.c_[ds.train[1], ds.train[0]], np.c_[ds.test[1], ds.test[0]]])
  # TFDS stores the rows shuffled: the same rows, columns in the CSV's order.
  sort = lambda t: t[np.lexsort(t.T[::-1])]
  np.testing.assert_allclose(sort(rows), sort(table), atol=1e-5)
  first = data.load_dataset(
    "higgs", source="tfds", tfds_data_dir=tfds_dir, max_rows=15, num_test=5, normalization="none"
  )
  np.testing.assert_array_equal(first.test[0], ds.train[0][10:15])
  again = data.load_dataset(
    "higgs", source="tfds", download=True, tfds_data_dir=tfds_dir, num_test=10, normalization="none"
  )  # prepared: no network needed
  np.testing.assert_array_equal(again.train[0], ds.train[0])
  assert no_network == []


def test_reading_never_imports_tensorflow():
  """Every TFDS dataset of the catalog loads in a process where TensorFlow cannot be
  imported."""
  script = textwrap.dedent(
    """
    import sys

    class HideTensorFlow:  # wraps each import finder: TensorFlow looks not installed
      def __init__(self, finder):
        self.finder = finder

      def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
          return None
        return self.finder.find_spec(name, path, target)

      def __getattr__(self, attr):
        return getattr(self.finder, attr)

    sys.meta_path[:] = [HideTensorFlow(finder) for finder in sys.meta_path]
    import tensorflow_datasets as tfds
    from altmin_jax import data
    from altmin_jax.data import catalog

    with tfds.testing.mock_data(num_examples=6):
      for name in catalog.TFDS_NAMES:
        if catalog.SPECS[name].tabular:  # HIGGS
          assert data.load_dataset(name, source="tfds", num_test=2).test[0].shape == (2, 28)
        else:
          assert data.load_dataset(name, source="tfds", num_train=4).train[0].shape[0] == 4
    assert not any(m.split(".")[0] == "tensorflow" for m in sys.modules)
    print("ok")
    """
  )
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  result = subprocess.run(
    [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
  )
  assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
