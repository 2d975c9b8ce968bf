"""Distributed SGD: delay-compensated asynchronous SGD and elastic averaging SGD.

* DC-ASGD family (Zheng et al., ICML 2017): :func:`dc_asgd` (DC-ASGD-c),
  :func:`dc_asgd_adaptive` (DC-ASGD-a), :func:`async_sgd` (ASGD, asynchronous SGD),
  :func:`ssgd` (synchronous SGD), :func:`dc_ssgd` (delay-compensated large-minibatch
  synchronous SGD, supplement H).
* EASGD family (Zhang, Choromanska, LeCun, NeurIPS 2015): :func:`easgd` (synchronous),
  :func:`async_easgd`, :func:`eamsgd`, :func:`downpour`, :func:`mdownpour`, and the
  single-worker baselines :func:`averaged_sgd` (averaged SGD, the paper's "ASGD"),
  :func:`mvasgd`, :func:`msgd`.
* Execution: :mod:`~altmin_jax.distributed.workers` (stacked workers under ``vmap`` or
  workers on a mesh under ``shard_map``, multi-process helpers, :func:`centre`) and
  :mod:`~altmin_jax.distributed.async_sim` (delay schedules and :func:`simulate`).

**The ``order`` / ``active`` extra args** (one rule for every method,
:func:`~altmin_jax.distributed.async_sim.round_args`). Every method accepts them, so
that :func:`simulate` and a jitted loop can drive any method with a delay schedule.
``order`` must be an integer permutation of the p workers (shape ``(p,)``): it sets the
order of the pushes or exchanges in DC-ASGD, ASGD, async EASGD, EAMSGD, DOWNPOUR and
MDOWNPOUR, and has no effect in the synchronous methods (:func:`easgd`, :func:`ssgd`,
:func:`dc_ssgd`), which apply all workers at once. ``active`` must be a boolean array of
shape ``(p,)``; only DC-ASGD, ASGD and MDOWNPOUR can skip a worker, and the other
methods raise ``ValueError`` for a concrete ``active`` with an inactive worker. Under
``jit`` the values are traced: a traced ``order`` that is not a permutation makes the
step's updates NaN (``training.all_finite`` is ``False``), and a traced ``active`` is
ignored by the methods that cannot skip workers. Single-worker baselines accept
``order=[0]``, ``active=[True]`` or ``None``.

**Params** of the p-worker methods carry a leading worker axis; ``init`` requires the
rows of concrete params to be equal (workers start at the centre; use
:func:`replicate`), which rejects unreplicated params whose leaves happen to have a
leading size p.
"""

from altmin_jax.distributed import async_sim, processes, workers
from altmin_jax.distributed.async_sim import (
  Schedule,
  SimulationResult,
  random_delays,
  round_robin,
  simulate,
  staleness,
)
from altmin_jax.distributed.averaging import (
  AveragedSGDState,
  MSGDState,
  averaged_sgd,
  msgd,
  mvasgd,
)
from altmin_jax.distributed.dc_asgd import (
  DCASGDState,
  SSGDState,
  async_sgd,
  dc_asgd,
  dc_asgd_adaptive,
  dc_ssgd,
  ssgd,
)
from altmin_jax.distributed.downpour import DownpourState, MDownpourState, downpour, mdownpour
from altmin_jax.distributed.easgd import EAMSGDState, EASGDState, async_easgd, eamsgd, easgd
from altmin_jax.distributed.workers import (
  WorkerGroup,
  centre,
  fetch,
  global_replicated,
  global_workers,
  initialize_multiprocess,
  replicate,
  run_workers,
  shard_workers,
  worker_mesh,
)

__all__ = [
  "AveragedSGDState",
  "DCASGDState",
  "DownpourState",
  "EAMSGDState",
  "EASGDState",
  "MDownpourState",
  "MSGDState",
  "SSGDState",
  "Schedule",
  "SimulationResult",
  "WorkerGroup",
  "async_easgd",
  "async_sgd",
  "async_sim",
  "averaged_sgd",
  "centre",
  "dc_asgd",
  "dc_asgd_adaptive",
  "dc_ssgd",
  "downpour",
  "eamsgd",
  "easgd",
  "fetch",
  "global_replicated",
  "global_workers",
  "initialize_multiprocess",
  "mdownpour",
  "msgd",
  "mvasgd",
  "processes",
  "random_delays",
  "replicate",
  "round_robin",
  "run_workers",
  "shard_workers",
  "simulate",
  "ssgd",
  "staleness",
  "worker_mesh",
  "workers",
]
