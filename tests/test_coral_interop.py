"""Coral interop: the pycoral-compatible API, continued imprinting, extractor surgery, devices."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.builders import (
    CORAL,
    CORAL_EXTRACTOR,
    FLOWERS,
    assert_error,
    fake_edgetpu_model,
    invoke,
    make_dataset,
    shared_file,
    tiny_extractor,
    write_model,
)
from workbench.extract.runtime import load_model
from workbench.heads.coral_format import imprinting_layout, imprinting_problems
from workbench.pycoral import (
    ImprintingEngine,
    SoftmaxRegression,
    classify,
    common,
    make_interpreter,
    read_label_file,
)
from workbench.run import api
from workbench.tflite.graph import Graph, Quant
from workbench.tflite.heads import append_softmax_regression_tail
from workbench.tflite.metadata import without_standard_metadata


@pytest.fixture(scope="module")
def base_model(
    tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]
) -> tuple[Path, Path]:
    """A whitened workbench imprinting model on red and green, and the folder it came from.

    Two well-separated colours give cross-validation no reason to whiten, so the whitening
    is asked for: these tests are about what a whitened base carries.
    """
    root = tmp_path_factory.mktemp("base")
    data = make_dataset(root / "two", classes=("red", "green"), per_class=10)
    out = root / "two.tflite"
    api.imprint(data, extractor=models["uint8"], output=out, whiten=1.0, cache=False)
    return out, data


# --- the pycoral-compatible API ------------------------------------------------------------------


def test_engine_reads_a_workbench_model_and_exposes_its_extractor(
    base_model: tuple[Path, Path],
) -> None:
    path, _ = base_model
    kept = ImprintingEngine(str(path), keep_classes=True)
    fresh = ImprintingEngine(str(path))
    assert (kept.num_classes, fresh.num_classes) == (2, 0)
    assert kept.embedding_dim == fresh.embedding_dim == 8
    extractor = make_interpreter(kept.serialize_extractor_model())
    extractor.allocate_tensors()
    assert common.input_size(extractor) == (32, 32)
    assert classify.num_classes(extractor) == 8
    common.set_input(extractor, np.full((32, 32, 3), 200, np.uint8))
    extractor.invoke()
    embedding = classify.get_scores(extractor)
    assert embedding.shape == (8,) and abs(np.linalg.norm(embedding) - 1.0) < 0.05


def test_engine_errors_where_pycoral_raises(tmp_path: Path, base_model: tuple[Path, Path]) -> None:
    # pycoral's types: RuntimeError from train() and serialize_model(), ValueError from the
    # constructor; libcoral's message first, then workbench's detail.
    path, _ = base_model
    engine = ImprintingEngine(str(path), keep_classes=True)
    with pytest.raises(RuntimeError, match=r"class index of a new category is too large.*skips"):
        engine.train(np.ones(8), class_id=3)
    with pytest.raises(RuntimeError, match="Model is not trained"):
        ImprintingEngine(str(path)).serialize_model()
    # A base class without training state (description line) was not trained by imprinting.
    graph = Graph.load(path)
    graph.set_description("1 3.5\n")
    frozen = write_model(tmp_path / "frozen.tflite", graph.to_bytes())
    engine = ImprintingEngine(str(frozen), keep_classes=True)
    with pytest.raises(RuntimeError, match=r"Cannot change the base model.*cannot be retrained"):
        engine.train(np.ones(8), class_id=0)
    engine.train(np.ones(8), class_id=1)  # class 1 has state: more images are fine
    with pytest.raises(ValueError, match="not an imprinting model"):
        ImprintingEngine(str(write_model(tmp_path / "x.tflite", tiny_extractor("uint8"))))


def coral_imprinting_demo(model_path: str, data: Path, output: Path, keep_classes: bool) -> dict:
    """The loop of Coral's imprinting_learning.py, written against workbench.pycoral."""
    engine = ImprintingEngine(model_path, keep_classes=keep_classes)
    extractor = make_interpreter(engine.serialize_extractor_model(), device=None)
    extractor.allocate_tensors()
    num_classes = engine.num_classes
    shape = common.input_size(extractor)
    train_set, test_set = {}, {}
    for category in sorted(os.listdir(data)):
        images = sorted(os.listdir(data / category))
        random.Random(0).shuffle(images)
        test_set[category], train_set[category] = images[:3], images[3:]
    labels = {}
    for class_id, (category, image_list) in enumerate(train_set.items()):
        for name in image_list:
            with Image.open(data / category / name) as img:
                common.set_input(extractor, img.convert("RGB").resize(shape, Image.NEAREST))
            extractor.invoke()
            engine.train(classify.get_scores(extractor), class_id=num_classes + class_id)
        labels[num_classes + class_id] = category
    output.write_bytes(engine.serialize_model())
    interpreter = make_interpreter(str(output))
    interpreter.allocate_tensors()
    size = common.input_size(interpreter)
    correct = total = 0
    for category, image_list in test_set.items():
        for name in image_list:
            with Image.open(data / category / name) as img:
                common.set_input(interpreter, img.convert("RGB").resize(size, Image.NEAREST))
            interpreter.invoke()
            top = classify.get_classes(interpreter, top_k=1, score_threshold=0.1)
            correct += bool(top) and labels.get(top[0].id) == category
            total += 1
    return {"accuracy": correct / total, "labels": labels, "num_base": num_classes}


