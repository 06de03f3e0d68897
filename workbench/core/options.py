"""The settings of a run, each declared and validated in one place.

A setting is declared once, as a field of a frozen dataclass with its default, and checked
when the object is made; the CLI builds these objects from its flags and the Python API from
keyword arguments, so every layer below receives settings that are already valid. An invalid
value raises `OptionError`, which names the field; the CLI translates the field name into
its flag (`test_ratio` -> `--test-ratio`).

    >>> DataOptions(test_ratio=0.2).max_per_class
    200
    >>> DataOptions(seed=-1)
    Traceback (most recent call last):
    ...
    workbench.core.options.OptionError: seed must be a whole number from 0 to 4294967295, got -1
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from workbench.core.errors import WorkbenchError

MAX_SEED = 2**32 - 1


class OptionError(WorkbenchError):
    """A setting outside its range; `field` names the setting.

    >>> try:
    ...     BackpropOptions(epochs=0)
    ... except OptionError as e:
    ...     print(e.field, "|", e.requirement, "|", e.value)
    epochs | must be a whole number from 1 to 100000 | 0
    """

    def __init__(self, field: str, requirement: str, value: object) -> None:
        super().__init__(f"{field} {requirement}, got {value!r}")
        self.field = field
        self.requirement = requirement
        self.value = value


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def whole(field: str, value: object, low: int, high: int | None = None) -> None:
    """`value` must be an int in [low, high]."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and low <= value and (high is None or value <= high)  # type: ignore[operator]
    if not ok:
        span = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise OptionError(field, f"must be a whole number {span}", value)


def real(
    field: str,
    value: object,
    low: float,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """`value` must be a finite number in the given (half-)open range."""
    ok = _number(value) and math.isfinite(float(value))  # type: ignore[arg-type]
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = (v > low if low_open else v >= low) and (
            high is None or (v < high if high_open else v <= high)
        )
    if not ok:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        span = (
            f"in {left}{low:g}, {high:g}{right}"
            if high is not None
            else (f"{'above' if low_open else 'at least'} {low:g}")
        )
        raise OptionError(field, f"must be a number {span}", value)


@dataclass(frozen=True)
class DataOptions:
    """How a data folder is split: held-out share, training cap per class, shuffle seed.

    The split is reproducible from these three values; `evaluate` needs the same ones to
    score exactly the images training held out.

        >>> DataOptions(test_ratio=0.2, seed=1)
        DataOptions(test_ratio=0.2, max_per_class=200, seed=1)
        >>> try:
        ...     DataOptions(max_per_class=0)
        ... except OptionError as e:
        ...     print(e)
        max_per_class must be a whole number of at least 1, got 0
    """

    test_ratio: float = 0.25
    max_per_class: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        real("test_ratio", self.test_ratio, 0.0, 1.0, high_open=True)
        whole("max_per_class", self.max_per_class, 1)
        whole("seed", self.seed, 0, MAX_SEED)


@dataclass(frozen=True)
class ImprintOptions:
    """Imprinting: whiten when cross-validation shows it helps (True), never, or at a shrinkage.

    >>> ImprintOptions(whiten=False)
    ImprintOptions(whiten=False)
    >>> ImprintOptions(whiten=0)
    Traceback (most recent call last):
    ...
    workbench.core.options.OptionError: whiten must be a number above 0, got 0
    """

    whiten: bool | float = True

    def __post_init__(self) -> None:
        if not isinstance(self.whiten, bool):
            real("whiten", self.whiten, 0.0, low_open=True)


@dataclass(frozen=True)
class BackpropOptions:
    """Last-layer SGD: passes, step, batch, and the L2 penalty (None: by cross-validation).

    >>> BackpropOptions(epochs=50, reg=1e-4)
    BackpropOptions(epochs=50, learning_rate=0.1, batch_size=100, reg=0.0001)
    """

    epochs: int = 100
    learning_rate: float = 0.1
    batch_size: int = 100
    reg: float | None = None

    def __post_init__(self) -> None:
        whole("epochs", self.epochs, 1, 100_000)
        real("learning_rate", self.learning_rate, 0.0, 1e6, low_open=True)
        whole("batch_size", self.batch_size, 1)
        if self.reg is not None:
            real("reg", self.reg, 0.0, 1e6)


@dataclass(frozen=True)
class RunOptions:
    """Where a run reads and writes: extractor (None: the bundled one), output (None: named
    after the data folder), Edge TPU device, embedding cache (True: the default folder, False:
    none, or a folder), and `force` to accept an extractor that looks like a classifier.

        >>> run = RunOptions(output=Path("flowers.tflite"), cache=False)
        >>> run.extractor, run.output.name, run.device, run.cache, run.force
        (None, 'flowers.tflite', None, False, False)
    """

    extractor: Path | None = None
    output: Path | None = None
    device: str | None = None
    cache: bool | Path = True
    force: bool = False


def settings(*options: Any) -> dict[str, Any]:
    """The report's `settings`: every field of the given option objects, by name."""
    merged: dict[str, Any] = {}
    for option in options:
        if option is not None:
            merged.update(asdict(option))
    return merged


def field_names(option_type: type) -> list[str]:
    return [f.name for f in fields(option_type)]
