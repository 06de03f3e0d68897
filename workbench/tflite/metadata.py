"""Standard TFLite Metadata: attach, read and remove the `TFLITE_METADATA` entry and its files.

Other runtimes learn a classifier's class names and input normalization only from this entry
(the public metadata_schema.fbs, file identifier "M001"): MediaPipe Tasks' ImageClassifier, the
TFLite Task Library and Android Studio's ML model binding all read it. The labels file it names
is not inside the flatbuffer: as tflite-support's MetadataPopulator does, it is packed into a
zip archive (stored, not deflated, because the readers hand out views into the model buffer)
appended after the flatbuffer, whose own parser ignores the trailing bytes.

Attaching metadata must be the last step before a model is written: re-packing the flatbuffer
(`Graph.to_bytes()`) drops the appended archive, so every function here takes and returns the
final file bytes.
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import flatbuffers
import numpy as np

from workbench.core.errors import WorkbenchError
from workbench.tflite.generated import metadata_schema as ms
from workbench.tflite.graph import Graph
from workbench.tflite.quant import representable

STANDARD_METADATA_NAME = "TFLITE_METADATA"
METADATA_FILE_IDENTIFIER = b"M001"
LABELS_FILE_NAME = "labels.txt"
# Float inputs get (pixel - 127.5) / 127.5, as workbench.data.images.Preprocessing feeds them.
FLOAT_INPUT_MEAN = 127.5
FLOAT_INPUT_STD = 127.5
# int8 inputs get pixel - 128 (workbench.data.images.to_input), uint8 inputs the pixel itself.
PIXEL_OFFSET = {"uint8": 0, "int8": -128}
# The largest file read from a model's packed archive (workbench packs only a labels file):
# an archive can claim gigabytes that a few bytes of deflated data expand to.
MAX_PACKED_FILE_BYTES = 16 << 20
# What a crafted archive can raise besides BadZipFile: an encrypted entry (RuntimeError), an
# unknown compression (NotImplementedError), deflated data that is not (zlib.error), ...
_ARCHIVE_ERRORS = (
    zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, NotImplementedError, EOFError,
    zlib.error, ValueError, OSError,
)  # fmt: skip
# A fixed timestamp keeps the packed archive, and so the model file, reproducible.
_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class ModelMetadata:
    """What a caller says about a classifier; tensor facts are read from the model itself."""

    name: str
    description: str
    version: str
    labels: Sequence[str] | None = None
    author: str = "workbench"
    license: str | None = None
    input_description: str = "Input image to be classified."
    output_description: str | None = None  # None: "Probabilities of the N labels respectively."
    # "probability" (a classifier) or "embedding" (an extractor: a feature vector, no labels)
    output: str = "probability"


def with_standard_metadata(model: bytes, info: ModelMetadata) -> bytes:
    """The model with a fresh `TFLITE_METADATA` entry and, with labels, the packed labels file.

    Any earlier standard metadata and packed archive are dropped, so re-attaching never leaves
    a stale entry or file behind; workbench's private entries are kept as they are. The model
    must be an image classifier: one RGB image input ([1, height, width, 3] of uint8, int8 or
    float32) and one output of class scores.
    """
    return graph_with_standard_metadata(Graph.from_bytes(model), info)


def graph_with_standard_metadata(graph: Graph, info: ModelMetadata) -> bytes:
    """`with_standard_metadata` for a model being built: the bytes of `graph` with it.

    Sets the entry on `graph` itself and packs it once, instead of packing, reading back and
    packing again (60 ms of every export of a MobileNet). A model that is not an image
    classifier raises WorkbenchError with `graph` left as it was.
    """
    buffer = _metadata_buffer(graph, info)  # first: it raises for a model it cannot describe
    if graph.metadata(STANDARD_METADATA_NAME) is not None:
        graph.remove_metadata(STANDARD_METADATA_NAME)
    graph.set_metadata(STANDARD_METADATA_NAME, buffer)
    flatbuffer = graph.to_bytes()  # packing also drops an archive appended after the model
    if info.labels is None:
        return flatbuffer
    return _append_archive(flatbuffer, {LABELS_FILE_NAME: labels_file_text(info.labels)})


def without_standard_metadata(model: bytes) -> bytes:
    """The model without `TFLITE_METADATA` and its packed files, other entries kept.

    For a model the metadata no longer describes, such as an embedding extractor cut from a
    classifier whose metadata names 1001 classes. A model with neither is returned unchanged.
    """
    graph = Graph.from_bytes(model)
    if graph.metadata(STANDARD_METADATA_NAME) is None and not packed_files(model):
        return model
    graph.remove_metadata(STANDARD_METADATA_NAME)
    return graph.to_bytes()


def read_standard_metadata(model: bytes) -> dict[str, Any] | None:
    """Every field of the model's `TFLITE_METADATA` as plain data, or None without one.

    Keys are the schema's field names (`subgraph_metadata`, `min_parser_version`, ...), enums
    and union types their names (`"RGB"`, `"NormalizationOptions"`), vectors lists, and fields
    the file leaves out are absent, so the result reads like the schema's JSON form.
    """
    metadata = _unpacked_metadata(model)
    return None if metadata is None else _plain(metadata)


def packed_files(model: bytes) -> dict[str, bytes]:
    """The files of the zip archive appended to the model, by name; empty without one (or
    with an archive that cannot be read). A file larger than MAX_PACKED_FILE_BYTES is a
    WorkbenchError, before it is expanded."""
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as archive:
            entries = archive.infolist()
            for entry in entries:
                if entry.file_size > MAX_PACKED_FILE_BYTES:
                    raise WorkbenchError(
                        f"the model's packed file {entry.filename!r} claims {entry.file_size:,} "
                        f"bytes, more than the {MAX_PACKED_FILE_BYTES:,} workbench reads"
                    )
            return {entry.filename: archive.read(entry) for entry in entries}
    except _ARCHIVE_ERRORS:
        return {}


def labels_from_model(model: bytes) -> list[str] | None:
    """The class names of the output's TENSOR_AXIS_LABELS file, or None when it has none.

    Read the way MediaPipe and the Task Library read them: one label per line, a final
    newline ignored. The first labels file of the first output counts, whatever its locale.
    """
    metadata = _unpacked_metadata(model)
    if metadata is None or not metadata.subgraphMetadata:
        return None
    outputs = metadata.subgraphMetadata[0].outputTensorMetadata or []
    files = (outputs[0].associatedFiles or []) if outputs else []
    names = [_text(f.name) for f in files if f.type == ms.AssociatedFileType.TENSOR_AXIS_LABELS]
    if not names:
        return None
    packed = packed_files(model)
    if names[0] not in packed:
        raise WorkbenchError(f"the model's metadata names {names[0]} but it is not packed in")
    lines = packed[names[0]].decode("utf-8", errors="replace").split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def labels_file_text(labels: Sequence[str]) -> bytes:
    """The TENSOR_AXIS_LABELS file: one plain label per line, line i naming output i."""
    for label in labels:
        if not label.strip() or "\n" in label or "\r" in label:
            raise WorkbenchError(f"class name {label!r} cannot be written to a labels file")
    return "".join(f"{label}\n" for label in labels).encode("utf-8")


def minimum_parser_version(metadata: ms.ModelMetadataT) -> str:
    """The oldest metadata parser that understands every field set, as `min_parser_version`.

    The rules of tflite-support's metadata_version.cc: 1.0.0 unless the metadata uses a member
    added later (VOCABULARY files 1.0.1, subgraph process units and tokenizers 1.1.0, tensor
    groups 1.2.0, the regex tokenizer 1.2.1, audio content 1.3.0, SCANN_INDEX_FILE 1.4.0, an
    associated file's version 1.4.1), plus subgraph custom metadata, 1.5.0 in the schema's
    history. Computed rather than written as a constant so that a field added here later
    cannot leave an older parser believing it understands the file.
    """
    found = [(1, 0, 0)]

    def files(entries: Sequence[ms.AssociatedFileT] | None) -> None:
        for entry in entries or []:
            if entry.type == ms.AssociatedFileType.VOCABULARY:
                found.append((1, 0, 1))
            if entry.type == ms.AssociatedFileType.SCANN_INDEX_FILE:
                found.append((1, 4, 0))
            if entry.version is not None:
                found.append((1, 4, 1))

    def units(entries: Sequence[ms.ProcessUnitT] | None) -> None:
        for entry in entries or []:
            found.append(_PROCESS_UNIT_VERSION.get(entry.optionsType, (1, 0, 0)))

    files(metadata.associatedFiles)
    for subgraph in metadata.subgraphMetadata or []:
        tensors = [*(subgraph.inputTensorMetadata or []), *(subgraph.outputTensorMetadata or [])]
        for tensor in tensors:
            files(tensor.associatedFiles)
            units(tensor.processUnits)
            content = tensor.content
            if content and content.contentPropertiesType == ms.ContentProperties.AudioProperties:
                found.append((1, 3, 0))
        files(subgraph.associatedFiles)
        for process_units in (subgraph.inputProcessUnits, subgraph.outputProcessUnits):
            if process_units is not None:
                found.append((1, 1, 0))
                units(process_units)
        if subgraph.inputTensorGroups is not None or subgraph.outputTensorGroups is not None:
            found.append((1, 2, 0))
        if subgraph.customMetadata is not None:
            found.append((1, 5, 0))
    return ".".join(str(part) for part in max(found))


_PROCESS_UNIT_VERSION = {
    ms.ProcessUnitOptions.BertTokenizerOptions: (1, 1, 0),
    ms.ProcessUnitOptions.SentencePieceTokenizerOptions: (1, 1, 0),
    ms.ProcessUnitOptions.RegexTokenizerOptions: (1, 2, 1),
}


# --- writing --------------------------------------------------------------------------------


def _metadata_buffer(graph: Graph, info: ModelMetadata) -> bytes:
    """The packed ModelMetadata flatbuffer for this graph, with its file identifier."""
    metadata = ms.ModelMetadataT()
    metadata.name = info.name
    metadata.description = _optional(info.description)
    metadata.version = _optional(info.version)
    metadata.author = _optional(info.author)
    metadata.license = _optional(info.license)
    subgraph = ms.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [_image_input(graph, info)]
    if info.output == "embedding":
        subgraph.outputTensorMetadata = [_embedding_output(graph, info)]
    else:
        subgraph.outputTensorMetadata = [_probability_output(graph, info)]
    metadata.subgraphMetadata = [subgraph]
    metadata.minParserVersion = minimum_parser_version(metadata)
    builder = flatbuffers.Builder(1024)
    builder.Finish(metadata.Pack(builder), file_identifier=METADATA_FILE_IDENTIFIER)
    return bytes(builder.Output())


def _image_input(graph: Graph, info: ModelMetadata) -> ms.TensorMetadataT:
    """The RGB image input, with the normalization that maps pixels onto its real values."""
    if len(graph.inputs) != 1:
        raise WorkbenchError(f"an image classifier has one input, this model {len(graph.inputs)}")
    index = graph.inputs[0]
    shape, dtype = graph.shape(index), graph.dtype(index).name
    if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
        raise WorkbenchError(f"model input {list(shape)} is not an RGB image [1, h, w, 3]")
    mean, std = _normalization(graph, index, dtype)
    tensor = ms.TensorMetadataT()
    tensor.name = "image"
    tensor.description = info.input_description
    image = ms.ImagePropertiesT()
    image.colorSpace = ms.ColorSpaceType.RGB
    tensor.content = _content(ms.ContentProperties.ImageProperties, image)
    normalization = ms.ProcessUnitT()
    normalization.optionsType = ms.ProcessUnitOptions.NormalizationOptions
    normalization.options = ms.NormalizationOptionsT()
    normalization.options.mean = [mean]
    normalization.options.std = [std]
    tensor.processUnits = [normalization]
    # The real values the input sees for pixels 0..255; for a quantized input that is its
    # dequantized range, for a float input the range after normalization.
    tensor.stats = _stats((0.0 - mean) / std, (255.0 - mean) / std)
    return tensor


def _normalization(graph: Graph, index: int, dtype: str) -> tuple[float, float]:
    """Mean and std such that (pixel - mean) / std is the real value the model computes on.

    A quantized input holds q = pixel + offset and means scale * (q - zero_point), so
    mean = zero_point - offset and std = 1 / scale; a float input gets workbench's [-1, 1].
    """
    if dtype == "float32":
        return FLOAT_INPUT_MEAN, FLOAT_INPUT_STD
    if dtype not in PIXEL_OFFSET:
        raise WorkbenchError(f"model input type {dtype} is not uint8, int8 or float32")
    quant = graph.quant(index)
    if quant is None or len(quant.scale) != 1:
        raise WorkbenchError(f"the {dtype} model input needs one quantization scale")
    return float(quant.zero_point[0] - PIXEL_OFFSET[dtype]), 1.0 / quant.scale[0]


def _probability_output(graph: Graph, info: ModelMetadata) -> ms.TensorMetadataT:
    """The class-probability output, with the labels file when there are labels."""
    if len(graph.outputs) != 1:
        raise WorkbenchError(f"a classifier has one output, this model {len(graph.outputs)}")
    shape = graph.shape(graph.outputs[0])
    classes = shape[-1] if shape else 0
    if int(np.prod(shape[1:], dtype=np.int64)) != classes:
        raise WorkbenchError(f"model output {list(shape)} is not one score per class")
    if info.labels is not None and len(info.labels) != classes:
        raise WorkbenchError(f"{len(info.labels)} labels for a model with {classes} outputs")
    tensor = ms.TensorMetadataT()
    tensor.name = "probability"
    tensor.description = info.output_description or (
        f"Probabilities of the {classes} labels respectively."
    )
    tensor.content = _content(ms.ContentProperties.FeatureProperties, ms.FeaturePropertiesT())
    tensor.stats = _stats(0.0, 1.0)
    if info.labels is not None:
        labels = ms.AssociatedFileT()
        labels.name = LABELS_FILE_NAME
        labels.description = "Labels for categories that the model can recognize."
        labels.type = ms.AssociatedFileType.TENSOR_AXIS_LABELS
        tensor.associatedFiles = [labels]
    return tensor


def _embedding_output(graph: Graph, info: ModelMetadata) -> ms.TensorMetadataT:
    """An extractor's output: a feature vector (no labels; its 8-bit range as stats)."""
    if len(graph.outputs) != 1 or info.labels is not None:
        raise WorkbenchError("an embedding extractor has one output and no labels")
    index = graph.outputs[0]
    tensor = ms.TensorMetadataT()
    tensor.name = "embedding"
    width = int(np.prod(graph.shape(index)[1:], dtype=np.int64))
    tensor.description = info.output_description or (
        f"Image embedding: {width} features to train a classifier's last layer on."
    )
    tensor.content = _content(ms.ContentProperties.FeatureProperties, ms.FeaturePropertiesT())
    quant = graph.quant(index)
    if quant is not None and graph.dtype(index).name in PIXEL_OFFSET:
        tensor.stats = _stats(*representable(quant, graph.dtype(index)))
    return tensor


def _content(properties_type: int, properties: object) -> ms.ContentT:
    content = ms.ContentT()
    content.contentPropertiesType = properties_type
    content.contentProperties = properties
    return content


def _stats(minimum: float, maximum: float) -> ms.StatsT:
    stats = ms.StatsT()
    stats.min = [minimum]
    stats.max = [maximum]
    return stats


def _append_archive(flatbuffer: bytes, files: Mapping[str, bytes]) -> bytes:
    """The flatbuffer followed by a zip of `files`, stored uncompressed.

    The archive is written at the end of the model bytes, so its offsets count from the start
    of the file, as in files tflite-support's MetadataPopulator appends to. Readers such as
    MediaPipe's metadata extractor reject compressed members: they return views into the model.
    """
    stream = io.BytesIO()
    stream.write(flatbuffer)
    with zipfile.ZipFile(stream, mode="w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            entry = zipfile.ZipInfo(name, date_time=_ZIP_DATE_TIME)
            entry.external_attr = 0o644 << 16  # an ordinary file when extracted
            archive.writestr(entry, data)
    return stream.getvalue()


def _optional(text: str | None) -> str | None:
    """Leave a field out rather than storing an empty string."""
    return text or None


# --- reading --------------------------------------------------------------------------------


def _unpacked_metadata(model: bytes) -> ms.ModelMetadataT | None:
    raw = Graph.from_bytes(model).metadata(STANDARD_METADATA_NAME)
    if not raw:
        return None
    if not ms.ModelMetadata.ModelMetadataBufferHasIdentifier(raw, 0):
        found = raw[4:8] if len(raw) >= 8 else raw
        raise WorkbenchError(f"{STANDARD_METADATA_NAME} is not metadata schema M001 ({found!r})")
    try:
        return ms.ModelMetadataT.InitFromPackedBuf(raw, 0)
    except Exception as e:  # flatbuffers raises struct.error, IndexError, ... on damaged input
        raise WorkbenchError(f"damaged {STANDARD_METADATA_NAME} entry ({e})") from None


def _enum_names(enum_class: type) -> dict[int, str]:
    return {value: name for name, value in vars(enum_class).items() if not name.startswith("_")}


# Which enum each enum-typed field of the object API holds, by (table, field).
_ENUMS = {
    ("AssociatedFileT", "type"): _enum_names(ms.AssociatedFileType),
    ("ImagePropertiesT", "colorSpace"): _enum_names(ms.ColorSpaceType),
    ("BoundingBoxPropertiesT", "type"): _enum_names(ms.BoundingBoxType),
    ("BoundingBoxPropertiesT", "coordinateType"): _enum_names(ms.CoordinateType),
    ("ScoreCalibrationOptionsT", "scoreTransformation"): _enum_names(ms.ScoreTransformationType),
    ("ContentT", "contentPropertiesType"): _enum_names(ms.ContentProperties),
    ("ProcessUnitT", "optionsType"): _enum_names(ms.ProcessUnitOptions),
}
# flatc camel-cases field names for Python; the one schema name that is not snake_case.
_IRREGULAR_FIELD_NAMES = {"sentencePieceModel": "sentencePiece_model"}


def _field_name(attribute: str) -> str:
    if attribute in _IRREGULAR_FIELD_NAMES:
        return _IRREGULAR_FIELD_NAMES[attribute]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", attribute).lower()


def _plain(value: Any, table: str = "", field: str = "") -> Any:
    """An object-API value as dicts, lists, str, bytes and numbers."""
    if (table, field) in _ENUMS:
        return _ENUMS[table, field].get(int(value), int(value))
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return value.tobytes() if value.dtype == np.uint8 else value.tolist()
    if isinstance(value, list):
        return [_plain(item, table, field) for item in value]
    if hasattr(value, "__dict__"):
        name = type(value).__name__
        return {
            _field_name(attribute): _plain(item, name, attribute)
            for attribute, item in vars(value).items()
            if item is not None and not _empty_union(value, attribute, item)
        }
    return value


def _empty_union(table: object, attribute: str, item: object) -> bool:
    """A union's type tag NONE, left out like the union value it announces."""
    return attribute.endswith("Type") and hasattr(table, attribute[: -len("Type")]) and item == 0


def _text(value: str | bytes | None) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else (value or "")
