"""The one training runner: split -> embed -> fit head -> export -> evaluate -> write.

Both trainers run through `train`: a `Trainer` says which extractor to run and how to fit its
head on the embeddings; everything else (the split, checking the outputs before any work,
extraction through the cache, evaluating the exported model itself, writing all outputs as
one unit) is the same for both and lives here.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from threadpoolctl import threadpool_limits

from workbench.core import __version__
from workbench.core.memory import keep_large_blocks_returnable, trim
from workbench.core.options import DataOptions, RunOptions, settings
from workbench.core.outputs import (
    StagedFiles,
    check_cache_folder,
    check_outputs,
    output_files,
    remove_stale,
)
from workbench.core.progress import Reporter, fallbacks
from workbench.data.dataset import Dataset, Split, fingerprints, prepare_split, split
from workbench.data.images import Preprocessing
from workbench.data.labels import labels_text
from workbench.extract.extraction import Embedded, check_extractor, extract_split, extractor_info
from workbench.extract.runtime import LoadedModel, load_model
from workbench.model.export import model_bytes, record_training_files
from workbench.report.html import rendered
from workbench.report.record import Report
from workbench.run.evaluate import Embeddings, evaluate_export
from workbench.tflite.graph import Graph, read_model_bytes
from workbench.tflite.heads import embedding_output

# A run exits 1 when its exported model loses held-out images to its float head beyond
# chance: a one-sided exact sign test on the images only one of them gets right, at 1%.
EXPORT_LOSS_P = 0.01


class Head(Protocol):
    """What the runner needs of a fitted head (ImprintingHead, SoftmaxHead)."""

    def scores(self, embeddings: np.ndarray) -> np.ndarray: ...
    def summary(self) -> dict[str, Any]: ...


@dataclass
class Source:
    """The extractor a run uses: a file, or a graph built from one (cut from a base model)."""

    path: Path
    graph: Graph | None = None
    inputs: tuple[Path, ...] = ()  # other files the run reads, never to be written over


@dataclass
class Prepared:
    """A run after its extraction step: what a trainer fits on."""

    dataset: Dataset
    split: Split
    graph: Graph
    model: LoadedModel
    embedding_tensor: int
    embedded: Embedded
    info: dict[str, Any]  # extractor path, hash and preprocessing
    data: DataOptions  # how the split was made
    started: float = 0.0  # time.perf_counter() when the run began, for its total time


@dataclass
class Fitted:
    """A trainer's result: the head, the model's classes, and what the report adds."""

    head: Head
    classes: list[str]  # the model's classes, in output order
    folder_to_model: np.ndarray  # class id in the data folder -> class id in the model
    metadata: dict[str, Any]  # for the model's workbench entry (trainer, tensors, base)
    report: dict[str, Any] = field(default_factory=dict)  # extra report fields
    inherited: np.ndarray | None = None  # training-file fingerprints of a base model


class Trainer(Protocol):
    """A way of making a head: imprinting, continued imprinting, backprop.

    `min_classes`: class folders the data folder needs (1 when a base model brings others).
    """

    name: str
    min_classes: int

    def source(self, run: RunOptions) -> Source: ...
    def fit(self, prepared: Prepared, reporter: Reporter) -> Fitted: ...
    def append(self, fitted: Fitted, graph: Graph) -> dict[str, Any]: ...
    def settings(self) -> dict[str, Any]: ...


@dataclass
class TrainingResult:
    """What a training run wrote, and its report.

    >>> import workbench as wb
    >>> result = wb.imprint("flowers/", output="flowers.tflite")
    >>> result.model.name, result.labels.name, result.report_path.name, result.html_path.name
    ('flowers.tflite', 'flowers.txt', 'flowers.report.json', 'flowers.report.html')
    >>> result.report.trainer
    'imprint'
    """

    model: Path
    labels: Path
    report_path: Path
    html_path: Path
    report: Report


def default_output(data_dir: str | Path, trainer: str) -> Path:
    """`./<data dir name>_<trainer>.tflite` in the current folder."""
    name = Path(data_dir).resolve().name or "model"
    return Path(f"{name}_{trainer}.tflite")


def prepare(
    data_dir: str | Path,
    source: Source,
    data: DataOptions,
    run: RunOptions,
    output: Path | None,
    reporter: Reporter,
    min_classes: int = 2,
) -> Prepared:
    """Split the folder, check the outputs before any work, embed every image once."""
    started = time.perf_counter()
    check_cache_folder(run.cache, [data_dir])
    dataset, data_split = prepare_split(data_dir, data, reporter, min_classes)
    if output is not None:
        targets = output_files(output)
        inputs = [source.path, *source.inputs]
        check_outputs(targets, inputs=inputs, data_dirs=[data_dir])
        remove_stale(targets.values())
    if source.graph is None:  # read and checked once, for both the editor and the runtime
        content = read_model_bytes(source.path)
        graph = Graph.from_bytes(content, str(source.path))
    else:
        graph = source.graph
        content = graph.to_bytes()
    model = load_model(source.path, device=run.device, content=content)
    if source.graph is None:
        check_extractor(graph, source.path, run.force)
    tensor, _ = embedding_output(graph)
    embedded = extract_split(
        model, data_split, reporter, run.cache,
        resplit=lambda unreadable: split(dataset, data, exclude=unreadable),
    )  # fmt: skip
    if embedded.split is not None:  # unreadable images dropped before the split
        data_split = embedded.split
    model.release_replicas()  # their memory, and what decoding freed, is better spent on fitting
    trim()
    info = extractor_info(model, Preprocessing.for_input(model.input))
    return Prepared(dataset, data_split, graph, model, tensor, embedded, info, data, started)


def train(
    data_dir: str | Path,
    trainer: Trainer,
    data: DataOptions = DataOptions(),
    run: RunOptions = RunOptions(),
    reporter: Reporter | None = None,
) -> TrainingResult:
    """Train `trainer`'s head on the folder, export it, evaluate the export, write it all."""
    reporter = reporter or Reporter()
    keep_large_blocks_returnable()
    output = run.output or default_output(data_dir, trainer.name)
    source = trainer.source(run)
    prepared = prepare(data_dir, source, data, run, output, reporter, trainer.min_classes)
    start = time.perf_counter()
    # One BLAS thread: the fits' matrix work is small enough that threads gain little, and
    # OpenBLAS threads that spin on a busy machine made a 0.4 s decomposition take 5 s.
    # The training files' fingerprints (file reads and hashing, which release the GIL) are
    # taken beside the fit, in the gaps it leaves.
    stop = threading.Event()  # a failed or interrupted fit does not wait for the reading
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(1) as side:
        found = side.submit(fingerprints, prepared.split.files("train")[0], stop)
        try:
            with fallbacks() as used:
                fitted = trainer.fit(prepared, reporter)
        except BaseException:
            stop.set()
            raise
        train_seconds = time.perf_counter() - start
        training_files = found.result()
    for message in used:
        reporter.warn(message)
    graph = prepared.graph  # the run's own copy: the head is appended to it in place
    metadata = {
        **fitted.metadata, **trainer.append(fitted, graph), **prepared.info,
        "trainer": trainer.name, "embedding_tensor": prepared.embedding_tensor,
        "split": settings(data), "report": output_files(output)["report"].name,
        "extractor_outputs": outputs_key(prepared),
    }  # fmt: skip
    record_training_files(graph, training_files, fitted.inherited)
    report = new_report(data_dir, trainer, prepared, fitted, data)
    report.fallbacks = used
    report.timing["train_s"] = round(train_seconds, 3)
    return write_run(graph, output, fitted, metadata, prepared, report, run, reporter)


