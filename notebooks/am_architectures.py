# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Alternating minimization beyond MLPs: LeNet-5, a binary network and an Elman RNN
#
# Online alternating minimization (Choromanska et al., ICML 2019) splits a network into
# stages joined by auxiliary variables, the *codes* (pre-activations). Each minibatch
# updates the codes top-down, then fits every layer to its own codes independently. This
# notebook runs AM-Adam on the three architectures of the paper's section 4, next to a
# backprop baseline, on the MNIST digits bundled with the package:
#
# 1. **LeNet-5**: convolution outputs are codes too (4 codes: two conv maps, two dense);
# 2. **a binary network** whose first hidden layer is the non-differentiable sign: AM only
#    needs a surrogate derivative inside one code subproblem;
# 3. **an Elman RNN** on sequential MNIST: a code per time step, updated backwards in time.
#
# Sizes come from environment variables so that CI runs this notebook small
# (`ALTMIN_JAX_SMALL=1`); `EPOCHS` overrides the number of epochs.

# %%
import os
import subprocess
import sys

if "google.colab" in sys.modules:  # install the package when running on Colab
  # altmin_jax is installed from a copy of its repository: clone or upload it to
  # /content/altmin_jax, or set ALTMIN_JAX_PIP_SPEC to any pip requirement (a git URL
  # "git+https://...", a wheel, a path).
  checkout = "/content/altmin_jax"
  spec = os.environ.get("ALTMIN_JAX_PIP_SPEC", checkout)
  if spec == checkout and not os.path.isfile(os.path.join(checkout, "pyproject.toml")):
    raise RuntimeError(
      f"no altmin_jax checkout in {checkout}: put one there or set ALTMIN_JAX_PIP_SPEC"
    )
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", spec], check=True)

# %%
import time

import jax
import matplotlib.pyplot as plt
import optax

import altmin_jax as amj

SMALL = os.environ.get("ALTMIN_JAX_SMALL") == "1"
EPOCHS = int(os.environ.get("EPOCHS", 1 if SMALL else 5))
NUM_TRAIN = 2000 if SMALL else 8000
print(f"{EPOCHS} epoch(s), {NUM_TRAIN} training samples, devices: {jax.devices()}")

images = amj.data.load_dataset("bundled_mnist", num_train=NUM_TRAIN, flatten=False)
(x_train, y_train), (x_test, y_test) = images.train, images.test
x_test, y_test = x_test[-2000:], y_test[-2000:]
print("images", x_train.shape, "held out", x_test.shape)


# %% [markdown]
# Every method is an optax transformation; AM methods take the batch as an extra argument and
# ignore gradients, so one training loop serves all of them.


# %%
def fit(net, tx, train, test, *, batch, uses_gradients, epochs=EPOCHS, seed=0):
  """Trains ``net`` with ``tx`` on ``train = (x, y)``; returns the accuracy on ``test`` after
  each epoch and the training time."""
  step = amj.training.make_train_step(
    net.apply, tx, loss=amj.losses.softmax_cross_entropy, uses_gradients=uses_gradients
  )
  params = net.init(jax.random.key(seed))
  state = tx.init(params)
  history, start = [], time.perf_counter()
  for epoch in range(epochs):
    for xb, yb in amj.data.iterate_batches(*train, batch, seed=seed, epoch=epoch):
      params, state, _ = step(params, state, xb, yb)
    history.append(amj.training.evaluate(net.apply, params, *test)["accuracy"])
  return history, time.perf_counter() - start


results = {}

# %% [markdown]
# ## 1. LeNet-5
# `amj.networks.lenet5()` is a layered network with four codes: the two convolution outputs
# before ReLU and pooling, and the two hidden dense pre-activations. Pooling and flattening
# belong to the next stage's input map.

# %%
lenet = amj.networks.lenet5()
codes, logits = lenet.forward(lenet.init(jax.random.key(0)), x_train[:2])
print("codes:", [c.shape for c in codes], "logits:", logits.shape)

# %% [markdown]
# Supplement B's setting: batch 128, Adam (lr 0.002) on every layer's own subproblem, one
# code step and one weight step per minibatch, `mu` from 0.01 growing by 1.1 per epoch.

# %%
BATCH = 128
mu = amj.mu_schedule(
  init=0.01,
  batch_increment=1e-7,
  epoch_multiplier=1.1,
  max_value=1.5,
  steps_per_epoch=NUM_TRAIN // BATCH,
)
am_lenet = amj.am_adam(
  lenet,
  code_steps=1,
  code_lr=1.0 / BATCH,
  code_optimizer="nesterov",
  mu=mu,
  weight_optimizer=optax.adam(2e-3),
)
train, test = (x_train, y_train), (x_test, y_test)
results["LeNet-5"] = {
  "AM-Adam": fit(lenet, am_lenet, train, test, batch=BATCH, uses_gradients=False),
  "Adam": fit(lenet, optax.adam(2e-3), train, test, batch=BATCH, uses_gradients=True),
}
for name, (acc, seconds) in results["LeNet-5"].items():
  print(f"LeNet-5 {name}: {acc[-1]:.4f} held-out accuracy, {seconds:.1f} s")

