"""The `workbench` command line: a thin typer layer over the Python API.

Every command prints tables on stdout (or JSON with `--json`), progress and warnings on stderr,
and turns bad input into one line on stderr with exit code 2.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from workbench import backprop as backprop_defaults
from workbench.dataset import DEFAULT_MAX_PER_CLASS, DEFAULT_SEED, DEFAULT_TEST_RATIO
from workbench.errors import WorkbenchError

app = typer.Typer(
    name="workbench",
    help="On-device transfer learning for Coral Edge TPU and TensorFlow Lite.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_BAD_INPUT = 2
# The model was written but its 8-bit export disagrees with its float head too often.
EXIT_POOR_EXPORT = 1
F = TypeVar("F", bound=Callable[..., Any])


def stdout() -> Console:
    return Console()


def stderr() -> Console:
    return Console(stderr=True)


def handles_bad_input(command: F) -> F:
    """Report WorkbenchError as `error: ...` on stderr with exit code 2, no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except WorkbenchError as e:
            message = " ".join(str(e).split())
            print(f"error: {message}", file=sys.stderr)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except KeyboardInterrupt:
            print("interrupted; nothing was written", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


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


def _extractor_or_default(extractor: Path | None) -> Path:
    """The given extractor, or the EfficientNet-Lite0 extractor bundled with workbench."""
    if extractor is not None:
        return extractor
    from workbench.models import bundled_model

    return bundled_model()


def _print_training(result: Any, json_output: bool) -> None:
    from workbench.display import print_outputs, print_report

    if json_output:
        emit_json(result.report)
    else:
        console = stdout()
        print_report(console, result.report)
        print_outputs(
            console,
            {
                "model": str(result.model),
                "labels": str(result.labels),
                "report": str(result.report_path),
            },
        )
    if result.report.get("agreement_ok") is False:
        raise typer.Exit(EXIT_POOR_EXPORT)


@app.command()
@handles_bad_input
def imprint(
    data_dir: DataDirArg,
    extractor: ExtractorOpt = None,
    output: OutputOpt = None,
    test_ratio: TestRatioOpt = DEFAULT_TEST_RATIO,
    max_per_class: MaxPerClassOpt = DEFAULT_MAX_PER_CLASS,
    seed: SeedOpt = DEFAULT_SEED,
    whiten: Annotated[
        bool,
        typer.Option(
            "--whiten/--no-whiten",
            help="Whiten embeddings with their within-class covariance when cross-validation "
            "on the training images shows it helps; --no-whiten: Coral's plain imprinting head.",
        ),
    ] = True,
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
    json_output: JsonOpt = False,
) -> None:
    """Weight imprinting: a classifier from a few images per class, in seconds."""
    from workbench.display import ConsoleReporter
    from workbench.train_imprint import imprint_folder

    if keep_classes and base is None:
        raise WorkbenchError("--keep-classes needs --base MODEL.tflite")
    result = imprint_folder(
        data_dir,
        extractor if base is not None else _extractor_or_default(extractor),
        base=base,
        keep_classes=keep_classes,
        base_labels=base_labels,
        output=output,
        test_ratio=test_ratio,
        max_per_class=max_per_class,
        seed=seed,
        whiten=whiten,
        device=device,
        cache=_cache_choice(cache_dir, no_cache),
        reporter=ConsoleReporter(stderr()),
    )
    _print_training(result, json_output)


@app.command()
@handles_bad_input
def backprop(
    data_dir: DataDirArg,
    extractor: ExtractorOpt = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Full passes over the training set.")] = (
        backprop_defaults.DEFAULT_EPOCHS
    ),
    learning_rate: Annotated[
        float, typer.Option("--learning-rate", help="Initial SGD step (cosine-decayed to 0).")
    ] = backprop_defaults.DEFAULT_LEARNING_RATE,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Embeddings per SGD step.")
    ] = backprop_defaults.DEFAULT_BATCH_SIZE,
    reg: Annotated[
        float | None,
        typer.Option(
            "--reg",
            help="L2 penalty; default: chosen by cross-validation on the training images.",
        ),
    ] = None,
    output: OutputOpt = None,
    test_ratio: TestRatioOpt = DEFAULT_TEST_RATIO,
    max_per_class: MaxPerClassOpt = DEFAULT_MAX_PER_CLASS,
    seed: SeedOpt = DEFAULT_SEED,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    device: DeviceOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Last-layer backprop: softmax regression trained with SGD, exported as FC + softmax."""
    from workbench.display import ConsoleReporter
    from workbench.train_backprop import backprop_folder

    result = backprop_folder(
        data_dir,
        _extractor_or_default(extractor),
        output=output,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        reg=reg,
        test_ratio=test_ratio,
        max_per_class=max_per_class,
        seed=seed,
        device=device,
        cache=_cache_choice(cache_dir, no_cache),
        reporter=ConsoleReporter(stderr()),
    )
    _print_training(result, json_output)


@app.command()
@handles_bad_input
def evaluate(
    model: Annotated[Path, typer.Argument(help="Classification model .tflite.")],
    data_dir: DataDirArg,
    labels: Annotated[
        Path | None, typer.Option("--labels", help="Labels file (default: MODEL.txt).")
    ] = None,
    test_ratio: TestRatioOpt = DEFAULT_TEST_RATIO,
    max_per_class: MaxPerClassOpt = DEFAULT_MAX_PER_CLASS,
    seed: SeedOpt = DEFAULT_SEED,
    split: Annotated[
        Path | None,
        typer.Option("--split", help="Reuse the held-out split recorded in a training report."),
    ] = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    device: DeviceOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Accuracy of a model on the held-out split of a data folder (the split training used)."""
    from workbench.display import ConsoleReporter, print_report
    from workbench.pipeline import evaluate_folder

    report = evaluate_folder(
        model,
        data_dir,
        labels_path=labels,
        test_ratio=test_ratio,
        max_per_class=max_per_class,
        seed=seed,
        split_report=split,
        device=device,
        cache=_cache_choice(cache_dir, no_cache),
        reporter=ConsoleReporter(stderr()),
    )
    if json_output:
        emit_json(report)
    else:
        print_report(stdout(), report)


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
    test_ratio: TestRatioOpt = DEFAULT_TEST_RATIO,
    seed: SeedOpt = DEFAULT_SEED,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    device: DeviceOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Learning curve: held-out top-1 of each trainer at 1, 2, 5 ... images per class."""
    from workbench.curve import learning_curve
    from workbench.display import ConsoleReporter, curve_table

    result = learning_curve(
        data_dir,
        _extractor_or_default(extractor),
        caps=_int_list(caps, "--caps"),
        exported_at=_int_list(exported_at, "--exported-at") if exported_at else (),
        test_ratio=test_ratio,
        seed=seed,
        device=device,
        reporter=ConsoleReporter(stderr()),
        cache=_cache_choice(cache_dir, no_cache),
    )
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
    if not values or min(values) < 1:
        raise WorkbenchError(f"{flag} needs numbers of at least 1, got {text!r}")
    return values


@app.command()
@handles_bad_input
def classify(
    model: Annotated[Path, typer.Argument(help="Classification model .tflite.")],
    images: Annotated[list[Path], typer.Argument(help="Image files to classify.")],
    labels: Annotated[
        Path | None, typer.Option("--labels", help="Labels file (default: MODEL.txt).")
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Classes to show per image.")] = 3,
    repeat: Annotated[
        int, typer.Option("--repeat", help="Extra invokes for the steady-state timing.")
    ] = 10,
    device: DeviceOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Top classes of each image with scores, and the inference time."""
    from workbench.classify import classify_images, print_classification

    result = classify_images(model, images, labels, top_k=top_k, repeat=repeat, device=device)
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
    from workbench.inspection import inspect_model

    result = inspect_model(model, runtime_version)
    if json_output:
        emit_json(result.to_json())
    else:
        from workbench.display import print_inspection

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
    from workbench.surgery import write_extractor

    info = write_extractor(classifier, output, tensor)
    if json_output:
        emit_json(info)
    else:
        from workbench.display import key_value_table

        stdout().print(key_value_table(f"Extractor cut from {classifier.name}", info))