def outputs_key(prepared: Prepared) -> dict[str, Any]:
    """What finds this run's extractor outputs in the embedding cache, for `evaluate`."""
    return {
        "sha256": prepared.model.sha256,
        "preprocessing": prepared.info["preprocessing"],
        "width": int(prepared.embedded.train_x.shape[1]),
    }


def new_report(
    data_dir: str | Path, trainer: Trainer, prepared: Prepared, fitted: Fitted, data: DataOptions
) -> Report:
    """The report's fields known before evaluation."""
    embedded = prepared.embedded
    counts: dict[str, Any] = prepared.split.counts()
    counts["unreadable"] = len(embedded.unreadable)
    return Report(
        workbench_version=__version__,
        trainer=trainer.name,
        data_dir=str(data_dir),
        classes=list(prepared.split.classes),
        settings={**settings(data), **trainer.settings()},
        split=prepared.split.to_json(),
        counts=counts,
        skipped_files=[str(p) for p in prepared.dataset.skipped],
        unreadable=[{"file": str(p), "error": e} for p, e in embedded.unreadable],
        timing={"extract_s": round(embedded.seconds, 3)},
        cache=embedded.cache,
        head=fitted.head.summary(),
        **prepared.info,
        **fitted.report,
    )


def write_run(
    graph: Graph,
    output: Path,
    fitted: Fitted,
    metadata: dict[str, Any],
    prepared: Prepared,
    report: Report,
    run: RunOptions,
    reporter: Reporter,
) -> TrainingResult:
    """Stage model and labels, evaluate the staged model itself, then commit all outputs."""
    files = output_files(output)
    embedded = prepared.embedded
    test_y = fitted.folder_to_model[embedded.test_y]
    float_scores = fitted.head.scores(embedded.test_x)
    with StagedFiles() as staged:
        start = time.perf_counter()
        data = model_bytes(graph, fitted.classes, metadata)
        staged_model = staged.stage(files["model"], data)
        staged.stage(files["labels"], labels_text(fitted.classes).encode())
        report.timing["export_s"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        exported = load_model(staged_model, device=run.device)
        known = Embeddings(
            embedded.test_x, embedded.test_files, prepared.embedding_tensor, prepared.data.seed
        )
        evaluation, method = evaluate_export(
            exported, graph, known, test_y, fitted.classes, fitted.classes,
            reporter, float_top1=np.argmax(float_scores, axis=1),
        )  # fmt: skip
        for key, value in evaluation.fields().items():
            setattr(report, key, value)
        report.evaluation = method
        report.classes = list(fitted.classes)
        report.float_top1_accuracy = float(np.mean(np.argmax(float_scores, axis=1) == test_y))
        report.export_ok = check_export(report.export_vs_float, reporter)
        report.timing["evaluate_s"] = round(time.perf_counter() - start, 3)
        report.model, report.labels = str(files["model"]), str(files["labels"])
        report_json, report_html = rendered(report, prepared.started)  # times its own writing
        staged.stage(files["report"], report_json)
        staged.stage(files["html"], report_html)
        staged.commit()
    return TrainingResult(files["model"], files["labels"], files["report"], files["html"], report)


def loss_p_value(float_only_right: int, export_only_right: int) -> float:
    """How likely the export loses at least this many images to chance (one-sided sign test).

    Among the images only one of the two models gets right, an export that costs nothing is
    as likely to be the one as the float head: the float head's count is then
    Binomial(n, 1/2). Returns P(X >= float_only_right), 1.0 when the export is not behind.
    """
    n = float_only_right + export_only_right
    if float_only_right <= export_only_right:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(float_only_right, n + 1))
    return tail / 2**n  # exact: Python divides integers of any size to the nearest float


def check_export(export_vs_float: dict[str, Any] | None, reporter: Reporter) -> bool:
    """False (with a warning) when the 8-bit model is right on fewer held-out images than
    its float head by more than chance explains (p < EXPORT_LOSS_P).

    Agreement is not the test: two classes a hair apart in the float head are tied in 8 bits
    and the tie goes either way, which costs nothing on average. A loss is what the user
    deploys and would not have had: the exported layers' 8-bit ranges then do not fit unseen
    images. `export_vs_float` gets its p-value added.
    """
    if export_vs_float is None:
        return True
    lost, won = export_vs_float["float_only_right"], export_vs_float["export_only_right"]
    p_value = loss_p_value(lost, won)
    export_vs_float["p_value"] = p_value
    if p_value >= EXPORT_LOSS_P:
        return True
    reporter.warn(
        f"the exported 8-bit model is wrong on {lost} held-out images its float head gets "
        f"right, and right on only {won} it gets wrong (a loss chance explains with p = "
        f"{p_value:.2g}): its 8-bit ranges do not fit these images; the model was written, "
        "but check the report before using it"
    )
    return False
