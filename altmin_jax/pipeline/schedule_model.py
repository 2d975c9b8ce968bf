r"""Modelled busy and idle time of every pipeline stage: GPipe + GD, GPipe + SM, pipelined AM.

The SM paper (Asad et al., Figure 1) argues that plain GPipe (Huang et al. 2019) with
one gradient update per pass leaves every device idle in the pipeline bubbles before and
after its update, and that surrogate minimization fills the update phase with N local
steps per layer that need no communication. This module makes the argument
quantitative for ``S`` devices (stages), ``M`` micro-batches and ``N`` inner steps, from
per-device operation times (:class:`Durations`, measured by
``benchmarks/sm_pipeline.py``).

One iteration, starting with every device free at time 0 (a flushed pipeline):

* ``F(s, j)``: device ``s`` runs micro-batch ``j`` through its layers, after
  ``F(s-1, j)`` (plus one transfer ``comm``) and its own previous operation;
* ``B(s, j)``: the backward pass of micro-batch ``j`` on device ``s``, after ``B(s+1, j)``
  (plus ``comm``); every device first does all its forwards, then its backwards in the
  same micro-batch order (GPipe);
* **GD**: with ``line_search_trials = r > 0`` (GD + Armijo) ``r`` more pipelined forward
  passes ``T(k, s, j)`` evaluate trial steps (trial ``k`` starts when every gradient is
  known and the previous trial's loss has reached device 0); then ``U(s)``, the update of
  device ``s``'s layers, after its own last backward (and the last trial's loss);
* **SM** (:mod:`altmin_jax.sm.pipelined`): on an iteration that refreshes the curvature
  (``refresh=True``; every iteration unless ``curvature_refresh > 1``), ``J(s, j)``, the
  logits' Jacobian of micro-batch ``j`` through device ``s``'s layers, a second reverse
  pass like the backward one (after ``J(s+1, j)`` plus ``comm`` and the device's own
  backwards); then ``rest_steps`` Lanczos steps of the rest bounds, each a product that
  goes up the devices and comes back down, either (``rest_sweeps="sequential"``) as
  rounds on the full batch, one device at a time (``R(s)`` after ``R(s-1)`` plus
  ``comm`` going up, after ``R(s+1)`` plus ``comm`` going down: ``2 S`` rounds of
  ``rest`` per step), or (``"microbatched"``) as two GPipe passes over the micro-batches
  (``R(s, j)`` after ``R(s-1, j)`` plus ``comm`` going up, after ``R(s+1, j)`` going
  down: ``2 (M + S - 1)`` ticks of ``rest_microbatch`` per step). Then ``L(s)``, building
  and minimising its local losses with N inner steps (``solve_setup + N *
  inner_step``), with no communication (without a refresh, right after the device's own
  backwards). With a step search, ``line_search_trials = r`` trials follow, each a
  forward pass ``T(k, s, j)`` and the loss: trial 0 on device ``s`` after its own solve,
  trial ``k > 0`` after the previous trial's loss has come back (``comm``); the accepted
  multiple reaches every device one ``comm`` after the last trial (``A(s)``, no compute).
* **AM** (:mod:`altmin_jax.am.pipelined`, online AM-Adam): the same forward pass ``F``
  (the encoding), no backward pass. ``I(s)``: device ``s`` recomputes its layers' codes
  for every micro-batch after its own forwards and sends its top code to ``s + 1`` (one
  more transfer ``comm``). ``C(s, j)``: the top-down code updates of micro-batch ``j``
  through device ``s``'s layers (``code_steps`` steps of the code optimizer, each a
  forward and backward pass through a layer), a reverse pass like the backward one:
  after ``C(s+1, j)`` plus ``comm``, and after the input code of its lowest layer has
  arrived (``I(s-1)`` plus ``comm``). Then ``W(s)``, ``weight_steps`` optimizer steps of
  each of its layers on the full batch, with no communication.

GPipe + backprop with Adam is ``"gd"`` with ``update`` set to the time of Adam's update of
the device's layers (moments, bias correction and the step: elementwise, no collective) and
no trials.

:func:`run_times` models a whole run, one flushed iteration after another, from the
per-iteration trials and refreshes a training run reports (the time to a training loss).

Two executions of that graph are modelled:

* ``lockstep=False`` (*dependency-driven*, the paper's Figure 1): every operation starts
  as soon as its dependencies are done;
* ``lockstep=True`` (*as implemented* in :mod:`altmin_jax.pipeline` with
  ``jax.shard_map``): the passes are ``lax.scan``\ s of ``M + S - 1`` ticks, each tick as
  long as the slowest active device plus one ``ppermute``; the curvature chain is
  ``S`` rounds (sequential rest sweeps) or ``M + S - 1`` ticks (micro-batched); every
  phase ends with all devices.

A device is *busy* while it computes (transfers are latency on the edges) and *idle*
otherwise, up to the makespan of the iteration; utilization is
:math:`\sum_s \mathrm{busy}_s / (S \cdot \mathrm{makespan})`. For SM, ``fill_steps[s]``
counts the extra inner steps device ``s`` could take in its idle time after its local
solve without lengthening the iteration (the slack that N local steps can fill).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from altmin_jax.core import checks

METHODS = ("gd", "sm", "am")
REST_SWEEPS = ("sequential", "microbatched")


class Durations(NamedTuple):
  """Time of each operation on one device (any unit; a scalar or one value per device).

  Attributes:
    forward: one micro-batch through the device's layers (``F``).
    backward: one micro-batch backward through them (``B``).
    update: GD's parameter update of the device's layers (``U``).
    jacobian: one micro-batch of the logits' Jacobian pass through them (``J``, SM).
    rest: the device's round of one sweep (up or down) of the rest bounds on the full
      batch (``R``, SM, ``rest_sweeps="sequential"``).
    rest_microbatch: one micro-batch through the device's layers in one pass (up or down)
      of the rest bounds (``R``, SM, ``rest_sweeps="microbatched"``).
    inner_step: one inner CG / GD step on all of the device's local losses (SM).
    solve_setup: building the device's local losses before the inner steps (SM).
    input_code: the codes of the device's layers for all micro-batches (``I``, AM).
    code_update: one micro-batch's code updates through the device's layers (``C``,
      AM: ``code_steps`` steps per layer).
    weight_update: the weight steps of the device's layers on the full batch (``W``,
      AM: ``weight_steps`` steps per layer).
    comm: one point-to-point transfer between neighbouring devices.
  """

  forward: Any = 1.0
  backward: Any = 2.0
  update: Any = 0.0
  jacobian: Any = 0.0
  rest: Any = 0.0
  rest_microbatch: Any = 0.0
  inner_step: Any = 0.0
  solve_setup: Any = 0.0
  input_code: Any = 0.0
  code_update: Any = 0.0
  weight_update: Any = 0.0
  comm: float = 0.0


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The modelled timeline of one iteration.

  Attributes:
    method: ``"gd"``, ``"sm"`` or ``"am"``.
    lockstep: whether the phases are tick-synchronous (as implemented).
    num_stages, num_microbatches, inner_steps, line_search_trials: the configuration
      (``line_search_trials``: GD's Armijo trials or SM's step-search trials).
    rest_sweeps, refresh: SM's form of the rest sweeps and whether the iteration computes
      the curvature (``"sequential"`` and ``True`` for the other methods).
    stage_inner_steps: inner steps per device (``N`` each unless ``fill``).
    makespan: length of the iteration.
    busy, idle: per device, compute time and idle time within the makespan.
    phase_busy: per phase name, per device compute time.
    idle_before_update: per device, idle time between its last backward (AM: its last
      code update ``C``) and the start of its update phase (GD: ``U``; SM: ``J``; AM:
      ``W``), not counting GD's trial passes.
    idle_after_update: per device, idle time after its update phase ends.
    fill_steps: SM only, per device, inner steps that fit in its idle time between its
      local solve and its first step-search trial (or the end of the iteration).
    ops: per device, the ``(name, start, end)`` of every operation in time order.
  """

  method: str
  lockstep: bool
  num_stages: int
  num_microbatches: int
  inner_steps: int
  line_search_trials: int
  rest_sweeps: str
  refresh: bool
  stage_inner_steps: tuple[int, ...]
  makespan: float
  busy: tuple[float, ...]
  idle: tuple[float, ...]
  phase_busy: dict[str, tuple[float, ...]]
  idle_before_update: tuple[float, ...]
  idle_after_update: tuple[float, ...]
  fill_steps: tuple[int, ...]
  ops: tuple[tuple[tuple[str, float, float], ...], ...]

  @property
  def utilization(self) -> float:
    """Fraction of device time spent computing."""
    return sum(self.busy) / (self.num_stages * self.makespan) if self.makespan else 0.0

  def as_dict(self, with_ops: bool = False) -> dict:
    """JSON-ready summary (``ops`` only when asked)."""
    out = {
      "method": self.method,
      "lockstep": self.lockstep,
      "num_stages": self.num_stages,
      "num_microbatches": self.num_microbatches,
      "inner_steps": self.inner_steps,
      "line_search_trials": self.line_search_trials,
      "rest_sweeps": self.rest_sweeps,
      "refresh": self.refresh,
      "stage_inner_steps": list(self.stage_inner_steps),
      "makespan": self.makespan,
      "utilization": self.utilization,
      "busy": list(self.busy),
      "idle": list(self.idle),
      "phase_busy": {k: list(v) for k, v in self.phase_busy.items()},
      "idle_before_update": list(self.idle_before_update),
      "idle_after_update": list(self.idle_after_update),
      "fill_steps": list(self.fill_steps),
    }
    if with_ops:
      out["ops"] = [[list(op) for op in ops] for ops in self.ops]
    return out


