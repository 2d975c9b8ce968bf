"""The shared core under every family: hyperparameter checks, batch plumbing, pytree
arithmetic, the state check of every update, mesh and sharding helpers and type aliases.

A check, a formula or a piece of plumbing that two families need lives here, once;
family-shared code lives in the family's ``_common`` module.
"""

from altmin_jax.core import batches, checks, meshes, states, trees, types
from altmin_jax.core.batches import require_params, unpack_batch
from altmin_jax.core.checks import (
  check_callable,
  check_choice,
  check_instance,
  check_int,
  check_loss,
  check_nonnegative,
  check_optimizer,
  check_optional_int,
  check_positive,
  check_real,
  check_unit_interval,
  concrete_scalar,
  is_traced,
)
from altmin_jax.core.states import check_state, checked_transformation
from altmin_jax.core.trees import cast_like, cast_tree, compute_dtype, update_difference

__all__ = [
  "batches",
  "cast_like",
  "cast_tree",
  "check_callable",
  "check_choice",
  "check_instance",
  "check_int",
  "check_loss",
  "check_nonnegative",
  "check_optimizer",
  "check_optional_int",
  "check_positive",
  "check_real",
  "check_state",
  "check_unit_interval",
  "checked_transformation",
  "checks",
  "compute_dtype",
  "concrete_scalar",
  "is_traced",
  "meshes",
  "require_params",
  "states",
  "trees",
  "types",
  "unpack_batch",
  "update_difference",
]
