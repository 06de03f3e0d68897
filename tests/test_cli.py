"""End to end: the `workbench` commands on real images and real (tiny) models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from PIL import Image

from tests.builders import (
    CliJson,
    assert_error,
    fake_edgetpu_model,
    invoke,
    no_edgetpu_runtime,
    run_cli,
    tiny_extractor,
    write_model,
)
from workbench.data.images import Preprocessing, load_input
from workbench.heads.coral_format import imprinting_problems
from workbench.model.export import workbench_metadata
from workbench.tflite.graph import Graph

REPORT_KEYS = {
    "classes",
    "top_k_accuracy",
    "per_class",
    "confusion_matrix",
    "agreement",
    "split",
}


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path], colors: Path, cli: CliJson
) -> Path:
    out = tmp_path_factory.mktemp("trained") / "colors.tflite"
    cli("imprint", colors, "--extractor", models["uint8"], "--output", out)
    return out


def test_imprint_writes_model_labels_and_report(trained: Path, colors: Path) -> None:
    files = sorted(p.name for p in trained.parent.iterdir())
    assert files == ["colors.report.html", "colors.report.json", "colors.tflite", "colors.txt"]
    assert trained.with_suffix(".txt").read_text() == "0 blue\n1 green\n2 red\n"
    report = json.loads(trained.with_name("colors.report.json").read_text())
    assert set(report) >= REPORT_KEYS
    assert report["classes"] == ["blue", "green", "red"]
    assert report["top_k_accuracy"][0] == 1.0 and len(report["top_k_accuracy"]) == 3
    assert report["agreement"] == 1.0
    assert report["confusion_matrix"] == [[3, 0, 0], [0, 3, 0], [0, 0, 3]]
    assert set(report["per_class"]["red"]) == {"precision", "recall", "f1", "support"}
    test_files = report["split"]["test"]["red"]
    assert len(test_files) == 3 and len(report["split"]["train"]["red"]) == 9
    assert all(Path(f).is_absolute() and Path(f).parent.name == "red" for f in test_files)
    assert (trained.stat().st_mode & 0o777) != 0o600  # ordinary file mode, not mkstemp's


def test_exported_model_is_coral_format_with_metadata(trained: Path) -> None:
    graph = Graph.load(trained)
    assert imprinting_problems(graph) == []
    meta = workbench_metadata(graph)
    assert meta is not None and meta["trainer"] == "imprint"
    assert meta["classes"] == ["blue", "green", "red"]
    state = graph.description().split()
    assert state[0::2] == ["0", "1", "2"] and all(float(v) > 0 for v in state[1::2])


def test_bare_interpreter_agrees_with_classify(trained: Path, colors: Path, cli: CliJson) -> None:
    images = sorted(colors.glob("*/*.png"))[::5]
    out = cli("classify", trained, *images, "--top-k", "2")
    assert out["timing"]["first_invoke_ms"] > 0 and out["timing"]["steady_state_runs"] >= 10

    interpreter = Interpreter(model_path=str(trained))
    interpreter.allocate_tensors()
    inp, outp = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    for image, item in zip(images, out["results"], strict=True):
        interpreter.set_tensor(inp["index"], load_input(image, Preprocessing(32, 32, "uint8")))
        interpreter.invoke()
        top = int(np.argmax(interpreter.get_tensor(outp["index"])[0]))
        assert item["top"][0]["id"] == top
        assert item["top"][0]["label"] == image.parent.name


def test_evaluate_reproduces_the_training_split(trained: Path, colors: Path, cli: CliJson) -> None:
    report = json.loads(trained.with_name("colors.report.json").read_text())
    again = cli("evaluate", trained, colors)
    assert again["split"]["test"] == report["split"]["test"]
    assert again["top_k_accuracy"] == report["top_k_accuracy"]
    assert again["confusion_matrix"] == report["confusion_matrix"]
    reused = cli("evaluate", trained, colors, "--split", trained.with_name("colors.report.json"))
    assert reused["split"]["test"] == report["split"]["test"]
    # another seed would score images the model was trained on: refused, unless allowed
    refused = invoke("evaluate", trained, colors, "--seed", "5", "--json")
    assert_error(refused, "were training images of this model")
    other_seed = cli("evaluate", trained, colors, "--seed", "5", "--allow-overlap")
    assert other_seed["split"]["test"] != report["split"]["test"]
    assert other_seed["evaluation"]["overlap"] > 0 and other_seed["evaluation"]["overlap_allowed"]
    assert again["evaluation"] == {
        "images": "model's split",
        "overlap": 0,
        "overlap_allowed": False,
        "method": "head+sample",  # the cache holds the extractor outputs of these images
        "sample": 9,  # all 9 held-out images: fewer than the sample size
        "identical": True,
    }


@pytest.mark.parametrize("kind", ["int8", "float32_2d", "uint8_2d"])
def test_imprint_works_with_every_extractor_type(
    tmp_path: Path, models: dict[str, Path], colors: Path, kind: str, cli: CliJson
) -> None:
    out = tmp_path / "m.tflite"
    report = cli("imprint", colors, "-e", models[kind], "-o", out)
    assert report["top_k_accuracy"][0] == 1.0 and report["agreement"] == 1.0
    assert Graph.load(out).dtype(Graph.load(out).outputs[0]) == (
        np.float32 if kind.startswith("float") else np.uint8
    )


def test_five_classes_with_and_without_whitening(
    tmp_path: Path, models: dict[str, Path], five_classes: Path, cli: CliJson
) -> None:
    for flag in ("--whiten", "--no-whiten"):
        out = tmp_path / "m.tflite"
        report = cli("imprint", five_classes, "-e", models["uint8"], "-o", out, flag)
        assert report["settings"]["whiten"] is (flag == "--whiten")
        assert report["top_k_accuracy"][0] >= 0.9
        assert report["agreement"] >= 0.9


def test_default_output_name_is_data_dir_name(
    tmp_path: Path, models: dict[str, Path], colors: Path
) -> None:
    result = run_cli("imprint", colors, "--extractor", models["uint8"], cwd=tmp_path)
    assert result.code == 0, result.describe()
    name = colors.name
    assert (tmp_path / f"{name}_imprint.tflite").exists()
    assert (tmp_path / f"{name}_imprint.txt").exists()
    assert "top-1" in result.stdout and "Confusion matrix" in result.stdout
    assert result.stderr == ""  # nothing but progress (not a terminal here) and warnings


def test_unreadable_images_are_skipped_with_a_warning(
    tmp_path: Path, models: dict[str, Path], colors: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(colors, data)
    (data / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (data / "green" / "notes.txt").write_text("not an image")
    result = run_cli("imprint", data, "-e", models["uint8"], "-o", tmp_path / "m.tflite")
    assert result.code == 0, result.describe()
    assert "broken.jpg" in result.stderr and "skipped unreadable image" in result.stderr
    assert "skipped 1 non-image files (notes.txt)" in result.stderr
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert [Path(u["file"]).name for u in report["unreadable"]] == ["broken.jpg"]


@pytest.mark.parametrize("cap", [200, 6])
def test_counts_in_the_report_are_the_images_used(
    tmp_path: Path, models: dict[str, Path], colors: Path, cap: int
) -> None:
    """Three 0-byte JPEGs in each class: dropped before the split, so the held-out count is
    what was scored and no unreadable image counts as trained (with a cap, others refill)."""
    data = tmp_path / "data"
    shutil.copytree(colors, data)
    for name in ("red", "green", "blue"):
        for i in range(3):
            (data / name / f"empty{i}.jpg").write_bytes(b"")
    out = tmp_path / "m.tflite"
    result = run_cli("imprint", data, "-e", models["uint8"], "-o", out, "--no-cache",
                     "--max-per-class", cap)  # fmt: skip
    assert result.code == 0, result.describe()
    report = json.loads(out.with_suffix(".report.json").read_text())
    counts = report["counts"]
    assert counts["unreadable"] == len(report["unreadable"])
    # 12 readable images a class: 3 held out (0.25 of 12), 9 trained or left out by the cap
    assert counts["test"] == {"red": 3, "green": 3, "blue": 3}
    assert counts["train"] == {c: min(9, cap) for c in ("red", "green", "blue")}
    if cap >= 9:
        assert counts["unreadable"] == 9 and sum(counts["unused"].values()) == 0
    else:  # what the cap leaves out is never decoded: unreadable or not, it is unused
        assert counts["unreadable"] + sum(counts["unused"].values()) == 3 * (15 - 3 - cap)
    assert report["num_images"] == 9 == sum(map(sum, report["confusion_matrix"]))
    listed = [Path(f).name for part in report["split"].values() for fs in part.values() for f in fs]
    assert not [name for name in listed if name.startswith("empty")]
    assert f"trained on {3 * min(9, cap)}, held out 9" in " ".join(result.stdout.split())


def bad_model_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "text": tmp_path / "notes.tflite",
        "truncated": tmp_path / "truncated.tflite",
        "empty": tmp_path / "empty.tflite",
    }
    files["text"].write_text("hello")
    files["truncated"].write_bytes(tiny_extractor("uint8")[:300])
    files["empty"].write_bytes(b"")
    return files


def test_bad_inputs_give_one_line_and_exit_2(
    tmp_path: Path, models: dict[str, Path], colors: Path
) -> None:
    out = tmp_path / "out.tflite"
    cases = [
        (("imprint", tmp_path / "missing", "-e", models["uint8"]), ["data folder not found"]),
        (("imprint", colors, "-e", tmp_path / "none.tflite", "-o", out), ["model not found"]),
        (("imprint", colors, "-e", models["uint8"], "-o", tmp_path / "no/dir/m.tflite"),
         ["output folder does not exist"]),
        (("imprint", colors, "-e", models["uint8"], "-o", "/proc/m.tflite"), ["cannot write"]),
        (("imprint", colors, "-e", models["uint8"], "-o", tmp_path), ["is a directory"]),
        (("imprint", colors, "-e", models["uint8"], "--test-ratio", "1.5", "-o", out),
         ["--test-ratio"]),
        (("classify", models["uint8"], tmp_path / "nope.png"), ["not found"]),
        (("evaluate", models["uint8"], colors, "--labels", tmp_path / "none.txt"),
         ["labels file not found"]),
    ]  # fmt: skip
    for name, path in bad_model_files(tmp_path).items():
        message = "damaged or truncated" if name == "truncated" else "not a TFLite model"
        cases.append((("imprint", colors, "-e", path, "-o", out), [message]))
    for args, needles in cases:
        assert_error(run_cli(*args), *needles)
    assert not out.exists()


def test_model_with_wrong_labels_file_is_refused(
    tmp_path: Path, trained: Path, colors: Path
) -> None:
    labels = tmp_path / "labels.txt"
    for text, needle in [
        ("0 blue\n1 green\n", "gives 3 scores but the labels file has 2"),
        ("0 blue\n1 green\n2 red\n3 extra\n", "gives 3 scores but the labels file has 4"),
        ("0 cyan\n1 green\n2 red\n", "class folders not among the model's labels: blue"),
    ]:
        labels.write_text(text)
        assert_error(run_cli("evaluate", trained, colors, "--labels", labels), needle)


def test_extractor_that_is_not_an_image_model_is_refused(tmp_path: Path, colors: Path) -> None:
    graph = Graph.empty()
    x = graph.add_tensor("x", [1, 10], np.float32)
    graph.set_inputs([x])
    graph.set_outputs([x])
    path = write_model(tmp_path / "vector.tflite", graph.to_bytes())
    assert_error(
        run_cli("imprint", colors, "-e", path, "-o", tmp_path / "m.tflite"), "not an RGB image"
    )


@no_edgetpu_runtime
def test_edgetpu_extractor_without_edgetpu_says_use_cpu_build(tmp_path: Path, colors: Path) -> None:
    result = run_cli("imprint", colors, "-e", fake_edgetpu_model(tmp_path), "-o", tmp_path / "m")
    assert_error(result, "compiled for the Edge TPU", "CPU build")


def test_failed_run_leaves_previous_outputs_untouched(
    tmp_path: Path, models: dict[str, Path], colors: Path, trained: Path
) -> None:
    out = tmp_path / "m.tflite"
    shutil.copy(trained, out)
    before = out.read_bytes()
    data = tmp_path / "data"
    shutil.copytree(colors, data)
    for image in (data / "red").iterdir():  # every red image unreadable: training must fail
        image.write_bytes(b"garbage")
    result = run_cli("imprint", data, "-e", models["uint8"], "-o", out)
    assert result.code == 2 and "Traceback" not in result.stderr
    *warnings, error = result.stderr.strip().splitlines()
    assert len(warnings) == 12
    assert all(w.startswith("warning: skipped unreadable") for w in warnings)
    assert error == "error: class 'red' has no readable training images"
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "m.tflite"]


def test_python_api_runs_without_the_cli(
    tmp_path: Path, models: dict[str, Path], colors: Path
) -> None:
    from workbench.run import api

    result = api.imprint(colors, extractor=models["float32"], output=tmp_path / "api.tflite")
    assert result.model.exists() and result.report.top1 == 1.0


def test_help_lists_the_commands() -> None:
    result = invoke("--help")
    assert result.code == 0
    for command in ("imprint", "evaluate", "classify"):
        assert command in result.stdout


def test_images_of_any_size_and_mode_are_accepted(
    tmp_path: Path, models: dict[str, Path], cli: CliJson
) -> None:
    rng = np.random.default_rng(0)
    for name, color in (("warm", (220, 60, 30)), ("cold", (30, 60, 220))):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        for i in range(6):
            pixels = np.clip(rng.normal(color, 20, (40 + 13 * i, 70, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            image = image.convert("L").convert("RGB") if i == 5 else image
            image.save(folder / f"{i}.{['png', 'jpg', 'bmp', 'gif', 'webp', 'png'][i]}")
    report = cli("imprint", tmp_path / "data", "-e", models["uint8"], "-o", tmp_path / "m")
    assert report["num_images"] == 4


def test_version_alone_prints_the_version() -> None:
    from workbench import __version__

    outcome = run_cli("--version")
    assert outcome.code == 0, outcome.describe()
    assert outcome.stdout.strip() == f"workbench {__version__}"


def test_report_renders_a_training_report_again(
    trained: Path, tmp_path: Path, cli: CliJson
) -> None:
    page = tmp_path / "again.html"
    out = cli("report", trained.with_name("colors.report.json"), "-o", page)
    assert out == {"html": str(page)}
    assert page.read_text().startswith("<!DOCTYPE html>") and "colors" in page.read_text()
