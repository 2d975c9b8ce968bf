"""Pipeline-parallel SM (issue 6): equivalence with the single-device step on 2, 4 and 8
CPU devices and across two processes, zero padding against layers kept outside the
pipeline, no collectives in the local-solve phase, and the schedule model.

The multi-device parts run this file as a script in subprocesses, since the number of
CPU devices is fixed when JAX starts: ``python test_sm_pipeline.py devices N [full]``
(one process, N devices; prints one JSON line) and ``... worker RANK PORT OUT`` (one of
two ``jax.distributed`` processes with 2 devices each). The three device counts run
concurrently.
"""

from __future__ import annotations

import doctest
import functools
import json
import os
import re
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import communicate_retrying

import altmin_jax as amj
from altmin_jax.sm import gd_armijo, schedule_model, surrogate_minimization
from altmin_jax.sm import pipeline as pl
from altmin_jax.sm.schedule_model import Durations, compare, gpipe_schedule

HERE = os.path.dirname(os.path.abspath(__file__))
LOSS = amj.losses.softmax_cross_entropy
SIZES = (7, 6, 6, 6, 6, 6, 6, 6, 3)  # 8 stages: input 7 and logits 3 are zero-padded to 6/7
BATCH = 12
SM_KW = dict(inner_steps=4, delta=0.1, power_iterations=5)
RTOL, ATOL = 1e-4, 1e-6
COLLECTIVES = (
  "all-reduce",
  "all-gather",
  "collective-permute",
  "all-to-all",
  "reduce-scatter",
  "collective-broadcast",
)


def _problem(sizes=SIZES, n=BATCH, seed=0):
  net = amj.networks.mlp(list(sizes), activation=jnp.tanh)
  params = net.init(jax.random.key(seed))
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, sizes[0])).astype(np.float32)
  y = rng.integers(0, sizes[-1], size=n).astype(np.int32)
  return net, params, x, y


def _leaves(tree):
  return [np.asarray(a, np.float64) for a in jax.tree.leaves(amj.distributed.fetch(tree))]


def _error(got, want):
  """max over entries of |got - want| / (ATOL + RTOL |want|): <= 1 means allclose."""
  a, b = _leaves(got), _leaves(want)
  assert len(a) == len(b)
  return max(float(np.max(np.abs(x - y) / (ATOL + RTOL * np.abs(y)))) for x, y in zip(a, b))


def _size(tree):
  return max(float(np.max(np.abs(x))) for x in _leaves(tree))


# ------------------------------------------------------------- child processes

# name -> (pipelined factory kwargs, single-device reference)
VARIANTS = {
  "sm": (dict(kind="sm", **SM_KW), lambda net: surrogate_minimization(net, **SM_KW)),
  "sm_armijo": (
    dict(kind="sm", solver="armijo", **SM_KW),
    lambda net: surrogate_minimization(net, solver="armijo", **SM_KW),
  ),
  "sm_scalar": (
    dict(kind="sm", curvature="scalar", **SM_KW),
    lambda net: surrogate_minimization(net, curvature="scalar", **SM_KW),
  ),
  "gd_armijo": (dict(kind="gd"), lambda net: gd_armijo(net)),
  "gd_fixed": (dict(kind="gd", learning_rate=0.3), lambda net: optax.sgd(0.3)),
}


def _cases(n: int, full: bool):
  """(variant, M, boundary, mesh kind, steps, params form) checked on n devices."""
  if full:
    for variant in VARIANTS:
      for m in (1, 2, 3, 4, 6, 12):
        yield variant, m, "pad", "make_mesh", 2, "stacked"
      if (len(SIZES) - 3) % n == 0:
        for m in (1, 4):
          yield variant, m, "outside", "make_mesh", 2, "network"
    return
  if n == 2:  # 4 layers per device
    yield from [
      ("sm", 4, "pad", "make_mesh", 1, "network"),
      ("sm", 2, "outside", "make_mesh", 1, "network"),
      ("sm_armijo", 3, "pad", "make_mesh", 2, "stacked"),
      ("gd_armijo", 3, "outside", "make_mesh", 1, "network"),
    ]
  elif n == 4:
    yield from [
      ("sm", 2, "pad", "make_mesh", 2, "stacked"),
      ("sm", 4, "pad", "make_mesh", 1, "network"),
      ("sm_scalar", 3, "pad", "auto_mesh", 1, "network"),
      ("gd_fixed", 4, "pad", "make_mesh", 1, "stacked"),
    ]
  else:  # 1 layer per device
    yield from [
      ("sm", 1, "pad", "make_mesh", 1, "network"),
      ("sm", 4, "pad", "make_mesh", 1, "stacked"),
      ("gd_armijo", 6, "pad", "make_mesh", 2, "stacked"),
    ]


