"""Label files (pycoral.utils.dataset)."""

from __future__ import annotations

import re
from pathlib import Path

# pycoral splits a line at the first run of colons or whitespace: `0 cat`, `0:cat`, `0  cat`.
_ID_AND_LABEL = re.compile(r"[:\s]+")


def read_label_file(file_path: str | Path) -> dict[int, str]:
    """{id: label} from `<id> <label>` / `<id>:<label>` lines, or plain lines.

    Read line by line as pycoral does: a line that starts with a number and a separator gives
    that id; any other line takes its line number (counted from 0, blank lines included) as
    its id, so ids match pycoral's for the same file. Two deliberate differences: a plain line
    keeps its whole text (pycoral keeps only its first word, turning `great white shark` into
    `great`), and blank lines are skipped instead of becoming empty labels. A missing file
    raises FileNotFoundError, as pycoral's `open` does.
    """
    with open(file_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    labels: dict[int, str] = {}
    for row, line in enumerate(lines):
        text = line.strip()
        if not text:
            continue
        parts = _ID_AND_LABEL.split(text, maxsplit=1)
        if len(parts) == 2 and parts[0].isdigit():
            labels[int(parts[0])] = parts[1].strip()
        else:
            labels[row] = text
    return labels
