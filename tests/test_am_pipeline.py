"""Pipeline-parallel AM-Adam and AM-mem (issue 17): equivalence with the single-device
``am_adam`` / ``am_mem`` steps on 2, 4 and 8 CPU devices and across two processes, both
boundary choices, no collectives in the weight phase, Flax training loops and validation.

The multi-device parts (marked ``multidevice``) run the child programs of
``children/am_pipeline.py`` (which also holds the single-device references; the problem
and the launcher are ``children/pipeline_problems.py``'s, shared with the SM pipeline):
``devices(n)`` in one process with n devices (the three device counts run concurrently,
``helpers.start_child``) and ``worker()`` in each of two ``jax.distributed`` processes
with 2 devices each (``helpers.run_child``); each runs once per session, for both methods.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from children.am_pipeline import (
  MEM_ATOL,
  MEM_RTOL,
  VARIANTS,
  case_name,
  cases,
  comparable,
  mem_cases,
  mem_problem,
  reference_comparable,
  reference_run,
)
from children.pipeline_problems import ATOL, RTOL, device_results, error, leaves, problem, size
from flax import nnx
from helpers import run_child, teacher_classification, tree_allclose

import altmin_jax as amj
from altmin_jax import pipeline as pl


def _device_results(full: bool = False) -> dict:
  """The 2-, 4- and 8-device children's results by n."""
  return device_results("am_pipeline", full)


@functools.cache
def _worker_results() -> list:
  """The two ``jax.distributed`` processes' results (both methods)."""
  return run_child("am_pipeline.worker", devices=2, processes=2, timeout=600)


