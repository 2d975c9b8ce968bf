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
:func:`altmin_jax.am.am_adam_rnn` for the RNN); a method's ``dtype`` (``float32`` or
``float64``) is the precision it trains in. Records the training accuracy and loss
beside the held-out ones; writes ``metrics.json`` after every evaluation, checkpoints every
epoch (``--config.resume=True`` continues an interrupted run) and at the end
``accuracy.png`` and a printed table.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np
import optax

import altmin_jax as amj
from experiments import models, workdir
from experiments.configs import common
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
  code_optimizer, code_lr = m.code_optimizer, m.code_lr
  if m.get("code_safeguard", False):
    code_optimizer = optax.chain(
      amj.am.make_code_optimizer(code_optimizer, code_lr), amj.am.scale_by_model_minimizer()
    )
    code_lr = None
  kwargs = dict(
    weight_optimizer=optax.adam(m.weight_lr, eps=m.get("weight_eps", 1e-8)),
    weight_steps=m.weight_steps,
    code_steps=m.code_steps,
    code_lr=code_lr,
    code_optimizer=code_optimizer,
    mu=mu_schedule(m, steps_per_epoch),
  )
  weight_inputs = m.get("weight_inputs", "codes")
  if config.architecture == "elman_rnn":
    if weight_inputs != "codes":
      raise ValueError(f"weight_inputs={weight_inputs!r}: the RNN's AM-Adam takes only 'codes'")
    return amj.am.am_adam_rnn(net, **kwargs), False
  return amj.am_adam(net, weight_inputs=weight_inputs, **kwargs), False


DTYPES = ("float32", "float64")


def in_float64(data):
  """``data`` with every input array in float64 (labels unchanged)."""
  cast = lambda pair: None if pair is None else (np.asarray(pair[0], np.float64), pair[1])
  return dataclasses.replace(
    data, train=cast(data.train), test=cast(data.test), validation=cast(data.validation)
  )


def train_one(config, data, label: str, seed: int, hooks: workdir.RunHooks | None = None) -> dict:
  """One method, one seed: held-out and training accuracy and loss curves and wall times
  (evaluation excluded; ``hooks``: see ``_training.train_and_record``).

  A method with ``dtype="float64"`` trains and is evaluated in float64 (weights, codes,
  optimizer states and inputs) under ``jax.enable_x64``; the rest of the process is
  unaffected."""
  if config.methods[label].get("dtype", "float32") == "float64":
    with jax.enable_x64(True):
      return _train_one(config, in_float64(data), label, seed, hooks, np.float64)
  return _train_one(config, data, label, seed, hooks, None)


def _train_one(config, data, label, seed, hooks, dtype) -> dict:
  m = config.methods[label]
  x_train, y_train = data.train
  steps_per_epoch, epoch_batches = _training.minibatches(x_train, y_train, config.batch_size, seed)
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
  if dtype is not None:
    params = jax.tree.map(lambda t: t.astype(dtype), params)
  batch = config.batch_size
  return _training.train_and_record(
    step,
    params,
    tx.init(params),
    epoch_batches=epoch_batches,
    epochs=config.epochs,
    calls_per_epoch=steps_per_epoch,
    evaluate=_training.evaluator(net.apply, config, data),
    warmup_batch=(x_train[:batch], y_train[:batch]),
    eval_every=config.eval_every,
    desc=f"{label} seed {seed}",
    progress=config.progress,
    hooks=hooks,
  )


def _title(config, data) -> str:
  arch = config.architecture
  if arch == "elman_rnn":
    arch = f"RNN-{config.hidden[0]}, T={data.input_shape[0]}"
  elif arch == "binary_mlp":
    arch = f"binary {'-'.join(map(str, (data.input_shape[0], *config.hidden, 10)))}"
  return f"{arch}, {config.dataset}, {len(common.check_seeds(config))} seed(s)"


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the config's fields before any data is read (``common.ConfigError``): the shared
  ones, ``architecture``, ``downsample``, and every listed method's ``kind``."""
  _training.validate(config, list(config.methods))
  common.check_choice(config, "architecture", models.ARCHITECTURES)
  if "downsample" in config:
    common.check_int(config, "downsample", minimum=1)
  for label in _training.method_labels(config):
    common.check_choice(config, f"methods.{label}.kind", KINDS)
    if "dtype" in config.methods[label]:
      common.check_choice(config, f"methods.{label}.dtype", DTYPES)
    if "weight_inputs" in config.methods[label]:
      common.check_choice(config, f"methods.{label}.weight_inputs", amj.am.WEIGHT_INPUTS)


def run(config: ml_collections.ConfigDict, workdir_path: str) -> dict:
  """Every method and seed of ``config`` (resuming from ``workdir_path`` with
  ``config.resume``); writes the report there and returns the metrics."""
  validate(config)
  labels = _training.method_labels(config)
  data = load_data(config)
  header = {
    "experiment": "am_arch",
    "architecture": config.architecture,
    "dataset": config.dataset,
    "source": data.source,
  }
  log = workdir.RunLog(workdir_path, config, header)
  runs = log.run_all(labels, lambda m, seed, hooks: train_one(config, data, m, seed, hooks))
  return _training.write_report(
    log,
    config,
    runs,
    steps_per_epoch=len(data.train[0]) // config.batch_size,
    per_step=bool(config.eval_every),
    title=_title(config, data),
  )
