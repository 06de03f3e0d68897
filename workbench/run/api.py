"""The Python API: one call per command, for notebooks, scripts and apps.

Settings are keywords named like the fields of `workbench.core.options` (`test_ratio`,
`max_per_class`, `seed`, `extractor`, `output`, `device`, `cache`, `force`, and each
trainer's own); they are checked when the options are built, so a bad value fails before any
work with an `OptionError` naming it. Progress and warnings go to a `Reporter` (silent by
default: warnings through the `warnings` module).

    >>> import workbench as wb
    >>> result = wb.imprint("flowers/", max_per_class=20)
    >>> result.model.name, result.report.classes
    ('flowers_imprint.tflite', ['daisy', 'roses', 'tulips'])
    >>> wb.imprint("flowers/", test_ratio=1.5)
    Traceback (most recent call last):
    ...
    workbench.core.options.OptionError: test_ratio must be a number in [0, 1), got 1.5

(The examples here run as doctests on a small `flowers/` folder; see tests/test_docs.py.)
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from workbench.core.options import (
    BackpropOptions,
    DataOptions,
    ImprintOptions,
    OptionError,
    RunOptions,
)
from workbench.core.progress import Reporter
from workbench.data.dataset import Split, prepare_split, split
from workbench.extract.extraction import extract_split
from workbench.extract.runtime import load_model
from workbench.report.record import Report

# Not imported lazily: a submodule first imported after `workbench/__init__` has bound the
# API's `classify` would replace that attribute with the module `workbench.run.classify`.
from workbench.run.capture import capture as capture  # re-exported: wb.capture
from workbench.run.classify import classify_images
from workbench.run.continuing import ContinueImprinting
from workbench.run.evaluate import evaluate_folder
from workbench.run.live import live as live  # re-exported: wb.live
from workbench.run.trainers import Backprop, Imprint, bundled_source
from workbench.run.training import TrainingResult, train


def split_settings(settings: dict[str, Any], *kinds: type) -> list[Any]:
    """Build one options object per kind from the keywords naming its fields."""
    unknown = set(settings) - {f.name for kind in kinds for f in fields(kind)}
    if unknown:
        raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
    built = []
    for kind in kinds:
        names = {f.name for f in fields(kind)}
        values = {k: v for k, v in settings.items() if k in names}
        if kind is RunOptions:
            for key in ("extractor", "output"):
                if values.get(key) is not None:
                    values[key] = Path(values[key])
        built.append(kind(**values))
    return built


def imprint(
    data_dir: str | Path,
    *,
    base: str | Path | None = None,
    keep_classes: bool = False,
    base_labels: str | Path | None = None,
    reporter: Reporter | None = None,
    **settings: Any,
) -> TrainingResult:
    """Weight-imprint a classifier for the class folders in `data_dir`, export and evaluate it.

    `whiten` (True: when cross-validation shows it helps; False: Coral's plain head) plus the
    data and run settings. With `base` (an imprinting model) training continues from it: its
    classes stay with `keep_classes`, and only the new folder's images are embedded.

        >>> result = imprint("flowers/", whiten=False, output="flowers.tflite")
        >>> result.model.name, result.labels.name, result.report_path.name
        ('flowers.tflite', 'flowers.txt', 'flowers.report.json')
        >>> result.report.trainer, result.report.settings["whiten"], result.report.top1
        ('imprint', False, 1.0)
        >>> more = imprint(
        ...     "more_flowers/", base="flowers.tflite", keep_classes=True, output="more.tflite"
        ... )
        >>> more.report.classes
        ['daisy', 'roses', 'tulips', 'sunflowers']
    """
    data, run, options = split_settings(settings, DataOptions, RunOptions, ImprintOptions)
    if keep_classes and base is None:
        raise OptionError("keep_classes", "needs a base model to keep the classes of", True)
    trainer: Any = Imprint(options, data.seed)
    if base is not None:
        labels = Path(base_labels) if base_labels is not None else None
        trainer = ContinueImprinting(Path(base), options, keep_classes, labels, data.seed)
    return train(data_dir, trainer, data, run, reporter)


def backprop(
    data_dir: str | Path, *, reporter: Reporter | None = None, **settings: Any
) -> TrainingResult:
    """Train a softmax-regression last layer with SGD, export and evaluate it.

    `epochs`, `learning_rate`, `batch_size`, `reg` (None: by cross-validation) plus the data
    and run settings.

        >>> result = backprop("flowers/", epochs=50, output="flowers_backprop.tflite")
        >>> result.report.trainer, result.report.settings["epochs"], result.report.top1
        ('backprop', 50, 1.0)
        >>> result.report.head["method"]  # SGD only where it beats imprinting on held-out folds
        'imprinting'
        >>> "prior" in result.report.head["reg_choice"]["held_out_loss"]
        True
    """
    data, run, options = split_settings(settings, DataOptions, RunOptions, BackpropOptions)
    return train(data_dir, Backprop(options, data.seed), data, run, reporter)


def evaluate(
    model: str | Path,
    data_dir: str | Path,
    *,
    labels: str | Path | None = None,
    split: str | Path | None = None,
    all_images: bool = False,
    allow_overlap: bool = False,
    reporter: Reporter | None = None,
    **settings: Any,
) -> Report:
    """Accuracy of `model` on held-out images of `data_dir`: by default the split it trained with.

    Split settings given here (`test_ratio`, `max_per_class`, `seed`) replace the model's
    own; `split` takes a training report's split; `all_images` scores the whole folder. Images
    the model was trained on are refused unless `allow_overlap`.

        >>> trained = imprint("flowers/", output="flowers.tflite")
        >>> report = evaluate("flowers.tflite", "flowers/")
        >>> report.split["test"] == trained.report.split["test"], report.top1
        (True, 1.0)
        >>> evaluate("flowers.tflite", "flowers/", all_images=True)
        Traceback (most recent call last):
        ...
        workbench.core.errors.WorkbenchError: 18 of the 24 images ...were training images of this...
        >>> evaluate("flowers.tflite", "flowers/", all_images=True, allow_overlap=True).num_images
        24
    """
    split_fields = {f.name for f in fields(DataOptions)}
    overrides = {k: v for k, v in settings.items() if k in split_fields}
    DataOptions(**overrides)  # checked now, before any work
    (run,) = split_settings({k: v for k, v in settings.items() if k not in overrides}, RunOptions)
    return evaluate_folder(
        model, data_dir, labels, overrides, split, run, reporter, allow_overlap, all_images
    )


@dataclass
class Embeddings:
    """A folder's embeddings with their labels and split, as the trainers see them.

    Rows of `train_x` / `test_x` are images, labels index `classes`; `extractor` is the
    model that embedded them, onto which a head fitted on them can be exported.

        >>> emb = embed("flowers/", test_ratio=0.5)  # 3 classes of 8 images, half held out
        >>> emb.train_x.shape[0], emb.test_x.shape[0], emb.classes
        (12, 12, ['daisy', 'roses', 'tulips'])
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    split: Split
    extractor: Path


def embed(data_dir: str | Path, *, reporter: Reporter | None = None, **settings: Any) -> Embeddings:
    """Embed a folder's training and held-out images (through the cache) with the extractor.

    Takes the data and run settings; for fitting a head yourself:

        >>> from workbench import ImprintingHead
        >>> emb = embed("flowers/")
        >>> head = ImprintingHead.fit(emb.train_x, emb.train_y)
        >>> float((head.scores(emb.test_x).argmax(axis=1) == emb.test_y).mean())
        1.0
        >>> [p.name for p in head.export(emb.extractor, "out.tflite", labels=emb.classes)]
        ['out.tflite', 'out.txt']
    """
    reporter = reporter or Reporter()
    data, run = split_settings(settings, DataOptions, RunOptions)
    source = bundled_source(run)
    dataset, data_split = prepare_split(data_dir, data, reporter)
    model = load_model(source.path, device=run.device)
    embedded = extract_split(
        model, data_split, reporter, run.cache,
        resplit=lambda unreadable: split(dataset, data, exclude=unreadable),
    )  # fmt: skip
    data_split = embedded.split or data_split
    return Embeddings(
        embedded.train_x, embedded.train_y, embedded.test_x, embedded.test_y,
        list(data_split.classes), data_split, source.path,
    )  # fmt: skip


def classify(
    model: str | Path,
    images: list[str | Path],
    *,
    labels: str | Path | None = None,
    top_k: int = 3,
    threshold: float = 0.0,
    device: str | None = None,
    reporter: Reporter | None = None,
) -> list[dict[str, Any]]:
    """The `top_k` classes (id, label, score) of each image or folder of images, best first.

    Unreadable images are skipped (with a warning); labels come from `labels`, else the
    labels file beside the model, else the model's metadata.

        >>> model = imprint("flowers/", output="flowers.tflite").model
        >>> found = classify(model, ["flowers/daisy/daisy_000.jpg", "flowers/roses"], top_k=2)
        >>> found[0]["file"], found[0]["top"][0]["label"], len(found[0]["top"])
        ('flowers/daisy/daisy_000.jpg', 'daisy', 2)
        >>> sorted({item["top"][0]["label"] for item in found[1:]})  # the folder's images
        ['roses']
    """
    paths = [Path(p) for p in images]
    found = classify_images(model, paths, labels, top_k, threshold, 0, device, reporter)
    return list(found["results"])
