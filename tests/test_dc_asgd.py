"""DC-ASGD family and the asynchrony simulator (Zheng et al., ICML 2017, and its
supplement)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tree_allclose, tree_equal

import altmin_jax as amj
import altmin_jax.distributed as dist

D = 5
CURVATURE = np.linspace(0.5, 2.0, D)


def _targets(rounds, p, seed=0):
  return (0.3 * np.random.default_rng(seed).normal(size=(rounds, p, D))).astype(np.float32)


def _grad(w, target):
  """Gradient of the quadratic 0.5 * sum(h * (w - target)^2)."""
  return jnp.asarray(CURVATURE, jnp.float32) * (w - target)


def _reference_server(rule, lr, targets, schedule, lam=0.0, decay=0.95, eps=1e-7):
  """A plain parameter server in float64, one push at a time (the compensated push rule of
  supplement section D; lambda = 0 is ASGD)."""
  rounds, p, _ = targets.shape
  w = np.zeros(D)
  copies = [np.zeros(D) for _ in range(p)]
  backups = [np.zeros(D) for _ in range(p)]
  ms = np.zeros(D)
  order, active = np.asarray(schedule.order), np.asarray(schedule.active)
  for r in range(rounds):
    grads = [CURVATURE * (copies[m] - targets[r, m]) for m in range(p)]  # at stale copies
    for m in order[r]:
      if not active[r, m]:
        continue
      g = grads[m]
      if rule == "adaptive":
        ms = decay * ms + (1 - decay) * g * g
        lam_t = lam / np.sqrt(ms + eps)
      else:
        lam_t = lam
      w = w - lr * (g + lam_t * g * g * (w - backups[m]))
      backups[m] = w.copy()
      copies[m] = w.copy()
  return w, np.stack(copies), ms


def _simulate(tx, targets, schedule):
  p = targets.shape[1]
  run = jax.jit(lambda t: dist.simulate(tx, _grad, dist.replicate(jnp.zeros(D), p), t, schedule))
  return run(jnp.asarray(targets))


SCHEDULES = {
  "round_robin": lambda p, r: dist.round_robin(p, r),
  "random": lambda p, r: dist.random_delays(jax.random.key(3), p, r, participation=0.7),
}


@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
@pytest.mark.parametrize(
  "rule,make",
  [
    ("plain", lambda: dist.async_sgd(0.3, num_workers=4)),
    ("constant", lambda: dist.dc_asgd(0.3, lambda_0=0.5, num_workers=4)),
    ("adaptive", lambda: dist.dc_asgd_adaptive(0.3, lambda_0=0.3, num_workers=4)),
  ],
)
def test_rounds_match_a_one_push_at_a_time_parameter_server(rule, make, schedule_name):
  """Server params and every worker's copy after 12 rounds equal a float64 parameter
  server that applies the pushes one by one, with gradients at the stale copies."""
  targets = _targets(12, 4)
  schedule = SCHEDULES[schedule_name](4, 12)
  lam = {"plain": 0.0, "constant": 0.5, "adaptive": 0.3}[rule]
  want_w, want_copies, want_ms = _reference_server(rule, 0.3, targets, schedule, lam=lam)
  out = _simulate(make(), targets, schedule)
  np.testing.assert_allclose(dist.centre(out.state), want_w, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(out.params, want_copies, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(out.state.backups, want_copies, rtol=2e-5, atol=2e-6)
  if rule == "adaptive":
    np.testing.assert_allclose(out.state.mean_square, want_ms, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
def test_lambda_zero_is_asgd(schedule_name):
  """lambda_0 = 0 gives ASGD bitwise, for DC-ASGD-c and DC-ASGD-a (whose MeanSquare is
  still tracked), under the round-robin and the random delay schedule."""
  targets = _targets(10, 4, seed=1)
  schedule = SCHEDULES[schedule_name](4, 10)
  asgd = _simulate(dist.async_sgd(0.3, num_workers=4), targets, schedule)
  for tx in (
    dist.dc_asgd(0.3, lambda_0=0.0, num_workers=4),
    dist.dc_asgd_adaptive(0.3, lambda_0=0, num_workers=4),
  ):
    out = _simulate(tx, targets, schedule)
    np.testing.assert_array_equal(out.params, asgd.params)
    np.testing.assert_array_equal(dist.centre(out.state), dist.centre(asgd.state))
    assert tree_equal(out.state.backups, asgd.state.backups)
  # DC-ASGD-a still keeps MeanSquare, the running mean of g * g over the pushes
  _, _, want_ms = _reference_server("adaptive", 0.3, targets, schedule, lam=0.0)
  out = _simulate(dist.dc_asgd_adaptive(0.3, lambda_0=0.0, num_workers=4), targets, schedule)
  np.testing.assert_allclose(out.state.mean_square, want_ms, rtol=2e-5, atol=1e-7)
  # and compensation does change the trajectory when lambda > 0
  dc = _simulate(dist.dc_asgd(0.3, lambda_0=0.5, num_workers=4), targets, schedule)
  assert not tree_allclose(dc.params, asgd.params, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
  "make",
  [
    lambda: dist.dc_asgd(0.2, lambda_0=0.5, num_workers=1),
    lambda: dist.dc_asgd_adaptive(0.2, lambda_0=2.0, num_workers=1),
    lambda: dist.async_sgd(0.2, num_workers=1),
    lambda: dist.ssgd(0.2, num_workers=1),
    lambda: dist.dc_ssgd(0.2, lambda_0=0.5, num_workers=1),
  ],
  ids=["dc_asgd", "dc_asgd_adaptive", "async_sgd", "ssgd", "dc_ssgd"],
)
def test_one_worker_is_sgd(make):
  """With p = 1 the worker always holds the server params (w - w_bak = 0)."""
  tx, sgd = make(), optax.sgd(0.2)
  targets = jnp.asarray(_targets(15, 1, seed=2))

  def run(tx, params):
    def body(carry, t):
      params, state = carry
      updates, state = tx.update(jax.vmap(_grad)(params, t), state, params)
      return (optax.apply_updates(params, updates), state), None

    return jax.lax.scan(body, (params, tx.init(params)), targets)[0][0]

  params = dist.replicate(jnp.zeros(D), 1)
  got, want = (
    jax.jit(run, static_argnums=0)(tx, params),
    jax.jit(run, static_argnums=0)(sgd, params),
  )
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_ssgd_is_one_step_on_the_mean_gradient_and_dc_ssgd_follows_supplement_h():
  p, lr, lam = 4, 0.8, 0.7
  rng = np.random.default_rng(4)
  w0 = rng.normal(size=D).astype(np.float32)
  grads = rng.normal(size=(p, D)).astype(np.float32) * np.array([[1.0], [0.2], [3.0], [0.5]])
  params = dist.replicate(jnp.asarray(w0), p)

  tx = dist.ssgd(lr, num_workers=p)
  updates, state = tx.update(jnp.asarray(grads), tx.init(params), params)
  np.testing.assert_allclose(dist.centre(state), w0 - lr * grads.mean(0), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(params + updates, np.broadcast_to(dist.centre(state), (p, D)))

  # Supplement H: sequential compensated steps of size lr / M, smallest gradient first.
  want = w0.astype(np.float64)
  for j in np.argsort((grads.astype(np.float64) ** 2).sum(1)):  # workers 1, 3, 0, 2
    g = grads[j].astype(np.float64)
    want = want - lr / p * (g + lam * g * g * (want - w0))
  tx = dist.dc_ssgd(lr, lambda_0=lam, num_workers=p)
  updates, state = tx.update(jnp.asarray(grads), tx.init(params), params)
  np.testing.assert_allclose(dist.centre(state), want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(params + updates, np.broadcast_to(want, (p, D)), rtol=1e-5, atol=1e-6)
  # ... a different order gives a different result, so the rule matters
  wrong = w0.astype(np.float64)
  for j in range(p):
    g = grads[j].astype(np.float64)
    wrong = wrong - lr / p * (g + lam * g * g * (wrong - w0))
  assert np.max(np.abs(wrong - want)) > 1e-3
  # lambda = 0 is SSGD (up to summation order)
  tx = dist.dc_ssgd(lr, lambda_0=0.0, num_workers=p)
  _, state = tx.update(jnp.asarray(grads), tx.init(params), params)
  np.testing.assert_allclose(dist.centre(state), w0 - lr * grads.mean(0), rtol=1e-6, atol=1e-6)


def test_delay_models():
  p = 5
  rr = np.asarray(dist.staleness(dist.round_robin(p, 6)))
  assert rr[0].tolist() == list(range(p))  # first round: staleness = position
  assert (rr[1:] == p - 1).all()

  key = jax.random.key(7)
  a = dist.random_delays(key, p, 400, participation=0.6, max_delay=4)
  b = dist.random_delays(key, p, 400, participation=0.6, max_delay=4)
  c = dist.random_delays(jax.random.key(8), p, 400, participation=0.6, max_delay=4)
  assert tree_equal(a, b) and not tree_equal(a, c)  # seeded and deterministic
  assert (np.sort(np.asarray(a.order), axis=1) == np.arange(p)).all()  # permutations
  stale = np.asarray(dist.staleness(a))[20:]
  pushed = stale[stale >= 0]
  # A worker pushes every 1/q rounds on average while the others push (p - 1) q per
  # round: the mean staleness stays near p - 1, with a spread round-robin never has.
  assert abs(pushed.mean() - (p - 1)) < 0.4, pushed.mean()
  assert pushed.min() == 0 and pushed.max() > 2 * (p - 1)
  idle = np.asarray(~a.active, np.int32)
  longest = max(len(run) for col in idle.T for run in "".join(map(str, col)).split("0"))
  assert longest <= 4  # max_delay caps the idle rounds
  full = np.asarray(dist.staleness(dist.random_delays(key, p, 50)))[1:]
  assert full.max() <= 2 * (p - 1)  # one push per worker and round


def _logistic_loss(w, x, y):
  return jnp.mean(jnp.logaddexp(0.0, -y * (x @ w)))


def _logistic_problems(seeds, p, rounds, batch, d=10, n=2048):
  """Well-specified logistic regression data (labels drawn from the model) per seed, and
  every push's minibatch indices (drawn with NumPy: jax.random under vmap compiles slowly)."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(seeds, n, d)).astype(np.float32)
  w_true = rng.normal(size=(seeds, d, 1)).astype(np.float32)
  prob = 1 / (1 + np.exp(-(x @ w_true)[..., 0]))
  y = np.where(rng.uniform(size=(seeds, n)) < prob, 1.0, -1.0).astype(np.float32)
  idx = rng.integers(0, n, size=(seeds, rounds, p, batch))
  return x, y, idx


