"""The options objects: every public factory states its options' keywords once, with the
options' defaults and their documentation; the objects validate what they hold."""

from __future__ import annotations

import dataclasses
import inspect

import optax
import pytest

import altmin_jax as amj
from altmin_jax import pipeline as pl
from altmin_jax.am import CodeStepOptions
from altmin_jax.core.options import documented, option_names
from altmin_jax.pipeline import PipelineOptions

CODE_FACTORIES = (
  amj.am_adam,
  amj.am_mem,
  amj.am_adam_offline,
  amj.am_mem_offline,
  amj.am_adam_rnn,
  amj.pipelined_am_adam,
  amj.pipelined_am_mem,
)
PIPELINED_FACTORIES = (
  amj.pipelined_am_adam,
  amj.pipelined_am_mem,
  amj.pipelined_surrogate_minimization,
  amj.pipelined_gradient_descent,
)


# building blocks that take some of the keywords and build no transformation of their own
BUILDING_BLOCKS = (amj.am.make_code_optimizer, amj.am.update_codes, amj.am.update_rnn_codes)


def _public_functions(module):
  fns = [getattr(module, n) for n in module.__all__ if inspect.isfunction(getattr(module, n))]
  return [fn for fn in fns if fn not in BUILDING_BLOCKS]


def _takes(factory, cls) -> bool:
  """Whether ``factory`` takes one of ``cls``'s keywords (the distributed methods' ``mesh``
  and ``axis_name`` are their own)."""
  own = set(option_names(cls)) - {"mesh", "axis_name"}
  return bool(set(inspect.signature(factory).parameters) & own)


def test_the_lists_hold_every_public_factory_that_takes_the_options():
  """A new factory taking a code-step or pipeline keyword is checked below."""
  for module in (amj, amj.am, amj.sm):
    for fn in _public_functions(module):
      assert _takes(fn, CodeStepOptions) == (fn in CODE_FACTORIES), fn.__name__
      assert _takes(fn, PipelineOptions) == (fn in PIPELINED_FACTORIES), fn.__name__


@pytest.mark.parametrize(
  "factory,cls",
  [(f, CodeStepOptions) for f in CODE_FACTORIES]
  + [(f, PipelineOptions) for f in PIPELINED_FACTORIES],
  ids=lambda v: getattr(v, "__name__", ""),
)
def test_factories_take_every_option_as_a_keyword_with_its_default_and_documentation(factory, cls):
  params = inspect.signature(factory).parameters
  doc = inspect.getdoc(factory)
  args = doc[doc.index("Args:") : doc.index("Returns:")]
  for field in dataclasses.fields(cls):
    if not field.init:
      continue
    p = params[field.name]
    assert p.kind is inspect.Parameter.KEYWORD_ONLY, (factory.__name__, field.name)
    want = inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default
    assert p.default == want, (factory.__name__, field.name)
    # the option's own text, as the class documents it, is in the factory's Args
    first_line = next(
      line.strip()
      for line in inspect.getdoc(cls).splitlines()
      if line.strip().startswith(f"{field.name}:")
    )
    assert first_line in args, (factory.__name__, field.name)


def test_code_step_options_defaults_and_derived_fields():
  opts = CodeStepOptions()
  assert (opts.code_steps, opts.code_lr, opts.code_optimizer, opts.mu) == (5, 0.01, "sgd", 0.01)
  assert opts.code_proximal is True
  assert float(opts.schedule(3)) == pytest.approx(0.01)
  assert isinstance(opts.tx, optax.GradientTransformation)
  # from a factory's locals(): its fields only, absent ones at their defaults
  got = CodeStepOptions.from_arguments({"code_steps": 2, "mu": 0.5, "weight_steps": 3})
  assert got == CodeStepOptions(code_steps=2, mu=0.5)
  with pytest.raises(dataclasses.FrozenInstanceError):
    opts.code_steps = 3


@pytest.mark.parametrize(
  "kwargs,message",
  [
    (dict(code_steps=-1), "code_steps=-1"),
    (dict(code_steps=1.5), "code_steps=1.5"),
    (dict(code_lr=0.0), "code_lr=0.0"),
    (dict(code_lr=None), "code_lr=None"),
    (dict(code_optimizer="lbfgs"), "code_optimizer='lbfgs'"),
    (dict(code_optimizer=optax.sgd(0.1)), "code_lr=0.01 conflicts"),
    (dict(mu=-1.0), "mu=-1.0"),
    (dict(mu=float("inf")), "mu=inf"),
  ],
)
def test_code_step_options_name_the_bad_value(kwargs, message):
  with pytest.raises(ValueError, match=message):
    CodeStepOptions(**kwargs)
  # every AM factory raises the same error before building anything
  net = amj.networks.mlp([4, 6, 3])
  with pytest.raises(ValueError, match=message):
    amj.am_adam(net, **kwargs)


def test_pipeline_options_defaults_and_bad_values():
  mesh = pl.pipeline_mesh(1)
  opts = PipelineOptions(mesh)
  assert (opts.num_microbatches, opts.boundary, opts.axis_name) == (1, "pad", pl.AXIS)
  assert PipelineOptions.from_arguments({"mesh": mesh, "boundary": "outside", "x": 0}) == (
    PipelineOptions(mesh, boundary="outside")
  )
  for kwargs, message in [
    (dict(mesh="mesh"), "mesh='mesh'"),
    (dict(mesh=mesh, num_microbatches=0), "num_microbatches=0"),
    (dict(mesh=mesh, boundary="inside"), "boundary='inside'"),
    (dict(mesh=mesh, axis_name="workers"), "axis_name='workers'"),
  ]:
    with pytest.raises(ValueError, match=message):
      PipelineOptions(**kwargs)
    net = amj.networks.mlp([4, 6, 6, 3])
    for factory in PIPELINED_FACTORIES:
      with pytest.raises(ValueError, match=message):
        factory(net, **kwargs)


def test_documented_replaces_one_reference_entry_and_refuses_anything_else():
  def factory(code_steps=5, code_lr=0.01, code_optimizer="sgd", mu=0.01, code_proximal=True):
    """Summary.

    Args:
      code_steps, code_lr, code_optimizer, mu, code_proximal: the code-step options
        (:class:`~altmin_jax.am.CodeStepOptions`).
    """

  doc = documented(CodeStepOptions)(factory).__doc__
  assert "      code_steps: ``K_c >= 0``" in doc and "CodeStepOptions`)" not in doc

  def extra(code_steps=5):
    """Args:
    code_steps, code_lr, code_optimizer, mu, code_proximal: the code-step options
      (:class:`~altmin_jax.am.CodeStepOptions`), and a note that would be lost.
    """

  with pytest.raises(ValueError, match="say nothing else"):
    documented(CodeStepOptions)(extra)

  def missing():
    """Args:
    x: nothing.
    """

  with pytest.raises(ValueError, match="no entry"):
    documented(PipelineOptions)(missing)
