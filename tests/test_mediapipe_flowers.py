"""MediaPipe Tasks' ImageClassifier names flower photos as `workbench classify` does (../shared).

Models from `workbench imprint` and `workbench backprop`, over the bundled extractor and over
one cut from Coral's MobileNet v2 classifier with `workbench extractor`, are read by MediaPipe
through their standard metadata alone: the class names come from the packed labels file.

What is compared. MediaPipe is given the pixels workbench decodes (RGB at the model's input
size), so both run the same model on the same input: names and scores must agree exactly.
Given the file instead, MediaPipe decodes the JPEG itself (stb_image is built into its
library), differing from Pillow's libjpeg-turbo (and OpenCV's) by up to 3 levels on about 5%
of the pixels; the flower photos here are 224x224 already, so neither side resizes. That
moves scores by up to 0.05 on the models trained here and flips one borderline image: with
backprop over MobileNet v2, classify ties dandelion and sunflowers at 0.387, MediaPipe from
the file says sunflowers 0.41, dandelion 0.35. Fed MediaPipe's decoded pixels, the
interpreter gives MediaPipe's scores exactly. So from the file, only images whose top-1 leads
by more than MARGIN must keep it. Images of another size would be resized, which differs more:
MediaPipe samples bilinearly without antialiasing (an OpenCV bilinear warp comes within 0.06
of its scores) where Pillow filters; on the same photos scaled to 320x240 or 640x480, scores
moved by up to 0.3 and 0-2 of 20 names changed per model. Those are compared on the same
pixels only.

Skipped without ../shared or without an importable MediaPipe (an optional reader, with wheels
for some platforms only).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from PIL import Image
from threadpoolctl import threadpool_limits

from tests.builders import CORAL, FLOWERS, shared_file
from workbench.data.images import Preprocessing, decode

pytestmark = pytest.mark.shared

CLI = Callable[..., Any]  # the `cli` fixture: a command's --json output
CORAL_CLASSIFIER = CORAL / "mobilenet_v2_1.0_224_quant.tflite"
TRAIN_PER_CLASS = 14  # 10 trained on (--max-per-class), 4 held out for the training report
PROBE_PER_CLASS = 4  # 5 classes: the 20 images compared, none of them seen in training
# Top-1 margin of workbench's scores above which MediaPipe's own JPEG decoding must not change
# the name: more than twice the largest score change decoding caused (0.0625, over 8 models).
MARGIN = 0.15
TRAINERS = {"imprint": (), "backprop": ("--epochs", "10")}


@pytest.fixture(autouse=True)
def one_blas_thread() -> Any:
    """Backprop's whitening takes four eigendecompositions of a 1280 x 1280 matrix. On a busy
    2-core machine OpenBLAS's threads make them 5 to 20 times slower (measured: 44-56 s per
    backprop test, 4-6 s on one thread); the results do not depend on the thread count."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def vision() -> Any:
    """MediaPipe's Python module and ImageClassifier classes, or skip with the reason."""
    try:
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions
        from mediapipe.tasks.python.vision import ImageClassifier, ImageClassifierOptions
    except (ImportError, OSError) as e:  # absent, or a system library it loads is missing
        pytest.skip(f"MediaPipe Tasks cannot be imported: {e}")
    return mp, BaseOptions, ImageClassifier, ImageClassifierOptions


