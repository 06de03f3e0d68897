"""The docstrings' examples run, and every public name of `workbench` has one.

The examples train on `flowers/` in the current folder: `docs_folder` (conftest.py) makes one
of small colour images, with the tiny test extractor standing in for the bundled one.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

import workbench

# flatc output: no docstrings of ours in it.
GENERATED = {"workbench.tflite.generated.metadata_schema"}
PUBLIC = sorted(set(workbench.__all__) - {"__version__"})
# Examples that are wrong today, and public names whose own docstring still lacks one: the
# modules' owners fix them (then drop them here).
BROKEN: dict[str, str] = {}  # module -> why its examples cannot run yet
NO_EXAMPLE_YET: set[str] = set()


def examples(module_name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(module_name)
    return [t for t in doctest.DocTestFinder().find(module) if t.examples]


def modules_with_examples() -> list[str]:
    names = {"workbench"} | {
        m.name for m in pkgutil.walk_packages(workbench.__path__, "workbench.")
    }
    return sorted(name for name in names - GENERATED if examples(name))


@pytest.mark.parametrize(
    "module_name",
    [
        pytest.param(name, marks=pytest.mark.xfail(reason=BROKEN[name])) if name in BROKEN else name
        for name in modules_with_examples()
    ],
)
def test_docstring_examples_run(module_name: str, docs_folder: Path) -> None:
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    for test in examples(module_name):
        runner.run(test, out=report.append)
    assert runner.tries > 0
    assert runner.failures == 0, "".join(report)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(reason="example not written yet"))
        if n in NO_EXAMPLE_YET
        else n
        for n in PUBLIC
    ],
)
def test_every_public_name_has_an_example(name: str) -> None:
    doc = inspect.getdoc(getattr(workbench, name)) or ""
    assert ">>>" in doc, f"workbench.{name} has no example in its docstring"


def test_public_names_stay_the_api_after_every_submodule_is_imported() -> None:
    """`wb.classify` and `wb.imprint` are also submodule names: importing the submodule later
    must not replace the function (a fresh interpreter, so nothing is imported yet)."""
    script = (
        "import importlib, pkgutil, types, workbench as wb\n"
        "for m in pkgutil.walk_packages(wb.__path__, 'workbench.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(' '.join(n for n in wb.__all__ if isinstance(getattr(wb, n), types.ModuleType)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(workbench.__file__).parents[1],
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"modules where the API should be: {done.stdout}"
    assert not any(isinstance(getattr(workbench, n), types.ModuleType) for n in PUBLIC)
