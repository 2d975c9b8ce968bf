"""Bad input never gives a silent wrong result (issue 14): every class of bad input, tried
on every method of the conformance registry (``conformance.CASES``), so a method added
to the registry is covered by every class.

Each class says what a user gets: a ``ValueError`` naming the value and the rule, or,
where ``jit`` makes an error impossible (traced values), a documented and detectable
outcome (non-finite updates, which ``training.all_finite`` reports and
``training.skip_nonfinite_updates`` skips). To stay cheap, the checks that must raise
trace ``update`` with ``jax.eval_shape`` (the bad values closed over stay concrete,
nothing is compiled), and each case compiles one guarded step, with float16 params, run
on a good and a bad traced input. A class applies to a case by what the
case's :class:`~conformance.Problem` says (``reads_batch``, ``num_classes``,
``num_workers``, ``skips_workers``); a case it does not apply to is skipped with the
reason. The last section holds the divergence checks that are not per method.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conformance import CASES, case_params
from helpers import teacher_classification, tree_equal

import altmin_jax as amj

IDS = [case.name for case in CASES]
BY_NAME = {case.name: case for case in CASES}


def _problem(name: str, dtype=jnp.float32):
  return BY_NAME[name].problem(dtype)


def _batch_problem(case, *, labels: bool = False):
  problem = _problem(case.name)
  if not problem.reads_batch:
    pytest.skip("the method reads no batch (it takes gradients)")
  if labels:
    assert problem.num_classes is not None, (
      f"case {case.name}: a batch-reading case must set Problem.num_classes"
    )
  return problem


@functools.cache
def _init_state(name: str):
  problem = _problem(name)
  return problem.tx.init(problem.params)


def _trace(problem, extra, state=None):
  """``update`` traced with ``jax.eval_shape``: params and state are abstract, the
  extra args (closed over) keep their concrete values for the method's checks."""
  state = problem.tx.init(problem.params) if state is None else state

  def update(params, state):
    return problem.tx.update(problem.grads(params, extra), state, params, **extra)

  return jax.eval_shape(update, problem.params, state)


def _update(problem, extra):
  state = problem.tx.init(problem.params)
  return problem.tx.update(problem.grads(problem.params, extra), state, problem.params, **extra)


@functools.cache
def _guarded_runs(name: str) -> dict:
  """One compiled ``skip_nonfinite_updates`` step of the case with float16 params, run
  on traced inputs: ``"good"`` (the case's own batch, a reversed worker order) and
  ``"bad"`` (a label equal to the number of classes; an order that is not a
  permutation). Returns ``{kind: (updates, guarded state)}``."""
  problem = _problem(name, jnp.float16)
  guarded = amj.training.skip_nonfinite_updates(problem.tx)
  state = guarded.init(problem.params)
  extra = problem.extra_args(0)
  if problem.reads_batch:
    x, y = extra["batch"]

    def step(params, state, labels):
      args = problem.with_batch(x, labels)
      return guarded.update(problem.grads(params, args), state, params, **args)

    inputs = {"good": y}
    if problem.num_classes is not None:
      inputs["bad"] = y.at[1].set(problem.num_classes)
  else:
    p = problem.num_workers

    def step(params, state, order):
      return guarded.update(problem.grads(params, extra), state, params, **extra, order=order)

    inputs = {"good": jnp.arange(p)[::-1], "bad": jnp.full(p, p - 1 if p > 1 else 1)}
  step = jax.jit(step)
  return {kind: step(problem.params, state, value) for kind, value in inputs.items()}


# --------------------------------------------------------------------------- labels


@pytest.mark.parametrize("which", ["num_classes", "-1"])
@pytest.mark.parametrize("case", case_params())
def test_concrete_out_of_range_label_raises_naming_it(case, which):
  """A label equal to the number of classes, or -1 (never read as the last class),
  raises before anything is traced, naming the label."""
  problem = _batch_problem(case, labels=True)
  x, y = problem.extra_args(0)["batch"]
  bad = problem.num_classes if which == "num_classes" else -1
  with pytest.raises(ValueError, match=rf"labels\[2\]={bad}\b"):
    _trace(problem, problem.with_batch(x, y.at[2].set(bad)))


@pytest.mark.parametrize("case", case_params())
def test_float_class_labels_raise(case):
  problem = _batch_problem(case)
  x, y = problem.extra_args(0)["batch"]
  with pytest.raises(ValueError, match=r"integer class ids.*float32"):
    _trace(problem, problem.with_batch(x, y.astype(jnp.float32)))


