"""Inline SVG for the HTML report: line charts and the confusion-matrix heatmap.

Written by hand rather than with matplotlib or another plotting library: workbench runs on a
Raspberry Pi, where such a dependency is large and slow to import, and the report must be one
self-contained file anyway. Every function returns markup ready to inline in the page; all
text it draws is escaped here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

# Okabe-Ito colours: distinguishable with the common forms of colour blindness.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000")

EMPTY_CELL = "#f6f7f9"
CORRECT_LOW, CORRECT_HIGH = (230, 240, 250), (8, 69, 148)  # diagonal: light to dark blue
WRONG_LOW, WRONG_HIGH = (254, 237, 222), (166, 27, 0)  # off the diagonal: light to dark red


@dataclass(frozen=True)
class Series:
    """One line of a chart; a y of None leaves a gap (e.g. an epoch without validation)."""

    name: str
    points: Sequence[tuple[float, float | None]]
    color: str
    style: str = "line"  # "line", "dashed", or "points" (hollow dots, no line between them)
    in_legend: bool = True


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) covering low..high."""
    span = high - low if high > low else abs(high) or 1.0
    raw_step = span / count
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw_step)
    ticks, value = [], math.ceil(low / step - 1e-9) * step
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _mix(low: tuple[int, int, int], high: tuple[int, int, int], t: float) -> str:
    t = min(1.0, max(0.0, t))
    return "#" + "".join(f"{round(a + (b - a) * t):02x}" for a, b in zip(low, high, strict=True))


def cell_color(rate: float, correct: bool) -> str:
    """Blue for correct predictions, red for mistakes, darker as the row's share grows.

    Mistakes use the square root of their share so a 2% confusion is still visible next to a
    diagonal of 95%.
    """
    if rate <= 0:
        return EMPTY_CELL
    if correct:
        return _mix(CORRECT_LOW, CORRECT_HIGH, rate)
    return _mix(WRONG_LOW, WRONG_HIGH, math.sqrt(rate))


def _truncate(text: str, limit: int) -> str:
    """Cut from the middle: class names often differ at the end ("chocolate_cake/_mousse")."""
    if len(text) <= limit:
        return text
    tail = (limit - 1) // 2
    return text[: limit - 1 - tail] + "\u2026" + text[len(text) - tail :]


@dataclass(frozen=True)
class PlotArea:
    """Maps data values to SVG coordinates in a fixed-size chart (the page scales the SVG)."""

    x_low: float
    x_high: float
    y_low: float
    y_high: float
    log_x: bool = False
    width: int = 440
    height: int = 250
    left: int = 52  # room for the y tick labels
    right: int = 14
    top: int = 26  # room for the title
    bottom: int = 42  # room for the x tick labels and the x axis label

    def _x_scale(self, x: float) -> float:
        return math.log10(x) if self.log_x else x

    def px(self, x: float) -> float:
        low, high = self._x_scale(self.x_low), self._x_scale(self.x_high)
        share = (self._x_scale(x) - low) / ((high - low) or 1.0)
        return self.left + share * (self.width - self.left - self.right)

    def py(self, y: float) -> float:
        share = (y - self.y_low) / ((self.y_high - self.y_low) or 1.0)
        return self.height - self.bottom - share * (self.height - self.top - self.bottom)


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_format: Callable[[float], str],
    x_format: Callable[[float], str] = lambda x: f"{x:g}",
    x_hover: Callable[[float], str] | None = None,
    y_range: tuple[float, float] | None = None,
    x_ticks: Sequence[float] | None = None,
    log_x: bool = False,
) -> str:
    """A `<figure>` with an SVG line chart and an HTML legend (which wraps on a phone).

    Every point carries a `<title>`, so hovering or long-pressing it shows its exact value;
    `x_hover` words its x there (default: "<x_label> <x>"). Empty when there is nothing to plot.
    """
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points if y is not None]
    if not xs or not ys:
        return ""
    y_low, y_high = y_range or (min(0.0, min(ys)), max(ys) * 1.05 or 1.0)
    area = PlotArea(min(xs), max(xs), y_low, y_high, log_x)
    hover = x_hover or (lambda x: f"{x_label} {x_format(x)}")
    parts = [
        f'<svg viewBox="0 0 {area.width} {area.height}" role="img"'
        f' aria-label="{escape(title)}">'
        f'<text x="{area.left}" y="16" class="chart-title">{escape(title)}</text>',
        _axes(area, x_label, y_format, x_format, x_ticks or nice_ticks(min(xs), max(xs))),
    ]
    lines = [s for s in series if s.style != "points"]
    for s in series:
        if s.style != "points":
            # Earlier lines are drawn wider, so a line hidden under a later one still shows.
            stroke = 2.0 + 1.5 * (len(lines) - 1 - lines.index(s))
            parts.append(_polyline(s, area, stroke))
        parts.append(_markers(s, area, hover, y_format))
    parts.append("</svg>")
    legend = "".join(
        f'<span class="key"><span class="swatch {s.style}" style="--c:{s.color}"></span>'
        f"{escape(s.name)}</span>"
        for s in series
        if s.in_legend
    )
    return f'<figure class="chart">{"".join(parts)}<figcaption>{legend}</figcaption></figure>'


