"""Fully connected experiments of the AM paper (section 4, supplement D).

Trains one multilayer perceptron per method and seed on one dataset and records
held-out accuracy per epoch, or after every minibatch in the zoom on the first
``config.zoom_batches`` minibatches, or every ``config.eval_every`` minibatches, with
wall time. Methods: ``sgd``, ``adam``,
``am_adam``, ``am_mem``, ``am_adam_offline``, ``am_mem_offline`` and ``admm``
(Taylor et al. 2016, :func:`altmin_jax.am.taylor_admm`). Records the training accuracy and loss
beside the held-out ones; writes ``metrics.json`` after every evaluation, checkpoints every
epoch (``--config.resume=True`` continues an interrupted run) and at the end
``accuracy.png`` and a printed table.
"""

from __future__ import annotations

import jax
import ml_collections
import optax

import altmin_jax as amj
from experiments import models, workdir
from experiments.runners import _training

ONLINE = ("sgd", "adam", "am_adam", "am_mem")
OFFLINE = ("am_adam_offline", "am_mem_offline", "admm")


def load_data(config) -> amj.data.Dataset:
  return _training.load_dataset(config)


def mu_schedule(m, steps_per_epoch: int) -> optax.Schedule:
  return amj.mu_schedule(
    init=m.mu_init,
    batch_increment=m.mu_batch_increment,
    epoch_multiplier=m.mu_epoch_multiplier,
    max_value=m.mu_max,
    steps_per_epoch=steps_per_epoch,
  )


def build_method(
  name: str, m: ml_collections.ConfigDict, net, *, steps_per_epoch: int, num_train: int
) -> tuple[optax.GradientTransformation, bool]:
  """The transformation for method ``name`` and whether it consumes gradients."""
  if name == "sgd":
    return optax.sgd(m.lr), True
  if name == "adam":
    return optax.adam(m.lr), True
  if name == "admm":
    return amj.am.taylor_admm(
      net, num_samples=num_train, beta=m.gamma_prod, gamma=m.gamma_nonlin, warm_start=m.warm_start
    ), False
  offline = name.endswith("_offline")
  mu = mu_schedule(m, 1 if offline else steps_per_epoch)
  code = dict(
    code_steps=m.code_steps,
    code_lr=m.code_lr,
    code_optimizer=m.code_optimizer,
    mu=mu,
    code_proximal=m.code_proximal,
  )
  if offline:
    code["num_samples"] = num_train
  # The paper's single learning rate per AM method (Tables 1-3) is the step size eta of
  # the output layer's SGD update (Algorithm 2.3, line 1).
  output = {"sgd": optax.sgd, "adam": optax.adam}[m.output_optimizer](m.output_lr)
  if name in ("am_adam", "am_adam_offline"):
    factory = amj.am_adam if name == "am_adam" else amj.am_adam_offline
    return factory(
      net, weight_optimizer=optax.adam(m.weight_lr), output_optimizer=output, **code
    ), False
  if name in ("am_mem", "am_mem_offline"):
    factory = amj.am_mem if name == "am_mem" else amj.am_mem_offline
    return factory(net, output_optimizer=output, sweeps=m.sweeps, solver=m.solver, **code), False
  raise ValueError(f"unknown method {name!r}; known methods: {', '.join(ONLINE + OFFLINE)}")


def train_one(config, data, name: str, seed: int, hooks: workdir.RunHooks | None = None) -> dict:
  """One method, one seed: held-out and training accuracy and loss curves and wall times
  (``hooks``: metrics publishing and checkpoints, see ``_training.train_and_record``)."""
  x_train, y_train = data.train
  net = models.mlp(data.input_shape, config.hidden, data.num_classes, config.activation)
  steps_per_epoch, shuffled = _training.minibatches(x_train, y_train, config.batch_size, seed)
  tx, uses_grads = build_method(
    name, config.methods[name], net, steps_per_epoch=steps_per_epoch, num_train=len(x_train)
  )
  loss = amj.losses.softmax_cross_entropy
  step = amj.training.make_train_step(net.apply, tx, loss=loss, uses_gradients=uses_grads)
  params = net.init(jax.random.key(seed))
  offline = name in OFFLINE
  zoom = config.zoom_batches if not offline else 0
  batch = config.batch_size
  if offline:  # one AM iteration is one pass over the whole training set
    epoch_batches = lambda epoch, start: [data.train][start:]
  else:
    epoch_batches = shuffled
  return _training.train_and_record(
    step,
    params,
    tx.init(params),
    epoch_batches=epoch_batches,
    epochs=-(-zoom // steps_per_epoch) if zoom else config.epochs,
    calls_per_epoch=1 if offline else steps_per_epoch,
    evaluate=_training.evaluator(net.apply, config, data),
    warmup_batch=data.train if offline else (x_train[:batch], y_train[:batch]),
    steps_per_call=steps_per_epoch if offline else 1,
    max_steps=zoom,
    eval_every=config.eval_every,
    per_call_eval=bool(zoom),
    desc=f"{name} seed {seed}",
    progress=config.progress,
    hooks=hooks,
  )


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the config's fields before any data is read (``common.ConfigError``)."""
  _training.validate(config, ONLINE + OFFLINE)


def header(config: ml_collections.ConfigDict) -> dict:
  """The fields ``metrics.json`` starts with."""
  return {
    "experiment": "am_fc",
    "dataset": config.dataset,
    "hidden": list(config.hidden),
  }


def run(config: ml_collections.ConfigDict, workdir_path: str) -> dict:
  """Every method and seed of ``config`` (resuming from ``workdir_path`` with
  ``config.resume``); writes the report there and returns the metrics."""
  validate(config)
  methods = _training.method_labels(config)
  data = load_data(config)
  log = workdir.RunLog(workdir_path, config, {**header(config), "source": data.source})
  runs = log.run_all(methods, lambda m, seed, hooks: train_one(config, data, m, seed, hooks))
  title = f"{config.dataset}, {'-'.join(map(str, config.hidden))} hidden, {len(log.seeds)} seed(s)"
  return _training.write_report(
    log,
    config,
    runs,
    steps_per_epoch=len(data.train[0]) // config.batch_size,
    per_step=config.zoom_batches > 0 or config.eval_every > 0,
    title=title,
  )
