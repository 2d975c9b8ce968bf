"""AM paper, Elman RNN on sequential MNIST (Figure 6: RNN-15, Figure 10: RNN-50; supplement C).

Pixel-by-pixel MNIST (T = 784), batch 1024, 10 epochs, SGD / Adam / AM-Adam with
supplement C.2's winning hyperparameters (5 code and 5 weight iterations per minibatch,
mu_0 = 0.01 for AM-Adam):

=====  ==============  ===============  =========================================
d      Adam            SGD (decay 0.9)  AM-Adam (Adam lr, mu increment/mult/max)
=====  ==============  ===============  =========================================
15     lr 0.005        lr 0.05          0.005, +0.01 per batch, x1.1 per epoch, 1
50     lr 0.005        lr 0.005         0.005, +1e-4 per batch, x1.0 per epoch, 1
=====  ==============  ===============  =========================================

The paper's d=50 Adam used an L1 weight penalty of 0.01, not reproduced here (plain Adam).
The paper does not report AM-Adam's code step size; 0.003 (SGD) was the best of
{0.3, 0.1, 0.02, 0.01, 0.003, 0.001} after one epoch on the bundled split. Options after a
colon, comma separated: ``15`` (default) or ``50`` hidden units, ``zoom`` (accuracy every
minibatch of the first epoch: the figures' inset), ``smoke`` (CI size: 7x7 images, T = 49),
``bundled`` (the bundled MNIST split).
"""

from experiments.configs import common

SETTINGS = {  # hidden units -> (adam lr, sgd lr, am-adam mu increment, mu multiplier)
  15: (0.005, 0.05, 0.01, 1.1),
  50: (0.005, 0.005, 1e-4, 1.0),
}


def get_config(arg: str | None = None):
  options = common.parse_arg(arg, {"15", "50", "zoom", "smoke", "bundled"})
  hidden = 50 if "50" in options else 15
  adam_lr, sgd_lr, increment, multiplier = SETTINGS[hidden]
  config = common.am_arch(
    architecture="elman_rnn",
    dataset="bundled_mnist" if "bundled" in options else "mnist",
    hidden=(hidden,),
    methods={
      "am_adam": common.am_arch_method(
        weight_lr=0.005,
        code_lr=0.003,
        code_steps=5,
        weight_steps=5,
        mu_init=0.01,
        mu_batch_increment=increment,
        mu_epoch_multiplier=multiplier,
        mu_max=1.0,
      ),
      "adam": {"kind": "adam", "lr": adam_lr},
      "sgd": {"kind": "sgd", "lr": sgd_lr, "lr_decay": 0.9},
    },
    method_list=("am_adam", "adam", "sgd"),
    batch_size=1024,
    epochs=10,
    seeds=(0, 1, 2),
  )
  if "zoom" in options:
    config.epochs = 1
    config.eval_every = 1
  return common.am_arch_smoke(config) if "smoke" in options else config
