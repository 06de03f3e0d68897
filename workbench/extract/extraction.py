"""The extraction step of a run: every image of a split through the extractor, once.

Training and held-out images are embedded in one pass (through the embedding cache), and
unreadable images are skipped with a warning; the rows that decoded are mapped back to their
files and classes. An extractor whose output is a probability distribution is refused unless
forced: training on a classifier's 1001 scores is almost never what was meant.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from workbench.core.errors import WorkbenchError
from workbench.core.progress import Reporter
from workbench.data.dataset import Split
from workbench.data.images import Preprocessing
from workbench.extract.cache import OutputCache, default_cache_dir
from workbench.extract.embeddings import run_model
from workbench.extract.runtime import LoadedModel
from workbench.tflite.graph import Graph

CacheChoice = bool | str | Path
"""True: the default cache folder; False: no cache; a path: that cache folder."""
# Output widths of ImageNet classifiers (with and without a background class).
CLASSIFIER_WIDTHS = (1000, 1001)


@dataclass
class Embedded:
    """Embeddings of a split's images, with the rows that decoded mapped back to files.

    `split` is the split the rows belong to: with unreadable images dropped before the split
    (`extract_split(resplit=...)`), not the one first asked for.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    test_files: list[Path]
    unreadable: list[tuple[Path, str]]
    seconds: float
    cache: dict[str, Any] | None = None  # hits, misses and file of the embedding cache
    split: Split | None = None


def cache_root(choice: Literal[True] | str | Path) -> Path:
    """The cache folder a choice other than False names."""
    return default_cache_dir() if choice is True else Path(choice)


def open_cache(choice: CacheChoice, model: LoadedModel, prep: Preprocessing) -> OutputCache | None:
    if choice is False:
        return None
    width = int(np.prod(model.output.shape[1:]))
    return OutputCache(cache_root(choice), model.sha256, prep.key(), width)


def run_cached(
    model: LoadedModel,
    files: list[Path],
    cache: CacheChoice,
    reporter: Reporter,
    description: str,
) -> tuple[Any, dict[str, Any] | None]:
    """Run `model` on `files` through the cache; unreadable files are warned about."""
    prep = Preprocessing.for_input(model.input)
    store = open_cache(cache, model, prep)
    with reporter.task(description, len(files)) as advance:
        out = run_model(model, files, prep, progress=advance, cache=store)
    info = None
    if store is not None:
        store.close()
        if store.problem:
            reporter.warn(f"embedding cache not used: {store.problem}")
        info = {"hits": store.hits, "misses": store.misses, "file": str(store.path)}
    for path, reason in out.failures:
        reporter.warn(f"skipped unreadable image {path}: {reason}")
    return out, info


def extract_split(
    extractor: LoadedModel,
    data_split: Split,
    reporter: Reporter,
    cache: CacheChoice,
    resplit: Callable[[set[Path]], Split] | None = None,
) -> Embedded:
    """Embed the training and held-out images in one pass; unreadable ones are skipped.

    With `resplit`, unreadable images are dropped before the split instead of after it:
    `resplit(unreadable files)` gives the split of the others, whose images not embedded
    yet (the cap lets others in) are embedded in turn, until every image of the split
    decoded. Then every count of the split is of images actually used; without it, a split
    counts an unreadable image where it was put.
    """
    start = time.perf_counter()
    files = _files_of(data_split)
    out, cache_info = run_cached(extractor, files, cache, reporter, "extracting embeddings")
    vectors = out.vectors
    row_of = {files[i]: row for row, i in enumerate(out.kept)}
    unreadable = list(out.failures)
    while resplit is not None and any(f not in row_of for f in files):
        data_split = resplit({path for path, _ in unreadable})
        files = _files_of(data_split)
        new = [f for f in files if f not in row_of]
        if not new:
            break
        more, more_info = run_cached(extractor, new, cache, reporter, "extracting refills")
        row_of.update({new[i]: len(vectors) + row for row, i in enumerate(more.kept)})
        vectors = np.concatenate([vectors, more.vectors])
        unreadable += more.failures
        cache_info = _added(cache_info, more_info)
    seconds = time.perf_counter() - start

    train_files, train_labels = data_split.files("train")
    test_labels = data_split.files("test")[1]
    labels = np.asarray(train_labels + test_labels, np.int64)
    kept = [i for i, f in enumerate(files) if f in row_of]  # in order: training files first
    is_train = np.asarray(kept, np.int64) < len(train_files)
    for class_id, name in enumerate(data_split.classes):
        if not np.any(labels[np.asarray(kept, np.int64)[is_train]] == class_id):
            raise WorkbenchError(f"class {name!r} has no readable training images")
    rows = np.asarray([row_of[files[i]] for i in kept], np.int64)
    if not np.array_equal(rows, np.arange(len(rows))):  # refilled: one copy in split order
        vectors = vectors[rows]
    # Otherwise the rows are in split order already, and both parts are views, not copies.
    train_rows = int(is_train.sum())
    return Embedded(
        train_x=vectors[:train_rows],
        train_y=labels[kept[:train_rows]],
        test_x=vectors[train_rows:],
        test_y=labels[kept[train_rows:]],
        test_files=[files[i] for i in kept[train_rows:]],
        unreadable=unreadable,
        seconds=seconds,
        cache=cache_info,
        split=data_split,
    )


def _files_of(data_split: Split) -> list[Path]:
    """The split's training files, then its held-out files (the order of the rows)."""
    return data_split.files("train")[0] + data_split.files("test")[0]


def _added(first: dict[str, Any] | None, second: dict[str, Any] | None) -> dict[str, Any] | None:
    """Cache figures of two passes as one."""
    if first is None or second is None:
        return first or second
    return {
        **first,
        "hits": first["hits"] + second["hits"],
        "misses": first["misses"] + second["misses"],
    }


def classifier_problem(graph: Graph) -> str | None:
    """Why the model looks like a classifier rather than an embedding extractor (or None)."""
    output = graph.outputs[0]
    producer = graph.producer(output)
    last = graph.op_name(graph.operators[producer]) if producer is not None else None
    width = int(np.prod(graph.shape(output)[1:])) if graph.shape(output) else 0
    if last in ("SOFTMAX", "LOGISTIC"):
        return f"its output is {last} probabilities over {width} classes"
    if width in CLASSIFIER_WIDTHS:
        return f"its output has {width} values, like an ImageNet classifier's scores"
    return None


def check_extractor(graph: Graph, path: Path, force: bool) -> None:
    """Refuse a classifier given as the extractor, unless forced."""
    problem = classifier_problem(graph)
    if problem and not force:
        raise WorkbenchError(
            f"{path} looks like a classifier, not an embedding extractor ({problem}); cut it "
            f"with `workbench extractor {path}` first, or pass --force to train on its outputs"
        )


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def extractor_info(extractor: LoadedModel, prep: Preprocessing) -> dict[str, Any]:
    """What the report and the model record about the extractor a head was trained on."""
    return {
        "extractor": str(extractor.path),
        "extractor_sha256": file_sha256(extractor.path),
        "preprocessing": prep.key(),
    }
