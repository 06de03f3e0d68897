"""`workbench live`, `capture` and `bench live` on videos and folders the tests write.

No camera here: video files made with OpenCV's VideoWriter (MJPG in .avi, whose frames decode
the same every time), folders of images, and `--fps`, which plays a file as a live source (a
frame every 1/fps seconds whether or not the model keeps up) to exercise the dropping of
stale frames. Real interpreters and real models throughout.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.builders import assert_error, assert_ok, class_image, invoke, make_dataset, run_cli
from workbench.data import frames

try:
    import cv2
except ImportError:  # the camera extra, or the test extra's OpenCV, is not installed
    pytest.skip(
        "OpenCV is not installed (pip install 'workbench[camera]')", allow_module_level=True
    )

STYLES = ("red", "green", "blue")


def write_video(path: Path, styles: list[str], per_style: int, size: tuple[int, int] = (160, 120),
                seed: int = 0) -> Path:  # fmt: skip
    """A video of `per_style` frames of each style in turn (MJPG .avi or mp4v .mp4)."""
    rng = np.random.default_rng(seed)
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix == ".avi" else "mp4v"))
    writer = cv2.VideoWriter(str(path), fourcc, 30, size)
    assert writer.isOpened()
    for style in styles:
        for _ in range(per_style):
            rgb = np.asarray(class_image(style, rng, size=size[1]).resize(size))
            writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def read_back(path: Path) -> list[np.ndarray]:
    """The frames of a video as OpenCV decodes them (BGR)."""
    capture = cv2.VideoCapture(str(path))
    found = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return found
        found.append(frame)


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]) -> Path:
    """An imprinting model of the three colours, on the tiny uint8 extractor."""
    root = tmp_path_factory.mktemp("live")
    data = make_dataset(root / "data", classes=STYLES, per_class=10)
    out = root / "colours.tflite"
    assert_ok(invoke("imprint", data, "-e", models["uint8"], "-o", out, "--json"))
    return out


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "colours.avi", list(STYLES), 12)


def live_lines(*args: object) -> tuple[list[dict], dict]:
    outcome = invoke("live", *args, "--json")
    assert_ok(outcome)
    lines = [json.loads(line) for line in outcome.stdout.splitlines()]
    assert "summary" in lines[-1]
    return lines[:-1], lines[-1]["summary"]


def test_live_agrees_with_classify_on_every_frame(
    tmp_path: Path, colour_model: Path, video: Path
) -> None:
    results, summary = live_lines(colour_model, "--source", video, "--top-k", "3")
    assert [r["index"] for r in results] == list(range(36)) and summary["classified"] == 36
    assert summary["frames_read"] == 36 and summary["dropped"] == 0
    saved = tmp_path / "frames"
    saved.mkdir()
    for i, bgr in enumerate(read_back(video)):  # the frames as the source decodes them
        cv2.imwrite(str(saved / f"{i:03d}.png"), bgr)
    classified = invoke("classify", colour_model, saved, "--top-k", "3", "--json")
    assert_ok(classified)
    for result, image in zip(results, json.loads(classified.stdout)["results"], strict=True):
        assert result["top"] == image["top"]  # same classes, same scores
    assert [r["top"][0]["label"] for r in results] == [s for s in STYLES for _ in range(12)]


def test_every_n_classifies_one_frame_in_n_and_save_writes_every_frame(
    tmp_path: Path, colour_model: Path, video: Path
) -> None:
    annotated = tmp_path / "annotated.mp4"
    results, summary = live_lines(colour_model, "--source", video, "--every", "5",
                                  "--save", annotated)  # fmt: skip
    assert [r["index"] for r in results] == list(range(0, 36, 5))
    assert summary["classified"] == 8 and summary["frames_read"] == 36
    assert summary["saved"] == str(annotated)
    written = read_back(annotated)
    assert len(written) == 36 and written[0].shape == (120, 160, 3)
    assert not list(tmp_path.glob(".*partial*"))


def test_a_folder_plays_as_frames_in_name_order(tmp_path: Path, colour_model: Path) -> None:
    folder = make_dataset(tmp_path / "photos", classes=("blue",), per_class=4) / "blue"
    results, _ = live_lines(colour_model, "--source", folder)
    assert [r["top"][0]["label"] for r in results] == ["blue"] * 4


def test_a_live_source_faster_than_the_model_drops_stale_frames(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    """60 frames offered at 400 a second to the bundled EfficientNet-Lite0 (several ms a
    frame here): the newest frame wins, the rest are dropped and counted, and latency stays
    within a few invokes instead of growing with the backlog."""
    data = make_dataset(tmp_path / "data", classes=STYLES, per_class=4)
    model = tmp_path / "bundled.tflite"
    assert_ok(invoke("imprint", data, "-o", model, "--json"))
    clip = write_video(tmp_path / "clip.avi", list(STYLES), 20, size=(320, 240))
    results, summary = live_lines(model, "--source", clip, "--fps", "400")
    assert summary["frames_read"] == 60
    assert summary["dropped"] > 0
    assert summary["classified"] + summary["dropped"] == 60
    assert summary["classified"] == len(results)
    assert sum(r["dropped_before"] for r in results) <= summary["dropped"]
    indexes = [r["index"] for r in results]
    assert indexes == sorted(indexes)
    # a backlog of 60 frames would mean hundreds of ms by the end; the newest frame wins
    assert summary["latency_ms_p95"] < 250


def test_capture_writes_numbered_jpegs_and_never_overwrites(tmp_path: Path, video: Path) -> None:
    folder = tmp_path / "data" / "red"
    outcome = invoke("capture", folder, "--source", video, "--count", "3", "--interval", "0",
                     "--json")  # fmt: skip
    assert_ok(outcome)
    first = [Path(p).name for p in json.loads(outcome.stdout)["files"]]
    assert first == ["capture_0001.jpg", "capture_0002.jpg", "capture_0003.jpg"]
    (folder / "capture_0005.jpg").write_bytes(b"someone else's photo")
    again = invoke("capture", folder, "--source", video, "--count", "3", "--interval", "0.5",
                   "--json")  # fmt: skip
    assert_ok(again)
    names = [Path(p).name for p in json.loads(again.stdout)["files"]]
    assert names == ["capture_0006.jpg", "capture_0007.jpg", "capture_0008.jpg"]
    assert (folder / "capture_0005.jpg").read_bytes() == b"someone else's photo"
    for name in first + names:
        assert cv2.imread(str(folder / name)).shape == (120, 160, 3)
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_capture_then_imprint_then_live_through_the_cli(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    for i, style in enumerate(STYLES):  # one video per class, as one holds up each object
        clip = write_video(tmp_path / f"{style}.avi", [style], 8, seed=i)
        assert_ok(run_cli("capture", data / style, "--source", clip, "--count", "8",
                          "--interval", "0"))  # fmt: skip
    model = tmp_path / "captured.tflite"
    assert_ok(run_cli("imprint", data, "-e", models["uint8"], "-o", model))
    scene = write_video(tmp_path / "scene.avi", ["green", "blue", "red"], 5, seed=9)
    outcome = run_cli("live", model, "--source", scene, "--json")
    assert_ok(outcome)
    lines = [json.loads(line) for line in outcome.stdout.splitlines()]
    labels = [line["top"][0]["label"] for line in lines[:-1]]
    assert labels == ["green"] * 5 + ["blue"] * 5 + ["red"] * 5


def test_bench_live_prints_its_ratio(colour_model: Path, video: Path) -> None:
    outcome = invoke("bench", "live", colour_model, "--source", video, "--json")
    assert_ok(outcome)
    figures = json.loads(outcome.stdout)
    assert figures["frames"] == 36 and figures["live_fps"] > 0 and figures["invoke_only_fps"] > 0
    assert figures["live_over_invoke_only"] == pytest.approx(  # each rounded on its own
        figures["live_fps"] / figures["invoke_only_fps"], rel=0.01, abs=0.0006
    )
    assert figures["latency_ms_p95"] >= figures["latency_ms_median"] > 0


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("missing.avi", "source not found"),
        ("notes.txt", "not a video OpenCV reads"),
        ("7", "cannot open camera 7"),
        ("/dev/video97", "no camera device /dev/video97"),
    ],
)
def test_bad_sources_are_one_error_line(
    tmp_path: Path, colour_model: Path, source: str, needle: str
) -> None:
    (tmp_path / "notes.txt").write_text("not a video")
    outcome = run_cli("live", colour_model, "--source", source, cwd=tmp_path)
    assert_error(outcome, needle)
    assert_error(run_cli("capture", tmp_path / "d" / "c", "--source", source, cwd=tmp_path),
                 needle)  # fmt: skip


def test_save_never_writes_over_the_source(tmp_path: Path, colour_model: Path, video: Path) -> None:
    copy = tmp_path / "clip.avi"
    copy.write_bytes(video.read_bytes())
    assert_error(invoke("live", colour_model, "--source", copy, "--save", copy), "write over")
    assert copy.read_bytes() == video.read_bytes()


def test_without_opencv_the_camera_commands_say_how_to_install_it(
    tmp_path: Path, colour_model: Path, video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "cv2", None)  # as if not installed
    outcome = invoke("live", colour_model, "--source", video)
    assert_error(outcome, 'pip install "workbench[camera]"')


def test_the_python_api_iterates_results_and_captures(
    tmp_path: Path, colour_model: Path, video: Path
) -> None:
    import workbench as wb

    run = wb.live(colour_model, source=video, every=3)
    labels = [result.top[0]["label"] for result in run]
    assert labels == [s for s in STYLES for _ in range(4)]
    assert run.summary.classified == 12 and run.summary.frames_read == 36
    written = wb.capture(tmp_path / "data" / "blue", source=video, count=2, interval=0)
    assert [p.name for p in written] == ["capture_0001.jpg", "capture_0002.jpg"]
    assert frames.Frame(0, 0.0, np.zeros((2, 2, 3), np.uint8), "BGR").image().size == (2, 2)
