"""pyproject.toml and environment.yml declare the same dependencies with the same constraints."""

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
