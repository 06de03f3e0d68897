"""The `workbench` command line: a thin typer layer over the Python API.

Every command prints tables on stdout (or JSON with `--json`), progress and warnings on stderr,
and turns bad input into one line on stderr with exit code 2.
"""

from __future__ import annotations

import functools
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from workbench.core import __version__
from workbench.core.errors import WorkbenchError
from workbench.core.options import (
    BackpropOptions,
    DataOptions,
    ImprintOptions,
    OptionError,
    RunOptions,
    real,
    whole,
)
from workbench.core.terminal import PlainConsole, visible

EXIT_BAD_INPUT = 2


def one_line(text: str) -> str:
    """The message on one line, with nothing in it that would act on the terminal."""
    return visible(" ".join(str(text).split()))


def _click_exception() -> Any:
    """The base class of the usage errors raised by the click that typer runs on.

    Up to typer 0.28 that is click itself; from 0.29 typer vendors its own copy and no longer
    installs click. `typer.BadParameter` is one of those errors in every release, so its base
    class is found without importing click, which workbench does not depend on.
    """
    for base in typer.BadParameter.__mro__:
        if base.__name__ == "ClickException":
            return base
    raise ImportError("typer.BadParameter does not derive from ClickException")  # pragma: no cover


_CLICK_ERRORS = (_click_exception(),)
# typer.Abort is the Abort that its click raises on Ctrl-C or EOF at a prompt, in every release.
_CLICK_ABORTS = (typer.Abort,)


class _Commands(TyperGroup):
    """Typer's group, with usage errors ending in one plain `error: ...` line (exit 2).

    Scripts read the last line of stderr; typer's framed box spreads the message over
    several. The usage line stays above it, for humans.
    """

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)  # type: ignore[misc]
        except _CLICK_ERRORS as e:
            context = getattr(e, "ctx", None)
            if context is not None and type(e).__name__ == "NoArgsIsHelpError":
                print(context.get_help(), file=sys.stderr)
                return self._exit(0, standalone_mode)
            if context is not None:
                print(context.get_usage(), file=sys.stderr)
            print(f"error: {one_line(e.format_message())}", file=sys.stderr)
            code = e.exit_code
        except _CLICK_ABORTS:
            print("interrupted; nothing was written", file=sys.stderr)
            code = 130
        return self._exit(code, standalone_mode)

    @staticmethod
    def _exit(code: Any, standalone_mode: bool) -> Any:
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="workbench",
    help="On-device transfer learning for Coral Edge TPU and TensorFlow Lite.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Commands,
)
# The model was written, but its 8-bit export loses held-out images to its float head.
EXIT_POOR_EXPORT = 1
F = TypeVar("F", bound=Callable[..., Any])


def stdout() -> PlainConsole:
    """Tables on stdout. Every string printed is shown as it is: class names, labels and
    paths come from users and files, and may look like markup (`[/]`) or emoji codes."""
    return PlainConsole()


def stderr() -> PlainConsole:
    return PlainConsole(stderr=True)


def handles_bad_input(command: F) -> F:
    """Report WorkbenchError as `error: ...` on stderr with exit code 2, no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except OptionError as e:
            flag = "--" + e.field.replace("_", "-")
            print(f"error: {flag} {e.requirement}, got {e.value!r}", file=sys.stderr)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except WorkbenchError as e:
            print(f"error: {one_line(str(e))}", file=sys.stderr)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except KeyboardInterrupt:
            print("interrupted; nothing was written", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _print_version(value: bool) -> None:
    """`--version` alone: print and exit while parsing, before a command is asked for."""
    if value:
        print(f"workbench {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version and exit.",
            is_eager=True,
            callback=_print_version,
        ),
    ] = False,
) -> None:
    """On-device transfer learning for Coral Edge TPU and TensorFlow Lite."""


def _checked(check: Callable[..., None], field: str, value: object, *bounds: Any) -> None:
    """A plain number option checked like the option objects' fields (same message)."""
    check(field, value, *bounds)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


