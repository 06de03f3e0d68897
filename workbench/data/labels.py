"""Labels files and the rules a class name must follow to survive one.

Coral's tools read `<id> <label>` per line; workbench writes that and reads it or plain lines.
Class folders are checked against the same rules when a data folder is scanned, so a name that
a labels file cannot keep is refused before any work.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from workbench.core.errors import WorkbenchError
from workbench.core.outputs import output_files


def label_problem(name: str) -> str | None:
    """Why `name` would not survive a labels file unchanged (None if it would).

    Readers of `<id> <label>` lines (Coral's included) strip each line and split at the
    first whitespace, so a label may not start or end with whitespace, nor hold a line
    break or another control character; spaces inside it are kept.
    """
    if not name.strip():
        return "is empty"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if name != name.strip():
        return "starts or ends with whitespace"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "holds a line break, tab or other control character"
    return None


def labels_text(names: list[str]) -> str:
    """Coral's labels format: `<id> <label>` per line."""
    for name in names:
        problem = label_problem(name)
        if problem:
            raise WorkbenchError(f"class name {name!r} {problem}; labels files cannot keep it")
    return "".join(f"{i} {name}\n" for i, name in enumerate(names))


# Labels files: ids below MAX_LABELS (as many classes as a model may have), and at most
# MAX_LABELS_BYTES in all.
MAX_LABELS = 100_000
MAX_LABELS_BYTES = 32 << 20


def read_labels(path: str | Path) -> list[str]:
    """Read `<id> <label>` lines (Coral) or plain lines (the line number is the id).

    A name given to two ids is refused: classes are matched by name (folders to labels,
    continued models' classes), so a duplicate would merge two classes or score one twice.
    """
    labels = _label_lines(Path(path))
    first_id: dict[str, int] = {}
    for i, name in enumerate(labels):
        if name in first_id:
            raise WorkbenchError(
                f"{path}: the label {name!r} is given to ids {first_id[name]} and {i}; "
                "each class needs a name of its own"
            )
        first_id[name] = i
    return labels


def _label_lines(path: Path) -> list[str]:
    """The labels in file order, by id (a gap in the ids gets the name `class_<id>`).

    At most MAX_LABELS ids and MAX_LABELS_BYTES of file: a line `99999999999 x` would
    otherwise fill memory with the names of the ids before it.
    """
    try:
        # Opened without waiting, and read only if it is a regular file: a named pipe or a
        # device given as --labels would block or never end.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
                raise WorkbenchError(f"cannot read labels file {path}: it is {kind}")
            with open(fd, "rb", closefd=False) as f:
                raw = f.read(MAX_LABELS_BYTES + 1)
        finally:
            os.close(fd)
        if len(raw) > MAX_LABELS_BYTES:
            raise WorkbenchError(
                f"labels file {path} is larger than {MAX_LABELS_BYTES >> 20} MiB; "
                "is it a labels file?"
            )
        lines = [line.strip() for line in raw.decode("utf-8").splitlines()]
    except FileNotFoundError:
        raise WorkbenchError(f"labels file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise WorkbenchError(f"cannot read labels file {path}: {e}") from None
    lines = [line for line in lines if line]
    if not lines:
        raise WorkbenchError(f"labels file is empty: {path}")
    first = lines[0].split(maxsplit=1)
    if len(first) == 2 and _is_id(first[0]):
        labels: dict[int, str] = {}
        for line in lines:
            parts = line.split(maxsplit=1)
            if len(parts) != 2 or not _is_id(parts[0]):
                raise WorkbenchError(f"{path}: expected '<id> <label>', got {line!r}")
            if int(parts[0]) >= MAX_LABELS:
                raise WorkbenchError(
                    f"{path}: label id {parts[0]} is too large (ids go up to {MAX_LABELS - 1})"
                )
            labels[int(parts[0])] = parts[1].strip()
        size = max(labels) + 1
        return [labels.get(i, f"class_{i}") for i in range(size)]
    return lines


def _is_id(text: str) -> bool:
    """ASCII digits only: `str.isdigit` also takes "²", which `int` refuses."""
    return text.isascii() and text.isdigit()


def default_labels_path(model_path: str | Path) -> Path:
    return output_files(model_path)["labels"]
