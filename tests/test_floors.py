"""The house rules of imports (samtune/__init__.py draws the floors), read from the source:
samtune is a plain library; steps only call it; nothing imports bench/ or tests/."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECT = {"samtune", "steps", "pipelines", "materializers", "bench", "tests", "stacks", "run"}
FLOOR = {"config": 0, "atomic": 0, "figures": 0, "data": 1, "models": 2, "inference": 3,
         "train": 4, "eval": 4, "lifecycle": 5, "benchmark": 6, "cli": 6}


def _imports(path: Path, module_level_only: bool = False) -> list[tuple[int, str]]:
    """(line, imported module) of every import in `path`; absolute names only."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if module_level_only else ast.walk(tree)
    out: list[tuple[int, str]] = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.lineno, node.module)]
            if node.module in PROJECT:  # `from samtune import tracking` names a module
                out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def _files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def _offences(folders: list[str], allowed: set[str], module_level_only: bool = False) -> list[str]:
    bad = []
    for folder in folders:
        for path in _files(folder):
            for line, name in _imports(path, module_level_only):
                top = name.split(".")[0]
                if (top in PROJECT or top == "zenml") and top not in allowed:
                    bad.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    return bad


def test_samtune_is_a_plain_library() -> None:
    """No zenml, and none of the project's outer layers, anywhere in samtune (lazy imports too)."""
    assert _offences(["samtune"], {"samtune"}) == []


def test_steps_only_call_samtune_and_zenml() -> None:
    """Steps import samtune, zenml, their own helpers (steps.caching) and the materializers they
    name as step outputs; never pipelines, stacks, bench or tests."""
    assert _offences(["steps"], {"samtune", "zenml", "steps", "materializers"}) == []
    assert _offences(["materializers"], {"samtune", "zenml", "materializers"}) == []


@pytest.mark.parametrize("folder", ["samtune", "steps", "pipelines", "materializers", "stacks"])
def test_nothing_imports_bench_or_tests(folder: str) -> None:
    allowed = PROJECT - {"bench", "tests"}
    assert _offences([folder], allowed | {"zenml"}) == []
    run = [n for _, n in _imports(REPO / "run.py") if n.split(".")[0] in ("bench", "tests")]
    assert run == []


def test_samtune_packages_keep_their_floors() -> None:
    """At module level a samtune package imports only its own floor and those below it."""
    bad = []
    for path in _files("samtune"):
        parts = path.relative_to(REPO / "samtune").with_suffix("").parts
        if parts[0] == "__init__":
            continue
        here = FLOOR[parts[0]]
        for line, name in _imports(path, module_level_only=True):
            pieces = name.split(".")
            if pieces[0] != "samtune" or len(pieces) < 2:
                continue
            if FLOOR.get(pieces[1], 99) > here:
                bad.append(f"{path.relative_to(REPO)}:{line} ({parts[0]}, floor {here}) imports "
                           f"{name} (floor {FLOOR.get(pieces[1])})")
    assert bad == []


def test_every_package_says_what_lives_there() -> None:
    """Every samtune package's __init__ has a docstring, and every top-level module of samtune
    has a floor in FLOOR (a new package must take its place on purpose)."""
    for init in (REPO / "samtune").rglob("__init__.py"):
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init} has no docstring"
    names = {p.stem if p.is_file() else p.name for p in (REPO / "samtune").iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert names == set(FLOOR)
