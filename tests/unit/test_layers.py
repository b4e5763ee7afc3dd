"""Given the package laid out in floors, its imports point down only and form no cycle.

web → sessions → analytics → outputs | inference | ingest → core (docs/architecture.md). A module
may import its own floor and the floors below; the three middle floors do not import each other.
Every import counts, those inside functions and under TYPE_CHECKING too: an upward import hidden
from the interpreter is still a design that points up.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "rt-detr-service" / "rtdetr_service"
NAME = "rtdetr_service"
# Floor of each top-level folder (and of the package's own two modules).
FLOORS = {
    "": 0,  # rtdetr_service/__init__.py: the version
    "core": 0,
    "ingest": 1,
    "inference": 1,
    "outputs": 1,
    "analytics": 2,
    "sessions": 3,
    "web": 4,
    "__main__": 5,
}


def modules(root: Path) -> dict[str, Path]:
    """Dotted name of every module under root (a package named NAME)."""
    found = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join([NAME, *parts])] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports, wherever the import statement stands."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here[: len(here) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from package import module` names the module; `from module import name` the module.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out |= {t for t in targets if t == NAME or t.startswith(NAME + ".")}
    return out - {name}


def floor_of(module: str) -> tuple[str, int]:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    if top not in FLOORS:
        raise LookupError(f"{module} is on no floor: put it in one of {sorted(f for f in FLOORS if f)}")
    return top, FLOORS[top]


def violations(root: Path) -> list[str]:
    """Upward or sideways imports, modules on no floor, and import cycles, in words."""
    known = modules(root)
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    problems = []
    for name, targets in sorted(graph.items()):
        try:
            folder, floor = floor_of(name)
        except LookupError as exc:
            problems.append(str(exc))
            continue
        for target in sorted(targets):
            other, other_floor = floor_of(target)
            if other_floor > floor:
                problems.append(f"{name} imports {target}, a higher floor ({other} over {folder})")
            elif other_floor == floor and other != folder and floor != 0:
                problems.append(f"{name} imports {target}, a neighbour floor ({other} beside {folder})")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group) + [sorted(group)[0]])
    return found


def test_the_package_imports_point_down_only_and_form_no_cycle():
    assert violations(PACKAGE) == []


@pytest.fixture
def copy(tmp_path) -> Path:
    root = tmp_path / NAME
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("static", "__pycache__"))
    return root


def test_an_upward_import_is_caught_even_under_type_checking(copy):
    # Given the ground floor importing the web floor, as metrics once did the session for a type
    types = copy / "core" / "types.py"
    types.write_text(
        types.read_text() + "\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from rtdetr_service.web.app import create_app\n"
    )
    # Then the checker names it, and the cycle it closes (everything imports core.types)
    found = violations(copy)
    assert found[0] == "rtdetr_service.core.types imports rtdetr_service.web.app, a higher floor (web over core)"
    assert len(found) == 2 and found[1].startswith("import cycle:") and "rtdetr_service.core.types" in found[1]


def test_a_sideways_import_and_a_cycle_are_caught(copy):
    # Given an output reaching into inference, and two analytics modules importing each other
    (copy / "outputs" / "encode.py").write_text(
        (copy / "outputs" / "encode.py").read_text() + "\nfrom rtdetr_service.inference import worker\n"
    )
    (copy / "analytics" / "zones.py").write_text(
        (copy / "analytics" / "zones.py").read_text() + "\ndef later():\n    from . import publisher\n"
    )
    found = violations(copy)
    assert (
        "rtdetr_service.outputs.encode imports rtdetr_service.inference.worker, a neighbour floor "
        "(inference beside outputs)" in found
    )
    assert any(f.startswith("import cycle:") and "rtdetr_service.analytics.zones" in f for f in found), found


def test_a_module_outside_every_floor_is_named(copy):
    (copy / "helpers.py").write_text("X = 1\n")
    assert violations(copy) == [
        "rtdetr_service.helpers is on no floor: put it in one of "
        "['__main__', 'analytics', 'core', 'inference', 'ingest', 'outputs', 'sessions', 'web']"
    ]


def test_every_module_imports_first_in_a_fresh_interpreter():
    # The static check above sees every import statement; this one runs them, in reverse order of
    # name (so a floor's leaves come before what they import), as a user's first import would.
    import subprocess
    import sys

    names = sorted((m for m in modules(PACKAGE) if not m.endswith("__main__")), reverse=True)
    code = "import importlib\nfor name in %r:\n    importlib.import_module(name)\n" % names
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=PACKAGE.parents[1]
    )
    assert done.returncode == 0, done.stderr[-2000:]
