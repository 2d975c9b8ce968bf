"""The schedule model's closed forms: makespans of GPipe + GD / Adam and GPipe + SM (both
forms of the rest sweeps, the step search, iterations without a curvature refresh) for
small S and M with unit durations, and whole runs (:func:`run_times`)."""

import json

import pytest

from altmin_jax.pipeline.schedule_model import Durations, gpipe_schedule, run_times

SIZES = [(1, 1), (1, 3), (2, 1), (2, 2), (3, 2), (4, 4), (4, 1), (2, 5)]
UNIT = Durations(
  forward=1.0, backward=1.0, jacobian=1.0, rest_microbatch=1.0, inner_step=1.0, update=0.0
)


def _sm(S, M, **kw):
  """SM with unit durations; a sequential round on the full batch takes M (the work of M
  micro-batches)."""
  return gpipe_schedule("sm", S, M, UNIT._replace(rest=float(M)), **kw)


@pytest.mark.parametrize("S, M", SIZES)
def test_gpipe_passes_closed_forms(S, M):
  """Forward and backward pass: 2 (M + S - 1) both ways; GPipe + Adam adds its update u;
  each Armijo trial another forward pass of M + S - 1."""
  ticks = M + S - 1
  adam = UNIT._replace(update=0.25)
  for lockstep in (False, True):
    assert gpipe_schedule("gd", S, M, adam, lockstep=lockstep).makespan == 2 * ticks + 0.25
    gd = gpipe_schedule("gd", S, M, UNIT, line_search_trials=3, lockstep=lockstep)
    assert gd.makespan == 5 * ticks


@pytest.mark.parametrize("S, M", SIZES)
@pytest.mark.parametrize("k", [1, 3])
def test_sm_rest_sweeps_closed_forms(S, M, k):
  """Dependency-driven, the Jacobian pass ends at 3 M + 2 (S - 1) (device S - 1 runs its
  backward and Jacobian passes back to back; the last micro-batch then drains to device
  0); lockstep at 3 (M + S - 1). Then k Lanczos steps: micro-batched, two passes of
  M + S - 1 each; sequential, 2 S rounds of M each. Then N = 2 inner steps."""
  N, ticks = 2, M + S - 1
  jac = {False: 3 * M + 2 * (S - 1), True: 3 * ticks}
  for lockstep in (False, True):
    micro = _sm(S, M, inner_steps=N, rest_steps=k, rest_sweeps="microbatched", lockstep=lockstep)
    assert micro.makespan == jac[lockstep] + 2 * k * ticks + N
    assert micro.phase_busy["rest"] == (2.0 * k * M,) * S
    seq = _sm(S, M, inner_steps=N, rest_steps=k, lockstep=lockstep)
    assert seq.makespan == jac[lockstep] + 2 * S * k * M + N
    assert seq.phase_busy["rest"] == micro.phase_busy["rest"]  # the same work
    assert micro.makespan <= seq.makespan
    assert (micro.rest_sweeps, seq.rest_sweeps) == ("microbatched", "sequential")


@pytest.mark.parametrize("S, M", SIZES)
def test_sm_step_search_and_lagged_curvature_closed_forms(S, M):
  """r step-search trials add r forward passes of M + S - 1 after the solves (trial 0 on
  each device as soon as its own solve is done); an iteration without a refresh has no
  Jacobian pass and no rest sweeps: the solve follows the backward pass,
  2 (M + S - 1) + N."""
  N, k, ticks = 3, 2, M + S - 1
  for lockstep in (False, True):
    kw = dict(inner_steps=N, rest_steps=k, rest_sweeps="microbatched", lockstep=lockstep)
    plain = _sm(S, M, **kw).makespan
    for r in (1, 2):
      searched = _sm(S, M, line_search_trials=r, **kw)
      assert searched.makespan == plain + r * ticks
      assert searched.phase_busy["trials"] == (r * M,) * S
      assert searched.line_search_trials == r
    lagged = _sm(S, M, refresh=False, **kw)
    assert lagged.makespan == 2 * ticks + N
    assert "jacobian" not in lagged.phase_busy and "rest" not in lagged.phase_busy
    assert _sm(S, M, refresh=False, line_search_trials=2, **kw).makespan == 4 * ticks + N


