r"""Where the p workers of a distributed method live, and how they talk.

Every method of :mod:`altmin_jax.distributed` that runs p workers is written once, as a
function of *one* worker: its own gradient, parameters and per-worker state, the shared
state (centre variable, server parameters, step count) and a :class:`WorkerGroup` whose
collectives (``sum``, ``mean``, ``gather``, ``index``) reach the other workers. That one
function runs in two execution modes with the same results:

* **stacked** (``mesh=None``, the default): the workers are the leading axis of every
  per-worker array on one device, and the function runs under ``jax.vmap`` with
  ``axis_name``; the collectives are ``lax.all_gather`` over that vmap axis (free: it
  is the stacked array) followed by an exact pairwise sum for sums and means (a
  simulation of p workers on one device).
* **mesh** (``mesh=jax.sharding.Mesh``): the leading worker axis is sharded over the mesh
  axis ``axis_name`` and the function runs under ``jax.shard_map``; each device holds a
  block of ``p / devices`` workers (vmapped locally), and the collectives are
  ``lax.psum`` / ``lax.all_gather`` over the mesh axis, nested with the local block.
  The mesh may span several processes started with :func:`initialize_multiprocess`
  (``jax.distributed``).

Conventions shared by the p-worker methods:

* ``params`` and ``grads`` carry a leading worker axis of size ``num_workers``:
  ``params[i]`` is worker i's local copy (EASGD's :math:`x^i`, a DC-ASGD worker's pulled
  copy) and ``grads[i]`` the gradient worker i computed at it (for example
  ``jax.vmap(jax.grad(loss))(params, batches)``). Start from :func:`replicate`.
* the model to evaluate is the centre variable in the state (no worker axis):
  :func:`centre` finds it in any of the family's states, also inside ``optax.chain``.
* fields of the state that hold one value per worker (backups, local momenta) carry the
  leading worker axis too; the shared ones do not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from altmin_jax.core import meshes
from altmin_jax.core.checks import check_int
from altmin_jax.core.types import Array

DEFAULT_AXIS = meshes.WORKER_AXIS
_LOCAL_AXIS = "_local_workers"


# ------------------------------------------------------------------ collectives


@dataclasses.dataclass(frozen=True)
class WorkerGroup:
  """Collectives over all workers, whatever their layout.

  Attributes:
    num_workers: p, the total number of workers.
    axes: named axes the workers span, outermost first (``("workers",)`` stacked;
      ``("workers", "_local_workers")`` on a mesh: device axis, then the block on a device).
      The last one is always a vmap axis; the others are mesh axes.
      Worker ``index`` is row-major over these axes, so worker i is row i of the
      stacked arrays in both modes.
  """

  num_workers: int
  axes: tuple[str, ...]

  def index(self) -> Array:
    """This worker's index in ``[0, p)`` (int32)."""
    i = jnp.zeros([], jnp.int32)
    for name in self.axes:
      i = i * lax.axis_size(name) + lax.axis_index(name).astype(jnp.int32)
    return i

  def sum(self, tree: Any) -> Any:
    """``sum_i tree_i`` over the workers, in float32 or wider.

    Within the vmapped axis (all workers when stacked, a device's block on a mesh) the
    rows are added pairwise (exact float adds; XLA:CPU's reduce over a leading axis is
    about 50x slower); across devices it is one ``lax.psum`` over the mesh axes.
    """

    def one(x):
      dtype = jnp.promote_types(x.dtype, jnp.float32)
      total = pairwise_sum(lax.all_gather(x, self.axes[-1]).astype(dtype))
      for name in reversed(self.axes[:-1]):
        total = lax.psum(total, name)
      return total

    return jax.tree.map(one, tree)

  def mean(self, tree: Any) -> Any:
    """``(1/p) sum_i tree_i`` over the workers, in the leaves' dtypes (``lax.pmean``
    semantics; see :meth:`sum`)."""
    sums = self.sum(tree)
    return jax.tree.map(lambda s, x: (s / self.num_workers).astype(x.dtype), sums, tree)

  def gather(self, tree: Any) -> Any:
    """Every worker's value stacked on a new leading axis of size p (``lax.all_gather``)."""

    def one(x):
      for name in reversed(self.axes):
        x = lax.all_gather(x, name)
      return x.reshape((self.num_workers, *x.shape[len(self.axes) :]))

    return jax.tree.map(one, tree)


def pairwise_sum(x: Array) -> Array:
  """Sum over the leading axis by repeated halving (log2 n rounds of contiguous adds)."""
  while x.shape[0] > 1:
    half = x.shape[0] // 2
    pairs = x[:half] + x[half : 2 * half]
    x = jnp.concatenate([pairs, x[2 * half :]]) if x.shape[0] % 2 else pairs
  return x[0]


