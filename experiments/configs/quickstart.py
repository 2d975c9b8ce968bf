"""The README's main job: AM-Adam vs Adam vs SGD on the bundled MNIST split.

784-100-100-10 ReLU, batch 200, 10 epochs, 3 seeds, first 8,000 bundled samples for
training and the last 2,000 held out; finishes in well under 3 minutes on 2 CPU cores.
Option after a colon: ``smoke`` (CI size).
"""

from experiments.configs import common


def get_config(arg: str | None = None):
  options = common.parse_arg(arg, {"smoke"})
  config = common.am_fc(
    dataset="bundled_mnist",
    hidden=(100, 100),
    epochs=10,
    seeds=(0, 1, 2),
    method_list=("am_adam", "adam", "sgd"),
    methods={
      "am_adam": common.am_method(output_lr=2e-3, output_optimizer="adam"),
      "adam": {"lr": 2e-3},
      "sgd": {"lr": 0.1},
    },
  )
  return common.smoke(config) if "smoke" in options else config
