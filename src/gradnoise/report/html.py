"""The self-contained HTML report: sections with text, tables, PNG figures and interactive charts.

One file, readable offline and shareable: every figure is embedded (data URI), every table has
a CSV download (data URI), user strings are escaped (Jinja2 autoescape), and the page is laid
out for any width from a phone to a desktop (viewport meta, tables in horizontal scroll
wrappers, a sticky table of contents). Each figure opens with its intro paragraph (what it
shows, why it matters, how to read it). A figure may carry interactive charts of its panels
(uPlot, inlined): where JavaScript runs they are drawn and the PNG is hidden, so a reader sees
one figure per curve; without JavaScript (or if a chart fails to draw) the PNG is shown.
``tests/test_report_browser.py`` checks the layout in headless Chromium.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import struct
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from .numbers import fmt_cell

#: the widest a figure is shown (CSS px): the content column at a 1,400 px window
CONTENT_WIDTH_PX = 1040


@dataclass(frozen=True)
class Table:
    """A small table: header row and body rows (numbers are formatted by the report's one
    formatter, :func:`gradnoise.report.numbers.fmt_num`; strings are shown as they are)."""

    header: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""


@dataclass(frozen=True)
class Chart:
    """An interactive line plot (uPlot, inlined: zoom by dragging, values on hover, series
    toggled from the legend, a log/linear switch for the y axis).

    Attributes:
        title: shown above the plot.
        x_label, y_label: axis labels.
        series: ``(label, x, y)`` triples; x values need not be shared (missing points are
            gaps that lines span). Non-finite values are left out.
        log_y: start with a log y axis (values <= 0 are then not drawn).
        log_x: a log x axis (x values must be positive: ranks, sizes).
        points: labels of series drawn as markers only (e.g. values at checkpoints).
        caption: what the plot shows, under it.
        dashed: labels of series drawn as dashed lines (e.g. fitted curves), in the colour of
            the series before them (give a fit right after its data).
        intro: prose shown before a chart of :attr:`Section.charts` (a chart of a
            :class:`Figure` is introduced by the figure's ``intro``).
    """

    title: str
    x_label: str
    y_label: str
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]]
    log_y: bool = False
    points: Sequence[str] = ()
    log_x: bool = False
    caption: str = ""
    dashed: Sequence[str] = ()
    intro: str = ""


@dataclass(frozen=True)
class Figure:
    """A PNG file of the run directory and its caption.

    Attributes:
        path: the PNG.
        caption: what the PNG shows, under it.
        intro: prose shown before the figure: what it shows, why it matters and how to read it.
        charts: interactive versions of every panel of the PNG. When given, a browser running
            JavaScript shows the charts (with their own captions) and hides the PNG, which is
            the fallback (shown without JavaScript, or when a chart fails to draw): a reader
            sees one figure per curve. Leave empty when a panel has no chart.
    """

    path: Path
    caption: str = ""
    intro: str = ""
    charts: Sequence[Chart] = ()


def _finite(value: Any) -> float | None:
    v = float(value)
    return float(f"{v:.6g}") if math.isfinite(v) else None


def chart_spec(chart: Chart) -> str:
    """The JSON the report's script draws ``chart`` from: aligned columns (uPlot's data)."""
    xs = sorted(
        {
            x
            for _, xv, yv in chart.series
            for x, y in zip(xv, yv, strict=True)
            if _finite(x) is not None and _finite(y) is not None
        }
    )
    index = {x: i for i, x in enumerate(xs)}
    columns = []
    for _, xv, yv in chart.series:
        column: list[float | None] = [None] * len(xs)
        for x, y in zip(xv, yv, strict=True):
            if x in index:
                column[index[x]] = _finite(y)
        columns.append(column)
    return json.dumps(
        {
            "title": chart.title,
            "x": chart.x_label,
            "y": chart.y_label,
            "log": bool(chart.log_y),
            "logx": bool(chart.log_x),
            "labels": [label for label, _, _ in chart.series],
            "points": [label in chart.points for label, _, _ in chart.series],
            "dashed": [label in chart.dashed for label, _, _ in chart.series],
            "data": [[_finite(x) for x in xs], *columns],
        },
        separators=(",", ":"),
        allow_nan=False,
    )


def _vendor(name: str) -> str:
    return (Path(__file__).parent / "vendor" / name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class Section:
    """One report section (an analysis of the study pipeline renders one).

    Attributes:
        key: anchor id (the analysis name).
        title: heading.
        paragraphs: plain-text paragraphs (escaped when rendered): what the figures show and
            why it matters, before them.
        tables, charts, figures: content, rendered in this order after the text (charts are
            interactive line plots, each preceded by its ``intro``; figures are PNGs, each
            preceded by its ``intro`` and by its interactive ``charts``, which replace it where
            JavaScript runs).
        notes: caveats, rendered last; links: ``(text, relative URL)`` pairs.
    """

    key: str
    title: str
    paragraphs: Sequence[str] = ()
    tables: Sequence[Table] = ()
    figures: Sequence[Figure] = ()
    notes: Sequence[str] = field(default_factory=tuple)
    links: Sequence[tuple[str, str]] = ()
    charts: Sequence[Chart] = ()


@dataclass(frozen=True)
class Block:
    """What the template draws for one figure or stand-alone chart: the intro paragraph, the
    interactive charts with their anchors (``<section>-chart-<n>``, numbered through the
    section), and the PNG (``None`` for a stand-alone chart) with its anchor."""

    intro: str
    charts: Sequence[tuple[str, Chart]]
    figure: Figure | None = None
    figure_id: str = ""


def section_blocks(section: Section) -> list[Block]:
    """The section's stand-alone charts, then its figures, as :class:`Block` objects."""
    blocks: list[Block] = []
    count = 0

    def numbered(charts: Sequence[Chart]) -> list[tuple[str, Chart]]:
        nonlocal count
        out = []
        for chart in charts:
            count += 1
            out.append((f"{section.key}-chart-{count}", chart))
        return out

    for chart in section.charts:
        blocks.append(Block(chart.intro, numbered([chart])))
    for i, fig in enumerate(section.figures, start=1):
        # a chart without series (e.g. no testable sample in a short run) is left out; the
        # PNG of a figure whose charts are all empty is its figure
        drawn = [chart for chart in fig.charts if chart.series]
        blocks.append(Block(fig.intro, numbered(drawn), fig, f"{section.key}-figure-{i}"))
    return blocks


