"""Every method on one Fashion-MNIST net, selected on the validation split (issue 15, req. 5-6).

Runner: ``experiments/runners/compare.py``. The official 60,000 training images are split
into the first 50,000 (training) and the last 10,000 (validation: selection); the official
10,000 test images give the final numbers. Every method trains a 784-100-100-10 ReLU MLP
(``500``: 784-500-500-10) from the same initialization per seed.

Stage 1 (selection, seed 0): every value of the method's grid below is trained for the
budget and scored by its validation accuracy at the end; stage 2 (final): the chosen
values, trained again with every seed, evaluated on the test split. One command does both.

Budget, the same for every method: ``epochs`` = 5 passes over the 50,000 training images,
evaluated about every 10,000 images (offline AM methods: after every iteration = pass).
Minibatches: 200 for SGD, Adam, AM-Adam and AM-mem (the AM paper's); 5,000 for the SM family
(SM, GD+Armijo, CGBlock, SSO, DDG: 10 iterations per epoch, 50 in all; full-batch
iterations on 50,000 images cost 10-20 s each on 2 CPU cores, so the SM paper's
deterministic setting with a fixed iteration budget would allow only 5 of them in this
budget); 128 per worker per round for the distributed methods, 4 workers stacked on one
device with the round-robin delay schedule (staleness 3), 98 rounds per epoch.

Grids (chosen to be affordable on 2 shared CPU cores; a first pass with three values per
learning rate chose an end value for SGD, Adam, AM-mem and AM-Adam offline, so those grids
gained a fourth value; with ``select`` off the values configured in ``METHODS`` are used):

* SGD ``lr`` {0.03, 0.1, 0.3, 1}; Adam ``lr`` {1e-4, 3e-4, 1e-3, 3e-3};
* AM-Adam: the output layer's step ``output_lr`` {0.03, 0.1, 0.3} x the hidden layers' Adam
  step ``weight_lr`` {1e-3, 2e-3, 4e-3}; AM-mem: ``output_lr`` {0.01, 0.03, 0.1, 0.3}; the
  rest as the AM paper's MNIST runs (5 code steps of 0.01; mu 0.01, x1.1 per epoch,
  <= 1.5), not selected;
* AM-Adam offline, AM-mem offline (``am_fc`` option only): ``output_lr`` {0.1, 0.3, 1, 3};
* SM family, two values each (an iteration costs 10-40 Adam epochs' worth of steps): SM
  the majorizer's ``delta`` {1e-3, 3e-3} (N = 10 parametric steps, CG solver, 3 Lanczos
  steps); GD+Armijo the first trial step ``init_step`` {1, 10}; CGBlock (the paper's plain
  step, N = 10) ``damping`` {1, 3} (less damping diverged in the SM tables); SSO (N = 10)
  ``eta`` {2, 4} (2 = 1/L, the tight majorizer); DDG (one module per layer, 3)
  ``learning_rate`` {0.03, 0.1, 0.3};
* distributed, p = 4: ``lr`` {0.01, 0.03, 0.1} for DC-ASGD-c (lambda_0 0.04), DC-ASGD-a
  (lambda_0 2, momentum 0.95), ASGD, SSGD, DC-SSGD (lambda_0 0.04), EASGD and async EASGD
  (beta 0.9, tau 10), DOWNPOUR (tau 10); {0.001, 0.003, 0.01} for EAMSGD (momentum 0.99,
  beta 0.9, tau 10) and momentum DOWNPOUR (momentum 0.99).

Options after a colon, comma separated:

* ``am_fc``: requirement 5's set (SGD, Adam, AM-Adam, AM-mem and the offline variants),
  seeds 0, 1, 2 in the final stage (0, 1 with ``500``);
* ``500``: the 784-500-500-10 net (with ``am_fc``);
* ``wide``: the distributed methods whose choice in the default run was an end of the grid
  above (all but DC-ASGD-a), with grids moved past that end: ``lr`` {0.1, 0.3, 1} for
  DC-ASGD-c, ASGD, SSGD, DC-SSGD, EASGD, async EASGD; {0.01, 0.03, 0.1} EAMSGD; {0.001,
  0.003, 0.01} DOWNPOUR; {1e-4, 3e-4, 1e-3} momentum DOWNPOUR;
* ``smoke``: CI size (bundled MNIST: 1,000 training, 500 validation images; one method of
  each family, one epoch, a grid of two values for Adam; seconds).

The report: ``table.md`` (selection and final tables, machine and load), the plot
``accuracy_vs_time.png`` and ``metrics.json`` in the workdir.
"""

import ml_collections

from experiments.configs import common

EPOCHS = 5
TARGET_ACCURACY = 0.85


def _am(method: str, output_lr: float) -> dict:
  return dict(common.am_method(output_lr=output_lr).to_dict(), family="am_fc", method=method)


def _sm(method: str, **hyperparameters) -> dict:
  return dict(family="sm", method=method, **hyperparameters)


def _dist(method: str, lr: float, **hyperparameters) -> dict:
  return dict(common.run_spec(method, lr, 4, **hyperparameters), family="distributed")