@pytest.mark.parametrize("keep_classes", [False, True])
def test_coral_imprinting_demo_runs_on_the_compatible_api(
    tmp_path: Path, base_model: tuple[Path, Path], keep_classes: bool
) -> None:
    path, _ = base_model
    data = make_dataset(tmp_path / "new", classes=("blue", "hstripes"), per_class=10)
    out = tmp_path / "retrained.tflite"
    result = coral_imprinting_demo(str(path), data, out, keep_classes)
    assert result["accuracy"] == 1.0
    graph = Graph.load(out)
    assert imprinting_problems(graph) == []
    layout = imprinting_layout(graph)
    assert layout is not None and layout.num_classes == (4 if keep_classes else 2)
    state = graph.description().split()[0::2]
    assert state == (["0", "1", "2", "3"] if keep_classes else ["0", "1"])
    # and the model goes back into the engine: training continues where it stopped
    again = ImprintingEngine(str(out), keep_classes=True)
    assert again.num_classes == layout.num_classes


def coral_backprop_demo(extractor_path: str, data: Path, output: Path) -> float:
    """The flow of Coral's backprop_last_layer.py, written against workbench.pycoral."""
    paths, labels = [], []
    for class_id, category in enumerate(sorted(os.listdir(data))):
        for name in sorted(os.listdir(data / category)):
            paths.append(data / category / name)
            labels.append(class_id)
    order = np.random.RandomState(0).permutation(len(paths))
    paths, labels = [paths[i] for i in order], np.array(labels)[order]
    n_test = len(paths) // 5
    interpreter = make_interpreter(extractor_path, device=None)
    interpreter.allocate_tensors()

    def extract(image_paths: list[Path]) -> np.ndarray:
        input_size = common.input_size(interpreter)
        out = np.empty((len(image_paths), classify.num_classes(interpreter)), np.float32)
        for i, p in enumerate(image_paths):
            with Image.open(p) as img:
                common.set_input(interpreter, img.convert("RGB").resize(input_size, Image.NEAREST))
            interpreter.invoke()
            out[i] = classify.get_scores(interpreter)
        return out

    train_x = extract(paths[n_test:])
    dataset = {
        "data_train": train_x[8:], "labels_train": labels[n_test:][8:],
        "data_val": train_x[:8], "labels_val": labels[n_test:][:8],
    }  # fmt: skip
    np.random.seed(0)
    model = SoftmaxRegression(train_x.shape[1], int(labels.max()) + 1, weight_scale=5e-2, reg=0.0)
    model.train_with_sgd(dataset, num_iter=500, learning_rate=1e-2, batch_size=100)
    output.write_bytes(model.serialize_model(extractor_path))
    return model.get_accuracy(extract(paths[:n_test]), labels[:n_test])