def _axes(
    area: PlotArea,
    x_label: str,
    y_format: Callable[[float], str],
    x_format: Callable[[float], str],
    x_ticks: Sequence[float],
) -> str:
    """Horizontal grid lines with y labels, the x axis with its ticks and its label."""
    x_end, y_axis = area.width - area.right, area.height - area.bottom
    parts = []
    for tick in nice_ticks(area.y_low, area.y_high):
        y = area.py(tick)
        parts.append(
            f'<line x1="{area.left}" x2="{x_end}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{area.left - 6}" y="{y + 4:.1f}" text-anchor="end">{y_format(tick)}</text>'
        )
    for tick in x_ticks:
        x = area.px(tick)
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y_axis}" y2="{y_axis + 4}" class="axis"/>'
            f'<text x="{x:.1f}" y="{y_axis + 16}" text-anchor="middle">'
            f"{escape(x_format(tick))}</text>"
        )
    parts.append(
        f'<line x1="{area.left}" x2="{x_end}" y1="{y_axis}" y2="{y_axis}" class="axis"/>'
        f'<text x="{(area.left + x_end) / 2}" y="{area.height - 6}" text-anchor="middle"'
        f' class="axis-label">{escape(x_label)}</text>'
    )
    return "".join(parts)


def _polyline(s: Series, area: PlotArea, stroke: float) -> str:
    """The series as one path, lifted over missing values."""
    commands, pen_down = [], False
    for x, y in s.points:
        if y is None:
            pen_down = False
            continue
        commands.append(f"{'L' if pen_down else 'M'}{area.px(x):.1f} {area.py(y):.1f}")
        pen_down = True
    dash = ' stroke-dasharray="6 4"' if s.style == "dashed" else ""
    return (
        f'<path d="{"".join(commands)}" stroke="{s.color}" stroke-width="{stroke:g}"'
        f' class="line"{dash}/>'
    )


def _markers(
    s: Series, area: PlotArea, x_hover: Callable[[float], str], y_format: Callable[[float], str]
) -> str:
    """A hover target per point; drawn as dots only when there are few enough to see."""
    if s.style == "points":
        look = f'r="5" fill="#fff" stroke="{s.color}" stroke-width="2"'
    elif sum(y is not None for _, y in s.points) <= 30:
        look = f'r="3.5" fill="{s.color}"'
    else:
        look = f'r="3.5" fill="{s.color}" fill-opacity="0"'
    return "".join(
        f'<circle cx="{area.px(x):.1f}" cy="{area.py(y):.1f}" {look}>'
        f"<title>{escape(s.name)}, {escape(x_hover(x))}: {y_format(y)}</title></circle>"
        for x, y in s.points
        if y is not None
    )


def confusion_order(matrix: Sequence[Sequence[int]]) -> list[int]:
    """Row order that puts classes often mistaken for each other next to each other.

    `matrix` is the confusion matrix in full; see `confusion_order_of_cells`.
    """
    cells = [(i, j, count) for i, row in enumerate(matrix) for j, count in enumerate(row) if count]
    return confusion_order_of_cells(len(matrix), cells)


def confusion_order_of_cells(n: int, cells: Sequence[tuple[int, int, int]]) -> list[int]:
    """`confusion_order` of an n-class matrix given by its nonzero cells (row, column, count).

    A greedy maximum-weight path: pairs are taken by how often they are confused (as a share of
    each row, so small classes count as much as big ones); a pair joins when both classes still
    have a free side and are not already in one chain. Chains are then laid out in the order of
    their first class, so unconfused classes keep their original (alphabetical) place. Only
    the nonzero cells are visited, so thousands of classes cost what their mistakes cost.
    """
    totals = [0] * n
    for i, _, count in cells:
        totals[i] += count
    weights: dict[tuple[int, int], float] = {}
    for i, j, count in cells:
        if i != j and j < n:  # columns past the classes ("(other)") pair with nothing
            pair = (min(i, j), max(i, j))
            weights[pair] = weights.get(pair, 0.0) + count / (totals[i] or 1)
    pairs = sorted((-weight, i, j) for (i, j), weight in weights.items() if weight > 0)
    neighbours: list[list[int]] = [[] for _ in range(n)]
    chain_of = list(range(n))  # union-find forest: a chain is named by its root

    def chain(i: int) -> int:
        while chain_of[i] != i:
            i = chain_of[i]
        return i

    for _, i, j in pairs:
        if len(neighbours[i]) < 2 and len(neighbours[j]) < 2 and chain(i) != chain(j):
            neighbours[i].append(j)
            neighbours[j].append(i)
            chain_of[chain(i)] = chain(j)
    order: list[int] = []
    placed: set[int] = set()
    for start in range(n):
        if start in placed or len(neighbours[start]) > 1:
            continue  # placed already, or the middle of a chain: walk chains from an end
        previous, current = -1, start
        while current != -1:
            order.append(current)
            placed.add(current)
            onward = [k for k in neighbours[current] if k != previous]
            previous, current = current, onward[0] if onward else -1
    return order


