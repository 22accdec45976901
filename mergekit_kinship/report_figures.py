"""The report's figures (matplotlib on the Agg canvas, no pyplot state), sized for the page.

The report embeds each figure as a PNG at ``max-width: 100%`` of a :data:`PAGE_WIDTH_PX` wide
page, so a PNG wider than the page is shrunk, and its text with it. Every figure here is at most
:data:`MAX_WIDTH_IN` × :data:`DPI` pixels wide and writes no text under :data:`MIN_FONT_PT`, so
that every label is at least ``MIN_FONT_PT * DPI / 72`` (12) pixels tall on screen (the family
tree, :mod:`mergekit_kinship.family_tree`, keeps the same rule).
"""

from __future__ import annotations

import io
from typing import Optional, Sequence

from mergekit_kinship.findings import kinship_gain_points, kinship_gain_study
from mergekit_kinship.summary import RunSummary

PAGE_WIDTH_PX = 1100  # the report page's content width (its CSS max-width)
DPI = 110
MAX_WIDTH_IN = 9.6  # 1056 px: within the page, with room for the tight bounding box
MIN_FONT_PT = 8.0

_BLUE, _GREY, _GOLD, _RED = "#1f6feb", "#8b949e", "#d29922", "#cf222e"


def new_figure(width_in: float, height_in: float):
    """A ``matplotlib.figure.Figure`` of that size at :data:`DPI`, on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig) -> bytes:
    """The figure as the report embeds it (PNG at :data:`DPI`, cropped to its contents)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def short(name: str, width: int = 22) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def fitness_figure(summary: RunSummary):
    """Best and mean fitness per generation (generation 0: the foundation models); None before
    anything was scored."""
    foundation = [summary.models[m].fitness for m in summary.foundation_ids()
                  if summary.models[m].fitness is not None]
    xs: list[int] = []
    best: list[Optional[float]] = []
    mean: list[Optional[float]] = []
    if foundation:
        xs.append(0)
        best.append(max(foundation))
        mean.append(sum(foundation) / len(foundation))
    for generation in summary.generations:
        xs.append(generation.index)
        best.append(generation.best_fitness)
        mean.append(generation.mean_fitness)
    if not xs:
        return None
    fig = new_figure(7, 3.8)
    ax = fig.subplots()
    ax.plot(xs, best, "o-", color=_BLUE, label="best fitness of the pool")
    ax.plot(xs, mean, "s--", color=_GREY, label="mean fitness of the generation's models")
    if foundation:
        ax.axhline(max(foundation), color=_GOLD, lw=1, ls=":", label="best foundation model")
    base = summary.base_reference()
    if base is not None:
        ax.axhline(base.fitness, color="#cf222e", lw=1, ls="-.", label="base model (reference)")
    baselines = summary.baselines()
    if baselines:
        top = max(baselines.values(), key=lambda m: m.fitness)
        ax.axhline(top.fitness, color="#8250df", lw=1, ls="--",
                   label=f"best one-shot baseline ({top.name})")
    for x, y in zip(xs, best):
        if y is not None:
            ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center",
                        fontsize=MIN_FONT_PT)
    ax.set_xticks(xs, ["0\n(foundation)" if x == 0 else str(x) for x in xs])
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness")
    ax.set_title("Fitness per generation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=MIN_FONT_PT, loc="best")
    return fig


def heatmap_figure(summary: RunSummary, ids: Sequence[str], title: str,
                   limits: Optional[tuple[float, float]] = None):
    """The pool's kinship matrix restricted to ``ids`` (in that order), drawn by
    :func:`mergekit_kinship.heatmap.draw_heatmap`; ``limits`` as there. None when a model of
    ``ids`` is not in the matrix."""
    from mergekit_kinship.heatmap import draw_heatmap

    pool = summary.pool_kinship
    if not ids or not pool.values or any(i not in pool.names for i in ids):
        return None
    index = [pool.names.index(i) for i in ids]
    values = [[pool.values[a][b] for b in index] for a in index]
    n = len(ids)
    cell = max(0.16, min(0.6, 6.0 / n))  # inches: the matrix fills at most 6 in
    fig = new_figure(min(MAX_WIDTH_IN, n * cell + 3.4), n * cell + 2.2)
    ax = fig.subplots()
    labels = [short(summary.models[i].name if i in summary.models else i) for i in ids]
    draw_heatmap(ax, values, labels, pool.metric, limits=limits, fontsize=MIN_FONT_PT)
    ax.set_title(title)
    return fig


def pool_limits(summary: RunSummary) -> tuple[float, float]:
    """The colour scale of the pool's matrix (every heatmap of the report uses it)."""
    from mergekit_kinship.heatmap import colour_limits

    return colour_limits(summary.pool_kinship.values)


def kinship_gain_figure(summary: RunSummary):
    """Parents' kinship against the gain and against |gain| over every merge, with the fitted
    line and Pearson r, p: one row of two panels per metric of
    :func:`~mergekit_kinship.findings.kinship_gain_study` that has points (the run's metric, PCC,
    sign conflict); None when no merge has both a kinship and a gain."""
    import numpy as np

    rows = []
    for stats in kinship_gain_study(summary):
        metric, points = kinship_gain_points(summary, stats["metric"])
        if points:
            rows.append((metric, points, stats))
    if not rows:
        return None
    exploration = {m for m, model in summary.models.items() if model.exploration}
    fig = new_figure(MAX_WIDTH_IN, 3.4 * len(rows) + 0.4)
    axes = fig.subplots(len(rows), 2, squeeze=False)
    for row, (metric, points, stats) in zip(axes, rows):
        xs = np.array([p[1] for p in points])
        marks = np.array([p[0] in exploration for p in points])
        for ax, key, ys, ylabel in (
            (row[0], "gain", np.array([p[2] for p in points]), "gain over parents' mean"),
            (row[1], "abs_gain", np.array([abs(p[2]) for p in points]), "|gain|"),
        ):
            ax.scatter(xs[~marks], ys[~marks], color=_BLUE, label="greedy merge", zorder=2)
            if marks.any():
                ax.scatter(xs[marks], ys[marks], color=_GOLD, marker="D", label="exploration merge",
                           zorder=2)
            result = stats[key]
            if result is not None:
                slope, intercept = np.polyfit(xs, ys, 1)
                grid = np.linspace(xs.min(), xs.max(), 50)
                ax.plot(grid, slope * grid + intercept, color=_RED, lw=1)
                ax.set_title(f"{metric}: r = {result[0]:+.3f}, p = {result[1]:.3g} (n = {len(points)})",
                             fontsize=10)
            else:
                ax.set_title(f"{metric}, n = {len(points)}: too few merges for a correlation",
                             fontsize=10)
            if key == "gain":
                ax.axhline(0, color="black", lw=0.6)
            ax.set_xlabel(f"parents' {metric}")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=MIN_FONT_PT)
    fig.suptitle("Kinship against merge gain over all merges of the run", fontsize=11)
    fig.tight_layout()
    return fig
