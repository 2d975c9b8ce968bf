"""AM paper, LeNet-5 on Fashion-MNIST (Figure 9 right; supplement B).

As ``lenet5_mnist.py`` with supplement B's winning Fashion-MNIST hyperparameters, which
differ in the batch-wise mu increment (1e-5 instead of 1e-7), with plain SGD instead of
Nesterov momentum for the single code step (the supplement does not name the code optimizer),
and AM-Adam's weight steps in float64 with Adam epsilon 1e-16 on the encoded ("forward")
inputs instead of eq. 6's updated codes (see the comments below and docs/results.md); on the
official test set, 5 seeds, AM-Adam is then within 0.25 point of Adam at every epoch.
Options: ``smoke`` (CI size, on the bundled MNIST split since Fashion-MNIST is not bundled),
``bundled``.
"""

from experiments.configs import common


def get_config(arg: str | None = None):
  config = common.lenet5("fashion_mnist", 1e-5, arg)
  # Code step: plain SGD, 1/128 (issue 15 req. 3). With Nesterov momentum a single code step
  # is 1.9 x 1/128, and in this library's per-sample scaling the hidden-code steps are
  # 84-1600 x the authors' mean-reduced ones; AM-Adam then collapsed between epochs 6 and 8
  # (training accuracy too: not overfitting). Selected on the 50,000 / 10,000 split of the
  # training set (validation accuracy at epochs 6 / 7 / 8, seed 0): Nesterov 0.8944 / 0.8843
  # / 0.8641, the same with constant mu 0.01 0.8937 / 0.8891 / 0.8425 (the mu schedule is not
  # the cause), plain SGD 0.8921 / 0.8889 / 0.8926, Adam 0.8965 / 0.8959 / 0.8962. Plain SGD
  # over 10 epochs, seeds 0 / 1: 0.8928 / 0.8966 at epoch 10, no drop. Nesterov with 1/1280
  # and the authors' per-layer scaling learned too slowly (0.8546 and 0.8314 at epoch 2,
  # against 0.8785). Also tried on the same split and not better over epochs 3-10 (mean
  # validation accuracy; docs/results_selection.md): Adam epsilon 1e-9 / 1e-10 / 1e-12 for
  # the weight steps, mu += 1e-2 per batch, code lr 0.1 / 128, weight lr 0.001, the
  # per-sample code-step cut (code_safeguard), float64 (dtype), and combinations of these,
  # all with eq. 6's
  # updated weight inputs (the change that closed the gap follows).
  config.methods.am_adam.code_optimizer = "sgd"
  # Weight steps (issue 15 req. 3): with one code step every layer's weight gradient is
  # backprop's times a per-layer factor that shrinks ~60x per layer down (6e-8 for conv1), so
  # in float32 the lower codes move by less than rounding and Adam's epsilon 1e-8 damps
  # conv1 ~10x; and fitting each layer on the *updated* code below (eq. 6) fits it to
  # (I - 2 code_lr J J^T) times the code change above, to first order, under which fc1's norm
  # grows to 40-50 (5.5 under Adam). Encoded inputs, float64 and epsilon 1e-16 make the step
  # Adam's on backprop's gradient to first order. Mean validation accuracy over epochs 3-10,
  # seeds 0 / 1 / 2 (Adam .8933 / .8998 / .8922): the supplement's eq. 6 in float32 (the
  # previous choice) .8889 / .8919 / .8859, encoded inputs with epsilon 1e-9 in float32
  # .8951 / .8931 / .8906, encoded inputs in float64 with epsilon 1e-16 (chosen) .8939 /
  # .8979 / .8935.
  config.methods.am_adam.weight_inputs = "forward"
  config.methods.am_adam.dtype = "float64"
  config.methods.am_adam.weight_eps = 1e-16
  return config
