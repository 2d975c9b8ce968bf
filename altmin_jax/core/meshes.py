"""One family of mesh and sharding helpers for both parallel axes: ``'stage'``
(pipeline-parallel layers, :mod:`altmin_jax.pipeline`) and ``'workers'``
(data-parallel workers, :mod:`altmin_jax.distributed`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from altmin_jax.core.checks import check_int
from altmin_jax.core.types import Array, PyTree

STAGE_AXIS = "stage"
WORKER_AXIS = "workers"


def make_mesh(
  num_devices: int | None,
  axis_name: str,
  *,
  explicit: bool,
  what: str = "num_devices",
  devices: Sequence[Any] | None = None,
) -> Mesh:
  """A 1-D mesh named ``axis_name`` over the first ``num_devices`` (all by default) of
  ``devices`` (``jax.devices()`` by default: across processes after
  ``jax.distributed.initialize``).

  ``explicit`` selects ``jax.sharding.AxisType.Explicit`` (shardings are part of every
  array's type; ``jax.make_mesh``'s default, used for the pipeline's ``'stage'`` axis) or
  ``Auto`` (the compiler propagates shardings; the ``'workers'`` axis).
  """
  devices = jax.devices() if devices is None else list(devices)
  if num_devices is not None:
    check_int(what, num_devices, 1)
  n = len(devices) if num_devices is None else num_devices
  if not 1 <= n <= len(devices):
    raise ValueError(
      f"{what} must lie in [1, {len(devices)}] (the visible devices), got {what}={num_devices!r}"
    )
  kind = jax.sharding.AxisType.Explicit if explicit else jax.sharding.AxisType.Auto
  return jax.make_mesh((n,), (axis_name,), axis_types=(kind,), devices=devices[:n])


def check_mesh(mesh: Any, axis_name: str, *, count: int | None = None, what: str = "items") -> int:
  """Validates ``mesh`` and returns the size of its axis ``axis_name``.

  With ``count``, ``count`` things (workers, layers) must split evenly over that axis.
  """
  if not isinstance(mesh, Mesh):
    raise ValueError(f"mesh must be a jax.sharding.Mesh (jax.make_mesh), got mesh={mesh!r}")
  if axis_name not in mesh.axis_names:
    raise ValueError(
      f"mesh has no axis axis_name={axis_name!r}; its axes are {tuple(mesh.axis_names)}"
    )
  size = mesh.shape[axis_name]
  if count is not None and count % size:
    raise ValueError(
      f"{what}={count} must be a multiple of the mesh axis size {axis_name}={size} "
      "(every device holds the same number)"
    )
  return size


def leading_spec(ndim: int, axis_name: str | None) -> P:
  """``P(axis_name, None, ...)`` naming every axis of an ``ndim``-array (``P()`` for a
  scalar; replicated for ``axis_name=None``), as jitted outputs are specified, so that
  feeding outputs back causes no recompilation."""
  if ndim == 0:
    return P()
  return P(*([axis_name] + [None] * (ndim - 1)))


def put_global(x: Any, mesh: Mesh, axis_name: str | None) -> Array:
  """A global array from the same full value on every process: leading axis sharded
  over ``axis_name`` (replicated for ``None``). A traced ``x`` (an init under ``jit``, or
  a hyperparameter injected by ``optax.inject_hyperparams``) gets the sharding as a
  constraint instead."""
  if isinstance(x, jax.core.Tracer):
    return constrain(x, NamedSharding(mesh, leading_spec(x.ndim, axis_name)))
  host = np.asarray(x)
  sharding = NamedSharding(mesh, leading_spec(host.ndim, axis_name))
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate_on(mesh: Mesh, tree: PyTree) -> PyTree:
  """The arrays of ``tree`` placed replicated on ``mesh`` (every process passes the same
  values; traced ones are constrained, :func:`put_global`)."""
  return jax.tree.map(lambda x: put_global(x, mesh, None), tree)


def shard_leading(tree: PyTree, mesh: Mesh, axis_name: str) -> PyTree:
  """Concrete arrays of ``tree`` with their leading axis sharded over ``axis_name``
  (every process passes the same full values)."""
  return jax.tree.map(lambda x: put_global(x, mesh, axis_name), tree)


def from_process_local(tree: PyTree, mesh: Mesh, axis_name: str | None) -> PyTree:
  """Global arrays from this process's block (``axis_name``) or from the same value on
  every process (``None``): ``jax.make_array_from_process_local_data``."""
  sharding = NamedSharding(mesh, P(axis_name) if axis_name else P())
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
  )


def constrain(x: Any, sharding: NamedSharding) -> Array:
  """``x`` with ``sharding``: a reshard on meshes of explicit axes, a sharding constraint
  otherwise (inside ``jit``)."""
  if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
    x = jnp.asarray(x)
  axis_types = getattr(sharding.mesh, "axis_types", ())
  if axis_types and all(t == jax.sharding.AxisType.Explicit for t in axis_types):
    return jax.sharding.reshard(x, sharding)
  return lax.with_sharding_constraint(x, sharding)


def place(x: Any, sharding: NamedSharding) -> Array:
  """``x`` placed with ``sharding``: a constraint under tracing, a transfer otherwise
  (also moves committed arrays)."""
  if isinstance(x, jax.core.Tracer):
    return constrain(x, sharding)
  return jax.device_put(x, sharding)


def fetch(tree: PyTree) -> PyTree:
  """NumPy copies of (possibly multi-process) global arrays, the same on every process."""
  from jax.experimental import multihost_utils

  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def replicated(x: Any) -> Array:
  """``x`` resharded to replicated when its type carries a sharding over an explicit
  mesh axis (needed before indexing into a sharded axis of an explicit-axis mesh, for
  example to take one worker's or one layer's row); otherwise ``x`` unchanged."""
  x = jnp.asarray(x)
  sharding = getattr(jax.typeof(x), "sharding", None)
  spec = getattr(sharding, "spec", ())
  if spec and any(p is not None for p in spec) and not sharding.mesh.empty:
    return jax.sharding.reshard(x, NamedSharding(sharding.mesh, P()))
  return x
