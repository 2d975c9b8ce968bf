"""Shared test helpers: a small problem zoo and tree comparisons."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import altmin_jax as amj


def tree_allclose(a, b, rtol=1e-6, atol=1e-6) -> bool:
  """Same structure and every leaf close."""
  if jax.tree.structure(a) != jax.tree.structure(b):
    return False
  return all(
    np.allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=atol)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def tree_equal(a, b) -> bool:
  """Same structure and bitwise-equal leaves."""
  if jax.tree.structure(a) != jax.tree.structure(b):
    return False
  return all(
    np.array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def teacher_classification(seed: int = 0, n: int = 64, d: int = 6, classes: int = 3):
  """Inputs ``(n, d)`` and labels of a random tanh teacher network (learnable)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  w1 = rng.normal(size=(d, 16))
  w2 = rng.normal(size=(16, classes))
  y = np.argmax(np.tanh(x @ w1) @ w2, axis=1).astype(np.int32)
  return jnp.asarray(x), jnp.asarray(y)


def small_mlp(dtype=jnp.float32, sizes=(6, 8, 8, 3), activation=jnp.tanh):
  return amj.networks.mlp(list(sizes), activation=activation, dtype=dtype)


@functools.cache
def bundled_split(split_seed: int | None = None):
  """The bundled MNIST 10k split: the first 8,000 for training, the last 2,000 held out
  (``split_seed`` shuffles first)."""
  return amj.data.load_dataset("bundled_mnist", num_train=8000, split_seed=split_seed)


# ------------------------------------------------------- multi-device subprocesses

# XLA:CPU aborts a program whose collective waits longer than its watchdog allows
# ("Termination timeout for `all gather RendezvousKey{...}`"). On this project's 2-core
# machines, multi-device CPU programs (fake devices, in-process collectives) were seen to
# deadlock that way now and then, with some devices never joining the rendezvous; the
# same child passes when run again. Tests retry such a child; any other failure is final.
XLA_RENDEZVOUS_ABORT = "Termination timeout for"


def aborted_by_xla_watchdog(returncode: int, stderr: str) -> bool:
  """Whether a child died from XLA:CPU's collective watchdog (and only that)."""
  return returncode != 0 and XLA_RENDEZVOUS_ABORT in stderr and "Rendezvous" in stderr


def communicate_retrying(start, timeout: float, retries: int = 2, proc=None):
  """``(returncode, stdout, stderr)`` of the child ``start()`` launches (or of ``proc``,
  already started by it), launched again up to ``retries`` times while it is aborted by
  XLA:CPU's collective watchdog."""
  for attempt in range(retries + 1):
    if proc is None or attempt > 0:
      proc = start()
    stdout, stderr = proc.communicate(timeout=timeout)
    if not aborted_by_xla_watchdog(proc.returncode, stderr):
      break
  return proc.returncode, stdout, stderr
