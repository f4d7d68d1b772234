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
        item = re.match(r"^(?:  |      )- ([^\s#:]+.*?)\s*(#.*)?$", line)  # conda's, or pip's (from PyPI)
        if item and not item.group(1).startswith(("python", "pip", "-e")):
            name, spec = _split(item.group(1))
            conda[name] = spec
    assert conda == pyproject
    assert project["requires-python"] == ">=3.11"
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


def _package_modules() -> dict[str, tuple]:
    """Module name -> (parsed AST, whether it is a package's __init__) for every module of optsar_nb."""
    import ast

    modules = {}
    for path in sorted((ROOT / "optsar_nb").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (ast.parse(path.read_text()), is_package)
    return modules


def _module_level_imports(name: str, tree, is_package: bool, modules) -> set[str]:
    """The modules of optsar_nb that ``name`` imports when it is imported: imports outside function
    bodies and outside ``if TYPE_CHECKING:`` blocks, relative imports resolved."""
    import ast

    found = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(ast.Module(body=child.orelse, type_ignores=[]))
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    package = package[: len(package) - child.level + 1]
                    base = ".".join(package + ([child.module] if child.module else []))
                else:
                    base = child.module or ""
                submodules = {f"{base}.{alias.name}" for alias in child.names} & set(modules)
                # ``from package import submodule`` needs the submodule, not the package's __init__
                # to have finished (it may be the one importing us: the package re-exporting names)
                found.update(submodules if len(submodules) == len(child.names) else {base, *submodules})
            visit(child)

    visit(tree)
    return {m for m in found if m in modules and m != name}


def test_the_package_import_graph_has_no_cycle():
    """Every module of optsar_nb can be imported first: module-level imports form no cycle (imports
    inside functions may defer a heavy optional dependency), and no module defines a module-level
    ``__getattr__`` to defer one of its own names."""
    import ast

    modules = _package_modules()
    graph = {name: _module_level_imports(name, tree, is_package, modules)
             for name, (tree, is_package) in modules.items()}

    cycles, done = [], set()

    def walk(name, path):
        if name in path:
            cycles.append(" -> ".join([*path[path.index(name):], name]))
            return
        if name in done:
            return
        for target in sorted(graph[name]):
            walk(target, [*path, name])
        done.add(name)

    for name in sorted(graph):
        walk(name, [])
    assert cycles == []

    getattrs = sorted(name for name, (tree, _) in modules.items()
                      if any(isinstance(node, ast.FunctionDef) and node.name == "__getattr__" for node in tree.body))
    assert getattrs == []  # no module-level __getattr__ (PEP 562) holding imports together


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
