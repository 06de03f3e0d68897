"""Benchmarks that print what they measure; targets are read off, never asserted on time."""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np

from workbench.core.errors import WorkbenchError
from workbench.core.options import BackpropOptions, DataOptions, ImprintOptions, RunOptions
from workbench.core.progress import Reporter
from workbench.data.dataset import Dataset, scan
from workbench.data.frames import open_source
from workbench.data.images import Preprocessing, load_input
from workbench.extract.cache import OutputCache
from workbench.extract.embeddings import run_model
from workbench.extract.runtime import LoadedModel, cpu_threads, load_model
from workbench.heads.softmax_head import SoftmaxHead
from workbench.run.live import LiveRun
from workbench.run.trainers import Imprint
from workbench.run.training import train

# num_threads=0: the interpreter picks (XNNPACK: one thread), as when none is given.
RUNTIME_DEFAULT_THREADS = 0
# Distinct inputs kept in memory for the invoke-only loop (the content does not change the time).
INVOKE_SAMPLE = 64
# Coral's loop and a whole imprint are timed this many times, one right after the other: the
# shared machine's speed drifts by 5-10% over minutes, so one pair far apart in time would
# measure the drift as much as the programs.
WHOLE_RUN_PAIRS = 2


def bench_backprop(
    samples: int = 1000, dim: int = 1024, classes: int = 5, epochs: int = BackpropOptions.epochs
) -> dict[str, Any]:
    """Time `SoftmaxHead.fit` at its defaults on random clustered embeddings of a given size.

    All of it: the penalty's cross-validation (3 folds of every candidate), conditioning and
    the final SGD.
    """
    rng = np.random.default_rng(0)
    centers = rng.uniform(0.0, 1.0, size=(classes, dim))
    labels = rng.integers(0, classes, size=samples)
    x = np.clip(centers[labels] + rng.normal(0.0, 0.5, size=(samples, dim)), 0.0, 6.0)
    start = time.perf_counter()
    head = SoftmaxHead.fit(x.astype(np.float32), labels, classes, BackpropOptions(epochs=epochs))
    seconds = time.perf_counter() - start
    return {
        "samples": samples,
        "dim": dim,
        "classes": classes,
        "epochs": epochs,
        "seconds": round(seconds, 3),
        "ms_per_epoch": round(1000 * seconds / epochs, 3),
        "reg": head.reg,
    }


def _peak_rss_reset() -> bool:
    """Reset the kernel's peak-RSS mark (Linux), so a phase's own peak can be read."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def coral_demo_loop(model: LoadedModel, paths: list[Path]) -> np.ndarray:
    """Coral's demos: open, convert, resize NEAREST, invoke, one image at a time."""
    from PIL import Image

    size = (model.input.shape[2], model.input.shape[1])
    out = np.empty((len(paths), int(np.prod(model.output.shape[1:]))), np.float32)
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB").resize(size, Image.Resampling.NEAREST))
        out[i] = model.output.dequantize(model.run(pixels[np.newaxis])).reshape(-1)
    return out


def invoke_only(model: LoadedModel, inputs: list[np.ndarray], count: int) -> None:
    """`count` invokes on preloaded inputs: the interpreter's own cost, the floor."""
    for i in range(count):
        model.run(inputs[i % len(inputs)])