def _make(variant, net, mesh, m, boundary):
  kw = dict(VARIANTS[variant][0])
  kind = kw.pop("kind")
  factory = pl.pipelined_surrogate_minimization if kind == "sm" else pl.pipelined_gradient_descent
  return factory(net, mesh=mesh, num_microbatches=m, boundary=boundary, **kw)


def _reference_run(variant, net, params, x, y, steps):
  """Single-device steps: params after each step and the states (gd_fixed: optax.sgd on
  the gradient of the batch-mean loss)."""
  tx = VARIANTS[variant][1](net)
  state = tx.init(params)
  grad = jax.grad(lambda p: jnp.mean(LOSS(net.apply(p, x), y)))
  step = jax.jit(
    lambda p, s: tx.update(grad(p) if variant == "gd_fixed" else None, s, p, batch=(x, y))
  )
  out = []
  for _ in range(steps):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
    out.append((params, state))
  return out


def _pipelined_run(tx, net, params, x, y, steps, form, mesh, boundary):
  if form == "stacked":
    params = pl.stack_params(net, params, boundary=boundary, mesh=mesh)
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(None, s, p, batch=(x, y)))
  out = []
  for _ in range(steps):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
    out.append((pl.unstack_params(net, params) if form == "stacked" else params, state))
  return out, updates


def _hlo_collectives(fn, args) -> list[str]:
  text = fn.lower(*args).compile().as_text()
  return sorted(set(re.findall("|".join(COLLECTIVES), text)))


def _child_devices(n: int, full: bool):
  assert len(jax.devices()) == n, jax.devices()
  net, params, x, y = _problem()
  x, y = jnp.asarray(x), jnp.asarray(y)
  meshes = {
    "make_mesh": pl.pipeline_mesh(n),
    "auto_mesh": jax.sharding.Mesh(np.asarray(jax.devices()), ("stage",)),
  }
  cases = list(_cases(n, full))
  refs, results = {}, {}
  for variant, m, boundary, mesh_kind, steps, form in cases:
    if variant not in refs:
      most = max(c[4] for c in cases if c[0] == variant)
      refs[variant] = _reference_run(variant, net, params, x, y, most)
    mesh = meshes[mesh_kind]
    tx = _make(variant, net, mesh, m, boundary)
    got, updates = _pipelined_run(tx, net, params, x, y, steps, form, mesh, boundary)
    want = refs[variant][:steps]
    name = f"{variant}/M={m}/{boundary}/{mesh_kind}/steps={steps}/{form}"
    results[name] = {
      "params_error": max(_error(g[0], w[0]) for g, w in zip(got, want)),
      "state_error": 0.0
      if variant == "gd_fixed"
      else max(_error(g[1], w[1]) for g, w in zip(got, want)),
      "moved": _size(jax.tree.map(lambda a, b: a - b, want[-1][0], params)),
      # layers of the stacked update held by each device (stacked form only)
      "layers_per_device": sorted({s.data.shape[0] for s in updates.kernel.addressable_shards})
      if form == "stacked"
      else [],
    }
  hlo = {}
  if n == 4 and not full:
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))
    import pipeline_phases  # the benchmark's phase functions

    pipe = pl.sm_pipeline(net, mesh=meshes["make_mesh"], num_microbatches=2, **SM_KW)
    for name, (fn, args) in pipeline_phases.phase_functions(pipe, net, params, (x, y)).items():
      hlo[name] = _hlo_collectives(fn, args)
  print(json.dumps({"cases": results, "hlo": hlo}))


