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
# # Distributed SGD with altmin_jax: EASGD and DC-ASGD on simulated workers and a device mesh
#
# `altmin_jax.distributed` implements elastic averaging SGD (Zhang, Choromanska, LeCun,
# NeurIPS 2015) and delay-compensated asynchronous SGD (Zheng et al., ICML 2017) as optax
# transformations. Every p-worker method takes parameters and gradients with a leading
# worker axis and keeps the centre variable (the model to evaluate) in its state. The same
# code runs with the workers stacked on one device or sharded over a device mesh.
#
# Sizes come from environment variables so that CI runs this notebook small
# (`ALTMIN_JAX_SMALL=1`); `ROUNDS` overrides the number of training rounds.

# %%
import os
import subprocess
import sys

if "google.colab" in sys.modules:  # install the package when running on Colab
  spec = os.environ.get("ALTMIN_JAX_PIP_SPEC", "altmin_jax")
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", spec], check=True)

# Four CPU devices for the mesh sections (must be set before JAX starts); the flag is
# appended to any XLA_FLAGS already set.
FOUR_CPUS = "--xla_force_host_platform_device_count=4"
if FOUR_CPUS not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FOUR_CPUS}".strip()
# XLA:CPU runs every fake device on one thread pool sized by the core count; a collective
# blocks its thread until all devices join, so a small pool can deadlock: give it 4
# threads per device (BUILD.md, "Multi-device and multi-process runs on one CPU").
os.environ.setdefault("PJRT_NPROC", str(max(os.cpu_count() or 1, 16)))

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import altmin_jax as amj
import altmin_jax.distributed as dist

SMALL = os.environ.get("ALTMIN_JAX_SMALL") == "1"
ROUNDS = int(os.environ.get("ROUNDS", 60 if SMALL else 600))
P = 4  # workers
BATCH = 32  # per worker
print(f"{ROUNDS} rounds, {P} workers, devices: {jax.devices('cpu')}")
assert len(jax.devices("cpu")) >= 4, "JAX started before XLA_FLAGS was set: restart the kernel"

# %% [markdown]
# ## Data and model
# The MNIST digits bundled with the package (first 8,000 train, last 2,000 held out) and a
# 784-64-10 ReLU network.

# %%
data = amj.data.load_dataset("bundled_mnist", num_train=8000)
(x_train, y_train), (x_test, y_test) = data.train, data.test
net = amj.networks.mlp([784, 64, 10], activation=jax.nn.relu)


def loss(params, x, y):
  return jnp.mean(amj.losses.softmax_cross_entropy(net.apply(params, x), y))


def test_accuracy(params):
  return amj.training.evaluate(net.apply, params, x_test, y_test)["accuracy"]


rng = np.random.default_rng(0)
batches = [rng.integers(0, len(x_train), size=(P, BATCH)) for _ in range(ROUNDS)]

# %% [markdown]
# ## Elastic averaging on simulated workers
# One `update` is one local step of every worker: `grads[i]` is worker i's gradient at its
# own parameters `params[i]`, and the centre variable lives in the optimizer state.