# Options shared by the commands, declared once.
ExtractorOpt = Annotated[
    Path | None,
    typer.Option(
        "--extractor",
        "-e",
        help="Embedding extractor .tflite (CPU or _edgetpu build); default: the bundled "
        "EfficientNet-Lite0.",
    ),
]
OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output", "-o", help="Model to write; labels go to OUT.txt, report to OUT.report.json."
    ),
]
ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force", help="Use the extractor even if it looks like a classifier (softmax output)."
    ),
]
TestRatioOpt = Annotated[
    float, typer.Option("--test-ratio", help="Share of each class held out for evaluation.")
]
MaxPerClassOpt = Annotated[
    int, typer.Option("--max-per-class", help="Cap on training images per class.")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the per-class shuffle.")]
DeviceOpt = Annotated[
    str | None,
    typer.Option("--device", help="Edge TPU to use: usb, usb:N, pci, pci:N or :N."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Where extracted embeddings are cached (default: the user cache folder, "
        "or $WORKBENCH_CACHE_DIR).",
    ),
]
NoCacheOpt = Annotated[
    bool, typer.Option("--no-cache", help="Neither read nor write the embedding cache.")
]


def _cache_choice(cache_dir: Path | None, no_cache: bool) -> bool | Path:
    if no_cache:
        return False
    return cache_dir if cache_dir is not None else True


DataDirArg = Annotated[Path, typer.Argument(help="Folder with one sub-folder of images per class.")]


def _print_training(result: Any, json_output: bool) -> None:
    from workbench.report.display import print_outputs, print_report

    if json_output:
        emit_json(result.report.to_json())
    else:
        console = stdout()
        print_report(console, result.report)
        print_outputs(
            console,
            {
                "model": str(result.model),
                "labels": str(result.labels),
                "report": str(result.report_path),
                "HTML report": str(result.html_path),
            },
        )
    if result.report.export_ok is False:
        raise typer.Exit(EXIT_POOR_EXPORT)


@app.command()
@handles_bad_input
def imprint(
    data_dir: DataDirArg,
    extractor: ExtractorOpt = None,
    output: OutputOpt = None,
    test_ratio: TestRatioOpt = DataOptions.test_ratio,
    max_per_class: MaxPerClassOpt = DataOptions.max_per_class,
    seed: SeedOpt = DataOptions.seed,
    whiten: Annotated[
        bool,
        typer.Option(
            "--whiten/--no-whiten",
            help="Whiten embeddings with their within-class covariance when cross-validation "
            "on the training images shows it helps; --no-whiten: Coral's plain imprinting head.",
        ),
    ] = bool(ImprintOptions.whiten),
    base: Annotated[
        Path | None,
        typer.Option(
            "--base",
            help="Continue from this imprinting model (workbench's or Coral's): its extractor "
            "is reused and only DATA_DIR's images are extracted.",
        ),
    ] = None,
    keep_classes: Annotated[
        bool,
        typer.Option(
            "--keep-classes",
            help="With --base: keep the base's classes; folders named like one of its "
            "imprinted classes add images to it.",
        ),
    ] = False,
    base_labels: Annotated[
        Path | None,
        typer.Option("--base-labels", help="Labels of the --base model (default: BASE.txt)."),
    ] = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    device: DeviceOpt = None,
    force: ForceOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Weight imprinting: a classifier from a few images per class, in seconds."""
    from workbench.report.display import ConsoleReporter
    from workbench.run import api

    result = api.imprint(
        data_dir, base=base, keep_classes=keep_classes, base_labels=base_labels,
        reporter=ConsoleReporter(stderr()), whiten=whiten, test_ratio=test_ratio,
        max_per_class=max_per_class, seed=seed, extractor=extractor, output=output,
        device=device, cache=_cache_choice(cache_dir, no_cache), force=force,
    )  # fmt: skip
    _print_training(result, json_output)


@app.command()
@handles_bad_input
def backprop(
    data_dir: DataDirArg,
    extractor: ExtractorOpt = None,
    epochs: Annotated[
        int, typer.Option("--epochs", help="Full passes over the training set.")
    ] = BackpropOptions.epochs,
    learning_rate: Annotated[
        float, typer.Option("--learning-rate", help="Initial SGD step (cosine-decayed to 0).")
    ] = BackpropOptions.learning_rate,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Embeddings per SGD step.")
    ] = BackpropOptions.batch_size,
    reg: Annotated[
        float | None,
        typer.Option(
            "--reg",
            help="L2 penalty; default: chosen by cross-validation on the training images.",
        ),
    ] = None,
    output: OutputOpt = None,
    test_ratio: TestRatioOpt = DataOptions.test_ratio,
    max_per_class: MaxPerClassOpt = DataOptions.max_per_class,
    seed: SeedOpt = DataOptions.seed,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    device: DeviceOpt = None,
    force: ForceOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Last-layer backprop: softmax regression trained with SGD, exported as FC + softmax."""
    from workbench.report.display import ConsoleReporter
    from workbench.run import api

    result = api.backprop(
        data_dir, reporter=ConsoleReporter(stderr()), epochs=epochs,
        learning_rate=learning_rate, batch_size=batch_size, reg=reg, test_ratio=test_ratio,
        max_per_class=max_per_class, seed=seed, extractor=extractor, output=output,
        device=device, cache=_cache_choice(cache_dir, no_cache), force=force,
    )  # fmt: skip
    _print_training(result, json_output)


@app.command()
@handles_bad_input
def evaluate(
    model: Annotated[Path, typer.Argument(help="Classification model .tflite.")],
    data_dir: DataDirArg,
    labels: Annotated[
        Path | None, typer.Option("--labels", help="Labels file (default: MODEL.txt).")
    ] = None,
    test_ratio: Annotated[
        float | None, typer.Option("--test-ratio", help="Another split (default: the model's).")
    ] = None,
    max_per_class: Annotated[
        int | None, typer.Option("--max-per-class", help="Another cap (default: the model's).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Another seed (default: the model's).")
    ] = None,
    split: Annotated[
        Path | None,
        typer.Option("--split", help="Reuse the held-out split recorded in a training report."),
    ] = None,
    all_images: Annotated[
        bool, typer.Option("--all", help="Score every image: a folder the model never saw.")
    ] = False,
    allow_overlap: Annotated[
        bool,
        typer.Option("--allow-overlap", help="Score images the model was trained on anyway."),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Report to write (default: MODEL.eval.report.json)."),
    ] = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    device: DeviceOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Accuracy of a model on held-out images of a data folder (by default its own split)."""
    from workbench.report.display import ConsoleReporter, print_report
    from workbench.run import api

    given = {"test_ratio": test_ratio, "max_per_class": max_per_class, "seed": seed}
    target = _evaluation_target(model, output, data_dir, [labels, split])
    report = api.evaluate(
        model, data_dir, labels=labels, split=split, all_images=all_images,
        allow_overlap=allow_overlap, reporter=ConsoleReporter(stderr()), device=device,
        cache=_cache_choice(cache_dir, no_cache),
        **{k: v for k, v in given.items() if v is not None},
    )  # fmt: skip
    html = _write_report(report, target)
    if json_output:
        emit_json(report.to_json())
    else:
        print_report(stdout(), report)
        stdout().print(f"report: {target} and {html}", markup=False, highlight=False)


def _evaluation_target(
    model: Path, output: Path | None, data_dir: Path, reads: list[Path | None]
) -> Path:
    """Where evaluate's report goes, checked before any work (never on an input)."""
    from workbench.core.outputs import check_outputs

    name = str(model)
    stem = name[: -len(".tflite")] if name.endswith(".tflite") else name
    target = output or Path(f"{stem}.eval.report.json")
    html = target.with_name(target.name.removesuffix(".json") + ".html")
    inputs = [model, *(p for p in reads if p is not None)]
    check_outputs({"report": target, "html": html}, inputs=inputs, data_dirs=[data_dir])
    return target


def _write_report(report: Any, target: Path) -> Path:
    from workbench.core.outputs import write_files_atomically
    from workbench.report.html import render_report

    html = target.with_name(target.name.removesuffix(".json") + ".html")
    page = render_report(report.to_json())
    write_files_atomically({target: report.dumps().encode(), html: page.encode()})
    return html


@app.command()
@handles_bad_input
def curve(
    data_dir: DataDirArg,
    extractor: ExtractorOpt = None,
    caps: Annotated[
        str,
        typer.Option("--caps", help="Images per class to train on, comma-separated."),
    ] = "1,2,5,10,20,50,100,200",
    exported_at: Annotated[
        str,
        typer.Option(
            "--exported-at",
            help="Caps at which the exported 8-bit models are scored too (comma-separated).",
        ),
    ] = "1,10,200",
    test_ratio: TestRatioOpt = DataOptions.test_ratio,
    seed: SeedOpt = DataOptions.seed,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    device: DeviceOpt = None,
    force: ForceOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Learning curve: held-out top-1 of each trainer at 1, 2, 5 ... images per class."""
    from workbench.report.display import ConsoleReporter, curve_table
    from workbench.run.curve import learning_curve

    result = learning_curve(
        data_dir,
        caps=_int_list(caps, "--caps"),
        exported_at=_int_list(exported_at, "--exported-at") if exported_at else (),
        data=DataOptions(test_ratio=test_ratio, seed=seed),
        run=RunOptions(extractor=extractor, device=device,
                       cache=_cache_choice(cache_dir, no_cache), force=force),
        reporter=ConsoleReporter(stderr()),
    )  # fmt: skip
    if json_output:
        emit_json(result)
    else:
        stdout().print(curve_table(result))


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise WorkbenchError(
            f"{flag} takes whole numbers separated by commas, got {text!r}"
        ) from None
    if not values or min(values) < 1 or max(values) > 100_000:
        raise WorkbenchError(f"{flag} needs numbers from 1 to 100000, got {text!r}")
    return values


@app.command()
@handles_bad_input
def report(
    report_json: Annotated[Path, typer.Argument(help="A report .json written by workbench.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="HTML file to write (default: beside the report)."),
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Render a report (imprint, backprop, evaluate or curve --json) as one HTML page."""
    from workbench.core.outputs import check_outputs, write_files_atomically
    from workbench.report.html import render_curve, render_report
    from workbench.report.record import Report

    data = Report.read_json(report_json)
    name = str(report_json)
    stem = name[: -len(".json")] if name.endswith(".json") else name
    target = output or Path(f"{stem}.html")
    check_outputs({"html": target}, inputs=[report_json])
    try:
        page = (
            render_curve(data)
            if "points" in data
            else render_report(Report.from_json(data).to_json())
        )
    except (AttributeError, TypeError, KeyError, ValueError, IndexError) as e:
        # A hand-edited or foreign file that parses as JSON but has the wrong shapes inside.
        raise WorkbenchError(f"{report_json} is not a well-formed workbench report ({e})") from None
    write_files_atomically({target: page.encode()})
    if json_output:
        emit_json({"html": str(target)})
        return
    print(visible(target))


@app.command()
@handles_bad_input
def classify(
    model: Annotated[Path, typer.Argument(help="Classification model .tflite.")],
    paths: Annotated[
        list[Path], typer.Argument(help="Images, or folders searched recursively for images.")
    ],
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels", help="Labels file (default: MODEL.txt, else the model's metadata)."
        ),
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Classes to show per image.")] = 3,
    threshold: Annotated[
        float, typer.Option("--threshold", help="Show only classes scoring at least this.")
    ] = 0.0,
    repeat: Annotated[
        int, typer.Option("--repeat", help="Extra invokes for the steady-state timing.")
    ] = 10,
    device: DeviceOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Top classes of each image with scores, and the inference time."""
    from workbench.report.display import ConsoleReporter
    from workbench.run.classify import classify_images, print_classification

    _checked(whole, "top_k", top_k, 1, 100_000)
    _checked(whole, "repeat", repeat, 0, 100_000)
    _checked(real, "threshold", threshold, 0.0, 1.0)
    result = classify_images(
        model, paths, labels, top_k=top_k, threshold=threshold, repeat=repeat, device=device,
        reporter=ConsoleReporter(stderr()),
    )  # fmt: skip
    if json_output:
        emit_json(result)
    else:
        print_classification(stdout(), result)


@app.command()
@handles_bad_input
def inspect(
    model: Annotated[Path, typer.Argument(help="A .tflite model (CPU or _edgetpu build).")],
    runtime_version: Annotated[
        int,
        typer.Option(
            "--runtime-version", help="Edge TPU runtime version to check against (13, 14...)."
        ),
    ] = 14,
    json_output: JsonOpt = False,
) -> None:
    """Will MODEL run on the Edge TPU, and where will it split? Offline, no compiler needed.

    Exit code 0: it all runs on the Edge TPU; 1: part or all of it would run on the CPU.
    """
    from workbench.report.inspection import inspect_model

    _checked(whole, "runtime_version", runtime_version, 10, 99)
    result = inspect_model(model, runtime_version)
    if json_output:
        emit_json(result.to_json())
    else:
        from workbench.report.display import print_inspection

        print_inspection(stdout(), result)
    raise typer.Exit(result.exit_code)


@app.command()
@handles_bad_input
def extractor(
    classifier: Annotated[Path, typer.Argument(help="A classification model .tflite (CPU build).")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Extractor to write (default: NAME_extractor.tflite)."),
    ] = None,
    tensor: Annotated[
        str | None,
        typer.Option(
            "--tensor", help="Cut at this tensor (default: the input of the final logits layer)."
        ),
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Cut a classifier at its embedding: an extractor for imprint and backprop."""
    from workbench.model.surgery import write_extractor

    info = write_extractor(classifier, output, tensor)
    if json_output:
        emit_json(info)
    else:
        from workbench.report.display import key_value_table

        stdout().print(key_value_table(f"Extractor cut from {classifier.name}", info))


@app.command()
@handles_bad_input
def devices(json_output: JsonOpt = False) -> None:
    """List the Edge TPUs this machine can use (through libedgetpu's C API)."""
    from workbench.extract.runtime import INSTALL_HINT, list_edge_tpus

    found = list_edge_tpus()
    if json_output:
        emit_json({"runtime": found.library, "version": found.version, "devices": found.devices})
        return
    if found.library is None:
        print(f"No Edge TPU runtime installed ({found.error}); to use an Edge TPU, {INSTALL_HINT}.")
        return
    if not found.devices:
        print(f"Edge TPU runtime {found.version or found.library}: no Edge TPU found.")
        return
    from rich.table import Table

    table = Table(title=f"Edge TPUs ({found.version or found.library})")
    for name in ("--device", "type", "path"):
        table.add_column(name)
    for device in found.devices:
        table.add_row(f"{device['device']} (or {device['any']})", device["type"], device["path"])
    stdout().print(table)


SourceOpt = Annotated[
    str,
    typer.Option(
        "--source", "-s",
        help="A camera index (0), a device (/dev/video2), picam (the Raspberry Pi camera), "
        "a stream URL, a video file, or a folder of images.",
    ),
]  # fmt: skip


@app.command()
@handles_bad_input
def live(
    model: Annotated[Path, typer.Argument(help="Classification model .tflite.")],
    source: SourceOpt = "0",
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels", help="Labels file (default: MODEL.txt, else the model's metadata)."
        ),
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Classes to show per frame.")] = 3,
    threshold: Annotated[
        float, typer.Option("--threshold", help="Show only classes scoring at least this.")
    ] = 0.0,
    every: Annotated[int, typer.Option("--every", help="Classify one frame in N.")] = 1,
    save: Annotated[
        Path | None,
        typer.Option(
            "--save",
            help="Write the frames with label, score and FPS drawn on them (.mp4 or .avi).",
        ),
    ] = None,
    fps: Annotated[
        float | None,
        typer.Option(
            "--fps",
            help="Play a video file or folder as a live source at this rate "
            "(frames the model cannot keep up with are dropped).",
        ),
    ] = None,
    device: DeviceOpt = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON line per classified frame, then a summary.")
    ] = False,
) -> None:
    """Classify a camera, stream, video or folder frame by frame; Ctrl-C ends it."""
    from workbench.report.display import LiveDisplay
    from workbench.run.live import AnnotatedVideo, check_save_target
    from workbench.run.live import live as live_run

    _checked(whole, "top_k", top_k, 1, 100_000)
    _checked(whole, "every", every, 1, 1_000_000)
    _checked(real, "threshold", threshold, 0.0, 1.0)
    if fps is not None:
        _checked(real, "fps", fps, 0.0, 10_000.0, True)
    video = None
    if save is not None:
        check_save_target(save, source)
        video = AnnotatedVideo(save, fps or 0.0)
    run = live_run(model, source, labels=labels, top_k=top_k, threshold=threshold,
                   every=every, device=device, fps=fps)  # fmt: skip
    if video is not None:
        video.fps = video.fps if fps else (getattr(run.source, "fps", 0.0) or 30.0)
        run.on_frame = video.write
    display = LiveDisplay(stdout(), stderr(), json_output)
    try:
        try:
            for result in run:
                display.show(result, run.summary)
        except KeyboardInterrupt:
            pass  # the usual way to end a live source: the summary follows
    except BaseException:
        if video is not None:
            video.discard()
        raise
    if video is not None:
        video.finish()
        run.summary.saved = str(save)
    display.finish(run.summary)


@app.command()
@handles_bad_input
def capture(
    folder: Annotated[
        Path, typer.Argument(help="The class folder to fill: DATA/CLASS (made if missing).")
    ],
    source: SourceOpt = "0",
    count: Annotated[int, typer.Option("--count", "-n", help="Frames to save.")] = 10,
    interval: Annotated[
        float,
        typer.Option("--interval", help="Seconds between frames (of the video's time for a file)."),
    ] = 1.0,
    countdown: Annotated[
        int, typer.Option("--countdown", help="Seconds to wait before a camera's first frame.")
    ] = 3,
    json_output: JsonOpt = False,
) -> None:
    """Save frames of a camera or video as JPEGs into a class folder, for `imprint`."""
    from workbench.report.display import ConsoleReporter
    from workbench.run.capture import capture as capture_frames

    _checked(whole, "count", count, 1, 1_000_000)
    _checked(real, "interval", interval, 0.0, 86_400.0)
    _checked(whole, "countdown", countdown, 0, 3_600)
    written = capture_frames(folder, source, count, interval, countdown,
                             ConsoleReporter(stderr()))  # fmt: skip
    if json_output:
        emit_json({"folder": str(folder), "files": [str(p) for p in written]})
        return
    for path in written:
        print(visible(path))
    print(visible(f"{len(written)} frames saved in {folder}"))


@app.command()
@handles_bad_input
def teach(
    source: SourceOpt = "0",
    extractor: ExtractorOpt = None,
    data: Annotated[
        Path, typer.Option("--data", help="Where Save writes the examples (DATA/CLASS/*.jpg).")
    ] = Path("teach-data"),
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on; another than loopback needs the token in the printed URL.",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (0: any free one).")] = 8000,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="The model Save writes (default: as `workbench "
            "imprint DATA` names it, ./<data folder name>_imprint.tflite).",
        ),
    ] = None,
    fps: Annotated[
        float | None,
        typer.Option("--fps", help="Play a video file or folder as a live source at this rate."),
    ] = None,
    device: DeviceOpt = None,
) -> None:
    """Teach classes from the camera in a local web page, then save a dataset and a model."""
    from workbench.data.frames import Paced, open_source
    from workbench.report.display import ConsoleReporter
    from workbench.run.teach import TeachSession
    from workbench.run.teach_server import TeachServer

    _checked(whole, "port", port, 0, 65_535)
    if fps is not None:
        _checked(real, "fps", fps, 0.0, 10_000.0, True)
    opened = open_source(source)
    if fps is not None:
        opened = Paced(opened, fps)
    session = TeachSession(opened, data, extractor, device, ConsoleReporter(stderr()), output)
    try:
        try:
            server = TeachServer(session, host, port)
        except OSError as e:
            raise WorkbenchError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        print(f"workbench teach: open {server.url()}", flush=True)
        if not server.loopback:
            print("warning: listening beyond this machine: requests need the token in the URL",
                  file=sys.stderr)  # fmt: skip
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    finally:
        session.close()
    unsaved = session.unsaved()
    if unsaved:
        print(f"warning: {unsaved} examples were not saved", file=sys.stderr)
    else:
        print("stopped; every example was saved", file=sys.stderr)


datasets_app = typer.Typer(help="Public datasets as class folders, ready to train on.")
app.add_typer(datasets_app, name="datasets")


@datasets_app.command("get")
@handles_bad_input
def datasets_get(
    name: Annotated[str, typer.Argument(help="flowers or oxford17.")],
    root: Annotated[
        Path, typer.Option("--root", help="Folder the dataset goes into, as ROOT/NAME/.")
    ] = Path("datasets"),
    url: Annotated[
        str | None, typer.Option("--url", help="Fetch from a mirror (or a local file:// copy).")
    ] = None,
    sha256: Annotated[
        str | None, typer.Option("--sha256", help="Expected checksum of the archive at --url.")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Download a dataset (resumable, checksummed) and unpack it as one folder per class."""
    from workbench.data.dataset import scan
    from workbench.data.download import get_dataset
    from workbench.report.display import ConsoleReporter

    target = get_dataset(name, root, url, sha256, ConsoleReporter(stderr()))
    found = scan(target)
    if json_output:
        emit_json({"folder": str(target), "classes": found.classes, "images": found.num_images})
        return
    print(visible(f"{target}: {len(found.classes)} classes, {found.num_images} images"))


@datasets_app.command("list")
def datasets_list(json_output: JsonOpt = False) -> None:
    """The datasets `workbench datasets get` knows."""
    from workbench.data.download import SOURCES

    if json_output:
        emit_json(
            [
                {"name": s.name, "description": s.description, "url": s.url, "sha256": s.sha256}
                for s in SOURCES.values()
            ]
        )
        return
    for source in SOURCES.values():
        print(f"{source.name:10s} {source.description}\n{'':10s} {source.url}")


bench_app = typer.Typer(help="Benchmarks: measured and printed, never pass/fail.")
app.add_typer(bench_app, name="bench")


@bench_app.command("backprop")
@handles_bad_input
def bench_backprop_command(
    samples: Annotated[int, typer.Option("--samples", help="Training embeddings.")] = 1000,
    dim: Annotated[int, typer.Option("--dim", help="Embedding size.")] = 1024,
    classes: Annotated[int, typer.Option("--classes", help="Number of classes.")] = 5,
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs to train.")] = (
        BackpropOptions.epochs
    ),
    json_output: JsonOpt = False,
) -> None:
    """Time backprop training (all of it: cross-validation, conditioning, SGD)."""
    from workbench.run.bench import bench_backprop

    _checked(whole, "classes", classes, 2, 10_000)
    _checked(whole, "samples", samples, 3 * classes, 10_000_000)
    _checked(whole, "dim", dim, 1, 100_000)
    _checked(whole, "epochs", epochs, 1, 100_000)
    if samples * dim > 200_000_000:
        raise WorkbenchError(
            f"--samples x --dim is {samples * dim:,} values, more than this benchmark holds "
            "in memory (200,000,000); use fewer samples or dimensions"
        )
    result = bench_backprop(samples, dim, classes, epochs)
    if json_output:
        emit_json(result)
    else:
        from workbench.report.display import key_value_table

        stdout().print(key_value_table("backprop training", result))


@bench_app.command("pipeline")
@handles_bad_input
def bench_pipeline_command(
    data_dir: DataDirArg,
    extractor: ExtractorOpt = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Use only the first N images.")
    ] = None,
    device: DeviceOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Embedding throughput: Coral's demo loop, invoke alone, workbench cold and warm."""
    from workbench.report.display import ConsoleReporter
    from workbench.run.bench import bench_pipeline
    from workbench.run.trainers import bundled_source

    if limit is not None:
        _checked(whole, "limit", limit, 1, 10_000_000)
    source = bundled_source(RunOptions(extractor=extractor)).path
    result = bench_pipeline(data_dir, source, limit, device, ConsoleReporter(stderr()))
    if json_output:
        emit_json(result)
        return
    from workbench.report.display import key_value_table

    flat = {k: v for k, v in result.items() if k not in ("ms_per_image", "pairs")}
    flat.update({f"ms per image, {k}": v for k, v in result["ms_per_image"].items()})
    for number, pair in enumerate(result["pairs"], 1):
        flat.update({f"pair {number}, {k}": v for k, v in pair.items()})
    stdout().print(key_value_table("Embedding pipeline", flat))


@bench_app.command("live")
@handles_bad_input
def bench_live_command(
    model: Annotated[Path, typer.Argument(help="Classification model .tflite.")],
    source: Annotated[
        str, typer.Option("--source", "-s", help="A video file (or a folder of images).")
    ],
    device: DeviceOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """`live` on a video: frames per second over the invoke-only rate, and latency."""
    from workbench.run.bench import bench_live

    result = bench_live(model, source, device)
    if json_output:
        emit_json(result)
    else:
        from workbench.report.display import key_value_table

        stdout().print(key_value_table("Live pipeline", result))


@bench_app.command("model")
@handles_bad_input
def bench_model_command(
    model: Annotated[Path, typer.Argument(help="A .tflite model.")],
    runs: Annotated[int, typer.Option("--runs", help="Steady-state invokes to time.")] = 100,
    device: DeviceOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Latency of one model: first invoke and steady state (min, median, p90)."""
    from workbench.run.bench import bench_model

    _checked(whole, "runs", runs, 1, 1_000_000)
    result = bench_model(model, device, runs)
    if json_output:
        emit_json(result)
    else:
        from workbench.report.display import key_value_table

        stdout().print(key_value_table("Model latency", result))


def main() -> None:
    """Console-script entry point.

    SIGTERM ends the run like Ctrl-C does: staged outputs are removed on the way out
    (SIGKILL cannot be caught; what it leaves is cleared by the next run of the same outputs).
    """
    signal.signal(signal.SIGTERM, _terminated)
    app()


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
