"""The second catalogue of bad input: hostile names, crafted files, runaway walks.

Same contract as test_reliability.py: bad input is one `error: ` line on stderr and exit code
2, never a traceback, nothing half-written; what is not bad input works, and prints every
string it was given as it is. Every input is real: images written by Pillow, models built with
workbench's own flatbuffer code, real symbolic links, real locks, real nested folders.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.builders import (
    assert_error,
    assert_ok,
    invoke,
    make_dataset,
    run_cli,
    warnings_of,
)
from workbench.pycoral.softmax_regression import SoftmaxRegression
from workbench.report.html import rendered
from workbench.report.record import Report
from workbench.run.evaluate import score
from workbench.tflite.graph import Graph

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three colour classes, 4 PNGs each: the smallest folder every trainer accepts."""
    return make_dataset(tmp_path_factory.mktemp("small") / "data", per_class=4)


@pytest.fixture(scope="module")
def extractor(models: dict[str, Path]) -> Path:
    return models["uint8"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, extractor: Path, small: Path) -> Path:
    """An imprinting model of red, green and blue (with its labels and reports beside it)."""
    out = tmp_path_factory.mktemp("trained") / "prev.tflite"
    assert_ok(invoke("imprint", small, "-e", extractor, "-o", out, "--no-cache"))
    return out


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wide console, so that no table cell wraps a name at its spaces."""
    monkeypatch.setenv("COLUMNS", "240")


def image_of(small: Path) -> Path:
    return small / "red" / "red_000.png"


# --- strings that are markup to the terminal -----------------------------------------------------

MARKUP_LABELS = ("[/]", ":cat:", "[bold red]x")


@pytest.mark.usefixtures("wide")
def test_base_labels_that_are_markup_print_as_written_everywhere(
    tmp_path: Path, extractor: Path, small: Path
) -> None:
    """Base labels `[/]`, `:cat:` and `[bold red]x` (a labels file holds any text): continuing
    with --keep-classes, then `inspect` and `classify` of the new model, print each as it is,
    with no MarkupError and no emoji."""
    base = tmp_path / "b.tflite"
    assert_ok(invoke("imprint", small, "-e", extractor, "-o", base, "--no-cache"))
    (tmp_path / "b.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(MARKUP_LABELS)))
    more = make_dataset(tmp_path / "more", classes=("orange",), per_class=4)
    out = tmp_path / "out.tflite"
    trained = invoke("imprint", more, "--base", base, "--keep-classes", "-o", out, "--no-cache")
    assert_ok(trained)
    inspected = invoke("inspect", out)
    assert inspected.code in (0, 1), inspected.describe()
    classified = invoke("classify", out, image_of(small), "--top-k", "4")
    assert_ok(classified)
    for outcome in (trained, inspected, classified):
        assert "Traceback" not in outcome.stderr, outcome.describe()
        for label in MARKUP_LABELS:
            assert label in outcome.stdout, outcome.describe()
        assert "\N{CAT FACE}" not in outcome.stdout
    assert (tmp_path / "out.txt").read_text().splitlines()[:3] == [
        f"{i} {n}" for i, n in enumerate(MARKUP_LABELS)
    ]


@pytest.mark.usefixtures("wide")
def test_classify_labels_that_are_markup_or_terminal_codes_print_as_written(
    tmp_path: Path, trained: Path, small: Path
) -> None:
    """`classify --labels L.txt` with `[/bold]` and an escape sequence that would clear the
    screen: the first printed as it is, the second shown escaped, never sent raw."""
    labels = tmp_path / "L.txt"
    labels.write_text("0 [/bold]\n1 \x1b[2Jgreen\n2 blue\u202eevil\n", encoding="utf-8")
    outcome = invoke("classify", trained, image_of(small), "--labels", labels, "--top-k", "3")
    assert_ok(outcome)
    assert "[/bold]" in outcome.stdout and "\\x1b[2Jgreen" in outcome.stdout
    assert "blue\\u202eevil" in outcome.stdout
    assert "\x1b" not in outcome.stdout and "\u202e" not in outcome.stdout


@pytest.mark.usefixtures("wide")
def test_class_folders_named_like_markup_print_as_named(
    tmp_path: Path, extractor: Path, small: Path
) -> None:
    """Class folders `[bold red]x` and `:cat:`: the tables show those names, not `x` in red
    or an emoji, and the labels file keeps them."""
    data = tmp_path / "data"
    shutil.copytree(small, data)
    (data / "red").rename(data / "[bold red]x")
    (data / "green").rename(data / ":cat:")
    out = tmp_path / "m.tflite"
    outcome = invoke("imprint", data, "-e", extractor, "-o", out, "--no-cache")
    assert_ok(outcome)
    table_rows = [line for line in outcome.stdout.splitlines() if "[bold red]x" in line]
    assert len(table_rows) >= 2, outcome.describe()  # per-class table and confusion matrix
    assert ":cat:" in outcome.stdout and "\N{CAT FACE}" not in outcome.stdout
    assert (tmp_path / "m.txt").read_text().splitlines() == ["0 :cat:", "1 [bold red]x", "2 blue"]


# --- names the file system cannot hold -----------------------------------------------------------

LONG = "n" * 300


def long_name_command(kind: str, tmp: Path, extractor: Path, small: Path, trained: Path) -> list:
    report = trained.with_name("prev.report.json")
    return {
        # OUT.tflite fits the 255-byte limit, OUT.report.json does not
        "imprint -o": ["imprint", small, "-e", extractor, "-o", tmp / ("o" * 245 + ".tflite")],
        "backprop -o": ["backprop", small, "-e", extractor, "-o", tmp / ("o" * 245 + ".tflite")],
        "evaluate -o": ["evaluate", trained, small, "-o", tmp / f"{LONG}.json"],
        "report -o": ["report", report, "-o", tmp / f"{LONG}.html"],
        "extractor -o": ["extractor", trained, "-o", tmp / LONG / "x.tflite"],
        "data folder": ["imprint", tmp / LONG, "-e", extractor, "-o", tmp / "m.tflite"],
        "classify image": ["classify", trained, tmp / f"{LONG}.png"],
        "datasets root": ["datasets", "get", "flowers", "--root", tmp / LONG],
    }[kind]


@pytest.mark.parametrize(
    "kind",
    ["imprint -o", "backprop -o", "evaluate -o", "report -o", "extractor -o", "data folder",
     "classify image", "datasets root"],
)  # fmt: skip
def test_names_too_long_for_the_file_system_are_one_error_line_before_any_work(
    tmp_path: Path, extractor: Path, small: Path, trained: Path, kind: str
) -> None:
    """An output (or input) whose name the file system cannot hold: one error line before
    anything is extracted (the embedding cache stays empty) and nothing written."""
    out = tmp_path / "out"
    out.mkdir()
    cache = tmp_path / "cache"
    args = [*long_name_command(kind, out, extractor, small, trained)]
    if args[0] in ("imprint", "backprop", "evaluate"):
        args += ["--cache-dir", cache]
    outcome = invoke(*args)
    assert_error(outcome)
    assert list(out.iterdir()) == []
    assert not cache.exists() or not any(cache.rglob("*.sqlite"))


# --- models crafted to mislead a parser ----------------------------------------------------------


def set_field(obj: object, name: str, value: object) -> None:
    setattr(obj, name, value)


CRAFTED: dict[str, Callable[[Graph], None]] = {
    "tensor buffer 99999": lambda g: set_field(g.tensors[1], "buffer", 99999),
    "opcode 999": lambda g: set_field(g.operators[0], "opcodeIndex", 999),
    "op input 99999": lambda g: set_field(
        g.operators[0], "inputs", np.array([99999, *g.operators[0].inputs[1:]], np.int32)
    ),
    "op input -5": lambda g: set_field(
        g.operators[0], "inputs", np.array([-5, *g.operators[0].inputs[1:]], np.int32)
    ),
    "op output 99999": lambda g: set_field(g.operators[0], "outputs", np.array([99999], np.int32)),
    "graph output 99999": lambda g: set_field(g.subgraph, "outputs", [99999]),
    "metadata buffer 99999": lambda g: set_field(g.model.metadata[0], "buffer", 99999),
    "scales without zero points": lambda g: set_field(
        g.tensors[0].quantization, "zeroPoint", np.array([], np.int64)
    ),
    "constant data too short": lambda g: set_field(
        g.model.buffers[g.tensors[1].buffer], "data", np.zeros(5, np.uint8)
    ),
    "negative dimension": lambda g: set_field(
        g.tensors[1], "shape", np.array([-3, 3, 3, 3], np.int32)
    ),
}


def crafted_model(folder: Path, trained: Path, damage: str) -> Path:
    graph = Graph.load(trained)
    assert graph.tensors[1].buffer > 0  # the first conv's weights: constant data
    CRAFTED[damage](graph)
    path = folder / "crafted.tflite"
    path.write_bytes(graph.to_bytes())
    return path


@pytest.mark.parametrize("damage", list(CRAFTED))
@pytest.mark.parametrize("use", ["inspect", "classify", "imprint -e", "imprint --base"])
def test_model_whose_numbers_point_outside_the_file_is_one_error_line(
    tmp_path: Path, trained: Path, small: Path, damage: str, use: str
) -> None:
    """A tensor's buffer 99999, an op's opcode 999, an op input 99999 (or -5, which Python
    would take from the end of the list), ...: every command refuses the model alike."""
    model = crafted_model(tmp_path, trained, damage)
    out = tmp_path / "out.tflite"
    args: list[object] = {
        "inspect": ["inspect", model],
        "classify": ["classify", model, image_of(small)],
        "imprint -e": ["imprint", small, "-e", model, "--force", "-o", out, "--no-cache"],
        "imprint --base": ["imprint", small, "--base", model, "-o", out, "--no-cache"],
    }[use]
    assert_error(invoke(*args), "crafted.tflite")
    assert not out.exists()


def test_model_with_nested_or_odd_workbench_metadata_is_inspected(
    tmp_path: Path, trained: Path
) -> None:
    """Metadata nested 200,000 deep, or classes that are not strings: `inspect` reports the
    model as one without (or with odd) workbench metadata; no traceback."""
    for name, text in {
        "deep": "[" * 200_000 + "]" * 200_000,
        "numbers": json.dumps({"trainer": "imprint", "classes": [1, {"a": 2}]}),
    }.items():
        graph = Graph.load(trained)
        graph.set_metadata("workbench", text.encode())
        path = tmp_path / f"{name}.tflite"
        path.write_bytes(graph.to_bytes())
        outcome = invoke("inspect", path)
        assert outcome.code in (0, 1), outcome.describe()
        assert "Traceback" not in outcome.stderr, outcome.describe()


def packed_bomb(model: bytes, size: int) -> bytes:
    """`model` with its packed labels replaced by a deflated labels.txt of `size` bytes of
    short lines: about a thousandth of that in the file."""
    stream = io.BytesIO()
    chunk = b"a\n" * (1 << 19)
    with (
        zipfile.ZipFile(stream, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive,
        archive.open("labels.txt", "w", force_zip64=True) as labels,
    ):
        for _ in range(size // len(chunk)):
            labels.write(chunk)
    return Graph.from_bytes(model).to_bytes() + stream.getvalue()


def test_packed_labels_that_expand_to_gigabytes_are_not_read(
    tmp_path: Path, trained: Path, small: Path
) -> None:
    """A model whose appended archive holds a deflated labels.txt of 512 MB of short lines
    (under 1 MB in the file): `classify` without a labels file does not expand it (it shows
    class ids), in the memory a board has."""
    model = tmp_path / "m.tflite"
    model.write_bytes(packed_bomb(trained.read_bytes(), 512 << 20))
    assert model.stat().st_size < 4 << 20
    with zipfile.ZipFile(model) as archive:  # a real archive of the claimed size
        assert archive.getinfo("labels.txt").file_size == 512 << 20
    outcome = run_cli("classify", model, image_of(small), "--json", timeout=120, limit_memory=True)
    assert_ok(outcome)
    assert outcome.json()["labels"].startswith("none")


# --- labels files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content", ["0 a\n99999999999 b\n", "0 a\n\u00b2 b\n", "\u00b2 a\n1 b\n", "fifo"]
)
def test_labels_file_that_would_exhaust_memory_or_hang_is_one_error_line(
    tmp_path: Path, trained: Path, small: Path, content: str
) -> None:
    """An id of 99,999,999,999 (a list of that many names), a superscript digit (which
    `str.isdigit` takes and `int` refuses), a named pipe (which never ends): one error."""
    labels = tmp_path / "L.txt"
    if content == "fifo":
        os.mkfifo(labels)
    else:
        labels.write_text(content, encoding="utf-8")
    try:
        outcome = run_cli("classify", trained, image_of(small), "--labels", labels, timeout=60,
                          limit_memory=True)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("classify hung on the labels file")
    assert_error(outcome, "L.txt")


# --- JSON nested too deeply ---------------------------------------------------------------------


@pytest.mark.parametrize("depth", [200_000, 900])
@pytest.mark.parametrize("use", ["report", "evaluate --split", "report (inside a report)"])
def test_json_nested_too_deeply_is_one_error_line(
    tmp_path: Path, trained: Path, small: Path, depth: int, use: str
) -> None:
    """200,000 nested brackets (beyond Python's parser) or 900 (parsed, but beyond what
    renders the page): one error line, nothing written."""
    path = tmp_path / "n.json"
    nested = "[" * depth + "]" * depth
    if use == "report (inside a report)":
        report = trained.with_name("prev.report.json").read_text()
        path.write_text(report.rstrip()[:-1] + f', "head": {nested}}}')
    else:
        path.write_text(nested)
    args: list[object] = (
        ["evaluate", trained, small, "--split", path, "-o", tmp_path / "e.report.json"]
        if use == "evaluate --split"
        else ["report", path]
    )
    assert_error(invoke(*args), "n.json")
    assert [p.name for p in tmp_path.iterdir()] == ["n.json"]


# --- walks that would leave the data folder ------------------------------------------------------


def test_class_folders_linked_outside_any_sane_bound_are_skipped_with_one_line(
    tmp_path: Path, extractor: Path, small: Path
) -> None:
    """`ln -s / data/rootlink`, a link to a folder holding the data folder, one into /proc:
    left out with one warning line naming them; the run ends promptly with the real
    classes (before, the scan walked the whole file system for minutes)."""
    data = tmp_path / "data"
    shutil.copytree(small, data)
    (data / "rootlink").symlink_to("/")
    (data / "up").symlink_to(tmp_path)
    (data / "kernel").symlink_to("/proc/self")
    try:
        outcome = run_cli("imprint", data, "-e", extractor, "-o", tmp_path / "m.tflite",
                          "--no-cache", "--json", timeout=60)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("the scan followed a link out of the data folder")
    assert_ok(outcome)
    (warning,) = [w for w in warnings_of(outcome) if "linked class folders" in w]
    assert all(name in warning for name in ("rootlink", "up", "kernel")), warning
    assert outcome.json()["classes"] == ["blue", "green", "red"]


@pytest.mark.parametrize("use", ["imprint", "classify"])
def test_folder_nested_deeper_than_the_limit_is_one_error_line(
    tmp_path: Path, extractor: Path, small: Path, trained: Path, use: str
) -> None:
    """A class folder (or a folder to classify) nested 40 folders deep: one error line
    saying so, not a walk of whatever the tree holds."""
    data = tmp_path / "data"
    shutil.copytree(small, data)
    deep = data / "red" / "/".join(["d"] * 40)
    deep.mkdir(parents=True)
    shutil.copyfile(image_of(small), deep / "deep.png")
    args: list[object] = (
        ["imprint", data, "-e", extractor, "-o", tmp_path / "m.tflite", "--no-cache"]
        if use == "imprint"
        else ["classify", trained, data / "red"]
    )
    assert_error(invoke(*args), "nested")
    assert not (tmp_path / "m.tflite").exists()


@pytest.mark.parametrize("use", ["imprint", "classify"])
def test_the_whole_file_system_as_a_folder_is_refused(
    tmp_path: Path, extractor: Path, trained: Path, use: str
) -> None:
    """A data folder (or folder to classify) that is a link to `/`: refused at once."""
    link = tmp_path / "everything"
    link.symlink_to("/")
    args: list[object] = (
        ["imprint", link, "-e", extractor, "-o", tmp_path / "m.tflite", "--no-cache"]
        if use == "imprint"
        else ["classify", trained, link]
    )
    try:
        outcome = run_cli(*args, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the whole file system was walked")
    assert_error(outcome, "whole file system")


# --- staged files of a run killed a moment ago ---------------------------------------------------


def test_staged_files_of_a_run_killed_a_moment_ago_are_removed_by_the_next(
    tmp_path: Path, trained: Path, extractor: Path, small: Path
) -> None:
    """A run staging its outputs is killed with SIGKILL (its locks die with it); a run of
    the same outputs started right away removes what it left, and keeps the one file of a
    staging run that is still alive."""
    out = tmp_path / "m.tflite"
    for suffix in (".tflite", ".txt", ".report.json", ".report.html"):
        shutil.copyfile(trained.with_name("prev" + suffix), tmp_path / ("m" + suffix))
    writer = subprocess.Popen(
        [
            sys.executable, "-c",
            "import sys, time\n"
            "from workbench.core.outputs import StagedFiles\n"
            "staged = StagedFiles().__enter__()\n"
            "for name in sys.argv[1:]:\n"
            "    staged.stage(name, b'half of a model')\n"
            "print('staged', flush=True)\n"
            "time.sleep(60)\n",
            out, out.with_suffix(".txt"),
        ],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert writer.stdout is not None and writer.stdout.readline().strip() == "staged"
    live = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
    assert len(live) == 2
    writer.kill()
    writer.wait()
    assert_ok(invoke("imprint", small, "-e", extractor, "-o", out, "--no-cache"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "m.report.html", "m.report.json", "m.tflite", "m.txt",
    ]  # fmt: skip


# --- pycoral's SoftmaxRegression ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((0, 3), ValueError),
        ((8, 0), ValueError),
        ((-1, 3), ValueError),
        ((None, 3), TypeError),
        ((8.0, 3), TypeError),
        ((8, 3, float("nan")), ValueError),
        ((8, 3, 0.01, -1.0), ValueError),
    ],
    ids=str,
)
def test_softmax_regression_refuses_sizes_that_cannot_work(args: tuple, error: type) -> None:
    with pytest.raises(error):
        SoftmaxRegression(*args)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"learning_rate": float("nan")}, ValueError),
        ({"learning_rate": float("inf")}, ValueError),
        ({"learning_rate": 0.0}, ValueError),
        ({"learning_rate": "0.1"}, TypeError),
        ({"batch_size": 0}, ValueError),
        ({"batch_size": 2.5}, TypeError),
        ({"num_iter": -1}, ValueError),
    ],
    ids=str,
)
def test_softmax_regression_refuses_training_that_cannot_work(options: dict, error: type) -> None:
    """pycoral's binding takes these arguments in `train_with_sgd`: refused there, at once,
    instead of a silent no-op or NaN weights that `serialize_model` trips over later."""
    model = SoftmaxRegression(4, 2)
    before = model.params["mat_w"].copy()
    rng = np.random.default_rng(0)
    data = {"data_train": rng.normal(size=(10, 4)), "labels_train": np.arange(10) % 2}
    with pytest.raises(error):
        model.train_with_sgd(data, **{"num_iter": 5, "learning_rate": 0.1, **options})
    np.testing.assert_array_equal(model.params["mat_w"], before)


def test_softmax_regression_that_diverged_says_so_at_serialize(models: dict[str, Path]) -> None:
    """A learning rate finite but absurd: NaN weights are a ValueError saying why."""
    model = SoftmaxRegression(8, 3)
    rng = np.random.default_rng(0)
    data = {"data_train": rng.normal(size=(30, 8)) * 1e3, "labels_train": np.arange(30) % 3}
    with np.errstate(all="ignore"):
        model.train_with_sgd(data, num_iter=50, learning_rate=1e300, print_every=0)
    with pytest.raises(ValueError, match="diverged"):
        model.serialize_model(str(models["uint8"]))
    nan_data = {**data, "data_train": np.full((30, 8), np.nan)}
    with pytest.raises(RuntimeError, match="NaN"):
        SoftmaxRegression(8, 3).train_with_sgd(nan_data, num_iter=1, learning_rate=0.1)


# --- reports of thousands of classes ------------------------------------------------------------


def big_report(classes: int) -> Report:
    """A training report of `classes` classes with 1 held-out image each (2 per class in
    all), most of them right, scored by workbench's own evaluation."""
    rng = np.random.default_rng(0)
    names = [f"class_{i:05d}" for i in range(classes)]
    truth = np.arange(classes)
    scores = rng.random((classes, classes)).astype(np.float32)
    scores[truth, truth] += 0.5 * (rng.random(classes) > 0.3)
    files = [Path(f"/data/{n}/b.jpg") for n in names]
    evaluation = score(scores, truth, names, names, np.argmax(scores, 1), files)
    report = Report(
        workbench_version="test", data_dir="/data", classes=names, settings={}, trainer="imprint",
        split={"train": {n: [f"/data/{n}/a.jpg"] for n in names},
               "test": {n: [str(f)] for n, f in zip(names, files, strict=True)}},
        counts={"train": dict.fromkeys(names, 1), "test": dict.fromkeys(names, 1)},
        timing={"extract_s": 1.0, "train_s": 1.0},
    )  # fmt: skip
    for key, value in evaluation.fields().items():
        setattr(report, key, value)
    return report


