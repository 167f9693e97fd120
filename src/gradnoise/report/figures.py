"""Matplotlib helpers: a consistent style, and saving figures as PNG for the report.

Figures are drawn at the size the report shows them: a figure is at most
:data:`MAX_WIDTH_IN` inches wide (the report's content column at ``savefig.dpi``), so the browser
never scales a PNG down and its 9-point text stays 9 points. :func:`save_figure` moves every
legend that overlaps its axes' data area below the axes (outside the data).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 110,
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "svg.hashsalt": "gradnoise",
}


#: the widest figure (inches): the report's content column (1,040 CSS px) at savefig.dpi
MAX_WIDTH_IN = 1040 / STYLE["savefig.dpi"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def figure(
    ncols: int = 1, nrows: int = 1, *, width: float = 4.2, height: float = 3.2
) -> Iterator[tuple[Any, Any]]:
    """A styled ``(fig, axes)`` pair; the figure is closed on exit (save it inside the block).

    ``width`` is per column; a figure wider than :data:`MAX_WIDTH_IN` in all is narrowed to it
    (its columns share the width), so it is shown at its drawn size.
    """
    plt = _pyplot()
    width = min(width, MAX_WIDTH_IN / ncols)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False
        )
        try:
            yield fig, (axes[0, 0] if axes.size == 1 else axes.ravel())
        finally:
            plt.close(fig)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save ``fig`` as PNG (deterministic metadata) and return the path; legends that cover
    their axes are moved below them first (:func:`legends_outside`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    short_log_axes(fig)
    fig.tight_layout()
    if legends_outside(fig):
        fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


def short_log_axes(fig: Any) -> None:
    """Plain tick labels (``2.4``, not ``2.4 x 10^0``) on log axes spanning less than a decade,
    where matplotlib labels every minor tick in scientific notation and the labels collide."""
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:.3g}")
    for ax in fig.axes:
        for axis, limits in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            low, high = sorted(limits)
            if axis.get_scale() == "log" and low > 0 and high / low < 10:
                axis.set_major_formatter(plain)
                axis.set_minor_formatter(plain)


def legends_outside(fig: Any) -> int:
    """Move every axes legend that overlaps its axes' data area to below the axes (under the
    tick labels and the x label), in as many columns as fit the axes' width; returns how many
    were moved."""
    from matplotlib.transforms import offset_copy

    renderer = fig.canvas.get_renderer()  # no draw: legends and tight boxes lay out themselves
    moved = 0
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None or not legend.get_window_extent(renderer).overlaps(ax.bbox):
            continue
        handles = list(getattr(legend, "legend_handles", None) or legend.legendHandles)
        labels = [t.get_text() for t in legend.get_texts()]
        widest = max((t.get_window_extent(renderer).width for t in legend.get_texts()), default=0)
        fontsize = legend.get_texts()[0].get_fontsize() if labels else None
        legend.remove()
        below = max(0.0, ax.bbox.y0 - ax.get_tightbbox(renderer).y0)  # ticks and x label, px
        per_column = widest + 40 * fig.dpi / 72  # text, handle and spacing
        ncol = max(1, min(len(labels), int(ax.bbox.width // max(per_column, 1.0))))
        ax.legend(
            handles,
            labels,
            loc="upper center",
            bbox_to_anchor=(0.5, 0.0),
            bbox_transform=offset_copy(
                ax.transAxes, fig=fig, y=-(below * 72 / fig.dpi + 2), units="points"
            ),
            ncol=ncol,
            fontsize=fontsize,
            frameon=False,
        )
        moved += 1
    return moved


def ccdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Empirical complementary CDF ``P(X >= x)`` at the sorted positive finite values."""
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    x = x[np.isfinite(x) & (x > 0)]
    return x, 1.0 - np.arange(x.size) / max(x.size, 1)


def thin(x: np.ndarray, y: np.ndarray, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Keep at most ``max_points`` log-spaced points of a sorted curve (for small PNGs)."""
    if x.size <= max_points:
        return x, y
    idx = np.unique(np.geomspace(1, x.size, max_points).astype(np.int64) - 1)
    return x[idx], y[idx]


def thin_loglog(
    x: np.ndarray, y: np.ndarray, max_points: int = 120
) -> tuple[np.ndarray, np.ndarray]:
    """At most about ``max_points`` points of a monotone curve (a CCDF, a rank spectrum) that
    look the same on log-log axes: the points are spread evenly along the drawn line (its
    length measured as |d log x| / range + |d log y| / range), over the bulk and the tail
    alike, not evenly in index (where a CCDF's tail would get almost none); the first and last
    points are always kept. Non-positive or non-finite points are dropped."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = x[ok], y[ok]
    if x.size <= max_points:
        return x, y
    lx, ly = np.log10(x), np.log10(y)
    sx = max(float(np.ptp(lx)), 1e-12)
    sy = max(float(np.ptp(ly)), 1e-12)
    arc = np.concatenate([[0.0], np.cumsum(np.abs(np.diff(lx)) / sx + np.abs(np.diff(ly)) / sy)])
    marks = np.linspace(0.0, arc[-1], max_points - 1)
    idx = np.unique(np.concatenate([np.searchsorted(arc, marks), [0, x.size - 1]]))
    idx = idx[idx < x.size]
    return x[idx], y[idx]
