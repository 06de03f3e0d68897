"""The HTML report: parsed back with html.parser, and rendered by headless Chromium when present."""

from __future__ import annotations

import base64
import io
import random
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from workbench.report.html import render_curve, render_report, thumbnail_data_uri
from workbench.report.svg import confusion_order

FLOWERS = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
FLOWER_MATRIX = [
    [113, 7, 3, 5, 4],
    [16, 146, 5, 24, 0],
    [1, 1, 97, 7, 28],
    [5, 1, 4, 136, 4],
    [5, 4, 9, 9, 146],
]


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    parent: Element | None
    children: list[Element] = field(default_factory=list)
    text: str = ""  # all text inside, descendants included

    def has_class(self, name: str) -> bool:
        return name in self.attrs.get("class", "").split()

    def descendants(self, tag: str) -> list[Element]:
        found = []
        for child in self.children:
            found += [child] if child.tag == tag else []
            found += child.descendants(tag)
        return found


class Page(HTMLParser):
    """The parsed document as a tree of elements, each with its text; also checks nesting."""

    VOID = frozenset({"area", "br", "col", "embed", "hr", "img", "input", "link", "meta", "wbr"})

    def __init__(self, document: str) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#root", {}, None)
        self.all: list[Element] = []
        self.text_chunks: list[str] = []
        self._open = [self.root]
        self.feed(document)
        self.close()
        assert self._open == [self.root], [e.tag for e in self._open]  # every element closed

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs}, self._open[-1])
        self._open[-1].children.append(element)
        self.all.append(element)
        if tag not in self.VOID:
            self._open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs}, self._open[-1])
        self._open[-1].children.append(element)
        self.all.append(element)

    def handle_endtag(self, tag: str) -> None:
        assert self._open[-1].tag == tag, f"</{tag}> closes <{self._open[-1].tag}>"
        self._open.pop()

    def handle_data(self, data: str) -> None:
        self.text_chunks.append(data)
        for element in self._open:
            element.text += data

    def all_text(self) -> str:
        return "".join(self.text_chunks)

    def find(self, tag: str, css_class: str | None = None) -> list[Element]:
        return [
            e for e in self.all if e.tag == tag and (css_class is None or e.has_class(css_class))
        ]

    def elements(self, tag: str, css_class: str | None = None) -> list[dict[str, str]]:
        return [e.attrs for e in self.find(tag, css_class)]

    def table(self, table_id: str | None = None) -> list[list[str]]:
        """Cell texts, row by row, of the table with this id (default: the first table)."""
        table = next(t for t in self.find("table") if table_id in (None, t.attrs.get("id")))
        return [
            [cell.text for cell in row.children if cell.tag in ("td", "th")]
            for row in table.descendants("tr")
        ]

    @property
    def cell_titles(self) -> list[str]:
        """Hover texts of the confusion-matrix cells."""
        return [e.text for e in self.find("title") if e.parent and e.parent.has_class("cell")]

    def card_values(self) -> dict[str, str]:
        """Headline cards: label -> value."""
        cards = {}
        for card in self.find("div", "card"):
            parts = {c.attrs.get("class"): c.text for c in card.children}
            cards[parts["label"]] = parts["value"]
        return cards


def write_photo(path: Path, colour: tuple[int, int, int]) -> Path:
    """A real JPEG with some structure, so the thumbnail is not one flat colour."""
    image = Image.new("RGB", (320, 240), colour)
    image.paste((255 - colour[0], 255 - colour[1], 255 - colour[2]), (80, 60, 240, 180))
    image.save(path, quality=90)
    return path


