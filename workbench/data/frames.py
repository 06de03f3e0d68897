"""Frames from a camera, a video file, a stream or a folder of images (`live`, `capture`).

A source is named the way a user types it: a camera index (`0`), a device (`/dev/video2`),
the Raspberry Pi camera (`picam`, through picamera2 where it is importable), a stream URL
(`rtsp://`, `http://`), a video file, or a folder of images played in name order. Video and
cameras go through OpenCV (`pip install "workbench[camera]"`), which is imported only here and
only when such a source is opened: the core install stays without it.

Cameras and streams are *live*: frames keep coming whether or not they are used, so a
reader that falls behind takes the newest and the rest are dropped (`Reader`). Files and
folders are played in order, every frame; `Paced` plays one as if it were live,
at a fixed rate, which is how the dropping is exercised without a camera.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
from PIL import Image

from workbench.core.errors import WorkbenchError
from workbench.core.native import native_stderr
from workbench.data.dataset import check_folder, image_files_under
from workbench.data.images import ImageError, decode_rgb

CAMERA_EXTRA = 'pip install "workbench[camera]"'
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


@dataclass(frozen=True)
class Frame:
    """One frame: its place in the source, when it was taken, its pixels.

    Cameras and video give BGR pixels (OpenCV's order); they are turned into RGB only where
    needed, and a model input is made from them in one pass (`image`), which spares a copy
    of every frame.
    """

    index: int  # 0-based, counting every frame the source gave (dropped ones included)
    timestamp: float  # seconds: the video's own clock, or since a live source was opened
    data: np.ndarray  # uint8 [height, width, 3], in `order`
    order: str = "RGB"  # or "BGR"

    @property
    def pixels(self) -> np.ndarray:
        """RGB uint8 [height, width, 3]."""
        return self.data if self.order == "RGB" else np.ascontiguousarray(self.data[..., ::-1])

    def image(self) -> Image.Image:
        """The frame as an RGB Pillow image (from BGR, reordered while it is read in)."""
        if self.order == "RGB":
            return Image.fromarray(self.data)
        data = np.ascontiguousarray(self.data)
        height, width = data.shape[:2]
        return Image.frombuffer("RGB", (width, height), data, "raw", "BGR", 0, 1)


class FrameSource(Protocol):
    """Where frames come from. `read` gives None at the end (a file) or when a live source
    stops; `live` sources keep producing frames whether or not they are read."""

    live: bool
    description: str

    def read(self) -> Frame | None: ...
    def close(self) -> None: ...


def opencv() -> Any:
    """OpenCV's module, or a WorkbenchError saying how to install it."""
    # Its own log (a missing camera, a codec probe) goes straight to stderr; silenced before
    # the first import where the variable is read, and after it where the module can say so.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    try:
        import cv2
    except ImportError:
        raise WorkbenchError(
            f"camera and video sources need OpenCV, which is not installed: {CAMERA_EXTRA}"
        ) from None
    # OpenCV prints its own warnings (a missing camera, a codec probe) on stderr; the
    # errors that matter are turned into one line here instead.
    with contextlib.suppress(AttributeError):  # builds without the logging module
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    return cv2


class VideoSource:
    """A camera, a stream or a video file, through OpenCV's VideoCapture."""

    def __init__(self, target: int | str, live: bool, description: str) -> None:
        cv2 = opencv()
        self.live, self.description = live, description
        self._cv2 = cv2
        with native_stderr():  # older OpenCV logs its probes whatever the level says
            self._capture = cv2.VideoCapture(target)
            opened = self._capture.isOpened()
        self._index = 0
        self._opened = time.monotonic()
        if not opened:
            self._capture.release()
            camera = isinstance(target, int) or str(target).startswith("/dev/")
            why = "no such camera, or it is in use" if camera else "not a video OpenCV reads"
            raise WorkbenchError(f"cannot open {description}: {why}")
        self.fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.frame_count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)

    def read(self) -> Frame | None:
        ok, bgr = self._capture.read()
        if not ok or bgr is None:
            return None
        if self.live:
            stamp = time.monotonic() - self._opened
        else:
            position = self._capture.get(self._cv2.CAP_PROP_POS_MSEC)
            stamp = position / 1000.0 if position else self._index / (self.fps or 30.0)
        frame = Frame(self._index, stamp, bgr, "BGR")
        self._index += 1
        return frame

    def close(self) -> None:
        self._capture.release()


class FolderSource:
    """The images of a folder (and below it), in name order, as frames."""

    live = False

    def __init__(self, folder: Path) -> None:
        check_folder(folder, "folder")
        self.files = sorted(image_files_under(folder, [], "folder"))
        if not self.files:
            raise WorkbenchError(f"no images in folder {folder}")
        self.description = str(folder)
        self._next = 0

    def read(self) -> Frame | None:
        while self._next < len(self.files):
            index, self._next = self._next, self._next + 1
            try:
                pixels = decode_rgb(self.files[index])
            except ImageError:
                continue  # as `classify` does: an unreadable file is no frame
            return Frame(index, float(index), pixels)
        return None

    def close(self) -> None:
        pass


