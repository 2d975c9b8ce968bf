"""AM beyond fully connected nets (AM paper section 4, supplements B and C; Figures 6-10).

Trains one network per method and seed and records held-out accuracy per epoch (or every
``config.eval_every`` minibatches) with wall time. Architectures (``config.architecture``,
built by ``experiments/models.py``):

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
from experiments import models
from experiments.runners import _training
from experiments.runners.am_fc import mu_schedule

KINDS = ("sgd", "adam", "am_adam")


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
  net = models.am_architecture(
    config.architecture,
    data.input_shape,
    data.num_classes,
    hidden=config.hidden,
    surrogate=m.get("surrogate", "ste"),
  )
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
  if config.architecture not in models.ARCHITECTURES:
    raise ValueError(
      f"unknown architecture {config.architecture!r}; known: {', '.join(models.ARCHITECTURES)}"
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
