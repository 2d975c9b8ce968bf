"""Datasets as numpy arrays, offline first (SPEC section 8)."""

from altmin_jax.data.bundled import bundled_mnist
from altmin_jax.data.core import Dataset, iterate_batches, load_dataset
from altmin_jax.data.idx import read_idx

__all__ = ["Dataset", "bundled_mnist", "iterate_batches", "load_dataset", "read_idx"]
