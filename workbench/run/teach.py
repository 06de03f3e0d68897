"""`workbench teach`: classes taught from the camera, live, then saved as a dataset and a model.

A `TeachSession` keeps the camera running (the newest frame wins, as in `live`), embeds each
frame with the extractor and predicts it with the classes taught so far: plain imprinting,
one normalized embedding added to its class's sum per example, so an example added now
changes the very next prediction (no retraining). Examples are the current frame or an
uploaded image, each embedded once. `save` writes every example as a JPEG into `DATA/CLASS/`
(numbered on after what is there, never over a file) and then trains and exports exactly as
`workbench imprint DATA` does (whitening chosen by cross-validation, labels, standard
metadata, report), so the saved model is that command's model.

The web page and the HTTP API over a session are `workbench.run.teach_server`.
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from workbench.core.errors import WorkbenchError
from workbench.core.options import DataOptions, ImprintOptions, RunOptions
from workbench.core.progress import Reporter
from workbench.data.frames import Frame, FrameSource, Reader
from workbench.data.images import MAX_PIXELS, Preprocessing, fitted, to_input
from workbench.data.labels import label_problem
from workbench.extract.runtime import load_model
from workbench.heads.imprint import l2_normalize
from workbench.heads.imprint_head import DEFAULT_SCALE_FACTOR
from workbench.run.capture import next_number, save_new
from workbench.run.trainers import Imprint, bundled_source
from workbench.run.training import train

THUMBNAIL = 96  # pixels on the long side of an example's thumbnail
MAX_EXAMPLES = 2_000  # per class: a held record button is capped, memory too


def class_name_problem(name: str) -> str | None:
    """Why `name` cannot be a class (None if it can): the rules class folders follow."""
    if not isinstance(name, str):
        return "is not text"
    problem = label_problem(name)
    if problem:
        return problem
    if name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name:
        return "is not a folder name (no /, \\, or leading dot)"
    if len(name.encode("utf-8")) > 200:
        return "is longer than 200 bytes"
    return None


@dataclass
class Example:
    """One taught example: its pixels (saved as a JPEG), embedding and thumbnail."""

    pixels: np.ndarray  # RGB uint8, as taken
    embedding: np.ndarray  # [D] float64, unit length
    thumbnail: bytes  # JPEG
    saved: Path | None = None  # where `save` wrote it


@dataclass
class TaughtClass:
    name: str
    examples: list[Example] = field(default_factory=list)


@dataclass
class Prediction:
    """The newest frame's classes by score, and how fast frames are classified."""

    scores: dict[str, float]
    frame_index: int
    fps: float


def thumbnail_of(pixels: np.ndarray) -> bytes:
    image = Image.fromarray(pixels)
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80)
    return out.getvalue()


def decode_upload(data: bytes) -> np.ndarray:
    """An uploaded JPEG or PNG as RGB pixels; anything else is refused (WorkbenchError)."""
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG", "PNG")) as image:
            if image.size[0] * image.size[1] > MAX_PIXELS:
                raise WorkbenchError("the image has too many pixels")
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise WorkbenchError("the body is not a JPEG or PNG image") from None


