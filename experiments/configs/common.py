"""Building blocks of the experiment configs (hyperparameters from the papers)."""

from __future__ import annotations

import ml_collections


def am_method(
  *,
  output_lr: float,
  output_optimizer: str = "sgd",
  weight_lr: float = 2e-3,
  code_steps: int = 5,
  code_lr: float = 0.01,
  mu_init: float = 0.01,
  mu_batch_increment: float = 0.0,
  mu_epoch_multiplier: float = 1.1,
  mu_max: float = 1.5,
  **extra,
) -> ml_collections.ConfigDict:
  """Hyperparameters of one AM method.

  ``output_lr`` is the paper's per-method learning rate (Tables 1-3): the step size
  of the output layer's update (Algorithm 2.3, line 1). Hidden layers use Adam with
  ``weight_lr`` (AM-Adam) or their co-activation memory (AM-mem). The mu schedule
  defaults to the paper-era one: ``mu_0 = 0.01``, ``mu <- 1.1 mu`` per epoch, capped at 1.5.
  """
  return ml_collections.ConfigDict(
    dict(
      output_lr=output_lr,
      output_optimizer=output_optimizer,
      weight_lr=weight_lr,
      code_steps=code_steps,
      code_lr=code_lr,
      code_optimizer="sgd",
      code_proximal=True,
      mu_init=mu_init,
      mu_batch_increment=mu_batch_increment,
      mu_epoch_multiplier=mu_epoch_multiplier,
      mu_max=mu_max,
      sweeps=1,
      solver="bcd",
      **extra,
    )
  )


def am_fc(
  *,
  dataset: str,
  hidden: tuple[int, ...],
  methods: dict,
  method_list: tuple[str, ...],
  epochs: int = 50,
  batch_size: int = 200,
  seeds: tuple[int, ...] = (0, 1, 2, 3, 4),
  zoom_batches: int = 0,
) -> ml_collections.ConfigDict:
  """A fully connected AM experiment (``experiments/runners/am_fc.py``)."""
  config = ml_collections.ConfigDict()
  config.experiment = "am_fc"
  config.dataset = dataset
  config.data_dir = ""
  config.download = False  # let TFDS download a missing dataset (needs network)
  # 0: the dataset's default split (bundled_mnist: first 8,000 train, last 2,000 test;
  # mnist: 50,000 train, 10,000 validation; cifar10: 40,000 / 10,000).
  config.num_train = 0
  config.num_validation = 0  # bundled_mnist: samples after the training ones, before the test
  config.eval_split = "test"  # or "validation": curves on the validation split (tuning)
  config.hidden = hidden
  config.activation = "relu"
  config.batch_size = batch_size
  config.epochs = epochs
  config.zoom_batches = zoom_batches
  config.eval_every = 0  # evaluate every this many minibatches (0: once per epoch)
  config.seeds = seeds
  config.progress = True
  config.method_list = method_list
  config.methods = ml_collections.ConfigDict(methods)
  return config


def smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The CI size of any fully connected config: bundled data, 1 seed, tiny budgets."""
  config.dataset = "bundled_mnist"
  config.num_train = 1000
  config.seeds = (0,)
  config.epochs = 2
  config.progress = False
  if config.zoom_batches:
    config.zoom_batches = 3
  return config


def parse_arg(arg: str | None, allowed: set[str]) -> set[str]:
  """Comma-separated config options (``"500,zoom,smoke"``), validated."""
  tokens = {t.strip() for t in (arg or "").split(",") if t.strip()}
  unknown = tokens - allowed
  if unknown:
    raise ValueError(f"unknown config options {sorted(unknown)}; allowed: {sorted(allowed)}")
  return tokens
