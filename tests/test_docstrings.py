"""Every docstring example in the package runs and prints what it shows, once per session:
this file is the only one that runs them (one test per module), and each example belongs to
exactly one module."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import pytest

import altmin_jax

MODULES = sorted(
  name for _, name, _ in pkgutil.walk_packages(altmin_jax.__path__, prefix="altmin_jax.")
)
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
  """A module whose source shows an example (``>>>``) runs at least one, and none fails."""
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=FLAGS)
  assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
  if ">>>" in inspect.getsource(module):
    assert result.attempted > 0, f"{name} shows examples but doctest finds none"


def test_each_example_is_found_in_one_module_only():
  """No docstring is reachable from two modules (a re-export under a second module path,
  an alias in ``sys.modules``), so the test above runs each example once."""
  finder = doctest.DocTestFinder()
  seen: dict[tuple, str] = {}
  for name in MODULES:
    for test in finder.find(importlib.import_module(name)):
      if not test.examples:
        continue
      key = (test.filename, test.lineno, test.docstring)
      assert key not in seen, f"{test.name} runs in {seen[key]} and in {name}"
      seen[key] = name
  assert seen