@pytest.mark.parametrize("case", case_params())
def test_traced_out_of_range_label_is_detected_and_skipped(case):
  """Inside ``jit`` a label cannot raise: an out-of-range one makes the step
  non-finite, and ``skip_nonfinite_updates`` skips and counts it (params unchanged)."""
  _batch_problem(case, labels=True)
  runs = _guarded_runs(case.name)
  assert int(runs["good"][1].total_notfinite) == 0
  updates, state = runs["bad"]
  assert int(state.total_notfinite) == 1
  assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))


# ------------------------------------------------------------------- empty batch


@pytest.mark.parametrize("case", case_params())
def test_empty_batch_raises(case):
  problem = _batch_problem(case)
  x, y = problem.extra_args(0)["batch"]
  with pytest.raises(ValueError, match=r"at least one sample, got an empty batch"):
    _trace(problem, problem.with_batch(x[:0], y[:0]))


# ------------------------------------------------------------------------- state


def _foreign_state(case):
  """The state of the first other case whose state type differs."""
  own = type(_init_state(case.name))
  for other in CASES:
    if other.name != case.name and type(_init_state(other.name)) is not own:
      return other.name, _init_state(other.name)
  raise AssertionError("the registry needs two state types")


@pytest.mark.parametrize("case", case_params())
def test_another_methods_state_raises(case):
  problem = _problem(case.name)
  _, state = _foreign_state(case)
  with pytest.raises(ValueError, match=r"update needs the state its init returns"):
    _trace(problem, problem.extra_args(0), state=state)


@pytest.mark.parametrize("case", case_params())
def test_same_type_state_of_other_structure_raises(case):
  """A state of the method's own type built for params of another structure (another
  configuration's state has the same kind of mismatch: am_adam's vs am_mem's AMState)."""
  problem = _problem(case.name)
  state = _init_state(case.name)
  leaves, treedef = jax.tree.flatten(state)
  index = max(range(len(leaves)), key=lambda i: np.size(leaves[i]))
  if np.ndim(leaves[index]) == 0:
    pytest.skip("the state holds scalars only")
  leaves[index] = jnp.concatenate([leaves[index], leaves[index]])  # one leaf of another shape
  with pytest.raises(ValueError, match=r"update needs the state its init returns.*shape"):
    _trace(problem, problem.extra_args(0), state=jax.tree.unflatten(treedef, leaves))


# ------------------------------------------------------------ distributed extra args


def _workers_problem(case):
  problem = _problem(case.name)
  if problem.num_workers is None:
    pytest.skip("not a distributed method")
  return problem


@pytest.mark.parametrize("case", case_params())
def test_order_that_is_not_a_permutation_raises(case):
  problem = _workers_problem(case)
  p = problem.num_workers
  extra = problem.extra_args(0)
  with pytest.raises(ValueError, match=r"order must be a permutation of 0\.\."):
    _trace(problem, {**extra, "order": np.full(p, p - 1 if p > 1 else 1)})
  with pytest.raises(ValueError, match=rf"order must be an integer permutation of shape \({p},\)"):
    _trace(problem, {**extra, "order": np.arange(p + 1)})


@pytest.mark.parametrize("case", case_params())
def test_traced_order_that_is_not_a_permutation_gives_nonfinite_updates(case):
  """Inside ``jit`` an order cannot raise: one that is not a permutation makes the
  updates NaN, and ``skip_nonfinite_updates`` skips and counts the step."""
  _workers_problem(case)
  runs = _guarded_runs(case.name)
  assert int(runs["good"][1].total_notfinite) == 0
  updates, state = runs["bad"]
  assert int(state.total_notfinite) == 1
  assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("case", case_params())
def test_active_must_be_boolean_of_one_flag_per_worker(case):
  problem = _workers_problem(case)
  p = problem.num_workers
  extra = problem.extra_args(0)
  for bad in (np.ones(p, np.int32), np.ones(p + 1, bool)):
    with pytest.raises(ValueError, match=rf"active must be a boolean array of shape \({p},\)"):
      _trace(problem, {**extra, "active": bad})


@pytest.mark.parametrize("case", case_params())
def test_idle_worker_is_skipped_or_refused(case):
  """A method that can skip a worker leaves the idle worker's copy unchanged; every
  other method refuses a concrete ``active`` with an idle worker (it would step it)."""
  problem = _workers_problem(case)
  p = problem.num_workers
  active = np.ones(p, bool)
  active[-1] = False
  extra = {**problem.extra_args(0), "active": active}
  if not problem.skips_workers:
    with pytest.raises(ValueError, match=r"cannot skip one: active must be all True"):
      _trace(problem, extra)
    return
  updates, _ = _update(problem, extra)
  moved = [bool(jnp.any(u[-1] != 0)) for u in jax.tree.leaves(updates)]
  assert not any(moved), "the idle worker's copy changed"
  everyone, _ = _update(problem, problem.extra_args(0))
  assert any(bool(jnp.any(u[-1] != 0)) for u in jax.tree.leaves(everyone))