class PicameraSource:  # pragma: no cover - needs a Raspberry Pi camera
    """The Raspberry Pi camera through picamera2 (libcamera), as RGB frames."""

    live = True
    description = "Raspberry Pi camera"

    def __init__(self) -> None:
        try:
            from picamera2 import Picamera2  # type: ignore[import-not-found]
        except ImportError:
            raise WorkbenchError(
                "--source picam needs picamera2 (on Raspberry Pi OS: apt install "
                "python3-picamera2, in a venv made with --system-site-packages)"
            ) from None
        try:
            self._camera = Picamera2()
            config = self._camera.create_video_configuration(main={"format": "RGB888"})
            self._camera.configure(config)
            self._camera.start()
        except Exception as e:  # picamera2 raises plain exceptions for a missing camera
            raise WorkbenchError(f"cannot open the Raspberry Pi camera: {e}") from None
        self._index, self._opened = 0, time.monotonic()

    def read(self) -> Frame | None:
        # picamera2's "RGB888" is BGR in memory order, as OpenCV's frames are
        bgr = self._camera.capture_array()[..., :3]
        frame = Frame(self._index, time.monotonic() - self._opened, bgr, "BGR")
        self._index += 1
        return frame

    def close(self) -> None:
        self._camera.stop()


def open_source(spec: str | Path) -> FrameSource:
    """The source a user named (see the module's docstring); one-line errors for bad ones."""
    text = str(spec).strip()
    if text.isdigit():
        return VideoSource(int(text), True, f"camera {text}")
    if text == "picam":
        return PicameraSource()
    if text.lower().startswith(STREAM_SCHEMES):
        return VideoSource(text, True, f"stream {text}")
    path = Path(text)
    if text.startswith("/dev/"):
        if not path.exists():
            raise WorkbenchError(f"no camera device {text}")
        return VideoSource(text, True, f"camera {text}")
    if path.is_dir():
        return FolderSource(path)
    if not path.exists():
        raise WorkbenchError(
            f"source not found: {text} (a camera index such as 0, a device such as "
            "/dev/video0, picam, a stream URL, a video file or a folder of images)"
        )
    if not path.is_file():
        raise WorkbenchError(f"not a video file or folder: {text}")
    return VideoSource(os.fspath(path), False, str(path))


class Paced:
    """A file or folder played as a live source: one frame every 1/fps seconds, whether or
    not the reader keeps up (it gets the newest; what it missed is dropped)."""

    live = True
    ends = True  # at the end of the file, unlike a camera

    def __init__(self, source: FrameSource, fps: float) -> None:
        self._source, self._period = source, 1.0 / fps
        self.description = f"{source.description} at {fps:g} frames/s"
        self._start: float | None = None
        self._read = 0

    def read(self) -> Frame | None:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._read * self._period
        frame = self._source.read()
        if frame is None:
            return None
        self._read += 1
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        return Frame(frame.index, due - self._start, frame.data, frame.order)

    def close(self) -> None:
        self._source.close()


T = TypeVar("T")


@dataclass
class Delivery(Generic[T]):
    """What a reader gives: the item, and how many items were dropped before it."""

    item: T
    dropped_before: int


class Reader(Generic[T]):
    """Reads a source in a thread of its own, preparing each frame there (`prepare`).

    In order (`live` False): every frame, a few ahead. Latest (`live` True): one slot, the
    newest frame wins; frames replaced before they were taken are counted as dropped, so
    the reader never falls behind a camera by more than one frame.
    """

    def __init__(self, source: FrameSource, prepare: Callable[[Frame], T], ahead: int = 4) -> None:
        self.source, self.live = source, source.live
        self._prepare = prepare
        self._items: deque[T] = deque()
        self._limit = 1 if self.live else max(1, ahead)
        self._dropped = 0
        self._done = False
        self._error: BaseException | None = None
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self.frames_read = 0
        self._thread = threading.Thread(target=self._run, name="frames", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                frame = self.source.read()
                if frame is None:
                    break
                item = self._prepare(frame)
                with self._lock:
                    self.frames_read += 1
                    if self.live:
                        self._dropped += len(self._items)
                        self._items.clear()
                    else:
                        while len(self._items) >= self._limit and not self._stop.is_set():
                            self._lock.wait(0.1)
                    self._items.append(item)
                    self._lock.notify_all()
        except BaseException as e:  # handed to the consumer, which raises it
            self._error = e
        finally:
            with self._lock:
                self._done = True
                self._lock.notify_all()

    def get(self) -> Delivery[T] | None:
        """The next item (the newest, for a live source), or None once the source ended."""
        with self._lock:
            while not self._items and not self._done:
                self._lock.wait(0.1)
            if self._error is not None:
                raise self._error
            if not self._items:
                return None
            item = self._items.popleft()
            dropped, self._dropped = self._dropped, 0
            self._lock.notify_all()
            return Delivery(item, dropped)

    def __iter__(self) -> Iterator[Delivery[T]]:
        while (delivery := self.get()) is not None:
            yield delivery

    @property
    def ended(self) -> bool:
        """Whether the source itself ended (rather than the reader being closed)."""
        return self._done and not self._stop.is_set()

    @property
    def dropped(self) -> int:
        """Frames dropped so far and not yet reported by `get` (those still in the slot)."""
        return self._dropped

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        self._thread.join(timeout=5)
        self.source.close()


def save_frame(pixels: np.ndarray, path: Path, quality: int = 95) -> None:
    """Write a frame as a JPEG (what `capture` keeps)."""
    Image.fromarray(pixels).save(path, format="JPEG", quality=quality)
