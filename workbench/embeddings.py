"""Embeddings: run a model over many image files, decoding ahead of the interpreter.

Decoding and resizing happen in worker threads (Pillow releases the GIL) while the caller's
thread keeps the interpreter busy; a bounded window of pending images keeps memory flat however
many files there are. Results come back in input order and are identical to a plain
decode-then-invoke loop with the same preprocessing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workbench.images import ImageError, Preprocessing, load_input
from workbench.runtime import LoadedModel, cpu_threads

Progress = Callable[[int], None]
"""Called with the number of images just finished, so a progress bar can advance."""


@dataclass
class Outputs:
    """Model outputs for the files that decoded, and the ones that did not."""

    vectors: np.ndarray  # float32 [n_ok, d], dequantized and flattened
    kept: list[int]  # index into the requested paths for each row of `vectors`
    failures: list[tuple[Path, str]] = field(default_factory=list)


def decode_ahead(
    paths: Sequence[Path], prep: Preprocessing, workers: int | None = None
) -> Iterator[tuple[int, np.ndarray | ImageError]]:
    """Yield (index, model input or the decode error) in order, decoding in worker threads.

    At most `2 * workers + 2` images are decoded but not yet consumed, which bounds memory.
    """
    workers = workers or cpu_threads()
    depth = 2 * workers + 2
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        next_index = 0

        def submit() -> None:
            nonlocal next_index
            pending.append((next_index, pool.submit(_load_or_error, paths[next_index], prep)))
            next_index += 1

        while next_index < len(paths) and len(pending) < depth:
            submit()
        while pending:
            index, future = pending.popleft()
            if next_index < len(paths):
                submit()
            yield index, future.result()


def _load_or_error(path: Path, prep: Preprocessing) -> np.ndarray | ImageError:
    try:
        return load_input(path, prep)
    except ImageError as e:
        return e


def run_model(
    model: LoadedModel,
    paths: Sequence[Path],
    prep: Preprocessing,
    progress: Progress | None = None,
    workers: int | None = None,
) -> Outputs:
    """Run `model` on every file; undecodable files are reported, not fatal."""
    rows: list[np.ndarray] = []
    kept: list[int] = []
    failures: list[tuple[Path, str]] = []
    for index, item in decode_ahead(paths, prep, workers):
        if isinstance(item, ImageError):
            failures.append((Path(paths[index]), str(item)))
        else:
            rows.append(model.output.dequantize(model.run(item)).reshape(-1))
            kept.append(index)
        if progress is not None:
            progress(1)
    width = int(np.prod(model.output.shape[1:])) if model.output.shape else 0
    vectors = np.stack(rows) if rows else np.zeros((0, width), np.float32)
    return Outputs(vectors.astype(np.float32, copy=False), kept, failures)