def test_report_of_2000_classes_is_proportionate_and_times_its_writing() -> None:
    """2,000 classes x 2 images: the JSON and the page grow with the classes and images
    (the confusion matrix is stored and drawn from its nonzero cells; before, a full matrix
    made a 37 MB JSON), and the report's timing includes writing them."""
    report = big_report(2000)
    started = time.perf_counter()
    data, page = rendered(report, started)
    assert len(data) < 2000 * 700 and len(page) < 2000 * 700, (len(data), len(page))
    written = json.loads(data)
    assert "confusion_matrix" not in written  # in full only up to DENSE_CONFUSION_MAX classes
    assert sum(count for _, _, count in written["confusion"]) == 2000
    assert written["timing"]["write_s"] > 0
    assert written["timing"]["total_s"] >= written["timing"]["write_s"]
    assert "write_s" in page.decode() and "Top confusions" in page.decode()
    again = Report.from_json(written)
    assert again.confusion == report.confusion
    assert sum(map(sum, again.confusion_matrix)) == 2000  # the full matrix, on demand
    small = big_report(12)
    assert json.loads(rendered(small, started)[0])["confusion_matrix"] == small.confusion_matrix


def test_report_written_before_sparse_confusion_still_reads() -> None:
    """A report holding only the full `confusion_matrix` (older workbench): read as before."""
    report = big_report(5)
    old = report.to_json()
    del old["confusion"]
    again = Report.from_json(old)
    assert again.confusion == report.confusion
    assert again.confusion_matrix == old["confusion_matrix"]