# %%
def train(tx, p=P, mesh=None, every=None, single=False, rounds=ROUNDS):
  every = every or max(1, rounds // 10)

  @jax.jit
  def step(params, state, x, y):
    grads = jax.vmap(jax.grad(loss))(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = dist.replicate(net.init(jax.random.key(0)), p)
  if mesh is not None:
    params = dist.shard_workers(params, mesh)
  state = tx.init(params)
  curve = []
  for r, idx in enumerate(batches[:rounds]):
    idx = idx[:p]
    params, state = step(params, state, x_train[idx], y_train[idx])
    if (r + 1) % every == 0:
      centre = dist.centre(state)
      if single:  # a single-worker method on stacked params: drop the worker axis
        centre = jax.tree.map(lambda a: a[0], centre)
      curve.append(test_accuracy(centre))
  return params, state, curve


methods = {
  "EASGD (sync)": dist.easgd(0.05, num_workers=P, beta=0.9),
  "EASGD (async, tau=4)": dist.async_easgd(0.05, num_workers=P, communication_period=4),
  "EAMSGD (tau=4)": dist.eamsgd(0.01, num_workers=P, momentum=0.9, communication_period=4),
  "DOWNPOUR (tau=4)": dist.downpour(0.05, num_workers=P, communication_period=4),
}
curves = {name: train(tx)[2] for name, tx in methods.items()}
# averaged SGD before its `start` step is plain SGD, and its centre is the iterate
curves["SGD (1 worker)"] = train(dist.averaged_sgd(0.05, start=ROUNDS), p=1, single=True)[2]

x_axis = np.arange(1, 11) * max(1, ROUNDS // 10)
for name, curve in curves.items():
  plt.plot(x_axis[: len(curve)], curve, label=name)
plt.xlabel("rounds")
plt.ylabel("test accuracy of the centre")
plt.legend()
plt.show()
for name, curve in curves.items():
  print(f"{name:22s} {curve[-1]:.3f}")

# %% [markdown]
# ## Delay compensation under staleness p - 1
# `dist.simulate` runs a DC-ASGD family method under a delay schedule inside one
# `lax.scan`: every round each worker pushes the gradient it computed at the copy it pulled
# after its previous push (round-robin: staleness exactly p - 1).

# %%
x_rounds = jnp.asarray(np.stack([x_train[idx] for idx in batches]))
y_rounds = jnp.asarray(np.stack([y_train[idx] for idx in batches]))
schedule = dist.round_robin(P, ROUNDS)
print("staleness in the last round:", dist.staleness(schedule)[-1])


def grad_fn(params, batch):
  return jax.grad(loss)(params, *batch)


def simulate(tx):
  params = dist.replicate(net.init(jax.random.key(0)), P)
  metric = lambda centre: loss(centre, x_test[:500], y_test[:500])
  return dist.simulate(tx, grad_fn, params, (x_rounds, y_rounds), schedule, metrics_fn=metric)


runs = {
  "ASGD": dist.async_sgd(0.2, num_workers=P),
  "DC-ASGD-c (lambda 0.04)": dist.dc_asgd(0.2, 0.04, num_workers=P),
  "DC-ASGD-a (lambda 2)": dist.dc_asgd_adaptive(0.2, 2.0, num_workers=P),
  "SSGD": dist.ssgd(0.2, num_workers=P),
}
results = {name: simulate(tx) for name, tx in runs.items()}
for name, out in results.items():
  plt.plot(np.asarray(out.metrics), label=name)
  print(f"{name:24s} held-out loss {float(out.metrics[-1]):.4f}")
plt.xlabel("rounds")
plt.ylabel("held-out loss of the server parameters")
plt.legend()
plt.show()

# %% [markdown]
# ## The same methods on a device mesh
# With `mesh=...` the workers' leading axis is sharded over the mesh axis and the update
# runs under `jax.shard_map`: EASGD's mean over the workers is a `lax.psum`, and DC-ASGD's
# server gathers the round's pushes from all devices and applies them in the same order.
# For the DC-ASGD family one `update` is one round in which every worker pushes once (in
# round-robin order: from the second round on, every gradient is p - 1 pushes stale); for
# the EASGD family it is one local step of every worker. Both results equal the stacked runs to
# float rounding. The comparison runs 10 rounds: gradients computed device by device and
# in one stacked batch differ in the last bits (about 1e-9 after one round), and training
# with stale gradients amplifies such differences over hundreds of rounds.

# %%
from jax.sharding import Mesh

mesh = Mesh(np.asarray(jax.devices("cpu")[:4]), ("workers",))


def largest_difference(a, b):
  return max(
    float(jnp.max(jnp.abs(x - y)))
    for x, y in zip(jax.tree.leaves(dist.centre(a)), jax.tree.leaves(dist.centre(b)))
  )


on_mesh = {
  "EASGD (sync)": lambda mesh: dist.easgd(0.05, num_workers=P, mesh=mesh),
  "DC-ASGD-c (lambda 0.04)": lambda mesh: dist.dc_asgd(0.2, 0.04, num_workers=P, mesh=mesh),
}
MESH_ROUNDS = min(ROUNDS, 10)
for name, make in on_mesh.items():
  _, stacked_state, _ = train(make(None), rounds=MESH_ROUNDS)
  sharded, sharded_state, _ = train(make(mesh), mesh=mesh, rounds=MESH_ROUNDS)
  difference = largest_difference(stacked_state, sharded_state)
  print(f"{name}: workers on {jax.tree.leaves(sharded)[0].sharding}")
  print(f"{name}: largest difference between the stacked and mesh centres {difference:.2e}")
  assert difference < 1e-5, (name, difference)
