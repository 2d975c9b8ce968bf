"""EASGD family: EASGD, async EASGD, EAMSGD, DOWNPOUR, MDOWNPOUR, averaged SGD, MVASGD,
MSGD (Zhang, Choromanska, LeCun, NeurIPS 2015, and its supplement)."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tree_allclose

import altmin_jax as amj
import altmin_jax.distributed as dist

D = 4
H = np.linspace(0.5, 1.5, D)  # curvature of the per-worker quadratics


def _targets(steps, p, seed=0):
  return np.random.default_rng(seed).normal(size=(steps, p, D)).astype(np.float32)


def _run(tx, targets, order=None):
  """Every worker's gradient of 0.5 * sum(h (x - target)^2) at its own params."""
  p = targets.shape[1]

  def body(carry, t):
    params, state = carry
    grads = jnp.asarray(H, jnp.float32) * (params - t)
    updates, state = tx.update(grads, state, params, order=order)
    return (optax.apply_updates(params, updates), state), None

  params = dist.replicate(jnp.zeros(D), p)
  (params, state), _ = jax.jit(lambda t: jax.lax.scan(body, (params, tx.init(params)), t))(
    jnp.asarray(targets)
  )
  return np.asarray(params), state


# ------------------------------------------------------------ float64 references


def _sync_reference(targets, lr, alpha, tau):
  steps, p, _ = targets.shape
  x, c = np.zeros((p, D)), np.zeros(D)
  for t in range(steps):
    g = H * (x - targets[t])
    elastic = alpha if t % tau == 0 else 0.0
    beta = p * elastic
    x, c = x - lr * g - elastic * (x - c), (1 - beta) * c + beta * x.mean(0)  # eqs. 5-6
  return x, c


def _async_reference(targets, lr, alpha, tau, delta, order):
  """Algorithms 1 (delta = 0) and 2, workers in lockstep, exchanges in ``order``; returns
  the look-ahead points x + delta v (where gradients are taken) and the centre."""
  steps, p, _ = targets.shape
  x, v, c = np.zeros((p, D)), np.zeros((p, D)), np.zeros(D)
  for t in range(steps):
    pre = x.copy()  # x <- x^i
    g = H * (pre + delta * v - targets[t])  # gradient at x + delta v^i
    if t % tau == 0:
      for m in order:
        x[m] = x[m] - alpha * (pre[m] - c)
        c = c + alpha * (pre[m] - c)
    v = delta * v - lr * g
    x = x + v
  return x + delta * v, c


def _downpour_reference(targets, lr, tau, order):
  """Algorithm 3, workers in lockstep, pushes in ``order``; the communication due at the
  next clock is applied at the end (the method does it there)."""
  steps, p, _ = targets.shape
  x, v, c = np.zeros((p, D)), np.zeros((p, D)), np.zeros(D)
  for t in range(steps + 1):
    if t % tau == 0:
      for m in order:
        c = c + v[m]
        x[m] = c
        v[m] = 0.0
    if t == steps:
      break
    g = H * (x - targets[t])
    x, v = x - lr * g, v - lr * g
  return x, c


def _mdownpour_reference(targets, lr, delta, order):
  steps, p, _ = targets.shape
  x, v, c = np.zeros((p, D)), np.zeros(D), np.zeros(D)
  for t in range(steps):
    g = H * (x - targets[t])  # at the copies each worker pulled
    for m in order:
      v = delta * v - lr * g[m]
      c = c + delta * v - lr * g[m]
      x[m] = c
  return x, c


ORDER = [2, 0, 1]


