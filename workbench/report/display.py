"""Rich tables for reports, and the CLI's reporter (progress bars and warnings on stderr).

Every string that comes from outside (class names, labels, paths, tensor names) goes into a
table or line through `plain()`: it is shown as it is on any console, never read as markup.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from workbench.core.progress import Reporter
from workbench.core.terminal import plain, visible
from workbench.report.record import Report, confusion_cells


class ConsoleReporter(Reporter):
    """Progress bars and warnings on stderr, so stdout stays clean for tables or JSON."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        """A progress bar; with a `total` of 0 (length unknown), a spinner and the time taken.

        Every bar starts with a spinner too, so a slow step (a cross-validation fold) still
        shows it is alive between advances.
        """
        if self.quiet:
            yield lambda n, status=None: None
            return
        if not self.console.is_terminal:
            # A live bar redrawn into a file or pipe is noise: logs get status lines only.
            def log(n: int, status: str | None = None) -> None:
                if status:
                    self.console.print(plain(f"{description}: {status}"), soft_wrap=True)

            yield log
            return
        # Descriptions and statuses can hold file names: never markup.
        status = TextColumn("{task.fields[status]}", markup=False)
        name = TextColumn("{task.description}", style="bold", markup=False)
        if total > 0:
            columns: tuple[Any, ...] = (
                SpinnerColumn(), name, BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TimeRemainingColumn(), status,
            )  # fmt: skip
        else:
            columns = (SpinnerColumn(), name, TimeElapsedColumn(), status)
        progress = Progress(*columns, console=self.console, transient=True)
        with progress:
            task_id = progress.add_task(
                visible(description), total=total if total > 0 else None, status=""
            )

            def advance(n: int, status: str | None = None) -> None:
                if status is None:
                    progress.advance(task_id, n)
                else:
                    progress.update(task_id, advance=n, status=visible(status))

            yield advance

    def warn(self, message: str) -> None:
        self.console.print(plain(f"warning: {message}", style="yellow"), soft_wrap=True)

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(plain(message), soft_wrap=True)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


# Above this many classes the confusion matrix no longer fits a terminal: the top
# confusions are listed instead (the full matrix stays in the JSON and HTML reports).
MATRIX_MAX_CLASSES = 12
TOP_CONFUSIONS = 15


def scored_training_images(report: Report) -> int | None:
    """How many images scored were training images of the model (`evaluate --allow-overlap`).

    0 when none were or nothing was checked (a training run, an older report); None when the
    model records no training images, so it could not be checked.
    """
    evaluation = report.evaluation
    if not isinstance(evaluation, dict) or "overlap" not in evaluation:
        return 0
    overlap = evaluation["overlap"]
    return overlap if isinstance(overlap, int) and not isinstance(overlap, bool) else None


def overlap_warning(report: Report) -> str | None:
    """One line saying the accuracies are inflated by training images, if they are."""
    overlap = scored_training_images(report)
    if not overlap:
        return None
    return (
        f"WARNING: {overlap} of the {report.num_images} images scored were training images "
        "of this model (--allow-overlap): these accuracies are inflated"
    )


def accuracy_table(report: Report, title: str = "Held-out accuracy") -> Table:
    overlap = scored_training_images(report)
    if overlap:
        title = "Accuracy (INFLATED)"
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right", no_wrap=True)
    for k, value in enumerate(report.top_k_accuracy, start=1):
        table.add_row(f"top-{k}", _pct(value))
    if report.float_top1_accuracy is not None:
        table.add_row("top-1 of the float head", _pct(report.float_top1_accuracy))
    if report.agreement is not None:
        table.add_row("agreement with float head", _pct(report.agreement))
    table.add_row("held-out images", str(report.num_images))
    return table


def per_class_table(report: Report) -> Table:
    table = Table(title="Per class")
    table.add_column("class", overflow="fold")
    for name in ("precision", "recall", "f1", "support"):
        table.add_column(name, justify="right", no_wrap=True)
    for name, m in report.per_class.items():
        table.add_row(
            plain(name), _pct(m["precision"]), _pct(m["recall"]), _pct(m["f1"]), str(m["support"])
        )
    return table


def confusion_table(report: Report) -> Table:
    table = Table(title="Confusion matrix (rows: true class, columns: predicted)")
    table.add_column("")
    for name in report.confusion_labels:
        table.add_column(plain(name), justify="right")
    for name, row in zip(report.classes, report.confusion_matrix, strict=True):
        table.add_row(plain(name), *(str(v) for v in row))
    return table


def top_confusions(report: Report, limit: int = TOP_CONFUSIONS) -> list[tuple[str, str, int]]:
    """(true, predicted, count) of the most frequent mistakes, most frequent first.

    From the matrix's nonzero cells: as quick at thousands of classes as at ten.
    """
    labels = report.confusion_labels or report.classes
    cells = confusion_cells(report.confusion, len(report.classes), len(labels)) or []
    pairs = [
        (report.classes[row], labels[column], count)
        for row, column, count in cells
        if labels[column] != report.classes[row]
    ]
    return sorted(pairs, key=lambda p: (-p[2], p[0], p[1]))[:limit]


def counts_line(report: Report) -> str:
    """Images trained on, held out, left out by the cap, unreadable, skipped: one line."""
    counts = report.counts
    parts = [f"trained on {sum(counts['train'].values())}"] if "train" in counts else []
    parts.append(f"held out {sum(counts.get('test', {}).values())}")
    if "unused" in counts:
        parts.append(f"unused by the cap {sum(counts['unused'].values())}")
    parts.append(f"unreadable {len(report.unreadable)}")
    parts.append(f"skipped files {len(report.skipped_files)}")
    return f"{len(report.classes)} classes, images: " + ", ".join(parts)


def timing_line(report: Report) -> str | None:
    timing = report.timing
    if not timing:
        return None
    names = {"extract_s": "extract", "train_s": "train", "export_s": "export",
             "evaluate_s": "evaluate", "write_s": "write", "total_s": "total"}  # fmt: skip
    parts = [f"{label} {timing[key]:.1f} s" for key, label in names.items() if key in timing]
    return "time: " + ", ".join(parts)


def curve_table(result: dict[str, Any]) -> Table:
    """One row per cap: held-out top-1 of each trainer (exported model's in brackets)."""
    table = Table(
        title=f"Learning curve: held-out top-1 on {result['held_out_images']} images "
        "(exported 8-bit model in brackets)"
    )
    names = list(result["points"][0]["float_top1"]) if result["points"] else []
    table.add_column("per class", justify="right")
    table.add_column("trained on", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    for point in result["points"]:
        cells = []
        for name in names:
            cell = _pct(point["float_top1"][name])
            if name in point["exported_top1"]:
                cell += f" ({_pct(point['exported_top1'][name])})"
            cells.append(cell)
        table.add_row(str(point["cap"]), str(point["train_images"]), *cells)
    return table


def print_report(console: Console, report: Report) -> None:
    warning = overlap_warning(report)
    if warning:  # above the figures it qualifies, and again at the end, where eyes land
        console.print(plain(warning, style="bold red"))
    console.print(accuracy_table(report))
    console.print(per_class_table(report))
    if len(report.classes) <= MATRIX_MAX_CLASSES:
        console.print(confusion_table(report))
    else:
        console.print(
            plain("Top confusions (true -> predicted: images; the full matrix is in the report)")
        )
        for true, predicted, count in top_confusions(report):
            console.print(plain(f"  {true} -> {predicted}: {count}"))
    console.print(plain(counts_line(report)))  # wraps between words
    if warning:
        console.print(plain(warning, style="bold red"))
    elif scored_training_images(report) is None:
        console.print(
            plain(
                "note: the model records no training images; none of the images scored could "
                "be checked against them"
            )
        )
    line = timing_line(report)
    if line:
        console.print(plain(line), soft_wrap=True)


def print_outputs(console: Console, paths: dict[str, str]) -> None:
    table = Table(title="Written", show_header=False)
    table.add_column("what")
    table.add_column("path")
    for what, path in paths.items():
        table.add_row(what, plain(path))
    console.print(table)


def key_value_table(title: str, values: dict[str, Any]) -> Table:
    table = Table(title=plain(title), show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, value in values.items():
        table.add_row(plain(key), plain(value))
    return table


def _quant_text(scale: float | None, zero_point: int | None) -> str:
    return "-" if scale is None else f"scale {scale:.6g}, zero point {zero_point}"


def print_inspection(console: Console, result: Any) -> None:
    """The `workbench inspect` report: I/O, per-op verdicts, the predicted split, memory."""
    io = Table(title=plain(f"{result.path}: inputs and outputs"))
    for name in ("", "name", "shape", "dtype", "quantization"):
        io.add_column(name)
    for kind, infos in (("input", result.inputs), ("output", result.outputs)):
        for info in infos:
            io.add_row(
                kind,
                plain(info.name),
                str(info.shape),
                plain(info.dtype),
                _quant_text(info.scale, info.zero_point),
            )
    console.print(io)
    ops = Table(title=f"Ops (checked for Edge TPU runtime version {result.runtime_version})")
    for name in ("#", "op", "output shape", "where", "verdict"):
        ops.add_column(name, justify="right" if name == "#" else "left")
    for op in result.ops:
        style = "green" if op.placement != "cpu" else ("red" if op.reasons else "yellow")
        where = {"edgetpu": "Edge TPU", "compiled": "Edge TPU", "cpu": "CPU"}[op.placement]
        ops.add_row(
            str(op.index), plain(op.op), str(op.output_shape), where, plain(op.verdict()),
            style=style,
        )  # fmt: skip
    console.print(ops)
    summary = Table(title="Summary", show_header=False)
    summary.add_column("what")
    summary.add_column("value")
    summary.add_row("verdict", plain(result.summary))
    if result.cpu_mac_share is not None:
        summary.add_row(
            "on the CPU", f"{result.cpu_ops} ops, {100 * result.cpu_mac_share:.1f}% of the MACs"
        )
    summary.add_row(
        "parameters",
        f"{result.parameter_bytes / 2**20:.2f} MiB of ~8 MiB on-chip"
        + (" (will stream)" if result.parameters_stream else ""),
    )
    if result.workbench:
        classes = [str(name) for name in result.workbench.get("classes") or []]
        summary.add_row(
            "trained by workbench",
            plain(
                f"{result.workbench.get('trainer')}: {len(classes)} classes ({', '.join(classes)})"
            ),
        )
    if result.coral_imprinting_format:
        summary.add_row(
            "format", "Coral imprinting model (pycoral's ImprintingEngine can train it)"
        )
    console.print(summary)
    for warning in result.warnings:
        console.print(plain(f"warning: {warning}", style="yellow"))


class LiveDisplay:
    """What `workbench live` prints as frames are classified, and its closing summary.

    `--json`: one JSON line per classified frame on stdout, then `{"summary": ...}`. On a
    terminal: one status line on stderr, rewritten in place (top classes, frames per second,
    latency). Otherwise (a pipe, a log): one plain line per classified frame on stdout.
    """

    def __init__(self, out: Console, err: Console, json_lines: bool) -> None:
        self.out, self.err, self.json_lines = out, err, json_lines
        self.in_place = not json_lines and err.is_terminal
        self._shown = False

    def show(self, result: Any, summary: Any) -> None:
        if self.json_lines:
            sys.stdout.write(json.dumps(result.to_json()) + "\n")
            sys.stdout.flush()
            return
        tops = " | ".join(f"{visible(t['label'])} {t['score']:.2f}" for t in result.top) or "-"
        line = (
            f"frame {result.index}  {tops}  {summary.classified / max(summary.seconds, 1e-9):.1f}"
            f" fps  {result.latency_ms:.0f} ms"
        )
        if self.in_place:
            width = max(20, self.err.width - 1)
            self.err.file.write("\r" + line[:width].ljust(width))
            self.err.file.flush()
            self._shown = True
        else:
            print(line, file=self.out.file, flush=True)

    def finish(self, summary: Any) -> None:
        if self._shown:
            self.err.file.write("\n")
        figures = summary.to_json()
        if figures.get("stopped"):
            print(f"warning: {visible(figures['stopped'])}", file=self.err.file)
        if self.json_lines:
            sys.stdout.write(json.dumps({"summary": figures}) + "\n")
            return
        shown = {k.replace("_", " "): ("-" if v is None else v) for k, v in figures.items()}
        self.out.print(key_value_table("Live", shown))
