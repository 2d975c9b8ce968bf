"""Every public factory takes NumPy and JAX scalars for every numeric hyperparameter and works
under ``optax.inject_hyperparams``, with its real hyperparameters injected (traced inside
``jit``) and its integer ones (loop lengths, shapes) listed in ``static_args``.

The registry below names each factory's numeric hyperparameters with a valid value and a
second valid value that changes the step; a test fails when a public factory, or a numeric
keyword argument of one, is missing from it.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import small_mlp, teacher_classification, tree_allclose, tree_close_normwise

import altmin_jax as amj
from altmin_jax import pipeline as pl

P = 4  # workers of the distributed methods
N = 16  # samples


@dataclasses.dataclass(frozen=True)
class Spec:
  """A public factory and how to drive it.

  Attributes:
    factory: the public factory.
    problem: ``"layered"`` (``update(None, ..., batch=)``), ``"rnn"``, ``"pipeline"``,
      ``"workers"`` (stacked params and gradients) or ``"single"`` (one model, gradients).
    fixed: arguments that are not numeric hyperparameters (network, sizes, mesh, ...).
    reals: real hyperparameters -> ``(value, another value that changes the step)``.
    ints: integer hyperparameters -> value (static under ``inject_hyperparams``).
  """

  factory: Callable
  problem: str
  fixed: dict = dataclasses.field(default_factory=dict)
  reals: dict = dataclasses.field(default_factory=dict)
  ints: dict = dataclasses.field(default_factory=dict)


CODE = {"code_lr": (0.01, 0.002), "mu": (0.05, 0.5)}
SM_REALS = {"delta": (1e-2, 1e-1), "curvature_tol": (0.0, 1e-3), "loss_smoothness": (0.5, 2.0)}
SM_INTS = {"inner_steps": 3, "power_iterations": 3, "seed": 0, "curvature_refresh": 1}

SPECS = {
  # alternating minimization
  "am_adam": Spec(amj.am_adam, "layered", reals=CODE, ints={"weight_steps": 1, "code_steps": 2}),
  "am_mem": Spec(
    amj.am_mem,
    "layered",
    reals={**CODE, "forgetting": (1.0, 0.5), "ridge": (1e-6, 1e-2)},
    ints={"output_steps": 1, "sweeps": 1, "code_steps": 2},
  ),
  "am_adam_offline": Spec(
    amj.am_adam_offline,
    "layered",
    fixed={"num_samples": N},
    reals=CODE,
    ints={"weight_steps": 1, "code_steps": 2},
  ),
  "am_mem_offline": Spec(
    amj.am_mem_offline,
    "layered",
    fixed={"num_samples": N},
    reals={**CODE, "forgetting": (0.0, 0.5), "ridge": (1e-6, 1e-2)},
    ints={"output_steps": 1, "sweeps": 1, "code_steps": 2},
  ),
  "am_adam_rnn": Spec(
    amj.am_adam_rnn, "rnn", reals=CODE, ints={"weight_steps": 2, "code_steps": 2}
  ),
  "pipelined_am_adam": Spec(
    amj.pipelined_am_adam,
    "pipeline",
    reals=CODE,
    ints={"weight_steps": 1, "code_steps": 2, "num_microbatches": 2},
  ),
  "pipelined_am_mem": Spec(
    amj.pipelined_am_mem,
    "pipeline",
    reals={**CODE, "forgetting": (1.0, 0.5), "ridge": (1e-6, 1e-2)},
    ints={"output_steps": 1, "sweeps": 1, "code_steps": 2, "num_microbatches": 2},
  ),
  "taylor_admm": Spec(
    amj.taylor_admm,
    "layered_relu",
    fixed={"num_samples": N},
    reals={"beta": (1.0, 2.0), "gamma": (10.0, 3.0), "ridge": (1e-6, 1e-2)},
    ints={"warm_start": 0, "output_steps": 2},
  ),
  # surrogate minimization and its baselines
  "surrogate_minimization": Spec(
    amj.surrogate_minimization, "layered", reals=SM_REALS, ints=SM_INTS
  ),
  "pipelined_surrogate_minimization": Spec(
    amj.pipelined_surrogate_minimization,
    "pipeline",
    reals=SM_REALS,
    ints={**SM_INTS, "num_microbatches": 2},
  ),
  "gd_armijo": Spec(amj.gd_armijo, "layered"),
  "pipelined_gradient_descent": Spec(
    amj.pipelined_gradient_descent,
    "pipeline",
    reals={"learning_rate": (0.1, 0.3)},
    ints={"num_microbatches": 2},
  ),
  "cg_block": Spec(
    amj.cg_block,
    "layered",
    reals={"damping": (0.1, 1.0), "curvature_tol": (0.0, 1e-3)},
    ints={"inner_steps": 3},
  ),
  "sso": Spec(
    amj.sso,
    "layered",
    reals={"eta": (2.0, 0.5), "loss_smoothness": (0.5, 2.0)},
    ints={"inner_steps": 3},
  ),
  "ddg": Spec(
    amj.ddg,
    "layered",
    reals={"learning_rate": (0.1, 0.3), "momentum": (0.0, 0.9)},
    ints={"num_modules": 2},
  ),
  # DC-ASGD family
  "dc_asgd": Spec(
    amj.dc_asgd,
    "workers",
    reals={"learning_rate": (0.1, 0.3), "lambda_0": (0.04, 1.0)},
    ints={"num_workers": P},
  ),
  "dc_asgd_adaptive": Spec(
    amj.dc_asgd_adaptive,
    "workers",
    reals={
      "learning_rate": (0.1, 0.3),
      "lambda_0": (2.0, 0.5),
      "momentum": (0.95, 0.5),
      "eps": (1e-7, 1e-2),
    },
    ints={"num_workers": P},
  ),
  "async_sgd": Spec(
    amj.async_sgd, "workers", reals={"learning_rate": (0.1, 0.3)}, ints={"num_workers": P}
  ),
  "ssgd": Spec(amj.ssgd, "workers", reals={"learning_rate": (0.1, 0.3)}, ints={"num_workers": P}),
  "dc_ssgd": Spec(
    amj.dc_ssgd,
    "workers",
    reals={"learning_rate": (0.1, 0.3), "lambda_0": (0.04, 1.0)},
    ints={"num_workers": P},
  ),
  # EASGD family
  "easgd": Spec(
    amj.easgd,
    "workers",
    reals={"learning_rate": (0.1, 0.3), "beta": (0.9, 0.3)},
    ints={"num_workers": P, "communication_period": 1},
  ),
  "easgd_rho": Spec(
    amj.easgd,
    "workers",
    reals={"learning_rate": (0.1, 0.3), "rho": (0.5, 2.0)},
    ints={"num_workers": P, "communication_period": 1},
  ),
  "async_easgd": Spec(
    amj.async_easgd,
    "workers",
    reals={"learning_rate": (0.1, 0.3), "beta": (0.9, 0.3)},
    ints={"num_workers": P, "communication_period": 1},
  ),
  "async_easgd_rho": Spec(
    amj.async_easgd,
    "workers",
    reals={"rho": (0.5, 2.0), "learning_rate": (0.1, 0.3)},
    ints={"num_workers": P, "communication_period": 1},
  ),
  "eamsgd_beta": Spec(
    amj.eamsgd,
    "workers",
    reals={"beta": (0.9, 0.3), "learning_rate": (0.1, 0.3)},
    ints={"num_workers": P, "communication_period": 1},
  ),
  "eamsgd": Spec(
    amj.eamsgd,
    "workers",
    reals={"learning_rate": (0.1, 0.3), "momentum": (0.9, 0.5), "rho": (0.5, 2.0)},
    ints={"num_workers": P, "communication_period": 1},
  ),
  "downpour": Spec(
    amj.downpour,
    "workers",
    reals={"learning_rate": (0.1, 0.3)},
    ints={"num_workers": P, "communication_period": 1},
  ),
  "mdownpour": Spec(
    amj.mdownpour,
    "workers",
    reals={"learning_rate": (0.1, 0.3), "momentum": (0.9, 0.5)},
    ints={"num_workers": P},
  ),
  "averaged_sgd": Spec(
    amj.averaged_sgd, "single", reals={"learning_rate": (0.1, 0.3)}, ints={"start": 0}
  ),
  "mvasgd": Spec(
    amj.mvasgd, "single", reals={"learning_rate": (0.1, 0.3), "moving_rate": (1e-3, 0.5)}
  ),
  "msgd": Spec(amj.msgd, "single", reals={"learning_rate": (0.1, 0.3), "momentum": (0.9, 0.5)}),
}

# What a factory takes besides its hyperparameters (never injected).
STRUCTURAL = {"net", "rnn", "loss", "mesh", "axis_name", "boundary", "num_samples", "num_workers"}
NON_NUMERIC = {
  "weight_optimizer",
  "output_optimizer",
  "code_optimizer",
  "code_proximal",
  "record_codes",
  "solver",
  "majorizer",
  "curvature",
  "line_search",
  "step_search",
  "cg_warm_start",
  "vmap_stages",
  "module_sizes",
  "weight_inputs",
}


def _public_factories():
  names = [n for n in amj.__all__ if n != "mu_schedule"]
  return {n: getattr(amj, n) for n in names if inspect.isfunction(getattr(amj, n))}


def test_registry_covers_every_public_factory_and_numeric_argument():
  covered = {s.factory for s in SPECS.values()}
  for name, factory in _public_factories().items():
    assert factory in covered, f"{name} is missing from SPECS"
    numeric = set()
    for spec in (s for s in SPECS.values() if s.factory is factory):
      numeric |= set(spec.reals) | set(spec.ints)
    for arg in inspect.signature(factory).parameters:
      if arg not in STRUCTURAL | NON_NUMERIC:
        assert arg in numeric, f"{name}({arg}=...) is not exercised"


# ------------------------------------------------------------------ problems


def _problem(spec: Spec):
  """``(fixed args, params, step(tx, state, params) -> (updates, state))``."""
  x, y = teacher_classification(n=N)
  if spec.problem in ("layered", "layered_relu", "pipeline"):
    relu = spec.problem == "layered_relu"
    net = small_mlp(sizes=(6, 8, 8, 3), activation=jax.nn.relu if relu else jnp.tanh)
    params = net.init(jax.random.key(0))
    fixed = {"net": net}
    if spec.problem == "pipeline":
      mesh = pl.pipeline_mesh(1)
      fixed["mesh"] = mesh
      params = pl.stack_params(net, params, mesh=mesh)
      x, y = pl.replicate_on(mesh, (x, y))

    def step(tx, state, params):
      return tx.update(None, state, params, batch=(x, y))

    return fixed, params, step
  if spec.problem == "rnn":
    rnn = amj.networks.elman_rnn(4, seq_len=3, input_size=2, num_classes=3)
    xs = x.reshape(N, 3, 2)

    def step(tx, state, params):
      return tx.update(None, state, params, batch=(xs, y))

    return {"rnn": rnn}, rnn.init(jax.random.key(0)), step
  one = {"kernel": 0.3 * jax.random.normal(jax.random.key(0), (6, 3)), "bias": jnp.zeros(3)}

  def loss(p, x, y):
    return jnp.mean(amj.losses.softmax_cross_entropy(x @ p["kernel"] + p["bias"], y))

  if spec.problem == "workers":
    params = amj.distributed.replicate(one, P)
    xs, ys = x.reshape(P, N // P, -1), y.reshape(P, N // P)

    def step(tx, state, params):
      return tx.update(jax.vmap(jax.grad(loss))(params, xs, ys), state, params)

    return {}, params, step

  def step(tx, state, params):
    return tx.update(jax.grad(loss)(params, x, y), state, params)

  return {}, one, step


def _two_steps(tx, step, params, state=None):
  """Two updates from ``params`` (elastic methods exchange nothing on the first, when
  every worker equals the centre): the second updates and the state."""
  state = tx.init(params) if state is None else state
  updates, state = step(tx, state, params)
  return step(tx, state, optax.apply_updates(params, updates))


def _run(factory, fixed, params, step, **kwargs):
  tx = factory(**fixed, **kwargs)
  return jax.jit(lambda p: _two_steps(tx, step, p))(params)


CASES = sorted(SPECS)
# The pipelined factories and the larger models: `extended` (CI runs them, .ci/run).
EXTENDED = {
  "pipelined_am_adam",
  "pipelined_am_mem",
  "pipelined_surrogate_minimization",
  "pipelined_gradient_descent",
  "am_adam_rnn",
  "am_adam_offline",
  "am_mem_offline",
}
PARAMS = [
  pytest.param(n, id=n, marks=[pytest.mark.extended] if n in EXTENDED else []) for n in CASES
]


@pytest.mark.parametrize("name", PARAMS)
def test_numpy_and_jax_scalars_give_the_python_result(name):
  spec = SPECS[name]
  fixed, params, step = _problem(spec)
  fixed = {**fixed, **spec.fixed}
  python = {**{k: v for k, (v, _) in spec.reals.items()}, **spec.ints}
  want = _run(spec.factory, fixed, params, step, **python)
  # Every hyperparameter converted at once (one compilation per kind of scalar, not one per
  # argument and kind): a rejected or misread argument still fails the comparison.
  for kind, convert in (
    ("numpy scalar", lambda arg, v: (np.float32 if arg in spec.reals else np.int64)(v)),
    ("jax 0-d array", lambda arg, v: jnp.asarray(v)),
    ("numpy 0-d array", lambda arg, v: np.asarray(v)),
  ):
    converted = {arg: convert(arg, v) for arg, v in python.items()}
    got = _run(spec.factory, fixed, params, step, **converted)
    # the updates (a JAX-array momentum of ddg keeps a buffer: another state structure)
    assert tree_allclose(got[0], want[0], rtol=1e-5, atol=1e-6), (name, kind)


@pytest.mark.parametrize("name", PARAMS)
def test_works_under_inject_hyperparams(name):
  spec = SPECS[name]
  fixed, params, step = _problem(spec)
  fixed = {**fixed, **spec.fixed}
  reals = {k: v for k, (v, _) in spec.reals.items()}
  static = tuple(set(fixed) | set(spec.ints) | ({"loss"} if "loss" in _args(spec) else set()))
  injected = optax.inject_hyperparams(spec.factory, static_args=static)(
    **fixed, **reals, **spec.ints
  )
  state = injected.init(params)
  traces = []

  @jax.jit
  def traced(s, p):
    traces.append(None)  # runs once per trace
    return _two_steps(injected, step, p, s)[0]

  for k in spec.reals:
    assert k in state.hyperparams, f"{name}: {k} is not injected"
  got = traced(state, params)
  want = _run(spec.factory, fixed, params, step, **reals, **spec.ints)
  # traced hyperparameters are not constant-folded: rounding differs. ADMM's nearly singular
  # solves (ridge 1e-6; their eigendecomposition drops directions below a rounding cutoff)
  # amplify it: their error is relative to the whole update (3.8 at most here), not to each
  # entry (the hidden layers' entries, about 1e-5, are that noise), so they are compared
  # normwise at 1e-3 of the largest entry (measured: 1e-4).
  close = (
    (lambda a, b: tree_close_normwise(a, b, rtol=1e-3))
    if name == "taylor_admm"
    else (lambda a, b: tree_allclose(a, b, rtol=1e-4, atol=1e-5))
  )
  assert close(got, want[0]), name
  if spec.reals:
    # a changed hyperparameter takes effect without retracing
    arg, (_, changed) = next(iter(spec.reals.items()))
    state.hyperparams[arg] = jnp.full_like(state.hyperparams[arg], changed)
    got2 = traced(state, params)
    want2 = _run(spec.factory, fixed, params, step, **{**reals, arg: changed}, **spec.ints)
    assert close(got2, want2[0]), (name, arg)
    assert not tree_allclose(got2, got, rtol=1e-6, atol=0), (name, arg, "had no effect")
    assert len(traces) == 1, f"{name}: retraced when a hyperparameter changed"


def _args(spec: Spec) -> set:
  return set(inspect.signature(spec.factory).parameters)
