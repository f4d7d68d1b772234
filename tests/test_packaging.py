"""pyproject.toml and environment.yml declare the same dependencies with the same constraints; the
package's import structure."""

from __future__ import annotations

import re

import tomllib
from conftest import ROOT

# the few packages whose conda-forge name differs from their PyPI name
PYPI_TO_CONDA: dict[str, str] = {}


def _split(requirement: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement)
    name, spec = match.group(1).lower().replace("_", "-"), match.group(2).replace(" ", "")
    return PYPI_TO_CONDA.get(name, name), spec


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        declared += extra
    pyproject = dict(_split(r) for r in declared)

    conda = {}
    text = (ROOT / "environment.yml").read_text()
    for line in text[text.index("\ndependencies:") :].splitlines():
        item = re.match(r"^  - ([^\s#:]+.*?)\s*(#.*)?$", line)
        if item and not item.group(1).startswith(("python", "pip")):
            name, spec = _split(item.group(1))
            conda[name] = spec
    assert conda == pyproject
    assert project["requires-python"] == ">=3.10"
    assert project["scripts"]["optsar"] == "optsar_nb.cli:main"


def test_the_earth_engine_engine_never_imports_the_local_engine():
    """Both engines import the shared leaves (params, method, fusion_fit, outputs), never each other."""
    import ast

    package = ROOT / "optsar_nb"
    found = []
    for path in sorted((package / "ee").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                if module.startswith("..local") or module.startswith("optsar_nb.local"):
                    found.append(f"{path.name}: from {module}")
    assert found == []


def test_the_demo_scene_is_installed_with_the_package():
    """`pip install optsar_nb` brings the demo scene the notebooks use when ``inputs`` is None:
    it lies inside the package and pyproject's package data covers every file of it."""
    from fnmatch import fnmatch

    from optsar_nb.run import DEMO_DIR

    package = ROOT / "optsar_nb"
    assert DEMO_DIR.resolve().is_relative_to(package) and (DEMO_DIR / "aoi.geojson").exists()
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["optsar_nb"]
    files = [p.relative_to(package).as_posix() for p in DEMO_DIR.rglob("*") if p.is_file()]
    assert files and all(any(fnmatch(f, pattern) for pattern in patterns) for f in files)
