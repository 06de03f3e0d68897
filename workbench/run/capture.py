"""`workbench capture DATA/CLASS`: photos from a camera or video into a class folder.

Frames are saved as JPEGs named `capture_0001.jpg`, `capture_0002.jpg` ..., the numbering
continuing after the highest one already there; a name that appears meanwhile is skipped,
never written over (each file is written under a temporary name and linked into place only if
the name is free). From a camera the newest frame is taken every `interval` seconds, after a
countdown; from a video file, frames `interval` seconds apart on the video's own clock.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from workbench.core.errors import WorkbenchError
from workbench.core.outputs import check_name, check_writable
from workbench.core.progress import Reporter
from workbench.data.frames import Frame, Reader, open_source, save_frame
from workbench.data.labels import label_problem

PREFIX = "capture_"
_NUMBERED = re.compile(rf"^{PREFIX}(\d+)\.jpe?g$", re.IGNORECASE)


def next_number(folder: Path) -> int:
    """One past the highest `capture_N.jpg` in the folder (1 in a new one)."""
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _NUMBERED.match(p.name))]
    return max(numbers, default=0) + 1


def save_new(frame: Frame, folder: Path, number: int) -> tuple[Path, int]:
    """Write the frame under the first free `capture_N.jpg` from `number` on; never replaces a
    file. Returns the path and the number used."""
    temporary = folder / f".{PREFIX}{os.getpid()}.partial.jpg"
    save_frame(frame.pixels, temporary)
    try:
        while True:
            target = folder / f"{PREFIX}{number:04d}.jpg"
            try:
                os.link(temporary, target)  # fails if the name is taken: nothing replaced
                return target, number
            except FileExistsError:
                number += 1
    finally:
        temporary.unlink(missing_ok=True)


def check_class_folder(folder: Path) -> None:
    """The class folder's name must make a label, and the folder must be writable."""
    name = folder.name
    if not name or name.startswith("."):
        raise WorkbenchError(f"{folder} is not a class folder name (DATA/CLASS expected)")
    problem = label_problem(name)
    if problem:
        raise WorkbenchError(f"class folder name {name!r} {problem}; choose another")
    if folder.exists() and not folder.is_dir():
        raise WorkbenchError(f"{folder} exists and is not a folder")
    check_name(folder / f"{PREFIX}0000.jpg")


def capture(
    folder: str | Path,
    source: str | Path = "0",
    count: int = 10,
    interval: float = 1.0,
    countdown: int = 3,
    reporter: Reporter | None = None,
) -> list[Path]:
    """Save `count` frames of `source` into the class folder; returns the files written.

    The folder (and its data folder) are made if missing. A source that ends or stops first
    leaves fewer files, with a warning.

        >>> import workbench as wb
        >>> [p.name for p in wb.capture("new/daisy", source="flowers/daisy", count=2, interval=0)]
        ['capture_0001.jpg', 'capture_0002.jpg']
    """
    reporter = reporter or Reporter()
    folder = Path(folder)
    check_class_folder(folder)
    opened = open_source(source)
    reader: Reader[Frame] = Reader(opened, lambda frame: frame)
    written: list[Path] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        check_writable(folder / f"{PREFIX}0000.jpg")
        number = next_number(folder)
        if opened.live:
            for left in range(countdown, 0, -1):
                reporter.info(f"capturing {count} frames into {folder} in {left}...")
                time.sleep(1.0)
        next_due = None
        with reporter.task(f"capturing into {folder.name}", count) as advance:
            while len(written) < count:
                delivery = reader.get()
                if delivery is None:
                    break
                frame = delivery.item
                if opened.live:
                    if next_due is not None and time.monotonic() < next_due:
                        time.sleep(next_due - time.monotonic())
                        continue  # take the newest frame after the wait
                    next_due = time.monotonic() + interval
                else:
                    if next_due is not None and frame.timestamp + 1e-9 < next_due:
                        continue
                    next_due = frame.timestamp + interval
                path, number = save_new(frame, folder, number)
                number += 1
                written.append(path)
                advance(1, status=path.name)
    finally:
        reader.close()
    if len(written) < count:
        reporter.warn(f"{opened.description} ended after {len(written)} of {count} frames")
    return written