def bench_pipeline(
    data_dir: str | Path,
    extractor: str | Path,
    limit: int | None = None,
    device: str | None = None,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Time the ways of embedding the same images, in one process, one after another.

    Then a whole `imprint` run on the same images, cold and with the cache warm, against
    Coral's loop (extraction alone): WHOLE_RUN_PAIRS pairs of the loop and the imprint, each
    imprint right after its loop; the ratios are of the times summed over the pairs.

    Workbench cold runs first, so the peak RSS it reports is that of a full extraction. The
    main comparison gives Coral's loop the same interpreter (threads = cores) as workbench;
    it is also timed as Coral's demos run it, with the runtime's default thread count.
    """
    reporter = reporter or Reporter()
    everything = classes_in_turn(scan(data_dir))
    labelled = everything if limit is None else everything[: max(1, limit)]
    paths = [path for _, path in labelled]
    model = load_model(extractor, device=device)
    prep = Preprocessing.for_input(model.input)
    n = len(paths)
    model.run(load_input(paths[0], prep))  # first invoke (delegate set-up, caches) not timed

    def timed(description: str, work: Callable[[], object]) -> float:
        with reporter.task(description, 1) as advance:
            start = time.perf_counter()
            work()
            seconds = time.perf_counter() - start
            advance(1)
        return seconds

    reset = _peak_rss_reset()
    cold = timed("workbench cold", lambda: run_model(model, paths, prep))
    peak = _peak_rss_mb()
    warm = time_warm_cache(model, paths, prep, timed)
    # As Coral's demos run it: pycoral's make_interpreter leaves the thread count to the runtime.
    as_shipped = load_model(extractor, device=device, num_threads=RUNTIME_DEFAULT_THREADS)
    coral_default = timed(
        "Coral demo loop, default threads", lambda: coral_demo_loop(as_shipped, paths)
    )
    preloaded = [load_input(p, prep) for p in paths[:INVOKE_SAMPLE]]
    invoke = timed("invoke only", lambda: invoke_only(model, preloaded, n))
    whole = Path(data_dir) if len(labelled) == len(everything) else None
    pairs = []  # (Coral's loop, cold imprint, warm imprint) seconds
    for _ in range(WHOLE_RUN_PAIRS):
        coral_s = timed("Coral demo loop", lambda: coral_demo_loop(model, paths))
        pairs.append((coral_s, *time_imprint(labelled, extractor, device, reporter, whole)))
    coral, imprint_cold, imprint_warm = (sum(column) for column in zip(*pairs, strict=True))
    coral_mean = coral / len(pairs)
    seconds = {"coral_loop": coral_mean, "coral_loop_default_threads": coral_default,
               "invoke_only": invoke, "workbench_cold": cold, "workbench_warm": warm}  # fmt: skip
    return {
        "images": n,
        "extractor": str(extractor),
        "threads": cpu_threads(),
        "ms_per_image": {name: round(1000 * s / n, 3) for name, s in seconds.items()},
        "cold_over_coral_loop": round(cold / coral_mean, 3),
        "cold_over_coral_loop_default_threads": round(cold / coral_default, 3),
        "cold_over_invoke": round(cold / invoke, 3),
        "warm_over_cold": round(warm / cold, 4),
        "imprint_cold_s": round(imprint_cold / len(pairs), 3),
        "imprint_warm_s": round(imprint_warm / len(pairs), 3),
        "imprint_over_coral_loop": round(imprint_cold / coral, 3),
        "imprint_warm_over_cold": round(imprint_warm / imprint_cold, 4),
        "pairs": [_pair_figures(*pair) for pair in pairs],
        "peak_rss_mb": round(peak, 1),
        "peak_rss_scope": "workbench cold extraction" if reset else "whole process so far",
    }


def classes_in_turn(dataset: Dataset) -> list[tuple[str, Path]]:
    """Every (class, image), one image of each class in turn: the first N of them (`--limit`)
    span as many classes as they can, so the whole imprint has classes to train."""
    per_class = [[(name, path) for path in dataset.images[name]] for name in dataset.classes]
    return [pair for turn in zip_longest(*per_class) for pair in turn if pair is not None]


def _pair_figures(coral_s: float, cold_s: float, warm_s: float) -> dict[str, float]:
    """One pair's own times and ratio, shown beside the ratio of the sums."""
    return {
        "coral_loop_s": round(coral_s, 3),
        "imprint_cold_s": round(cold_s, 3),
        "imprint_warm_s": round(warm_s, 3),
        "imprint_over_coral_loop": round(cold_s / coral_s, 3),
    }


def time_warm_cache(
    model: LoadedModel,
    paths: list[Path],
    prep: Preprocessing,
    timed: Callable[[str, Callable[[], object]], float],
) -> float:
    """Seconds of `run_model` over `paths` with every output already in a (fresh) cache."""
    width = int(np.prod(model.output.shape[1:]))
    with tempfile.TemporaryDirectory(prefix="workbench-bench-") as cache_root:
        cache = OutputCache(cache_root, model.sha256, prep.key(), width)
        run_model(model, paths, prep, cache=cache)  # fill the cache (not timed)
        cache.close()
        warm_cache = OutputCache(cache_root, model.sha256, prep.key(), width)
        try:
            return timed(
                "workbench warm cache", lambda: run_model(model, paths, prep, cache=warm_cache)
            )
        finally:
            warm_cache.close()


def time_imprint(
    images: list[tuple[str, Path]],
    extractor: str | Path,
    device: str | None,
    reporter: Reporter,
    folder: Path | None = None,
) -> tuple[float, float]:
    """Wall time of a whole `imprint` run on these images: cold cache, then warm.

    Everything a user waits for: extraction, training, export, evaluation, writing. The run
    reads `folder` when it holds exactly these (class, path) `images` (the whole data folder);
    otherwise they are linked into a fresh folder, one sub-folder per class. The cap is lifted
    to the largest class so that it extracts every image: the same as Coral's loop, for a
    fair ratio. Outputs and the cache go to a temporary folder.
    """
    with tempfile.TemporaryDirectory(prefix="workbench-bench-") as root:
        if folder is None:
            folder = Path(root) / "data"
            for i, (name, path) in enumerate(images):
                target = folder / name / f"{i:06d}_{path.name}"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(path.resolve())
        largest = max(Counter(name for name, _ in images).values())
        data = DataOptions(max_per_class=max(largest, DataOptions.max_per_class))
        seconds = []
        for run in ("cold", "warm"):
            options = RunOptions(
                extractor=Path(extractor), output=Path(root) / f"{run}.tflite",
                device=device, cache=Path(root) / "cache",
            )  # fmt: skip
            start = time.perf_counter()
            train(folder, Imprint(ImprintOptions(), 0), data, options, reporter)
            seconds.append(time.perf_counter() - start)
    return seconds[0], seconds[1]


def bench_model(
    model_path: str | Path, device: str | None = None, runs: int = 100
) -> dict[str, Any]:
    """First-invoke and steady-state latency of a model on a fixed input."""
    start = time.perf_counter()
    model = load_model(model_path, device=device)
    load_ms = 1000 * (time.perf_counter() - start)
    rng = np.random.default_rng(0)
    if model.input.dtype == np.float32:
        x = rng.uniform(-1, 1, size=model.input.shape).astype(np.float32)
    else:
        info = np.iinfo(model.input.dtype)
        x = rng.integers(info.min, info.max + 1, size=model.input.shape).astype(model.input.dtype)
    first = 1000 * model.timed_run(x)[1]
    times = 1000 * np.array([model.timed_run(x)[1] for _ in range(max(runs, 1))])
    return {
        "model": str(model_path),
        "device": device or ("edgetpu" if model.edgetpu else "cpu"),
        "threads": cpu_threads(),
        "load_ms": round(load_ms, 3),
        "first_invoke_ms": round(first, 3),
        "runs": len(times),
        "min_ms": round(float(times.min()), 3),
        "median_ms": round(float(np.median(times)), 3),
        "p90_ms": round(float(np.percentile(times, 90)), 3),
    }


def bench_live(
    model_path: str | Path, source: str | Path, device: str | None = None
) -> dict[str, Any]:
    """`workbench live` on a video file against the invoke-only rate of the same model.

    Both use the same interpreters (one single-threaded replica per core on the CPU, the one
    interpreter of an Edge TPU) on the same frames: first `live`'s whole pipeline (video
    decoding, the model input made as `classify` makes it, the invokes, frames in order),
    then the invokes alone on the frames' inputs made beforehand. The ratio of the two
    frames-per-second figures is what the pipeline costs.
    """
    run = LiveRun(model_path, open_source(source), device=device)
    for _ in run:
        pass
    live_fps = run.summary.fps
    inputs = []
    reader = open_source(source)
    try:
        while (frame := reader.read()) is not None:
            inputs.append(run.model_input(frame))
    finally:
        reader.close()
    if not inputs:
        raise WorkbenchError(f"{source} gave no frames")
    invoke_fps = len(inputs) / _invokes_in_parallel(run.models, inputs)
    summary = run.summary.to_json()
    return {
        "source": str(source),
        "frames": len(inputs),
        "interpreters": len(run.models),
        "live_fps": round(live_fps, 2),
        "invoke_only_fps": round(invoke_fps, 2),
        "live_over_invoke_only": round(live_fps / invoke_fps, 3),
        "latency_ms_median": summary["latency_ms_median"],
        "latency_ms_p95": summary["latency_ms_p95"],
    }


def _invokes_in_parallel(models: list[LoadedModel], inputs: list[Any]) -> float:
    """Seconds for the interpreters to run every input once, each taking the next in turn."""
    position = iter(range(len(inputs)))
    lock = threading.Lock()

    def work(model: LoadedModel) -> None:
        while True:
            with lock:
                index = next(position, None)
            if index is None:
                return
            model.run(inputs[index])

    models[0].run(inputs[0])  # the first invoke (scratch buffers) is not timed, as in `live`
    threads = [threading.Thread(target=work, args=(m,)) for m in models]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start
