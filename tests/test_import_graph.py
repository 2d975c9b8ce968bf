"""The package's floors: the AM and SM families are siblings that import nothing from each
other, and the floors below them (``pipeline``, ``networks``, ``core``, ``numerics``) import
no family; docstrings and comments cite papers, not files outside the repository."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "altmin_jax"
FAMILIES = ("altmin_jax.am", "altmin_jax.sm", "altmin_jax.distributed")
FLOORS = ("altmin_jax.pipeline", "altmin_jax.networks")
# package -> the packages it may not import
FORBIDDEN = {
  "am": ("altmin_jax.sm", "altmin_jax.distributed"),
  "sm": ("altmin_jax.am", "altmin_jax.distributed"),
  "pipeline": FAMILIES,
  "networks": (*FAMILIES, "altmin_jax.pipeline"),
  "core": (*FAMILIES, *FLOORS),
  "numerics": (*FAMILIES, *FLOORS),
}


def imported_modules(path: pathlib.Path, root: pathlib.Path = ROOT) -> set[str]:
  """Every module an import statement of ``path`` names (``from altmin_jax import sm``
  gives ``altmin_jax.sm``; relative imports resolved against the file's package)."""
  package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parent = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*parent, base] if base else parent)
      names.add(base)
      names.update(f"{base}.{alias.name}" for alias in node.names)
  return names


def _within(name: str, package: str) -> bool:
  return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_no_sibling_family_or_upper_floor(package):
  modules = sorted((PACKAGE / package).rglob("*.py"))
  assert modules, package
  bad = [
    f"{path.relative_to(ROOT)} imports {name}"
    for path in modules
    for name in sorted(imported_modules(path))
    if any(_within(name, forbidden) for forbidden in FORBIDDEN[package])
  ]
  assert not bad, "\n".join(bad)


def test_the_checker_sees_a_cross_family_import(tmp_path):
  """The parser finds absolute, ``from package import module`` and relative imports."""
  module = tmp_path / "altmin_jax" / "am" / "x.py"
  module.parent.mkdir(parents=True)
  module.write_text("from altmin_jax import sm\nfrom ..sm import _common\nimport altmin_jax.core\n")
  names = imported_modules(module, root=tmp_path)
  assert {"altmin_jax.sm", "altmin_jax.sm._common", "altmin_jax.core"} <= names


# A reference to a file outside the repository: the design notes (SPEC.md, "SPEC
# section 4") or the papers' folder (papers/003).
OUTSIDE = re.compile(r"\bSPEC(\.md|\s+sections?\b)|\bpapers/")
SOURCES = ("altmin_jax", "experiments", "benchmarks", "tests", "notebooks")


def test_no_reference_to_files_outside_the_repository():
  paths = [p for d in SOURCES for p in sorted((ROOT / d).rglob("*.py"))]
  paths += [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md", ROOT / "BUILD.md"]
  this = pathlib.Path(__file__).resolve()
  bad = [
    f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
    for path in paths
    if path.resolve() != this and path.exists()
    for i, line in enumerate(path.read_text().splitlines(), start=1)
    if OUTSIDE.search(line)
  ]
  assert not bad, "cite the paper instead:\n" + "\n".join(bad)
