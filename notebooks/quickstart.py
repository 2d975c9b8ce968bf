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
# # altmin_jax quickstart: AM-Adam in a Flax NNX training loop
#
# Online alternating minimization (Choromanska et al., ICML 2019) trains a network without
# backpropagating through it: each minibatch's pre-activations ("codes") are updated top-down,
# then every layer fits its own codes independently. Here AM-Adam trains a 784-100-100-10 ReLU
# network on the MNIST digits bundled with the package, next to Adam, in a plain Flax NNX loop.
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
import jax
import matplotlib.pyplot as plt
import optax
from flax import nnx

import altmin_jax as amj

SMALL = os.environ.get("ALTMIN_JAX_SMALL") == "1"
EPOCHS = int(os.environ.get("EPOCHS", 2 if SMALL else 10))
NUM_TRAIN = 2000 if SMALL else 8000
BATCH = 200
print(f"{EPOCHS} epoch(s), {NUM_TRAIN} training samples, devices: {jax.devices()}")

# %% [markdown]
# ## Data
# The package ships the official MNIST 10k test split; the first `NUM_TRAIN` images are used
# for training and the last 2,000 are held out.

# %%
data = amj.data.load_dataset("bundled_mnist", num_train=NUM_TRAIN)
(x_train, y_train), (x_test, y_test) = data.train, data.test
x_test, y_test = x_test[-2000:], y_test[-2000:]
print(x_train.shape, x_test.shape)

# %% [markdown]
# ## Model and optimizer
# A Flax NNX model written as a sequence of layers becomes a layered network with
# `amj.networks.from_nnx`; AM-Adam is an optax transformation, so `nnx.Optimizer` drives it.
# It needs no gradients: the batch reaches it as an extra keyword argument.


# %%
def make_model(seed):
  rngs = nnx.Rngs(seed)
  return nnx.Sequential(
    nnx.Linear(784, 100, rngs=rngs),
    jax.nn.relu,
    nnx.Linear(100, 100, rngs=rngs),
    jax.nn.relu,
    nnx.Linear(100, 10, rngs=rngs),
  )


def accuracy(model):
  return float(amj.losses.accuracy(model(x_test), y_test))


steps_per_epoch = NUM_TRAIN // BATCH
mu = amj.mu_schedule(
  init=0.01, epoch_multiplier=1.1, max_value=1.5, steps_per_epoch=steps_per_epoch
)

am_model = make_model(0)
am_net = amj.networks.from_nnx(am_model)
am_opt = nnx.Optimizer(
  am_model,
  amj.am_adam(am_net, code_steps=5, code_lr=0.01, mu=mu, weight_optimizer=optax.adam(2e-3)),
  wrt=nnx.Param,
)

adam_model = make_model(0)
adam_opt = nnx.Optimizer(adam_model, optax.adam(2e-3), wrt=nnx.Param)


@nnx.jit
def am_step(model, optimizer, x, y):
  optimizer.update(model, None, batch=(x, y))


@nnx.jit
def adam_step(model, optimizer, x, y):
  def loss_fn(model):
    return amj.losses.softmax_cross_entropy(model(x), y).mean()

  optimizer.update(model, nnx.grad(loss_fn)(model))


# %% [markdown]
# ## Training

# %%
history = {"AM-Adam": [accuracy(am_model)], "Adam": [accuracy(adam_model)]}
for epoch in range(EPOCHS):
  for x, y in amj.data.iterate_batches(x_train, y_train, BATCH, seed=0, epoch=epoch):
    am_step(am_model, am_opt, x, y)
    adam_step(adam_model, adam_opt, x, y)
  history["AM-Adam"].append(accuracy(am_model))
  history["Adam"].append(accuracy(adam_model))
  print(f"epoch {epoch + 1}: AM-Adam {history['AM-Adam'][-1]:.4f}  Adam {history['Adam'][-1]:.4f}")

# %%
fig, ax = plt.subplots(figsize=(5, 3.5))
for name, values in history.items():
  ax.plot(range(len(values)), values, marker="o", label=name)
ax.set_xlabel("epoch")
ax.set_ylabel("held-out accuracy")
ax.set_title("784-100-100-10 ReLU on bundled MNIST")
ax.grid(alpha=0.3)
ax.legend()
plt.show()

# %%
assert history["AM-Adam"][-1] > 0.8, "AM-Adam should learn the digits"
