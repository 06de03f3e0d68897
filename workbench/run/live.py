"""`workbench live`: a model on a camera, stream, video or folder, frame by frame.

A pipeline, not a loop: a reader thread takes frames from the source and makes each model
input there (`data.frames.Reader`; for a live source the newest frame wins and the rest are
dropped and counted, so latency stays bounded); one worker per interpreter runs the model (a
single-threaded replica per core on the CPU, the one interpreter of an Edge TPU); results
come out in frame order. The model input is made exactly as `classify` makes it from a file
(`data.images.fitted`), so a frame saved without loss and classified as a file gets the same
scores.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workbench.core.errors import WorkbenchError
from workbench.core.outputs import check_name, check_writable
from workbench.data.frames import Frame, FrameSource, Paced, Reader, open_source, opencv
from workbench.data.images import Preprocessing, fitted, to_input
from workbench.extract.runtime import LoadedModel, cpu_threads, load_model
from workbench.run.classify import model_labels, top_classes


@dataclass
class LiveResult:
    """One classified frame."""

    index: int  # the frame's place in the source
    timestamp: float  # the source's time of the frame, in seconds
    top: list[dict[str, Any]]  # {"id", "label", "score"}, best first
    latency_ms: float  # from the frame leaving the source to its scores
    dropped_before: int = 0  # live sources: frames dropped since the previous one

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["timestamp"] = round(self.timestamp, 3)
        data["latency_ms"] = round(self.latency_ms, 3)
        return data


@dataclass
class LiveSummary:
    """What a run of `live` did, for its closing table (`--json`: the last line)."""

    source: str
    frames_read: int = 0
    classified: int = 0
    dropped: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    saved: str | None = None
    stopped: str | None = None  # why a live source ended early (it stopped giving frames)

    @property
    def fps(self) -> float:
        return self.classified / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        latencies = self.latencies_ms
        return {
            "source": self.source,
            "frames_read": self.frames_read,
            "classified": self.classified,
            "dropped": self.dropped,
            "seconds": round(self.seconds, 3),
            "fps": round(self.fps, 2),
            "latency_ms_median": round(statistics.median(latencies), 3) if latencies else None,
            "latency_ms_p95": round(percentile(latencies, 95), 3) if latencies else None,
            "saved": self.saved,
            "stopped": self.stopped,
        }


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


@dataclass
class _Item:
    """A frame on its way through the pipeline: its pixels, and its input if it is classified."""

    frame: Frame
    model_input: np.ndarray | None
    read_at: float  # time.perf_counter() when the source gave it


class LiveRun:
    """One run of a model on a source; iterate it for results, then read `summary`.

    `every`: classify one frame in so many (all are read, and written with `save`).
    `replicas`: interpreters working at once (default: one per core on the CPU, one on an
    Edge TPU). `on_frame(frame, latest result)` sees every frame in order, classified or not
    (what `--save` draws on).
    """

    def __init__(
        self,
        model_path: str | Path,
        source: FrameSource,
        labels_path: str | Path | None = None,
        top_k: int = 3,
        threshold: float = 0.0,
        every: int = 1,
        device: str | None = None,
        replicas: int | None = None,
        on_frame: Callable[[Frame, LiveResult | None], None] | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.labels, _ = model_labels(self.model_path, Path(labels_path) if labels_path else None)
        model = load_model(self.model_path, device=device)
        width = int(np.prod(model.output.shape[1:]))
        if self.labels is not None and len(self.labels) != width:
            raise WorkbenchError(
                f"the labels have {len(self.labels)} names but the model gives {width} scores"
            )
        count = 1 if model.edgetpu or device else (replicas or cpu_threads())
        self.models: list[LoadedModel] = [model] if count == 1 else model.replicas(count)
        self.output = model.output
        self.prep = Preprocessing.for_input(model.input)
        self.source, self.top_k, self.threshold, self.every = source, top_k, threshold, every
        self.on_frame = on_frame
        self.summary = LiveSummary(source.description)

    def model_input(self, frame: Frame) -> np.ndarray | None:
        """The model input of a frame that is classified (None for the others)."""
        if frame.index % self.every:
            return None
        return to_input(fitted(frame.image(), self.prep), self.prep)

    def prepare(self, frame: Frame) -> _Item:
        """In the reader's thread: the time the frame left the source. The model input is
        made by the worker that runs it, so the cores share that work too."""
        return _Item(frame, None, time.perf_counter())

    def __iter__(self) -> Iterator[LiveResult]:
        reader: Reader[_Item] = Reader(self.source, self.prepare)
        taking = threading.Lock()  # held while a worker waits for its next frame
        done = threading.Condition()  # guards what the workers hand back
        finished: dict[int, tuple[_Item, LiveResult | None, int]] = {}
        taken = [0]  # sequence numbers in the order items were taken: the frames' order
        failures: list[BaseException] = []
        workers_left = [len(self.models)]

        def work(model: LoadedModel) -> None:
            try:
                while True:
                    with taking:  # taking an item and numbering it is one step
                        delivery = reader.get()
                        if delivery is None:
                            break
                        seq, taken[0] = taken[0], taken[0] + 1
                    item = delivery.item
                    item.model_input = self.model_input(item.frame)
                    result = None
                    if item.model_input is not None:
                        raw = model.run(item.model_input)
                        scores = self.output.dequantize(raw).reshape(-1)
                        latency = 1000.0 * (time.perf_counter() - item.read_at)
                        top = top_classes(scores, self.labels, self.top_k, self.threshold)
                        result = LiveResult(
                            item.frame.index, item.frame.timestamp, top, latency,
                            delivery.dropped_before,
                        )  # fmt: skip
                    with done:
                        finished[seq] = (item, result, delivery.dropped_before)
                        done.notify_all()
            except BaseException as e:  # raised again in the caller's thread
                with done:
                    failures.append(e)
                    done.notify_all()
            finally:
                with done:
                    workers_left[0] -= 1
                    done.notify_all()

        threads = [
            threading.Thread(target=work, args=(m,), name=f"live-{i}", daemon=True)
            for i, m in enumerate(self.models)
        ]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        latest: LiveResult | None = None
        emitted = 0
        try:
            while True:
                with done:
                    while emitted not in finished and not failures and workers_left[0] > 0:
                        done.wait(0.1)
                    if failures:
                        raise failures[0]
                    if emitted not in finished:
                        if workers_left[0] == 0:
                            break
                        continue
                    item, result, dropped = finished.pop(emitted)
                emitted += 1
                self.summary.dropped += dropped
                if result is not None:
                    latest = result
                    self.summary.classified += 1
                    self.summary.latencies_ms.append(result.latency_ms)
                if self.on_frame is not None:
                    self.on_frame(item.frame, latest)
                self.summary.seconds = time.perf_counter() - start
                if result is not None:
                    yield result
        finally:
            ended = reader.ended  # the source's own end, not this generator being closed
            reader.close()
            for thread in threads:
                thread.join(timeout=5)
            self.summary.frames_read = reader.frames_read
            self.summary.dropped += reader.dropped
            self.summary.seconds = time.perf_counter() - start
            if ended and not getattr(self.source, "ends", not self.source.live):
                self.summary.stopped = f"{self.source.description} stopped giving frames"


def live(
    model: str | Path,
    source: str | Path = "0",
    *,
    labels: str | Path | None = None,
    top_k: int = 3,
    threshold: float = 0.0,
    every: int = 1,
    device: str | None = None,
    fps: float | None = None,
) -> LiveRun:
    """Classify a source's frames with `model`: iterate the result for one `LiveResult` per
    classified frame; its `summary` then holds the run's figures. `fps` plays a file or a
    folder as a live source at that rate.

        >>> import workbench as wb
        >>> model = wb.imprint("flowers/", output="flowers.tflite").model
        >>> run = wb.live(model, source="flowers/daisy")
        >>> [result.top[0]["label"] for result in run][:2]
        ['daisy', 'daisy']
        >>> run.summary.classified, run.summary.dropped
        (8, 0)
    """
    opened = open_source(source)
    if fps is not None:
        if opened.live:
            opened.close()
            raise WorkbenchError("--fps paces a file or folder; a camera or stream has its own")
        opened = Paced(opened, fps)
    try:
        return LiveRun(model, opened, labels, top_k, threshold, every, device)
    except BaseException:
        opened.close()
        raise


class AnnotatedVideo:
    """`--save`: the frames with the current label, score and frames per second drawn on
    them, as Coral's camera demo shows them. Written to a hidden file beside the target and
    renamed into place when the run ends, so a failed run leaves no half-written video."""

    def __init__(self, path: Path, fps: float) -> None:
        check_name(path)
        check_writable(path)
        self.cv2 = opencv()
        self.path = path
        self.partial = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
        self.fps = fps if fps > 0 else 30.0
        self.writer: Any = None
        self.frames = 0
        self.started = time.perf_counter()

    def write(self, frame: Frame, result: LiveResult | None) -> None:
        cv2 = self.cv2
        bgr = frame.data.copy() if frame.order == "BGR" else frame.data[..., ::-1].copy()
        if self.writer is None:
            height, width = bgr.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*("MJPG" if self.path.suffix == ".avi" else "mp4v"))
            self.writer = cv2.VideoWriter(str(self.partial), fourcc, self.fps, (width, height))
            if not self.writer.isOpened():
                raise WorkbenchError(f"cannot write a video to {self.path} (try .mp4 or .avi)")
        self.frames += 1
        rate = self.frames / max(time.perf_counter() - self.started, 1e-9)
        lines = [f"{rate:.1f} fps"]
        if result is not None and result.top:
            best = result.top[0]
            lines.insert(0, f"{best['label']} {best['score']:.2f}")
        for row, text in enumerate(lines):
            origin = (10, 28 + 28 * row)
            cv2.putText(bgr, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 4)
            cv2.putText(bgr, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
        self.writer.write(bgr)

    def finish(self) -> None:
        if self.writer is not None:
            self.writer.release()
            os.replace(self.partial, self.path)

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.release()
        self.partial.unlink(missing_ok=True)


def check_save_target(path: Path, source: str | Path) -> None:
    """`--save` may not write over the source video, nor into a folder played as frames."""
    target, given = path.resolve(), Path(source)
    if not given.exists():
        return
    inside = given.is_dir() and given.resolve() in target.parents
    if target == given.resolve() or inside:
        raise WorkbenchError(f"--save {path} would write over or inside the source {source}")