# %% [markdown]
# ## 2. A binary network
# 784-500-500-10 with the sign in the first hidden layer and tanh in the second. The forward
# pass uses the true sign; `surrogate` picks the derivative used where something is
# differentiated through it. Under AM that is only the code subproblem of the sign layer's
# code; backprop (the straight-through estimator baseline) uses it everywhere.

# %%
flat = lambda x: x.reshape(len(x), -1)
train, test = (flat(x_train), y_train), (flat(x_test), y_test)
binary_am = amj.networks.binary_mlp(surrogate="tanh")
binary_ste = amj.networks.binary_mlp(surrogate="ste")
sign = binary_am.activation(1)
print("sign forward:", sign(jax.numpy.array([-0.5, 0.0, 2.0])).tolist())
print("tanh' surrogate at 0.5:", float(jax.grad(sign)(0.5)))

mu = amj.mu_schedule(
  init=0.01, epoch_multiplier=1.1, max_value=1.5, steps_per_epoch=NUM_TRAIN // 200
)
am_binary = amj.am_adam(
  binary_am, code_steps=5, code_lr=0.01, mu=mu, weight_optimizer=optax.adam(2e-3)
)
results["binary net"] = {
  "AM-Adam": fit(binary_am, am_binary, train, test, batch=200, uses_gradients=False),
  "STE Adam": fit(binary_ste, optax.adam(2e-3), train, test, batch=200, uses_gradients=True),
}
for name, (acc, seconds) in results["binary net"].items():
  print(f"binary net {name}: {acc[-1]:.4f} held-out accuracy, {seconds:.1f} s")

# %% [markdown]
# ## 3. An Elman RNN on sequential MNIST
# Each image is read one pixel per time step; a classifier reads the rectified output
# sequence. AM-Adam keeps a code `c^t` per time step and the output sequence `z` as a second
# code set; it updates `z`, then the `c^t` backwards in time (a `lax.scan`), then fits the
# shared `U, W, b` by one regression over all time steps. Full size uses the 784-pixel
# sequences with batch 256; the small size average-pools the images to 7x7 (49 steps) and uses
# batch 64.

# %%
pool, RNN_BATCH = (4, 64) if SMALL else (1, 256)


def sequences(x):
  """Images ``(N, 28, 28, 1)``, average-pooled by ``pool``, as pixel sequences ``(N, T, 1)``."""
  side = 28 // pool
  return amj.networks.as_sequences(x.reshape(len(x), side, pool, side, pool, 1).mean(axis=(2, 4)))


train, test = (sequences(x_train), y_train), (sequences(x_test), y_test)
rnn = amj.networks.elman_rnn(15, seq_len=train[0].shape[1])
(c, z), _ = rnn.forward(rnn.init(jax.random.key(0)), train[0][:2])
print("sequences", train[0].shape, "codes c", c.shape, "output codes z", z.shape)

mu = amj.mu_schedule(
  init=0.01,
  batch_increment=0.01,
  epoch_multiplier=1.1,
  max_value=1.0,
  steps_per_epoch=NUM_TRAIN // RNN_BATCH,
)
am_rnn = amj.am.am_adam_rnn(
  rnn, weight_optimizer=optax.adam(5e-3), code_steps=5, weight_steps=5, code_lr=0.003, mu=mu
)
results["RNN-15"] = {
  "AM-Adam": fit(rnn, am_rnn, train, test, batch=RNN_BATCH, uses_gradients=False),
  "Adam": fit(rnn, optax.adam(5e-3), train, test, batch=RNN_BATCH, uses_gradients=True),
}
for name, (acc, seconds) in results["RNN-15"].items():
  print(f"RNN-15 {name}: {acc[-1]:.4f} held-out accuracy, {seconds:.1f} s")

# %% [markdown]
# ## Summary

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
for ax, (model, runs) in zip(axes, results.items()):
  for name, (acc, _) in runs.items():
    ax.plot(range(1, len(acc) + 1), acc, marker="o", label=name)
  ax.set_title(model)
  ax.set_xlabel("epoch")
  ax.grid(alpha=0.3)
  ax.legend()
axes[0].set_ylabel("held-out accuracy")
fig.tight_layout()
plt.show()

# %%
for model, runs in results.items():
  assert runs["AM-Adam"][0][-1] > 0.5, f"AM-Adam should learn on {model}"
