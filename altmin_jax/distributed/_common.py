"""What the distributed methods share: their update-argument checks, the EASGD family's
moving rate and communication period, and :class:`WorkerLayout`, the validated setup of
p workers that every p-worker method builds once.

Method modules import this module and the execution layer
(:mod:`~altmin_jax.distributed.workers`, :mod:`~altmin_jax.distributed.async_sim`),
never each other. Scalar checks come from :mod:`altmin_jax.core.checks`: concrete
hyperparameters are validated, traced ones (``optax.inject_hyperparams``) pass through.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from altmin_jax.core import meshes
from altmin_jax.core.checks import check_int, check_positive, check_real
from altmin_jax.core.types import Array, PyTree
from altmin_jax.distributed import async_sim
from altmin_jax.distributed import workers as workers_lib

# ------------------------------------------------------------------ update arguments


def check_workers(tree: PyTree, num_workers: int, name: str = "params") -> None:
  """Raises ``ValueError`` (mentioning "shape") unless every leaf of ``tree`` has a
  leading worker axis of size ``num_workers``; checked from static shapes."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    shape = jnp.shape(leaf)
    if not shape or shape[0] != num_workers:
      raise ValueError(
        f"{name}{jax.tree_util.keystr(path)} has shape {shape}; p-worker methods take a "
        f"leading worker axis of size num_workers={num_workers} (see "
        "altmin_jax.distributed.replicate)"
      )


def check_like(grads: PyTree, params: PyTree, name: str = "grads") -> None:
  """Raises ``ValueError`` (mentioning "shape") unless ``grads`` matches ``params``."""
  if grads is None:
    raise ValueError(f"this method needs gradients: {name} is None")
  if jax.tree.structure(grads) != jax.tree.structure(params):
    raise ValueError(
      f"{name} must have the structure of params: {jax.tree.structure(grads)} vs "
      f"{jax.tree.structure(params)} (shape check)"
    )
  for path, g, p in zip(
    [k for k, _ in jax.tree_util.tree_leaves_with_path(params)],
    jax.tree.leaves(grads),
    jax.tree.leaves(params),
  ):
    if jnp.shape(g) != jnp.shape(p):
      raise ValueError(
        f"{name}{jax.tree_util.keystr(path)} has shape {jnp.shape(g)} but params has "
        f"shape {jnp.shape(p)}"
      )


def check_replicated(params: PyTree, num_workers: int) -> None:
  """Raises ``ValueError`` unless the ``num_workers`` rows of every leaf of concrete
  ``params`` are equal, as ``init`` requires.

  Every p-worker method starts the workers at the centre (:math:`x^i = \\tilde x`, the
  papers' initialisation) and takes worker 0's row as the centre. Unreplicated params
  whose leaves all happen to have a leading size ``num_workers`` would pass the shape
  check and give a malformed centre (a row of each leaf); their rows differ, which
  this check reports. Traced params (``init`` inside ``jit``) and params not fully held
  by this process are not checked. To start workers at different points, ``init``
  from replicated params (:func:`~altmin_jax.distributed.replicate`) and pass the workers' own
  params to ``update``.
  """
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if isinstance(leaf, jax.core.Tracer):
      continue
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      continue
    rows = np.asarray(leaf)
    if num_workers > 1 and not np.array_equal(rows, np.broadcast_to(rows[:1], rows.shape)):
      raise ValueError(
        f"params{jax.tree_util.keystr(path)} has shape {rows.shape} but its "
        f"num_workers={num_workers} rows differ: init takes replicated worker params "
        "(altmin_jax.distributed.replicate(params, num_workers)), every worker starting "
        "at the centre; unreplicated params whose leading sizes happen to equal "
        "num_workers are rejected here"
      )


def check_update_args(grads: PyTree, params: PyTree, num_workers: int | None = None) -> None:
  """The arguments of every method's ``update(grads, state, params)``: ``params`` given,
  with a leading worker axis of size ``num_workers`` (unless ``None``: one worker), and
  ``grads`` shaped like them."""
  if params is None:
    raise ValueError("this method needs params: call update(grads, state, params)")
  if num_workers is not None:
    check_workers(params, num_workers, "params")
  check_like(grads, params, "grads")


