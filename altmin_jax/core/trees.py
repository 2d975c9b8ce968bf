"""Pytree arithmetic every family shares: updates of methods that set parameters, and
dtype handling."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from altmin_jax.core.types import PyTree


def update_difference(new: PyTree, old: PyTree) -> PyTree:
  """``updates = new - old`` leafwise, in ``old``'s dtypes.

  Methods that *set* parameters (AM, SM, elastic pulls, server copies) return this, so
  that ``optax.apply_updates(old, updates)`` gives ``new``. ``new`` is cast to ``old``'s
  dtype first (low-precision params receive the rounded new values).
  """
  return jax.tree.map(lambda n, o: (jnp.asarray(n).astype(o.dtype) - o).astype(o.dtype), new, old)


def compute_dtype(tree: PyTree) -> jnp.dtype:
  """The dtype to compute in: the widest float of ``tree``'s leaves, at least float32
  (low-precision params are upcast for curvature and solver arithmetic)."""
  dtypes = [jnp.asarray(leaf).dtype for leaf in jax.tree.leaves(tree)]
  return jnp.result_type(jnp.float32, *dtypes)


def cast_tree(tree: PyTree, dtype) -> PyTree:
  """Every leaf of ``tree`` as ``dtype``."""
  return jax.tree.map(lambda a: jnp.asarray(a).astype(dtype), tree)


def cast_like(values: Sequence[jax.Array], stored: Sequence[jax.Array]) -> tuple:
  """``values`` in the dtypes of ``stored``: a state keeps its dtypes between steps
  (float32 inputs with bfloat16 params would otherwise promote stored codes)."""
  return tuple(jnp.asarray(v).astype(s.dtype) for v, s in zip(values, stored))


def where_tree(flag, on_true: PyTree, on_false: PyTree) -> PyTree:
  """Leafwise ``jnp.where(flag, a, b)`` in the dtypes of ``on_false``."""
  return jax.tree.map(lambda a, b: jnp.where(flag, a, b).astype(b.dtype), on_true, on_false)


def nan_unless(ok, tree: PyTree) -> PyTree:
  """``tree`` where ``ok`` (a bool scalar), NaN in every inexact leaf otherwise.

  The error path for a rule that only a traced argument can break (it cannot raise
  under ``jit``): the step's updates become non-finite, which
  :func:`altmin_jax.training.all_finite` detects and
  :func:`altmin_jax.training.skip_nonfinite_updates` skips. ``ok=True`` (a Python bool,
  the argument was checked when concrete) returns ``tree`` unchanged.
  """
  if ok is True:
    return tree

  def leaf(a):
    a = jnp.asarray(a)
    if not jnp.issubdtype(a.dtype, jnp.inexact):
      return a
    return jnp.where(ok, a, jnp.nan).astype(a.dtype)

  return jax.tree.map(leaf, tree)


def first_dtype(tree: PyTree) -> jnp.dtype:
  """The dtype of ``tree``'s first leaf (states stored in the params' precision)."""
  return jnp.asarray(jax.tree.leaves(tree)[0]).dtype
