"""The state check every method's ``update`` runs first: the state it is given must be
one its own ``init`` returns for these params (not another method's, not another
configuration's), checked from static structure and shapes before anything else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from altmin_jax.core.types import PyTree


def _describe(tree: PyTree) -> dict[str, tuple]:
  return {
    jax.tree_util.keystr(path): tuple(getattr(leaf, "shape", ()))
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def check_state(state: Any, init_fn: Callable[[PyTree], Any], params: PyTree, method: str):
  """Raises ``ValueError`` unless ``state`` has the structure and leaf shapes of
  ``init_fn(params)`` (computed with ``jax.eval_shape``: nothing runs). Skipped when
  ``params`` is ``None`` (the method then reports the missing params itself). A state
  class's ``FILLED_BY_UPDATE`` fields (empty after ``init``, shaped by the first batch) are
  not compared."""
  if params is None:
    return
  expected = jax.eval_shape(init_fn, params)
  # Fields the first update fills (their shapes follow the batch): not compared.
  lazy = getattr(type(expected), "FILLED_BY_UPDATE", ())
  if lazy and type(state) is type(expected):
    state = state._replace(**{f: () for f in lazy})
    expected = expected._replace(**{f: () for f in lazy})
  want, got = type(expected).__name__, type(state).__name__
  rule = f"{method}'s update needs the state its init returns for these params ({want})"
  if jax.tree.structure(state) != jax.tree.structure(expected):
    if type(state) is not type(expected):
      raise ValueError(f"{rule}, got state of type {got} (another method's state?)")
    want_leaves, got_leaves = _describe(expected), _describe(state)
    missing = sorted(set(want_leaves) - set(got_leaves))
    extra = sorted(set(got_leaves) - set(want_leaves))
    detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
    raise ValueError(
      f"{rule}, got a state of type {got} with another structure ({detail}): a state of "
      "the same method with other options, or of another method?"
    )
  for (path, leaf), want_leaf in zip(
    jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(expected)
  ):
    shape = tuple(getattr(leaf, "shape", ()))
    if shape != tuple(want_leaf.shape):
      raise ValueError(
        f"{rule}, got state{jax.tree_util.keystr(path)} of shape {shape} where init gives "
        f"shape {tuple(want_leaf.shape)}"
      )


def checked_transformation(
  method: str, init_fn: Callable, update_fn: Callable
) -> optax.GradientTransformationExtraArgs:
  """``optax.GradientTransformationExtraArgs(init_fn, update_fn)`` whose ``update`` first
  runs :func:`check_state` (``method`` names the method in the error)."""

  def checked_update(updates, state, params=None, **extra_args):
    check_state(state, init_fn, params, method)
    return update_fn(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(init_fn, checked_update)
