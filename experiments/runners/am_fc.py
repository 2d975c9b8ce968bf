"""Fully connected experiments of the AM paper (section 4, supplement D).

Trains one multilayer perceptron per method and seed on one dataset and records
held-out accuracy per epoch, or after every minibatch in the zoom on the first
``config.zoom_batches`` minibatches, or every ``config.eval_every`` minibatches, with
wall time. Methods: ``sgd``, ``adam``,
``am_adam``, ``am_mem``, ``am_adam_offline``, ``am_mem_offline`` and ``admm``
(Taylor et al. 2016, :func:`altmin_jax.am.taylor_admm`). Writes ``metrics.json`` and
``accuracy.png`` to the workdir and prints a table.
"""

from __future__ import annotations

import time

import jax
import ml_collections
import numpy as np
import optax

import altmin_jax as amj
from experiments import reporting

ONLINE = ("sgd", "adam", "am_adam", "am_mem")
OFFLINE = ("am_adam_offline", "am_mem_offline", "admm")
ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jax.numpy.tanh, "sigmoid": jax.nn.sigmoid}


def load_data(config) -> amj.data.Dataset:
  kwargs = {}
  if config.dataset == "bundled_mnist":
    kwargs["num_train"] = config.num_train
  else:
    kwargs["data_dir"] = config.data_dir or None
    if config.get("max_rows"):
      kwargs["max_rows"] = config.max_rows  # HIGGS: read only the first rows of the CSV
  return amj.data.load_dataset(config.dataset, **kwargs)


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


def train_one(config, data, name: str, seed: int) -> dict:
  """One method, one seed: accuracy curve, loss curve and wall times."""
  x_train, y_train = data.train
  x_test, y_test = data.test
  sizes = [int(np.prod(data.input_shape)), *config.hidden, data.num_classes]
  net = amj.networks.mlp(sizes, activation=ACTIVATIONS[config.activation])
  steps_per_epoch = len(x_train) // config.batch_size
  tx, uses_grads = build_method(
    name, config.methods[name], net, steps_per_epoch=steps_per_epoch, num_train=len(x_train)
  )
  loss = amj.losses.softmax_cross_entropy
  step = amj.training.make_train_step(net.apply, tx, loss=loss, uses_gradients=uses_grads)
  params = net.init(jax.random.key(seed))
  opt_state = tx.init(params)

  def evaluate(params):
    return amj.training.evaluate(net.apply, params, x_test, y_test, loss=loss)

  record = {"step": [], "accuracy": [], "loss": [], "time": []}
  elapsed, done = 0.0, 0

  def log(params):
    metrics = evaluate(params)
    record["step"].append(done)
    record["accuracy"].append(metrics["accuracy"])
    record["loss"].append(metrics["loss"])
    record["time"].append(elapsed)

  log(params)
  offline = name in OFFLINE
  # Compile outside the timed region: steps are pure, so a discarded call is harmless.
  warm_x, warm_y = (
    data.train if offline else (x_train[: config.batch_size], y_train[: config.batch_size])
  )
  jax.block_until_ready(step(params, opt_state, warm_x, warm_y))
  zoom = config.zoom_batches if not offline else 0
  epochs = -(-zoom // steps_per_epoch) if zoom else config.epochs
  total = epochs if offline else (zoom or epochs * steps_per_epoch)
  bar = reporting.progress(range(total), desc=f"{name} seed {seed}", enabled=config.progress)
  bar_iter = iter(bar)
  for epoch in range(epochs):
    batches = (
      [data.train]
      if offline
      else amj.data.iterate_batches(x_train, y_train, config.batch_size, seed=seed, epoch=epoch)
    )
    for x, y in batches:
      if zoom and done >= zoom:
        break
      start = time.perf_counter()
      params, opt_state, _ = step(params, opt_state, x, y)
      jax.block_until_ready(params)
      elapsed += time.perf_counter() - start
      done += steps_per_epoch if offline else 1  # offline: one pass = one epoch of batches
      next(bar_iter, None)
      if zoom or (config.eval_every and done % config.eval_every == 0):
        log(params)
    if not zoom and not config.eval_every:
      log(params)
  if record["step"][-1] != done:
    log(params)
  if hasattr(bar, "close"):
    bar.close()
  return record


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  # "--config.method_list=adam,am_adam" arrives as one comma-separated string.
  methods = [t.strip() for m in config.method_list for t in str(m).split(",") if t.strip()]
  unknown = [m for m in methods if m not in ONLINE + OFFLINE]
  if unknown:
    raise ValueError(f"unknown methods {unknown}; known methods: {', '.join(ONLINE + OFFLINE)}")
  data = load_data(config)
  runs = {m: [train_one(config, data, m, seed) for seed in config.seeds] for m in methods}

  curves = {
    m: reporting.summarize_curves({m: [r["accuracy"] for r in runs[m]]})[m] for m in methods
  }
  per_step = config.zoom_batches > 0 or config.eval_every > 0
  steps_per_epoch = len(data.train[0]) // config.batch_size
  for m in methods:
    steps = runs[m][0]["step"]
    curves[m]["x"] = steps if per_step else [s / steps_per_epoch for s in steps]
  x_label = "minibatches" if per_step else "epoch"
  rows = []
  for m in methods:
    final = [r["accuracy"][-1] for r in runs[m]]
    mean, spread = reporting.mean_and_spread(final)
    rows.append(
      {
        "method": m,
        "accuracy": mean,
        "spread": spread,
        "train time (s)": float(np.mean([r["time"][-1] for r in runs[m]])),
      }
    )
  metrics = {
    "experiment": "am_fc",
    "dataset": config.dataset,
    "source": data.source,
    "hidden": list(config.hidden),
    "x_axis": x_label,
    "seeds": list(config.seeds),
    "summary": rows,
    "curves": curves,
    "runs": runs,
    "config": config.to_dict(),
  }
  reporting.save_json(workdir, "metrics.json", metrics)
  title = (
    f"{config.dataset}, {'-'.join(map(str, config.hidden))} hidden, {len(config.seeds)} seed(s)"
  )
  reporting.plot_curves(
    f"{workdir}/accuracy.png", curves, xlabel=x_label, ylabel="held-out accuracy", title=title
  )
  print(reporting.format_table(rows, ["method", "accuracy", "spread", "train time (s)"]))
  print(f"metrics: {workdir}/metrics.json  plot: {workdir}/accuracy.png")
  return metrics