def _final_losses(tx, data, p, rounds):
  def run(x, y, idx):
    grad = jax.grad(lambda w, b: _logistic_loss(w, *b))
    params = dist.replicate(jnp.zeros(x.shape[-1]), p)
    out = dist.simulate(tx, grad, params, (x[idx], y[idx]), dist.round_robin(p, rounds))
    return _logistic_loss(dist.centre(out.state), x, y)

  return np.asarray(jax.jit(jax.vmap(run))(*data))


P_CONVEX, ROUNDS_CONVEX, BATCH_CONVEX, SEEDS_CONVEX = 8, 50, 4, 24


@functools.cache
def _convex_data():
  return _logistic_problems(SEEDS_CONVEX, P_CONVEX, ROUNDS_CONVEX, BATCH_CONVEX)


@functools.cache
def _convex_losses(method: str, lambda_0: float | None = None):
  p = P_CONVEX
  tx = {
    "asgd": lambda: dist.async_sgd(0.5, num_workers=p),
    "dc_asgd": lambda: dist.dc_asgd(0.5, lambda_0=lambda_0, num_workers=p),
    "dc_asgd_adaptive": lambda: dist.dc_asgd_adaptive(0.5, num_workers=p),
  }[method]()
  return _final_losses(tx, _convex_data(), p, ROUNDS_CONVEX)