def test_coral_backprop_demo_runs_on_the_compatible_api(
    tmp_path: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_dataset(tmp_path / "data", classes=("red", "green", "blue"), per_class=15)
    out = tmp_path / "retrained.tflite"
    accuracy = coral_backprop_demo(str(models["uint8"]), data, out)
    assert accuracy == 1.0
    assert "Loss" in capsys.readouterr().out  # pycoral prints progress every 100 iterations
    graph = Graph.load(out)
    assert graph.op_names()[-2:] == ["FULLY_CONNECTED", "SOFTMAX"]
    interpreter = make_interpreter(str(out))
    interpreter.allocate_tensors()
    with Image.open(next((data / "green").iterdir())) as img:
        common.set_input(interpreter, img.convert("RGB").resize((32, 32), Image.NEAREST))
    interpreter.invoke()
    assert classify.get_classes(interpreter)[0].id == 1


def test_softmax_regression_serializes_untrained_as_pycoral_does(models: dict[str, Path]) -> None:
    # libcoral writes the initial weights (pycoral's own test serializes an untrained model).
    interpreter = make_interpreter(SoftmaxRegression(8, 3).serialize_model(str(models["uint8"])))
    interpreter.allocate_tensors()
    common.set_input(interpreter, np.full((32, 32, 3), 90, np.uint8))
    interpreter.invoke()
    scores = classify.get_scores(interpreter)
    assert scores.shape == (3,) and abs(scores.sum() - 1.0) < 0.02


def test_read_label_file_accepts_both_formats(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("0 cat\n1 dog house\n")
    (tmp_path / "b.txt").write_text("cat\ndog house\n")
    assert read_label_file(tmp_path / "a.txt") == read_label_file(tmp_path / "b.txt")
    assert read_label_file(tmp_path / "a.txt") == {0: "cat", 1: "dog house"}


# --- continued training with --base --------------------------------------------------------------


def test_base_keep_classes_adds_classes_and_extracts_only_new_images(
    tmp_path: Path, base_model: tuple[Path, Path]
) -> None:
    path, _ = base_model
    data = make_dataset(tmp_path / "more", classes=("blue", "red"), per_class=8, seed=3)
    out = tmp_path / "three.tflite"
    result = invoke("imprint", data, "--base", path, "--keep-classes", "-o", out, "--json")
    assert result.code == 0, result.describe()
    report = json.loads(result.stdout)
    assert report["classes"] == ["green", "red", "blue"]  # base ids first, merged by name
    assert out.with_suffix(".txt").read_text() == "0 green\n1 red\n2 blue\n"
    assert report["extracted_images"] == 16
    assert report["top_k_accuracy"][0] == 1.0 and report["agreement"] == 1.0
    graph = Graph.load(out)
    assert imprinting_problems(graph) == [] and imprinting_layout(graph).num_classes == 3
    counts = graph.description().split()
    assert counts[0::2] == ["0", "1", "2"]
    # red had 7 training images in the base and got 6 more: its norm grew
    base_norms = Graph.load(path).description().split()[1::2]
    assert float(counts[3]) > float(base_norms[1]) + 3
    # and once more, from the continued model: it still carries what re-whitening needs
    again = make_dataset(tmp_path / "again", classes=("hstripes",), per_class=8)
    make_dataset(tmp_path / "again", classes=("vstripes",), per_class=8)
    out2 = tmp_path / "five.tflite"
    result = invoke("imprint", again, "--base", out, "--keep-classes", "-o", out2, "--json")
    assert result.code == 0, result.describe()
    chained = json.loads(result.stdout)
    assert chained["settings"]["rewhitened"] and chained["top_k_accuracy"][0] == 1.0
    assert chained["classes"] == ["green", "red", "blue", "hstripes", "vstripes"]
    everything = make_dataset(tmp_path / "all", per_class=6, seed=9,
                              classes=("red", "green", "blue", "hstripes", "vstripes"))  # fmt: skip
    evaluated = json.loads(invoke("evaluate", out2, everything, "--json").stdout)
    assert evaluated["top_k_accuracy"][0] == 1.0


@pytest.mark.parametrize("whiten", ["--whiten", "--no-whiten"])
def test_one_class_folder_continues_a_model_one_class_at_a_time(
    tmp_path: Path, models: dict[str, Path], whiten: str
) -> None:
    """pycoral's on-device workflow: a class is added, then another, then more images of one."""
    base = tmp_path / "base.tflite"
    two = make_dataset(tmp_path / "two", classes=("red", "green"), per_class=8)
    made = invoke("imprint", two, "-e", models["uint8"], whiten, "-o", base, "--json")
    assert made.code == 0, made.describe()
    model = base
    for step, (name, seed) in enumerate([("blue", 1), ("hstripes", 2), ("red", 3)]):
        folder = make_dataset(tmp_path / f"step{step}", classes=(name,), per_class=8, seed=seed)
        out = tmp_path / f"step{step}.tflite"
        result = invoke("imprint", folder, "--base", model, "--keep-classes", "-o", out, "--json")
        assert result.code == 0, result.describe()
        report = json.loads(result.stdout)
        assert report["counts"]["test"] == {name: 2} and report["num_images"] == 2
        assert report["top_k_accuracy"][0] == 1.0
        model = out
    assert report["classes"] == ["green", "red", "blue", "hstripes"]
    assert model.with_suffix(".txt").read_text() == "0 green\n1 red\n2 blue\n3 hstripes\n"
    everything = make_dataset(tmp_path / "all", classes=("red", "green", "blue", "hstripes"),
                              per_class=6, seed=9)  # fmt: skip
    evaluated = json.loads(invoke("evaluate", model, everything, "--all", "--json").stdout)
    assert evaluated["top_k_accuracy"][0] == 1.0 and evaluated["num_images"] == 24
    alone = make_dataset(tmp_path / "alone", classes=("blue",), per_class=8)
    refused = invoke("imprint", alone, "--base", base, "-o", tmp_path / "x.tflite")
    assert refused.code == 2 and "needs at least 2 class folders" in refused.stderr


def test_duplicate_labels_are_refused_in_a_base_and_anywhere_else(
    tmp_path: Path, base_model: tuple[Path, Path]
) -> None:
    path, _ = base_model
    edited = tmp_path / "edited.tflite"
    shutil.copy(path, edited)
    edited.with_suffix(".txt").write_text("0 green\n1 green\n")  # by hand: red renamed green
    data = make_dataset(tmp_path / "more", classes=("green",), per_class=6)
    out = tmp_path / "o.tflite"
    result = invoke("imprint", data, "--base", edited, "--keep-classes", "-o", out)
    assert_error(result, "'green' is given to ids 0 and 1")
    assert not out.exists()
    photo = next((data / "green").iterdir())
    assert_error(invoke("classify", edited, photo), "'green' is given to ids 0 and 1")
    labels = tmp_path / "plain.txt"
    labels.write_text("green\nred\ngreen\n")
    assert_error(invoke("classify", path, photo, "--labels", labels), "ids 0 and 2")


def test_base_without_keep_classes_has_only_the_new_classes(
    tmp_path: Path, base_model: tuple[Path, Path]
) -> None:
    path, _ = base_model
    data = make_dataset(tmp_path / "new", classes=("blue", "vstripes"), per_class=8)
    out = tmp_path / "new.tflite"
    result = invoke("imprint", data, "--base", path, "-o", out, "--json")
    assert result.code == 0, result.describe()
    assert json.loads(result.stdout)["classes"] == ["blue", "vstripes"]


def test_base_without_whitening_statistics_reuses_its_extractor_to_the_l2norm(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    data = make_dataset(tmp_path / "two", classes=("red", "green"), per_class=8)
    base = tmp_path / "plain.tflite"
    made = invoke("imprint", data, "-e", models["uint8"], "--no-whiten", "-o", base, "--json")
    assert made.code == 0, made.describe()
    more = make_dataset(tmp_path / "more", classes=("blue",), per_class=8)
    make_dataset(tmp_path / "more", classes=("vstripes",), per_class=8)
    out = tmp_path / "four.tflite"
    result = invoke("imprint", more, "--base", base, "--keep-classes", "-o", out, "--json")
    assert result.code == 0, result.describe()
    report = json.loads(result.stdout)
    assert report["settings"]["rewhitened"] is False
    assert report["classes"] == ["green", "red", "blue", "vstripes"]
    assert report["top_k_accuracy"][0] == 1.0


def test_base_class_not_trained_by_imprinting_is_refused(
    tmp_path: Path, base_model: tuple[Path, Path]
) -> None:
    path, _ = base_model
    graph = Graph.load(path)
    graph.set_description("0 4.0\n")  # red (id 1) has no training state
    frozen = write_model(tmp_path / "frozen.tflite", graph.to_bytes())
    shutil.copy(path.with_suffix(".txt"), frozen.with_suffix(".txt"))
    data = make_dataset(tmp_path / "more", classes=("red",), per_class=4)
    make_dataset(tmp_path / "more", classes=("blue",), per_class=4)
    result = invoke(
        "imprint", data, "--base", frozen, "--keep-classes", "-o", tmp_path / "o.tflite"
    )
    assert result.code == 2
    assert "red" in result.stderr and "not trained by imprinting" in result.stderr
    assert not (tmp_path / "o.tflite").exists()


def test_base_options_are_checked(
    tmp_path: Path, base_model: tuple[Path, Path], models: dict[str, Path]
) -> None:
    path, data = base_model
    both = invoke(
        "imprint", data, "--base", path, "-e", models["uint8"], "-o", tmp_path / "a.tflite"
    )
    assert both.code == 2 and "--base" in both.stderr
    alone = invoke("imprint", data, "-e", models["uint8"], "--keep-classes")
    assert alone.code == 2 and "--keep-classes needs a base model" in alone.stderr
    not_imprinting = invoke("imprint", data, "--base", models["uint8"], "-o", tmp_path / "b.tflite")
    assert not_imprinting.code == 2 and "not an imprinting model" in not_imprinting.stderr


# --- extractor surgery ---------------------------------------------------------------------------


def classifier_on(extractor: bytes, classes: int = 4) -> Graph:
    graph = Graph.from_bytes(extractor)
    dim = graph.shape(graph.outputs[0])[-1]
    weights = np.random.default_rng(0).normal(size=(classes, dim))
    append_softmax_regression_tail(graph, weights, np.zeros(classes), (-8.0, 8.0))
    return graph


@pytest.mark.parametrize("dtype", ["uint8", "int8", "float32"])
def test_extractor_cut_from_a_classifier_gives_the_extractors_embeddings(
    tmp_path: Path, dtype: str
) -> None:
    original = tiny_extractor(dtype)
    classifier = write_model(tmp_path / "clf.tflite", classifier_on(original).to_bytes())
    out = tmp_path / "cut.tflite"
    result = invoke("extractor", classifier, "-o", out, "--json")
    assert result.code == 0, result.describe()
    info = json.loads(result.stdout)
    assert info["embedding_dim"] == 8 and info["cut_at_tensor"] == "embedding"
    assert info["ops_dropped"] == 2  # FULLY_CONNECTED and SOFTMAX
    cut, reference = load_model(out), load_model("ref", content=original)
    assert cut.output.shape == (1, 8) and cut.output.dtype == reference.output.dtype
    image = np.random.default_rng(1).integers(0, 255, size=(1, 32, 32, 3))
    x = image.astype(reference.input.dtype) if dtype != "float32" else image / 255.0
    x = x.astype(reference.input.dtype)
    np.testing.assert_array_equal(cut.run(x).reshape(-1), reference.run(x).reshape(-1))
    graph = Graph.load(out)
    assert "FULLY_CONNECTED" not in graph.op_names()
    # the FC weights are gone (the standard metadata workbench adds is not counted)
    assert len(without_standard_metadata(out.read_bytes())) < os.path.getsize(classifier)


def test_extractor_cut_at_a_named_tensor(tmp_path: Path) -> None:
    classifier = write_model(
        tmp_path / "clf.tflite", classifier_on(tiny_extractor("uint8")).to_bytes()
    )
    result = invoke(
        "extractor", classifier, "--tensor", "conv", "-o", tmp_path / "c.tflite", "--json"
    )
    assert result.code == 0, result.describe()
    assert json.loads(result.stdout)["embedding_dim"] == 15 * 15 * 8
    missing = invoke("extractor", classifier, "--tensor", "nope", "-o", tmp_path / "d.tflite")
    assert missing.code == 2 and "no tensor named 'nope'" in missing.stderr


def test_extractor_refuses_logits_inside_the_edgetpu_op(tmp_path: Path) -> None:
    graph = Graph.load(fake_edgetpu_model(tmp_path))
    graph.tensors[graph.outputs[0]].quantization = Quant.per_tensor(0.1, 0).to_schema()
    compiled = write_model(tmp_path / "clf_edgetpu.tflite", graph.to_bytes())
    result = invoke("extractor", compiled, "-o", tmp_path / "x.tflite")
    assert result.code == 2
    assert "cut the CPU build" in result.stderr and not (tmp_path / "x.tflite").exists()


# --- devices -------------------------------------------------------------------------------------

FAKE_LIBEDGETPU = r"""
#include <stddef.h>
#include <stdlib.h>
enum edgetpu_device_type { EDGETPU_APEX_PCI = 0, EDGETPU_APEX_USB = 1 };
struct edgetpu_device { enum edgetpu_device_type type; const char* path; };
static struct edgetpu_device devices[] = {
    {EDGETPU_APEX_USB, "/sys/bus/usb/devices/2-1"},
    {EDGETPU_APEX_PCI, "/dev/apex_0"},
    {EDGETPU_APEX_USB, "/sys/bus/usb/devices/2-2"},
};
struct edgetpu_device* edgetpu_list_devices(size_t* num_devices) {
  *num_devices = 3;
  struct edgetpu_device* out = malloc(sizeof(devices));
  for (int i = 0; i < 3; ++i) out[i] = devices[i];
  return out;
}
void edgetpu_free_devices(struct edgetpu_device* dev) { free(dev); }
const char* edgetpu_version(void) { return "fake libedgetpu for tests"; }
"""


def test_devices_without_a_runtime_says_how_to_install(tmp_path: Path) -> None:
    env = {**os.environ, "WORKBENCH_EDGETPU_LIBRARY": str(tmp_path / "missing.so")}
    result = subprocess.run(
        [sys.executable, "-m", "workbench", "devices"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0
    assert "No Edge TPU runtime installed" in result.stdout and "libedgetpu1-std" in result.stdout


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler to build the test library")
def test_devices_reads_libedgetpus_device_list(tmp_path: Path) -> None:
    # libedgetpu's C API, implemented by a stand-in library: it exercises the ctypes binding
    # (struct layout, free) the way the real library is called, with no device needed.
    source = tmp_path / "fake.c"
    source.write_text(FAKE_LIBEDGETPU)
    library = tmp_path / "libedgetpu.so.1"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", library, source], check=True)
    env = {**os.environ, "WORKBENCH_EDGETPU_LIBRARY": str(library)}
    result = subprocess.run(
        [sys.executable, "-m", "workbench", "devices", "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert listed["version"] == "fake libedgetpu for tests"
    assert [(d["device"], d["type"], d["any"]) for d in listed["devices"]] == [
        ("usb:0", "usb", ":0"), ("pci:0", "pci", ":1"), ("usb:1", "usb", ":2"),
    ]  # fmt: skip
    assert listed["devices"][1]["path"] == "/dev/apex_0"


def test_bad_device_string_is_refused(tmp_path: Path, models: dict[str, Path]) -> None:
    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(image)
    result = invoke("classify", models["uint8"], image, "--device", "usb0")
    assert result.code == 2 and "bad device 'usb0'" in result.stderr


# --- on real Coral models (../shared) ------------------------------------------------------------


@pytest.fixture(scope="module")
def flowers_all_at_once(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("all") / "all.tflite"
    result = invoke("imprint", shared_file(FLOWERS), "-e", shared_file(CORAL_EXTRACTOR), "-o", out,
                 "--json")  # fmt: skip
    assert result.code == 0, result.describe()
    return json.loads(result.stdout)


@pytest.mark.shared
@pytest.mark.parametrize(
    "first", [("daisy", "dandelion", "roses"), ("roses", "sunflowers", "tulips")]
)
def test_flowers_three_then_two_is_within_002_of_all_five(
    tmp_path: Path, flowers_all_at_once: dict, first: tuple[str, ...]
) -> None:
    flowers = shared_file(FLOWERS)
    extractor = shared_file(CORAL_EXTRACTOR)
    then = [c for c in ("daisy", "dandelion", "roses", "sunflowers", "tulips") if c not in first]
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    for name in first:
        (first_dir / name).symlink_to(flowers / name)
    for name in then:
        (second_dir / name).symlink_to(flowers / name)
    three = tmp_path / "three.tflite"
    assert invoke("imprint", first_dir, "-e", extractor, "-o", three, "--json").code == 0
    five = tmp_path / "five.tflite"
    result = invoke("imprint", second_dir, "--base", three, "--keep-classes", "-o", five, "--json")
    assert result.code == 0, result.describe()
    report = json.loads(result.stdout)
    assert set(report["counts"]["train"]) == set(then) and report["settings"]["rewhitened"]
    assert report["extracted_images"] == sum(
        len(report["split"][part][c]) for part in ("train", "test") for c in then
    )
    merged = json.loads(invoke("evaluate", five, flowers, "--json").stdout)
    assert merged["num_images"] == flowers_all_at_once["num_images"] == 780
    gap = flowers_all_at_once["top_k_accuracy"][0] - merged["top_k_accuracy"][0]
    assert abs(gap) <= 0.02


@pytest.mark.shared
@pytest.mark.parametrize(
    "name", ["mobilenet_v2_1.0_224_quant.tflite", "tf2_mobilenet_v2_1.0_224_ptq.tflite"]
)
def test_extractor_cut_from_coral_mobilenet_v2_imprints_flowers(tmp_path: Path, name: str) -> None:
    flowers = shared_file(FLOWERS)
    cut = tmp_path / "v2_extractor.tflite"
    result = invoke("extractor", shared_file(CORAL / name), "-o", cut, "--json")
    assert result.code == 0, result.describe()
    assert json.loads(result.stdout)["embedding_dim"] == 1280
    trained = invoke("imprint", flowers, "-e", cut, "-o", tmp_path / "v2.tflite", "--json")
    assert trained.code == 0, trained.describe()
    assert json.loads(trained.stdout)["top_k_accuracy"][0] >= 0.80
