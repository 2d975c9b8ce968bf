"""Checks every method of the library passes (registry in ``conformance.py``)."""

from __future__ import annotations

import dataclasses

import conformance
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conformance import CASES, case_params
from helpers import tree_equal

import altmin_jax as amj

IDS = [case.name for case in CASES]


def _step(problem, params, state, extra):
  grads = problem.grads(params, extra)
  updates, state = problem.tx.update(grads, state, params, **extra)
  return optax.apply_updates(params, updates), state, updates


_JITTED_STEPS: dict = {}


def _step_function(problem, on_trace=lambda: None):
  """``step(params, state, extra) -> (params, state, updates)`` of the problem; it calls
  ``on_trace()`` each time it is traced. Every test jits a function of this name and body,
  so the XLA programs of equal signatures are equal and compile once per session (the
  persistent compilation cache, ``conftest.py``, keys on the program and its name)."""

  def step(params, state, extra):
    on_trace()
    return _step(problem, params, state, extra)

  return step


def _jitted_step(case, dtype):
  """``jit`` of the step of the case's shared problem: one function per case and dtype, so
  the tests that run plain steps trace it once between them (a test that counts traces or
  cache entries jits its own)."""
  key = (case.name, jnp.dtype(dtype).name)
  if key not in _JITTED_STEPS:
    _JITTED_STEPS[key] = jax.jit(_step_function(case.problem(dtype)))
  return _JITTED_STEPS[key]


def test_extended_cases_are_cases():
  assert conformance.EXTENDED <= {case.name for case in CASES}


@pytest.mark.parametrize("case", case_params())
def test_no_recompilation_after_first_step(case):
  problem = case.problem(jnp.float32)
  params, state = problem.params, problem.tx.init(problem.params)
  traces = []
  step = jax.jit(_step_function(problem, on_trace=lambda: traces.append(1)))
  for i in range(3):
    params, state, _ = step(params, state, problem.extra_args(i))
  assert len(traces) == 1
  assert step._cache_size() == 1


@pytest.mark.parametrize("case", case_params())
def test_unknown_extra_args_are_ignored(case):
  problem = case.problem(jnp.float32)
  state = problem.tx.init(problem.params)
  extra = problem.extra_args(0)
  plain = _jitted_step(case, jnp.float32)(problem.params, state, extra)
  more = jax.jit(_step_function(problem))(
    problem.params, state, {**extra, "unknown_arg": 3.0, "value": 1.0}
  )
  assert tree_equal(plain, more)


@pytest.mark.parametrize("case", case_params())
def test_state_is_array_only_and_survives_checkpoint(case, tmp_path):
  problem = case.problem(jnp.float32)
  step = _jitted_step(case, jnp.float32)
  params, state, _ = step(problem.params, problem.tx.init(problem.params), problem.extra_args(0))
  assert isinstance(state, tuple) and hasattr(state, "_fields"), "state must be a NamedTuple"
  for leaf in jax.tree.leaves(state):
    assert isinstance(leaf, jax.Array), f"non-array leaf {type(leaf)} in state"
  counts = [
    leaf
    for path, leaf in jax.tree_util.tree_leaves_with_path(state)
    if "count" in jax.tree_util.keystr(path)
  ]
  assert all(c.dtype == jnp.int32 for c in counts)

  amj.training.save_checkpoint(tmp_path / "ckpt", {"params": params, "state": state})
  restored = amj.training.restore_checkpoint(tmp_path / "ckpt", {"params": params, "state": state})
  assert tree_equal(restored["state"], state)
  assert type(restored["state"]) is type(state)
  expected = step(params, state, problem.extra_args(1))
  got = step(restored["params"], restored["state"], problem.extra_args(1))
  assert tree_equal(expected, got)


@pytest.mark.parametrize(
  "case,thunk,text",
  [(c, t, s) for c in CASES for t, s in c.bad_hyperparams],
  ids=[f"{c.name}-{s}" for c in CASES for _, s in c.bad_hyperparams],
)
def test_bad_hyperparameters_raise_at_construction(case, thunk, text):
  with pytest.raises(ValueError) as info:
    thunk()
  assert text in str(info.value)


@pytest.mark.parametrize("case", case_params())
def test_wrong_feature_size_raises_before_running(case):
  problem = case.problem(jnp.float32)
  if problem.bad_extra_args is None:
    pytest.skip("method takes no batch")
  state = problem.tx.init(problem.params)
  with pytest.raises(ValueError, match=r"shape"):
    jax.jit(lambda p, s, e: _step(problem, p, s, e))(problem.params, state, problem.bad_extra_args)