@pytest.mark.parametrize(
  "method,lambda_0",
  [
    ("dc_asgd", 0.5),
    ("dc_asgd", 1.0),
    ("dc_asgd", 2.0),
    ("dc_asgd", 4.0),
    ("dc_asgd_adaptive", None),
  ],
)
def test_delay_compensation_beats_asgd_on_a_convex_problem(method, lambda_0):
  """Well-specified logistic regression (E[g g^T] = Hessian at the optimum), p = 8
  workers with staleness 7, learning rate 0.5, batch 4 per push, 50 rounds: for
  lambda_0 in [0.5, 4] (checked at 0.5, 1, 2 and 4) DC-ASGD-c, and DC-ASGD-a with its
  default lambda_0 = 2, end at a lower full-data loss than ASGD on average over 24 seeds
  and on most seeds. (Much larger lambda_0, or learning rates near 1 with batch 1, make
  the cubic compensation term unstable, as section G warns.)"""
  asgd = _convex_losses("asgd")
  dc = _convex_losses(method, lambda_0)
  assert dc.mean() < asgd.mean() - 0.004, (dc.mean(), asgd.mean())
  assert (dc < asgd).mean() >= 0.75, (dc < asgd).mean()


def _direct_loop(tx, targets):
  """``tx.update`` called round after round with no schedule (what SSGD users write)."""
  p = targets.shape[1]

  def run(targets):
    def body(carry, t):
      params, state = carry
      updates, state = tx.update(jax.vmap(_grad)(params, t), state, params)
      return (optax.apply_updates(params, updates), state), None

    params = dist.replicate(jnp.zeros(D), p)
    return jax.lax.scan(body, (params, tx.init(params)), targets)[0]

  return jax.jit(run)(jnp.asarray(targets))


