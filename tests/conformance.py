"""The conformance suite's registry: every method of the library, as a test case.

``test_conformance.py`` runs each case through the same checks (no recompilation,
unknown extra args, array-only state with an orbax round trip, hyperparameter and
batch validation, non-finite batches, dtypes, composition, descent). This module holds
only the machinery: :class:`Problem`, :class:`Case` and ``CASES``, collected from the
``CASES`` list of every module ``tests/conformance_<family>.py`` (``conformance_am.py``,
``conformance_sm.py``, ...). A method is added by appending a :class:`Case` to its
family's list; a new family by adding a module.

Each case's problem is built once per session and dtype (:meth:`Case.problem`) and shared
by every test that reads it (``test_conformance.py``, ``test_bad_input.py``): a
:class:`Problem` is frozen, its params and batches are immutable jax arrays, its
transformation is a pair of pure functions and ``extra_args`` returns a new dict per call,
so no test can change what another one sees.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class Problem:
  """One instantiated method on a small problem.

  Attributes:
    tx: the transformation under test.
    params: initial params.
    extra_args: ``extra_args(step) -> dict`` of keyword args for ``update`` at a step.
    loss: ``loss(params, extra_args) -> scalar`` the method should decrease.
    bad_extra_args: extra args holding a batch of the wrong feature size.
    nonfinite_extra_args: extra args holding a NaN in the batch.
    uses_grads: whether ``update`` consumes gradients (else ``None`` is passed).
    num_classes: for a method whose ``update`` reads ``batch=(x, y)`` of a classifier:
      its number of classes (labels are ids in ``[0, num_classes)``); the bad-input
      suite (``test_bad_input.py``) builds bad labels from it.
    num_workers: for the distributed methods: p, the workers of the leading axis of
      ``params`` (1 for the single-worker baselines, whose params have no worker axis).
    skips_workers: whether the method can skip a worker (``active`` extra arg).
  """

  tx: optax.GradientTransformationExtraArgs
  params: Any
  extra_args: Callable[[int], dict]
  loss: Callable[[Any, dict], jax.Array]
  bad_extra_args: dict | None = None
  nonfinite_extra_args: dict | None = None
  uses_grads: bool = False
  num_classes: int | None = None
  num_workers: int | None = None
  skips_workers: bool = False

  @property
  def reads_batch(self) -> bool:
    """Whether ``update`` itself reads ``batch=(x, y)`` (and checks it)."""
    return self.bad_extra_args is not None

  def with_batch(self, x, y, step: int = 0) -> dict:
    """The extra args of ``step`` with the batch replaced by ``(x, y)``."""
    return {**self.extra_args(step), "batch": (x, y)}

  def grads(self, params, extra_args):
    if not self.uses_grads:
      return None
    return jax.grad(self.loss)(params, extra_args)


@dataclasses.dataclass(frozen=True)
class Case:
  """A method in the suite.

  Attributes:
    name: test id.
    make: ``make(dtype) -> Problem``.
    bad_hyperparams: ``(thunk, text)`` pairs: calling ``thunk()`` must raise
      ``ValueError`` whose message contains ``text`` (the offending value).
    descent_steps: steps after which ``loss`` must have dropped by ``descent_factor``.
    descent_factor: required ratio ``loss_after / loss_before`` upper bound.
  """

  name: str
  make: Callable[[Any], Problem]
  bad_hyperparams: Sequence[tuple[Callable[[], Any], str]] = ()
  descent_steps: int = 30
  descent_factor: float = 0.8

  def problem(self, dtype) -> Problem:
    """``make(dtype)``, built on the first call of the session and shared afterwards."""
    key = (self.name, jnp.dtype(dtype).name)
    if key not in _PROBLEMS:
      _PROBLEMS[key] = self.make(dtype)
    return _PROBLEMS[key]


_PROBLEMS: dict[tuple[str, str], Problem] = {}


def _family_cases() -> list[Case]:
  """The ``CASES`` of every ``tests/conformance_<family>.py``, in file-name order."""
  import importlib
  import pathlib

  found = []
  for path in sorted(pathlib.Path(__file__).parent.glob("conformance_*.py")):
    found.extend(importlib.import_module(path.stem).CASES)
  return found


CASES: list[Case] = _family_cases()

# The cases of the quick run are one or more per family on the smallest problems; these,
# the pipelined steps and the larger models, are `extended` (CI runs them, .ci/run).
EXTENDED = {
  "pipelined_am_adam",
  "pipelined_am_mem",
  "pipelined_sm",
  "pipelined_gd_armijo",
  "am_adam_lenet5",
  "am_adam_rnn",
  "am_adam_offline",
  "am_mem_offline",
  "am_adam_binary_tanh",
  "am_adam_record_codes",
  "am_adam_adam_codes_no_prox_long_loops",
  "am_adam_nesterov_codes",
  "am_mem_exact",
  "sm_armijo",
  "dc_asgd_adaptive",
}


def case_params() -> list:
  """``CASES`` as pytest params named after the cases, the :data:`EXTENDED` ones marked
  ``extended``."""
  import pytest

  return [
    pytest.param(c, id=c.name, marks=[pytest.mark.extended] if c.name in EXTENDED else [])
    for c in CASES
  ]
