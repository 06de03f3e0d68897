"""README's Python API examples run as written.

The section's ```python blocks run in order, as one script, in a folder holding `flowers/` and
`more_flowers/` (`docs_folder` in conftest.py: small colour images, with the tiny test
extractor standing in for the bundled one).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import workbench

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Python API"
FUNCTIONS = ("imprint", "backprop", "evaluate", "classify", "embed")


def python_blocks(text: str, section: str) -> list[tuple[int, str]]:
    """(first line number, code) of each ```python block in the `## ` section named."""
    start = text.index(f"\n{section}\n") + 1
    end = text.find("\n## ", start)
    body = text[start : end if end >= 0 else len(text)]
    offset = text[:start].count("\n")
    return [
        (offset + body[: m.start(1)].count("\n") + 1, m.group(1))
        for m in re.finditer(r"^```python\n(.*?)^```$", body, re.DOTALL | re.MULTILINE)
    ]


def test_python_api_section_covers_every_call() -> None:
    code = "".join(block for _, block in python_blocks(README.read_text(), SECTION))
    for name in FUNCTIONS:
        assert f"wb.{name}(" in code, f"README's {SECTION} has no example of wb.{name}"
    assert "wb.ImprintingHead.fit(" in code and "wb.SoftmaxHead.fit(" in code


def test_python_api_examples_run(docs_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for line, block in python_blocks(README.read_text(), SECTION):
        # padded so that a traceback points at the README's own line
        exec(compile("\n" * (line - 1) + block, str(README), "exec"), namespace)
    assert namespace["wb"] is workbench
    written = {p.name for p in docs_folder.iterdir()}
    assert {"flowers_imprint.tflite", "flowers_backprop.tflite", "more.tflite"} <= written
    assert {"out.tflite", "out.txt", "softmax.tflite", "softmax.txt"} <= written
    printed = capsys.readouterr().out
    assert "['daisy', 'roses', 'tulips', 'sunflowers']" in printed
    assert "test_ratio - test_ratio must be a number in [0, 1), got 1.5" in printed