@pytest.mark.parametrize(
  "make",
  [lambda: dist.ssgd(0.3, num_workers=4), lambda: dist.dc_ssgd(0.3, lambda_0=0.5, num_workers=4)],
  ids=["ssgd", "dc_ssgd"],
)
def test_synchronous_methods_under_simulate_equal_their_update_loop(make):
  """simulate drives SSGD and DC-SSGD exactly like a plain update loop under a schedule
  where every worker is active, whatever the order (a synchronous step does not depend
  on it): equal params and state. A schedule with an idle worker raises: a synchronous
  method cannot skip one."""
  targets = _targets(8, 4, seed=5)
  params, state = _direct_loop(make(), targets)
  assert float(jnp.max(jnp.abs(params))) > 0.05  # the runs moved
  shuffled = SCHEDULES["random"](4, 8)
  everyone = shuffled._replace(active=jnp.ones_like(shuffled.active))
  for schedule in (SCHEDULES["round_robin"](4, 8), everyone):
    out = _simulate(make(), targets, schedule)
    np.testing.assert_array_equal(out.params, params)
    assert tree_equal(out.state, state)
  first_idle = int(np.flatnonzero(~np.asarray(shuffled.active).all(axis=1))[0])
  with pytest.raises(ValueError, match=rf"round {first_idle} .*cannot skip one"):
    _simulate(make(), targets, shuffled)


