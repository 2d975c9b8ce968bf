"""Building blocks of the experiment configs (hyperparameters from the papers).

Configs import ``ml_collections``, the standard library and this module only, and this
module imports ``ml_collections`` and the standard library only: a config is plain data
(method names, network names, numbers) that the runner named by ``config.experiment``
reads and resolves to optimizers and networks (``experiments/runners``,
``experiments/models.py``).
"""

from __future__ import annotations

import ml_collections

# ------------------------------------------------- fully connected AM nets (am_fc)


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


AM_FC_ONLINE = ("am_adam", "am_mem", "sgd", "adam")  # minibatch methods (the zoom runs these)
AM_FC_OFFLINE = ("am_adam_offline", "am_mem_offline", "admm")


def am_fc_methods(table: dict) -> dict:
  """The methods of one column of the AM paper's learning-rate tables (Tables 1-2).

  ``table`` maps a method name to its learning rate (``adam``, ``sgd`` and the AM methods
  present: :func:`am_method`'s ``output_lr``) and ``admm`` to Taylor's ``(gamma_prod,
  gamma_nonlin)``, run with 10 warm-start iterations.
  """
  methods = {"adam": {"lr": table["adam"]}, "sgd": {"lr": table["sgd"]}}
  for name in ("am_adam", "am_mem", "am_adam_offline", "am_mem_offline"):
    if name in table:
      methods[name] = am_method(output_lr=table[name])
  if "admm" in table:
    gamma_prod, gamma_nonlin = table["admm"]
    methods["admm"] = {"gamma_prod": gamma_prod, "gamma_nonlin": gamma_nonlin, "warm_start": 10}
  return methods


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


# ----------------------------------------- AM beyond fully connected nets (am_arch)


def am_arch_method(
  *,
  weight_lr: float,
  code_lr: float,
  code_steps: int,
  weight_steps: int,
  code_optimizer: str = "sgd",
  mu_init: float = 0.01,
  mu_batch_increment: float = 0.0,
  mu_epoch_multiplier: float = 1.0,
  mu_max: float = 1.5,
  **extra,
) -> ml_collections.ConfigDict:
  """Hyperparameters of AM-Adam in an :func:`am_arch` experiment: Adam with ``weight_lr`` on
  every weight subproblem and the mu schedule ``mu_0``, ``+increment`` per batch,
  ``*multiplier`` per epoch, ``<= mu_max``."""
  return ml_collections.ConfigDict(
    dict(
      kind="am_adam",
      weight_lr=weight_lr,
      weight_steps=weight_steps,
      code_lr=code_lr,
      code_steps=code_steps,
      code_optimizer=code_optimizer,
      mu_init=mu_init,
      mu_batch_increment=mu_batch_increment,
      mu_epoch_multiplier=mu_epoch_multiplier,
      mu_max=mu_max,
      **extra,
    )
  )


def am_arch(
  *,
  architecture: str,
  dataset: str,
  methods: dict,
  method_list: tuple[str, ...],
  batch_size: int,
  epochs: int,
  hidden: tuple[int, ...] = (),
  seeds: tuple[int, ...] = (0, 1, 2, 3, 4),
) -> ml_collections.ConfigDict:
  """An experiment of ``experiments/runners/am_arch.py`` (``config.experiment = "am_arch"``).

  ``architecture``: ``lenet5``, ``elman_rnn`` or ``binary_mlp``; every entry of ``methods``
  has a ``kind`` (``sgd``, ``adam`` or ``am_adam``: :func:`am_arch_method`).
  """
  config = ml_collections.ConfigDict()
  config.experiment = "am_arch"
  config.architecture = architecture
  config.dataset = dataset
  config.data_dir = ""
  config.download = False  # let TFDS download a missing dataset (needs network)
  # 0: the dataset's default split (bundled_mnist: first 8,000 train, last 2,000 test;
  # mnist: 50,000 train, 10,000 validation; cifar10: 40,000 / 10,000).
  config.num_train = 0
  config.num_validation = 0  # bundled_mnist: samples after the training ones, before the test
  config.eval_split = "test"  # or "validation": curves on the validation split (tuning)
  config.hidden = hidden
  config.downsample = 1  # elman_rnn: average-pool images by this factor (T = (28 / k)^2)
  config.batch_size = batch_size
  config.epochs = epochs
  config.eval_every = 0  # evaluate every this many minibatches (0: once per epoch)
  config.seeds = seeds
  config.progress = True
  config.method_list = method_list
  config.methods = ml_collections.ConfigDict(methods)
  return config