def _child_worker(rank: int, port: int, out: str):
  """One of two processes (2 CPU devices each): a 4-stage pipeline spanning both."""
  amj.distributed.initialize_multiprocess(f"127.0.0.1:{port}", 2, rank)
  mesh = pl.pipeline_mesh()
  assert len(jax.devices()) == 4 and len(jax.local_devices()) == 2
  net, params, x, y = _problem()
  xg, yg = amj.distributed.global_replicated((x, y), mesh)
  saved = {}
  for variant in ("sm", "gd_armijo"):
    tx = _make(variant, net, mesh, 2, "pad")
    stacked = pl.stack_params(net, params, mesh=mesh)
    state = tx.init(stacked)
    updates, state = jax.jit(lambda p, s, tx=tx: tx.update(None, s, p, batch=(xg, yg)))(
      stacked, state
    )
    new = pl.unstack_params(net, optax.apply_updates(stacked, updates))
    for i, leaf in enumerate(_leaves((new, state))):
      saved[f"{variant}/{i}"] = leaf
    # global layer indices of the stacked kernel that live on this process's devices
    owned = sorted(i for s in updates.kernel.addressable_shards for i in range(8)[s.index[0]])
    saved[f"{variant}/owned/{rank}"] = np.asarray(owned)
  np.savez(f"{out}.{rank}.npz", **saved)


# --------------------------------------------------------------- the fixtures


