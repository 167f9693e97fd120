"""Matplotlib helpers: a consistent style, and saving figures as PNG for the report."""

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


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def figure(
    ncols: int = 1, nrows: int = 1, *, width: float = 4.2, height: float = 3.2
) -> Iterator[tuple[Any, Any]]:
    """A styled ``(fig, axes)`` pair; the figure is closed on exit (save it inside the block)."""
    plt = _pyplot()
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False
        )
        try:
            yield fig, (axes[0, 0] if axes.size == 1 else axes.ravel())
        finally:
            plt.close(fig)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save ``fig`` as PNG (deterministic metadata) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


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