def single_worker_round(order: Any, active: Any, method: str) -> Any:
  """The ``order`` / ``active`` extra args of a single-worker method, checked as for p = 1
  workers (:func:`~altmin_jax.distributed.async_sim.round_args`): ``None``, or ``order
  = [0]`` and ``active = [True]``. Returns ``valid`` as ``round_args`` does."""
  return async_sim.round_args(order, active, 1, uses_active=False, method=method)[2]


# ------------------------------------------------------------------ hyperparameters


def check_period(communication_period: Any) -> int:
  r"""The communication period :math:`\tau`, an integer >= 1 (it sets which steps
  communicate: list it in ``static_args`` under ``optax.inject_hyperparams``)."""
  return check_int("communication_period", communication_period, 1)


def moving_rate(beta: Any, rho: Any, num_workers: int) -> Callable[[Array], Array]:
  r"""``alpha(lr)``, the moving rate :math:`\alpha` that the ``beta`` / ``rho`` arguments
  of :func:`~altmin_jax.distributed.easgd` define, as a function of the learning rate.

  ``beta`` must lie in ``(0, 2)`` (``beta >= 2`` breaks the stability condition, eq. 17
  of the EASGD supplement, for every learning rate) and ``rho`` must be > 0; give one of
  them, not both. Either may be traced.
  """
  if rho is not None:
    if beta is not None:
      raise ValueError(f"give beta or rho, not both: beta={beta!r}, rho={rho!r}")
    rho = check_positive("rho", rho)
    return lambda lr: lr * rho
  beta = check_real(
    "beta", 0.9 if beta is None else beta, low=0.0, high=2.0, low_open=True, high_open=True
  )
  return lambda lr: jnp.asarray(beta / num_workers, jnp.float32)


# ------------------------------------------------------------------ p workers


def first_worker(tree: PyTree) -> PyTree:
  """Worker 0's row of every leaf (where a centre variable starts), also when the worker
  axis is sharded over a mesh axis of explicit type."""
  return jax.tree.map(lambda x: meshes.replicated(x)[0], tree)


@dataclasses.dataclass(frozen=True)
class WorkerLayout:
  """p workers and where they run, validated on construction: ``num_workers`` an
  integer >= 1 and ``mesh`` ``None`` (stacked workers) or a mesh whose axis
  ``axis_name`` divides ``num_workers`` (see :mod:`~altmin_jax.distributed.workers`)."""

  num_workers: int
  mesh: Mesh | None = None
  axis_name: str = workers_lib.DEFAULT_AXIS

  def __post_init__(self):
    object.__setattr__(self, "num_workers", check_int("num_workers", self.num_workers, 1))
    workers_lib.check_mesh(self.mesh, self.axis_name, self.num_workers)

  def start(self, params: PyTree) -> PyTree:
    """The centre's starting point, worker 0's ``params``, after checking their worker
    axis (:func:`check_replicated`)."""
    check_workers(params, self.num_workers, "params")
    check_replicated(params, self.num_workers)
    return first_worker(params)

  def check_update(self, grads: PyTree, params: PyTree) -> None:
    """:func:`check_update_args` for these workers."""
    check_update_args(grads, params, self.num_workers)

  def round_args(
    self, order: Any, active: Any, *, uses_active: bool, method: str
  ) -> tuple[Array, Array, Any]:
    """The ``order`` / ``active`` extra args, defaulted and checked, and whether a traced
    order is a permutation (:func:`~altmin_jax.distributed.async_sim.round_args`)."""
    return async_sim.round_args(
      order, active, self.num_workers, uses_active=uses_active, method=method
    )

  def run(self, fn: Callable, per_worker: PyTree, shared: PyTree) -> tuple[Any, Any, Any]:
    """:func:`~altmin_jax.distributed.workers.run_workers` on these workers."""
    return workers_lib.run_workers(
      fn,
      per_worker,
      shared,
      num_workers=self.num_workers,
      mesh=self.mesh,
      axis_name=self.axis_name,
    )