def _embed(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def png_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` in pixels from a PNG's header."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG file")
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def _display_size(path: Path) -> dict[str, int]:
    """The size the figure is shown at: its own pixels (figures are drawn at their display size,
    see :func:`gradnoise.report.figures.figure`), never wider than the content column."""
    width, height = png_size(path)
    if width > CONTENT_WIDTH_PX:
        height, width = round(height * CONTENT_WIDTH_PX / width), CONTENT_WIDTH_PX
    return {"width": width, "height": height}


def table_csv(table: Table) -> str:
    """The table as CSV text (cells as the report shows them)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([str(h) for h in table.header])
    for row in table.rows:
        writer.writerow([fmt_cell(c) for c in row])
    return out.getvalue()


def _csv_uri(table: Table) -> str:
    return "data:text/csv;charset=utf-8," + urllib.parse.quote(table_csv(table))


def render_report(
    path: str | Path,
    *,
    title: str,
    config: Mapping[str, Any],
    sections: Sequence[Section],
    meta: Mapping[str, Any] | None = None,
    verdicts: Sequence[Mapping[str, Any]] = (),
    downloads: Sequence[tuple[str, str]] = (),
) -> Path:
    """Write ``report.html`` with every figure embedded (a single portable file).

    Args:
        verdicts: rows with ``analysis``, ``section``, ``paper``, ``claim``, ``verdict``,
            ``evidence`` and ``test_rule`` (:func:`gradnoise.study.claims.run_claims`): the
            report opens with them, each linking to its analysis's section.
        downloads: ``(text, relative URL)`` links to the run's files (``summary.json``, arrays).
    """
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(
        loader=PackageLoader("gradnoise.report", "templates"),
        autoescape=select_autoescape(["html"]),
    )
    env.filters["fmt"] = fmt_cell
    env.filters["embed"] = _embed
    env.filters["csv_uri"] = _csv_uri
    env.filters["display_size"] = _display_size
    env.filters["chart_spec"] = chart_spec
    layout = [(s, section_blocks(s)) for s in sections]
    charts = any(b.charts for _, blocks in layout for b in blocks)
    page = env.get_template("report.html").render(
        title=title,
        config=config,
        layout=layout,
        meta=dict(meta or {}),
        verdicts=list(verdicts),
        downloads=list(downloads),
        version=__version__,
        content_width=CONTENT_WIDTH_PX,
        uplot_js=_vendor("uPlot.iife.min.js") if charts else "",
        uplot_css=_vendor("uPlot.min.css") if charts else "",
    )
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path