def _check_cases(results: dict, n: int, full: bool, mem: bool = False):
  """Every AM-Adam (``mem``: AM-mem) case on n devices matched its single-device
  reference to the tolerance (errors <= 1), moved the params and (stacked params) held
  only its own layers on each device; AM-mem's padded params stayed exactly zero."""
  got = results["cases"]
  assert set(got) == {case_name(*c) for c in [*cases(n, full), *mem_cases(n, full)]}
  for case in mem_cases(n, full) if mem else cases(n, full):
    name = case_name(*case)
    r = got[name]
    assert r["params_error"] <= 1.0, (n, name, r)
    assert r["state_error"] <= 1.0, (n, name, r)
    assert r["moved"] > 1e-3, (n, name, r)  # the step did something
    if mem:
      assert r["padding"] == 0.0, (n, name, r)
      stages, boundary = case[5], case[2]
      layers = stages if boundary == "pad" else stages - 2
    else:
      layers = 8
    if case[3] == "stacked":
      assert r["layers_per_device"] == [layers // n], (n, name, r)


# ------------------------------------------------------------------ the tests


@pytest.mark.multidevice
@pytest.mark.parametrize("n", [2, 4, 8])
def test_pipelined_steps_equal_single_device_steps(n):
  """On n CPU devices (an 8-stage tanh MLP, its input and logits zero-padded), two
  pipelined AM-Adam steps give ``am_adam``'s params, step count, batch loss and per-layer
  Adam states to rtol 1e-4 / atol 1e-6: 2 devices with the first and last layer outside
  (its own output optimizer, 3 micro-batches, network-form params), 4 devices with
  Nesterov code steps and two weight steps (M = 2), 8 devices with Adam code steps and a
  mu schedule (M = 4); with stacked params each device holds only its own layers. The
  slow variant sweeps every variant over M in {1, 2, 3, 4, 6, 12}."""
  _check_cases(_device_results()[n], n, full=False)


@pytest.mark.slow
@pytest.mark.multidevice
@pytest.mark.parametrize("n", [2, 4, 8])
def test_pipelined_steps_equal_single_device_steps_full(n):
  """Every variant with M in {1, 2, 3, 4, 6, 12} (and the outside boundary where the
  middle layers split evenly), two steps each."""
  _check_cases(_device_results(full=True)[n], n, full=True)


@pytest.mark.multidevice
@pytest.mark.parametrize("n", [2, 4, 8])
def test_pipelined_am_mem_steps_equal_single_device_steps(n):
  """AM-mem in float64 (the exact solve of a float32 memory amplifies rounding beyond any
  useful tolerance), on MLPs whose hidden widths vary so that every layer's memories are
  zero-padded: three pipelined AM-mem steps (memories carried) give ``am_mem``'s params,
  step count, batch loss, output-layer optimizer state and co-activation memories to
  rtol 1e-8 / atol 1e-10: 2 devices the exact solve with the first and last stage
  outside (M = 2), 4 devices block-coordinate sweeps with every stage padded into the
  pipeline (M = 2), 8 devices the exact solve padded (M = 4); the padded weights stay
  exactly zero. Both boundaries across processes: ``test_am_mem_two_processes_...``; the
  slow variant runs both solvers with both boundaries on every n, M in
  {1, 2, 3, 4, 6, 12} (pad) and {1, 4} (outside, 10 stages on 4 and 8 devices)."""
  _check_cases(_device_results()[n], n, full=False, mem=True)


@pytest.mark.slow
@pytest.mark.multidevice
@pytest.mark.parametrize("n", [2, 4, 8])
def test_pipelined_am_mem_steps_equal_single_device_steps_full(n):
  """Both AM-mem solvers with M in {1, 2, 3, 4, 6, 12} (pad) and {1, 4} (outside)."""
  _check_cases(_device_results(full=True)[n], n, full=True, mem=True)


@pytest.mark.multidevice
def test_weight_phase_has_no_collectives():
  """The compiled weight-update phase (4 devices) contains no collective op, for AM-Adam
  and for AM-mem (memory updates and block-coordinate sweeps), while the forward pass,
  the input codes and the code updates communicate between neighbours (so the check can
  fail)."""
  hlo = _device_results()[4]["hlo"]
  assert hlo["weight_updates"] == []
  assert hlo["weight_updates_mem"] == []
  for phase in ("forward", "input_codes", "code_updates"):
    assert "collective-permute" in hlo[phase], (phase, hlo[phase])


@pytest.mark.multidevice
def test_two_processes_match_the_single_process_step():
  """Two processes (jax.distributed on localhost, gloo CPU collectives, 2 devices each)
  run a 4-device pipeline, layers 0-3 on one process and 4-7 on the other: two steps
  equal ``am_adam``'s on one device."""
  got = _worker_results()
  net, params, x, y = problem()
  want = reference_run("sgd", net, params, jnp.asarray(x), jnp.asarray(y), 2)
  for t, (p, s) in enumerate(want):
    expected = leaves((p, reference_comparable(s)))
    for rank in (0, 1):
      for i, w in enumerate(expected):
        np.testing.assert_allclose(got[rank][f"{t}/{i}"], w, rtol=RTOL, atol=ATOL)
  for rank in (0, 1):
    np.testing.assert_array_equal(got[rank][f"owned/{rank}"], np.arange(4) + 4 * rank)


@pytest.mark.multidevice
def test_am_mem_two_processes_match_the_single_process_step():
  """AM-mem across the same two processes, in float64: three steps with the memories
  zero-padded into a 4-device pipeline (layers 0-3 on one process, 4-7 on the other)
  and with the first and last stage outside a 2-device pipeline of one device per
  process (3 middle layers each) equal ``am_mem``'s on one device (rtol 1e-8 /
  atol 1e-10); padded weights stay zero."""
  got = _worker_results()
  with jax.enable_x64(True):
    want = reference_run("mem_bcd", *mem_problem(8), 3)
    expected = [leaves((p, reference_comparable(s))) for p, s in want]
  for boundary, per_process in (("pad", 4), ("outside", 3)):
    for rank in (0, 1):
      r = got[rank]
      for t, step in enumerate(expected):
        for i, w in enumerate(step):
          g = r[f"mem/{boundary}/{t}/{i}"]
          np.testing.assert_allclose(g, w, rtol=MEM_RTOL, atol=MEM_ATOL, err_msg=boundary)
      owned = r[f"mem/{boundary}/owned/{rank}"]
      np.testing.assert_array_equal(owned, np.arange(per_process) + per_process * rank)
      assert r[f"mem/{boundary}/padding"] == 0.0


def test_both_boundaries_give_the_single_device_step():
  """A 9-6-4-6-3 MLP on a 1-device mesh (ReLU after the first layer, tanh after the
  others): with every layer zero-padded into the pipeline (9x6, the 4-unit layer padded
  too; tanh everywhere, since padded layers share one activation) and with the first and
  last layer outside (the ReLU layer outside, the middle layers padded to 6x6), two steps
  equal ``am_adam``'s, and every padded entry of the stacked params stays exactly zero."""
  x, y = teacher_classification(1, n=8, d=9)
  kw = VARIANTS["sgd"]
  for activation, boundary, shape in (
    (jnp.tanh, "pad", (4, 9, 6)),
    ([jax.nn.relu, jnp.tanh, jnp.tanh], "outside", (2, 6, 6)),
  ):
    net = amj.networks.mlp([9, 6, 4, 6, 3], activation=activation)
    params = net.init(jax.random.key(1))
    want = reference_run("sgd", net, params, x, y, 2)
    mesh = pl.pipeline_mesh(1)
    tx = amj.pipelined_am_adam(net, mesh=mesh, num_microbatches=2, boundary=boundary, **kw)
    stacked = pl.stack_params(net, params, boundary=boundary, mesh=mesh)
    assert stacked.kernel.shape == shape
    state = tx.init(stacked)
    step = jax.jit(lambda p, s, tx=tx: tx.update(None, s, p, batch=(x, y)))
    lay = pl.pipeline_layout(net, boundary=boundary)
    for t in range(2):
      updates, state = step(stacked, state)
      stacked = optax.apply_updates(stacked, updates)
      assert error(pl.unstack_params(net, stacked), want[t][0]) <= 1.0, (boundary, t)
      got_state = comparable(net, state, boundary)
      assert error(got_state, reference_comparable(want[t][1])) <= 1.0, (boundary, t)
      kernel, bias = np.asarray(stacked.kernel), np.asarray(stacked.bias)
      for l, (w_in, w_out) in enumerate(zip(lay.layer_in_widths, lay.layer_out_widths)):
        assert not np.any(kernel[l, w_in:]) and not np.any(kernel[l, :, w_out:]), (boundary, l)
        assert not np.any(bias[l, w_out:]), (boundary, l)
    assert size(jax.tree.map(lambda a, b: a - b, want[-1][0], params)) > 1e-3


NNX_METHODS = {
  "am_adam": (
    amj.am_adam,
    amj.pipelined_am_adam,
    dict(code_steps=2, code_lr=0.05, mu=0.1, weight_optimizer=optax.adam(3e-2)),
  ),
  "am_mem": (
    amj.am_mem,
    amj.pipelined_am_mem,
    dict(code_steps=2, code_lr=0.05, mu=0.1, output_optimizer=optax.sgd(0.3)),
  ),
}


@pytest.mark.parametrize("name", NNX_METHODS)
def test_works_from_nnx_optimizer_and_train_state(name):
  """A Flax NNX MLP trained through ``nnx.Optimizer``, and its params through the shipped
  ``TrainState``, take ``am_adam``'s (``am_mem``'s) first step (1-device mesh, 2
  micro-batches); the NNX model keeps decreasing the loss."""
  model = nnx.Sequential(
    nnx.Linear(6, 8, rngs=nnx.Rngs(0)), jnp.tanh, nnx.Linear(8, 3, rngs=nnx.Rngs(1))
  )
  net = amj.networks.from_nnx(model)
  x, y = teacher_classification(0, n=16)
  single, pipelined_factory, kw = NNX_METHODS[name]
  mesh = pl.pipeline_mesh(1)
  tx = pipelined_factory(net, mesh=mesh, num_microbatches=2, **kw)
  ref = single(net, **kw)
  pure = net.init(None)
  expected = optax.apply_updates(pure, ref.update(None, ref.init(pure), pure, batch=(x, y))[0])

  state = amj.training.TrainState.create(apply_fn=net.apply, params=pure, tx=tx)
  first = jax.jit(lambda s: s.apply_gradients(batch=(x, y)))(state)
  assert tree_allclose(first.params, expected, rtol=1e-5, atol=1e-6)
  assert int(first.step) == 1 and int(first.opt_state.count) == 1

  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, x, y):
    optimizer.update(model, None, batch=(x, y))

  loss = lambda: float(jnp.mean(amj.losses.softmax_cross_entropy(model(x), y)))
  before = loss()
  train_step(model, optimizer, x, y)
  assert tree_allclose(nnx.as_pure(nnx.state(model, nnx.Param)), expected, rtol=1e-5, atol=1e-6)
  for _ in range(20):
    train_step(model, optimizer, x, y)
  assert loss() < 0.7 * before