def test_sync_easgd_matches_eqs_5_6():
  targets = _targets(9, 3)
  for tx, alpha, tau in (
    (dist.easgd(0.2, num_workers=3), 0.9 / 3, 1),  # default beta = 0.9
    (dist.easgd(0.2, num_workers=3, rho=0.5, communication_period=3), 0.2 * 0.5, 3),
  ):
    params, state = _run(tx, targets)
    want_x, want_c = _sync_reference(targets, 0.2, alpha, tau)
    np.testing.assert_allclose(params, want_x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dist.centre(state), want_c, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("momentum", [None, 0.8])
def test_async_easgd_and_eamsgd_match_algorithms_1_and_2(momentum):
  targets = _targets(10, 3, seed=1)
  kw = dict(num_workers=3, beta=0.6, communication_period=2)
  if momentum is None:
    tx = dist.async_easgd(0.1, **kw)
  else:
    tx = dist.eamsgd(0.1, momentum=momentum, **kw)
  params, state = _run(tx, targets, order=jnp.asarray(ORDER))
  want_y, want_c = _async_reference(targets, 0.1, 0.2, 2, momentum or 0.0, ORDER)
  np.testing.assert_allclose(params, want_y, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dist.centre(state), want_c, rtol=1e-5, atol=1e-6)
  # The exchange order matters: the default round-robin order gives another result.
  other, _ = _run(tx, targets)
  assert np.max(np.abs(other - params)) > 1e-4


def test_eamsgd_without_momentum_is_async_easgd():
  targets = _targets(8, 4, seed=2)
  kw = dict(num_workers=4, beta=0.9, communication_period=3)
  a, sa = _run(dist.async_easgd(0.1, **kw), targets)
  b, sb = _run(dist.eamsgd(0.1, momentum=0.0, **kw), targets)
  # identical up to the multiply-add contraction XLA may apply in one graph only
  np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(dist.centre(sa), dist.centre(sb), rtol=1e-6, atol=1e-7)
  c, _ = _run(dist.eamsgd(0.1, momentum=0.5, **kw), targets)
  assert np.max(np.abs(c - a)) > 1e-3


def test_downpour_and_mdownpour_match_algorithms_3_to_5():
  targets = _targets(8, 3, seed=3)
  order = jnp.asarray(ORDER)
  for steps in (7, 8):  # ending between communications and right after one
    params, state = _run(
      dist.downpour(0.1, num_workers=3, communication_period=4), targets[:steps], order
    )
    want_x, want_c = _downpour_reference(targets[:steps], 0.1, 4, ORDER)
    np.testing.assert_allclose(params, want_x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dist.centre(state), want_c, rtol=1e-5, atol=1e-6)
  params, state = _run(dist.mdownpour(0.05, num_workers=3, momentum=0.7), targets, order)
  want_x, want_c = _mdownpour_reference(targets, 0.05, 0.7, ORDER)
  np.testing.assert_allclose(params, want_x, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dist.centre(state), want_c, rtol=1e-5, atol=1e-6)


def test_downpour_period_one_and_mdownpour_without_momentum_are_async_sgd():
  targets = _targets(6, 3, seed=4)
  asgd, s0 = _run(dist.async_sgd(0.1, num_workers=3), targets)
  for tx in (
    dist.downpour(0.1, num_workers=3, communication_period=1),
    dist.mdownpour(0.1, num_workers=3, momentum=0.0),
  ):
    params, state = _run(tx, targets)
    np.testing.assert_allclose(params, asgd, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dist.centre(state), dist.centre(s0), rtol=1e-6, atol=1e-7)


# -------------------------------------------------- the quadratic-case oracles


def _lemma_7_1(t, p, eta, beta, h, sigma, x0):
  """Eqs. 15-16: mean and variance of the centre after t steps (x* = 0, all starts x0)."""
  alpha = beta / p
  a = eta * h + (p + 1) * alpha
  c2 = eta * h * p * alpha
  root = np.sqrt(a * a - 4 * c2)
  gamma, phi = 1 - (a - root) / 2, 1 - (a + root) / 2
  u0 = p * (x0 - alpha / (1 - p * alpha - phi) * x0)
  mean = gamma**t * x0 + (gamma**t - phi**t) / (gamma - phi) * alpha * u0
  gp = gamma * phi
  var = (
    p**2
    * alpha**2
    * eta**2
    / (gamma - phi) ** 2
    * (
      (gamma**2 - gamma ** (2 * t)) / (1 - gamma**2)
      + (phi**2 - phi ** (2 * t)) / (1 - phi**2)
      - 2 * (gp - gp**t) / (1 - gp)
    )
    * sigma**2
    / p
  )
  return mean, var


def _noisy_quadratic_centres(tx, p, runs, steps, h, sigma, x0, seed=0):
  """Runs ``runs`` independent 1-D problems at once (each worker's params hold one
  coordinate per run: EASGD acts coordinatewise) with gradients h x - xi, xi ~ N(0,
  sigma^2) (eq. 14, b = 0); returns the centre after every step, (steps, runs)."""

  def body(carry, key):
    params, state = carry
    grads = h * params - sigma * jax.random.normal(key, params.shape)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    return (params, state), dist.centre(state)

  params = jnp.full((p, runs), x0, jnp.float32)
  keys = jax.random.split(jax.random.key(seed), steps)
  run = jax.jit(lambda k: jax.lax.scan(body, (params, tx.init(params)), k)[1])
  return np.asarray(run(keys), np.float64)


def test_centre_mean_and_variance_match_lemma_7_1():
  """Monte Carlo over 20,000 independent runs (p = 4, eta = 0.2, beta = 0.9, h = 1,
  sigma = 2, all variables starting at 1): the centre's mean and variance after t steps
  agree with eqs. 15-16 within 4 standard errors."""
  p, eta, beta, h, sigma, x0, runs = 4, 0.2, 0.9, 1.0, 2.0, 1.0, 20_000
  centres = _noisy_quadratic_centres(
    dist.easgd(eta, num_workers=p, beta=beta), p, runs, 30, h, sigma, x0
  )
  for t in (1, 2, 3, 5, 10, 30):
    mean, var = _lemma_7_1(t, p, eta, beta, h, sigma, x0)
    sample = centres[t - 1]
    assert abs(sample.mean() - mean) <= 4 * np.sqrt(var / runs) + 1e-6, (t, sample.mean(), mean)
    assert abs(sample.var(ddof=1) - var) <= 4 * var * np.sqrt(2 / (runs - 1)) + 1e-9, (
      t,
      sample.var(ddof=1),
      var,
    )
  assert 0.05 < _lemma_7_1(30, p, eta, beta, h, sigma, x0)[1] < 1.0  # a non-trivial variance


def _eq_17_holds(eta, beta, p, h):
  return (2 - eta * h) * (2 - beta) > 2 * beta / p and (2 - eta * h) + (2 - beta) > beta / p


@pytest.mark.parametrize(
  "eta,beta",
  [(1.55, 0.9), (1.63, 0.9), (1.0, 1.25), (1.0, 1.42)],
  ids=["eta-inside", "eta-outside", "beta-inside", "beta-outside"],
)
def test_stability_condition_eq_17(eta, beta):
  """p = 4, h = 1: the boundary lies at eta h = 1.591 for beta = 0.9 and at beta = 4/3 for
  eta = 1; noise-free runs just inside converge, just outside diverge, and eq. 17's
  inequalities agree with the spectral radius of the drift matrix M."""
  p, h = 4, 1.0
  alpha = beta / p
  drift = np.full((p + 1, p + 1), 0.0)
  drift[:p, :p] = np.eye(p) * (1 - alpha - eta * h)
  drift[:p, p] = alpha
  drift[p, :p] = alpha
  drift[p, p] = 1 - p * alpha
  radius = np.max(np.abs(np.linalg.eigvals(drift)))
  inside = _eq_17_holds(eta, beta, p, h)
  assert inside == (radius < 1)
  assert abs(radius - 1) < 0.1  # close to the boundary on either side

  centres = _noisy_quadratic_centres(
    dist.easgd(eta, num_workers=p, beta=beta), p, 1, 3000, h, 0.0, 1.0
  )
  final = abs(centres[-1, 0])
  if inside:
    assert final < 1e-3, final
  else:
    assert not np.isfinite(final) or final > 1e3, final


def test_corollary_7_1_variance_shrinks_as_one_over_p():
  """p * E[(x~ - x*)^2] at stationarity, estimated from 400 runs with p = 256 workers
  (time average over the last 200 of 400 steps), is within 10% of Corollary 7.1's limit
  beta eta h / ((2 - beta)(2 - eta h)) * (2 - beta - eta h + beta eta h) /
  (beta + eta h - beta eta h) * sigma^2 / h^2."""
  p, eta, beta, h, sigma = 256, 0.1, 0.9, 1.0, 1.0
  centres = _noisy_quadratic_centres(
    dist.easgd(eta, num_workers=p, beta=beta), p, 400, 400, h, sigma, 0.0, seed=5
  )
  estimate = p * np.mean(centres[200:] ** 2)
  e = eta * h
  limit = (
    beta
    * e
    / ((2 - beta) * (2 - e))
    * (2 - beta - e + beta * e)
    / (beta + e - beta * e)
    * sigma**2
    / h**2
  )
  assert abs(estimate / limit - 1) < 0.1, (estimate, limit)


# ------------------------------------------------------------- p = 1 baselines


def _sgd_iterates(tx, steps, params0, seed=0):
  targets = jnp.asarray(np.random.default_rng(seed).normal(size=(steps, D)), jnp.float32)

  def body(carry, t):
    params, state = carry
    updates, state = tx.update(jnp.asarray(H, jnp.float32) * (params - t), state, params)
    params = optax.apply_updates(params, updates)
    return (params, state), (params, dist.centre(state) if hasattr(state, "centre") else params)

  (_, state), (params, centres) = jax.jit(
    lambda: jax.lax.scan(body, (params0, tx.init(params0)), targets)
  )()
  return np.asarray(params), np.asarray(centres), state


def test_averaged_sgd_mvasgd_and_msgd():
  x0 = jnp.ones(D)
  sgd, _, _ = _sgd_iterates(optax.sgd(0.3), 12, x0)
  # averaged SGD: SGD's iterates, centre = running mean of x_{t0+1..t+1}
  params, centres, _ = _sgd_iterates(dist.averaged_sgd(0.3, start=4), 12, x0)
  np.testing.assert_allclose(params, sgd, rtol=1e-6)
  np.testing.assert_allclose(centres[:4], sgd[:4], rtol=1e-6)
  for t in range(4, 12):
    np.testing.assert_allclose(centres[t], sgd[4 : t + 1].mean(0), rtol=1e-5, atol=1e-6)
  # MVASGD: an exponential moving average of the iterates, from x_0
  params, centres, _ = _sgd_iterates(dist.mvasgd(0.3, moving_rate=0.25), 12, x0)
  np.testing.assert_allclose(params, sgd, rtol=1e-6)
  z = np.ones(D)
  for t in range(12):
    z = 0.75 * z + 0.25 * sgd[t]
    np.testing.assert_allclose(centres[t], z, rtol=1e-5, atol=1e-6)
  # MSGD: the look-ahead params follow optax's Nesterov SGD; the centre is x = y - delta v
  nesterov, _, _ = _sgd_iterates(optax.sgd(0.1, momentum=0.9, nesterov=True), 12, x0)
  params, centres, state = _sgd_iterates(dist.msgd(0.1, momentum=0.9), 12, x0)
  np.testing.assert_allclose(params, nesterov, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    centres[-1], params[-1] - 0.9 * np.asarray(state.velocity), rtol=1e-5, atol=1e-6
  )


@pytest.mark.parametrize(
  "factory,reals",
  [
    (dist.easgd, {"beta": 0.5}),
    (dist.easgd, {"rho": 0.5}),
    (dist.async_easgd, {"rho": 0.5}),
    (dist.eamsgd, {"momentum": 0.9, "beta": 0.5}),
    (dist.downpour, {}),
    (dist.mdownpour, {"momentum": 0.5}),
    (dist.averaged_sgd, {}),
    (dist.mvasgd, {"moving_rate": 0.25}),
    (dist.msgd, {"momentum": 0.9}),
  ],
  ids=[
    "easgd",
    "easgd_rho",
    "async_easgd",
    "eamsgd",
    "downpour",
    "mdownpour",
    "asgd",
    "mvasgd",
    "msgd",
  ],
)
def test_hyperparameters_may_be_numpy_jax_or_injected(factory, reals):
  """NumPy and 0-d JAX scalars (integer counts too) build the method Python numbers
  build, and under optax.inject_hyperparams with the integer counts static every real
  hyperparameter is injected and traced inside jit with the plain method's results."""
  reals = {"learning_rate": 0.1, **reals}
  counts = {"num_workers": 3, "communication_period": 2, "start": 2}
  counts = {k: v for k, v in counts.items() if k in inspect.signature(factory).parameters}

  def run(tx):
    if "num_workers" in counts:
      params, state = _run(tx, _targets(6, 3))
    else:
      params, _, state = _sgd_iterates(tx, 6, jnp.ones(D))
    return params, dist.centre(state)

  want = run(factory(**reals, **counts))
  for cast, count in ((np.float32, np.int64), (jnp.float32, jnp.int32)):
    tx = factory(
      **{k: cast(v) for k, v in reals.items()}, **{k: count(v) for k, v in counts.items()}
    )
    assert tree_allclose(run(tx), want)
  injected = optax.inject_hyperparams(factory, static_args=tuple(counts))(**reals, **counts)
  assert set(reals) <= set(injected.init(jnp.ones((3, D))).hyperparams)
  assert tree_allclose(run(injected), want)


def test_centre_is_found_inside_wrappers():
  params = dist.replicate(jnp.arange(3.0), 2)
  tx = optax.chain(optax.clip(1.0), dist.easgd(0.1, num_workers=2))
  state = amj.training.skip_nonfinite_updates(tx).init(params)
  assert tree_allclose(dist.centre(state), jnp.arange(3.0))
  with pytest.raises(ValueError, match="centre"):
    dist.centre(optax.sgd(0.1).init(params))


# ------------------------------------------- CIFAR-10 experiment (supplement section 9)


def _position_images(n, size=32):
  """Images whose channels say where a pixel is: row * size + column, the image's index,
  and 0; a patch cut from them shows its offset, its flip and its source image."""
  rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  x = np.zeros((n, size, size, 3), np.float32)
  x[..., 0] = rows * size + cols
  x[..., 1] = np.arange(n)[:, None, None]
  return x


def test_cifar10_preprocessing_random_crops_flips_and_centre_patch():
  """Supplement 9.1: random 28 x 28 crops with horizontal flips to train (every offset
  and both flips occur, each patch is an exact slice of its own image, seeded), and the
  centre patch to evaluate."""
  from experiments.runners import distributed as runner

  x = _position_images(600).reshape(2, 300, 32, 32, 3)  # (workers, batch, H, W, C)
  crops = runner.random_crops(x, 28, np.random.default_rng(0))
  assert crops.shape == (2, 300, 28, 28, 3)
  crops, x = crops.reshape(600, 28, 28, 3), x.reshape(600, 32, 32, 3)
  offsets, flips = set(), []
  for i in range(600):
    top, left = divmod(int(crops[i, 0, 0, 0]), 32)
    flipped = crops[i, 0, 1, 0] < crops[i, 0, 0, 0]
    if flipped:
      left -= 27
    want = x[i, top : top + 28, left : left + 28]
    np.testing.assert_array_equal(crops[i], want[:, ::-1] if flipped else want)
    offsets.add((top, left))
    flips.append(flipped)
  assert offsets == {(t, u) for t in range(5) for u in range(5)}  # uniform over 5 x 5
  assert 0.4 < np.mean(flips) < 0.6
  again = runner.random_crops(x, 28, np.random.default_rng(0))
  other = runner.random_crops(x, 28, np.random.default_rng(1))
  np.testing.assert_array_equal(again, crops)
  assert not np.array_equal(other, crops)
  np.testing.assert_array_equal(runner.centre_crops(x, 28), x[:, 2:30, 2:30])
  with pytest.raises(ValueError, match="crop"):
    runner.check_crop(33, (32, 32, 3))
  with pytest.raises(ValueError, match="flattened"):
    runner.check_crop(28, (3072,))


def test_easgd_cifar10_run_trains_on_crops_and_tests_on_centre_patches(monkeypatch):
  """At smoke size on TFDS mock CIFAR-10: pixels in [0, 1], the model sees 28 x 28 x 3
  inputs in training and evaluation, and a run is reproducible from its seed."""
  from experiments.configs import easgd_cifar10
  from experiments.runners import distributed as runner

  config = easgd_cifar10.get_config("smoke")
  assert config.crop == 28 and config.normalization == "none"
  data = runner.load_data(config)
  assert data.input_shape == (32, 32, 3)
  assert data.train[0].min() >= 0.0 and data.train[0].max() <= 1.0
  seen = []
  build = runner.build_model

  def recording_build_model(config, input_shape, num_classes):
    init, apply = build(config, input_shape, num_classes)
    seen.append(("model", tuple(input_shape)))

    def recording_apply(params, x):
      seen.append(("apply", tuple(x.shape[-3:])))
      return apply(params, x)

    return init, recording_apply

  monkeypatch.setattr(runner, "build_model", recording_build_model)
  first = runner.train_one(config, data, "sgd", 0)
  assert seen and {shape for _, shape in seen} == {(28, 28, 3)}
  again = runner.train_one(config, data, "sgd", 0)
  other = runner.train_one(config, data, "sgd", 1)
  assert first["loss"] == again["loss"] and first["accuracy"] == again["accuracy"]
  assert other["loss"] != first["loss"]


def test_easgd_cifar10_configs_follow_the_paper_grid():
  """Every (p, tau) of the grid lists the runs of the supplement's Tables 1-2 with a
  learning rate from the explored set, and every run's method builds (no training)."""
  from experiments.configs import easgd_cifar10
  from experiments.runners import distributed as runner

  explored = {  # supplement Tables 1 and 2
    "async_easgd": {0.05, 0.01, 0.005},
    "eamsgd": {0.01, 0.005, 0.001},
    "downpour": {0.005, 0.001, 0.0005},
    "mdownpour": {0.00005, 0.00001, 0.000005},
    "sgd": {0.05, 0.01, 0.005},
    "averaged_sgd": {0.05, 0.01, 0.005},
    "mvasgd": {0.05, 0.01, 0.005},
    "msgd": {0.001, 0.0005, 0.0001},
  }
  assert (easgd_cifar10.WORKERS, easgd_cifar10.PERIODS) == ((4, 8, 16), (1, 4, 16, 64))
  for p in (4, 8, 16):
    for tau in (1, 4, 16, 64):
      config = easgd_cifar10.get_config(f"p={p},tau={tau}")
      assert (config.batch_size, config.crop, config.model) == (128, 28, "convnet7")
      assert list(config.run_list) == [
        f"easgd_p{p}_tau{tau}",
        f"eamsgd_p{p}_tau{tau}",
        f"downpour_p{p}_tau{tau}",
        f"mdownpour_p{p}",
        "sgd",
        "averaged_sgd",
        "mvasgd",
        "msgd",
      ]
      for name in config.run_list:
        spec = config.runs[name]
        assert spec.lr in explored[spec.method], name
        if spec.method in ("async_easgd", "eamsgd", "downpour"):
          assert spec.communication_period == tau, name
        if spec.method in ("async_easgd", "eamsgd"):
          assert spec.beta == 0.9, name
        if spec.method in ("eamsgd", "mdownpour", "msgd"):
          assert spec.momentum == 0.99, name
        tx, workers = runner.build_method(spec)
        p_worker = spec.method in ("async_easgd", "eamsgd", "downpour", "mdownpour")
        assert workers == (p if p_worker else 1), name
        params = dist.replicate(jnp.zeros(2), workers) if workers > 1 else jnp.zeros(2)
        jax.tree.leaves(tx.init(params))  # the state builds for this p
  with pytest.raises(ValueError, match="p=2"):
    easgd_cifar10.get_config("p=2")
  with pytest.raises(ValueError, match="tau=10"):
    easgd_cifar10.get_config("tau=10")
