"""The layout as a map: one import package, arrows that run one way.

Every import counts, at module level, inside functions and under ``TYPE_CHECKING``: a cycle
that only the type checker sees is still a concept in the wrong place (../STYLE.md).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "gamegw"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {}
    for folder, _, files in os.walk(PACKAGE, followlinks=True):  # gamegw/server is a link
        for file in files:
            if file.endswith(".py"):
                found[module_name(Path(folder) / file)] = Path(folder) / file
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The gamegw modules that ``name`` imports (``from pkg import mod`` counts mod)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    edges = graph()
    assert len(edges) > 50 and "gamegw.server.gateway" in edges
    assert cycles(edges) == []


def test_cycle_finder_finds_one() -> None:
    """The check above can fail: a two-module cycle is found."""
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_the_gateway_never_imports_the_cli() -> None:
    edges = graph()
    wrong = {(m, t) for m, targets in edges.items() for t in targets
             if m.startswith("gamegw.server") and t.startswith("gamegw.gamectl")}
    assert wrong == set()


@pytest.mark.parametrize("folder", ["server", "gamectl", "tests", "loadtests"])
def test_nothing_imports_the_folders_by_their_own_names(folder: str) -> None:
    """``server`` and ``gamectl`` exist only as gamegw.server and gamegw.gamectl: importing
    them by the folder name would load every module twice, as two different modules."""
    wrong = []
    for path in sorted((REPO / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            wrong += [f"{path.relative_to(REPO)}: {n}" for n in names
                      if n.split(".")[0] in {"server", "gamectl", "loadtests"}]
    assert wrong == []


def test_the_links_point_at_the_folders() -> None:
    assert (PACKAGE / "server").resolve() == REPO / "server"
    assert (PACKAGE / "gamectl").resolve() == REPO / "gamectl"
