"""An annotated heatmap of a kinship matrix (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

_TITLES = {
    "pcc": "PCC of deltas (higher = more related)",
    "cosine": "cosine of deltas (higher = more related)",
    "euclidean": "euclidean distance of deltas (lower = more related)",
}


def plot_matrix(matrix, path, metrics=None) -> Path:
    """Draw one annotated heatmap per metric of a :class:`~mergekit_kinship.streaming_kinship.KinshipMatrix`
    side by side and save to ``path`` (format from its suffix). The colour scale spans the
    off-diagonal values, so that the small differences between siblings stay visible; the
    diagonal and uncomputed pairs are grey. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = list(metrics or matrix.metrics)
    n = len(matrix.names)
    cell = max(0.55, min(1.0, 7.0 / n))
    side = 1.6 + n * cell
    fig, axes = plt.subplots(1, len(metrics), figsize=(side * len(metrics) + 0.6, side + 0.9), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        grid = np.array(
            [[np.nan if (v is None or i == j) else v for j, v in enumerate(row)] for i, row in enumerate(matrix.values[metric])],
            dtype=float,
        )
        finite = grid[np.isfinite(grid)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        cmap = matplotlib.colormaps["viridis_r" if metric == "euclidean" else "viridis"].with_extremes(bad="#d9d9d9")
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=lo, vmax=hi)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(range(n), matrix.names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), matrix.names, fontsize=8)
        ax.set_title(_TITLES.get(metric, metric), fontsize=9)
        for i, row in enumerate(matrix.values[metric]):
            for j, v in enumerate(row):
                if v is None:
                    text, colour = "–", "black"
                else:
                    text = f"{v:.3g}" if metric == "euclidean" else f"{v:.2f}".replace("-0.00", "0.00")
                    if i == j or not math.isfinite(grid[i, j]):
                        colour = "black"
                    else:
                        # light text on the dark end of the colour map, dark text on the light end
                        r, g, b, _ = cmap((grid[i, j] - lo) / (hi - lo))
                        colour = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"
                ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=8)
    fig.suptitle(f"Model kinship (deltas from {matrix.base})", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