@app.command()
@handles_bad_input
def devices(json_output: JsonOpt = False) -> None:
    """List the Edge TPUs this machine can use (through libedgetpu's C API)."""
    from workbench.runtime import INSTALL_HINT, list_edge_tpus

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
) -> None:
    """Download a dataset (resumable, checksummed) and unpack it as one folder per class."""
    from workbench.dataset import scan
    from workbench.display import ConsoleReporter
    from workbench.download import get_dataset

    target = get_dataset(name, root, url, sha256, ConsoleReporter(stderr()))
    found = scan(target)
    print(f"{target}: {len(found.classes)} classes, {found.num_images} images")


@datasets_app.command("list")
def datasets_list() -> None:
    """The datasets `workbench datasets get` knows."""
    from workbench.download import SOURCES

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
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs to train.")] = 100,
    json_output: JsonOpt = False,
) -> None:
    """Time SoftmaxRegression training (all of it: conditioning, SGD, validation)."""
    from workbench.bench import bench_backprop

    result = bench_backprop(samples, dim, classes, epochs)
    if json_output:
        emit_json(result)
    else:
        from workbench.display import key_value_table

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
    from workbench.bench import bench_pipeline
    from workbench.display import ConsoleReporter

    result = bench_pipeline(
        data_dir, _extractor_or_default(extractor), limit, device, ConsoleReporter(stderr())
    )
    if json_output:
        emit_json(result)
        return
    from workbench.display import key_value_table

    flat = {k: v for k, v in result.items() if k != "ms_per_image"}
    flat.update({f"ms per image, {k}": v for k, v in result["ms_per_image"].items()})
    stdout().print(key_value_table("Embedding pipeline", flat))


@bench_app.command("model")
@handles_bad_input
def bench_model_command(
    model: Annotated[Path, typer.Argument(help="A .tflite model.")],
    runs: Annotated[int, typer.Option("--runs", help="Steady-state invokes to time.")] = 100,
    device: DeviceOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Latency of one model: first invoke and steady state (min, median, p90)."""
    from workbench.bench import bench_model

    result = bench_model(model, device, runs)
    if json_output:
        emit_json(result)
    else:
        from workbench.display import key_value_table

        stdout().print(key_value_table("Model latency", result))


def main() -> None:
    """Console-script entry point."""
    app()
