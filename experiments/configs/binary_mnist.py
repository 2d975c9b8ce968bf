"""AM paper, binary network on MNIST (Figure 8; section 4).

784-500-500-10 with the sign in the first hidden layer and tanh in the second (Lee et al.
2015's DTP benchmark). AM-Adam differentiates through the sign only in the code subproblem
of the sign layer, with the tanh' surrogate (``am_adam``) or the straight-through identity
(``am_adam_ste``); the baseline is backprop with the straight-through estimator and Adam
(``ste_adam``). The paper gives no hyperparameters for this experiment; these follow its
fully connected MNIST runs (supplement D.1: batch 200, Adam lr 5e-4 as for 500-unit layers
in Table 1, here on every layer and for the baseline; 5 SGD code steps of 0.01; mu_0 = 0.01,
x1.1 per epoch, mu <= 1.5). With lr 0.002 AM-Adam leads for the first 8 epochs on the
bundled split and then fluctuates below the STE baseline. The paper reports AM-Adam
reaching DTP's and the STE's 0.2 error mark in under 20 epochs; 20 epochs here. Options:
``smoke`` (CI size), ``bundled`` (the bundled MNIST split).
"""

from experiments.configs import common


def am(surrogate: str):
  return common.am_arch_method(
    weight_lr=5e-4,
    code_lr=0.01,
    code_steps=5,
    weight_steps=1,
    mu_init=0.01,
    mu_epoch_multiplier=1.1,
    mu_max=1.5,
    surrogate=surrogate,
  )


def get_config(arg: str | None = None):
  options = common.parse_arg(arg, {"smoke", "bundled"})
  config = common.am_arch(
    architecture="binary_mlp",
    dataset="bundled_mnist" if "bundled" in options else "mnist",
    hidden=(500, 500),
    methods={
      "am_adam": am("tanh"),
      "am_adam_ste": am("ste"),
      "ste_adam": {"kind": "adam", "lr": 5e-4, "surrogate": "ste"},
    },
    method_list=("am_adam", "am_adam_ste", "ste_adam"),
    batch_size=200,
    epochs=20,
  )
  return common.am_arch_smoke(config) if "smoke" in options else config
