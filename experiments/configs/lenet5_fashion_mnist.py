"""AM paper, LeNet-5 on Fashion-MNIST (Figure 9 right; supplement B).

As ``lenet5_mnist.py`` with supplement B's winning Fashion-MNIST hyperparameters, which
differ only in the batch-wise mu increment (1e-5 instead of 1e-7). Options: ``smoke`` (CI
size, on the bundled MNIST split since Fashion-MNIST is not bundled), ``bundled``.
"""

from experiments.configs import common


def get_config(arg: str | None = None):
  return common.lenet5("fashion_mnist", 1e-5, arg)