def _per_stage(name: str, value: Any, S: int) -> tuple[float, ...]:
  values = tuple(value) if isinstance(value, Sequence) else (value,) * S
  if len(values) != S:
    raise ValueError(f"durations.{name} has {len(values)} entries for {S} stages")
  return tuple(checks.check_nonnegative(f"durations.{name}", v) for v in values)


class _Timeline:
  """Operations appended per device in program order; each starts when the device is
  free and its dependencies have ended."""

  def __init__(self, S: int):
    self.ops: list[list[tuple[str, float, float]]] = [[] for _ in range(S)]
    self.free = [0.0] * S
    self.phase: dict[str, list[float]] = {}

  def run(self, s: int, name: str, phase: str, duration: float, ready: float = 0.0) -> float:
    start = max(self.free[s], ready)
    end = start + duration
    self.ops[s].append((name, start, end))
    self.free[s] = end
    self.phase.setdefault(phase, [0.0] * len(self.free))[s] += duration
    return end


def _passes(tl: _Timeline, S, M, d, *, lockstep: bool, start: float = 0.0, label="F"):
  """A forward pass (``label`` F or a trial T) of all micro-batches; returns the end time
  of ``(s, j)`` as a dict and the time the pass ends everywhere."""
  f = d["forward"]
  end = {}
  if lockstep:
    tick = max(f) + d["comm"]
    for t in range(M + S - 1):
      for s in range(S):
        j = t - s
        if 0 <= j < M:
          tl.run(s, f"{label}{s},{j}", "forward" if label == "F" else "trials", f[s], start)
      start += tick
    return start
  for j in range(M):
    for s in range(S):
      ready = max(start, end[(s - 1, j)] + d["comm"]) if s else start
      end[(s, j)] = tl.run(
        s, f"{label}{s},{j}", "forward" if label == "F" else "trials", f[s], ready
      )
  return max(end.values())


