"""Kinship heatmaps: one drawing function for ``matrix --plot`` and the run report.

:func:`draw_heatmap` fixes how a kinship matrix looks wherever it is drawn:

- colour map by metric kind: ``viridis`` for a similarity (pcc, cosine), ``viridis_r`` for a
  distance (euclidean, sign_conflict), so that the bright end always means "more related";
- scale: the off-diagonal values' range (:func:`colour_limits`), so that the small differences
  between siblings stay visible; a caller may pass another matrix's limits (the report draws the
  final top-k on the pool's scale, so a colour means the same value in both);
- the diagonal (a model with itself) and pairs never measured (None) are grey; cells show their
  value ("–" for None) while the matrix is small enough to read them.

matplotlib is imported inside functions and figures are drawn on the Agg canvas (no display, no
pyplot state).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

from mergekit_kinship.metrics import canonical, is_distance, is_unbounded

GREY = "#d9d9d9"
ANNOTATE_UP_TO = 16  # models; beyond, cell values are too small to read
DESCRIPTIONS = {
    "pcc": "PCC of deltas (higher = more related)",
    "cosine": "cosine of deltas (higher = more related)",
    "euclidean": "euclidean distance of deltas (lower = more related)",
    "sign_conflict": "sign conflict of deltas (lower = more related)",
}


def colour_map(metric: str):
    """The colour map of ``metric``'s kind, grey for masked cells (diagonal, None)."""
    import matplotlib

    name = "viridis_r" if is_distance(metric) else "viridis"
    return matplotlib.colormaps[name].with_extremes(bad=GREY)


def colour_limits(values: Sequence[Sequence[Optional[float]]]) -> tuple[float, float]:
    """(vmin, vmax): the range of the off-diagonal values that are known; widened to a unit
    range around a single value, (0, 1) when none is known."""
    known = [v for i, row in enumerate(values) for j, v in enumerate(row)
             if i != j and v is not None and math.isfinite(v)]
    if not known:
        return 0.0, 1.0
    lo, hi = min(known), max(known)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def _cell_text(value: Optional[float], metric: str) -> str:
    if value is None:
        return "–"
    if is_unbounded(metric):
        return f"{value:.3g}"
    return f"{value:.2f}".replace("-0.00", "0.00")


def draw_heatmap(ax, values: Sequence[Sequence[Optional[float]]], labels: Sequence[str],
                 metric: str, *, limits: Optional[tuple[float, float]] = None,
                 fontsize: float = 8.0, annotate: Optional[bool] = None):
    """Draw the N×N kinship matrix ``values`` (None = not measured) of ``metric`` on ``ax``
    with its colour bar; ``labels`` name rows and columns. ``limits`` defaults to
    :func:`colour_limits` of ``values``; ``annotate`` (cell values) defaults to N <= 16.
    Returns the image (its ``cmap`` and ``get_clim()`` are the scale)."""
    import numpy as np

    metric = canonical(metric)
    n = len(labels)
    grid = np.array([[np.nan if (v is None or i == j) else float(v) for j, v in enumerate(row)]
                     for i, row in enumerate(values)], dtype=float).reshape(n, n)
    lo, hi = limits if limits is not None else colour_limits(values)
    cmap = colour_map(metric)
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=lo, vmax=hi)
    bar = ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label(DESCRIPTIONS.get(metric, metric), fontsize=fontsize)
    bar.ax.tick_params(labelsize=fontsize)
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=fontsize)
    ax.set_yticks(range(n), labels, fontsize=fontsize)
    if annotate is None:
        annotate = n <= ANNOTATE_UP_TO
    if annotate:
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                colour = "black"
                if math.isfinite(grid[i, j]):
                    # light text on the dark end of the colour map, dark text on the light end
                    r, g, b, _ = cmap(image.norm(grid[i, j]))
                    colour = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"
                ax.text(j, i, _cell_text(v, metric), ha="center", va="center", color=colour,
                        fontsize=fontsize)
    return image


def matrix_figure(matrix, metrics: Optional[Sequence[str]] = None):
    """One heatmap per metric of a :class:`~mergekit_kinship.streaming_kinship.KinshipMatrix`,
    side by side (a ``matplotlib.figure.Figure`` on the Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = list(metrics or matrix.metrics)
    n = len(matrix.names)
    cell = max(0.55, min(1.0, 7.0 / n))
    side = 1.6 + n * cell
    fig = Figure(figsize=(side * len(metrics) + 0.6, side + 0.9))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        draw_heatmap(ax, matrix.values[metric], matrix.names, metric)
        ax.set_title(canonical(metric), fontsize=9)
    fig.suptitle(f"Model kinship (deltas from {matrix.base})", fontsize=10)
    fig.tight_layout()
    return fig


def plot_matrix(matrix, path, metrics=None) -> Path:
    """Draw :func:`matrix_figure` and save it to ``path`` (format from its suffix). Returns the
    path."""
    path = Path(path)
    matrix_figure(matrix, metrics).savefig(path, dpi=130)
    return path
