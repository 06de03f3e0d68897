"""The Python API (`import workbench as wb`), without the CLI: every public call on tiny data.

Each call runs on the tiny extractors and colour folders of conftest.py; what is checked is the
API's contract (what it returns and writes, which settings it takes, what it refuses), not the
accuracy of the methods, which the trainers' own tests measure.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

import workbench as wb
from tests.builders import make_dataset
from workbench.core.progress import Reporter, WorkbenchWarning
from workbench.extract.runtime import load_model
from workbench.tflite.graph import Graph


class Recorder(Reporter):
    """A silent reporter that keeps the warnings."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)


@pytest.fixture(scope="module")
def extractor(models: dict[str, Path]) -> Path:
    return models["uint8"]


@pytest.fixture(scope="module")
def imprinted(
    tmp_path_factory: pytest.TempPathFactory, extractor: Path, colors: Path
) -> wb.TrainingResult:
    out = tmp_path_factory.mktemp("api") / "colors.tflite"
    return wb.imprint(colors, extractor=extractor, output=out)


@pytest.fixture(scope="module")
def embedded(extractor: Path, colors: Path) -> wb.Embeddings:
    return wb.embed(colors, extractor=extractor)


def exported_top1(model: Path, embedded: wb.Embeddings) -> np.ndarray:
    """The exported model's top-1 class on each held-out image, by the API's classify."""
    files, _ = embedded.split.files("test")
    found = wb.classify(model, list(files), top_k=1)
    return np.array([embedded.classes.index(item["top"][0]["label"]) for item in found])


# --- imprint -------------------------------------------------------------------------------------


def test_imprint_returns_what_it_wrote(imprinted: wb.TrainingResult, colors: Path) -> None:
    assert isinstance(imprinted, wb.TrainingResult)
    assert imprinted.model.name == "colors.tflite" and imprinted.model.exists()
    assert imprinted.labels.read_text() == "0 blue\n1 green\n2 red\n"
    assert imprinted.report_path.name == "colors.report.json"
    assert imprinted.html_path.name == "colors.report.html" and imprinted.html_path.exists()
    report = imprinted.report
    assert isinstance(report, wb.Report)
    assert report.trainer == "imprint" and report.classes == ["blue", "green", "red"]
    assert report.settings["whiten"] is True and report.settings["test_ratio"] == 0.25
    assert report.top1 == 1.0 and report.export_ok
    assert report.data_dir == str(colors) and report.model == str(imprinted.model)
    assert wb.Report.load(imprinted.report_path).to_json() == report.to_json()


def test_imprint_takes_the_data_run_and_imprint_settings(
    tmp_path: Path, extractor: Path, colors: Path
) -> None:
    result = wb.imprint(
        colors, extractor=extractor, output=tmp_path / "m.tflite", whiten=False,
        test_ratio=0.5, max_per_class=4, seed=3, cache=False,
    )  # fmt: skip
    report = result.report
    assert report.settings == {"test_ratio": 0.5, "max_per_class": 4, "seed": 3, "whiten": False}
    assert report.counts["train"] == {"blue": 4, "green": 4, "red": 4}
    assert report.counts["test"] == {"blue": 6, "green": 6, "red": 6}
    assert report.head["whitening"] is None
    assert report.cache is None  # cache=False: neither read nor written


def test_bad_settings_are_refused_before_any_work(
    tmp_path: Path, extractor: Path, colors: Path
) -> None:
    out = tmp_path / "out" / "m.tflite"
    out.parent.mkdir()
    with pytest.raises(wb.OptionError) as error:
        wb.imprint(colors, extractor=extractor, output=out, test_ratio=1.5)
    assert error.value.field == "test_ratio" and error.value.value == 1.5
    assert isinstance(error.value, wb.WorkbenchError)
    with pytest.raises(wb.OptionError, match="whiten"):
        wb.imprint(colors, extractor=extractor, output=out, whiten=-1.0)
    with pytest.raises(wb.OptionError, match="keep_classes"):
        wb.imprint(colors, extractor=extractor, output=out, keep_classes=True)
    with pytest.raises(TypeError, match="unknown settings: epochs"):
        wb.imprint(colors, extractor=extractor, output=out, epochs=3)
    with pytest.raises(TypeError, match="unknown settings: whiten"):
        wb.backprop(colors, extractor=extractor, output=out, whiten=False)
    with pytest.raises(wb.OptionError, match="learning_rate"):
        wb.backprop(colors, extractor=extractor, output=out, learning_rate=0.0)
    with pytest.raises(wb.OptionError, match="seed"):
        wb.embed(colors, extractor=extractor, seed=-1)
    with pytest.raises(wb.WorkbenchError, match="data folder not found"):
        wb.imprint(tmp_path / "missing", extractor=extractor, output=out)
    assert list(out.parent.iterdir()) == []


