"""How long-running steps report progress and warnings without knowing who is listening.

The Python API stays quiet (warnings go through the `warnings` module); the CLI passes a
reporter that draws rich progress bars and prints warnings on stderr.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class WorkbenchWarning(UserWarning):
    """Something was skipped (an unreadable image, a non-image file) but the run went on."""


class Reporter:
    """Silent reporter: no bars; warnings through `warnings.warn`."""

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        """A unit of long work; the yielded `advance(n, status=None)` moves it on by n items.

        `status` is a short line on how it goes (e.g. an epoch's loss and accuracy).
        """
        yield lambda n, status=None: None

    def warn(self, message: str) -> None:
        warnings.warn(message, WorkbenchWarning, stacklevel=3)

    def info(self, message: str) -> None:
        """A note for humans (e.g. which model was used); silent here."""
