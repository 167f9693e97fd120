"""Reporting: figures and the self-contained HTML report, from stored runs only (no torch).

A report is a list of :class:`Section` objects (one per analysis of the study pipeline, see
:mod:`gradnoise.study.registry`) rendered by :func:`render_report` into ``report.html``.
"""

from .figures import figure, save_figure
from .html import Chart, Figure, Section, Table, render_report
from .numbers import fmt_num

__all__ = [
    "Chart",
    "Figure",
    "Section",
    "Table",
    "figure",
    "fmt_num",
    "render_report",
    "save_figure",
]
