"""What the AM and SM pipeline tests share: the 8-stage problem, the error measures, the
collectives of a compiled program, and the launcher of the 2-, 4- and 8-device children.

Imported by ``children/am_pipeline.py`` and ``children/sm_pipeline.py`` (parent and child
build the problem from the same code) and by ``test_am_pipeline.py`` /
``test_sm_pipeline.py`` (the launcher); importing it starts no JAX work.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np

import altmin_jax as amj

SIZES = (7, 6, 6, 6, 6, 6, 6, 6, 3)  # 8 stages: input 7 and logits 3 are zero-padded to 6/7
BATCH = 12
RTOL, ATOL = 1e-4, 1e-6
DEVICE_COUNTS = (2, 4, 8)
COLLECTIVES = (
  "all-reduce",
  "all-gather",
  "collective-permute",
  "all-to-all",
  "reduce-scatter",
  "collective-broadcast",
)


def problem(sizes=SIZES, n=BATCH, seed=0):
  """A tanh MLP of the given layer sizes, its params and a batch of n samples."""
  net = amj.networks.mlp(list(sizes), activation=jnp.tanh)
  params = net.init(jax.random.key(seed))
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, sizes[0])).astype(np.float32)
  y = rng.integers(0, sizes[-1], size=n).astype(np.int32)
  return net, params, x, y


def leaves(tree):
  """The leaves of ``tree`` as float64 NumPy arrays (fetched from every device)."""
  return [np.asarray(a, np.float64) for a in jax.tree.leaves(amj.distributed.fetch(tree))]


def error(got, want, rtol=RTOL, atol=ATOL):
  """max over entries of |got - want| / (atol + rtol |want|): <= 1 means allclose."""
  a, b = leaves(got), leaves(want)
  assert len(a) == len(b), (len(a), len(b))
  return max(float(np.max(np.abs(x - y) / (atol + rtol * np.abs(y)))) for x, y in zip(a, b))


def size(tree):
  """The largest absolute entry of ``tree``."""
  return max(float(np.max(np.abs(x))) for x in leaves(tree))


def layers_per_device(stacked_update) -> list[int]:
  """The numbers of stacked layers that the devices hold of a stacked array."""
  return sorted({s.data.shape[0] for s in stacked_update.addressable_shards})


def collectives(compiled) -> list[str]:
  """The collective ops in a compiled program's text."""
  return sorted(set(re.findall("|".join(COLLECTIVES), compiled.as_text())))


@functools.cache
def device_results(module: str, full: bool = False) -> dict:
  """Runs ``children.<module>.devices(n, full)`` on n = 2, 4 and 8 CPU devices, the three
  children concurrently; their results by n (once per session and arguments)."""
  from helpers import start_child  # the parent's launcher (children never call this)

  children = {
    n: start_child(f"{module}.devices", n, full, devices=n, timeout=1800 if full else 600)
    for n in DEVICE_COUNTS
  }
  try:
    return {n: child.wait()[0] for n, child in children.items()}
  finally:  # after a failure, the other children are not left running
    for child in children.values():
      child.kill()
