"""SM paper experiments (section 4, Table 1, Appendix D Tables 2-4): deterministic MLPs.

For every depth in ``config.layers`` trains a ReLU MLP ``784-w-...-w-10`` with full-batch
(deterministic) iterations of surrogate minimization and its baselines, one iteration per
epoch, and records the training loss (mean cross-entropy over the training set) and the
held-out accuracy after every epoch. SM, CGBlock and SSO run once per ``N`` in
``config.inner_steps``; GD+Armijo, DDG and Adam do not depend on ``N``.

``sm`` takes the SM step with the library's step search when its entry says
``step_search=True`` (the library's default; absent or ``False``: the step as it is);
``sm_paper`` always takes the SM step as the paper's Algorithm 1 does. ``adam`` is
``optax.adam(learning_rate)`` on the full-batch gradient, which the step computes (the
other methods compute their own gradients).

Writes to the workdir: ``metrics.json`` (every curve, the tables, the config),
``tables.md`` (the paper's table layouts: Table 1 = evolution over epochs for the deepest
net and the largest ``N``; Tables 2-4 = one per depth, rows ``N``, cells at the last
epoch) and ``train_loss_<L>layers.png``; prints the tables.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import altmin_jax as amj
from altmin_jax import sm
from experiments import models, reporting, workdir
from experiments.configs import common
from experiments.runners import _training

N_METHODS = ("sm", "sm_paper", "cg_block", "cg_block_armijo", "sso")
GRADIENT_METHODS = ("adam",)  # optax transformations that take the loss gradient
ALL_METHODS = (*N_METHODS, "gd_armijo", "ddg", *GRADIENT_METHODS)
LABELS = {
  "sm": "SM",
  "sm_paper": "SM (paper's Algorithm 1)",
  "gd_armijo": "GD+Armijo",
  "cg_block": "CGBlock",
  "cg_block_armijo": "CGBlock+Armijo",
  "sso": "SSO",
  "ddg": "DDG",
  "adam": "Adam",
}


def load_data(config) -> amj.data.Dataset:
  return amj.data.load_dataset(  # the bundled set ignores data_dir
    config.dataset, data_dir=config.data_dir or None, num_train=config.num_train
  )


def build_method(name: str, m: ml_collections.ConfigDict, net, *, inner_steps, layers):
  """The optax transformation of method ``name`` (all but :data:`GRADIENT_METHODS` compute
  their own gradients)."""
  if name in ("sm", "sm_paper"):
    # the paper's Algorithm 1 takes the step as it is; the library's default searches along it
    search = name == "sm" and m.get("step_search", False)
    return sm.surrogate_minimization(
      net,
      inner_steps=inner_steps,
      solver=m.solver,
      delta=m.delta,
      power_iterations=m.power_iterations,
      step_search=sm.local_losses.STEP_SEARCH if search else None,
    )
  if name == "adam":
    return optax.adam(m.learning_rate)
  if name == "gd_armijo":
    return sm.gd_armijo(net, line_search=amj.numerics.ArmijoSearch(init_step=m.init_step))
  if name == "cg_block":
    # The paper's CGBlock takes the plain combined step.
    return sm.cg_block(net, inner_steps=inner_steps, damping=m.damping, line_search=None)
  if name == "cg_block_armijo":
    return sm.cg_block(net, inner_steps=inner_steps, damping=m.damping)
  if name == "sso":
    return sm.sso(net, inner_steps=inner_steps, eta=m.eta)
  if name == "ddg":
    return sm.ddg(
      net,
      learning_rate=m.learning_rate,
      momentum=m.momentum,
      num_modules=min(layers, m.max_modules),
    )
  raise ValueError(f"unknown method {name!r}; known methods: {', '.join(ALL_METHODS)}")


def runs_of(config) -> list[tuple[str, int | None]]:
  """``(method, N)`` pairs in table order (``N`` is ``None`` for GD+Armijo, DDG and Adam)."""
  methods = [t.strip() for m in config.method_list for t in str(m).split(",") if t.strip()]
  unknown = [m for m in methods if m not in ALL_METHODS]
  if unknown:
    raise ValueError(f"unknown methods {unknown}; known methods: {', '.join(ALL_METHODS)}")
  out = []
  for m in methods:
    out.extend((m, int(n)) for n in config.inner_steps) if m in N_METHODS else out.append((m, None))
  return out


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the config's fields before any data is read (``common.ConfigError``)."""
  common.check_run_fields(config)
  for key in ("epochs", "width", "num_train"):
    common.check_int(config, key, minimum=1)
  common.check_choice(config, "activation", models.ACTIVATIONS)
  common.check_names(config, "method_list", ALL_METHODS)
  common.check_hyperparameters(config, "methods")
  for key in ("layers", "inner_steps", "report_epochs"):
    common.check_int_list(config, key, minimum=1)