@pytest.mark.parametrize("case", case_params())
def test_unreplicated_params_raise_at_init(case):
  """Params whose leaves all have a leading size p but whose rows differ (for example
  another model's unreplicated params) are refused: ``init`` takes replicated ones."""
  problem = _workers_problem(case)
  if problem.num_workers == 1:
    pytest.skip("single-worker methods take params without a worker axis")
  rows_differ = jax.tree.map(lambda a: a.at[1].add(1.0), problem.params)
  with pytest.raises(ValueError, match=r"rows differ: init takes replicated worker params"):
    problem.tx.init(rows_differ)
  problem.tx.init(amj.distributed.replicate(jax.tree.map(lambda a: a[1], rows_differ), 3))


# --------------------------------------------------------------- low precision


@pytest.mark.parametrize("case", case_params())
def test_float16_params_take_a_finite_first_step(case):
  """Methods compute in at least float32: float16 params with the default Adam epsilon
  (1e-8, which is 0 in float16) do not go non-finite at step 0."""
  problem = _problem(case.name, jnp.float16)
  assert all(leaf.dtype == jnp.float16 for leaf in jax.tree.leaves(problem.params))
  updates, state = _guarded_runs(case.name)["good"]
  assert int(state.total_notfinite) == 0
  assert bool(amj.training.all_finite(updates, state.inner_state))
  assert {u.dtype for u in jax.tree.leaves(updates)} == {jnp.dtype(jnp.float16)}


# ------------------------------------------------------------- not per method


def test_regression_targets_of_the_wrong_rank_are_rejected_never_broadcast():
  outputs = jnp.zeros((5, 1))
  with pytest.raises(ValueError, match=r"targets must have the outputs' shape \(5, 1\)"):
    amj.losses.squared_error(outputs, jnp.ones(5))
  np.testing.assert_allclose(amj.losses.squared_error(outputs, jnp.ones((5, 1))), np.ones(5))
  net = amj.networks.mlp([3, 4, 1])
  params = net.init(jax.random.key(0))
  tx = amj.am_adam(net, amj.losses.squared_error)
  x = jnp.ones((5, 3))
  with pytest.raises(ValueError, match=r"targets must have the outputs' shape \(5, 1\)"):
    jax.jit(tx.update)(None, tx.init(params), params, batch=(x, jnp.ones(5)))
  updates, _ = tx.update(None, tx.init(params), params, batch=(x, jnp.ones((5, 1))))
  assert bool(amj.training.all_finite(updates))


def test_make_train_step_checks_concrete_labels_before_tracing():
  net = amj.networks.mlp([6, 8, 3])
  params = net.init(jax.random.key(0))
  tx = amj.am_adam(net)
  step = amj.training.make_train_step(
    net.apply, tx, loss=amj.losses.softmax_cross_entropy, uses_gradients=False
  )
  x, y = teacher_classification(0, n=16)
  with pytest.raises(ValueError, match=r"labels\[4\]=3\b"):
    step(params, tx.init(params), x, y.at[4].set(3))
  _, _, loss = step(params, tx.init(params), x, y)
  assert np.isfinite(float(loss))


def test_a_step_that_diverges_in_its_state_only_is_detected_and_skipped():
  """``am_adam(code_lr=1e6)``: the per-layer Adam moments overflow at step 0 while the
  updates stay finite (exactly zero): ``all_finite(updates)`` alone misses it,
  ``all_finite(updates, state)`` and ``step_is_finite`` do not, and
  ``skip_nonfinite_updates`` skips the step."""
  net = amj.networks.mlp([4, 8, 3])
  params = net.init(jax.random.key(0))
  x, y = jax.random.normal(jax.random.key(1), (16, 4)), jnp.arange(16) % 3
  tx = amj.am_adam(net, code_lr=1e6)
  state = tx.init(params)
  updates, new_state = jax.jit(tx.update)(None, state, params, batch=(x, y))
  assert bool(amj.training.all_finite(updates))  # what the issue found
  assert not bool(amj.training.all_finite(updates, new_state))
  assert not bool(amj.training.step_is_finite(updates, new_state, state))
  guarded = amj.training.skip_nonfinite_updates(tx)
  _, gstate = jax.jit(guarded.update)(None, guarded.init(params), params, batch=(x, y))
  assert int(gstate.total_notfinite) == 1
  assert tree_equal(gstate.inner_state, state)


