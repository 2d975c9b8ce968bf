"""AM paper, LeNet-5 on MNIST (Figure 7 and Figure 9 left; supplement B).

Batch 128, 10 epochs, SGD / Adam / AM-Adam with supplement B's winning MNIST
hyperparameters: SGD lr 0.02 with the per-epoch decay 0.9, Adam lr 0.002, AM-Adam weight lr
0.002 (Adam on every layer), one code and one weight iteration per minibatch, mu_0 = 0.01,
mu += 1e-7 per batch, mu *= 1.1 per epoch, mu <= 1.5.

The paper's code learning rate 1.0 is that of its reference code, a Nesterov step on
mean-reduced code losses; this library solves code subproblems on the per-sample sum
divided by mu (SPEC section 4), where the same top-code step is 1.0 / batch_size with
Nesterov momentum. Options after a colon, comma separated: ``smoke`` (CI size),
``bundled`` (the bundled MNIST split instead of the full dataset).
"""

from experiments.configs import common
from experiments.runners import am_arch

BATCH = 128


def methods(mu_batch_increment: float) -> dict:
  return {
    "am_adam": am_arch.am_adam_method(
      weight_lr=0.002,
      code_lr=1.0 / BATCH,
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
  }


def lenet5_config(dataset: str, mu_batch_increment: float, arg: str | None):
  options = common.parse_arg(arg, {"smoke", "bundled"})
  config = am_arch.arch_config(
    architecture="lenet5",
    dataset="bundled_mnist" if "bundled" in options else dataset,
    methods=methods(mu_batch_increment),
    method_list=("am_adam", "adam", "sgd"),
    batch_size=BATCH,
    epochs=10,
  )
  return am_arch.smoke(config) if "smoke" in options else config


def get_config(arg: str | None = None):
  return lenet5_config("mnist", 1e-7, arg)
