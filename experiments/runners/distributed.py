"""Distributed-SGD experiments: EASGD family and DC-ASGD family on simulated workers.

Every run trains p workers stacked on one device (``altmin_jax.distributed``'s
simulation mode): per round each worker draws its own minibatch, computes its gradient at
its own (possibly stale) copy, and the method's ``update`` applies the round (pushes in
the delay schedule's order). The centre variable (``altmin_jax.distributed.centre``) is
evaluated on the test split every ``eval_every`` rounds. Single-worker baselines (``sgd``,
``averaged_sgd``, ``mvasgd``, ``msgd``) run with p = 1.

Config fields: ``dataset``, ``data_dir``, ``num_train`` (bundled MNIST), ``mock_data``
(number of TFDS mock examples, 0 for real data), ``normalization`` (``load_dataset``'s:
``"standard"``, or ``"none"`` for pixels in [0, 1]), ``crop`` (0, or the side of the
random training crops below), ``model`` (``mlp`` with ``hidden``, ``convnet7`` or
``resnet20`` with ``width``; built by ``experiments/models.py``), ``batch_size`` (per
worker), ``rounds``, or ``epochs`` > 0 to derive the rounds from passes over the training
images, ``lr_decay_epochs`` and ``lr_decay_factor`` (the learning rate is multiplied by the
factor after each of these epochs), ``eval_every``, ``delay`` (``round_robin`` or
``random``), ``seeds``, ``run_list`` and ``runs`` (name -> ``method``, ``num_workers``,
``lr`` and the method's hyperparameters). One round draws ``num_workers * batch_size``
training images, so an epoch is ``num_train / (num_workers * batch_size)`` rounds. The
centre variable's accuracy and loss on the first ``num_train_eval`` training images are
recorded beside the held-out ones. Writes ``metrics.json`` after every evaluation and
checkpoints (``--config.resume=True`` continues an interrupted run), and at the end
``accuracy.png`` and a printed table.

Image preprocessing with ``crop = c`` (EASGD supplement, section 9.1, for CIFAR: random
crops of 3 x 28 x 28 and their horizontal flips for training; losses and errors computed
on the centre patch): every training image of a minibatch is cut to a c x c patch at a
uniformly random offset and flipped left-right with probability 1/2, drawn from a NumPy
generator seeded by the run's seed (one vectorised gather per minibatch); the test images
are cut to their centre c x c patch once, and the model is built for c x c inputs.
"""

from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import altmin_jax as amj
import altmin_jax.distributed as dist
from experiments import models, reporting, workdir
from experiments.configs import common
from experiments.runners import _training

P_WORKER = {
  "easgd": dist.easgd,
  "async_easgd": dist.async_easgd,
  "eamsgd": dist.eamsgd,
  "downpour": dist.downpour,
  "mdownpour": dist.mdownpour,
  "dc_asgd": dist.dc_asgd,
  "dc_asgd_adaptive": dist.dc_asgd_adaptive,
  "async_sgd": dist.async_sgd,
  "ssgd": dist.ssgd,
  "dc_ssgd": dist.dc_ssgd,
}
SINGLE = {
  "sgd": optax.sgd,
  "averaged_sgd": dist.averaged_sgd,
  "mvasgd": dist.mvasgd,
  "msgd": dist.msgd,
}
HYPERPARAMETERS = ("beta", "rho", "communication_period", "momentum", "lambda_0", "moving_rate")


# ---------------------------------------------------------------------- models


def build_model(config, input_shape, num_classes):
  """``(init(key) -> params, apply(params, x) -> logits)`` of ``config.model`` with its
  ``hidden`` / ``width`` (:func:`experiments.models.classifier`)."""
  return models.classifier(
    config.model, input_shape, num_classes, hidden=config.hidden, width=config.width
  )


# ------------------------------------------------------------------------ data


