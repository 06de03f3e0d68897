"""The package's layers import downward only, and no module imports itself back.

    cli, workbench (the API), __main__      the front ends
    run                                     the commands' work: training, evaluate, classify ...
    report, pycoral                         what a run shows; pycoral's drop-in API
    heads                                   imprinting and softmax regression
    model                                   writing and cutting model files
    extract                                 runtime, cache, embeddings
    data                                    folders, splits, decoding, labels
    tflite                                  the flatbuffer
    core                                    errors, settings, progress, safe file output

Every import counts, at module level or inside a function: an import deferred into a function
to dodge a cycle is an upward import all the same. `workbench.models` (the bundled extractor's
files) may be used from anywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"
RANKS = {
    "core": 0, "tflite": 1, "data": 2, "extract": 3, "model": 4, "heads": 5,
    "report": 6, "pycoral": 6, "run": 7, "cli": 8, "": 8, "__main__": 9,
}  # fmt: skip
ANYWHERE = ("workbench.models",)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    """The layer a module belongs to: its first name under `workbench` ("" for the package)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imported(path: Path, known: dict[str, Path]) -> set[str]:
    """The workbench modules a file imports, anywhere in it (module level or in functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("workbench"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("workbench"):
                continue
            for alias in node.names:  # `from workbench.x import y`: y may be a module
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)
    return {m for m in found if not m.startswith(ANYWHERE)}


def upward_imports(known: dict[str, Path]) -> list[str]:
    problems = []
    for module, path in known.items():
        here = layer(module)
        assert here in RANKS, f"{module} is in no layer: add {here!r} to RANKS and the docstring"
        for target in sorted(imported(path, known)):
            there = layer(target)
            if there != here and RANKS[there] >= RANKS[here]:
                problems.append(f"{module} ({here or 'workbench'}) imports {target}")
    return problems


def cycles(known: dict[str, Path]) -> list[list[str]]:
    """Import cycles between modules (each found once, as the path around it)."""
    graph = {m: sorted(t for t in imported(p, known) if t in known) for m, p in known.items()}
    found, state, stack = [], dict.fromkeys(graph, 0), []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in graph[module]:
            if state[target] == 1:
                found.append([*stack[stack.index(target) :], target])
            elif state[target] == 0:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in graph:
        if state[module] == 0:
            visit(module)
    return found


def test_every_layer_imports_only_layers_below_it() -> None:
    assert upward_imports(modules()) == []


def test_no_module_imports_itself_back() -> None:
    known = modules()
    # a package's __init__ importing its own modules is how re-exports work, not a cycle
    assert [c for c in cycles(known) if len({layer(m) for m in c}) > 1 or "" not in c] == []


def test_the_folder_listing_is_the_architecture() -> None:
    entries = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    assert len(entries) <= 12, sorted(entries)
    for name in RANKS:
        if name not in ("", "cli", "__main__"):
            init = PACKAGE / name / "__init__.py"
            assert init.exists() and ast.get_docstring(ast.parse(init.read_text())), name


@pytest.mark.parametrize(
    ("planted", "expected"),
    [
        ("from workbench.run.training import train\n", "workbench.core.planted (core) imports"),
        ("def later():\n    from workbench.heads import imprint\n", "imports workbench.heads"),
    ],
)
def test_a_planted_upward_import_is_caught(tmp_path: Path, planted: str, expected: str) -> None:
    """The check itself: an upward import, at module level or deferred, is reported."""
    known = modules()
    plant = tmp_path / "planted.py"
    plant.write_text(planted)
    known["workbench.core.planted"] = plant
    assert [p for p in upward_imports(known) if p.startswith("workbench.core.planted")]
    assert any(expected in p for p in upward_imports(known))