@dataclass(frozen=True)
class HeatmapLayout:
    """Pixel geometry: big cells with counts for a few classes, small ones for 100.

    The SVGs keep this fixed size on every screen (their container scrolls), so labels stay
    readable on a phone instead of shrinking with the page.
    """

    cell: int
    font: int
    label_chars: int  # longer class names are cut, with the full name in the hover text
    counts_inside: bool
    draw_zeros: bool  # empty cells are left out of big matrices to bound the page size
    left: int = 0  # margins around the grid, for the labels
    top: int = 0
    right: int = 0
    bottom: int = 4

    @classmethod
    def fit(cls, row_labels: Sequence[str], column_labels: Sequence[str]) -> HeatmapLayout:
        n = len(column_labels)
        # 24 characters hold nearly every real class name whole (Food-101's longest is 23);
        # cut shorter, names that differ in the middle or at the end become indistinguishable.
        if n <= 8:
            layout = cls(cell=52, font=12, label_chars=24, counts_inside=True, draw_zeros=True)
        elif n <= 16:
            layout = cls(cell=34, font=11, label_chars=24, counts_inside=True, draw_zeros=True)
        elif n <= 40:
            layout = cls(cell=18, font=11, label_chars=24, counts_inside=False, draw_zeros=True)
        else:
            layout = cls(cell=12, font=10, label_chars=24, counts_inside=False, draw_zeros=False)
        row_px = max(len(layout.short(x)) for x in row_labels) * layout.char_px
        column_px = max(len(layout.short(x)) for x in column_labels) * layout.char_px
        left = max(90, round(row_px) + 12)
        top = round(column_px * (1.0 if layout.vertical else 0.72)) + 34
        right = 8 if layout.vertical else round(column_px * 0.72)  # slanted labels lean right
        # A tall matrix repeats its column names below, in view while reading its last rows.
        bottom = round(column_px) + 10 if layout.labels_below(len(row_labels)) else 4
        return dataclasses.replace(layout, left=left, top=top, right=right, bottom=bottom)

    def labels_below(self, rows: int) -> bool:
        return self.vertical and rows > 30

    @property
    def char_px(self) -> float:
        return self.font * 0.62  # average glyph width of the usual sans-serif fonts

    @property
    def vertical(self) -> bool:
        """Column labels stand upright when cells are too narrow for slanted ones."""
        return self.cell < 24

    def short(self, name: str) -> str:
        return _truncate(name, self.label_chars)


def confusion_heatmap(
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    cells: Sequence[tuple[int, int, int]],
    cluster: bool = False,
) -> str:
    """The confusion matrix as an SVG heatmap, its row names in a second SVG beside it.

    `cells` are the matrix's nonzero cells (row, column, count). Rows are true classes,
    columns predictions (columns past the rows, e.g. "(other)", stay last). A cell's colour
    is its share of the row; its `<title>` gives the exact count. A column is the diagonal
    when its label is the row's. `cluster` reorders rows and columns with `confusion_order`.
    The row names stay in view (CSS `position: sticky`) while a matrix wider than the screen
    scrolls sideways under them.
    """
    n = len(row_labels)
    order = confusion_order_of_cells(n, cells) if cluster else list(range(n))
    columns = order + list(range(n, len(column_labels)))
    place = {source: position for position, source in enumerate(columns)}
    by_row: list[dict[int, int]] = [{} for _ in range(n)]  # row -> {column position: count}
    for i, j, count in cells:
        by_row[i][place[j]] = count
    rows = [row_labels[i] for i in order]
    labels = [column_labels[j] for j in columns]
    layout = HeatmapLayout.fit(rows, labels)
    cell, left, top = layout.cell, layout.left, layout.top
    grid_w, grid_h = cell * len(labels), cell * len(rows)
    width, height = grid_w + layout.right, top + grid_h + layout.bottom
    # Both SVGs share the page's coordinates: the grid's view box starts where the names end.
    names = [
        f'<svg class="heatmap-rows" width="{left}" height="{height}"'
        f' viewBox="0 0 {left} {height}" aria-hidden="true" style="font-size:{layout.font}px">',
        f'<text x="4" y="{top - 8}" class="axis-label">true \u2193</text>',
    ]
    grid = [
        f'<svg class="heatmap" width="{width}" height="{height}"'
        f' viewBox="{left} 0 {width} {height}" role="img" aria-label="confusion matrix"'
        f' style="font-size:{layout.font}px">',
        f'<text x="{left}" y="14" class="axis-label">predicted \u2192</text>',
        f'<rect x="{left}" y="{top}" width="{grid_w}" height="{grid_h}" fill="{EMPTY_CELL}"/>',
    ]
    grid += _column_labels(labels, layout)
    if layout.labels_below(len(rows)):
        grid += _column_labels(labels, layout, below=top + grid_h)
    for i, (name, source) in enumerate(zip(rows, order, strict=True)):
        counts = by_row[source]
        y = top + i * cell
        names.append(_row_label(name, sum(counts.values()), y, layout))
        grid.append(_row(name, labels, counts, y, layout))
    if len(rows) > 30:
        grid.append(_guide_lines(len(rows), len(labels), layout))
    return f'<div class="heatmap-frame">{"".join(names)}</svg>{"".join(grid)}</svg></div>'


