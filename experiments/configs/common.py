"""Building blocks of the experiment configs (hyperparameters from the papers).

Configs import ``ml_collections``, the standard library and this module only, and this
module imports ``ml_collections`` and the standard library only: a config is plain data
(method names, network names, numbers) that the runner named by ``config.experiment``
reads and resolves to optimizers and networks (``experiments/runners``,
``experiments/models.py``).
"""

from __future__ import annotations

import math
from collections.abc import Collection

import ml_collections


class ConfigError(ValueError):
  """A config, option string or override that breaks a rule; the message is one line that
  names the field, the value and the rule (the binary prints it instead of a traceback)."""


# ------------------------------------------------------------- fields of every run


def run_options(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds the workdir fields every config has (``experiments/workdir.py`` reads them):

  * ``resume``: continue the interrupted run in the workdir from its checkpoints;
  * ``overwrite``: delete the results of an earlier run in the workdir and start afresh
    (without either, a workdir holding results is refused).
  """
  config.resume = False
  config.overwrite = False
  return config


# The training metrics recorded beside the held-out ones are measured on the first this many
# training samples (0: all of them), so that a full-size run does not spend a pass over the
# whole training set per evaluation.
NUM_TRAIN_EVAL = 10000

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
  config.progress = True  # False: one printed line per epoch instead of progress bars
  config.num_train_eval = NUM_TRAIN_EVAL
  config.method_list = method_list
  config.methods = ml_collections.ConfigDict(methods)
  return run_options(config)


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
  code_safeguard: bool = False,
  weight_eps: float = 1e-8,
  weight_inputs: str = "codes",
  dtype: str = "float32",
  mu_init: float = 0.01,
  mu_batch_increment: float = 0.0,
  mu_epoch_multiplier: float = 1.0,
  mu_max: float = 1.5,
  **extra,
) -> ml_collections.ConfigDict:
  """Hyperparameters of AM-Adam in an :func:`am_arch` experiment: Adam with ``weight_lr``
  (and epsilon ``weight_eps``, optax's 1e-8 by default) on every weight subproblem, whose
  inputs are ``weight_inputs`` (:func:`altmin_jax.am_adam`'s: the updated ``"codes"`` of eq. 6
  or the ``"forward"`` ones; LeNet-5 and the MLP only, not the RNN), the code
  optimizer (cut per sample by :func:`altmin_jax.am.scale_by_model_minimizer` when
  ``code_safeguard``) and the mu schedule ``mu_0``, ``+increment`` per batch,
  ``*multiplier`` per epoch, ``<= mu_max``; ``dtype="float64"`` trains the method in double
  precision (the runner enables x64 for that method only)."""
  return ml_collections.ConfigDict(
    dict(
      kind="am_adam",
      weight_lr=weight_lr,
      weight_eps=weight_eps,
      weight_inputs=weight_inputs,
      weight_steps=weight_steps,
      code_lr=code_lr,
      code_steps=code_steps,
      code_optimizer=code_optimizer,
      code_safeguard=code_safeguard,
      dtype=dtype,
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
  config.progress = True  # False: one printed line per epoch instead of progress bars
  config.num_train_eval = NUM_TRAIN_EVAL
  config.method_list = method_list
  config.methods = ml_collections.ConfigDict(methods)
  return run_options(config)


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
  config.progress = True  # False: one printed line per evaluation instead of progress bars
  config.num_train_eval = NUM_TRAIN_EVAL
  config.run_list = tuple(runs)
  config.runs = ml_collections.ConfigDict(runs)
  return run_options(config)


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


def parse_arg(arg: str | None, allowed: Collection[str]) -> set[str]:
  """Comma-separated config options (``"500,zoom,smoke"``), validated.

  Raises:
    ConfigError: an option not in ``allowed`` (the message lists the allowed ones).
  """
  tokens = {t.strip() for t in (arg or "").split(",") if t.strip()}
  unknown = tokens - set(allowed)
  if unknown:
    raise ConfigError(
      f"unknown config options {sorted(unknown)} in {arg!r}; allowed (comma separated):"
      f" {sorted(allowed)}"
    )
  return tokens


# ------------------------------------------------------------------- validation
#
# The runners call these on the final config (after the command line's overrides), before
# the workdir is touched or any data is read.


def _value(config: ml_collections.ConfigDict, key: str):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def check_int(config: ml_collections.ConfigDict, key: str, *, minimum: int) -> int:
  """``config.<key>`` is an integer (not a bool) of at least ``minimum``."""
  value = _value(config, key)
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ConfigError(f"config.{key} must be an integer >= {minimum}, got {value!r}")
  return value


def check_int_list(
  config: ml_collections.ConfigDict, key: str, *, minimum: int, empty: bool = False
) -> list[int]:
  """``config.<key>`` is a list of integers of at least ``minimum`` (non-empty unless
  ``empty``)."""
  value = _value(config, key)
  items = list(value) if isinstance(value, (tuple, list)) else [value]
  ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in items)
  if not ok or (not items and not empty):
    rule = "" if empty else "a non-empty list of "
    raise ConfigError(f"config.{key} must be {rule}integers >= {minimum}, got {value!r}")
  return items


def check_number(
  config: ml_collections.ConfigDict,
  key: str,
  *,
  positive: bool = False,
  minimum: float | None = None,
) -> float:
  """``config.<key>`` is a finite real number (``positive``: > 0; ``minimum``: >= it)."""
  value = _value(config, key)
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  if ok and positive and value <= 0:
    ok = False
  if ok and minimum is not None and value < minimum:
    ok = False
  if not ok:
    rule = "> 0" if positive else (f">= {minimum}" if minimum is not None else "finite")
    raise ConfigError(f"config.{key} must be a finite number {rule}, got {value!r}")
  return float(value)


def check_bool(config: ml_collections.ConfigDict, key: str) -> bool:
  """``config.<key>`` is ``True`` or ``False``."""
  value = _value(config, key)
  if not isinstance(value, bool):
    raise ConfigError(f"config.{key} must be True or False, got {value!r}")
  return value


def check_choice(config: ml_collections.ConfigDict, key: str, choices: Collection[str]) -> str:
  """``config.<key>`` is one of ``choices``."""
  value = _value(config, key)
  if value not in choices:
    raise ConfigError(f"config.{key} must be one of {sorted(choices)}, got {value!r}")
  return value


def names(config: ml_collections.ConfigDict, key: str) -> list[str]:
  """A list field of names as a list: ``--config.method_list=adam,am_adam`` arrives as one
  comma-separated string."""
  value = _value(config, key)
  if isinstance(value, str):
    value = (value,)
  return [t.strip() for m in value for t in str(m).split(",") if t.strip()]


def check_names(config: ml_collections.ConfigDict, key: str, known: Collection[str]) -> list[str]:
  """``config.<key>`` (see :func:`names`) is a non-empty list of distinct names in ``known``."""
  listed = names(config, key)
  if not listed:
    raise ConfigError(f"config.{key} must name at least one of {sorted(known)}, got nothing")
  unknown = [n for n in listed if n not in known]
  if unknown:
    raise ConfigError(f"config.{key} has unknown names {unknown}; known: {sorted(known)}")
  if len(set(listed)) != len(listed):
    raise ConfigError(f"config.{key} lists a name twice: {listed}")
  return listed


def check_seeds(config: ml_collections.ConfigDict) -> list[int]:
  """``config.seeds`` is a non-empty list of distinct non-negative integers (``--config.seeds=3``
  and ``--config.seeds=0,1`` are accepted)."""
  value = config.seeds
  items = value if isinstance(value, (tuple, list)) else (value,)
  seeds = []
  for item in items:
    for token in item.split(",") if isinstance(item, str) else (item,):
      token = token.strip() if isinstance(token, str) else token
      if token == "":
        continue
      if isinstance(token, str) and token.isdigit():
        token = int(token)
      if isinstance(token, bool) or not isinstance(token, int) or token < 0:
        raise ConfigError(
          f"config.seeds must be non-negative integers (for example --config.seeds=0,1,2),"
          f" got {value!r}"
        )
      seeds.append(token)
  if not seeds:
    raise ConfigError("config.seeds must list at least one seed, got an empty list")
  if len(set(seeds)) != len(seeds):
    raise ConfigError(f"config.seeds lists a seed twice: {seeds}")
  return seeds


def check_hyperparameters(config: ml_collections.ConfigDict, key: str) -> None:
  """Every method entry under ``config.<key>``: numbers finite, learning rates and epsilons
  (names ending in ``lr`` or ``eps``) positive, iteration counts (names ending in ``steps``)
  integers >= 1."""
  for name, entry in _value(config, key).items():
    if not isinstance(entry, ml_collections.ConfigDict):
      continue
    for field, value in entry.items():
      path = f"{key}.{name}.{field}"
      if field.endswith("steps"):
        check_int(config, path, minimum=1)
      elif field.endswith(("lr", "eps")):
        check_number(config, path, positive=True)
      elif isinstance(value, (int, float)) and not isinstance(value, bool):
        check_number(config, path)


def check_run_fields(config: ml_collections.ConfigDict) -> None:
  """The fields every runner shares, where the config has them: ``seeds``, ``batch_size``,
  ``epochs``, ``progress``, ``resume`` / ``overwrite`` (not both), ``num_train_eval``,
  ``data_dir``, ``download``, ``eval_split``."""
  check_seeds(config)
  for key, minimum in (("batch_size", 1), ("num_train_eval", 0), ("eval_every", 0)):
    if key in config:
      check_int(config, key, minimum=minimum)
  for key in ("progress", "resume", "overwrite", "download"):
    if key in config:
      check_bool(config, key)
  if config.get("resume") and config.get("overwrite"):
    raise ConfigError("config.resume and config.overwrite are both True: choose one")
  if "data_dir" in config and not isinstance(config.data_dir, str):
    raise ConfigError(f"config.data_dir must be a path string, got {config.data_dir!r}")
  if "eval_split" in config:
    check_choice(config, "eval_split", ("test", "validation"))
