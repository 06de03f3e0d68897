"""Standard TFLite Metadata on real models: round trip, packing, replacing, and other readers."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from typer.testing import CliRunner

from tests.conftest import CORAL, shared_file
from workbench.cli import app
from workbench.core.errors import WorkbenchError
from workbench.data.images import Preprocessing, load_input, to_input
from workbench.heads.imprint_head import WHITENING_METADATA
from workbench.model.export import METADATA_NAME
from workbench.tflite.generated import metadata_schema as ms
from workbench.tflite.graph import Graph
from workbench.tflite.metadata import (
    LABELS_FILE_NAME,
    STANDARD_METADATA_NAME,
    ModelMetadata,
    labels_from_model,
    minimum_parser_version,
    packed_files,
    read_standard_metadata,
    with_standard_metadata,
    without_standard_metadata,
)

CLASSES = ["blue", "green", "red"]
CORAL_CLASSIFIER = CORAL / "mobilenet_v2_1.0_224_quant.tflite"
# (pixel - mean) / std for the tiny extractors' inputs: uint8 and int8 are quantized with
# scale 1/128 (zero point 128 and 0), float32 takes workbench's (pixel - 127.5) / 127.5.
NORMALIZATION = {"uint8": (128.0, 128.0), "int8": (128.0, 128.0), "float32": (127.5, 127.5)}
PRIVATE_WHITENING = b"whitening statistics stand-in"


@pytest.fixture(scope="module")
def classifiers(
    tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path], colors: Path
) -> dict[str, bytes]:
    """Colour classifiers of every input type, as `workbench imprint` writes them, stripped.

    workbench writes standard metadata itself; it is removed here so each test starts from a
    model without it. A stand-in whitening entry is added so that both of workbench's private
    entries are there.
    """
    root = tmp_path_factory.mktemp("classifiers")
    built = {}
    for dtype in NORMALIZATION:
        out = root / f"colors_{dtype}.tflite"
        args = ["imprint", colors, "-e", models[dtype], "-o", out, "--no-whiten", "--json"]
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        written = out.read_bytes()
        assert labels_from_model(written) == CLASSES  # what workbench itself attaches
        graph = Graph.from_bytes(without_standard_metadata(written))
        graph.set_metadata(WHITENING_METADATA, PRIVATE_WHITENING)
        built[dtype] = graph.to_bytes()
    return built


def describe(labels: list[str] | None = CLASSES, name: str = "colors") -> ModelMetadata:
    return ModelMetadata(
        name=name,
        description="Tells red, green and blue images apart.",
        version="3",
        labels=labels,
        license="Apache-2.0",
    )


def entry_names(model: bytes) -> list[str]:
    graph = Graph.from_bytes(model)
    return [bytes(m.name).decode() for m in graph.model.metadata or []]


def run(model: bytes, inputs: list[np.ndarray]) -> list[np.ndarray]:
    interpreter = Interpreter(model_content=model)
    interpreter.allocate_tensors()
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    outputs = []
    for batch in inputs:
        interpreter.set_tensor(input_index, batch)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(output_index).copy())
    return outputs


def some_images(colors: Path) -> list[Path]:
    return sorted(colors.glob("*/*.png"))[::4]


@pytest.mark.parametrize("dtype", list(NORMALIZATION))
def test_every_field_reads_back(classifiers: dict[str, bytes], dtype: str) -> None:
    mean, std = NORMALIZATION[dtype]
    model = with_standard_metadata(classifiers[dtype], describe())
    assert read_standard_metadata(model) == {
        "name": "colors",
        "description": "Tells red, green and blue images apart.",
        "version": "3",
        "author": "workbench",
        "license": "Apache-2.0",
        "min_parser_version": "1.0.0",
        "subgraph_metadata": [
            {
                "input_tensor_metadata": [
                    {
                        "name": "image",
                        "description": "Input image to be classified.",
                        "content": {
                            "content_properties_type": "ImageProperties",
                            "content_properties": {"color_space": "RGB"},
                        },
                        "process_units": [
                            {
                                "options_type": "NormalizationOptions",
                                "options": {"mean": [mean], "std": [std]},
                            }
                        ],
                        "stats": {"min": [(0 - mean) / std], "max": [(255 - mean) / std]},
                    }
                ],
                "output_tensor_metadata": [
                    {
                        "name": "probability",
                        "description": "Probabilities of the 3 labels respectively.",
                        "content": {
                            "content_properties_type": "FeatureProperties",
                            "content_properties": {},
                        },
                        "stats": {"min": [0.0], "max": [1.0]},
                        "associated_files": [
                            {
                                "name": LABELS_FILE_NAME,
                                "description": "Labels for categories that the model can "
                                "recognize.",
                                "type": "TENSOR_AXIS_LABELS",
                            }
                        ],
                    }
                ],
            }
        ],
    }
    assert labels_from_model(model) == CLASSES


@pytest.mark.parametrize("dtype", list(NORMALIZATION))
def test_normalization_gives_the_real_values_workbench_feeds(
    classifiers: dict[str, bytes], dtype: str
) -> None:
    """(pixel - mean) / std must equal what the model computes on for workbench's input."""
    model = with_standard_metadata(classifiers[dtype], describe())
    image = read_standard_metadata(model)["subgraph_metadata"][0]["input_tensor_metadata"][0]
    options = image["process_units"][0]["options"]
    mean, std = options["mean"][0], options["std"][0]
    graph = Graph.from_bytes(model)
    quant = graph.quant(graph.inputs[0])
    pixels = np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3)
    fed = to_input(pixels, Preprocessing(16, 16, dtype))[0].astype(np.float64)
    real = fed if quant is None else quant.scale[0] * (fed - quant.zero_point[0])
    np.testing.assert_allclose((pixels - mean) / std, real, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", list(NORMALIZATION))
def test_model_with_metadata_runs_identically(
    classifiers: dict[str, bytes], colors: Path, dtype: str
) -> None:
    model = with_standard_metadata(classifiers[dtype], describe())
    prep = Preprocessing(32, 32, dtype)
    inputs = [load_input(path, prep) for path in some_images(colors)]
    for before, after in zip(run(classifiers[dtype], inputs), run(model, inputs), strict=True):
        np.testing.assert_array_equal(before, after)


def test_labels_are_a_stored_zip_appended_after_the_flatbuffer(
    classifiers: dict[str, bytes],
) -> None:
    model = with_standard_metadata(classifiers["uint8"], describe())
    assert packed_files(model) == {LABELS_FILE_NAME: b"blue\ngreen\nred\n"}
    flatbuffer = Graph.from_bytes(model).to_bytes()
    assert model.startswith(flatbuffer) and model[len(flatbuffer) :].startswith(b"PK\x03\x04")
    with zipfile.ZipFile(io.BytesIO(model)) as archive:
        (entry,) = archive.infolist()
    assert entry.compress_type == zipfile.ZIP_STORED  # MediaPipe rejects compressed files
    assert entry.header_offset == len(flatbuffer)  # offsets from the file start, as tflite-support


def test_reattaching_replaces_metadata_and_packed_files(classifiers: dict[str, bytes]) -> None:
    first = with_standard_metadata(classifiers["uint8"], describe())
    assert with_standard_metadata(first, describe()) == first  # nothing accumulates
    renamed = with_standard_metadata(first, describe(["azure", "lime", "crimson"], "renamed"))
    assert entry_names(renamed).count(STANDARD_METADATA_NAME) == 1
    assert read_standard_metadata(renamed)["name"] == "renamed"
    assert labels_from_model(renamed) == ["azure", "lime", "crimson"]
    assert renamed.count(b"PK\x05\x06") == 1  # one archive (one end record), the new one
    assert packed_files(renamed) == {LABELS_FILE_NAME: b"azure\nlime\ncrimson\n"}

    unlabelled = with_standard_metadata(renamed, describe(labels=None))
    assert packed_files(unlabelled) == {} and labels_from_model(unlabelled) is None
    output = read_standard_metadata(unlabelled)["subgraph_metadata"][0]["output_tensor_metadata"]
    assert "associated_files" not in output[0]


def test_private_entries_survive(classifiers: dict[str, bytes]) -> None:
    original = Graph.from_bytes(classifiers["uint8"])
    model = with_standard_metadata(classifiers["uint8"], describe())
    assert entry_names(model) == [*entry_names(classifiers["uint8"]), STANDARD_METADATA_NAME]
    for stage in (model, without_standard_metadata(model)):
        graph = Graph.from_bytes(stage)
        assert graph.metadata(METADATA_NAME) == original.metadata(METADATA_NAME)
        assert graph.metadata(WHITENING_METADATA) == PRIVATE_WHITENING


def test_without_standard_metadata_drops_entry_and_archive(
    classifiers: dict[str, bytes], colors: Path
) -> None:
    model = with_standard_metadata(classifiers["float32"], describe())
    bare = without_standard_metadata(model)
    assert read_standard_metadata(bare) is None and labels_from_model(bare) is None
    assert packed_files(bare) == {} and b"PK\x03\x04" not in bare
    assert entry_names(bare) == entry_names(classifiers["float32"])
    assert without_standard_metadata(bare) == bare  # nothing to drop: unchanged
    inputs = [load_input(p, Preprocessing(32, 32, "float32")) for p in some_images(colors)]
    for before, after in zip(run(model, inputs), run(bare, inputs), strict=True):
        np.testing.assert_array_equal(before, after)


def test_repacking_drops_the_archive_so_metadata_comes_last(
    classifiers: dict[str, bytes],
) -> None:
    repacked = Graph.from_bytes(with_standard_metadata(classifiers["uint8"], describe())).to_bytes()
    assert read_standard_metadata(repacked) is not None and packed_files(repacked) == {}
    with pytest.raises(WorkbenchError, match=f"names {LABELS_FILE_NAME} but it is not packed"):
        labels_from_model(repacked)


def test_model_without_metadata_reads_as_none(classifiers: dict[str, bytes]) -> None:
    plain = classifiers["int8"]
    assert read_standard_metadata(plain) is None
    assert labels_from_model(plain) is None and packed_files(plain) == {}


def test_labels_must_fit_the_model(classifiers: dict[str, bytes]) -> None:
    with pytest.raises(WorkbenchError, match="2 labels for a model with 3 outputs"):
        with_standard_metadata(classifiers["uint8"], describe(["blue", "green"]))
    with pytest.raises(WorkbenchError, match="cannot be written to a labels file"):
        with_standard_metadata(classifiers["uint8"], describe(["blue", "gr\neen", "red"]))


def test_min_parser_version_follows_the_newest_member_used() -> None:
    metadata = ms.ModelMetadataT()
    subgraph = ms.SubGraphMetadataT()
    metadata.subgraphMetadata = [subgraph]
    assert minimum_parser_version(metadata) == "1.0.0"
    vocabulary = ms.AssociatedFileT()
    vocabulary.type = ms.AssociatedFileType.VOCABULARY
    metadata.associatedFiles = [vocabulary]
    assert minimum_parser_version(metadata) == "1.0.1"
    subgraph.inputProcessUnits = []
    assert minimum_parser_version(metadata) == "1.1.0"
    subgraph.outputTensorGroups = []
    assert minimum_parser_version(metadata) == "1.2.0"
    vocabulary.version = "2"
    assert minimum_parser_version(metadata) == "1.4.1"
    subgraph.customMetadata = []
    assert minimum_parser_version(metadata) == "1.5.0"


@pytest.mark.parametrize("dtype", ["uint8", "float32"])  # MediaPipe takes no int8 image input
def test_mediapipe_image_classifier_reads_the_class_names(
    classifiers: dict[str, bytes], colors: Path, dtype: str
) -> None:
    try:  # an optional reader: absent, or without wheels for this platform
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions
        from mediapipe.tasks.python.vision import ImageClassifier, ImageClassifierOptions
    except (ImportError, OSError) as e:  # absent, or a system library it loads is missing
        pytest.skip(f"MediaPipe Tasks cannot be imported: {e}")

    model = with_standard_metadata(classifiers[dtype], describe())
    images = some_images(colors)
    reference = run(model, [load_input(p, Preprocessing(32, 32, dtype)) for p in images])
    options = ImageClassifierOptions(base_options=BaseOptions(model_asset_buffer=model))
    with ImageClassifier.create_from_options(options) as classifier:
        for path, scores in zip(images, reference, strict=True):
            result = classifier.classify(mp.Image.create_from_file(str(path)))
            top = result.classifications[0].categories[0]
            assert top.index == int(np.argmax(scores[0]))
            assert top.category_name == CLASSES[top.index] == path.parent.name


@pytest.mark.shared
def test_reads_the_metadata_of_a_coral_classifier() -> None:
    model = shared_file(CORAL_CLASSIFIER).read_bytes()
    metadata = read_standard_metadata(model)
    assert metadata is not None
    assert metadata["name"] == "ImageClassifier"
    assert metadata["min_parser_version"] == "1.0.0"
    (subgraph,) = metadata["subgraph_metadata"]
    image = subgraph["input_tensor_metadata"][0]
    assert image["content"]["content_properties"] == {"color_space": "RGB"}
    assert image["process_units"][0]["options"] == {"mean": [127.5], "std": [127.5]}
    (labels_file,) = subgraph["output_tensor_metadata"][0]["associated_files"]
    assert labels_file["name"] == "imagenet_labels.txt"
    assert labels_file["type"] == "TENSOR_AXIS_LABELS"

    labels = labels_from_model(model)
    assert labels is not None and len(labels) == 1001
    assert labels[:2] == ["background", "tench, Tinca tinca"]
    assert packed_files(model) == {
        "imagenet_labels.txt": (CORAL / "imagenet_labels.txt").read_bytes()
    }
    raw = Graph.from_bytes(model).metadata(STANDARD_METADATA_NAME)
    assert minimum_parser_version(ms.ModelMetadataT.InitFromPackedBuf(raw, 0)) == "1.0.0"


@pytest.mark.shared
def test_coral_classifier_without_metadata_still_loads_and_agrees() -> None:
    model = shared_file(CORAL_CLASSIFIER).read_bytes()
    bare = without_standard_metadata(model)
    assert read_standard_metadata(bare) is None and packed_files(bare) == {}
    assert entry_names(bare) == [n for n in entry_names(model) if n != STANDARD_METADATA_NAME]
    inputs = [load_input(CORAL / "images" / "parrot.jpg", Preprocessing(224, 224, "uint8"))]
    np.testing.assert_array_equal(run(model, inputs)[0], run(bare, inputs)[0])