def take(tree: Any, i) -> Any:
  """Row ``i`` of every leaf (a dynamic index into a leading axis)."""
  return jax.tree.map(lambda x: x[i], tree)


# -------------------------------------------------------------- execution modes


def check_mesh(mesh: Mesh | None, axis_name: str, num_workers: int) -> None:
  """Validates ``mesh`` for ``num_workers`` workers on its axis ``axis_name`` (``None``,
  the stacked mode, needs nothing): :func:`altmin_jax.core.meshes.check_mesh`."""
  if mesh is not None:
    meshes.check_mesh(mesh, axis_name, count=num_workers, what="num_workers")


def run_workers(
  fn: Callable,
  per_worker: Any,
  shared: Any,
  *,
  num_workers: int,
  mesh: Mesh | None = None,
  axis_name: str = DEFAULT_AXIS,
) -> tuple[Any, Any, Any]:
  """Runs the one-worker function ``fn`` for all workers, stacked or on a mesh.

  Args:
    fn: ``fn(group, per_worker, shared) -> (per_worker_out, rows_out, shared_out)``
      written for a single worker: ``per_worker`` leaves have no worker axis and
      ``per_worker_out`` is this worker's result; ``shared`` and ``shared_out`` are the
      same on every worker (compute them from collectives only); ``rows_out`` leaves have
      a leading axis of size p and are the same on every worker (typically computed
      from ``group.gather``), row i being worker i's result. Returning rows instead of
      picking this worker's row avoids a gather per worker in the stacked mode.
    per_worker: pytree whose leaves have a leading axis of size ``num_workers``.
    shared: pytree of values common to all workers (replicated on a mesh).
    num_workers: p.
    mesh: ``None`` for the stacked mode (``jax.vmap`` with ``axis_name``), or a mesh
      whose axis ``axis_name`` the workers are sharded over (``jax.shard_map``).
    axis_name: the vmap axis name, or the mesh axis.

  Returns:
    ``(per_worker_out, rows_out, shared_out)``: per-worker outputs and rows stacked on a
    leading axis of size p (sharded over the mesh axis in mesh mode), shared outputs
    once.
  """
  if mesh is None:
    group = WorkerGroup(num_workers, (axis_name,))
    return jax.vmap(
      lambda w, s: fn(group, w, s),
      in_axes=(0, None),
      out_axes=(0, None, None),
      axis_name=axis_name,
    )(per_worker, shared)

  check_mesh(mesh, axis_name, num_workers)
  group = WorkerGroup(num_workers, (axis_name, _LOCAL_AXIS))
  block = num_workers // mesh.shape[axis_name]
  worker_sharding = NamedSharding(mesh, P(axis_name))
  shared_sharding = NamedSharding(mesh, P())
  per_worker = jax.tree.map(lambda x: meshes.constrain(x, worker_sharding), per_worker)
  shared = jax.tree.map(lambda x: meshes.constrain(x, shared_sharding), shared)

  def on_device(w, s):
    mine, rows, out = jax.vmap(
      lambda w1, s1: fn(group, w1, s1),
      in_axes=(0, None),
      out_axes=(0, None, None),
      axis_name=_LOCAL_AXIS,
    )(w, s)
    start = lax.axis_index(axis_name) * block  # this device's rows
    rows = jax.tree.map(lambda r: lax.dynamic_slice_in_dim(r, start, block, 0), rows)
    return mine, rows, out

  # check_vma=False: the shared outputs and rows are replicated by construction
  # (computed from all-reduced / all-gathered values), which the per-value type check
  # cannot see through the nested local vmap axis.
  mapped = jax.shard_map(
    on_device,
    mesh=mesh,
    in_specs=(P(axis_name), P()),
    out_specs=(P(axis_name), P(axis_name), P()),
    check_vma=False,
  )
  return mapped(per_worker, shared)


def where_rows(flags: Array, on_true: Any, on_false: Any) -> Any:
  """Row-wise ``where``: row i of every leaf from ``on_true`` where ``flags[i]``."""

  def one(a, b):
    f = flags.reshape(flags.shape + (1,) * (b.ndim - 1))
    return jnp.where(f, a, b).astype(b.dtype)

  return jax.tree.map(one, on_true, on_false)


# ------------------------------------------------------------------ user helpers


def replicate(params: Any, num_workers: int) -> Any:
  """Stacks ``num_workers`` identical copies of ``params`` on a new leading axis.

  Example:
    >>> import jax.numpy as jnp
    >>> from altmin_jax.distributed import replicate
    >>> replicate({"w": jnp.ones(3)}, 4)["w"].shape
    (4, 3)
  """
  num_workers = check_int("num_workers", num_workers, 1)
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_workers, *jnp.shape(x))), params)