def am_arch_smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The CI size of an :func:`am_arch` config: bundled data, 1 seed, 1 epoch over 512
  samples (RNN: 7x7 images, T = 49)."""
  config.dataset = "bundled_mnist"
  config.num_train = 512
  config.seeds = (0,)
  config.epochs = 1
  config.batch_size = min(config.batch_size, 128)
  config.progress = False
  if config.architecture == "elman_rnn":
    config.downsample = 4
  return config


LENET5_BATCH = 128


def lenet5(dataset: str, mu_batch_increment: float, arg: str | None) -> ml_collections.ConfigDict:
  """LeNet-5 with supplement B's winning hyperparameters (``lenet5_mnist.py`` and
  ``lenet5_fashion_mnist.py``, which differ in ``dataset`` and ``mu_batch_increment``);
  ``arg``: the options ``smoke`` and ``bundled``."""
  options = parse_arg(arg, {"smoke", "bundled"})
  config = am_arch(
    architecture="lenet5",
    dataset="bundled_mnist" if "bundled" in options else dataset,
    methods={
      "am_adam": am_arch_method(
        weight_lr=0.002,
        code_lr=1.0 / LENET5_BATCH,
        code_optimizer="nesterov",
        code_steps=1,
        weight_steps=1,
        mu_init=0.01,
        mu_batch_increment=mu_batch_increment,
        mu_epoch_multiplier=1.1,
        mu_max=1.5,
      ),
      "adam": {"kind": "adam", "lr": 0.002},
      "sgd": {"kind": "sgd", "lr": 0.02, "lr_decay": 0.9},
    },
    method_list=("am_adam", "adam", "sgd"),
    batch_size=LENET5_BATCH,
    epochs=10,
  )
  return am_arch_smoke(config) if "smoke" in options else config


# ------------------------------------------------ distributed SGD (distributed)


def distributed(*, dataset: str, model: str, runs: dict, rounds: int) -> ml_collections.ConfigDict:
  """Fields shared by the distributed configs (``experiments/runners/distributed.py``).

  ``model``: ``mlp``, ``convnet7`` or ``resnet20``; ``runs``: name -> :func:`run_spec`.
  """
  config = ml_collections.ConfigDict()
  config.experiment = "distributed"
  config.dataset = dataset
  config.data_dir = ""
  config.num_train = 8000  # bundled_mnist: the first 8,000 train, the last 2,000 test
  config.mock_data = 0  # > 0: that many TFDS mock examples (CI without the dataset)
  config.normalization = "standard"  # load_dataset's; "none": pixels in [0, 1]
  config.crop = 0  # > 0: random crops (and flips) of this side to train, centre patch to test
  config.model = model
  config.hidden = (100, 100)
  config.width = 64 if model == "convnet7" else 16
  config.batch_size = 128
  config.rounds = rounds
  config.epochs = 0  # > 0: rounds = epochs * num_train / (num_workers * batch_size), per run
  config.lr_decay_epochs = ()  # multiply the learning rate by lr_decay_factor after these
  config.lr_decay_factor = 0.1
  config.eval_every = max(1, rounds // 20)
  config.delay = "round_robin"
  config.seeds = (0, 1, 2)
  config.progress = True
  config.run_list = tuple(runs)
  config.runs = ml_collections.ConfigDict(runs)
  return config


def run_spec(method: str, lr: float, num_workers: int = 1, **hyperparameters) -> dict:
  """One run of a :func:`distributed` config: the method's name (a key of the runner's
  ``P_WORKER`` or ``SINGLE``), its learning rate, workers and hyperparameters."""
  return dict(method=method, lr=lr, num_workers=num_workers, **hyperparameters)


def distributed_smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The CI size of a :func:`distributed` config: 1 seed, a few rounds, small batches."""
  config.seeds = (0,)
  config.rounds = 4
  config.epochs = 0
  config.eval_every = 2
  config.batch_size = 16
  config.num_train = 1000
  config.progress = False
  return config


# ---------------------------------------------------------------------- options


def parse_arg(arg: str | None, allowed: set[str]) -> set[str]:
  """Comma-separated config options (``"500,zoom,smoke"``), validated."""
  tokens = {t.strip() for t in (arg or "").split(",") if t.strip()}
  unknown = tokens - allowed
  if unknown:
    raise ValueError(f"unknown config options {sorted(unknown)}; allowed: {sorted(allowed)}")
  return tokens