def test_imprint_continues_a_base_model(tmp_path: Path, imprinted: wb.TrainingResult) -> None:
    more = make_dataset(tmp_path / "more", classes=("cyan", "red"), per_class=6, seed=2)
    result = wb.imprint(
        more, base=imprinted.model, keep_classes=True, output=tmp_path / "more.tflite"
    )
    assert result.report.classes == ["blue", "green", "red", "cyan"]
    assert result.report.base_classes == ["blue", "green", "red"]
    assert result.labels.read_text().splitlines()[-1] == "3 cyan"
    replaced = wb.imprint(more, base=imprinted.model, output=tmp_path / "new.tflite")
    assert replaced.report.classes == ["cyan", "red"]


# --- backprop ------------------------------------------------------------------------------------


def test_backprop_trains_and_exports_the_softmax_head(
    tmp_path: Path, extractor: Path, colors: Path
) -> None:
    result = wb.backprop(
        colors, extractor=extractor, output=tmp_path / "b.tflite", epochs=20, reg=1e-3
    )
    report = result.report
    assert report.trainer == "backprop" and report.top1 == 1.0
    assert (report.settings["epochs"], report.settings["reg"]) == (20, 1e-3)
    assert report.head["epochs_run"] == 20 and report.training_curve
    graph = Graph.load(result.model)
    assert graph.op_names()[-2:] == ["FULLY_CONNECTED", "SOFTMAX"]


# --- evaluate ------------------------------------------------------------------------------------


def test_evaluate_scores_the_images_training_held_out(
    imprinted: wb.TrainingResult, colors: Path
) -> None:
    report = wb.evaluate(imprinted.model, colors)
    assert isinstance(report, wb.Report)
    assert report.split["test"] == imprinted.report.split["test"]
    assert report.top1 == imprinted.report.top1 == 1.0
    assert report.evaluation is not None and report.evaluation["overlap"] == 0
    by_report = wb.evaluate(imprinted.model, colors, split=imprinted.report_path)
    assert by_report.split["test"] == report.split["test"]
    labelled = wb.evaluate(imprinted.model, colors, labels=imprinted.labels, cache=False)
    assert labelled.confusion_matrix == report.confusion_matrix


def test_evaluate_refuses_training_images_unless_allowed(
    imprinted: wb.TrainingResult, colors: Path
) -> None:
    with pytest.raises(wb.WorkbenchError, match="were training images of this model"):
        wb.evaluate(imprinted.model, colors, seed=5)
    with pytest.raises(wb.WorkbenchError, match="were training images of this model"):
        wb.evaluate(imprinted.model, colors, all_images=True)
    with pytest.warns(WorkbenchWarning, match="27 of the images scored were training images"):
        everything = wb.evaluate(imprinted.model, colors, all_images=True, allow_overlap=True)
    assert everything.num_images == 36
    assert everything.evaluation is not None and everything.evaluation["overlap_allowed"]
    with pytest.raises(wb.OptionError, match="test_ratio"):
        wb.evaluate(imprinted.model, colors, test_ratio=2.0)
    with pytest.raises(TypeError, match="unknown settings: epochs"):
        wb.evaluate(imprinted.model, colors, epochs=2)


# --- classify ------------------------------------------------------------------------------------


def test_classify_ranks_the_classes_of_images_and_folders(
    imprinted: wb.TrainingResult, colors: Path
) -> None:
    image = sorted((colors / "red").glob("*.png"))[0]
    found = wb.classify(imprinted.model, [image, colors / "blue"], top_k=2)
    assert len(found) == 1 + 12
    assert found[0]["file"] == str(image)
    top = found[0]["top"]
    assert [entry["label"] for entry in top][:1] == ["red"] and len(top) == 2
    assert top[0]["score"] >= top[1]["score"] and top[0]["id"] == 2
    assert all(item["top"][0]["label"] == "blue" for item in found[1:])
    confident = wb.classify(imprinted.model, [image], top_k=3, threshold=0.5)
    assert [entry["label"] for entry in confident[0]["top"]] == ["red"]


def test_classify_labels_and_unreadable_images(
    tmp_path: Path, imprinted: wb.TrainingResult, colors: Path
) -> None:
    image = sorted((colors / "green").glob("*.png"))[0]
    labels = tmp_path / "labels.txt"
    labels.write_text("0 sky\n1 grass\n2 rose\n")
    assert wb.classify(imprinted.model, [image], labels=labels)[0]["top"][0]["label"] == "grass"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    # A reporter rather than pytest.warns: images.decode's catch_warnings, run in the decode
    # threads, races with the warnings module's process-wide state and can drop the warning.
    reporter = Recorder()
    found = wb.classify(imprinted.model, [broken, image], reporter=reporter)
    assert [item["file"] for item in found] == [str(image)]
    assert len(reporter.warnings) == 1 and "broken.png" in reporter.warnings[0]
    with pytest.raises(wb.WorkbenchError, match="not found"):
        wb.classify(imprinted.model, [tmp_path / "missing.png"])


