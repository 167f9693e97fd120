"""The self-contained HTML report: sections with text, tables and embedded PNG figures."""

from __future__ import annotations

import base64
import html as _html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__


@dataclass(frozen=True)
class Figure:
    """A PNG file of the run directory and its caption."""

    path: Path
    caption: str = ""


@dataclass(frozen=True)
class Table:
    """A small table: header row and body rows of already formatted cells."""

    header: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""


@dataclass(frozen=True)
class Section:
    """One report section (an analysis of the study pipeline renders one).

    Attributes:
        key: anchor id (the analysis name).
        title: heading.
        paragraphs: plain-text paragraphs (escaped when rendered).
        tables, figures: content, rendered in this order after the text.
        notes: caveats, rendered last; links: ``(text, relative URL)`` pairs.
    """

    key: str
    title: str
    paragraphs: Sequence[str] = ()
    tables: Sequence[Table] = ()
    figures: Sequence[Figure] = ()
    notes: Sequence[str] = field(default_factory=tuple)
    links: Sequence[tuple[str, str]] = ()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _embed(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def render_report(
    path: str | Path,
    *,
    title: str,
    config: Mapping[str, Any],
    sections: Sequence[Section],
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``report.html`` with every figure embedded (a single portable file)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(
        loader=PackageLoader("gradnoise.report", "templates"),
        autoescape=select_autoescape(["html"]),
    )
    env.filters["fmt"] = _fmt
    env.filters["embed"] = _embed
    page = env.get_template("report.html").render(
        title=title,
        config=config,
        sections=sections,
        meta=dict(meta or {}),
        version=__version__,
        escape=_html.escape,
    )
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path