def load_data(config) -> amj.data.Dataset:
  flatten = config.model == "mlp"
  normalization = config.get("normalization", "standard")
  spec = amj.data.SPECS.get(config.dataset)  # an unknown name fails in load_dataset
  if spec is not None and spec.bundled:
    return amj.data.load_dataset(
      config.dataset, num_train=config.num_train, flatten=flatten, normalization=normalization
    )
  context = contextlib.nullcontext()
  kwargs = {"data_dir": config.data_dir or None}
  if config.mock_data:
    import tensorflow_datasets as tfds

    context = tfds.testing.mock_data(num_examples=config.mock_data)
    kwargs = {"source": "tfds", "num_train": config.mock_data // 2}
  with context:
    return amj.data.load_dataset(
      config.dataset, flatten=flatten, normalization=normalization, **kwargs
    )


def check_crop(crop: int, input_shape: tuple[int, ...]) -> None:
  """``crop`` must be 0 (off) or fit inside the ``(H, W, C)`` images."""
  if crop == 0:
    return
  if len(input_shape) != 3:
    raise common.ConfigError(
      f"crop={crop!r} needs (height, width, channels) images, got input shape {input_shape} "
      "(flattened inputs: use a convolutional model)"
    )
  if isinstance(crop, bool) or not isinstance(crop, int) or not 0 < crop <= min(input_shape[:2]):
    raise common.ConfigError(
      f"crop must be 0 or an integer in [1, {min(input_shape[:2])}], got {crop!r}"
    )


def random_crops(images: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """A random ``size x size`` patch of every image, flipped left-right with probability 1/2.

  Args:
    images: ``(..., H, W, C)``; every image gets its own offset and flip.
    size: the patch side.
    rng: the NumPy generator drawing the offsets (uniform over the ``H - size + 1`` by
      ``W - size + 1`` positions) and the flips.

  Returns:
    ``(..., size, size, C)``, gathered with one fancy-indexing call.
  """
  *lead, h, w, c = images.shape
  flat = images.reshape(-1, h, w, c)
  n = flat.shape[0]
  top = rng.integers(0, h - size + 1, n)
  left = rng.integers(0, w - size + 1, n)
  flip = rng.random(n) < 0.5
  steps = np.arange(size)
  rows = top[:, None] + steps  # (n, size)
  cols = left[:, None] + np.where(flip[:, None], size - 1 - steps, steps)  # reversed if flipped
  patches = flat[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
  return patches.reshape(*lead, size, size, c)


def centre_crops(images: np.ndarray, size: int) -> np.ndarray:
  """The centre ``size x size`` patch of ``(..., H, W, C)`` images (offset ``(H - size) // 2``)."""
  h, w = images.shape[-3:-1]
  top, left = (h - size) // 2, (w - size) // 2
  return images[..., top : top + size, left : left + size, :]


def num_rounds(config, num_workers: int, num_train: int) -> int:
  """``config.rounds``, or with ``config.epochs > 0`` the rounds of that many passes."""
  epochs = config.get("epochs", 0)
  if not epochs:
    return config.rounds
  return max(1, math.ceil(epochs * num_train / (num_workers * config.batch_size)))


def learning_rate(config, spec, num_workers: int, num_train: int):
  """The run's constant ``spec.lr``, or a step schedule of the round count multiplying it by
  ``config.lr_decay_factor`` after each epoch in ``config.lr_decay_epochs``."""
  decay_epochs = tuple(config.get("lr_decay_epochs", ()))
  if not decay_epochs:
    return spec.lr
  rounds_per_epoch = num_train / (num_workers * config.batch_size)
  boundaries = {}
  for epoch in decay_epochs:
    at = max(1, round(epoch * rounds_per_epoch))
    boundaries[at] = boundaries.get(at, 1.0) * config.lr_decay_factor
  return optax.piecewise_constant_schedule(spec.lr, boundaries)


def build_method(spec, lr=None) -> tuple[optax.GradientTransformation, int]:
  """The transformation of a run and its number of workers (``lr``: a schedule or constant
  that replaces ``spec.lr``)."""
  lr = spec.lr if lr is None else lr
  kwargs = {k: spec[k] for k in HYPERPARAMETERS if k in spec and spec[k] is not None}
  if spec.method in SINGLE:
    return SINGLE[spec.method](lr, **kwargs), 1
  if spec.method in P_WORKER:
    p = spec.num_workers
    return P_WORKER[spec.method](lr, num_workers=p, **kwargs), p
  known = ", ".join(sorted({**P_WORKER, **SINGLE}))
  raise ValueError(f"unknown method {spec.method!r}; known methods: {known}")


def workers_of(spec) -> int:
  return spec.num_workers if spec.method in P_WORKER else 1


# ------------------------------------------------------------------- training


def train_one(config, data, name: str, seed: int, hooks: workdir.RunHooks | None = None) -> dict:
  """One run, one seed: the centre variable's held-out and training accuracy and loss every
  ``config.eval_every`` rounds, with wall time (``hooks``: metrics publishing and
  checkpoints, see ``_training.train_and_record``; the batch and crop generators are
  checkpointed too, so a resumed run draws the same batches)."""
  spec = config.runs[name]
  x_train, y_train = data.train
  x_test, y_test = data.test
  p = workers_of(spec)
  tx, p = build_method(spec, learning_rate(config, spec, p, len(x_train)))
  rounds = num_rounds(config, p, len(x_train))
  crop = config.get("crop", 0)
  check_crop(crop, data.input_shape)
  input_shape = data.input_shape
  x_fit, y_fit = _training.training_subset(config, data)
  if crop:  # evaluation on the centre patch
    x_test, x_fit = centre_crops(x_test, crop), centre_crops(x_fit, crop)
    input_shape = x_test.shape[1:]
  crop_rng = np.random.default_rng([seed, 1])  # own stream: the batch indices ignore crop
  init, apply = build_model(config, input_shape, data.num_classes)
  loss_fn = amj.losses.softmax_cross_entropy

  def batch(idx):
    x = x_train[idx]
    return (random_crops(x, crop, crop_rng) if crop else x), y_train[idx]

  def loss(params, x, y):
    return jnp.mean(loss_fn(apply(params, x), y))

  @jax.jit
  def step(params, state, x, y, order, active):
    grads = jax.vmap(jax.grad(loss))(params, x, y)  # each worker at its own copy
    updates, state = tx.update(grads, state, params, order=order, active=active)
    return optax.apply_updates(params, updates), state

  one = init(jax.random.key(seed))
  params = dist.replicate(one, p)
  state = tx.init(params)
  if config.delay == "random":
    schedule = dist.random_delays(jax.random.key(seed), p, rounds, participation=0.8)
  else:
    schedule = dist.round_robin(p, rounds)
  order, active = np.asarray(schedule.order), np.asarray(schedule.active)
  rng = np.random.default_rng(seed)

  def centre(params, state):
    if spec.method == "sgd":
      return jax.tree.map(lambda a: a[0], params)
    c = dist.centre(state)
    return jax.tree.map(lambda a: a[0], c) if spec.method in SINGLE else c

  def evaluate(params, state):
    model = centre(params, state)
    held_out = amj.training.evaluate(apply, model, x_test, y_test, loss=loss_fn)
    train = amj.training.evaluate(apply, model, x_fit, y_fit, loss=loss_fn)
    return {**held_out, **{f"train_{k}": v for k, v in train.items()}}

  def rounds_from(epoch, start):  # one "epoch" holds every round; batches drawn lazily
    for r in range(start, rounds):
      x, y = batch(rng.integers(0, len(x_train), size=(p, config.batch_size)))
      yield x, y, order[r], active[r]

  # The compilation call's batch is drawn first from both generators (a resumed run
  # restores their states from its checkpoint afterwards).
  warmup = (*batch(rng.integers(0, len(x_train), size=(p, config.batch_size))), order[0], active[0])
  record = _training.train_and_record(
    step,
    params,
    state,
    epoch_batches=rounds_from,
    epochs=1,
    calls_per_epoch=rounds,
    evaluate=evaluate,
    warmup_batch=warmup,
    eval_every=config.eval_every,
    desc=f"{name} seed {seed}",
    progress=config.progress,
    line_per_eval=True,
    hooks=hooks,
    host_rngs=(rng, crop_rng),
  )
  record["round"] = list(record["step"])
  record["samples"] = [r * p * config.batch_size for r in record["step"]]
  return record


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the config's fields before any data is read (``common.ConfigError``)."""
  common.check_run_fields(config)
  for key, minimum in (("rounds", 1), ("epochs", 0), ("num_train", 0), ("mock_data", 0)):
    common.check_int(config, key, minimum=minimum)
  common.check_int(config, "eval_every", minimum=1)
  common.check_int(config, "crop", minimum=0)
  common.check_choice(config, "model", models.CLASSIFIERS)
  common.check_choice(config, "delay", ("round_robin", "random"))
  common.check_choice(config, "normalization", ("standard", "none"))
  names = common.check_names(config, "run_list", list(config.runs))
  known = sorted({**P_WORKER, **SINGLE})
  for name in names:
    common.check_choice(config, f"runs.{name}.method", known)
    common.check_number(config, f"runs.{name}.lr", positive=True)
    common.check_int(config, f"runs.{name}.num_workers", minimum=1)


def run(config: ml_collections.ConfigDict, workdir_path: str) -> dict:
  """Every run and seed of ``config`` (resuming from ``workdir_path`` with
  ``config.resume``); writes the report there and returns the metrics."""
  validate(config)
  names = common.names(config, "run_list")
  data = load_data(config)
  header = {
    "experiment": "distributed",
    "dataset": config.dataset,
    "source": data.source,
    "model": config.model,
  }
  log = workdir.RunLog(workdir_path, config, header)
  runs = log.run_all(names, lambda n, seed, hooks: train_one(config, data, n, seed, hooks))
  curves = _training.curves_of(runs, list)
  rows = []
  for n in names:
    spec = config.runs[n]
    row = _training.final_row(runs[n])
    rows.append({"run": n, "method": spec.method, "workers": workers_of(spec), **row})
  metrics = log.payload({"x_axis": "rounds", "summary": rows, **curves}, complete=True)
  title = f"{config.dataset}, {config.model}, centre variable, {len(log.seeds)} seed(s)"
  return reporting.write_report(
    workdir_path,
    metrics,
    ["run", "workers", "accuracy", "spread", "loss", "train accuracy", "train time (s)"],
    xlabel="rounds",
    ylabel="test accuracy",
    title=title,
  )
