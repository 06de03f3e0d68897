"""`workbench imprint`: weight imprinting from a folder, optionally continuing from a base model."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from workbench.calibration import value_range
from workbench.coral_format import imprinting_layout, read_imprinting_model, training_state_text
from workbench.dataset import DEFAULT_MAX_PER_CLASS, DEFAULT_SEED, DEFAULT_TEST_RATIO
from workbench.errors import WorkbenchError
from workbench.export import (
    default_labels_path,
    read_labels,
    set_workbench_metadata,
    workbench_metadata,
)
from workbench.imprint import (
    ImprintedClasses,
    ImprintingHead,
    calibrate,
    imprint,
    l2_normalize,
    leave_one_out_cosines,
    train_imprinting,
    widened,
)
from workbench.pipeline import (
    CacheChoice,
    TrainingResult,
    base_report,
    default_output,
    finish_training,
    start_training,
)
from workbench.progress import Reporter
from workbench.surgery import cut_at
from workbench.tflite.graph import Graph
from workbench.tflite.heads import Transform, append_imprinting_tail
from workbench.tflite.quant import representable
from workbench.whitening import Whitening

# Metadata entry holding the whitening's statistics, so a model can be extended later.
WHITENING_METADATA = "workbench_whitening"


def imprint_folder(
    data_dir: str | Path,
    extractor: str | Path | None = None,
    output: str | Path | None = None,
    test_ratio: float = DEFAULT_TEST_RATIO,
    max_per_class: int = DEFAULT_MAX_PER_CLASS,
    seed: int = DEFAULT_SEED,
    whiten: bool | float = True,
    device: str | None = None,
    reporter: Reporter | None = None,
    cache: CacheChoice = True,
    base: str | Path | None = None,
    keep_classes: bool = False,
    base_labels: str | Path | None = None,
) -> TrainingResult:
    """Weight-imprint a classifier for the class folders in `data_dir` and evaluate it.

    With `whiten` (the default) the embeddings are whitened with their within-class
    covariance before imprinting; without it the head is Coral's plain imprinting.
    With `base` (an imprinting model) training continues from it: see `imprint_onto_base`.
    """
    reporter = reporter or Reporter()
    output = Path(output) if output is not None else default_output(data_dir, "imprint")
    if base is not None:
        if extractor is not None:
            raise WorkbenchError("--base brings its own extractor; leave out --extractor")
        return imprint_onto_base(
            data_dir, base, output, keep_classes, base_labels,
            test_ratio, max_per_class, seed, device, reporter, cache,
        )  # fmt: skip
    run = start_training(
        data_dir, extractor, output, test_ratio, max_per_class, seed, device, reporter,
        cache=cache,
    )  # fmt: skip
    dataset, data_split, graph, embedded = run.dataset, run.split, run.graph, run.embedded

    start = time.perf_counter()
    head: ImprintingHead = train_imprinting(
        embedded.train_x, embedded.train_y, len(data_split.classes), whiten=whiten, seed=seed
    )
    train_seconds = time.perf_counter() - start
    tail = append_imprinting_tail(
        graph,
        head.classes.weights,
        head.scale_factor,
        head.cosine_range,
        transform=whitening_layer(head),
    )
    info = run.extractor_info
    graph.set_description(training_state_text(head.classes.norms, head.classes.trainable))
    if head.whitening is not None:
        graph.set_metadata(WHITENING_METADATA, head.whitening.to_bytes())
    set_workbench_metadata(
        graph,
        {
            "trainer": "imprint",
            "classes": list(data_split.classes),
            "embedding_tensor": run.embedding_tensor,
            "l2norm_tensor": tail.l2norm_output,
            **info,
        },
    )
    settings = {
        "test_ratio": test_ratio,
        "max_per_class": max_per_class,
        "seed": seed,
        "whiten": whiten,
    }
    report = base_report("imprint", data_dir, data_split, dataset, embedded, settings, info)
    report["timing"]["train_s"] = round(train_seconds, 3)
    report["head"] = head.summary()
    return finish_training(
        graph,
        output,
        list(data_split.classes),
        embedded,
        head.scores(embedded.test_x),
        report,
        device,
        reporter,
    )


def whitening_layer(
    head: ImprintingHead, also: tuple[float, float] | None = None
) -> Transform | None:
    """The whitening as an exported layer, over the head's held-out value range.

    `also` widens the range to cover another one (a base model's, whose images are not here).
    """
    if head.whitening is None or head.value_range is None:
        return None
    return Transform(head.whitening.matrix, head.whitening.bias, widened(head.value_range, also))


def imprint_onto_base(
    data_dir: str | Path,
    base: str | Path,
    output: Path,
    keep_classes: bool,
    base_labels: str | Path | None,
    test_ratio: float,
    max_per_class: int,
    seed: int,
    device: str | None,
    reporter: Reporter,
    cache: CacheChoice = True,
) -> TrainingResult:
    """Continue imprinting from an imprinting model (workbench's or Coral's).

    Only the images in `data_dir` are extracted. With `keep_classes` the base's classes stay
    (ids first, labels merged by name): a folder named like a base class trained by imprinting
    adds images to it, one named like any other base class is refused. Without it the new
    model has only the folder's classes.

    A workbench model made with whitening carries the whitening's statistics: its original
    extractor is reused, the whitening is refitted on the pooled statistics of the base's
    images and the new ones, and the base's class vectors are carried into the new whitened
    space. Any other base (Coral's, or `--no-whiten`) is reused up to and including its L2Norm.
    """
    base_graph = Graph.load(base)
    base_model = read_imprinting_model(base_graph)
    known = read_labels(base_labels or default_labels_path(base))
    if len(known) != base_model.classes.num_classes:
        raise WorkbenchError(
            f"the base model has {base_model.classes.num_classes} classes but its labels file "
            f"has {len(known)}; pass the right one with --base-labels"
        )
    old_whitening = stored_whitening(base_graph)
    raw_tensor = (workbench_metadata(base_graph) or {}).get("embedding_tensor")
    rewhiten = old_whitening is not None and isinstance(raw_tensor, int)
    extractor = cut_at(base_graph, raw_tensor, flatten=False) if rewhiten else base_model.extractor
    run = start_training(
        data_dir, base, output, test_ratio, max_per_class, seed, device, reporter,
        extractor_graph=extractor, cache=cache,
    )  # fmt: skip
    names = list(run.split.classes)
    state = None
    merged = names
    if keep_classes:
        state = base_model.classes
        frozen = [n for n in names if n in known and not state.trainable[known.index(n)]]
        if frozen:
            raise WorkbenchError(
                f"{', '.join(frozen)}: base-model classes not trained by imprinting can be kept "
                "but not retrained; rename or remove those folders"
            )
        merged = known + [n for n in names if n not in known]
    to_merged = np.asarray([merged.index(n) for n in names], np.int64)
    embedded = run.embedded
    train_y = to_merged[embedded.train_y]

    start = time.perf_counter()
    if state is None:  # a fresh head on the base's extractor
        head = train_imprinting(embedded.train_x, train_y, len(merged), whiten=rewhiten, seed=seed)
    else:
        head = continue_imprinting(
            embedded.train_x, embedded.train_y, train_y, merged, state, old_whitening, rewhiten
        )
        head.cosine_range = widened(head.cosine_range, base_model.cosine_range)
    train_seconds = time.perf_counter() - start

    graph = extractor
    classes = head.classes
    if rewhiten and head.whitening is not None:
        layout = imprinting_layout(base_graph)
        assert layout is not None
        old_whitened = int(base_graph.operators[layout.l2norm_op].inputs[0])
        old_range = _layer_range(base_graph, old_whitened) if state is not None else None
        tail = append_imprinting_tail(
            graph, classes.weights, head.scale_factor, head.cosine_range,
            transform=whitening_layer(head, also=old_range),
        )  # fmt: skip
        graph.set_metadata(WHITENING_METADATA, head.whitening.to_bytes())
    elif rewhiten:  # the fresh head chose not to whiten: plain imprinting on raw embeddings
        tail = append_imprinting_tail(graph, classes.weights, head.scale_factor, head.cosine_range)
    else:
        tail = append_imprinting_tail(
            graph, classes.weights, head.scale_factor, head.cosine_range,
            embedding=base_model.embedding,
        )  # fmt: skip
    graph.set_description(training_state_text(classes.norms, classes.trainable))
    set_workbench_metadata(
        graph,
        {
            "trainer": "imprint",
            "classes": merged,
            "base": str(base),
            "l2norm_tensor": tail.l2norm_output,
            **({"embedding_tensor": run.embedding_tensor} if rewhiten else {}),
            **run.extractor_info,
        },
    )
    settings = {
        "test_ratio": test_ratio,
        "max_per_class": max_per_class,
        "seed": seed,
        "base": str(base),
        "keep_classes": keep_classes,
        "rewhitened": rewhiten,
    }
    report = base_report(
        "imprint", data_dir, run.split, run.dataset, embedded, settings, run.extractor_info
    )
    report["timing"]["train_s"] = round(train_seconds, 3)
    report["extracted_images"] = len(embedded.train_y) + len(embedded.test_y)
    report["base_classes"] = known if keep_classes else []
    report["head"] = head.summary()
    evaluated = replace(embedded, test_y=to_merged[embedded.test_y])
    return finish_training(
        graph, output, merged, evaluated, head.scores(embedded.test_x), report, device, reporter
    )


def continue_imprinting(
    train_x: np.ndarray,
    folder_y: np.ndarray,
    train_y: np.ndarray,
    merged: list[str],
    state: ImprintedClasses,
    old_whitening: Whitening | None,
    rewhiten: bool,
) -> ImprintingHead:
    """Imprint new images onto a base's classes (kept), calibrated by leave-one-out.

    With the base's whitening statistics the whitening is refitted on old and new images
    pooled, and the base's class vectors are carried into the new whitened space. The base's
    images are not here, so the held-out statistics are the new images' leave-one-out
    cosines: exact for the class sums; the pooled whitening includes them, a small optimism
    when the base brought many images.
    """
    whitening = None
    if rewhiten:
        assert old_whitening is not None
        whitening = old_whitening.pooled_with(train_x, folder_y)
        carried = l2_normalize(old_whitening.carry(state.sums, whitening))
        state = replace(state, sums=carried * state.norms[:, None])
    features = train_x if whitening is None else whitening.apply(train_x)
    classes = imprint(features, train_y, len(merged), base=state)
    loo, own = leave_one_out_cosines(classes, features, train_y)
    scale, window = calibrate(loo, train_y, own, len(merged))
    values = None
    if whitening is not None:
        values = value_range((float(features.min()), float(features.max())), None)
    return ImprintingHead(classes, scale, window, whitening, values)


def _layer_range(graph: Graph, tensor: int) -> tuple[float, float] | None:
    """The real-valued range an 8-bit tensor can hold, or None for a float one."""
    quant = graph.quant(tensor)
    if quant is None or graph.dtype(tensor) not in (np.uint8, np.int8):
        return None
    return representable(quant, graph.dtype(tensor))


def stored_whitening(graph: Graph) -> Whitening | None:
    """The whitening statistics a workbench imprinting model carries, if any (and readable)."""
    data = graph.metadata(WHITENING_METADATA)
    if not data:
        return None
    try:
        return Whitening.from_bytes(data)
    except (ValueError, KeyError, OSError, EOFError):
        return None
