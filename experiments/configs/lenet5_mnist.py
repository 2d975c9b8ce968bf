"""AM paper, LeNet-5 on MNIST (Figure 7 and Figure 9 left; supplement B).

Batch 128, 10 epochs, SGD / Adam / AM-Adam with supplement B's winning MNIST
hyperparameters: SGD lr 0.02 with the per-epoch decay 0.9, Adam lr 0.002, AM-Adam weight lr
0.002 (Adam on every layer), one code and one weight iteration per minibatch, mu_0 = 0.01,
mu += 1e-7 per batch, mu *= 1.1 per epoch, mu <= 1.5.

The paper's code learning rate 1.0 is that of its reference code, a Nesterov step on
mean-reduced code losses; this library solves code subproblems on the per-sample sum
divided by mu (``altmin_jax.am.codes``: Choromanska et al., "Beyond Backprop", ICML 2019,
eqs. 4-5), where the same top-code step is 1.0 / batch_size with Nesterov momentum.
Options after a colon, comma separated: ``smoke`` (CI size), ``bundled`` (the bundled
MNIST split instead of the full dataset). The config is built by ``common.lenet5``, which
``lenet5_fashion_mnist.py`` shares.
"""

from experiments.configs import common


def get_config(arg: str | None = None):
  return common.lenet5("mnist", 1e-7, arg)