def _python(args, env_extra):
  env = {**os.environ, **env_extra}
  return subprocess.Popen(
    [sys.executable, os.path.join(HERE, "test_sm_pipeline.py"), *args],
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _devices_env(n):
  # The children compile afresh rather than share the session's persistent compilation
  # cache (conftest.py): with it, one child deadlocked in a collective on every run for a
  # while here (BUILD.md, multi-device runs).
  return {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}


@functools.cache
def _device_results(full: bool = False) -> dict:
  """Runs the 2-, 4- and 8-device children concurrently; their JSON results by n."""
  starts = {
    n: functools.partial(_python, ["devices", str(n), *(["full"] if full else [])], _devices_env(n))
    for n in (2, 4, 8)
  }
  procs = {n: start() for n, start in starts.items()}
  out = {}
  for n, proc in procs.items():  # a child aborted by XLA's collective watchdog runs again
    code, stdout, stderr = communicate_retrying(starts[n], 1800 if full else 600, proc=proc)
    assert code == 0, stderr[-4000:]
    out[n] = json.loads(stdout.strip().splitlines()[-1])
  return out


def _check_cases(results: dict, n: int, full: bool):
  cases = results["cases"]
  assert set(cases) == {f"{v}/M={m}/{b}/{k}/steps={s}/{f}" for v, m, b, k, s, f in _cases(n, full)}
  for name, r in cases.items():
    assert r["params_error"] <= 1.0, (n, name, r)
    assert r["state_error"] <= 1.0, (n, name, r)
    assert r["moved"] > 1e-3, (n, name, r)  # the step did something
    if name.endswith("stacked"):
      assert r["layers_per_device"] == [8 // n], (n, name, r)


# ------------------------------------------------------------------ the tests


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
@pytest.mark.parametrize("n", [2, 4, 8])
def test_pipelined_steps_equal_single_device_steps_full(n):
  """Every variant with M in {1, 2, 3, 4, 6, 12} (and the outside boundary where the
  middle layers split evenly), two steps each. About 4-5 minutes on 2 cores."""
  _check_cases(_device_results(full=True)[n], n, full=True)


def test_local_solve_phase_has_no_collectives():
  """The compiled local-solve phase (and GD's update) contains no collective op, while
  the forward, backward and curvature phases do communicate (so the check can fail)."""
  hlo = _device_results()[4]["hlo"]
  assert hlo["solve"] == [] and hlo["gd_update"] == []
  for phase in ("forward", "backward", "curvature", "gd_backward", "trial_forward"):
    assert "collective-permute" in hlo[phase], (phase, hlo[phase])


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_the_single_process_step(tmp_path):
  """Two processes (jax.distributed on localhost, gloo CPU collectives, 2 devices each)
  run a 4-stage pipeline with one stage group (layers 0-3, 4-7) per process: the
  pipelined SM and GD+Armijo steps equal the single-device steps."""
  port, out = _free_port(), str(tmp_path / "pipeline")
  procs = [_python(["worker", str(r), str(port), out], _devices_env(2)) for r in (0, 1)]
  for proc in procs:
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-4000:]
  got = [np.load(f"{out}.{r}.npz") for r in (0, 1)]
  net, params, x, y = _problem()
  for variant in ("sm", "gd_armijo"):
    ((new, state),) = _reference_run(variant, net, params, jnp.asarray(x), jnp.asarray(y), 1)
    want = _leaves((new, state))
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
  net, params, x, y = _problem(sizes=(9, 6, 4, 6, 3), n=8)
  mesh = pl.pipeline_mesh(1)
  want = _reference_run("sm", net, params, jnp.asarray(x), jnp.asarray(y), 2)
  for boundary, shape in (("pad", (4, 9, 6)), ("outside", (2, 6, 6))):
    tx = pl.pipelined_surrogate_minimization(
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
      assert _error(pl.unstack_params(net, stacked), want[t][0]) <= 1.0, (boundary, t)
      assert _error(state, want[t][1]) <= 1.0, (boundary, t)
      kernel, bias = np.asarray(stacked.kernel), np.asarray(stacked.bias)
      for l, (w_in, w_out) in enumerate(zip(lay.layer_in_widths, lay.layer_out_widths)):
        assert not np.any(kernel[l, w_in:]) and not np.any(kernel[l, :, w_out:]), (boundary, l)
        assert not np.any(bias[l, w_out:]), (boundary, l)
    assert _size(jax.tree.map(lambda a, b: a - b, want[-1][0], params)) > 1e-2


def test_stack_and_unstack_round_trip_and_validation():
  """stack_params/unstack_params invert each other (network and NNX-free dict params) and
  the factories reject what they cannot pipeline, naming the offending value."""
  net, params, x, y = _problem()
  for boundary in ("pad", "outside"):
    back = pl.unstack_params(net, pl.stack_params(net, params, boundary=boundary))
    assert _error(back, params) == 0.0
  mesh = pl.pipeline_mesh(1)
  with pytest.raises(ValueError, match="num_microbatches=0"):
    pl.pipelined_surrogate_minimization(net, mesh=mesh, num_microbatches=0)
  with pytest.raises(ValueError, match="boundary='middle'"):
    pl.pipelined_surrogate_minimization(net, mesh=mesh, boundary="middle")
  with pytest.raises(ValueError, match="mesh="):
    pl.pipelined_gradient_descent(net, mesh="cpu")
  with pytest.raises(ValueError, match="axis_name='layers'"):
    pl.pipelined_gradient_descent(net, mesh=mesh, axis_name="layers")
  with pytest.raises(ValueError, match="activation\\(0\\) == 0"):  # padded sigmoid units
    pl.pipeline_layout(amj.networks.mlp([4, 6, 3, 6, 2], activation=jax.nn.sigmoid))
  pl.pipeline_layout(amj.networks.mlp([4, 6, 6, 2], activation=jax.nn.sigmoid))  # no padding
  with pytest.raises(ValueError, match="at least 3 stages"):
    pl.pipeline_layout(amj.networks.mlp([4, 6, 2]), boundary="outside")
  tx = pl.pipelined_surrogate_minimization(net, mesh=mesh, num_microbatches=5)
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
  """Same passes, SM with t_c = 0.5 and N = 4 inner steps of 0.25: device 1 computes its
  curvature 7-7.5 and solves 7.5-8.5; device 0 waits for its own backward (9), then
  9-9.5 and 9.5-10.5. Busy 7.5 of 10.5; device 1 has room for 8 more inner steps, and
  filling them (N_1 = 12) raises utilization to 17/21. Lockstep: two chain rounds after
  the backward scan (9-10), both solves 10-11."""
  d = Durations(forward=1.0, backward=2.0, curvature=0.5, inner_step=0.25)
  s = gpipe_schedule("sm", 2, 2, d, inner_steps=4)
  assert s.ops[1][-2:] == (("C1", 7.0, 7.5), ("L1", 7.5, 8.5))
  assert s.ops[0][-2:] == (("C0", 9.0, 9.5), ("L0", 9.5, 10.5))
  assert s.makespan == 10.5 and s.busy == (7.5, 7.5)
  assert s.utilization == pytest.approx(15 / 21)
  assert s.idle_after_update == (0.0, 2.0) and s.fill_steps == (0, 8)
  filled = gpipe_schedule("sm", 2, 2, d, inner_steps=4, fill=True)
  assert filled.stage_inner_steps == (4, 12) and filled.makespan == 10.5
  assert filled.utilization == pytest.approx(17 / 21)
  s = gpipe_schedule("sm", 2, 2, d, inner_steps=4, lockstep=True)
  assert s.ops[1][-2:] == (("C1", 9.0, 9.5), ("L1", 10.0, 11.0))
  assert s.ops[0][-2:] == (("C0", 9.5, 10.0), ("L0", 10.0, 11.0))
  assert s.makespan == 11.0 and s.utilization == pytest.approx(15 / 22)
  # a transfer of 0.1 per hop: forward ticks and chain hop pay it
  s = gpipe_schedule("sm", 2, 1, d._replace(comm=0.1), inner_steps=4)
  times = lambda ops: [t for op in ops for t in op[1:]]
  assert times(s.ops[1]) == pytest.approx([1.1, 2.1, 2.1, 4.1, 4.1, 4.6, 4.6, 5.6])
  assert times(s.ops[0]) == pytest.approx([0, 1, 4.2, 6.2, 6.2, 6.7, 6.7, 7.7])


def test_schedule_model_sm_fills_the_update_phase():
  """With S = 4, M = 4 and equal work per micro-batch, GPipe + GD is busy M/(M+S-1) of
  the time (4/7 when the update is free); SM's N local steps raise utilization towards
  1 as N grows, and the dependency-driven schedule beats lockstep by the overlapped
  curvature chain."""
  d = Durations(forward=1.0, backward=1.0, update=0.0, curvature=0.2, inner_step=0.5)
  gd = gpipe_schedule("gd", 4, 4, d)
  assert gd.utilization == pytest.approx(4 / 7)
  utils = [gpipe_schedule("sm", 4, 4, d, inner_steps=n).utilization for n in (1, 10, 1000)]
  assert utils[0] < utils[1] < utils[2] and utils[2] > 0.98
  for n in (1, 10):
    free = gpipe_schedule("sm", 4, 4, d, inner_steps=n)
    lock = gpipe_schedule("sm", 4, 4, d, inner_steps=n, lockstep=True)
    assert lock.makespan - free.makespan == pytest.approx(3 * 0.2)
  table = compare(4, 4, d, inner_steps=10)
  assert set(table) == {"gd", "sm", "gd_lockstep", "sm_lockstep"}
  assert json.loads(json.dumps(table))["sm"]["inner_steps"] == 10
  with pytest.raises(ValueError, match="inner_steps=0"):
    gpipe_schedule("sm", 2, 2, d, inner_steps=0)
  with pytest.raises(ValueError, match="forward"):
    gpipe_schedule("gd", 2, 2, d._replace(forward=(1.0, 2.0, 3.0)))
  with pytest.raises(ValueError, match="method='adam'"):
    gpipe_schedule("adam", 2, 2, d)


def test_docstring_examples_run():
  for module in (pl.layout, pl.sm, pl.gd, schedule_model):
    result = doctest.testmod(module, raise_on_error=False, verbose=False)
    assert result.attempted > 0 and result.failed == 0, module.__name__


if __name__ == "__main__":
  if sys.argv[1] == "devices":
    _child_devices(int(sys.argv[2]), len(sys.argv) > 3 and sys.argv[3] == "full")
  else:
    _child_worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