def test_orders_must_be_permutations():
  tx = dist.dc_asgd(0.1, num_workers=3)
  params = dist.replicate(jnp.zeros(D), 3)
  state = tx.init(params)
  grads = jnp.ones((3, D))
  with pytest.raises(
    ValueError, match=r"order must be a permutation of 0\.\.2; order is \[0, 0, 2\]"
  ):
    tx.update(grads, state, params, order=jnp.array([0, 0, 2]))
  with pytest.raises(ValueError, match=r"order must be a permutation"):
    tx.update(grads, state, params, order=np.array([1, 2, 3]))
  easgd = dist.async_easgd(0.1, num_workers=3)  # the EASGD family checks its order too
  with pytest.raises(ValueError, match=r"order must be a permutation"):
    easgd.update(grads, easgd.init(params), params, order=[2, 2, 2])
  # a valid permutation passes; inside jit a non-permutation cannot raise, and makes
  # the step's updates NaN instead (detectable, skipped by skip_nonfinite_updates)
  updates, _ = tx.update(grads, state, params, order=np.array([2, 0, 1]))
  assert bool(amj.training.all_finite(updates))
  traced = jax.jit(lambda o: tx.update(grads, state, params, order=o)[0])
  assert bool(amj.training.all_finite(traced(jnp.array([2, 0, 1]))))
  assert not bool(amj.training.all_finite(traced(jnp.array([0, 0, 0]))))
  # simulate checks every round of a concrete schedule and names the round
  good = dist.round_robin(3, 4)
  bad = good._replace(order=good.order.at[2].set(jnp.array([1, 1, 0])))
  with pytest.raises(ValueError, match=r"schedule\.order\[2\] is \[1, 1, 0\]"):
    dist.simulate(tx, _grad, params, jnp.zeros((4, 3, D)), bad)
  with pytest.raises(ValueError, match=r"shape \(rounds, p\)"):
    dist.simulate(tx, _grad, params, jnp.zeros((4, 3, D)), good._replace(active=good.active[:, :2]))
  dist.simulate(tx, _grad, params, jnp.zeros((4, 3, D)), good)


def test_wrong_shapes_raise():
  tx = dist.dc_asgd(0.1, num_workers=3)
  params = dist.replicate(jnp.zeros(D), 3)
  state = tx.init(params)
  with pytest.raises(ValueError, match="shape"):
    tx.init(jnp.zeros((2, D)))  # 2 rows for 3 workers
  with pytest.raises(ValueError, match="shape"):
    tx.update(jnp.zeros((3, D + 1)), state, params)
  with pytest.raises(ValueError, match="shape"):
    tx.update(jnp.zeros((3, D)), state, params, order=jnp.arange(4))
  with pytest.raises(ValueError, match="gradients"):
    tx.update(None, state, params)