def _column_labels(
    labels: Sequence[str], layout: HeatmapLayout, below: int | None = None
) -> list[str]:
    """Column names over the grid (slanted or upright), or upright under it at `below`."""
    angle = -90 if layout.vertical or below is not None else -45
    anchor = "" if below is None else ' text-anchor="end"'
    parts = []
    for j, name in enumerate(labels):
        x = layout.left + j * layout.cell + layout.cell / 2 + layout.font * 0.35
        y = layout.top - 5 if below is None else below + 5
        parts.append(
            f'<text x="{x:.1f}" y="{y}" transform="rotate({angle} {x:.1f} {y})"{anchor}>'
            f"<title>{escape(name)}</title>{escape(layout.short(name))}</text>"
        )
    return parts


def _row_label(name: str, total: int, y: int, layout: HeatmapLayout) -> str:
    return (
        f'<text x="{layout.left - 5}" y="{y + layout.cell / 2 + layout.font * 0.35:.1f}"'
        f' text-anchor="end"><title>{escape(name)}: {total} held out</title>'
        f"{escape(layout.short(name))}</text>"
    )


def _row(
    name: str, labels: Sequence[str], counts: dict[int, int], y: int, layout: HeatmapLayout
) -> str:
    """One row's cells (`counts`: column position -> count); empty ones only if drawn."""
    total = sum(counts.values())
    columns = range(len(labels)) if layout.draw_zeros else sorted(counts)
    parts = []
    for j in columns:
        x = layout.left + j * layout.cell
        parts.append(_cell(name, labels[j], counts.get(j, 0), total, x, y, layout))
    return "".join(parts)


def _cell(
    true_name: str, predicted: str, count: int, total: int, x: int, y: int, layout: HeatmapLayout
) -> str:
    correct = predicted == true_name
    rate = count / total if total else 0.0
    share = f"{count} of {total} ({100 * rate:.1f}%)"
    title = (
        f"{true_name} correct: {share}" if correct else f"{true_name} \u2192 {predicted}: {share}"
    )
    size = layout.cell - 1
    text = ""
    if layout.counts_inside and count:
        ink = " light" if rate > (0.45 if correct else 0.3) else ""
        text = (
            f'<text x="{x + size / 2:.1f}" y="{y + size / 2 + layout.font * 0.35:.1f}"'
            f' text-anchor="middle" class="count{ink}">{count}</text>'
        )
    return (
        f'<g class="cell"><rect x="{x}" y="{y}" width="{size}" height="{size}"'
        f' fill="{cell_color(rate, correct)}"/><title>{escape(title)}</title>{text}</g>'
    )


def _guide_lines(rows: int, columns: int, layout: HeatmapLayout) -> str:
    """White lines every 10 rows and columns, to follow a row of a big matrix by eye."""
    cell, left, top = layout.cell, layout.left, layout.top
    right, bottom = left + columns * cell, top + rows * cell
    vertical = (
        f'<line x1="{x}" x2="{x}" y1="{top}" y2="{bottom}"/>'
        for x in range(left + 10 * cell, right, 10 * cell)
    )
    horizontal = (
        f'<line x1="{left}" x2="{right}" y1="{y}" y2="{y}"/>'
        for y in range(top + 10 * cell, bottom, 10 * cell)
    )
    return f'<g class="guide">{"".join(vertical)}{"".join(horizontal)}</g>'
