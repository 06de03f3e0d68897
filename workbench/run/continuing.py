"""Continued imprinting (`imprint --base`): read the base, merge labels, fit with its state.

Only the new folder's images are extracted. With `keep_classes` the base's classes stay
(ids first, labels merged by name): a folder named like a base class trained by imprinting
adds images to it, one named like any other base class is refused. Without it the new model
has only the folder's classes, on the base's extractor.

A workbench model made with whitening carries the whitening's statistics: its raw extractor
is reused and the head re-whitened (`ImprintingHead.fit` with a `BaseState`). Any other base
(Coral's, or one made without whitening) is reused up to and including its L2Norm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workbench.core.errors import WorkbenchError
from workbench.core.options import ImprintOptions, RunOptions, settings
from workbench.core.progress import Reporter
from workbench.data.labels import default_labels_path, read_labels
from workbench.heads.coral_format import ImprintingModel, imprinting_layout, read_imprinting_model
from workbench.heads.imprint import ImprintedClasses
from workbench.heads.imprint_head import BaseState, ImprintingHead, stored_whitening
from workbench.heads.whitening import Whitening
from workbench.model.export import trained_on, workbench_metadata
from workbench.model.surgery import cut_at
from workbench.run.training import Fitted, Prepared, Source
from workbench.tflite.graph import Graph
from workbench.tflite.quant import representable


@dataclass
class Base:
    """A base imprinting model, read: its classes and labels, and how to continue it."""

    graph: Graph
    model: ImprintingModel
    labels: list[str]
    labels_path: Path
    whitening: Whitening | None  # set when the head will be re-whitened on the raw extractor
    extractor: Graph  # what the new images are run through

    @classmethod
    def read(cls, path: Path, labels_path: Path | None) -> Base:
        graph = Graph.load(path)
        model = read_imprinting_model(graph)
        labels_path = labels_path or default_labels_path(path)
        labels = read_labels(labels_path)
        if len(labels) != model.classes.num_classes:
            raise WorkbenchError(
                f"the base model has {model.classes.num_classes} classes but its labels file "
                f"has {len(labels)}; pass the right one with --base-labels"
            )
        whitening = stored_whitening(graph)
        raw = (workbench_metadata(graph) or {}).get("embedding_tensor")
        if whitening is not None and isinstance(raw, int):
            return cls(graph, model, labels, labels_path, whitening, cut_at(graph, raw, False))
        return cls(graph, model, labels, labels_path, None, model.extractor)

    def whitened_range(self) -> tuple[float, float] | None:
        """The 8-bit range of the base's whitening layer (the input of its L2Norm)."""
        layout = imprinting_layout(self.graph)
        assert layout is not None
        tensor = int(self.graph.operators[layout.l2norm_op].inputs[0])
        quant = self.graph.quant(tensor)
        if quant is None or self.graph.dtype(tensor) not in (np.uint8, np.int8):
            return None
        return representable(quant, self.graph.dtype(tensor))


@dataclass
class ContinueImprinting:
    """Imprinting that starts from a base model instead of an extractor."""

    base_path: Path
    options: ImprintOptions
    keep_classes: bool = False
    base_labels: Path | None = None
    seed: int = 0
    name: str = "imprint"
    base: Base | None = field(default=None, init=False)

    @property
    def min_classes(self) -> int:
        """One class folder is enough when the base's classes stay: pycoral's workflow adds
        a class (or images of one) at a time."""
        return 1 if self.keep_classes else 2

    def source(self, run: RunOptions) -> Source:
        if run.extractor is not None:
            raise WorkbenchError("--base brings its own extractor; leave out --extractor")
        self.base = Base.read(Path(self.base_path), self.base_labels)
        return Source(Path(self.base_path), self.base.extractor, (self.base.labels_path,))

    def fit(self, prepared: Prepared, reporter: Reporter) -> Fitted:
        base = self.base
        assert base is not None
        names = list(prepared.split.classes)
        merged = self._merged(names, base)
        folder_to_model = np.asarray([merged.index(n) for n in names], np.int64)
        embedded = prepared.embedded
        head = ImprintingHead.fit(
            embedded.train_x, folder_to_model[embedded.train_y], len(merged),
            self.options, self.seed, base=self._state(base, prepared),
        )  # fmt: skip
        extra = {
            "extracted_images": len(embedded.train_y) + len(embedded.test_y),
            "base_classes": base.labels if self.keep_classes else [],
        }
        inherited = trained_on(base.graph) if self.keep_classes else None
        metadata = {"base": str(self.base_path)}
        return Fitted(head, merged, folder_to_model, metadata, extra, inherited)

    def _merged(self, names: list[str], base: Base) -> list[str]:
        if not self.keep_classes:
            return names
        trainable = base.model.classes.trainable
        frozen = [n for n in names if n in base.labels and not trainable[base.labels.index(n)]]
        if frozen:
            raise WorkbenchError(
                f"{', '.join(frozen)}: base-model classes not trained by imprinting can be kept "
                "but not retrained; rename or remove those folders"
            )
        return base.labels + [n for n in names if n not in base.labels]

    def _state(self, base: Base, prepared: Prepared) -> BaseState:
        """What the head continues from: the kept classes, and the base's ranges."""
        model = base.model
        rewhiten = base.whitening is not None
        kept = model.classes if self.keep_classes else ImprintedClasses.empty(model.classes.dim)
        return BaseState(
            classes=kept,
            cosine_range=model.cosine_range,
            whitening=base.whitening if self.keep_classes else None,
            value_range=base.whitened_range() if self.keep_classes and rewhiten else None,
            l2norm=None if rewhiten else prepared.graph.outputs[0],
        )

    def append(self, fitted: Fitted, graph: Graph) -> dict[str, Any]:
        assert isinstance(fitted.head, ImprintingHead)
        return {"l2norm_tensor": fitted.head.append_to(graph).l2norm_output}

    def settings(self) -> dict[str, Any]:
        assert self.base is not None
        return {
            **settings(self.options),
            "base": str(self.base_path),
            "keep_classes": self.keep_classes,
            "rewhitened": self.base.whitening is not None,
        }