def test_mu_schedule_with_an_epoch_multiplier_needs_steps_per_epoch():
  with pytest.raises(ValueError, match=r"steps_per_epoch must be given.*epoch_multiplier=1\.1"):
    amj.mu_schedule(epoch_multiplier=1.1)
  with pytest.raises(ValueError, match=r"steps_per_epoch must be given"):
    jax.jit(lambda r: amj.mu_schedule(epoch_multiplier=r)(5))(1.1)
  per_epoch = amj.mu_schedule(init=0.01, epoch_multiplier=1.1, steps_per_epoch=100)
  assert float(per_epoch(931)) == pytest.approx(0.01 * 1.1**9, rel=1e-5)
  linear = amj.mu_schedule(init=0.01, batch_increment=0.5)  # no multiplier: S not needed
  assert float(linear(4)) == pytest.approx(2.01)


def test_cg_block_defaults_descend_on_a_small_tanh_net():
  """With its defaults (damping 1, Armijo search) CGBlock lowers the loss on all the
  data of the conformance suite's tanh network trained on minibatches; undamped, each
  minibatch's Newton step overfits that minibatch and the loss on all data rises."""
  import conformance_sm

  def run(**kwargs):
    problem = conformance_sm._sm_problem(amj.cg_block, **kwargs)(jnp.float32)
    step = jax.jit(lambda p, s, e: problem.tx.update(None, s, p, **e))
    params, state = problem.params, problem.tx.init(problem.params)
    before = float(problem.loss(params, None))
    for i in range(20):
      updates, state = step(params, state, problem.extra_args(i))
      params = optax.apply_updates(params, updates)
    return before, float(problem.loss(params, None))

  before, after = run()
  assert after < 0.5 * before, (before, after)
  before, undamped = run(damping=0.0)
  assert not undamped < before, (before, undamped)


# ------------------------------------------- helpers' arguments (issue 26, one row each)


def _evaluate(x, y, **kw):
  net = amj.networks.mlp([4, 3])
  return amj.training.evaluate(net.apply, net.init(jax.random.key(0)), x, y, **kw)


HELPER_CASES = {
  "mlp activation of an unknown name": (
    lambda: amj.networks.mlp([4, 8, 3], activation="rleu"),
    r"activation must be a function or one of \[.*'relu'.*\], got 'rleu'",
  ),
  "evaluate on an empty x": (
    lambda: _evaluate(np.zeros((0, 4)), np.zeros(0, int)),
    r"same number \(>= 1\) of samples, got 0 inputs and 0 labels",
  ),
  "evaluate with batch_size=0": (
    lambda: _evaluate(np.zeros((4, 4)), np.zeros(4, int), batch_size=0),
    r"batch_size must be an integer >= 1, got batch_size=0",
  ),
  "evaluate with x and y of different lengths": (
    lambda: _evaluate(np.zeros((4, 4)), np.zeros(3, int)),
    r"got 4 inputs and 3 labels",
  ),
  "skip_nonfinite_updates of a string": (
    lambda: amj.training.skip_nonfinite_updates("adam"),
    r"inner must be an optax.GradientTransformation, got inner='adam'",
  ),
  "skip_nonfinite_updates with max_consecutive_errors=0": (
    lambda: amj.training.skip_nonfinite_updates(optax.sgd(0.1), max_consecutive_errors=0),
    r"max_consecutive_errors must be an integer >= 1, got max_consecutive_errors=0",
  ),
}


@pytest.mark.parametrize("name", sorted(HELPER_CASES))
def test_helpers_refuse_bad_arguments_in_one_line(name):
  """Each bad argument of a helper gives one ``ValueError`` line that names the value and
  the rule (before, an iterated string, a ``ZeroDivisionError``, a ``range()`` error, a
  broadcasting ``TypeError`` and an ``AttributeError``)."""
  call, message = HELPER_CASES[name]
  with pytest.raises(ValueError, match=message) as info:
    call()
  assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_helpers_take_what_users_pass():
  """The good forms of the same arguments: activation names (one or one per hidden layer,
  mixed with functions), NumPy integers, a last chunk shorter than ``batch_size``."""
  net = amj.networks.mlp([4, 8, 8, 3], activation=["tanh", jax.nn.relu])
  assert net.stages[0].activation is jnp.tanh and net.stages[1].activation is jax.nn.relu
  assert amj.networks.mlp([4, 8, 3], activation="relu").stages[0].activation is jax.nn.relu
  tx = amj.training.skip_nonfinite_updates(optax.sgd(0.1), max_consecutive_errors=np.int64(3))
  assert tx.init({"w": jnp.zeros(2)}) is not None
  got = _evaluate(np.ones((5, 4)), np.zeros(5, int), batch_size=np.int64(2))
  want = _evaluate(np.ones((5, 4)), np.zeros(5, int))
  assert got == pytest.approx(want)
