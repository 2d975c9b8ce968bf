"""One implementation, two execution modes: stacked workers (vmap) and workers on a device
mesh (shard_map), on 4 CPU devices in one process and across 2 processes
(``jax.distributed`` on localhost).

The multi-device parts run the child programs of ``children/distributed_modes.py`` (which
also holds the methods and the problem) through ``helpers.run_child``, since the number of
CPU devices is fixed when JAX starts: ``modes()`` in one process with 4 devices and
``worker()`` in each of two processes with 2 devices each.
"""

from __future__ import annotations

import numpy as np
import pytest
from children.distributed_modes import MULTIPROCESS, configurations, flat, run_method
from helpers import run_child

import altmin_jax.distributed as dist


def _check_modes(full):
  results = run_child("distributed_modes.modes", full, devices=4, timeout=600)[0]
  assert results.pop("jaxpr") == {"shard_map": True, "psum": True}
  assert len(results) == len(list(configurations(full)))
  for key, r in results.items():
    p = int(key.split("/")[1][2:])
    assert r["max_difference"] <= 1e-6, (key, r)
    assert r["rows_per_device"] == [p // 4], (key, r)
    assert r["moved"] > 0.05, (key, r)  # the runs did something


@pytest.mark.multidevice
def test_stacked_and_mesh_modes_agree_on_four_devices():
  """Every p-worker method, 5 steps with random push orders and delays: stacked workers
  under vmap and workers sharded over a 4-device mesh under shard_map give the same
  params and states (to 1e-6: an all-reduce may sum in another order; most agree
  bitwise), and each device holds only its own workers. Default: 8 workers (2 per
  device) on an auto-axis mesh for all methods, 4 on an explicit-axis mesh for two."""
  _check_modes(full=False)


@pytest.mark.slow
@pytest.mark.multidevice
def test_stacked_and_mesh_modes_agree_for_every_layout():
  """The same for every method with 4 and 8 workers on auto- and explicit-axis meshes."""
  _check_modes(full=True)


@pytest.mark.multidevice
def test_two_processes_match_stacked_workers():
  """Two processes (jax.distributed on localhost, gloo CPU collectives, 2 devices each)
  run EASGD, EAMSGD, DOWNPOUR, DC-ASGD and SSGD with 8 workers on a mesh spanning both;
  the gathered params and centres equal the stacked single-device run."""
  got = run_child("distributed_modes.worker", devices=2, processes=2, timeout=300)[0]
  assert {key.split("/")[0] for key in got} == set(MULTIPROCESS)
  for name in MULTIPROCESS:
    params, state = run_method(name, 8)
    for i, want in enumerate(flat((params, dist.centre(state)))):
      np.testing.assert_allclose(got[f"{name}/{i}"], want, rtol=1e-6, atol=1e-6, err_msg=name)