@pytest.mark.parametrize("case", case_params())
def test_non_finite_batch_is_detectable_and_skippable(case, tmp_path):
  """A NaN in the batch makes the updates non-finite (``training.all_finite`` is
  False); wrapped in ``training.skip_nonfinite_updates`` the step is skipped and
  counted, and diverged params are refused by ``save_checkpoint``. An inf in the batch
  shows in the updates or the new state (DDG keeps it in its delay buffers), and the
  wrapper skips that step too."""
  problem = case.problem(jnp.float32)
  if problem.nonfinite_extra_args is None:
    pytest.skip("method takes no batch")
  state = problem.tx.init(problem.params)
  extra = problem.nonfinite_extra_args
  step = _jitted_step(case, jnp.float32)
  new_params, _, updates = step(problem.params, state, extra)
  assert not bool(amj.training.all_finite(updates))
  with pytest.raises(amj.training.NonFiniteError):
    amj.training.save_checkpoint(tmp_path / "bad", new_params)
  # The same batch with +inf where the NaN was is detected too.
  with_inf = jax.tree.map(
    lambda a: jnp.where(jnp.isnan(a), jnp.inf, a) if jnp.issubdtype(a.dtype, jnp.floating) else a,
    extra,
  )
  _, inf_state, inf_updates = step(problem.params, state, with_inf)
  assert not bool(amj.training.all_finite(inf_updates) & amj.training.all_finite(inf_state))

  guarded = amj.training.skip_nonfinite_updates(problem.tx, max_consecutive_errors=3)
  gstate = guarded.init(problem.params)
  grads = problem.grads(problem.params, extra)
  gupdates, gstate2 = jax.jit(guarded.update)(grads, gstate, problem.params, **extra)
  assert tree_equal(optax.apply_updates(problem.params, gupdates), problem.params)
  assert int(gstate2.notfinite_count) == 1 and int(gstate2.total_notfinite) == 1
  assert tree_equal(gstate2.inner_state, gstate.inner_state)
  inf_grads = problem.grads(problem.params, with_inf)
  gupdates, gstate_inf = jax.jit(guarded.update)(inf_grads, gstate, problem.params, **with_inf)
  assert tree_equal(optax.apply_updates(problem.params, gupdates), problem.params)
  assert int(gstate_inf.total_notfinite) == 1
  # A clean batch afterwards is applied and resets the consecutive counter.
  clean = problem.extra_args(0)
  gupdates, gstate3 = jax.jit(guarded.update)(
    problem.grads(problem.params, clean), gstate2, problem.params, **clean
  )
  assert bool(amj.training.all_finite(gupdates)) and int(gstate3.notfinite_count) == 0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("case", case_params())
def test_params_keep_their_dtype(case, dtype):
  problem = case.problem(dtype)
  assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(problem.params))
  state = problem.tx.init(problem.params)
  params = problem.params
  step = _jitted_step(case, dtype)
  for i in range(2):
    params, state, updates = step(params, state, problem.extra_args(i))
    assert [u.dtype for u in jax.tree.leaves(updates)] == [dtype] * len(jax.tree.leaves(updates))
    assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(params))
  assert bool(amj.training.all_finite(params))


@pytest.mark.parametrize("case", case_params())
def test_composes_with_optax_chain(case):
  problem = case.problem(jnp.float32)
  chained = optax.chain(problem.tx, optax.scale(1.0))
  extra = problem.extra_args(0)
  *_, expected = _jitted_step(case, jnp.float32)(
    problem.params, problem.tx.init(problem.params), extra
  )
  chained_step = jax.jit(_step_function(dataclasses.replace(problem, tx=chained)))
  *_, got = chained_step(problem.params, chained.init(problem.params), extra)
  assert tree_equal(expected, got)


@pytest.mark.parametrize("case", case_params())
def test_decreases_the_loss_on_a_small_problem(case):
  problem = case.problem(jnp.float32)
  step = _jitted_step(case, jnp.float32)
  params, state = problem.params, problem.tx.init(problem.params)
  before = float(problem.loss(params, problem.extra_args(0)))
  for i in range(case.descent_steps):
    params, state, _ = step(params, state, problem.extra_args(i))
  after = float(problem.loss(params, problem.extra_args(0)))
  assert np.isfinite(after)
  assert after < case.descent_factor * before, (before, after)


@pytest.mark.parametrize("case", case_params())
def test_bfloat16_params_with_float32_batches_compile_once(case):
  """Mixed precision (bfloat16 params, float32 inputs) keeps the state's dtypes, so the
  jitted step does not recompile."""
  problem = case.problem(jnp.bfloat16)
  if "batch" not in problem.extra_args(0):
    pytest.skip("method takes no batch")

  def extra(i):
    args = problem.extra_args(i)
    x, y = args["batch"]
    return {**args, "batch": (x.astype(jnp.float32), y)}

  step = jax.jit(_step_function(problem))
  params, state = problem.params, problem.tx.init(problem.params)
  dtypes = [leaf.dtype for leaf in jax.tree.leaves(state)]
  for i in range(3):
    params, state, _ = step(params, state, extra(i))
  assert step._cache_size() == 1
  assert [leaf.dtype for leaf in jax.tree.leaves(state)] == dtypes
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(params))