_REVERSE_LABELS = {"backward": "B", "jacobian": "J", "code_update": "C"}


def _backward(tl: _Timeline, S, M, d, *, lockstep: bool, start: float, kind="backward", ready=None):
  """A reverse pass: the backward one, the logits' Jacobians (``kind="jacobian"``) or AM's
  code updates (``kind="code_update"``). ``ready[s]`` (dependency-driven only): the time
  before which device ``s`` cannot start the pass."""
  b, label = d[kind], _REVERSE_LABELS[kind]
  if lockstep:
    tick = max(b) + d["comm"]
    for t in range(M + S - 1):
      for s in range(S):
        j = t - (S - 1 - s)
        if 0 <= j < M:
          tl.run(s, f"{label}{s},{j}", kind, b[s], start)
      start += tick
    return start
  end = {}
  for j in range(M):
    for s in reversed(range(S)):
      above = end[(s + 1, j)] + d["comm"] if s < S - 1 else 0.0
      end[(s, j)] = tl.run(s, f"{label}{s},{j}", kind, b[s], max(above, ready[s] if ready else 0.0))
  return max(end.values())


def _input_codes(tl: _Timeline, S, d, *, lockstep: bool, start: float):
  """AM's input codes ``I(s)`` after the forward pass, then one hop up. Returns, per
  device, when the input code of its lowest layer has arrived, and when the phase ends
  on every device (lockstep: one phase of all devices and one transfer)."""
  c = d["input_code"]
  if lockstep:
    for s in range(S):
      tl.run(s, f"I{s}", "input_codes", c[s], start)
    end = start + max(c) + d["comm"]
    return [end] * S, end
  done = [tl.run(s, f"I{s}", "input_codes", c[s]) for s in range(S)]
  arrived = [done[0]] + [max(done[s], done[s - 1] + d["comm"]) for s in range(1, S)]
  return arrived, max(arrived)


