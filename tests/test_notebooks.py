"""Notebooks: each generated .ipynb matches its jupytext source (nbmake executes them)."""

from __future__ import annotations

import pathlib

import jupytext
import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("*.py"))


@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_ipynb_is_generated_from_its_source(source):
  ipynb = source.with_suffix(".ipynb")
  assert ipynb.exists(), f"run: jupytext --to ipynb {source}"
  from_source = [(c.cell_type, c.source) for c in jupytext.read(source).cells]
  from_ipynb = [(c.cell_type, c.source) for c in jupytext.read(ipynb).cells]
  assert from_source == from_ipynb, f"regenerate: jupytext --to ipynb {source}"