def train_one(config, data, layers: int, name: str, inner_steps: int | None, seed: int, hooks=None):
  """One run: training loss and accuracy, held-out accuracy and loss and wall time after
  every epoch (``hooks``: metrics publishing and checkpoints, see
  ``_training.train_and_record``).

  Full batch (one iteration per epoch) unless ``config.batch_size`` (optional, ``0``: full
  batch) asks for shuffled minibatches of that size, each one iteration; then
  ``config.eval_every`` (optional) also evaluates every this many iterations. ``record["epoch"]``
  holds the passes over the training set at each evaluation."""
  x, y = (jnp.asarray(a) for a in data.train)
  x_test, y_test = data.test
  hidden = [config.width] * (layers - 1)
  net = models.mlp(data.input_shape, hidden, data.num_classes, config.activation)
  loss = amj.losses.softmax_cross_entropy
  tx = build_method(name, config.methods[name], net, inner_steps=inner_steps or 1, layers=layers)
  takes_gradient = name in GRADIENT_METHODS

  @jax.jit
  def step(params, state, x, y):
    # Every method but Adam runs its own forward and backward passes; timing the step alone
    # keeps an extra loss evaluation out of the recorded wall time.
    if takes_gradient:
      grads = jax.grad(lambda p: jnp.mean(loss(net.apply(p, x), y)))(params)
      updates, state = tx.update(grads, state, params)
    else:
      updates, state = tx.update(None, state, params, batch=(x, y))
    return optax.apply_updates(params, updates), state

  # Training metrics on the whole training set, or on its first config.num_train_eval samples
  # when the config has that field (as the other runners).
  x_fit, y_fit = (jnp.asarray(a) for a in _training.training_subset(config, data))
  train_loss = jax.jit(lambda p: jnp.mean(loss(net.apply(p, x_fit), y_fit)))

  def evaluate(params, state):
    held_out = amj.training.evaluate(net.apply, params, x_test, y_test, loss=loss)
    train_accuracy = amj.training.evaluate(net.apply, params, x_fit, y_fit)["accuracy"]
    return {"train_loss": float(train_loss(params)), "train_accuracy": train_accuracy, **held_out}

  params = net.init(jax.random.key(seed))
  label = f"L{layers} {name}" + (f" N={inner_steps}" if inner_steps else "") + f" seed {seed}"
  batch_size = int(config.get("batch_size", 0))
  if batch_size:  # minibatches of this size (a shuffled pass per epoch), not the paper's
    calls_per_epoch, epoch_batches = _training.minibatches(*data.train, batch_size, seed)
    warmup = (x[:batch_size], y[:batch_size])
  else:  # full batch: one iteration per epoch (the paper's deterministic setting)
    calls_per_epoch = 1
    epoch_batches = lambda epoch, start: [(x, y)][start:]
    warmup = (x, y)
  record = _training.train_and_record(
    step,
    params,
    tx.init(params),
    epoch_batches=epoch_batches,
    epochs=config.epochs,
    calls_per_epoch=calls_per_epoch,
    evaluate=evaluate,
    warmup_batch=warmup,
    eval_every=int(config.get("eval_every", 0)),
    desc=label,
    progress=config.progress,
    hooks=hooks,
  )
  record["epoch"] = [s / calls_per_epoch for s in record["step"]]
  return record


def _key(layers: int, method: str, n: int | None) -> str:
  return f"L{layers}/{method}" + (f"/N{n}" if n else "")