# --- every limit is stated ----------------------------------------------------------------------


def test_readme_states_every_limit_the_code_enforces() -> None:
    """The README's "Limits" section names each limit with the value the code enforces."""
    from workbench.core import jsonfile, outputs
    from workbench.data import dataset, images, labels
    from workbench.report import html as report_html
    from workbench.report import record as report
    from workbench.tflite import metadata

    text = README.read_text()
    match = re.search(r"\n## Limits\n(.*?)\n## ", text, re.DOTALL)
    assert match, "README has no '## Limits' section"
    section = " ".join(match.group(1).split())
    expected = {
        "images per class (default cap)": "200 training images per class",
        "pixels": f"{images.MAX_PIXELS // 1_000_000} megapixels",
        "nesting": f"{dataset.MAX_DEPTH} folder levels",
        "labels": f"{labels.MAX_LABELS:,} labels",
        "labels file": f"{labels.MAX_LABELS_BYTES >> 20} MiB",
        "packed labels": f"{metadata.MAX_PACKED_FILE_BYTES >> 20} MiB",
        "JSON depth": f"{jsonfile.MAX_JSON_DEPTH} levels",
        "full confusion matrix": f"{report.DENSE_CONFUSION_MAX} classes",
        "heatmap": f"{report_html.HEATMAP_MAX_CLASSES} classes",
        "file names": f"{outputs.DEFAULT_NAME_MAX} bytes",
        "system folders": "/proc",
    }
    missing = {what: words for what, words in expected.items() if words not in section}
    assert not missing, f"README's Limits section does not state: {missing}"