@pytest.mark.parametrize(
  "factory,reals",
  [
    (dist.dc_asgd, {"lambda_0": 0.5}),
    (dist.dc_asgd, {"lambda_0": 0.0}),
    (dist.dc_asgd_adaptive, {"lambda_0": 0.5, "momentum": 0.9, "eps": 1e-6}),
    (dist.dc_asgd_adaptive, {"lambda_0": 0.0}),
    (dist.async_sgd, {}),
    (dist.ssgd, {}),
    (dist.dc_ssgd, {"lambda_0": 0.5}),
  ],
  ids=["dc_asgd", "dc_asgd_lambda0", "adaptive", "adaptive_lambda0", "asgd", "ssgd", "dc_ssgd"],
)
def test_hyperparameters_may_be_numpy_jax_or_injected(factory, reals):
  """NumPy and 0-d JAX scalars (num_workers too) build the method Python numbers build,
  and under optax.inject_hyperparams (num_workers static) every real hyperparameter,
  lambda_0 included, is injected and traced inside jit with the plain method's results
  (lambda_0 = 0 then runs the compensated rule: equal up to rounding)."""
  p, reals = 3, {"learning_rate": 0.3, **reals}
  targets = _targets(4, p, seed=6)
  want_params, want_state = _direct_loop(factory(**reals, num_workers=p), targets)
  for cast, count in ((np.float32, np.int64), (jnp.float32, jnp.int32)):
    tx = factory(**{k: cast(v) for k, v in reals.items()}, num_workers=count(p))
    np.testing.assert_allclose(_direct_loop(tx, targets)[0], want_params, rtol=1e-6, atol=1e-6)
  injected = optax.inject_hyperparams(factory, static_args=("num_workers",))(**reals, num_workers=p)
  params, state = _direct_loop(injected, targets)
  assert set(reals) <= set(state.hyperparams)
  np.testing.assert_allclose(params, want_params, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(dist.centre(state), dist.centre(want_state), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------- experiments


def test_dc_asgd_cifar10_configs_build_every_run_with_the_stated_settings():
  """Both worker counts list DC-ASGD-c (0.04), DC-ASGD-a (2), ASGD and SSGD; every run's
  method builds with its step schedule (0.5, / 10 after 80 and 120 epochs) without
  training, and the rounds cover 160 epochs of 128-image minibatches per worker."""
  from experiments.configs import dc_asgd_cifar10
  from experiments.runners import distributed as runner

  for p in (4, 8):
    for extra in ("", ",random"):
      config = dc_asgd_cifar10.get_config(f"p={p}{extra}")
      assert config.delay == ("random" if extra else "round_robin")
      assert (config.batch_size, config.epochs, config.crop) == (128, 160, 28)
      methods = {config.runs[n].method: config.runs[n] for n in config.run_list}
      assert sorted(methods) == ["async_sgd", "dc_asgd", "dc_asgd_adaptive", "ssgd"]
      assert methods["dc_asgd"].lambda_0 == 0.04
      assert methods["dc_asgd_adaptive"].lambda_0 == 2.0
      n_train = 40_000  # the loader's default CIFAR-10 training split
      rounds, first, second = {4: (12500, 6250, 9375), 8: (6250, 3125, 4688)}[p]
      assert runner.num_rounds(config, p, n_train) == rounds  # 160 epochs of 128 p images
      for name in config.run_list:
        spec = config.runs[name]
        assert spec.num_workers == p and spec.lr == 0.5
        lr = runner.learning_rate(config, spec, p, n_train)
        steps = [0, first - 1, first, second - 1, second, rounds]
        np.testing.assert_allclose(
          [lr(t) for t in steps], [0.5, 0.5, 0.05, 0.05, 0.005, 0.005], rtol=1e-6
        )
        tx, workers = runner.build_method(spec, lr)
        assert workers == p
        jax.tree.leaves(tx.init(dist.replicate(jnp.zeros(2), p)))
  with pytest.raises(ValueError, match="p=16"):
    dc_asgd_cifar10.get_config("p=16")


@pytest.mark.extended
def test_distributed_mnist_dc_asgd_option_runs_offline_at_smoke_size(tmp_path, monkeypatch):
  """The bundled-MNIST comparison of DC-ASGD-c / -a, ASGD and SSGD with 4 and 8 workers
  runs its smoke size without network or data files, and every run's centre variable
  gains test accuracy (at this size a stale step can still raise the loss)."""
  from experiments import train
  from experiments.configs import distributed_mnist

  monkeypatch.setenv("ALTMIN_JAX_DATA_DIR", str(tmp_path / "no-data-here"))
  config = distributed_mnist.get_config("dc_asgd,smoke")
  metrics = train.train_and_evaluate(config, str(tmp_path))
  rows = {row["run"]: row for row in metrics["summary"]}
  assert sorted(rows) == sorted(
    f"{name}_p{p}" for p in (4, 8) for name in ("dc_asgd_c", "dc_asgd_a", "asgd", "ssgd")
  )
  for name, row in rows.items():
    p = int(name.rsplit("_p", 1)[1])
    record = metrics["runs"][name][0]
    assert row["workers"] == p
    assert record["samples"][-1] == config.rounds * p * config.batch_size
    assert record["accuracy"][-1] > record["accuracy"][0] + 0.08, (name, record["accuracy"])
    assert np.isfinite(record["loss"]).all()
  assert (tmp_path / "metrics.json").exists()
