"""The families the comparison runner (:mod:`experiments.runners.compare`) trains, one
:class:`Family` entry each in :data:`REGISTRY`; the comparison runner names no family, so
adding one is one :func:`register` call.

Each family trains through its own runner's training function, so that metrics publishing,
checkpoints and ``--config.resume=True`` work as there:

* ``am_fc`` (:func:`experiments.runners.am_fc.train_one`): ``sgd``, ``adam``, ``am_adam``,
  ``am_mem``, ``am_adam_offline``, ``am_mem_offline``, ``admm``, with ``lr`` and
  :func:`experiments.configs.common.am_method`'s fields; minibatches of ``config.batch_size``
  (the offline ones: one iteration per pass over the training set);
* ``sm`` (:func:`experiments.runners.sm_tables.train_one`): ``sm``, ``sm_paper``,
  ``gd_armijo``, ``cg_block``, ``cg_block_armijo``, ``sso``, ``ddg``, ``adam``, with
  ``sm_tables``' fields and ``inner_steps`` (N); shuffled minibatches of
  ``config.sm_batch_size`` (``0``: full batch), one iteration each; the hidden widths must be equal;
* ``distributed`` (:func:`experiments.runners.distributed.train_one`): the methods of
  ``distributed.P_WORKER`` and ``distributed.SINGLE``, with ``lr``, ``num_workers`` and the
  method's hyperparameters; the ``num_workers`` workers are stacked on one device
  (simulation mode), ``config.worker_batch_size`` images per worker per round,
  ``config.delay`` schedule; the centre variable is evaluated; ReLU only.

Each family evaluates about every ``config.eval_samples`` training images in its own unit
(minibatches, iterations, rounds), or once per epoch (``eval_every=0``) where every
iteration is an epoch (offline AM methods, full-batch SM methods).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import ml_collections

from experiments.configs import common
from experiments.runners import am_fc, distributed, sm_tables


def _no_checks(config: ml_collections.ConfigDict, label: str) -> None:
  del config, label


@dataclasses.dataclass(frozen=True)
class Family:
  """What differs between the families of the comparison.

  Attributes:
    name: the ``family`` field of a method entry.
    methods: the names its entries' ``method`` field may take.
    train_one: ``(config, data, entry, seed, hooks) -> record``: one method entry
      (``config.methods.<label>`` with its grid point), one seed, trained through the family
      runner's training function for the comparison ``config``; the record holds that
      function's fields and ``epoch`` (passes over the training images at each evaluation).
    batch_text: ``config -> str``: its minibatch size as the report's budget line states it.
    line_style: its line style (matplotlib) in the accuracy-against-time plot.
    check: ``(config, label) -> None``: its own checks of ``config.methods.<label>`` against
      the config, after the family and method names are checked (``common.ConfigError``).
  """

  name: str
  methods: tuple[str, ...]
  train_one: Callable[..., dict]
  batch_text: Callable[[ml_collections.ConfigDict], str]
  line_style: str
  check: Callable[[ml_collections.ConfigDict, str], None] = _no_checks


REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
  """Adds ``family`` to :data:`REGISTRY` (a name is registered once)."""
  if family.name in REGISTRY:
    raise ValueError(f"a family named {family.name!r} is registered already")
  REGISTRY[family.name] = family
  return family


def get(name: str) -> Family:
  """The registered family ``name``."""
  if name not in REGISTRY:
    raise ValueError(f"unknown family {name!r}; registered families: {sorted(REGISTRY)}")
  return REGISTRY[name]


def runner_config(config, **fields) -> ml_collections.ConfigDict:
  """The config a family's runner reads: the comparison's run fields plus ``fields``."""
  base = dict(
    epochs=config.epochs,
    progress=config.progress,
    num_train_eval=config.num_train_eval,
    seeds=config.seeds,
  )
  return ml_collections.ConfigDict(dict(base, **fields))


# ---------------------------------------------------------------------- am_fc


def _train_am_fc(config, data, entry, seed, hooks) -> dict:
  offline = entry.method in am_fc.OFFLINE
  cfg = runner_config(
    config,
    hidden=tuple(config.hidden),
    activation=config.activation,
    batch_size=config.batch_size,
    zoom_batches=0,
    eval_every=0 if offline else max(1, config.eval_samples // config.batch_size),
    eval_split="test",
    methods={entry.method: entry.to_dict()},
  )
  record = am_fc.train_one(cfg, data, entry.method, seed, hooks)
  steps_per_epoch = len(data.train[0]) // config.batch_size
  record["epoch"] = [s / steps_per_epoch for s in record["step"]]
  return record


register(
  Family(
    name="am_fc",
    methods=am_fc.ONLINE + am_fc.OFFLINE,
    train_one=_train_am_fc,
    batch_text=lambda config: f"{config.batch_size}",
    line_style="-",
  )
)


# ------------------------------------------------------------------------- sm


def _check_sm(config, label: str) -> None:
  if len(set(config.hidden)) != 1:
    raise common.ConfigError(
      f"config.methods.{label}: the sm family builds equal hidden widths, got"
      f" config.hidden={tuple(config.hidden)!r}"
    )
  if config.methods[label].method in sm_tables.N_METHODS:
    common.check_int(config, f"methods.{label}.inner_steps", minimum=1)


def _train_sm(config, data, entry, seed, hooks) -> dict:
  batch = config.sm_batch_size
  cfg = runner_config(
    config,
    width=int(config.hidden[0]),
    activation=config.activation,
    batch_size=batch,
    eval_every=max(1, config.eval_samples // batch) if batch else 0,
    methods={entry.method: entry.to_dict()},
  )
  layers = len(config.hidden) + 1
  n = entry.get("inner_steps") if entry.method in sm_tables.N_METHODS else None
  return sm_tables.train_one(cfg, data, layers, entry.method, n, seed, hooks)


register(
  Family(
    name="sm",
    methods=sm_tables.ALL_METHODS,
    train_one=_train_sm,
    batch_text=lambda config: f"{config.sm_batch_size or 'full batch'}",
    line_style="--",
    check=_check_sm,
  )
)


# ---------------------------------------------------------------- distributed


def _check_distributed(config, label: str) -> None:
  common.check_int(config, f"methods.{label}.num_workers", minimum=1)
  if config.activation != "relu":
    raise common.ConfigError(
      f"config.methods.{label}: the distributed family's MLP is ReLU, got"
      f" config.activation={config.activation!r}"
    )


def _train_distributed(config, data, entry, seed, hooks) -> dict:
  per_round = distributed.workers_of(entry) * config.worker_batch_size
  cfg = runner_config(
    config,
    model="mlp",
    hidden=tuple(config.hidden),
    width=16,
    batch_size=config.worker_batch_size,
    rounds=1,
    lr_decay_epochs=(),
    lr_decay_factor=1.0,
    crop=0,
    delay=config.delay,
    eval_every=max(1, round(config.eval_samples / per_round)),
    runs={entry.method: {k: v for k, v in entry.to_dict().items() if k != "family"}},
  )
  record = distributed.train_one(cfg, data, entry.method, seed, hooks)
  record["epoch"] = [s / len(data.train[0]) for s in record["samples"]]
  return record


register(
  Family(
    name="distributed",
    methods=tuple(distributed.P_WORKER) + tuple(distributed.SINGLE),
    train_one=_train_distributed,
    batch_text=lambda config: f"{config.worker_batch_size} per worker per round",
    line_style=":",
    check=_check_distributed,
  )
)
