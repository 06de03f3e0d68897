"""What native (C and C++) libraries write straight to the process's stderr, kept off it.

The TFLite runtime logs "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." and its
error reporter's lines, OpenCV its probes of cameras and codecs, all on file descriptor 2;
workbench keeps stderr to progress, warnings and one-line errors, and folds what matters of
theirs into its own messages.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


class NativeLog:
    """What the runtime's C++ code wrote to stderr while it was redirected."""

    def __init__(self) -> None:
        self.text = ""

    def errors(self) -> list[str]:
        return [
            line.split(":", 1)[1].strip()
            for line in self.text.splitlines()
            if line.startswith("ERROR:") and line.split(":", 1)[1].strip()
        ]


@contextmanager
def native_stderr() -> Iterator[NativeLog]:
    """Redirect file descriptor 2 for the block: what native code writes there is kept in
    the yielded log instead (its `text`, and the runtime's `errors`)."""
    log = NativeLog()
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield log
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield log
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            log.text = capture.read().decode(errors="replace")
