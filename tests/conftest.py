import os
import sys
import tempfile

import jax

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