def gpipe_schedule(
  method: str,
  num_stages: int,
  num_microbatches: int,
  durations: Durations,
  *,
  inner_steps: int = 1,
  line_search_trials: int = 0,
  rest_steps: int = 1,
  rest_sweeps: str = "sequential",
  refresh: bool = True,
  lockstep: bool = False,
  fill: bool = False,
) -> Schedule:
  """The modelled timeline of one GPipe iteration with GD, SM or AM updates.

  Args:
    method: ``"gd"`` (one update per pass; GPipe + Adam with Adam's update time as
      ``durations.update``), ``"sm"`` (the Jacobian pass and the rest bounds, then N
      inner steps on every device's local losses) or ``"am"`` (online AM: the input
      codes, the top-down code updates as a reverse pass, then every device's weight
      steps; the backward pass and ``update`` are not used).
    num_stages: S devices.
    num_microbatches: M.
    durations: per-device operation times.
    inner_steps: N (SM).
    line_search_trials: r extra pipelined forward passes per iteration, each with the
      loss: GD's Armijo trials before its update (0 for a fixed step), or SM's step-search
      trials after the local solves (0 without a search: the paper's Algorithm 1).
    rest_steps: Lanczos steps of the rest bounds per SM iteration (``power_iterations``).
    rest_sweeps: SM: ``"sequential"`` (``2 S`` full-batch rounds per Lanczos step) or
      ``"microbatched"`` (two GPipe passes over the micro-batches per step).
    refresh: SM: whether the iteration computes the logits' Jacobians and the rest bounds
      (``False``: an iteration between refreshes of ``curvature_refresh > 1``).
    lockstep: tick-synchronous phases (as implemented with ``shard_map``) instead of
      dependency-driven execution.
    fill: SM only: every device takes ``N + fill_steps[s]`` inner steps, filling its
      idle time after the local solve without lengthening the iteration (SM's descent
      guarantee holds for any number of inner steps per layer, Theorem 1).

  Returns:
    A :class:`Schedule`.

  Example:
    >>> from altmin_jax.pipeline.schedule_model import Durations, gpipe_schedule
    >>> gd = gpipe_schedule("gd", 2, 2, Durations(forward=1, backward=2, update=0.5))
    >>> gd.makespan, gd.busy, round(gd.utilization, 4)
    (9.5, (6.5, 6.5), 0.6842)
    >>> d = Durations(forward=1, input_code=0.5, code_update=2, weight_update=1.5)
    >>> am = gpipe_schedule("am", 2, 2, d)
    >>> am.makespan, am.busy, am.ops[0][-1]
    (11.0, (8.0, 8.0), ('W0', 9.5, 11.0))
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got method={method!r}")
  if rest_sweeps not in REST_SWEEPS:
    raise ValueError(f"rest_sweeps must be one of {REST_SWEEPS}, got rest_sweeps={rest_sweeps!r}")
  S = checks.check_int("num_stages", num_stages, 1)
  M = checks.check_int("num_microbatches", num_microbatches, 1)
  N = checks.check_int("inner_steps", inner_steps, 1)
  r = checks.check_int("line_search_trials", line_search_trials, 0)
  k = checks.check_int("rest_steps", rest_steps, 0)
  if r and method == "am":
    raise ValueError(f"method='am' takes no trials, got line_search_trials={r}")
  if not isinstance(durations, Durations):
    raise ValueError(f"durations must be a Durations, got durations={durations!r}")
  sm = dict(rest_sweeps=rest_sweeps, refresh=bool(refresh)) if method == "sm" else {}
  if fill and method == "sm":
    plain = gpipe_schedule(
      method,
      S,
      M,
      durations,
      inner_steps=N,
      line_search_trials=r,
      rest_steps=k,
      lockstep=lockstep,
      fill=False,
      **sm,
    )
    steps = [N + f for f in plain.fill_steps]
    return _schedule(method, S, M, durations, N, steps, r, k, lockstep, **sm)
  return _schedule(method, S, M, durations, N, [N] * S, r, k, lockstep, **sm)


def _rest_sweeps(tl: _Timeline, S, d, k: int, start: float) -> float:
  """``k`` Lanczos steps of the rest bounds: per step a sweep up the devices and one down,
  one device at a time on the full batch (dependency-driven and lockstep alike)."""
  t = start
  for step in range(k):
    for s in list(range(S)) + list(reversed(range(S))):
      t = tl.run(s, f"R{step}:{s}", "rest", d["rest"][s], t) + d["comm"]
  return t


def _rest_passes(tl: _Timeline, S, M, d, k: int, *, lockstep: bool, start: float) -> float:
  """``k`` Lanczos steps of the rest bounds, each a GPipe pass up the devices over the
  micro-batches and one down (``R{step}u:s,j`` and ``R{step}d:s,j``); returns when the
  last pass ends everywhere. Dependency-driven, micro-batch ``j`` on device ``s`` waits
  for the neighbour's ``j`` (plus ``comm``) and the device's own previous operation."""
  r, comm = d["rest_microbatch"], d["comm"]
  if lockstep:
    tick = max(r) + comm
    for step in range(k):
      for up in (True, False):
        for t in range(M + S - 1):
          for s in range(S):
            j = t - (s if up else S - 1 - s)
            if 0 <= j < M:
              tl.run(s, f"R{step}{'ud'[not up]}:{s},{j}", "rest", r[s], start)
          start += tick
    return start
  last = start
  for step in range(k):
    for up in (True, False):
      end = {}
      order = list(range(S)) if up else list(reversed(range(S)))
      for j in range(M):
        for s in order:
          prev = (s - 1) if up else (s + 1)
          ready = end[(prev, j)] + comm if (prev, j) in end else start
          end[(s, j)] = tl.run(s, f"R{step}{'ud'[not up]}:{s},{j}", "rest", r[s], ready)
      last = max(end.values())
  return last


def _schedule(
  method, S, M, durations, N, steps, r, k, lockstep, rest_sweeps="sequential", refresh=True
) -> Schedule:
  d = {k: _per_stage(k, v, S) for k, v in durations._asdict().items() if k != "comm"}
  d["comm"] = _per_stage("comm", durations.comm, 1)[0]
  tl = _Timeline(S)
  t = _passes(tl, S, M, d, lockstep=lockstep)
  if method == "am":
    arrived, t = _input_codes(tl, S, d, lockstep=lockstep, start=t)
    t = _backward(tl, S, M, d, lockstep=lockstep, start=t, kind="code_update", ready=arrived)
    for s in range(S):  # weight steps where the layers live: no communication
      tl.run(s, f"W{s}", "weights", d["weight_update"][s], t if lockstep else 0.0)
  else:
    t = _backward(tl, S, M, d, lockstep=lockstep, start=t)
  if method == "gd":
    for k in range(r):  # trial k needs every gradient and the previous trial's loss
      t = _passes(tl, S, M, d, lockstep=lockstep, start=t + d["comm"], label=f"T{k}:")
    ready = t if lockstep else (t + d["comm"] if r else 0.0)
    for s in range(S):
      tl.run(s, f"U{s}", "update", d["update"][s], ready)
  elif method == "sm":
    solve = [d["solve_setup"][s] + steps[s] * d["inner_step"][s] for s in range(S)]
    ready = t if lockstep else 0.0  # no refresh: the solve follows the device's backwards
    if refresh:
      t = _backward(tl, S, M, d, lockstep=lockstep, start=t, kind="jacobian")
      if rest_sweeps == "sequential":
        t = _rest_sweeps(tl, S, d, k, t if lockstep else max(tl.free))
      else:
        t = _rest_passes(tl, S, M, d, k, lockstep=lockstep, start=t)
        t = t if lockstep else max(tl.free)  # every device's bounds, gathered
      ready = t
    t = max(tl.run(s, f"L{s}", "solve", solve[s], ready) for s in range(S))
    for k in range(r):  # the step search: trial 0 as soon as the device's step is known
      start = t + d["comm"] if (lockstep or k) else 0.0
      t = _passes(tl, S, M, d, lockstep=lockstep, start=start, label=f"T{k}:")
    if r:  # the accepted multiple reaches every device
      for s in range(S):
        tl.run(s, f"A{s}", "trials", 0.0, t + d["comm"])
  makespan = max(tl.free)
  busy = tuple(sum(e - b for _, b, e in ops) for ops in tl.ops)
  before, after, gap = [], [], []
  reverse, updates = ("C", "W") if method == "am" else ("B", "UJRL")
  for ops in tl.ops:
    last_b = max(e for name, _, e in ops if name.startswith(reverse))
    update = [(b, e) for name, b, e in ops if name[0] in updates]
    trials = [(b, e) for name, b, e in ops if name.startswith("T")]
    between = sum(e - b for b, e in trials) if method == "gd" else 0.0
    before.append(update[0][0] - last_b - between)
    after.append(makespan - update[-1][1])
    gap.append((trials[0][0] if trials and method == "sm" else makespan) - update[-1][1])
  fill = tuple(
    math.floor(a / d["inner_step"][s] + 1e-9) if method == "sm" and d["inner_step"][s] > 0 else 0
    for s, a in enumerate(gap)
  )
  return Schedule(
    method=method,
    lockstep=lockstep,
    num_stages=S,
    num_microbatches=M,
    inner_steps=N if method == "sm" else 1,
    stage_inner_steps=tuple(steps) if method == "sm" else (1,) * S,
    line_search_trials=r if method in ("gd", "sm") else 0,
    rest_sweeps=rest_sweeps,
    refresh=refresh,
    makespan=makespan,
    busy=busy,
    idle=tuple(makespan - b for b in busy),
    phase_busy={k: tuple(v) for k, v in tl.phase.items()},
    idle_before_update=tuple(before),
    idle_after_update=tuple(after),
    fill_steps=fill,
    ops=tuple(tuple(ops) for ops in tl.ops),
  )


def run_times(
  method: str,
  num_stages: int,
  num_microbatches: int,
  durations: Durations,
  *,
  trials: Sequence[int],
  refreshed: Sequence[bool] | None = None,
  **options,
) -> list[float]:
  """Modelled time after each iteration of a run: ``[0, t_1, t_2, ...]``.

  Every iteration is one flushed :func:`gpipe_schedule` (the next starts when the
  previous has ended everywhere) with its own trials and, for SM, whether it refreshed
  the curvature (as a training run reports them: ``SMState.search_trials`` and
  ``SMState.refreshed``; GD+Armijo's trials per search). ``t_i`` is the modelled time to
  the loss after iteration ``i``.

  Args:
    method, num_stages, num_microbatches, durations: as :func:`gpipe_schedule`.
    trials: per iteration, its ``line_search_trials``.
    refreshed: per iteration, SM's ``refresh`` (default: every iteration).
    **options: the other keywords of :func:`gpipe_schedule` (``inner_steps``,
      ``rest_steps``, ``rest_sweeps``, ``lockstep``).

  Example:
    >>> from altmin_jax.pipeline.schedule_model import Durations, run_times
    >>> run_times("gd", 2, 2, Durations(forward=1, backward=2), trials=[0, 2, 0])
    [0.0, 9.0, 24.0, 33.0]
  """
  refreshed = [True] * len(trials) if refreshed is None else list(refreshed)
  if len(refreshed) != len(trials):
    raise ValueError(f"refreshed has {len(refreshed)} entries for {len(trials)} iterations")
  cache: dict[tuple[int, bool], float] = {}
  out = [0.0]
  for r, fresh in zip(trials, refreshed):
    key = (int(r), bool(fresh))
    if key not in cache:
      extra = dict(refresh=key[1]) if method == "sm" else {}
      cache[key] = gpipe_schedule(
        method,
        num_stages,
        num_microbatches,
        durations,
        line_search_trials=key[0],
        **extra,
        **options,
      ).makespan
    out.append(out[-1] + cache[key])
  return out


def compare(
  num_stages: int,
  num_microbatches: int,
  durations: Durations,
  *,
  inner_steps: int,
  line_search_trials: int = 0,
  rest_steps: int = 1,
  rest_sweeps: str = "sequential",
) -> dict:
  """GPipe + GD and GPipe + SM side by side, dependency-driven and lockstep, as a dict
  ready for JSON (``{"gd": ..., "sm": ..., "gd_lockstep": ..., "sm_lockstep": ...}``;
  ``line_search_trials`` are GD's)."""
  out = {}
  for lockstep in (False, True):
    suffix = "_lockstep" if lockstep else ""
    out["gd" + suffix] = gpipe_schedule(
      "gd",
      num_stages,
      num_microbatches,
      durations,
      line_search_trials=line_search_trials,
      lockstep=lockstep,
    ).as_dict()
    out["sm" + suffix] = gpipe_schedule(
      "sm",
      num_stages,
      num_microbatches,
      durations,
      inner_steps=inner_steps,
      rest_steps=rest_steps,
      rest_sweeps=rest_sweeps,
      lockstep=lockstep,
    ).as_dict()
  return out