def per_class_from(classes: list[str], matrix: list[list[int]]) -> dict[str, dict[str, Any]]:
    found = {}
    for i, name in enumerate(classes):
        support = sum(matrix[i])
        predicted = sum(row[i] for row in matrix)
        precision = matrix[i][i] / predicted if predicted else 0.0
        recall = matrix[i][i] / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        found[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return found


def make_report(
    classes: list[str], matrix: list[list[int]], mistakes: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """A report shaped like `OUT.report.json` of `workbench imprint` (overridable)."""
    total = sum(map(sum, matrix))
    correct = sum(matrix[i][i] for i in range(len(classes)))
    report = {
        "workbench_version": "0.1.0",
        "trainer": "imprint",
        "data_dir": "/data/flowers",
        "extractor": "/models/extractor.tflite",
        "settings": {"test_ratio": 0.25, "max_per_class": 20, "seed": 0, "whiten": True},
        "classes": classes,
        "counts": {
            "train": dict.fromkeys(classes, 20),
            "test": {name: sum(row) for name, row in zip(classes, matrix, strict=True)},
            "unused": dict.fromkeys(classes, 7),
        },
        "skipped_files": ["/data/flowers/notes.txt", "/data/flowers/roses/readme.md"],
        "unreadable": [{"file": "/data/flowers/tulips/broken.jpg", "error": "truncated"}],
        "timing": {"extract_s": 4.52, "train_s": 3.806, "evaluate_s": 5.358},
        "head": {"scale_factor": 40.9, "whitening_choice": {"held_out_loss": {"none": 0.46}}},
        "num_images": total,
        "top_k_accuracy": [correct / total, 0.9321, 0.9794, 0.9949, 1.0],
        "per_class": per_class_from(classes, matrix),
        "confusion_matrix": matrix,
        "confusion_labels": list(classes),
        "agreement": 0.98846,
        "mistakes": mistakes,
        "float_top1_accuracy": 0.81923,
        "export_ok": True,
        "export_vs_float": {"float_only_right": 4, "export_only_right": 5, "p_value": 1.0},
        "model": "/out/flowers.tflite",
    }
    report.update(extra)
    return report


@pytest.fixture
def flower_report(tmp_path: Path) -> dict[str, Any]:
    """The flowers report, with 4 readable mistakes, 2 missing files and 1 corrupt one."""
    colours = [(200, 40, 40), (40, 160, 60), (40, 60, 200), (220, 200, 30)]
    mistakes = [
        {
            "file": str(write_photo(tmp_path / f"roses_{i}.jpg", colour)),
            "true": "roses",
            "predicted": "tulips",
            "score": 0.9 - 0.1 * i,
        }
        for i, colour in enumerate(colours)
    ]
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    mistakes += [
        {"file": str(tmp_path / "gone_1.jpg"), "true": "daisy", "predicted": "roses", "score": 0.5},
        {
            "file": str(tmp_path / "gone_2.png"),
            "true": "tulips",
            "predicted": "roses",
            "score": 0.4,
        },
        {
            "file": str(tmp_path / "corrupt.jpg"),
            "true": "daisy",
            "predicted": "tulips",
            "score": 0.3,
        },
    ]
    return make_report(FLOWERS, FLOWER_MATRIX, mistakes)


def test_headline_figures_appear(flower_report: dict[str, Any]) -> None:
    page = Page(render_report(flower_report))
    assert page.card_values() == {
        "top-1, exported model": "81.8%",
        "top-2": "93.2%",
        "top-3": "97.9%",
        "top-4": "99.5%",
        "top-5": "100.0%",
        "top-1, float head": "81.9%",
        "agrees with float head": "98.8%",
        "held-out images": "780",
    }
    assert not page.elements("div", "warn") and "Warning:" not in page.all_text()
    # Images: 100 trained on (20 per class), 780 held out, 35 unused, 1 unreadable, 2 skipped.
    images = page.table("images-table")
    assert ["used for training", "100", "20 per class"] in images
    assert ["held out for evaluation", "780", "132\u2013191 per class"] in images
    assert ["left out by the per-class cap", "35", "7 per class"] in images
    assert ["unreadable (skipped)", "1", ""] in images
    assert ["files that are not images (skipped)", "2", ""] in images


def test_a_lossy_export_is_a_warning(flower_report: dict[str, Any]) -> None:
    versus = {"float_only_right": 31, "export_only_right": 3, "p_value": 1.1e-6}
    flower_report.update(agreement=0.874, export_ok=False, export_vs_float=versus)
    page = Page(render_report(flower_report))
    assert page.elements("p", "alert")
    assert "wrong on 31 held-out images its float head gets right" in page.all_text()
    assert "right on only 3 it gets wrong" in page.all_text()


def test_low_agreement_alone_is_no_warning(flower_report: dict[str, Any]) -> None:
    """Ties in 8 bits cost nothing: the export is as often right where the float head is not."""
    flower_report.update(agreement=0.958)
    page = Page(render_report(flower_report))
    assert not page.elements("p", "alert") and not page.find("div", "warn")
    assert "95.8%" in page.all_text()


def test_an_old_report_with_failed_agreement_still_warns(flower_report: dict[str, Any]) -> None:
    del flower_report["export_ok"], flower_report["export_vs_float"]
    flower_report.update(agreement=0.874, agreement_ok=False)
    page = Page(render_report(flower_report))
    assert "loses held-out images to its float head" in page.all_text()


def test_scoring_training_images_is_flagged_in_headline(flower_report: dict[str, Any]) -> None:
    """`evaluate --allow-overlap` that scored training images: an alert above the figures."""
    flower_report.update(
        trainer=None,
        evaluation={"method": "given split", "overlap": 312, "overlap_allowed": True},
    )
    page = Page(render_report(flower_report))
    summary = next(s for s in page.find("section") if s.attrs.get("id") == "summary")
    alert = next(p for p in summary.descendants("p") if p.has_class("alert"))
    assert summary.children[0] is alert  # first in the page's body, before the cards
    assert "312 of the 780 images scored were training images" in alert.text
    assert "--allow-overlap" in alert.text and "Inflated" in alert.text
    warned = page.find("div", "warn")
    assert [card.text for card in warned] == ["312of them training images"]


@pytest.mark.parametrize(
    ("evaluation", "shown"),
    [
        ({"method": "model's split", "overlap": 0, "overlap_allowed": False}, None),
        ({"method": "head+sample", "sample": 64, "identical": True}, None),  # a training run
        (None, None),
        ({"method": "default split", "overlap": None}, "could not be checked"),
    ],
)
def test_no_overlap_no_alarm(
    flower_report: dict[str, Any], evaluation: dict[str, Any] | None, shown: str | None
) -> None:
    flower_report["evaluation"] = evaluation
    page = Page(render_report(flower_report))
    assert not page.elements("p", "alert") and not page.find("div", "warn")
    notes = [p.text for p in page.find("p", "note")]
    if shown is None:
        assert not notes
    else:
        assert len(notes) == 1 and shown in notes[0]


def test_terminal_report_says_training_images_were_scored(
    flower_report: dict[str, Any],
) -> None:
    from rich.console import Console

    from workbench.report.display import print_report
    from workbench.report.record import Report

    flower_report.update(evaluation={"method": "given split", "overlap": 312}, split={})
    console = Console(width=80, record=True, color_system=None)
    print_report(console, Report.from_json(flower_report))
    lines = console.export_text().splitlines()
    warning = "WARNING: 312 of the 780 images scored were training images of this model"
    assert lines[0].startswith("WARNING: 312 of the 780 images scored were training images")
    assert all(len(line) <= 80 for line in lines)  # wrapped between words, not cut
    assert warning in " ".join(lines[:2]) and "inflated" in lines[1]
    assert sum(line.startswith("WARNING:") for line in lines) == 2  # again at the end
    assert "Accuracy (INFLATED)" in lines[2]  # the accuracy table's title
    flower_report["evaluation"] = {"method": "model's split", "overlap": 0}
    console = Console(width=80, record=True, color_system=None)
    print_report(console, Report.from_json(flower_report))
    text = console.export_text()
    assert "WARNING" not in text and "INFLATED" not in text and "Held-out accuracy" in text


def test_per_class_rows_sorted_worst_first(flower_report: dict[str, Any]) -> None:
    page = Page(render_report(flower_report))
    rows = page.table("per-class-table")
    header, body = rows[0], rows[1:]
    assert header[:7] == ["class", "F1", "precision", "recall", "held out", "trained on", "unused"]
    assert [row[0] for row in body] == ["roses", "sunflowers", "tulips", "daisy", "dandelion"]
    roses = body[0]
    assert roses[1:8] == ["77.0%", "82.2%", "72.4%", "134", "20", "7", "tulips (28)"]
    # Every numeric cell carries the value the script sorts by.
    sort_keys = [a["data-v"] for a in page.elements("td") if "data-v" in a]
    assert len(sort_keys) == 5 * 8
    assert page.elements("table", "sortable")


def test_confusion_cells_carry_counts(flower_report: dict[str, Any]) -> None:
    page = Page(render_report(flower_report))
    titles = set(page.cell_titles)
    assert len(page.elements("g", "cell")) == 25  # a small matrix draws its zeros too
    assert "roses \u2192 tulips: 28 of 134 (20.9%)" in titles
    assert "dandelion \u2192 tulips: 0 of 191 (0.0%)" in titles
    assert "tulips correct: 146 of 173 (84.4%)" in titles
    top = [item.text for item in page.find("ol", "confusions")[0].children]
    assert len(top) == 19  # every off-diagonal cell that is not 0
    assert top[:3] == [
        "roses \u2192 tulips: 28 (21% of roses)",
        "dandelion \u2192 sunflowers: 24 (13% of dandelion)",
        "dandelion \u2192 daisy: 16 (8% of dandelion)",
    ]


def test_everything_is_inline(flower_report: dict[str, Any]) -> None:
    document = render_report(flower_report)
    page = Page(document)
    images = page.elements("img")
    assert len(images) == 4
    assert all(attrs["src"].startswith("data:image/jpeg;base64,") for attrs in images)
    for attrs in (element.attrs for element in page.all):
        for name in ("src", "href", "action", "data", "poster"):
            value = attrs.get(name, "")
            assert not value or value.startswith(("data:", "#")), (name, value)
    assert "http://" not in document and "https://" not in document
    assert not page.elements("link") and not [a for a in page.elements("script") if "src" in a]
    policy = [m for m in page.elements("meta") if m.get("http-equiv") == "Content-Security-Policy"]
    assert "default-src 'none'" in policy[0]["content"]


def test_missing_and_unreadable_images_become_placeholders(flower_report: dict[str, Any]) -> None:
    page = Page(render_report(flower_report))
    placeholders = [a["aria-label"] for a in page.elements("div", "placeholder")]
    assert sorted(placeholders) == ["image missing", "image missing", "image unreadable"]
    figures = page.elements("figure")
    assert len([f for f in figures if f.get("title", "").endswith(".jpg")]) == 6
    assert "Showing all 7, most confident mistakes first" in page.all_text()


def test_thumbnails_are_capped_most_confident_first(flower_report: dict[str, Any]) -> None:
    page = Page(render_report(flower_report, thumbnails=2))
    gallery = [f["title"] for f in page.elements("figure") if "title" in f]
    assert [Path(title).name for title in gallery] == ["roses_0.jpg", "roses_1.jpg"]
    assert "Showing 2 of 7" in page.all_text()
    assert "mistakes" not in {
        a.get("id") for a in Page(render_report(flower_report, thumbnails=0)).elements("section")
    }


def decoded(uri: str) -> Image.Image:
    assert uri.startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert image.format == "JPEG"
    return image


def test_thumbnail_is_a_small_jpeg_upright_by_exif(tmp_path: Path) -> None:
    landscape = decoded(thumbnail_data_uri(write_photo(tmp_path / "a.jpg", (10, 200, 90))) or "")
    assert landscape.size == (96, 72)
    # The same pixels stored with "rotate 90 when displayed": a portrait photo.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(tmp_path / "a.jpg").save(tmp_path / "rotated.jpg", exif=exif)
    assert decoded(thumbnail_data_uri(tmp_path / "rotated.jpg") or "").size == (72, 96)
    small_png = tmp_path / "small.png"
    Image.new("RGBA", (40, 20), (255, 0, 0, 128)).save(small_png)
    assert decoded(thumbnail_data_uri(small_png) or "").size == (40, 20)  # never enlarged
    assert thumbnail_data_uri(tmp_path / "missing.jpg") is None
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert thumbnail_data_uri(tmp_path / "empty.jpg") is None
    assert thumbnail_data_uri(tmp_path) is None  # a folder


def test_class_names_and_paths_are_escaped(tmp_path: Path) -> None:
    classes = ["<b>bold</b>", 'fish & "chips"', "it's"]
    matrix = [[5, 1, 0], [2, 4, 0], [0, 0, 6]]
    mistakes = [
        {
            "file": str(tmp_path / "<img src=x>.jpg"),
            "true": classes[0],
            "predicted": classes[1],
            "score": 0.7,
        }
    ]
    report = make_report(classes, matrix, mistakes, data_dir="/data/<script>alert(1)</script>")
    document = render_report(report)
    page = Page(document)
    assert not page.elements("b") and not page.elements("img")
    assert [a for a in page.elements("script")] == [{}]  # only the page's own sort script
    assert "<b>bold</b>" not in document and "&lt;b&gt;bold&lt;/b&gt;" in document
    assert "<script>alert" not in document
    assert '<b>bold</b> \u2192 fish & "chips": 1 of 6 (16.7%)' in page.cell_titles
    rows = page.table("per-class-table")
    assert {row[0] for row in rows[1:]} == set(classes)


def synthetic_report(num_classes: int, tmp_path: Path, seed: int = 0) -> dict[str, Any]:
    """Many classes with long names, confused within groups of 3-4 whose names sort apart."""
    rng = random.Random(seed)
    words = [
        "apple",
        "beet",
        "chocolate",
        "dumpling",
        "eggs",
        "fried",
        "grilled",
        "hot",
        "ice_cream",
        "jam",
        "kebab",
        "lobster",
        "mussels",
        "noodles",
        "omelette",
        "pancakes",
    ]
    classes = sorted(
        f"{rng.choice(words)}_{rng.choice(words)}_{i:03d}" + ("_extra_long_name" * (i % 7 == 0))
        for i in range(num_classes)
    )
    groups = list(range(num_classes))
    rng.shuffle(groups)
    group_of = {c: k // 4 for k, c in enumerate(groups)}
    matrix = []
    for i in range(num_classes):
        row = [0] * num_classes
        support = rng.randint(20, 40)
        mates = [j for j in range(num_classes) if group_of[j] == group_of[i] and j != i] or [i]
        for _ in range(support):
            roll = rng.random()
            j = (
                i
                if roll < 0.7
                else rng.choice(mates)
                if roll < 0.92
                else rng.randrange(num_classes)
            )
            row[j] += 1
        matrix.append(row)
    photo = write_photo(tmp_path / "photo.jpg", (120, 80, 40))
    mistakes = [
        {
            "file": str(photo if k % 3 else tmp_path / f"missing_{k}.jpg"),
            "true": classes[i],
            "predicted": classes[j],
            "score": rng.random(),
        }
        for k, (i, j) in enumerate(
            (i, j)
            for i in range(num_classes)
            for j in range(num_classes)
            if i != j
            for _ in range(matrix[i][j])
        )
    ]
    return make_report(classes, matrix, mistakes, trainer="backprop")


def test_101_classes_render_bounded_and_parseable(tmp_path: Path) -> None:
    report = synthetic_report(101, tmp_path)
    document = render_report(report)
    assert len(document.encode()) < 2_500_000
    page = Page(document)
    assert len(page.table("per-class-table")) == 102
    nonzero = sum(1 for row in report["confusion_matrix"] for count in row if count)
    assert len(page.elements("g", "cell")) == nonzero  # empty cells are not drawn
    assert len(page.elements("figure")) == 200
    heatmap = page.elements("svg", "heatmap")[0]
    assert int(heatmap["width"]) < 1700  # wide, but in a scrolling container
    assert "ordered so that classes confused with each other sit together" in page.all_text()


def test_confusion_order_puts_confused_classes_together() -> None:
    # 0<->4 and 1<->3 are confused; 2 and 5 are confused with nothing.
    matrix = [
        [8, 0, 0, 0, 2, 0],
        [0, 9, 0, 1, 0, 0],
        [0, 0, 10, 0, 0, 0],
        [0, 3, 0, 7, 0, 0],
        [4, 0, 0, 0, 6, 0],
        [0, 0, 0, 0, 0, 10],
    ]
    order = confusion_order(matrix)
    assert sorted(order) == list(range(6))
    assert abs(order.index(0) - order.index(4)) == 1
    assert abs(order.index(1) - order.index(3)) == 1
    assert confusion_order([[5, 0], [0, 5]]) == [0, 1]


def test_confusion_order_clusters_a_synthetic_101(tmp_path: Path) -> None:
    report = synthetic_report(101, tmp_path)
    matrix = report["confusion_matrix"]
    order = confusion_order(matrix)
    assert sorted(order) == list(range(101))

    def confusion_near_diagonal(rows: list[int]) -> float:
        """Share of mistakes between classes at most 3 places apart."""
        position = {c: k for k, c in enumerate(rows)}
        near = total = 0
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                if i != j:
                    total += count
                    near += count * (abs(position[i] - position[j]) <= 3)
        return near / total

    assert confusion_near_diagonal(order) > 0.6 > 0.2 > confusion_near_diagonal(list(range(101)))


def training_curve(epochs: int, validation: bool) -> list[dict[str, Any]]:
    return [
        {
            "epoch": e,
            "learning_rate": 0.1,
            "loss": 1.5 / e,
            "train_accuracy": 1 - 0.5 / e,
            "val_accuracy": (0.9 - 0.4 / e) if validation and e % 2 == 0 else None,
        }
        for e in range(1, epochs + 1)
    ]


def assert_charts_inside_their_boxes(page: Page) -> None:
    """Every line and dot of every chart lies within the chart's plot area, not beyond."""
    charts = [svg for figure in page.find("figure", "chart") for svg in figure.descendants("svg")]
    assert charts
    for svg in charts:
        viewbox = svg.attrs["viewbox"]  # html.parser lowercases attribute names
        _, _, width, height = map(float, viewbox.split())
        points = []
        for path in svg.descendants("path"):
            for command in re.findall(r"[ML]([-\d.]+) ([-\d.]+)", path.attrs["d"]):
                points.append(tuple(map(float, command)))
        points += [(float(c.attrs["cx"]), float(c.attrs["cy"])) for c in svg.descendants("circle")]
        assert points
        xs, ys = [x for x, _ in points], [y for _, y in points]
        assert min(xs) > 40 and max(xs) < width - 10, (min(xs), max(xs))
        assert min(ys) > 20 and max(ys) < height - 40, (min(ys), max(ys))
        assert max(xs) - min(xs) > width / 2  # spread over the x axis, not bunched up


@pytest.mark.parametrize("validation", [True, False])
def test_backprop_training_curve(flower_report: dict[str, Any], validation: bool) -> None:
    flower_report.update(trainer="backprop", training_curve=training_curve(40, validation))
    page = Page(render_report(flower_report))
    section_ids = [a.get("id") for a in page.elements("section")]
    assert "training-curve" in section_ids
    assert section_ids.index("training-curve") < section_ids.index("mistakes")
    lines = page.elements("path", "line")
    assert len(lines) == (3 if validation else 2)
    if validation:  # every other epoch is missing: the path lifts the pen between them
        assert lines[2]["d"].count("M") == 20 and "L" not in lines[2]["d"]
    legend = [key.text for key in page.find("span", "key")]
    assert legend == ["training loss", "training accuracy"] + ["validation accuracy"] * validation
    assert "training loss, epoch 40: 0.037" in page.all_text()  # a point's hover text
    assert_charts_inside_their_boxes(page)


CURVE = {
    "data_dir": "/data/flowers",
    "classes": FLOWERS,
    "held_out_images": 780,
    "settings": {"test_ratio": 0.25, "seed": 0, "caps": [1, 2, 5, 10, 20]},
    "points": [
        {
            "cap": cap,
            "train_images": 5 * cap,
            "float_top1": {"imprint": 0.6 + 0.01 * cap, "backprop": 0.62 + 0.01 * cap},
            "exported_top1": {"imprint": 0.59 + 0.01 * cap} if cap in (1, 20) else {},
            "agreement": {},
        }
        for cap in (1, 2, 5, 10, 20)
    ],
    "timing": {"extract_s": 0.09, "total_s": 48.5},
}


def test_learning_curve_in_report_and_alone(flower_report: dict[str, Any]) -> None:
    flower_report["curve"] = CURVE
    for document in (render_report(flower_report), render_curve(CURVE)):
        page = Page(document)
        assert "learning-curve" in [a.get("id") for a in page.elements("section")]
        assert len(page.elements("path", "line")) == 2  # one line per trainer
        hollow = [c for c in page.elements("circle") if c.get("fill") == "#fff"]
        assert len(hollow) == 2  # exported imprint model at caps 1 and 20
        text = page.all_text()
        assert "backprop, 20 per class: 82%" in text
        assert "imprint, exported 8-bit, 20 per class: 79%" in text
        curve_table = page.table("learning-curve-table")
        assert ["20", "100", "80.0% (79.0%)", "82.0%"] in curve_table  # imprint, backprop
        assert_charts_inside_their_boxes(page)


def test_evaluate_report_with_few_fields_renders() -> None:
    report = {
        "classes": ["a", "b"],
        "num_images": 4,
        "top_k_accuracy": [0.75, 1.0],
        "confusion_matrix": [[2, 0], [1, 1]],
        "confusion_labels": ["a", "b"],
        "per_class": {"a": {"f1": 0.8}, "b": {}},
        "split": {"train": {"a": ["x", "y"], "b": ["z"]}, "test": {"a": ["p"], "b": ["q"]}},
    }
    page = Page(render_report(report))
    assert "workbench evaluation: dataset" in page.all_text()
    # No trainer: `evaluate`'s split, whose training part the model may not have trained on.
    assert ["training part of this split", "3", "1\u20132 per class"] in page.table("images-table")
    assert [row[:5] for row in page.table("per-class-table")[1:]] == [
        ["b", "\u2013", "\u2013", "\u2013", ""],
        ["a", "80.0%", "\u2013", "\u2013", ""],
    ]
    assert Page(render_report({})).elements("h1")


def test_other_column_of_predictions_outside_the_classes(flower_report: dict[str, Any]) -> None:
    flower_report["confusion_matrix"] = [[*row, 1] for row in FLOWER_MATRIX]
    flower_report["confusion_labels"] = [*FLOWERS, "(other)"]
    page = Page(render_report(flower_report))
    assert "roses \u2192 (other): 1 of 135 (0.7%)" in page.cell_titles


def screenshot(tmp_path: Path, document: str, width: int, height: int) -> Image.Image:
    """Render the page in headless Chromium (no network, throwaway profile) to a PNG."""
    page = tmp_path / "report.html"
    page.write_text(document, encoding="utf-8")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            f"--window-size={width},{height}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return Image.open(shot).convert("RGB")


def dump_dom(tmp_path: Path, document: str) -> str:
    page = tmp_path / "dom.html"
    page.write_text(document, encoding="utf-8")
    done = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile-dom'}",
            "--dump-dom",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.stdout


needs_chromium = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium is not on PATH (apt-get install chromium)"
)


@needs_chromium
@pytest.mark.parametrize("num_classes", [5, 101])
def test_chromium_renders_a_colourful_page(
    flower_report: dict[str, Any], tmp_path: Path, num_classes: int
) -> None:
    report = flower_report if num_classes == 5 else synthetic_report(num_classes, tmp_path)
    report.update(trainer="backprop", training_curve=training_curve(40, True))
    image = screenshot(tmp_path, render_report(report), 1200, 2000)
    assert image.size == (1200, 2000)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50
    # The heatmap's dark blue (correct) and red (mistakes) are on screen.
    assert any(b > r + 60 and b > g + 20 for _, (r, g, b) in colours)
    assert any(r > b + 60 and r > g + 40 for _, (r, g, b) in colours)


@needs_chromium
def test_chromium_runs_the_sort_script(flower_report: dict[str, Any], tmp_path: Path) -> None:
    dom = dump_dom(tmp_path, render_report(flower_report))
    # The script turns each heading of the sortable table into a button.
    assert dom.count('<button type="button">') == 8


def test_terminal_progress_fits_80_columns_and_spins_when_length_unknown() -> None:
    """Backprop's live line at 80 columns, and a spinner for a step of unknown length."""
    from rich.console import Console

    from workbench.report.display import ConsoleReporter

    buffer = io.StringIO()
    console = Console(file=buffer, width=80, force_terminal=True, color_system=None)
    reporter = ConsoleReporter(console)
    with reporter.task("training", 103) as advance:
        advance(1, status="choosing reg: fold 1/3")
        advance(1, status="loss 0.025 train 1.000")
    with reporter.task("choosing whitening by cross-validation", 0):
        pass
    frames = {
        re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", frame).rstrip()
        for frame in re.split(r"\x1b\[2K|\r|\n", buffer.getvalue())
    }
    frames.discard("")
    assert frames and all(len(frame) <= 80 and "\u2026" not in frame for frame in frames)
    assert any(f.endswith("loss 0.025 train 1.000") for f in frames)
    spinning = [f for f in frames if "choosing whitening by cross-validation" in f]
    assert spinning and all(
        f[0] in "\u280b\u2819\u2839\u2838\u283c\u2834\u2826\u2827\u2807\u280f" for f in spinning
    )
