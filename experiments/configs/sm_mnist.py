"""SM paper, MNIST multilayer perceptrons (section 4, Table 1, Appendix D Tables 2-4).

Deterministic (full-batch) training of 2-, 4- and 8-layer ReLU MLPs with surrogate
minimization and its baselines: GD+Armijo, CGBlock, SSO and DDG, and Adam (which the paper
does not compare against); SM, CGBlock and SSO take N in {1, 10, 20} parametric steps per
iteration (the tables' rows). SM runs twice: with the library's defaults (``sm``: the
Armijo search along the SM step, ``local_losses.STEP_SEARCH``, cold CG, the curvature every
iteration) and as the paper's Algorithm 1 states it (``sm_paper``: the SM step taken as it
is). CGBlock runs twice: as in the paper (``cg_block``, the plain combined step) and with
this library's default Armijo safeguard on the combined step (``cg_block_armijo``). One
epoch is one iteration on the whole training set. The runner
(``experiments/runners/sm_tables.py``) records the training loss and held-out accuracy
after every epoch and prints the tables.

Options after a colon, comma separated: ``bundled`` (the bundled MNIST split: the first
8,000 of the 10k MNIST test images train, the last 2,000 are held out; runs offline),
``l2`` / ``l4`` / ``l8`` (only these depths), ``smoke`` (CI size).

Not reported in the paper's text and chosen here: hidden width 100; SM with the default
(Young-split) majorizer, its default delta * B = 3e-3 (``surrogate_minimization``: a sweep
of delta * B from 3e-5 to 3e-2 on 4,000 bundled images, 8 layers, N = 10, 50 iterations
gave training losses from 2e-4 to 7e-2, smaller always faster; 3e-3 keeps every stage's
curvature along its gradient within 100x of its block Gauss-Newton curvature, 1e-3 reaches
170x at the top stage), 3 Lanczos steps and the CG inner solver. CGBlock as in the paper
(plain step): damping 1.0 (undamped or lightly damped, 0.1, it diverges on these nets: the
negative curvature the paper reports). CGBlock with the Armijo-safeguarded step: undamped
(0.0 descends and beat 0.1 and 1.0 on 2,000 bundled images, 30 iterations). SSO with
eta = 1/L = 2 (the tight majorizer) and Armijo inner steps; DDG with SGD, learning rate 0.1
(momentum 0.9 was unstable with the delays), one module per GPU of the paper's setup (2
modules for 2 layers, 4 otherwise). Adam (optax) on the full batch with learning rate 1e-2,
the best of {1e-3, 3e-3, 1e-2, 3e-2} on these nets (``benchmarks/sm_time_to_loss.py``).
"""

import ml_collections

from experiments.configs import common

METHODS = ("sm", "sm_paper", "gd_armijo", "cg_block", "cg_block_armijo", "sso", "ddg", "adam")


def get_config(arg: str | None = None):
  options = common.parse_arg(arg, {"smoke", "bundled", "l2", "l4", "l8"})
  config = ml_collections.ConfigDict()
  config.experiment = "sm_tables"
  config.dataset = "bundled_mnist" if "bundled" in options else "mnist"
  config.data_dir = ""
  config.num_train = 8000 if "bundled" in options else 60000
  config.width = 100
  config.activation = "relu"
  depths = tuple(d for d in (2, 4, 8) if f"l{d}" in options) or (2, 4, 8)
  config.layers = depths
  config.inner_steps = (1, 10, 20)
  config.epochs = 300
  config.report_epochs = (1, 10, 50, 100, 200, 300)
  config.seeds = (0,)
  config.progress = True
  config.method_list = METHODS
  config.methods = ml_collections.ConfigDict(
    {
      # sm: the library's default step search along the SM step; sm_paper: Algorithm 1 as
      # the paper states it (the SM step taken as it is)
      "sm": {"solver": "cg", "delta": 3e-3, "power_iterations": 3, "step_search": True},
      "sm_paper": {"solver": "cg", "delta": 3e-3, "power_iterations": 3},
      "gd_armijo": {"init_step": 1.0},
      "cg_block": {"damping": 1.0},
      "cg_block_armijo": {"damping": 0.0},
      "sso": {"eta": 2.0},
      "ddg": {"learning_rate": 0.1, "momentum": 0.0, "max_modules": 4},
      "adam": {"learning_rate": 1e-2},
    }
  )
  if "smoke" in options:
    config.dataset = "bundled_mnist"
    config.num_train = 256
    config.layers = (2,)
    config.inner_steps = (1, 2)
    config.epochs = 2
    config.report_epochs = (1, 2)
    config.progress = False
  return common.run_options(config)
