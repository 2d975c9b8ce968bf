import os
import sys
import tempfile

import jax
import pytest

# Tests build many identical computations (the conformance suite compiles each method's step
# in several tests): a persistent compilation cache shared by the session compiles each once.
jax.config.update(
  "jax_compilation_cache_dir",
  os.environ.get("ALTMIN_JAX_TEST_CACHE", os.path.join(tempfile.gettempdir(), "altmin_jax_xla")),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# Notebooks executed by nbmake read their sizes from the environment: keep them small.
os.environ.setdefault("ALTMIN_JAX_SMALL", "1")
sys.path.insert(0, os.path.dirname(__file__))

# nbmake executes every notebook; the default run keeps the quickstart. The two notebooks
# that run on 4 CPU devices are `multidevice` and the long AM-architectures one is `slow`
# (CI runs both markers, .ci/run). The hook sits here, so it applies whenever tests/ is
# collected too (the README's command, CI's commands).
NOTEBOOK_MARKERS = {
  "am_architectures.ipynb": pytest.mark.slow,
  "distributed.ipynb": pytest.mark.multidevice,
  "sm_pipeline.ipynb": pytest.mark.multidevice,
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
  for item in items:
    if item.path.suffix == ".ipynb" and item.path.name in NOTEBOOK_MARKERS:
      item.add_marker(NOTEBOOK_MARKERS[item.path.name])