def test_validation_names_the_offending_value():
  net, params, x, y = problem()
  mesh = pl.pipeline_mesh(1)
  with pytest.raises(ValueError, match="num_microbatches=0"):
    amj.pipelined_am_adam(net, mesh=mesh, num_microbatches=0)
  with pytest.raises(ValueError, match="boundary='middle'"):
    amj.pipelined_am_adam(net, mesh=mesh, boundary="middle")
  with pytest.raises(ValueError, match="mesh="):
    amj.pipelined_am_adam(net, mesh="cpu")
  with pytest.raises(ValueError, match="code_steps=-1"):
    amj.pipelined_am_adam(net, mesh=mesh, code_steps=-1)
  with pytest.raises(ValueError, match="output_optimizer needs boundary='outside'"):
    amj.pipelined_am_adam(net, mesh=mesh, output_optimizer=optax.sgd(0.1))
  with pytest.raises(ValueError, match="one weight_optimizer on all stacked layers"):
    amj.pipelined_am_adam(net, mesh=mesh, weight_optimizer=[optax.sgd(0.1)] * 7 + [optax.adam(1)])
  with pytest.raises(ValueError, match="flat inputs"):
    amj.pipelined_am_adam(amj.networks.lenet5(), mesh=mesh)
  tx = amj.pipelined_am_adam(net, mesh=mesh, num_microbatches=5)
  with pytest.raises(ValueError, match="shape"):  # 12 samples in 5 micro-batches
    tx.update(None, tx.init(params), params, batch=(x, y))
  with pytest.raises(ValueError, match="needs params"):
    tx.update(None, tx.init(params), None, batch=(x, y))
  for bad, message in (
    (dict(solver="lu"), "solver='lu'"),
    (dict(sweeps=0), "sweeps=0"),
    (dict(forgetting=1.5), "forgetting=1.5"),
    (dict(ridge=-1.0), "ridge=-1.0"),
    (dict(output_steps=0), "output_steps=0"),
    (dict(num_microbatches=0), "num_microbatches=0"),
    (dict(boundary="middle"), "boundary='middle'"),
  ):
    with pytest.raises(ValueError, match=re.escape(message)):
      amj.pipelined_am_mem(net, mesh=mesh, **bad)
