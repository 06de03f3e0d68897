"""Render a training or evaluation report (`OUT.report.json`) as one self-contained HTML page.

The page is meant to be opened from disk, mailed or copied off a Raspberry Pi, so it holds
everything itself: styles, a few lines of script (sortable tables), SVG charts drawn by
`workbench.report.svg` (no matplotlib: too heavy for a Pi) and the misclassified images as
small JPEG data URIs. A Content-Security-Policy forbids any network access. Every string taken
from the report (class names, file paths) is escaped, and any field may be missing: the page
shows what the report holds.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from workbench.report.record import Report, confusion_cells, sparse_confusion
from workbench.report.svg import PALETTE, Series, confusion_heatmap, line_chart

THUMBNAIL_PX = 96
TOP_CONFUSIONS = 20
LISTED_FILES = 200  # skipped / unreadable files listed by name; the rest are counted
RUN_KEYS = ("trainer", "data_dir", "model", "labels", "extractor", "extractor_sha256",
            "preprocessing", "workbench_version")  # fmt: skip
CLUSTER_ABOVE = 10  # reorder the confusion matrix by confusions when it has more classes
# Above this many classes the heatmap is not drawn: at 12 px a cell it would be thousands of
# pixels wide, unreadable on any screen and slow in any browser. The top confusions are
# listed instead, and every cell is in the JSON report.
HEATMAP_MAX_CLASSES = 300
# Where the timing table goes on a page rendered before the time spent writing is known.
TIMING_SLOT = "<!--workbench:timing-->"

STYLE = """
:root{color-scheme:light;--fg:#1b1f24;--muted:#5b636e;--line:#d9dde3;--bad:#b42318;
--bad-bg:#fef3f2;--bar:#dbe8f6}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;
color:var(--fg);background:#fff}
main{max-width:1120px;margin:0 auto;padding:12px 16px 48px}
h1{font-size:1.45rem;margin:.5em 0 .1em;overflow-wrap:anywhere}
h2{font-size:1.15rem;margin:1.8em 0 .6em;padding-bottom:.2em;border-bottom:1px solid var(--line)}
p{margin:.4em 0}.muted{color:var(--muted)}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(118px,1fr));gap:10px}
.card{border:1px solid var(--line);border-radius:8px;padding:8px 12px}
.card .value{display:block;font-size:1.55rem;font-weight:650;font-variant-numeric:tabular-nums}
.card .label{display:block;color:var(--muted);font-size:.85rem}
.card.main .value{font-size:2rem}
.card.warn{border-color:var(--bad);background:var(--bad-bg)}.card.warn .value{color:var(--bad)}
.alert{border:2px solid var(--bad);background:var(--bad-bg);color:var(--bad);border-radius:8px;
padding:10px 14px;margin:12px 0;font-weight:600}
.note{border-left:4px solid #b8bec7;padding:4px 10px;margin:12px 0;color:var(--muted)}
.scroll{overflow:auto;max-width:100%;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:4px 9px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{font-weight:600;background:#f6f7f9;position:sticky;top:0}
th:first-child,td:first-child{text-align:left}
td.name,th.left{text-align:left}td.name{max-width:16em;overflow:hidden;text-overflow:ellipsis}
td.bar{background:linear-gradient(90deg,var(--bar) calc(var(--v)*100%),transparent 0)}
th button{all:unset;cursor:pointer}th button:focus-visible{outline:2px solid #0072B2}
th[aria-sort=ascending] button::after{content:" \\25B2"}
th[aria-sort=descending] button::after{content:" \\25BC"}
table.kv th,table.counts th{text-align:left;background:none;position:static;font-weight:500;
color:var(--muted);white-space:normal}
table.sortable td:first-child{position:sticky;left:0;background:#fff}
table.sortable th:first-child{left:0;z-index:1}
table.kv td{text-align:left;white-space:normal;overflow-wrap:anywhere}
.scroll.tall{max-height:36em;border-bottom:1px solid var(--line)}
.side-by-side{display:flex;flex-wrap:wrap;gap:8px 40px;align-items:flex-start}
.side-by-side>*{min-width:0}
.scroll.wide{max-width:none;width:calc(100vw - 32px);position:relative;left:50%;
transform:translateX(-50%)}.wide>.heatmap-frame{margin:0 auto}h3{font-size:1rem;margin:.4em 0}
.heatmap-frame{display:flex;width:max-content;align-items:flex-start}
.heatmap-frame svg{display:block;flex:none}
svg.heatmap-rows{position:sticky;left:0;z-index:1;background:#fff}
ol.confusions{padding-left:2em;margin:.4em 0}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(112px,1fr));gap:10px}
.gallery figure{margin:0;font-size:.78rem;line-height:1.3;overflow-wrap:anywhere}
.gallery img,.placeholder{width:96px;height:96px;object-fit:contain;background:#f0f1f3;
border-radius:4px;display:block}
.placeholder{display:flex;align-items:center;justify-content:center;text-align:center;
color:var(--muted);border:1px dashed #b8bec7;font-size:.75rem}
.gallery .wrong{color:var(--bad)}
.charts{display:flex;flex-wrap:wrap;gap:8px 24px}
figure.chart{margin:0;flex:1 1 320px;max-width:500px}
figure.chart svg{width:100%;height:auto;font-size:12px}
figcaption{font-size:.85rem}.key{margin-right:1em;white-space:nowrap}
.swatch{display:inline-block;width:18px;height:0;border-top:3px solid var(--c);
margin-right:5px;vertical-align:middle}.swatch.dashed{border-top-style:dashed}
svg text{fill:var(--fg)}svg .chart-title{font-weight:600;font-size:13px}
svg .grid{stroke:#e3e6ea}svg .axis{stroke:#8a929c}svg .axis-label{fill:var(--muted)}
svg .line{fill:none;stroke-linejoin:round}svg .guide line{stroke:#fff;stroke-width:1}
svg.heatmap .count{font-size:13px}svg.heatmap .light{fill:#fff}
details{margin:.5em 0}summary{cursor:pointer;color:#0b5cad}
ul.files{font-size:.85rem;overflow-wrap:anywhere}
@media print{.scroll,.scroll.tall{overflow:visible;max-height:none}}
@media (max-width:520px){body{font-size:14px}main{padding:8px 10px 40px}
.card .value{font-size:1.3rem}.card.main .value{font-size:1.6rem}
figure.chart svg{font-size:14px}svg .chart-title{font-size:15px}}
"""

# Progressive enhancement: headers become sort buttons only when the script runs.
SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, column) {
    var button = document.createElement("button");
    button.type = "button";
    button.textContent = th.textContent;
    th.textContent = "";
    th.appendChild(button);
    button.addEventListener("click", function () {
      var ascending = th.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[column].dataset.v, y = b.cells[column].dataset.v;
        var order = isNaN(x) || isNaN(y) ? x.localeCompare(y) : x - y;
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def render_report(
    report: dict[str, Any], *, thumbnails: int = 200, timing_slot: bool = False
) -> str:
    """The whole page for a `train`/`evaluate` report; at most `thumbnails` mistakes shown.

    Time and size grow with the classes and images, never with the classes squared: the
    confusion matrix is read and drawn from its nonzero cells. `timing_slot`: leave a mark
    where the timing table goes, for `fill_timing_slot`.
    """
    sections = [
        _headline_section(report),
        _images_section(report),
        _per_class_section(report),
        _confusion_section(report),
        _training_curve_section(report),
        _learning_curve_section(report.get("curve")),
        _gallery_section(report, thumbnails),
        _files_section(report),
        _details_section(report, timing_slot),
    ]
    trainer = report.get("trainer")
    data = Path(str(report.get("data_dir", ""))).name or "dataset"
    title = f"workbench {trainer or 'evaluation'}: {data}"
    return _page(title, _subtitle(report), sections)


def fill_timing_slot(page: str, timing: dict[str, Any]) -> str:
    """The page with its timing table where `render_report(..., timing_slot=True)` left room.

    The mark is a comment only workbench writes: text from the report is escaped, so no
    class name or path can contain it.
    """
    return page.replace(TIMING_SLOT, _key_values_section("Timing (seconds)", timing), 1)


def render_curve(curve: dict[str, Any]) -> str:
    """A page for `workbench curve` alone: the learning curve, its table and the run details."""
    data = Path(str(curve.get("data_dir", ""))).name or "dataset"
    subtitle = (
        f"{len(curve.get('classes', []))} classes, held-out top-1 on "
        f"{curve.get('held_out_images', '?')} images"
    )
    details = {key: curve.get(key) for key in ("data_dir", "extractor", "preprocessing")}
    sections = [
        _learning_curve_section(curve),
        _key_values_section("Run", {**details, **curve.get("settings", {})}),
        _key_values_section("Timing (seconds)", curve.get("timing", {})),
    ]
    return _page(f"workbench learning curve: {data}", subtitle, sections)


def _page(title: str, subtitle: str, sections: Sequence[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="generator" content="workbench">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body><main>"
        f'<h1>{escape(title)}</h1><p class="muted">{escape(subtitle)}</p>\n'
        + "\n".join(s for s in sections if s)
        + f"\n</main><script>{SORT_SCRIPT}</script></body></html>\n"
    )


def _is_number(value: Any) -> bool:
    """True for a number from the report; False for JSON null, true/false or anything else."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: Any, default: float) -> float:
    return value if _is_number(value) else default


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if _is_number(value) else "\u2013"


def _subtitle(report: dict[str, Any]) -> str:
    parts = [str(report["data_dir"])] if report.get("data_dir") else []
    if report.get("classes"):
        parts.append(f"{len(report['classes'])} classes")
    if report.get("model"):
        parts.append(f"model {report['model']}")
    return " \u00b7 ".join(parts)


# ---- headline figures -------------------------------------------------------------------------


def _card(label: str, value: str, css: str = "", hint: str = "") -> str:
    title = f' title="{escape(hint)}"' if hint else ""
    return (
        f'<div class="card {css}"{title}><span class="value">{escape(value)}</span>'
        f'<span class="label">{escape(label)}</span></div>'
    )


def _headline_section(report: dict[str, Any]) -> str:
    cards = []
    for k, accuracy in enumerate(report.get("top_k_accuracy") or [], start=1):
        label = "top-1, exported model" if k == 1 else f"top-{k}"
        cards.append(_card(label, _pct(accuracy), "main" if k == 1 else ""))
    if report.get("float_top1_accuracy") is not None:
        cards.append(_card("top-1, float head", _pct(report["float_top1_accuracy"])))
    alert = ""
    if report.get("agreement") is not None:
        hint = "how often the exported model's top class is the float head's"
        cards.append(_card("agrees with float head", _pct(report["agreement"]), "", hint))
    # `agreement_ok`: reports written before the guard tested losses rather than agreement
    if report.get("export_ok", report.get("agreement_ok")) is False:
        versus = report.get("export_vs_float") or {}
        lost, won = versus.get("float_only_right"), versus.get("export_only_right")
        detail = (
            f"is wrong on {_count_text(lost)} held-out images its float head gets right, and "
            f"right on only {_count_text(won)} it gets wrong"
            if _is_number(lost) and _is_number(won)
            else "loses held-out images to its float head"
        )
        alert = (
            f'<p class="alert" role="alert">Warning: the exported 8-bit model {detail}: more '
            "than chance explains. Its 8-bit ranges do not fit these images; check this "
            "report before deploying.</p>"
        )
    for message in report.get("fallbacks") or []:
        alert += f'<p class="alert fallback" role="alert">Fallback: {escape(str(message))}</p>'
    if _is_number(report.get("num_images")):
        cards.append(_card("held-out images", f"{report['num_images']:,}"))
    overlap = _scored_training_images(report)
    if overlap:
        hint = "evaluated with --allow-overlap: images the model was trained on were scored"
        cards.append(_card("of them training images", f"{overlap:,}", "warn", hint))
        alert += (
            '<p class="alert" role="alert" id="overlap">Inflated: '
            f"{overlap:,} of the {_count_text(report.get('num_images'))} images scored were "
            "training images of this model (evaluated with --allow-overlap). These accuracies "
            "overstate how it does on new images.</p>"
        )
    elif overlap is None:
        alert += (
            '<p class="note" id="overlap">The model records no training images, so whether '
            "any image scored was one of them could not be checked.</p>"
        )
    if not cards:
        return alert and f'<section id="summary">{alert}</section>'
    return f'<section id="summary">{alert}<div class="cards">{"".join(cards)}</div></section>'


def _count_text(value: Any) -> str:
    return f"{value:,}" if _is_number(value) else "?"


def _scored_training_images(report: dict[str, Any]) -> int | None:
    """Training images among those scored (`evaluate --allow-overlap`); None: not checkable.

    0 when none were, or when the report is of a run that checks nothing (training, old).
    """
    evaluation = report.get("evaluation")
    if not isinstance(evaluation, dict) or "overlap" not in evaluation:
        return 0
    overlap = evaluation["overlap"]
    return int(overlap) if _is_number(overlap) else None


# ---- images used ------------------------------------------------------------------------------


def _class_counts(report: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Images per class by role (train, test, unused), from `counts` or else from `split`."""
    counts = report.get("counts") or {}
    found = {role: v for role, v in counts.items() if isinstance(v, dict)}
    split = report.get("split") or {}
    for role in ("train", "test"):
        if role not in found and isinstance(split.get(role), dict):
            found[role] = {name: len(files) for name, files in split[role].items()}
    return found


def _unreadable_total(report: dict[str, Any]) -> int | None:
    counted = (report.get("counts") or {}).get("unreadable")
    if isinstance(counted, dict):  # per class
        return sum(counted.values())
    if isinstance(counted, int):
        return counted
    listed = report.get("unreadable")
    return len(listed) if isinstance(listed, list) else None


def _per_class_range(values: dict[str, int]) -> str:
    if not values:
        return ""
    low, high = min(values.values()), max(values.values())
    return f"{low} per class" if low == high else f"{low}\u2013{high} per class"


def _trained(report: dict[str, Any]) -> bool:
    """True for a training run's report.

    False for `evaluate`'s: its split (maybe another seed or cap than the model's) has a
    training part the model was not necessarily trained on.
    """
    return bool(report.get("trainer"))


def _images_section(report: dict[str, Any]) -> str:
    roles = _class_counts(report)
    train = "used for training" if _trained(report) else "training part of this split"
    rows = [
        (label, sum(roles[role].values()), _per_class_range(roles[role]))
        for role, label in (
            ("train", train),
            ("test", "held out for evaluation"),
            ("unused", "left out by the per-class cap"),
        )
        if role in roles
    ]
    unreadable = _unreadable_total(report)
    if unreadable is not None:
        rows.append(("unreadable (skipped)", unreadable, ""))
    if isinstance(report.get("skipped_files"), list):
        rows.append(("files that are not images (skipped)", len(report["skipped_files"]), ""))
    if not rows:
        return ""
    body = "".join(
        f"<tr><th>{escape(label)}</th><td>{total:,}</td><td>{escape(spread)}</td></tr>"
        for label, total, spread in rows
    )
    return (
        '<section id="images"><h2>Images</h2>'
        f'<table class="counts" id="images-table">{body}</table></section>'
    )


# ---- per-class table --------------------------------------------------------------------------


@dataclass(frozen=True)
class Confusion:
    """Rows: true classes; columns: predicted labels (the classes, maybe plus "(other)").

    The matrix is kept as its nonzero cells (row, column, count), as the JSON report has it.
    """

    classes: list[str]
    labels: list[str]
    cells: list[tuple[int, int, int]]

    def totals(self) -> list[int]:
        """Images of each true class."""
        found = [0] * len(self.classes)
        for row, _, count in self.cells:
            found[row] += count
        return found

    def mistakes(self) -> list[tuple[int, str, str, int]]:
        """(count, true class, predicted label, images of the true class), largest first."""
        totals = self.totals()
        found = [
            (count, self.classes[row], self.labels[column], totals[row])
            for row, column, count in self.cells
            if self.labels[column] != self.classes[row]
        ]
        return sorted(found, key=lambda m: (-m[0], m[1], m[2]))

    def most_confused(self) -> dict[str, tuple[str, int]]:
        """Each class's most frequent wrong prediction and its count (absent when none)."""
        found: dict[str, tuple[str, int]] = {}
        for count, true, predicted, _ in self.mistakes():
            found.setdefault(true, (predicted, count))
        return found


def _confusion(report: dict[str, Any]) -> Confusion | None:
    """The report's confusion matrix with its row and column names, if it is well formed.

    From `confusion` (its nonzero cells), or from `confusion_matrix` in full in reports
    written before `confusion` existed.
    """
    classes = [str(name) for name in report.get("classes") or []]
    labels = [str(name) for name in report.get("confusion_labels") or classes]
    if not classes or not isinstance(report.get("classes"), list):
        return None
    if "confusion" in report:
        cells = confusion_cells(report["confusion"], len(classes), len(labels))
        return None if cells is None else Confusion(classes, labels, cells)
    matrix = report.get("confusion_matrix") or []
    if (
        not isinstance(matrix, list)
        or len(matrix) != len(classes)
        or any(not isinstance(r, list) or len(r) != len(labels) for r in matrix)
    ):
        return None
    found = confusion_cells(sparse_confusion(matrix), len(classes), len(labels))
    return None if found is None else Confusion(classes, labels, found)


def _percent_cell(value: Any) -> str:
    """A percentage with a bar behind it; sorts by value (missing sorts first)."""
    known = _is_number(value)
    return (
        f'<td class="bar" style="--v:{value if known else 0:.3f}"'
        f' data-v="{value if known else -1:.4f}">{_pct(value)}</td>'
    )


def _count_cell(count: Any) -> str:
    known = isinstance(count, int)
    return f'<td data-v="{count if known else -1}">{count if known else ""}</td>'


def _per_class_section(report: dict[str, Any]) -> str:
    """One row per class, worst F1 first: the classes that need more or better photos."""
    per_class = report.get("per_class") or {}
    if not per_class:
        return ""
    roles = _class_counts(report)
    count_columns = [("held out", None)] + [
        (label, role)
        for role, label in (
            ("train", "trained on" if _trained(report) else "split's train"),
            ("unused", "unused"),
        )
        if role in roles
    ]
    confusion = _confusion(report)
    confused = confusion.most_confused() if confusion else {}
    rows = []
    for name, m in sorted(per_class.items(), key=lambda item: (item[1].get("f1", 0), item[0])):
        cells = [
            f'<td class="name" data-v="{escape(name)}" title="{escape(name)}">{escape(name)}</td>'
        ]
        cells += [_percent_cell(m.get(key)) for key in ("f1", "precision", "recall")]
        cells += [
            _count_cell(m.get("support") if role is None else roles[role].get(name))
            for _, role in count_columns
        ]
        label, count = confused.get(name, ("", 0))
        text = f"{escape(label)} ({count})" if count else ""
        cells.append(f'<td class="name" data-v="{count}" title="{escape(label)}">{text}</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    columns = ["class", "F1", "precision", "recall", *(c for c, _ in count_columns)]
    head = "".join(
        f'<th scope="col"{" aria-sort=ascending" if c == "F1" else ""}>{c}</th>' for c in columns
    )
    head += '<th scope="col" class="left">most often predicted instead</th>'
    tall = " tall" if len(rows) > 25 else ""  # a long table scrolls in its own box
    return (
        '<section id="per-class"><h2>Per class</h2><p class="muted">Worst F1 first; select a '
        f'column heading to sort by it.</p><div class="scroll{tall}">'
        f'<table class="sortable" id="per-class-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div></section>"
    )


# ---- confusion matrix -------------------------------------------------------------------------


def _confusion_section(report: dict[str, Any]) -> str:
    confusion = _confusion(report)
    if confusion is None:
        return ""
    if len(confusion.classes) > HEATMAP_MAX_CLASSES:
        return (
            '<section id="confusion"><h2>Confusion matrix</h2><p class="muted">'
            f"{len(confusion.classes):,} classes are too many to draw as a matrix (it is drawn "
            f"up to {HEATMAP_MAX_CLASSES}); every nonzero cell is in the JSON report "
            f"(<code>confusion</code>).</p>{_top_confusions(confusion)}</section>"
        )
    clustered = len(confusion.classes) > CLUSTER_ABOVE
    note = (
        " Rows and columns are ordered so that classes confused with each other sit together."
        if clustered
        else ""
    )
    heatmap = confusion_heatmap(confusion.classes, confusion.labels, confusion.cells, clustered)
    if clustered:  # a big matrix may use the whole window, beyond the text column
        figure = f'<div class="scroll wide">{heatmap}</div>{_top_confusions(confusion)}'
    else:  # a small one leaves room for the list beside it
        figure = (
            f'<div class="side-by-side"><div class="scroll">{heatmap}</div>'
            f"{_top_confusions(confusion)}</div>"
        )
    return (
        '<section id="confusion"><h2>Confusion matrix</h2><p class="muted">Rows: true class; '
        "columns: predicted class. Blue: correct, red: mistakes; the darker, the larger the share "
        f"of the row. Hover or long-press a cell for its count.{note}</p>{figure}</section>"
    )


def _top_confusions(confusion: Confusion) -> str:
    """The largest mistakes as a list: "tulips -> roses: 7 (4% of tulips)"."""
    mistakes = confusion.mistakes()
    if not mistakes:
        return "<p>No confusions: every held-out image was classified correctly.</p>"
    items = "".join(
        f"<li>{escape(true)} \u2192 {escape(predicted)}: {count} "
        f'<span class="muted">({100 * count / total:.0f}% of {escape(true)})</span></li>'
        for count, true, predicted, total in mistakes[:TOP_CONFUSIONS]
    )
    shown = f"the {TOP_CONFUSIONS} largest of {len(mistakes)}"
    more = f' <small class="muted">({shown})</small>' if len(mistakes) > TOP_CONFUSIONS else ""
    return f'<div><h3>Top confusions{more}</h3><ol class="confusions">{items}</ol></div>'


# ---- misclassified images ---------------------------------------------------------------------


def thumbnail_data_uri(path: str | Path, size: int = THUMBNAIL_PX) -> str | None:
    """A small JPEG of the image as a data URI, upright by EXIF; None if it cannot be read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # odd EXIF or palettes are not worth a warning here
        return _thumbnail(path, size)


def _thumbnail(path: str | Path, size: int) -> str | None:
    """`thumbnail_data_uri` without its warnings filter, which is not thread-safe."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (2 * size, 2 * size))  # JPEG: decode at reduced size, fast
            upright = ImageOps.exif_transpose(image).convert("RGB")
        upright.thumbnail((size, size))
        buffer = io.BytesIO()
        upright.save(buffer, "JPEG", quality=72, optimize=True)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _mistake_figure(mistake: dict[str, Any], uri: str | None) -> str:
    file = str(mistake.get("file", ""))
    true, predicted = str(mistake.get("true", "?")), str(mistake.get("predicted", "?"))
    if uri is None:
        why = "image missing" if not file or not Path(file).exists() else "image unreadable"
        picture = f'<div class="placeholder" role="img" aria-label="{why}">{why}</div>'
    else:
        picture = f'<img src="{uri}" alt="{escape(true)} predicted as {escape(predicted)}">'
    score: Any = mistake.get("score")
    score_text = f" ({_score_text(score)})" if _is_number(score) else ""
    return (
        f'<figure title="{escape(file)}">{picture}<figcaption>{_breakable(true)}<br>'
        f'<span class="wrong">\u2192 {_breakable(predicted)}{score_text}</span></figcaption>'
        "</figure>"
    )


def _score_text(score: float) -> str:
    """Two decimals; three below 0.1, where 100-class scores sit (0.02 and 0.024 differ)."""
    return f"{score:.2f}" if abs(score) >= 0.1 else f"{score:.3f}"


def _breakable(name: str) -> str:
    """Escaped, with line-break chances after underscores: long class names wrap at words."""
    return escape(name).replace("_", "_<wbr>")


def _gallery_section(report: dict[str, Any], limit: int) -> str:
    mistakes = [m for m in report.get("mistakes") or [] if isinstance(m, dict)]
    if not mistakes or limit <= 0:
        return ""
    # The most confident mistakes first: they are the likeliest to be mislabelled photos.
    shown = sorted(mistakes, key=lambda m: -_number(m.get("score"), 0.0))[:limit]
    count = (
        f"all {len(shown)}" if len(shown) == len(mistakes) else f"{len(shown)} of {len(mistakes)}"
    )
    # Decoding and scaling release the GIL: the thumbnails are made on every core.
    files = [str(m.get("file", "")) for m in shown]
    with warnings.catch_warnings(), ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        warnings.simplefilter("ignore")  # odd EXIF or palettes are not worth a warning here
        thumbnails = list(pool.map(lambda f: _thumbnail(f, THUMBNAIL_PX) if f else None, files))
    return (
        '<section id="mistakes"><h2>Misclassified held-out images</h2>'
        f'<p class="muted">Showing {count}, most confident mistakes first: true class, then '
        "the predicted class and its score. Hover or long-press for the file.</p>"
        f'<div class="gallery">{"".join(map(_mistake_figure, shown, thumbnails))}</div></section>'
    )


# ---- curves -----------------------------------------------------------------------------------


def _training_curve_section(report: dict[str, Any]) -> str:
    """Backprop's loss and accuracies per epoch (other trainers have no curve)."""
    epochs = [e for e in report.get("training_curve") or [] if isinstance(e, dict) and "epoch" in e]
    if not epochs:
        return ""

    def column(key: str) -> list[tuple[float, float | None]]:
        return [(e["epoch"], e.get(key)) for e in epochs]

    loss = line_chart(
        [Series("training loss", column("loss"), PALETTE[3])],
        title="Loss",
        x_label="epoch",
        y_format=lambda v: f"{v:.2g}",
    )
    accuracy_series = [Series("training accuracy", column("train_accuracy"), PALETTE[0])]
    has_validation = any(y is not None for _, y in column("val_accuracy"))
    if has_validation:
        accuracy_series.append(Series("validation accuracy", column("val_accuracy"), PALETTE[2]))
    accuracy = line_chart(
        accuracy_series,
        title="Accuracy",
        x_label="epoch",
        y_format=lambda v: f"{100 * v:.0f}%",
        y_range=(0.0, 1.0),
    )
    note = "" if has_validation else '<p class="muted">No validation accuracy was recorded.</p>'
    return (
        f'<section id="training-curve"><h2>Training curve</h2><div class="charts">{loss}'
        f"{accuracy}</div>{note}</section>"
    )


def _learning_curve_section(curve: Any) -> str:
    """Held-out top-1 against images per class, per trainer (from `workbench curve`)."""
    points = [p for p in (curve or {}).get("points") or [] if isinstance(p, dict) and "cap" in p]
    if not points:
        return ""
    trainers = list(dict.fromkeys(name for p in points for name in p.get("float_top1") or {}))
    series = []
    for index, name in enumerate(trainers):
        color = PALETTE[index % len(PALETTE)]
        floats = [(p["cap"], (p.get("float_top1") or {}).get(name)) for p in points]
        exported = [(p["cap"], (p.get("exported_top1") or {}).get(name)) for p in points]
        series.append(Series(name, floats, color))
        series.append(
            Series(f"{name}, exported 8-bit", exported, color, style="points", in_legend=False)
        )
    values = [y for s in series for _, y in s.points if y is not None]
    chart = line_chart(
        series,
        title="Held-out top-1",
        x_label="training images per class",
        y_format=lambda v: f"{100 * v:.0f}%",
        y_range=(_axis_floor(values), 1.0),
        x_hover=lambda x: f"{x:g} per class",
        x_ticks=sorted({p["cap"] for p in points}),
        log_x=min(p["cap"] for p in points) > 0,
    )
    head = "".join(f"<th>{escape(name)}</th>" for name in trainers)
    rows = "".join(
        f"<tr><td>{p['cap']}</td><td>{p.get('train_images', '')}</td>"
        + "".join(f"<td>{_curve_cell(p, name)}</td>" for name in trainers)
        + "</tr>"
        for p in points
    )
    return (
        '<section id="learning-curve"><h2>Learning curve</h2><p class="muted">Top-1 of each '
        f"trainer on the same {curve.get('held_out_images', '')} held-out images when trained on "
        "the first N images of each class. Lines: the float head; hollow circles: the exported "
        "8-bit model, where it was scored (also in brackets in the table).</p>"
        f'<div class="charts">{chart}</div><div class="scroll"><table id="learning-curve-table">'
        "<thead><tr>"
        f"<th>per class</th><th>images</th>{head}</tr></thead><tbody>{rows}</tbody></table>"
        "</div></section>"
    )


def _axis_floor(accuracies: list[float]) -> float:
    """A round 10% step below the lowest accuracy, so trainers' differences are visible."""
    return max(0.0, math.floor(10 * min(accuracies, default=0.0)) / 10 - 0.1)


def _curve_cell(point: dict[str, Any], trainer: str) -> str:
    text = _pct((point.get("float_top1") or {}).get(trainer))
    exported = (point.get("exported_top1") or {}).get(trainer)
    return text + (f" ({_pct(exported)})" if exported is not None else "")


# ---- files passed over, and run details -------------------------------------------------------


def _file_list(title: str, items: list[str]) -> str:
    if not items:
        return ""
    listed = "".join(f"<li>{escape(item)}</li>" for item in items[:LISTED_FILES])
    more = (
        f"<li>\u2026 and {len(items) - LISTED_FILES} more</li>" if len(items) > LISTED_FILES else ""
    )
    return (
        f"<details><summary>{escape(title)} ({len(items)})</summary>"
        f'<ul class="files">{listed}{more}</ul></details>'
    )


def _files_section(report: dict[str, Any]) -> str:
    unreadable = [
        f"{u.get('file', '?')}: {u.get('error', '')}" if isinstance(u, dict) else str(u)
        for u in report.get("unreadable") or []
    ]
    skipped = [str(path) for path in report.get("skipped_files") or []]
    lists = _file_list("Unreadable images", unreadable) + _file_list("Skipped files", skipped)
    return f'<section id="files"><h2>Files passed over</h2>{lists}</section>' if lists else ""


def _value_text(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(", ", ": "))
    return "\u2013" if value is None else str(value)


def _key_values_section(title: str, values: dict[str, Any], open_: bool = True) -> str:
    rows = "".join(
        f"<tr><th>{escape(str(key))}</th><td>{escape(_value_text(value))}</td></tr>"
        for key, value in values.items()
        if value is not None
    )
    if not rows:
        return ""
    return (
        f"<details{' open' if open_ else ''}><summary>{escape(title)}</summary>"
        f'<table class="kv">{rows}</table></details>'
    )


def _details_section(report: dict[str, Any], timing_slot: bool = False) -> str:
    timing = report.get("timing") or {}
    parts = [
        _key_values_section("Run", {key: report.get(key) for key in RUN_KEYS}),
        _key_values_section("Settings", report.get("settings") or {}),
        _key_values_section("Evaluation", report.get("evaluation") or {}),
        TIMING_SLOT if timing_slot else _key_values_section("Timing (seconds)", timing),
        _key_values_section("Head", report.get("head") or {}, open_=False),
        _key_values_section("Embedding cache", report.get("cache") or {}, open_=False),
    ]
    body = "".join(parts)
    return f'<section id="details"><h2>Details</h2>{body}</section>' if body else ""


def rendered(report: Report, started: float) -> tuple[bytes, bytes]:
    """The JSON and HTML report files of `report`, with the time spent making them in its
    `timing`.

    `write_s` is the time taken to render the page and `total_s` runs from `started`
    (`time.perf_counter()` when the run began) to the end of it; the JSON is serialized
    last, so that it holds both (its own serialization, a fraction of the page's time, is
    the one step after the figures are taken).
    """
    start = time.perf_counter()
    page = render_report(report.to_json(), timing_slot=True)  # the timing is filled in below
    done = time.perf_counter()
    report.timing["write_s"] = round(done - start, 3)
    report.timing["total_s"] = round(done - started, 3)
    return report.dumps().encode(), fill_timing_slot(page, report.timing).encode()
