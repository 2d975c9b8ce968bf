"""AM beyond fully connected nets (AM paper section 4, supplements B and C; Figures 6-10).

Trains one network per method and seed and records held-out accuracy per epoch (or every
``config.eval_every`` minibatches) with wall time. Architectures (``config.architecture``):

* ``lenet5``: LeNet-5 on 28x28x1 images (MNIST, Fashion-MNIST);
* ``elman_rnn``: the Elman RNN of supplement C.1 on sequential MNIST, one pixel per step
  (``config.downsample > 1`` average-pools the images first, for short CI runs);
* ``binary_mlp``: the 784-500-500-10 sign/tanh network of section 4.

Each entry of ``config.methods`` is a labelled method whose ``kind`` is ``sgd``, ``adam``
(backprop; on the binary net through the straight-through or tanh' surrogate given by its
``surrogate``) or ``am_adam`` (:func:`altmin_jax.am_adam`, or
:func:`altmin_jax.am.am_adam_rnn` for the RNN). Writes ``metrics.json`` and
``accuracy.png`` to the workdir and prints a table.
"""

from __future__ import annotations

import jax
import ml_collections
import optax

import altmin_jax as amj
from experiments.runners import _training
from experiments.runners.am_fc import mu_schedule

ARCHITECTURES = ("lenet5", "elman_rnn", "binary_mlp")
KINDS = ("sgd", "adam", "am_adam")


# ------------------------------------------------------------ config builders


def am_adam_method(
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
  """Hyperparameters of AM-Adam: Adam with ``weight_lr`` on every weight subproblem and the
  mu schedule ``mu_0``, ``+increment`` per batch, ``*multiplier`` per epoch, ``<= mu_max``."""
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


def arch_config(
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
  """An experiment of this runner (``config.experiment = "am_arch"``)."""
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


def smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The CI size: bundled data, 1 seed, 1 epoch over 512 samples (RNN: 7x7 images, T = 49)."""
  config.dataset = "bundled_mnist"
  config.num_train = 512
  config.seeds = (0,)
  config.epochs = 1
  config.batch_size = min(config.batch_size, 128)
  config.progress = False
  if config.architecture == "elman_rnn":
    config.downsample = 4
  return config


# --------------------------------------------------------------------- runner


def load_data(config) -> amj.data.Dataset:
  """The dataset shaped for the architecture: images for LeNet-5, vectors for the binary
  net, ``(N, T, 1)`` pixel sequences for the RNN."""
  data = _training.load_dataset(config, flatten=config.architecture == "binary_mlp")
  if config.architecture != "elman_rnn":
    return data

  def sequences(part):
    x, y = part
    k = config.downsample
    if k > 1:
      n, h, w, c = x.shape
      x = x[:, : h // k * k, : w // k * k].reshape(n, h // k, k, w // k, k, c).mean(axis=(2, 4))
    return amj.networks.as_sequences(x, 1), y

  return amj.data.Dataset(
    name=data.name,
    train=sequences(data.train),
    test=sequences(data.test),
    num_classes=data.num_classes,
    source=data.source,
    validation=None if data.validation is None else sequences(data.validation),
    mean=data.mean,
    std=data.std,
  )


def build_network(config, data: amj.data.Dataset, m: ml_collections.ConfigDict):
  if config.architecture == "lenet5":
    return amj.networks.lenet5(data.input_shape, data.num_classes)
  if config.architecture == "binary_mlp":
    sizes = (data.input_shape[0], *config.hidden, data.num_classes)
    return amj.networks.binary_mlp(sizes, surrogate=m.get("surrogate", "ste"))
  if config.architecture == "elman_rnn":
    (hidden,) = config.hidden
    return amj.networks.elman_rnn(hidden, seq_len=data.input_shape[0], num_classes=data.num_classes)
  raise ValueError(
    f"unknown architecture {config.architecture!r}; known architectures: {', '.join(ARCHITECTURES)}"
  )


def build_method(config, m: ml_collections.ConfigDict, net, steps_per_epoch: int):
  """The transformation of one method and whether it consumes gradients."""
  if m.kind == "sgd":
    lr = m.lr
    if m.get("lr_decay", 1.0) != 1.0:  # the paper's per-epoch decay of SGD
      lr = optax.exponential_decay(m.lr, steps_per_epoch, m.lr_decay, staircase=True)
    return optax.sgd(lr), True
  if m.kind == "adam":
    return optax.adam(m.lr), True
  if m.kind != "am_adam":
    raise ValueError(f"unknown method kind {m.kind!r}; known kinds: {', '.join(KINDS)}")
  kwargs = dict(
    weight_optimizer=optax.adam(m.weight_lr),
    weight_steps=m.weight_steps,
    code_steps=m.code_steps,
    code_lr=m.code_lr,
    code_optimizer=m.code_optimizer,
    mu=mu_schedule(m, steps_per_epoch),
  )
  if config.architecture == "elman_rnn":
    return amj.am.am_adam_rnn(net, **kwargs), False
  return amj.am_adam(net, **kwargs), False


def train_one(config, data, label: str, seed: int) -> dict:
  """One method, one seed: accuracy and loss curves and wall times (evaluation excluded)."""
  m = config.methods[label]
  x_train, y_train = data.train
  x_eval, y_eval = _training.eval_data(config, data)
  steps_per_epoch = len(x_train) // config.batch_size
  net = build_network(config, data, m)
  tx, uses_grads = build_method(config, m, net, steps_per_epoch)
  loss = amj.losses.softmax_cross_entropy
  step = amj.training.make_train_step(net.apply, tx, loss=loss, uses_gradients=uses_grads)
  params = net.init(jax.random.key(seed))
  batch = config.batch_size
  return _training.train_and_record(
    step,
    params,
    tx.init(params),
    epoch_batches=lambda epoch: amj.data.iterate_batches(
      x_train, y_train, batch, seed=seed, epoch=epoch
    ),
    epochs=config.epochs,
    calls_per_epoch=steps_per_epoch,
    evaluate=lambda p: amj.training.evaluate(net.apply, p, x_eval, y_eval, loss=loss),
    warmup_batch=(x_train[:batch], y_train[:batch]),
    eval_every=config.eval_every,
    desc=f"{label} seed {seed}",
    progress=config.progress,
  )


def _title(config, data) -> str:
  arch = config.architecture
  if arch == "elman_rnn":
    arch = f"RNN-{config.hidden[0]}, T={data.input_shape[0]}"
  elif arch == "binary_mlp":
    arch = f"binary {'-'.join(map(str, (data.input_shape[0], *config.hidden, 10)))}"
  return f"{arch}, {config.dataset}, {len(config.seeds)} seed(s)"


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  labels = _training.method_labels(config)
  unknown = [m for m in labels if m not in config.methods]
  if unknown:
    raise ValueError(f"unknown methods {unknown}; known methods: {', '.join(config.methods)}")
  if config.architecture not in ARCHITECTURES:
    raise ValueError(
      f"unknown architecture {config.architecture!r}; known: {', '.join(ARCHITECTURES)}"
    )
  data = load_data(config)
  runs = {m: [train_one(config, data, m, seed) for seed in config.seeds] for m in labels}
  header = {
    "experiment": "am_arch",
    "architecture": config.architecture,
    "dataset": config.dataset,
    "source": data.source,
  }
  return _training.write_report(
    workdir,
    header,
    config,
    runs,
    steps_per_epoch=len(data.train[0]) // config.batch_size,
    per_step=bool(config.eval_every),
    title=_title(config, data),
  )
