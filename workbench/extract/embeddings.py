"""Embeddings: run a model over many image files with every core busy and flat memory.

A CPU model runs as one single-threaded interpreter per core, each thread decoding (Pillow
releases the GIL) and invoking its own images: on 2 cores this beats one 2-thread interpreter
fed by decoder threads, whose layers wait for each other and compete with decoding. An Edge
TPU model has one interpreter per device, so its caller's thread invokes while worker threads
decode ahead. Either way a bounded number of decoded images is in flight, and the outputs are
identical to a plain decode-then-invoke loop with the same preprocessing.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workbench.data.images import ImageError, Preprocessing, load_input
from workbench.extract.cache import FileKey, OutputCache
from workbench.extract.runtime import LoadedModel, cpu_threads

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


def outputs_of(
    model: LoadedModel, paths: Sequence[Path], prep: Preprocessing, workers: int | None = None
) -> Iterator[tuple[int, np.ndarray | ImageError]]:
    """(index, dequantized flat output or decode error) for each path, in no fixed order.

    A CPU model on several cores runs as one single-threaded replica per core, each decoding
    and invoking its own images; an Edge TPU model (one interpreter per device) runs in the
    caller's thread with decoding done ahead in worker threads.
    """
    workers = workers or cpu_threads()
    if model.edgetpu or model.device or workers == 1 or len(paths) < 2 * workers:
        for index, item in decode_ahead(paths, prep, workers):
            if isinstance(item, ImageError):
                yield index, item
            else:
                yield index, _flat_output(model, item)
        return
    yield from _replicated(model.replicas(workers), paths, prep)


def _flat_output(model: LoadedModel, batch: np.ndarray) -> np.ndarray:
    return model.output.dequantize(model.run(batch)).reshape(-1).astype(np.float32)


_DONE = object()


def _replicated(
    replicas: list[LoadedModel], paths: Sequence[Path], prep: Preprocessing
) -> Iterator[tuple[int, np.ndarray | ImageError]]:
    """One thread per replica takes the next image, decodes it and runs it.

    Pillow and the interpreter release the GIL, so the threads run in parallel. The result
    queue is bounded, so a slow consumer stalls the workers instead of piling up memory, and
    each worker holds one decoded image at a time.
    """
    results: queue.Queue = queue.Queue(maxsize=8 * len(replicas))
    next_index = iter(range(len(paths)))
    claim = threading.Lock()
    stop = threading.Event()

    def work(model: LoadedModel) -> None:
        try:
            while not stop.is_set():
                with claim:
                    index = next(next_index, None)
                if index is None:
                    break
                try:
                    batch = load_input(paths[index], prep)
                except ImageError as e:
                    results.put((index, e))
                    continue
                results.put((index, _flat_output(model, batch)))
        except BaseException as e:  # handed to the consumer, which re-raises it
            results.put((-1, e))
        finally:
            results.put(_DONE)

    threads = [
        threading.Thread(target=work, args=(m,), name=f"extract-{i}", daemon=True)
        for i, m in enumerate(replicas)
    ]
    for thread in threads:
        thread.start()
    running = len(threads)
    try:
        while running:
            item = results.get()
            if item is _DONE:
                running -= 1
                continue
            index, value = item
            if index < 0:
                raise value
            yield index, value
    finally:
        stop.set()
        while running:  # unblock workers waiting to put, then let them finish
            if results.get() is _DONE:
                running -= 1
        for thread in threads:
            thread.join()


def run_model(
    model: LoadedModel,
    paths: Sequence[Path],
    prep: Preprocessing,
    progress: Progress | None = None,
    workers: int | None = None,
    cache: OutputCache | None = None,
) -> Outputs:
    """Run `model` on every file; undecodable files are reported, not fatal.

    With a `cache`, files whose outputs are cached (same model, preprocessing, path, size and
    mtime) are not decoded or run, and new outputs are added to it.
    """
    width = int(np.prod(model.output.shape[1:])) if model.output.shape else 0
    # One preallocated array, filled in place: no per-image arrays kept, no final stacking.
    vectors = np.empty((len(paths), width), np.float32)
    done = np.zeros(len(paths), bool)
    keys: list[FileKey | None] = []
    if cache is not None:
        done, keys = cache.fill(paths, vectors)
        if progress is not None and done.any():
            progress(int(done.sum()))
    todo = np.flatnonzero(~done).tolist()
    failures: list[tuple[Path, str]] = []
    fresh: list[tuple[FileKey, np.ndarray]] = []
    for position, item in outputs_of(model, [paths[i] for i in todo], prep, workers):
        index = todo[position]
        if isinstance(item, ImageError):
            failures.append((Path(paths[index]), str(item)))
        else:
            vectors[index] = item
            done[index] = True
            key = keys[index] if keys else None
            if key is not None:
                fresh.append((key, item))
        if progress is not None:
            progress(1)
    if cache is not None:
        cache.store(fresh)
    kept = np.flatnonzero(done).tolist()
    if len(kept) < len(paths):
        vectors = vectors[done]
    return Outputs(vectors, kept, failures)