def test_sm_hand_computed_timeline_with_microbatched_sweeps_and_search():
  """S = 2, M = 2, unit operations, N = 1, one Lanczos step, one trial. Forwards end at 2
  and 3, backwards run 3-5 (device 1) and 4-6 (device 0), Jacobians 5-7 and 6-8. The
  rest pass up: device 0 8-9 and 9-10, device 1 9-10 and 10-11; down: device 1 11-12 and
  12-13, device 0 12-13 and 13-14. Solves 14-15; the trial pass: device 0 15-16 and
  16-17, device 1 16-17 and 17-18; the multiple applied at 18. Device 1 idles 1 between
  its solve and its first trial: one more inner step fits there."""
  s = gpipe_schedule(
    "sm", 2, 2, UNIT, rest_steps=1, rest_sweeps="microbatched", line_search_trials=1
  )
  assert [op for op in s.ops[1] if op[0][0] in "RLTA"] == [
    ("R0u:1,0", 9.0, 10.0),
    ("R0u:1,1", 10.0, 11.0),
    ("R0d:1,0", 11.0, 12.0),
    ("R0d:1,1", 12.0, 13.0),
    ("L1", 14.0, 15.0),
    ("T0:1,0", 16.0, 17.0),
    ("T0:1,1", 17.0, 18.0),
    ("A1", 18.0, 18.0),
  ]
  assert [op for op in s.ops[0] if op[0][0] in "RLTA"] == [
    ("R0u:0,0", 8.0, 9.0),
    ("R0u:0,1", 9.0, 10.0),
    ("R0d:0,0", 12.0, 13.0),
    ("R0d:0,1", 13.0, 14.0),
    ("L0", 14.0, 15.0),
    ("T0:0,0", 15.0, 16.0),
    ("T0:0,1", 16.0, 17.0),
    ("A0", 18.0, 18.0),
  ]
  assert s.makespan == 18.0 and s.busy == (13.0, 13.0)
  assert s.fill_steps == (0, 1)
  filled = gpipe_schedule(
    "sm", 2, 2, UNIT, rest_steps=1, rest_sweeps="microbatched", line_search_trials=1, fill=True
  )
  assert filled.stage_inner_steps == (1, 2) and filled.makespan == 18.0
  # a transfer of 0.5 per hop: each tick of every pass pays it once
  slow = gpipe_schedule(
    "sm", 2, 2, UNIT._replace(comm=0.5), rest_steps=1, rest_sweeps="microbatched", lockstep=True
  )
  assert slow.makespan == 5 * 3 * 1.5 + 1.0
  assert json.loads(json.dumps(s.as_dict()))["rest_sweeps"] == "microbatched"


def test_run_times_adds_each_iterations_makespan():
  """A run's modelled time is the sum of its iterations' makespans, each with its own
  trials and refresh."""
  kw = dict(inner_steps=1, rest_steps=1, rest_sweeps="microbatched")
  times = run_times("sm", 2, 2, UNIT, trials=[1, 2, 0], refreshed=[True, False, False], **kw)
  one = lambda r, fresh: gpipe_schedule("sm", 2, 2, UNIT, line_search_trials=r, refresh=fresh, **kw)
  expected = [0.0]
  for r, fresh in ((1, True), (2, False), (0, False)):
    expected.append(expected[-1] + one(r, fresh).makespan)
  assert times == expected and times[1] == 18.0
  assert run_times("gd", 2, 2, UNIT, trials=[0, 0]) == [0.0, 6.0, 12.0]
  with pytest.raises(ValueError, match="refreshed has 1 entries for 2 iterations"):
    run_times("sm", 2, 2, UNIT, trials=[0, 0], refreshed=[True])


def test_bad_schedule_options_are_refused():
  with pytest.raises(ValueError, match="rest_sweeps='gpipe'"):
    gpipe_schedule("sm", 2, 2, UNIT, rest_sweeps="gpipe")
  with pytest.raises(ValueError, match="line_search_trials=1"):
    gpipe_schedule("am", 2, 2, UNIT, line_search_trials=1)
  with pytest.raises(ValueError, match="line_search_trials=-1"):
    gpipe_schedule("sm", 2, 2, UNIT, line_search_trials=-1)
