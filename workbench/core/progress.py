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


class Fallback(WorkbenchWarning):
    """A step could not be done as asked and a well-defined alternative was used instead: a
    decomposition that did not converge, a diverging SGD run, too few images to validate.
    The message says which; training runs list them in the report (`fallbacks`).

    Seen on aarch64, where an OpenBLAS kernel chosen for the wrong CPU made `eigh` fail: a
    fit must then give a model and say how it was made, never end the run with a traceback.
    """


def fall_back(message: str) -> None:
    """Announce a fallback (a `Fallback` warning; `fallbacks` collects them)."""
    warnings.warn(message, Fallback, stacklevel=3)


@contextmanager
def fallbacks() -> Iterator[list[str]]:
    """Collect the distinct `Fallback` messages raised inside, in order.

    Other warnings are raised again once the block ends, through the usual filters.
    Warnings from worker threads (cross-validation folds) are collected too: the warnings
    machinery is process-wide.
    """
    collected: list[str] = []
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Fallback)
            yield collected
    finally:
        for record in caught:
            if issubclass(record.category, Fallback):
                if str(record.message) not in collected:
                    collected.append(str(record.message))
            else:
                warnings.warn_explicit(
                    record.message, record.category, record.filename, record.lineno
                )


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
