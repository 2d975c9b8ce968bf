"""Pipeline-parallel SM (issue 6): equivalence with the single-device step on 2, 4 and 8
CPU devices and across two processes, zero padding against layers kept outside the
pipeline, no collectives in the local-solve phase, and the schedule model.

The multi-device parts (marked ``multidevice``) run the child programs of
``children/sm_pipeline.py`` (which also holds the single-device reference; the problem and
the launcher are ``children/pipeline_problems.py``'s, shared with the AM pipeline), since
the number of CPU devices is fixed when JAX starts: ``devices(n)`` in one process with n
devices (the three device counts run concurrently, ``helpers.start_child``) and
``worker()`` in each of two ``jax.distributed`` processes with 2 devices each
(``helpers.run_child``).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from children.pipeline_problems import ATOL, RTOL, device_results, error, leaves, problem, size
from children.sm_pipeline import SM_KW, case_name, cases, reference_run
from helpers import run_child

import altmin_jax as amj
from altmin_jax import pipeline as pl
from altmin_jax.pipeline.schedule_model import Durations, compare, gpipe_schedule


def _device_results(full: bool = False) -> dict:
  """The 2-, 4- and 8-device children's results by n."""
  return device_results("sm_pipeline", full)


def _check_cases(results: dict, n: int, full: bool):
  got = results["cases"]
  assert set(got) == {case_name(*case) for case in cases(n, full)}
  for name, r in got.items():
    assert r["params_error"] <= 1.0, (n, name, r)
    assert r["state_error"] <= 1.0, (n, name, r)
    assert r["moved"] > 1e-3, (n, name, r)  # the step did something
    if name.endswith("stacked"):
      stacked_layers = 8 if "/pad/" in name else 6  # outside: the first and last kept out
      assert r["layers_per_device"] == [stacked_layers // n], (n, name, r)
    if name.startswith("sm_lagged"):  # curvature_refresh=2 on one batch: steps 1 and 3
      steps = len(r["refreshed"])  # 3 in the quick cases, 2 in the full ones
      assert r["refreshed"] == [True, False, True][:steps], (n, name, r)
      assert r["kept_stored"] and all(r["kept_stored"]), (n, name, r)


# ------------------------------------------------------------------ the tests


@pytest.mark.multidevice
@pytest.mark.parametrize("n", [2, 4, 8])
def test_pipelined_steps_equal_single_device_steps(n):
  """On n CPU devices (an 8-stage tanh MLP, 8/n layers per device, its input and
  logits zero-padded), pipelined SM and the pipelined GD baselines give the
  single-device step's params and state to rtol 1e-4 / atol 1e-6. Between them the
  three device counts cover M in {1, 2, 3, 4, 6} micro-batches (SM with CG at M = 4 and
  2 on 2 devices, M = 2 and 4 on 4, M = 1 and 4 on 8), SM with CG, Armijo-GD
  and scalar-curvature solves, GD with the Armijo search (equal to ``gd_armijo``) and a
  fixed step (equal to ``optax.sgd``), both boundary choices, explicit- and auto-axis
  meshes, network- and stacked-form params and two consecutive steps; each device holds
  only its own layers."""
  _check_cases(_device_results()[n], n, full=False)


@pytest.mark.slow
@pytest.mark.multidevice
@pytest.mark.parametrize("n", [2, 4, 8])
def test_pipelined_steps_equal_single_device_steps_full(n):
  """Every variant with M in {1, 2, 3, 4, 6, 12} (and the outside boundary where the
  middle layers split evenly), two steps each. About 17 minutes on 2 cores."""
  _check_cases(_device_results(full=True)[n], n, full=True)


@pytest.mark.multidevice
def test_micro_batched_rest_sweeps_equal_the_sequential_recurrence():
  """The rest bounds' Lanczos products run as GPipe passes over M micro-batches on 4
  devices; for M in {1, 2, 4} the bounds equal the single-device sequential recurrence's
  to 1e-5 of the largest bound (float32: the same operator and start vectors, summed in
  other orders)."""
  rest = _device_results()[4]["rest"]
  assert set(rest) == {1, 2, 4}, rest
  assert all(err <= 1e-5 for err in rest.values()), rest


@pytest.mark.multidevice
def test_local_solve_phase_has_no_collectives():
  """The compiled local-solve phase (and GD's update) contains no collective op, while
  the forward, backward, Jacobian and rest-bound phases do communicate (so the check can
  fail)."""
  hlo = _device_results()[4]["hlo"]
  assert hlo["solve"] == [] and hlo["gd_update"] == []
  for phase in ("forward", "backward", "jacobians", "rest", "gd_backward", "trial_forward"):
    assert "collective-permute" in hlo[phase], (phase, hlo[phase])


@pytest.mark.multidevice
def test_two_processes_match_the_single_process_step():
  """Two processes (jax.distributed on localhost, gloo CPU collectives, 2 devices each)
  run a 4-stage pipeline with one stage group (layers 0-3, 4-7) per process: the
  pipelined SM and GD+Armijo steps equal the single-device steps."""
  got = run_child("sm_pipeline.worker", devices=2, processes=2, timeout=600)
  net, params, x, y = problem()
  for variant in ("sm", "gd_armijo"):
    ((new, state),) = reference_run(variant, net, params, jnp.asarray(x), jnp.asarray(y), 1)
    want = leaves((new, state))
    for rank in (0, 1):
      for i, w in enumerate(want):
        np.testing.assert_allclose(got[rank][f"{variant}/{i}"], w, rtol=RTOL, atol=ATOL)
      owned = got[rank][f"{variant}/owned/{rank}"]
      np.testing.assert_array_equal(owned, np.arange(4) + 4 * rank)


def test_zero_padding_and_layers_outside_the_pipeline_change_no_result():
  """A 9-6-4-6-3 tanh MLP on a 1-device mesh: with all layers zero-padded to 9x6 in the
  pipeline (the 4-unit hidden layer padded too) and with the first and last layer kept
  outside (middle layers padded to 6x6), two SM steps give the single-device params and
  states, and every padded entry of the stacked params stays exactly zero."""
  net, params, x, y = problem(sizes=(9, 6, 4, 6, 3), n=8)
  mesh = pl.pipeline_mesh(1)
  want = reference_run("sm", net, params, jnp.asarray(x), jnp.asarray(y), 2)
  for boundary, shape in (("pad", (4, 9, 6)), ("outside", (2, 6, 6))):
    tx = amj.pipelined_surrogate_minimization(
      net, mesh=mesh, num_microbatches=2, boundary=boundary, **SM_KW
    )
    stacked = pl.stack_params(net, params, boundary=boundary, mesh=mesh)
    assert stacked.kernel.shape == shape
    state = tx.init(stacked)
    step = jax.jit(lambda p, s, tx=tx: tx.update(None, s, p, batch=(x, y)))
    lay = pl.pipeline_layout(net, boundary=boundary)
    for t in range(2):
      updates, state = step(stacked, state)
      stacked = optax.apply_updates(stacked, updates)
      assert error(pl.unstack_params(net, stacked), want[t][0]) <= 1.0, (boundary, t)
      assert error(state, want[t][1]) <= 1.0, (boundary, t)
      kernel, bias = np.asarray(stacked.kernel), np.asarray(stacked.bias)
      for l, (w_in, w_out) in enumerate(zip(lay.layer_in_widths, lay.layer_out_widths)):
        assert not np.any(kernel[l, w_in:]) and not np.any(kernel[l, :, w_out:]), (boundary, l)
        assert not np.any(bias[l, w_out:]), (boundary, l)
    assert size(jax.tree.map(lambda a, b: a - b, want[-1][0], params)) > 1e-2


def test_stack_and_unstack_round_trip_and_validation():
  """stack_params/unstack_params invert each other (network and NNX-free dict params) and
  the factories reject what they cannot pipeline, naming the offending value."""
  net, params, x, y = problem()
  for boundary in ("pad", "outside"):
    back = pl.unstack_params(net, pl.stack_params(net, params, boundary=boundary))
    assert error(back, params) == 0.0
  mesh = pl.pipeline_mesh(1)
  with pytest.raises(ValueError, match="num_microbatches=0"):
    amj.pipelined_surrogate_minimization(net, mesh=mesh, num_microbatches=0)
  with pytest.raises(ValueError, match="boundary='middle'"):
    amj.pipelined_surrogate_minimization(net, mesh=mesh, boundary="middle")
  with pytest.raises(ValueError, match="mesh="):
    amj.pipelined_gradient_descent(net, mesh="cpu")
  with pytest.raises(ValueError, match="axis_name='layers'"):
    amj.pipelined_gradient_descent(net, mesh=mesh, axis_name="layers")
  with pytest.raises(ValueError, match="activation\\(0\\) == 0"):  # padded sigmoid units
    pl.pipeline_layout(amj.networks.mlp([4, 6, 3, 6, 2], activation=jax.nn.sigmoid))
  pl.pipeline_layout(amj.networks.mlp([4, 6, 6, 2], activation=jax.nn.sigmoid))  # no padding
  with pytest.raises(ValueError, match="at least 3 stages"):
    pl.pipeline_layout(amj.networks.mlp([4, 6, 2]), boundary="outside")
  tx = amj.pipelined_surrogate_minimization(net, mesh=mesh, num_microbatches=5)
  with pytest.raises(ValueError, match="shape"):  # 12 samples in 5 micro-batches
    tx.update(None, tx.init(params), params, batch=(x, y))
  with pytest.raises(ValueError, match="shape"):
    stacked = pl.stack_params(net, params, boundary="outside")
    tx.update(None, tx.init(params), stacked, batch=(x[:10], y[:10]))


# ------------------------------------------------------------- schedule model


def test_schedule_model_gpipe_gd_matches_hand_computed_timeline():
  """S = 2, M = 2, t_f = 1, t_b = 2, t_u = 0.5: forwards end at 2 (device 0) and 3
  (device 1); device 1 back-propagates 3-7 and updates 7-7.5, device 0 5-9 and 9-9.5.
  Busy 6.5 of 9.5 on each device (utilization 13/19); device 1 idles 2 after its update."""
  d = Durations(forward=1.0, backward=2.0, update=0.5)
  for lockstep in (False, True):
    s = gpipe_schedule("gd", 2, 2, d, lockstep=lockstep)
    assert s.makespan == 9.5 and s.busy == (6.5, 6.5) and s.idle == (3.0, 3.0)
    assert s.utilization == pytest.approx(13 / 19)
    assert s.phase_busy == {"forward": (2.0, 2.0), "backward": (4.0, 4.0), "update": (0.5, 0.5)}
  s = gpipe_schedule("gd", 2, 2, d)
  assert [op[0] for op in s.ops[1]] == ["F1,0", "F1,1", "B1,0", "B1,1", "U1"]
  assert s.ops[1][2:] == (("B1,0", 3.0, 5.0), ("B1,1", 5.0, 7.0), ("U1", 7.0, 7.5))
  assert s.ops[0][2:] == (("B0,0", 5.0, 7.0), ("B0,1", 7.0, 9.0), ("U0", 9.0, 9.5))
  assert s.idle_before_update == (0.0, 0.0) and s.idle_after_update == (0.0, 2.0)
  # lockstep (as implemented): device 1 waits for the end of the backward scan
  s = gpipe_schedule("gd", 2, 2, d, lockstep=True)
  assert s.idle_before_update == (0.0, 2.0) and s.idle_after_update == (0.0, 0.0)
  # two Armijo trials: two more forward passes (3 each) after the backward, 1 busy each
  s = gpipe_schedule("gd", 2, 2, d, line_search_trials=2)
  assert s.makespan == 9.0 + 3.0 + 3.0 + 0.5 and s.busy == (10.5, 10.5)
  assert s.phase_busy["trials"] == (4.0, 4.0)


def test_schedule_model_gpipe_sm_matches_hand_computed_timeline():
  """Same passes (S = 2, M = 2, t_f = 1, t_b = 2: backwards end at 7 and 9), SM with a
  Jacobian pass of 0.5 per micro-batch, one Lanczos step of the rest bounds (a round of
  0.25 per device up and down) and N = 4 inner steps of 0.25: device 1's Jacobians run
  7-8, device 0's 9-10; the rest sweeps 10-11 (device 0, 1, 1, 0); both solves 11-12.
  Busy 8.5 of 12 each. Lockstep: the Jacobian scan 9-10.5, the sweeps 10.5-11.5, solves
  11.5-12.5."""
  d = Durations(forward=1.0, backward=2.0, jacobian=0.5, rest=0.25, inner_step=0.25)
  s = gpipe_schedule("sm", 2, 2, d, inner_steps=4, rest_steps=1)
  assert s.ops[1][-5:] == (
    ("J1,0", 7.0, 7.5),
    ("J1,1", 7.5, 8.0),
    ("R0:1", 10.25, 10.5),
    ("R0:1", 10.5, 10.75),
    ("L1", 11.0, 12.0),
  )
  assert s.ops[0][-5:] == (
    ("J0,0", 9.0, 9.5),
    ("J0,1", 9.5, 10.0),
    ("R0:0", 10.0, 10.25),
    ("R0:0", 10.75, 11.0),
    ("L0", 11.0, 12.0),
  )
  assert s.makespan == 12.0 and s.busy == (8.5, 8.5)
  assert s.utilization == pytest.approx(17 / 24)
  assert s.phase_busy["rest"] == (0.5, 0.5) and s.phase_busy["jacobian"] == (1.0, 1.0)
  lock = gpipe_schedule("sm", 2, 2, d, inner_steps=4, rest_steps=1, lockstep=True)
  assert lock.ops[0][-1] == ("L0", 11.5, 12.5) and lock.makespan == 12.5
  assert [op for op in lock.ops[1] if op[0].startswith("J")] == [
    ("J1,0", 9.0, 9.5),
    ("J1,1", 9.5, 10.0),
  ]
  # more Lanczos steps: one more pair of sweeps (4 rounds of 0.25) each
  assert gpipe_schedule("sm", 2, 2, d, inner_steps=4, rest_steps=3).makespan == 14.0
  # a transfer of 0.1 per hop: every pass tick and every sweep round pays it
  s = gpipe_schedule("sm", 2, 1, d._replace(comm=0.1), inner_steps=4, rest_steps=1)
  assert s.ops[0][-1][1] == pytest.approx(s.ops[1][-1][1])


def test_schedule_model_pipelined_am_matches_hand_computed_timeline():
  """S = 2, M = 2, t_f = 1, a transfer of 0.5 per hop, input codes taking 3 on device 0
  and 0.5 on device 1, code updates of 2 per micro-batch, weight steps of 1.5. Forwards:
  device 0 0-1, 1-2; device 1 1.5-2.5, 2.5-3.5. Input codes: device 0 2-5, device 1
  3.5-4, but device 1's lowest layer waits for device 0's code until 5.5. Code updates
  top-down: device 1 5.5-7.5, 7.5-9.5; device 0 after each plus a hop, 8-10, 10-12.
  Weights: device 1 9.5-11, device 0 12-13.5. Busy 10.5 and 8 of 13.5.

  Lockstep: forward ticks of 1.5 end at 4.5; the input-code phase 4.5-7.5 plus a hop
  (8); reverse ticks of 2.5: device 1 8-10 and 10.5-12.5, device 0 10.5-12.5 and 13-15,
  ending at 15.5; weights 15.5-17."""
  d = Durations(forward=1.0, input_code=(3.0, 0.5), code_update=2.0, weight_update=1.5, comm=0.5)
  s = gpipe_schedule("am", 2, 2, d)
  assert s.ops[0] == (
    ("F0,0", 0.0, 1.0),
    ("F0,1", 1.0, 2.0),
    ("I0", 2.0, 5.0),
    ("C0,0", 8.0, 10.0),
    ("C0,1", 10.0, 12.0),
    ("W0", 12.0, 13.5),
  )
  assert s.ops[1] == (
    ("F1,0", 1.5, 2.5),
    ("F1,1", 2.5, 3.5),
    ("I1", 3.5, 4.0),
    ("C1,0", 5.5, 7.5),
    ("C1,1", 7.5, 9.5),
    ("W1", 9.5, 11.0),
  )
  assert s.makespan == 13.5 and s.busy == (10.5, 8.0) and s.idle == (3.0, 5.5)
  assert s.utilization == pytest.approx(18.5 / 27)
  assert s.phase_busy == {
    "forward": (2.0, 2.0),
    "input_codes": (3.0, 0.5),
    "code_update": (4.0, 4.0),
    "weights": (1.5, 1.5),
  }
  assert s.idle_before_update == (0.0, 0.0) and s.idle_after_update == (0.0, 2.5)
  assert s.fill_steps == (0, 0) and s.inner_steps == 1 and s.line_search_trials == 0
  lock = gpipe_schedule("am", 2, 2, d, lockstep=True)
  assert [op for op in lock.ops[0] if op[0][0] in "ICW"] == [
    ("I0", 4.5, 7.5),
    ("C0,0", 10.5, 12.5),
    ("C0,1", 13.0, 15.0),
    ("W0", 15.5, 17.0),
  ]
  assert [op for op in lock.ops[1] if op[0][0] in "ICW"] == [
    ("I1", 4.5, 5.0),
    ("C1,0", 8.0, 10.0),
    ("C1,1", 10.5, 12.5),
    ("W1", 15.5, 17.0),
  ]
  assert lock.makespan == 17.0 and lock.busy == s.busy
  assert lock.idle_before_update == (0.5, 3.0) and lock.idle_after_update == (0.0, 0.0)
  # AM uses neither the backward pass nor GD's update; GD (with Adam's update time as
  # `update`) none of AM's operations
  extra = d._replace(backward=5.0, update=7.0, jacobian=9.0)
  assert gpipe_schedule("am", 2, 2, extra).ops == s.ops
  gd_d = Durations(forward=1.0, backward=2.0, update=0.5)
  am_parts = gd_d._replace(input_code=4.0, code_update=4.0, weight_update=4.0)
  assert gpipe_schedule("gd", 2, 2, am_parts).ops == gpipe_schedule("gd", 2, 2, gd_d).ops


def test_schedule_model_sm_fills_the_update_phase():
  """With S = 4, M = 4 and equal work per micro-batch, GPipe + GD is busy M/(M+S-1) of
  the time (4/7 when the update is free); SM's N local steps raise utilization towards
  1 as N grows, and the dependency-driven schedule never takes longer than lockstep."""
  d = Durations(forward=1.0, backward=1.0, update=0.0, jacobian=0.5, rest=0.1, inner_step=0.5)
  gd = gpipe_schedule("gd", 4, 4, d)
  assert gd.utilization == pytest.approx(4 / 7)
  utils = [gpipe_schedule("sm", 4, 4, d, inner_steps=n).utilization for n in (1, 10, 1000)]
  assert utils[0] < utils[1] < utils[2] and utils[2] > 0.98
  for n in (1, 10):
    free = gpipe_schedule("sm", 4, 4, d, inner_steps=n)
    lock = gpipe_schedule("sm", 4, 4, d, inner_steps=n, lockstep=True)
    assert lock.makespan >= free.makespan
  table = compare(4, 4, d, inner_steps=10)
  assert set(table) == {"gd", "sm", "gd_lockstep", "sm_lockstep"}
  assert json.loads(json.dumps(table))["sm"]["inner_steps"] == 10
  with pytest.raises(ValueError, match="inner_steps=0"):
    gpipe_schedule("sm", 2, 2, d, inner_steps=0)
  with pytest.raises(ValueError, match="forward"):
    gpipe_schedule("gd", 2, 2, d._replace(forward=(1.0, 2.0, 3.0)))
  with pytest.raises(ValueError, match="method='adam'"):
    gpipe_schedule("adam", 2, 2, d)


def test_layout_of_a_padded_network_is_built_inside_jit():
  """The check that a zero-padded hidden layer's activation maps 0 to 0 also runs when the
  layout is built under ``jit`` / ``eval_shape`` (pipelined methods given network-form
  params with unequal hidden widths), and still rejects an activation with
  activation(0) != 0 there."""
  net = amj.networks.mlp([6, 8, 5, 3], activation=jnp.tanh)  # the 5-unit layer is padded
  assert jax.jit(lambda: pl.pipeline_layout(net).num_layers)() == 3
  built = []
  jax.eval_shape(lambda: built.append(pl.pipeline_layout(net)))
  assert built[0].in_width == 8 and built[0] == pl.pipeline_layout(net)
  bad = amj.networks.mlp([6, 8, 5, 3], activation=jax.nn.sigmoid)
  with pytest.raises(ValueError, match=r"activation\(0\) = 0.5"):
    jax.jit(lambda: pl.pipeline_layout(bad).num_layers)()