# --- embed and the heads -------------------------------------------------------------------------


def test_embed_returns_the_split_the_trainers_use(
    embedded: wb.Embeddings, imprinted: wb.TrainingResult, extractor: Path
) -> None:
    assert embedded.classes == ["blue", "green", "red"] and embedded.extractor == extractor
    assert embedded.train_x.shape == (27, 8) and embedded.test_x.shape == (9, 8)
    assert np.bincount(embedded.train_y).tolist() == [9, 9, 9]
    assert embedded.split.to_json() == imprinted.report.split  # the same images, same seed
    assert dataclasses.is_dataclass(embedded)


def test_imprinting_head_fits_and_exports(tmp_path: Path, embedded: wb.Embeddings) -> None:
    head = wb.ImprintingHead.fit(
        embedded.train_x, embedded.train_y, options=wb.ImprintOptions(whiten=False)
    )
    scores = head.scores(embedded.test_x)
    assert scores.shape == (9, 3) and np.allclose(scores.sum(axis=1), 1.0)
    assert np.array_equal(scores.argmax(axis=1), embedded.test_y)
    assert head.summary()["whitening"] is None
    model, labels = head.export(embedded.extractor, tmp_path / "i.tflite", embedded.classes)
    assert (model, labels) == (tmp_path / "i.tflite", tmp_path / "i.txt")
    assert labels.read_text() == "0 blue\n1 green\n2 red\n"
    assert np.array_equal(exported_top1(model, embedded), embedded.test_y)
    # from a graph in memory, too; the graph itself is left as it was
    graph = Graph.load(embedded.extractor)
    before = graph.to_bytes()
    head.export(graph, tmp_path / "g.tflite", embedded.classes)
    assert graph.to_bytes() == before
    assert load_model(tmp_path / "g.tflite").output.shape == (1, 3)


def test_softmax_head_fits_and_exports(tmp_path: Path, embedded: wb.Embeddings) -> None:
    options = wb.BackpropOptions(epochs=30, reg=1e-3)
    head = wb.SoftmaxHead.fit(embedded.train_x, embedded.train_y, options=options, seed=1)
    assert np.array_equal(head.scores(embedded.test_x).argmax(axis=1), embedded.test_y)
    assert head.summary()["epochs_run"] == 30 and head.reg is not None
    model, labels = head.export(embedded.extractor, tmp_path / "s.tflite", embedded.classes)
    assert labels.read_text() == "0 blue\n1 green\n2 red\n"
    assert np.array_equal(exported_top1(model, embedded), embedded.test_y)


# --- options -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "settings", "field"),
    [
        (wb.DataOptions, {"test_ratio": 1.0}, "test_ratio"),
        (wb.DataOptions, {"max_per_class": 0}, "max_per_class"),
        (wb.DataOptions, {"seed": 2**32}, "seed"),
        (wb.DataOptions, {"seed": True}, "seed"),
        (wb.ImprintOptions, {"whiten": 0.0}, "whiten"),
        (wb.ImprintOptions, {"whiten": float("nan")}, "whiten"),
        (wb.BackpropOptions, {"epochs": 0}, "epochs"),
        (wb.BackpropOptions, {"learning_rate": float("inf")}, "learning_rate"),
        (wb.BackpropOptions, {"batch_size": 2.5}, "batch_size"),
        (wb.BackpropOptions, {"reg": -1.0}, "reg"),
    ],
)
def test_options_name_the_setting_they_refuse(
    kind: type, settings: dict[str, object], field: str
) -> None:
    with pytest.raises(wb.OptionError) as error:
        kind(**settings)
    assert error.value.field == field and str(error.value).startswith(f"{field} must be")


def test_options_defaults_and_frozen() -> None:
    assert wb.DataOptions() == wb.DataOptions(test_ratio=0.25, max_per_class=200, seed=0)
    assert wb.ImprintOptions().whiten is True and wb.ImprintOptions(whiten=0.5).whiten == 0.5
    assert wb.BackpropOptions() == wb.BackpropOptions(100, 0.1, 100, None)
    run = wb.RunOptions()
    assert (run.extractor, run.output, run.device, run.cache, run.force) == (
        None, None, None, True, False,
    )  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.force = True  # type: ignore[misc]


def test_version_is_the_package_version() -> None:
    from importlib.metadata import version

    assert wb.__version__ == version("workbench")
