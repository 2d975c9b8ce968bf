import os
import sys

# Notebooks executed by nbmake read their sizes from the environment: keep them small.
os.environ.setdefault("ALTMIN_JAX_SMALL", "1")
sys.path.insert(0, os.path.dirname(__file__))
