"""What the validated options objects share (:class:`~altmin_jax.am.CodeStepOptions`,
:class:`~altmin_jax.pipeline.PipelineOptions`): building one from a factory's keyword
arguments, and the one description of its fields written into every factory docstring
that takes them.

A public factory keeps its options as explicit keywords (``optax.inject_hyperparams``
injects keyword arguments), with the options class's defaults (``code_steps: int =
CodeStepOptions.code_steps``: a dataclass keeps each field's default as a class
attribute), and builds the object with ``Options.from_arguments(locals())``
(:func:`options_from`).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
F = TypeVar("F", bound=Callable)


def option_names(cls: type) -> tuple[str, ...]:
  """The fields of the options dataclass ``cls`` that its constructor takes."""
  return tuple(f.name for f in dataclasses.fields(cls) if f.init)


def options_from(cls: type[T], arguments: dict[str, Any]) -> T:
  """``cls`` (validated when built) from the entries of ``arguments`` (a factory's
  ``locals()``, or any keywords) that name its fields; absent fields take their defaults,
  other entries are ignored."""
  return cls(**{name: arguments[name] for name in option_names(cls) if name in arguments})


def _attributes(cls: type) -> list[str]:
  """The entries of the ``Attributes:`` section of ``cls``'s docstring, dedented."""
  lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
  start = lines.index("Attributes:") + 1
  end = next((i for i in range(start, len(lines)) if not lines[i].startswith("  ")), len(lines))
  return [line[2:] for line in lines[start:end]]


def documented(*classes: type) -> Callable[[F], F]:
  """Writes the fields of each options class into the decorated factory's docstring.

  The factory's ``Args:`` section names them in one entry, ``code_steps, code_lr, ...:
  the code-step options (:class:`~altmin_jax.am.CodeStepOptions`).`` (the fields in
  declaration order, ending with the reference to the class); that entry is replaced by
  the ``Attributes:`` entries of the class's docstring, so that ``help(factory)``
  documents every argument while the text is written once.
  """

  def decorate(fn: F) -> F:
    if fn.__doc__ is None:  # python -OO
      return fn
    lines = fn.__doc__.splitlines()
    for cls in classes:
      head = ", ".join(option_names(cls)) + ":"
      at = next((i for i, line in enumerate(lines) if line.strip().startswith(head)), None)
      if at is None:
        raise ValueError(f"{fn.__qualname__}'s docstring has no entry {head!r}")
      indent = lines[at][: len(lines[at]) - len(lines[at].lstrip())]
      end = at + 1
      while end < len(lines) and lines[end].startswith(indent + " ") and lines[end].strip():
        end += 1
      if not " ".join(lines[at:end]).endswith(f"{cls.__name__}`)."):
        raise ValueError(
          f"{fn.__qualname__}'s docstring entry {head!r} must end with a reference to "
          f"{cls.__name__} and say nothing else (it is replaced by the fields' text)"
        )
      entries = [indent + line if line else line for line in _attributes(cls)]
      lines[at:end] = entries
    fn.__doc__ = "\n".join(lines)
    return fn

  return decorate