class TeachSession:
    """Classes taught from a source's frames (see the module docstring).

    >>> import workbench as wb
    >>> from workbench.data.frames import open_source
    >>> session = TeachSession(open_source("flowers/daisy"), data_dir="taught")
    >>> session.add_class("daisy")
    >>> session.add_image("daisy", open("flowers/daisy/daisy_000.jpg", "rb").read())
    1
    >>> session.close()
    """

    def __init__(
        self,
        source: FrameSource,
        data_dir: str | Path,
        extractor: str | Path | None = None,
        device: str | None = None,
        reporter: Reporter | None = None,
        output: str | Path | None = None,
    ) -> None:
        self.source = source
        self.data_dir = Path(data_dir)
        self.output = Path(output) if output else None  # None: as `workbench imprint DATA`
        given = RunOptions(extractor=Path(extractor) if extractor else None)
        self.extractor = bundled_source(given).path
        self.device = device
        self.reporter = reporter or Reporter()
        self.model = load_model(self.extractor, device=device)
        self.prep = Preprocessing.for_input(self.model.input)
        self.classes: list[TaughtClass] = []
        self.lock = threading.RLock()
        self.model_lock = threading.Lock()
        self.saving = threading.Lock()
        self.latest: tuple[Frame, np.ndarray] | None = None  # the newest frame, its embedding
        self.latest_jpeg: bytes | None = None
        self.prediction = Prediction({}, -1, 0.0)
        self._stop = threading.Event()
        self._reader: Reader[Frame] = Reader(source, lambda frame: frame)
        self._thread = threading.Thread(target=self._predict_frames, name="teach", daemon=True)
        self._thread.start()

    # --- the camera ---------------------------------------------------------------------

    def embed(self, pixels_or_frame: Frame | np.ndarray) -> np.ndarray:
        """The unit-length embedding of a frame or of RGB pixels."""
        if isinstance(pixels_or_frame, Frame):
            image = pixels_or_frame.image()
        else:
            image = Image.fromarray(pixels_or_frame)
        model_input = to_input(fitted(image, self.prep), self.prep)
        with self.model_lock:  # one interpreter: the camera's frames and uploads take turns
            raw = self.model.run(model_input)
            vector = self.model.output.dequantize(raw).reshape(-1).astype(np.float64)
        return l2_normalize(vector[np.newaxis])[0]

    def _predict_frames(self) -> None:
        done, started, warned = 0, time.perf_counter(), False
        while not self._stop.is_set():
            try:
                delivery = self._reader.get()
            except Exception as e:  # the source failed: the page keeps its last frame
                self.reporter.warn(f"{self.source.description} stopped: {e}")
                return
            if delivery is None:
                return  # the source ended; the page keeps its last frame
            frame = delivery.item
            try:
                embedding = self.embed(frame)
            except WorkbenchError as e:  # one bad frame: say so once, go on with the next
                if not warned:
                    self.reporter.warn(f"a frame could not be classified: {e}")
                    warned = True
                continue
            jpeg = io.BytesIO()
            frame.image().save(jpeg, format="JPEG", quality=80)
            done += 1
            with self.lock:
                self.latest = (frame, embedding)
                self.latest_jpeg = jpeg.getvalue()
                fps = done / max(time.perf_counter() - started, 1e-9)
                self.prediction = Prediction(self._scores(embedding), frame.index, fps)

    def _scores(self, embedding: np.ndarray) -> dict[str, float]:
        """softmax(scale x cosine) of the embedding against each taught class (with examples)."""
        taught = [c for c in self.classes if c.examples]
        if not taught:
            return {}
        sums = np.stack([np.sum([e.embedding for e in c.examples], axis=0) for c in taught])
        cosines = l2_normalize(sums) @ embedding
        logits = DEFAULT_SCALE_FACTOR * (cosines - cosines.max())
        scores = np.exp(logits) / np.exp(logits).sum()
        return {c.name: float(s) for c, s in zip(taught, scores, strict=True)}

    # --- classes and examples -----------------------------------------------------------------

    def find(self, name: str) -> TaughtClass:
        for taught in self.classes:
            if taught.name == name:
                return taught
        raise KeyError(name)

    def add_class(self, name: str) -> None:
        problem = class_name_problem(name)
        if problem:
            raise WorkbenchError(f"class name {name!r} {problem}")
        with self.lock:
            if any(c.name == name for c in self.classes):
                raise WorkbenchError(f"there is already a class {name!r}")
            self.classes.append(TaughtClass(name))

    def delete_class(self, name: str) -> None:
        with self.lock:
            self.classes.remove(self.find(name))

    def _add(self, name: str, pixels: np.ndarray, embedding: np.ndarray) -> int:
        with self.lock:
            taught = self.find(name)
            if len(taught.examples) >= MAX_EXAMPLES:
                raise WorkbenchError(f"class {name!r} has {MAX_EXAMPLES} examples already")
            taught.examples.append(Example(pixels, embedding, thumbnail_of(pixels)))
            if self.latest is not None:  # the next prediction is already the new head's
                self.prediction.scores = self._scores(self.latest[1])
            return len(taught.examples)

    def add_current_frame(self, name: str) -> int:
        """The newest frame as an example of `name`; returns the class's example count."""
        self.find(name)
        with self.lock:
            if self.latest is None:
                raise WorkbenchError("no frame from the camera yet")
            frame, embedding = self.latest
        return self._add(name, frame.pixels, embedding)

    def add_image(self, name: str, data: bytes) -> int:
        """An uploaded JPEG or PNG as an example of `name`; returns the example count."""
        self.find(name)
        pixels = decode_upload(data)
        return self._add(name, pixels, self.embed(pixels))

    def delete_example(self, name: str, index: int) -> None:
        with self.lock:
            examples = self.find(name).examples
            if not 0 <= index < len(examples):
                raise KeyError(index)
            del examples[index]

    def state(self) -> dict[str, Any]:
        with self.lock:
            prediction = self.prediction
            best = max(prediction.scores, key=prediction.scores.__getitem__, default=None)
            return {
                "classes": [
                    {
                        "name": c.name,
                        "examples": len(c.examples),
                        "unsaved": sum(e.saved is None for e in c.examples),
                    }
                    for c in self.classes
                ],
                "prediction": best,
                "scores": prediction.scores,
                "frame": prediction.frame_index,
                "fps": round(prediction.fps, 2),
                "source": self.source.description,
                "data_dir": str(self.data_dir),
            }

    def unsaved(self) -> int:
        with self.lock:
            return sum(e.saved is None for c in self.classes for e in c.examples)

    # --- saving -------------------------------------------------------------------------------

    def save(self) -> dict[str, Any]:
        """Write the examples into DATA/CLASS/ and train as `workbench imprint DATA` would."""
        if not self.saving.acquire(blocking=False):
            raise WorkbenchError("a save is already running")
        try:
            with self.lock:
                classes = [(c.name, list(c.examples)) for c in self.classes if c.examples]
            if len(classes) < 2:
                raise WorkbenchError("teach at least 2 classes before saving")
            short = [name for name, examples in classes if len(examples) < 2]
            if short:
                raise WorkbenchError(f"every class needs 2 examples or more: {', '.join(short)}")
            written = []
            for name, examples in classes:
                folder = self.data_dir / name
                folder.mkdir(parents=True, exist_ok=True)
                number = next_number(folder)
                for example in examples:
                    if example.saved is None:
                        frame = Frame(0, 0.0, example.pixels)
                        example.saved, number = save_new(frame, folder, number)
                        number += 1
                        written.append(example.saved)
            data = DataOptions()
            run = RunOptions(
                extractor=self.extractor, device=self.device,
                output=self.output,
            )  # fmt: skip
            result = train(self.data_dir, Imprint(ImprintOptions(), data.seed), data, run,
                           self.reporter)  # fmt: skip
            report = result.report
            return {
                "written": [str(p) for p in written],
                "model": str(result.model),
                "labels": str(result.labels),
                "report": str(result.report_path),
                "html": str(result.html_path),
                "classes": report.classes,
                "held_out_images": report.num_images,
                "top1": report.top1,
            }
        finally:
            self.saving.release()

    def close(self) -> None:
        self._stop.set()
        self._reader.close()
        self._thread.join(timeout=5)
