"""The README stays true: its code runs and CI runs its test command."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language):
  return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_readme_python_examples_run():
  namespace: dict = {}
  for block in _blocks("python"):
    exec(compile(block, "README.md", "exec"), namespace)
  assert namespace["logits"].shape == (200, 10)
  assert int(namespace["state"].step) == 1


def test_ci_runs_the_readme_test_command():
  commands = _blocks("bash")
  assert len(commands) == 2, "README set-up is exactly two commands"
  test_command = commands[1].strip()
  assert "pytest" in test_command
  assert test_command in (ROOT / ".ci" / "run").read_text()
  assert "experiments.main" in commands[0] and "quickstart" in commands[0]