METHODS = {
  "am_adam": _am("am_adam", 0.1),
  "am_mem": _am("am_mem", 0.1),
  "sgd": dict(family="am_fc", method="sgd", lr=0.1),
  "adam": dict(family="am_fc", method="adam", lr=1e-3),
  "sm": _sm("sm", solver="cg", delta=3e-3, power_iterations=3, inner_steps=10),
  "gd_armijo": _sm("gd_armijo", init_step=1.0),
  "cg_block": _sm("cg_block", damping=1.0, inner_steps=10),
  "sso": _sm("sso", eta=2.0, inner_steps=10),
  "ddg": _sm("ddg", learning_rate=0.1, momentum=0.0, max_modules=4),
  "dc_asgd": _dist("dc_asgd", 0.03, lambda_0=0.04),
  "dc_asgd_adaptive": _dist("dc_asgd_adaptive", 0.03, lambda_0=2.0),
  "async_sgd": _dist("async_sgd", 0.03),
  "ssgd": _dist("ssgd", 0.03),
  "dc_ssgd": _dist("dc_ssgd", 0.03, lambda_0=0.04),
  "easgd": _dist("easgd", 0.03, beta=0.9, communication_period=10),
  "async_easgd": _dist("async_easgd", 0.03, beta=0.9, communication_period=10),
  "eamsgd": _dist("eamsgd", 0.003, beta=0.9, momentum=0.99, communication_period=10),
  "downpour": _dist("downpour", 0.03, communication_period=10),
  "mdownpour": _dist("mdownpour", 0.003, momentum=0.99),
}
OFFLINE = {
  "am_adam_offline": _am("am_adam_offline", 0.3),
  "am_mem_offline": _am("am_mem_offline", 0.3),
}

LR = (0.01, 0.03, 0.1)
MOMENTUM_LR = (0.001, 0.003, 0.01)
GRID = {
  "am_adam": {"output_lr": (0.03, 0.1, 0.3), "weight_lr": (1e-3, 2e-3, 4e-3)},
  "am_mem": {"output_lr": (0.01, 0.03, 0.1, 0.3)},
  "am_adam_offline": {"output_lr": (0.1, 0.3, 1.0, 3.0)},
  "am_mem_offline": {"output_lr": (0.1, 0.3, 1.0, 3.0)},
  "sgd": {"lr": (0.03, 0.1, 0.3, 1.0)},
  "adam": {"lr": (1e-4, 3e-4, 1e-3, 3e-3)},
  "sm": {"delta": (1e-3, 3e-3)},
  "gd_armijo": {"init_step": (1.0, 10.0)},
  "cg_block": {"damping": (1.0, 3.0)},
  "sso": {"eta": (2.0, 4.0)},
  "ddg": {"learning_rate": (0.03, 0.1, 0.3)},
  **{m: {"lr": LR} for m, e in METHODS.items() if e["family"] == "distributed"},
  "eamsgd": {"lr": MOMENTUM_LR},
  "mdownpour": {"lr": MOMENTUM_LR},
}
# The distributed methods whose default-grid choice was an end value, with the grid moved
# past that end (the chosen value kept): option ``wide``.
WIDE_GRID = {
  **{
    m: {"lr": (0.1, 0.3, 1.0)}
    for m in ("dc_asgd", "async_sgd", "ssgd", "dc_ssgd", "easgd", "async_easgd")
  },
  "eamsgd": {"lr": (0.01, 0.03, 0.1)},
  "downpour": {"lr": (0.001, 0.003, 0.01)},
  "mdownpour": {"lr": (1e-4, 3e-4, 1e-3)},
}
AM_FC_LIST = ("am_adam", "am_mem", "sgd", "adam", "am_adam_offline", "am_mem_offline")


def get_config(arg: str | None = None):
  options = common.parse_arg(arg, {"am_fc", "500", "wide", "smoke"})
  if "500" in options and "am_fc" not in options:
    raise common.ConfigError("option 500 goes with am_fc (the comparison's net is 784-100-100-10)")
  width = 500 if "500" in options else 100
  config = ml_collections.ConfigDict()
  config.experiment = "compare"
  config.dataset = "fashion_mnist"
  config.data_dir = ""
  config.download = False  # let TFDS download a missing dataset (needs network)
  config.num_train = 0  # 0: the default split, 50,000 training / 10,000 validation
  config.num_validation = 0
  config.hidden = (width, width)
  config.activation = "relu"
  config.epochs = EPOCHS
  config.batch_size = 200
  config.sm_batch_size = 5000
  config.worker_batch_size = 128
  config.delay = "round_robin"
  config.eval_samples = 10000
  config.num_train_eval = common.NUM_TRAIN_EVAL
  config.target_accuracy = TARGET_ACCURACY
  config.select = True
  config.final = True
  final_seeds = (0, 1) if width == 500 else (0, 1, 2)
  config.seeds = final_seeds if "am_fc" in options else (0,)
  config.progress = False
  config.method_list = AM_FC_LIST if "am_fc" in options else tuple(METHODS)
  config.methods = ml_collections.ConfigDict({**METHODS, **OFFLINE})
  config.grid = ml_collections.ConfigDict(GRID)
  if "wide" in options:
    config.method_list = tuple(WIDE_GRID)
    config.grid = ml_collections.ConfigDict(WIDE_GRID)
  if "smoke" in options:
    config.dataset = "bundled_mnist"
    config.num_train, config.num_validation = 1000, 500
    config.epochs = 1
    config.batch_size = 100
    config.sm_batch_size = 250
    config.worker_batch_size = 32
    config.eval_samples = 500
    config.target_accuracy = 0.5
    config.seeds = (0,)
    config.method_list = ("adam", "ddg", "dc_asgd")
    config.grid = ml_collections.ConfigDict({"adam": {"lr": (1e-3, 3e-3)}})
  return common.run_options(config)
