"""Evaluation on stored extractor outputs: the head alone must give the whole model's scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import workbench as wb
from tests.builders import CORAL_EXTRACTOR, FLOWERS, shared_file
from workbench.core.progress import Reporter
from workbench.extract.extraction import run_cached
from workbench.extract.runtime import load_model
from workbench.model.export import workbench_metadata
from workbench.model.head_eval import head_graph, head_scores, pick_sample
from workbench.report.metrics import confusion, per_class
from workbench.run.evaluate import Embeddings, evaluate_export, evaluate_model_on
from workbench.tflite.graph import Graph


class Recorder(Reporter):
    """Keeps warnings, so a test can check what the user was told."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def test_metrics_match_scikit_learn() -> None:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 7, 500)
    predicted = np.where(rng.random(500) < 0.6, truth, rng.integers(-1, 9, 500))
    labels = [0, 1, 2, 3, 4, 5, 6, -1]
    for mine, theirs in zip(
        per_class(truth, predicted, labels),
        precision_recall_fscore_support(truth, predicted, labels=labels, zero_division=0),
        strict=True,
    ):
        np.testing.assert_allclose(mine, theirs)
    assert np.array_equal(
        confusion(truth, predicted, labels), confusion_matrix(truth, predicted, labels=labels)
    )


def test_the_sample_includes_mistakes_and_is_seeded() -> None:
    wrong = np.zeros(100, bool)
    wrong[[3, 50, 97]] = True
    rows = pick_sample(wrong, seed=1)
    assert len(rows) == 16 and len(set(rows)) == 16
    assert {3, 50, 97} <= set(rows.tolist())
    assert np.array_equal(rows, pick_sample(wrong, seed=1))
    assert not np.array_equal(rows, pick_sample(wrong, seed=2))
    assert len(pick_sample(np.zeros(5, bool), seed=0)) == 5


def trained(folder: Path, tmp_path: Path, extractor: Path, trainer: str) -> wb.TrainingResult:
    train = wb.imprint if trainer == "imprint" else wb.backprop
    settings = {"epochs": 20} if trainer == "backprop" else {}
    return train(
        folder, extractor=extractor, output=tmp_path / "m.tflite", cache=tmp_path / "c",
        max_per_class=8, **settings,
    )  # fmt: skip


def whole_and_head(result: wb.TrainingResult, graph: Graph) -> tuple:
    """The evaluation by the whole model on every held-out image, and by head + sample."""
    model = load_model(result.model)
    report = result.report
    files = [Path(p) for c in report.classes for p in report.split["test"][c]]
    truth = np.repeat(
        np.arange(len(report.classes)), [len(report.split["test"][c]) for c in report.classes]
    )
    extractor = load_model(Path(report.extractor))
    stored, _ = run_cached(extractor, files, False, Reporter(), "embedding")
    tensor = workbench_metadata(graph)["embedding_tensor"]
    whole = evaluate_model_on(model, files, truth, report.classes, report.classes, Reporter())
    recorder = Recorder()
    fast, method = evaluate_export(
        model, graph, Embeddings(stored.vectors, files, tensor, 0), truth, report.classes,
        report.classes, recorder,
    )  # fmt: skip
    return whole, fast, method, recorder.warnings


@pytest.mark.parametrize("trainer", ["imprint", "backprop"])
def test_head_and_sample_give_the_whole_models_scores(
    five_classes: Path, models: dict[str, Path], tmp_path: Path, trainer: str
) -> None:
    result = trained(five_classes, tmp_path, models["uint8"], trainer)
    assert result.report.evaluation == {"method": "head+sample", "sample": 16, "identical": True}
    graph = Graph.load(result.model)
    whole, fast, method, warned = whole_and_head(result, graph)
    assert method["method"] == "head+sample" and not warned
    assert fast == whole  # every figure, every mistake and its score


@pytest.mark.shared
def test_head_and_sample_on_coral_extractor(tmp_path: Path) -> None:
    flowers = tmp_path / "flowers"  # 32 photos of each class, linked
    for folder in sorted(shared_file(FLOWERS).iterdir()):
        (flowers / folder.name).mkdir(parents=True)
        for photo in sorted(folder.iterdir())[:32]:
            (flowers / folder.name / photo.name).symlink_to(photo)
    result = trained(flowers, tmp_path, shared_file(CORAL_EXTRACTOR), "imprint")
    whole, fast, method, _ = whole_and_head(result, Graph.load(result.model))
    assert method == {"method": "head+sample", "sample": 16, "identical": True}
    assert fast == whole and whole.num_images == 40


def test_a_perturbed_head_is_caught_by_the_sample(
    five_classes: Path, models: dict[str, Path], tmp_path: Path
) -> None:
    result = trained(five_classes, tmp_path, models["uint8"], "imprint")
    graph = Graph.load(result.model)
    tensor = workbench_metadata(graph)["embedding_tensor"]
    # one byte of the class weights changes: the head no longer is the model on disk
    head = head_graph(graph, tensor)
    constants = [int(i) for op in head.operators for i in op.inputs if i >= 0]
    weights = max(
        (i for i in constants if head.constant(i) is not None and head.dtype(i).itemsize == 1),
        key=lambda i: head.constant(i).size,
    )
    name = head.tensor_name(weights)
    (target,) = [t for t in graph.tensors if t.name.decode() == name]
    data = np.frombuffer(bytes(graph.model.buffers[target.buffer].data), np.uint8).copy()
    data[0] = 0 if data[0] > 127 else 255  # first class, first feature: to the far end
    graph.model.buffers[target.buffer].data = data
    whole, fast, method, warned = whole_and_head(result, graph)
    assert method == {"method": "full", "sample": 16, "identical": False}
    assert len(warned) == 1 and "did not reproduce" in warned[0]
    assert fast == whole  # the fallback scored the whole model on every image
    perturbed = head_scores(graph, tensor, np.zeros((1, graph.shape(tensor)[-1]), np.float32))
    assert perturbed.shape[1] == len(result.report.classes)
