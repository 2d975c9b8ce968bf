"""AM paper, LeNet-5 on Fashion-MNIST (Figure 9 right; supplement B).

As ``lenet5_mnist.py`` with supplement B's winning Fashion-MNIST hyperparameters, which
differ only in the batch-wise mu increment (1e-5 instead of 1e-7). Options: ``smoke`` (CI
size, on the bundled MNIST split since Fashion-MNIST is not bundled), ``bundled``.
"""

from experiments.configs.lenet5_mnist import lenet5_config


def get_config(arg: str | None = None):
  return lenet5_config("fashion_mnist", 1e-5, arg)