@pytest.fixture(scope="module")
def flowers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small training folder and a 20-image probe folder, disjoint, from flower_photos.

    A copy rather than `--max-per-class` on all of flower_photos: training still extracts
    every held-out image for its report (780 at the default test ratio).
    """
    source = shared_file(FLOWERS)
    root = tmp_path_factory.mktemp("flowers")
    train, probe = root / "train", root / "probe"
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        images = sorted(folder.glob("*.jpg"))[: TRAIN_PER_CLASS + PROBE_PER_CLASS]
        for dest, chosen in ((train, images[:TRAIN_PER_CLASS]), (probe, images[TRAIN_PER_CLASS:])):
            (dest / folder.name).mkdir(parents=True)
            for image in chosen:
                shutil.copyfile(image, dest / folder.name / image.name)
    assert len(list(probe.glob("*/*.jpg"))) == 20
    return train, probe


@pytest.fixture(scope="module")
def extractors(tmp_path_factory: pytest.TempPathFactory, cli: CLI) -> dict[str, tuple[str, ...]]:
    """The trainers' extractor options: none (the bundled one), or one cut from MobileNet v2."""
    cut = tmp_path_factory.mktemp("extractors") / "mobilenet_v2_extractor.tflite"
    out = cli("extractor", shared_file(CORAL_CLASSIFIER), "-o", cut)
    assert out["embedding_dim"] == 1280 and out["output_dtype"] == "uint8"
    return {"bundled": (), "mobilenet_v2": ("-e", str(cut))}


@pytest.mark.parametrize("trainer", list(TRAINERS))
@pytest.mark.parametrize("extractor", ["bundled", "mobilenet_v2"])
def test_mediapipe_gives_the_top1_names_of_classify(
    tmp_path: Path,
    vision: Any,
    flowers: tuple[Path, Path],
    extractors: dict[str, tuple[str, ...]],
    cli: CLI,
    extractor: str,
    trainer: str,
) -> None:
    mp, BaseOptions, ImageClassifier, ImageClassifierOptions = vision
    train, probe = flowers
    model = tmp_path / f"{extractor}_{trainer}.tflite"
    cli(trainer, train, *extractors[extractor], "-o", model, "--max-per-class", "10",
        *TRAINERS[trainer])  # fmt: skip
    classified = cli("classify", model, probe, "--top-k", "5", "--repeat", "0")["results"]
    assert [Path(item["file"]).parent.parent for item in classified] == [probe] * 20

    interpreter = Interpreter(model_path=str(model))
    spec = interpreter.get_input_details()[0]
    assert spec["dtype"] == np.uint8  # MediaPipe takes uint8 or float32 images, not int8
    prep = Preprocessing(width=int(spec["shape"][2]), height=int(spec["shape"][1]), dtype="uint8")

    options = ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(model)))
    same_pixels, from_file = [], []
    with ImageClassifier.create_from_options(options) as classifier:
        for item in classified:
            pixels = np.ascontiguousarray(decode(item["file"], prep))
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=pixels)
            same_pixels.append(classifier.classify(image).classifications[0].categories)
            image = mp.Image.create_from_file(item["file"])
            from_file.append(classifier.classify(image).classifications[0].categories)

    for item, categories, decoded_by_mediapipe in zip(
        classified, same_pixels, from_file, strict=True
    ):
        ours = [(t["label"], round(t["score"], 4)) for t in item["top"]]
        theirs = [(c.category_name, round(c.score, 4)) for c in categories]
        message = f"{item['file']}: classify {ours}, MediaPipe {theirs}"
        names = {c.index: c.category_name for c in categories}
        assert names == {t["id"]: t["label"] for t in item["top"]}, message  # same labels file
        # Classify's top-1, or with an exact tie in the 8-bit output any of the tied classes:
        # classify takes the lowest index (like argmax), MediaPipe what its sort leaves first.
        # A tie happens here (one image, backprop over MobileNet v2); both name the same today.
        tied = [t["label"] for t in item["top"] if t["score"] == item["top"][0]["score"]]
        assert theirs[0][0] in tied, message
        by_name = {c.category_name: c.score for c in categories}
        for entry in item["top"]:
            assert by_name[entry["label"]] == pytest.approx(entry["score"], abs=1e-6), message

        margin = item["top"][0]["score"] - item["top"][1]["score"]
        with Image.open(item["file"]) as photo:
            resized = photo.size != (prep.width, prep.height)
        if margin > MARGIN and not resized:  # resizing differs more: see the module docstring
            theirs = [(c.category_name, round(c.score, 4)) for c in decoded_by_mediapipe]
            message = f"{item['file']}: classify {ours}, MediaPipe from the file {theirs}"
            assert decoded_by_mediapipe[0].category_name == ours[0][0], message