def centre(state: Any) -> Any:
  """The centre variable (the model to evaluate) held in a distributed method's state.

  Works for every state of :mod:`altmin_jax.distributed` (EASGD's :math:`\\tilde x`,
  DC-ASGD's server parameters, the running average of averaged SGD, ...), also when
  the state is nested in ``optax.chain``, ``inject_hyperparams`` or
  :func:`altmin_jax.training.skip_nonfinite_updates`. It has no worker axis.

  Raises:
    ValueError: when no state in the tree holds a centre variable.

  Example:
    >>> import jax.numpy as jnp
    >>> import altmin_jax.distributed as dist
    >>> tx = dist.easgd(0.1, num_workers=2)
    >>> state = tx.init(dist.replicate(jnp.zeros(3), 2))
    >>> dist.centre(state).shape
    (3,)
  """
  found = _find_centre(state)
  if found is None:
    raise ValueError(f"no centre variable in a state of type {type(state).__name__}")
  return found[0]


def _find_centre(state: Any):
  if isinstance(state, tuple) and hasattr(state, "_fields"):
    if "centre" in state._fields:
      return (state.centre,)
    children = tuple(state)
  elif isinstance(state, (tuple, list)):
    children = state
  elif isinstance(state, dict):
    children = tuple(state.values())
  else:
    return None
  for child in children:
    found = _find_centre(child)
    if found is not None:
      return found
  return None


def worker_mesh(num_devices: int | None = None, axis_name: str = DEFAULT_AXIS) -> Mesh:
  """A 1-D mesh over the first ``num_devices`` of ``jax.devices()`` (all by default;
  across processes after :func:`initialize_multiprocess`), axis named ``axis_name``
  (:func:`altmin_jax.core.meshes.make_mesh`)."""
  return meshes.make_mesh(num_devices, axis_name, explicit=False, what="num_devices")


def shard_workers(tree: Any, mesh: Mesh, axis_name: str = DEFAULT_AXIS) -> Any:
  """Places stacked per-worker arrays with their leading axis sharded over ``axis_name``
  (single process; in several processes use :func:`global_workers`)."""

  def one(x):
    sharding = NamedSharding(mesh, meshes.leading_spec(jnp.ndim(x), axis_name))
    return meshes.place(x, sharding)

  return jax.tree.map(one, tree)


# ------------------------------------------------------------------ multi-process


def initialize_multiprocess(
  coordinator_address: str,
  num_processes: int,
  process_id: int,
  *,
  cpu_collectives: str | None = "gloo",
) -> None:
  """Joins a ``jax.distributed`` job, after which ``jax.devices()`` spans all processes.

  Call before any other JAX work in the process. On CPU, cross-process collectives need
  an implementation: ``cpu_collectives="gloo"`` sets
  ``jax_cpu_collectives_implementation`` first (``None`` leaves it unchanged).

  Args:
    coordinator_address: ``"host:port"`` of process 0, e.g. ``"127.0.0.1:12345"``.
    num_processes: number of processes in the job.
    process_id: this process's rank in ``[0, num_processes)``.
    cpu_collectives: CPU collectives implementation or ``None``.
  """
  num_processes = check_int("num_processes", num_processes, 1)
  process_id = check_int("process_id", process_id, 0, num_processes - 1)
  if cpu_collectives is not None:
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  jax.distributed.initialize(
    coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )


def global_workers(local_tree: Any, mesh: Mesh, axis_name: str = DEFAULT_AXIS) -> Any:
  """Builds global stacked arrays from this process's block of workers.

  Each process passes the rows of the workers that live on its devices (process k of n
  holds rows ``k * p/n ... (k+1) * p/n - 1`` for a mesh built by :func:`worker_mesh`;
  :func:`process_rows` lists them); the result has a leading axis of size p sharded over
  ``axis_name`` (``jax.make_array_from_process_local_data``).
  """
  return meshes.from_process_local(local_tree, mesh, axis_name)


fetch = meshes.fetch  # NumPy copies of global arrays, the same on every process


def global_replicated(tree: Any, mesh: Mesh) -> Any:
  """Builds global replicated arrays from the same value on every process."""
  return meshes.from_process_local(tree, mesh, None)


def num_local_workers(num_workers: int, mesh: Mesh, axis_name: str = DEFAULT_AXIS) -> int:
  """Workers held by each device of ``mesh`` (``p / mesh.shape[axis_name]``)."""
  check_mesh(mesh, axis_name, num_workers)
  return num_workers // mesh.shape[axis_name]


def process_rows(num_workers: int, mesh: Mesh, axis_name: str = DEFAULT_AXIS) -> Sequence[int]:
  """Rows of the stacked worker axis that live on this process's devices, in order."""
  per_device = num_local_workers(num_workers, mesh, axis_name)
  devices = list(mesh.devices.flat)
  rows = []
  for d, device in enumerate(devices):
    if device.process_index == jax.process_index():
      rows.extend(range(d * per_device, (d + 1) * per_device))
  return rows