def plot_depth(path: str, curves: dict, *, title: str) -> str:
  """Training loss per epoch: one colour per method, one line style per ``N``."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  methods = list(dict.fromkeys(m for m, _ in curves))
  ns = sorted({n for _, n in curves if n})
  styles = dict(zip(reversed(ns), ["-", "--", ":", "-."] * len(ns)))
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for (m, n), (epochs, c) in curves.items():
    mean = np.asarray(c["train_loss"]["mean"], np.float64)
    ax.plot(
      epochs,
      mean,
      color=f"C{methods.index(m)}",
      linestyle=styles.get(n, "-"),
      label=LABELS[m] + (f" N={n}" if n else ""),
      linewidth=1.5,
    )
  ax.set_yscale("log")
  ax.set_xlabel("epoch (full-batch iterations)")
  ax.set_ylabel("training loss")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def _cell(curves: dict, key: str, epoch_index: int) -> str:
  loss = curves[key]["train_loss"]["mean"][epoch_index]
  acc = curves[key]["accuracy"]["mean"][epoch_index]
  return f"{loss:.4f} / {100 * acc:.2f}%"


def make_tables(config, curves: dict, pairs: list) -> str:
  """Markdown tables in the paper's layouts (cells: training loss / held-out accuracy)."""
  methods = list(dict.fromkeys(m for m, _ in pairs))
  header = "| | " + " | ".join(LABELS[m] for m in methods) + " |"
  rule = "|---" * (len(methods) + 1) + "|"
  blocks = []
  deepest, n_max = max(config.layers), max(int(n) for n in config.inner_steps)
  epochs = [e for e in config.report_epochs if e <= config.epochs] or [config.epochs]

  def key(layers, m, n):
    return _key(layers, m, n if m in N_METHODS else None)

  rows = [
    f"| epoch {e} | " + " | ".join(_cell(curves, key(deepest, m, n_max), e) for m in methods) + " |"
    for e in epochs
  ]
  blocks.append(
    f"Table 1 layout: {deepest} layers, N = {n_max}, training loss / held-out accuracy\n\n"
    + "\n".join([header, rule, *rows])
  )
  for layers in config.layers:
    rows = [
      f"| N = {n} | "
      + " | ".join(_cell(curves, key(layers, m, n), config.epochs) for m in methods)
      + " |"
      for n in config.inner_steps
    ]
    blocks.append(
      f"Tables 2-4 layout: {layers} layers, epoch {config.epochs}, training loss / held-out "
      "accuracy (rows: N parametric steps per iteration; GD+Armijo, DDG and Adam do not use N)"
      "\n\n" + "\n".join([header, rule, *rows])
    )
  return "\n\n".join(blocks) + "\n"


def run(config: ml_collections.ConfigDict, workdir_path: str) -> dict:
  validate(config)
  pairs = runs_of(config)
  data = load_data(config)
  header = {
    "experiment": "sm_tables",
    "dataset": config.dataset,
    "source": data.source,
    "num_train": len(data.train[0]),
    "num_test": len(data.test[0]),
  }
  log = workdir.RunLog(workdir_path, config, header)
  jobs = {_key(layers, name, n): (layers, name, n) for layers in config.layers for name, n in pairs}
  runs = log.run_all(
    jobs, lambda key, seed, hooks: train_one(config, data, *jobs[key], seed, hooks)
  )
  curves, summary = {}, []
  for key, (layers, name, n) in jobs.items():
    records = runs[key]
    curves[key] = {
      metric: reporting.summarize_curves({key: [r[metric] for r in records]})[key]
      for metric in ("train_loss", "accuracy")
    }
    summary.append(
      {
        "layers": layers,
        "method": LABELS[name],
        "N": n if n else "-",
        "train loss": curves[key]["train_loss"]["mean"][-1],
        "accuracy": curves[key]["accuracy"]["mean"][-1],
        "time (s)": float(np.mean([r["time"][-1] for r in records])),
      }
    )
  for layers in config.layers:
    keys = {(m, n): _key(layers, m, n) for m, n in pairs}
    plot_depth(
      f"{workdir_path}/train_loss_{layers}layers.png",
      {mn: (runs[k][0]["epoch"], curves[k]) for mn, k in keys.items()},
      title=f"{config.dataset}, {layers}-layer {config.activation} MLP",
    )
  tables = make_tables(config, curves, pairs)
  with open(f"{workdir_path}/tables.md", "w") as f:
    f.write(tables)
  extra = {"summary": summary, "tables_markdown": tables, "curves": curves}
  metrics = log.payload(extra, complete=True)
  reporting.save_json(workdir_path, "metrics.json", metrics)
  print(
    reporting.format_table(summary, ["layers", "method", "N", "train loss", "accuracy", "time (s)"])
  )
  print(tables)
  print(f"metrics: {workdir_path}/metrics.json  tables: {workdir_path}/tables.md")
  return metrics
