"""The run's family tree as a figure (matplotlib: no graphviz needed).

One row per generation (the foundation models on top), each model a dot with its name and
fitness below it, an edge from each parent to its child. The layout works in screen pixels at
the report's :data:`~mergekit_kinship.report_figures.DPI`, so that the figure fits the report
page without being shrunk: labels are measured, and a generation too wide for one row is
staggered over several sub-rows instead of being squeezed until its labels overlap.
"""

from __future__ import annotations

import math

from mergekit_kinship.findings import run_order
from mergekit_kinship.report_figures import DPI, MAX_WIDTH_IN, MIN_FONT_PT, new_figure, short
from mergekit_kinship.summary import RunSummary

LABEL_PT = MIN_FONT_PT
_LEFT, _RIGHT, _TOP = 90, 12, 36  # px around the plot: generation names, margin, title
_ROW = 70  # px from one sub-row of dots to the next: a dot, its two-line label and a gap
_GENERATION_GAP = 26  # px added between generations
_MAX_SPACING = 190  # px between neighbours in a generation that has room to spare
_LABEL_OFFSET_PT = 8  # the label's top, below its dot
_COLOURS = {"foundation": "#6e7781", "greedy": "#1f6feb", "exploration": "#d29922"}


def _label(summary: RunSummary, model_id: str) -> str:
    model = summary.models[model_id]
    return short(model.name, 18) + ("" if model.fitness is None else f"\n{model.fitness:.3f}")


def _text_width(text: str) -> float:
    """Pixel width of ``text`` at :data:`LABEL_PT` and :data:`DPI` (its widest line)."""
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    renderer = RendererAgg(1, 1, DPI)
    font = FontProperties(size=LABEL_PT)
    return max(renderer.get_text_width_height_descent(line, font, ismath=False)[0]
               for line in text.split("\n"))


def tree_layout(summary: RunSummary) -> tuple[dict[str, tuple[float, float]], dict[int, float], float, float]:
    """(positions in px {id: (x, y)}, {generation: y of its first sub-row}, width, height).

    Each generation keeps the run's order (the first) or orders its models by the mean position
    of their parents (a barycentre pass, which keeps most edges short and uncrossed; ties in the
    run's order). Neighbours in a sub-row are at least their widest label apart."""
    order = run_order(summary)
    rank = {m: i for i, m in enumerate(order)}
    by_generation: dict[int, list[str]] = {}
    for model_id in order:
        by_generation.setdefault(summary.models[model_id].generation, []).append(model_id)
    width = {m: _text_width(_label(summary, m)) for m in order}
    pad = max(width.values()) / 2 + 4
    span = MAX_WIDTH_IN * DPI - _LEFT - _RIGHT - 2 * pad  # px available for the dots' centres
    slot = {g: max(48.0, max(width[m] for m in members) + 16) for g, members in by_generation.items()}
    widest = max(len(members) for members in by_generation.values())
    span = min(span, max(widest - 1, 2) * _MAX_SPACING)

    x: dict[str, float] = {}
    y: dict[str, float] = {}
    tops: dict[int, float] = {}
    top = 0.0
    for number, generation in enumerate(sorted(by_generation)):
        members = by_generation[generation]
        if number:
            def barycentre(m):
                parents = [x[p] for p in summary.models[m].parents if p in x]
                return (sum(parents) / len(parents) if parents else span / 2, rank[m])

            members.sort(key=barycentre)
        n = len(members)
        spacing = min(_MAX_SPACING, span / (n - 1)) if n > 1 else 0.0
        rows = max(1, math.ceil(slot[generation] / spacing)) if n > 1 else 1
        tops[generation] = top
        for i, m in enumerate(members):
            x[m] = span / 2 + (i - (n - 1) / 2) * spacing
            y[m] = top + (i % rows) * _ROW
        top += rows * _ROW + _GENERATION_GAP
    # 14 px above the first dots (their radius), 50 px below the last ones (their labels).
    positions = {m: (x[m] + pad, y[m] + 14) for m in order}
    height = max(y.values()) + 14 + 50
    return positions, {g: t + 14 for g, t in tops.items()}, span + 2 * pad, height


def _clear_bend(start, end, others, candidates=(0.0, 0.2, -0.2, 0.35, -0.35, 0.5, -0.5)) -> float:
    """The ``arc3`` curvature for an edge from ``start`` to ``end`` (screen coordinates) that keeps
    it farthest from the other nodes, so an edge never seems to pass through a model that is not
    its parent or child. Straight unless a node lies within 14 px of the straight line."""
    import numpy as np

    start, end = np.asarray(start, float), np.asarray(end, float)
    others = np.asarray(others, float).reshape(-1, 2)
    if len(others) == 0:
        return 0.0
    dx, dy = end - start
    best, best_clearance = 0.0, -1.0
    for rad in candidates:
        # matplotlib's arc3: a quadratic Bezier through this control point.
        control = (start + end) / 2 + rad * np.array([dy, -dx])
        ts = np.linspace(0.08, 0.92, 25)[:, None]
        curve = (1 - ts) ** 2 * start + 2 * (1 - ts) * ts * control + ts ** 2 * end
        clearance = np.min(np.linalg.norm(curve[:, None, :] - others[None, :, :], axis=2))
        if clearance >= 14.0:
            return rad
        if clearance > best_clearance:
            best, best_clearance = rad, clearance
    return best


def family_tree_figure(summary: RunSummary):
    """The family tree (a ``matplotlib.figure.Figure``), at most ``MAX_WIDTH_IN`` wide, labels
    at :data:`LABEL_PT`."""
    from matplotlib.lines import Line2D

    models = summary.models
    layout, tops, width, height = tree_layout(summary)
    top_k = set(summary.final_top_k())
    legend_rows = 1 if width >= 700 else 2
    bottom = 24 + 22 * legend_rows
    fig_w, fig_h = _LEFT + width + _RIGHT, _TOP + height + bottom
    fig = new_figure(fig_w / DPI, fig_h / DPI)
    # One data unit = one pixel: the layout's measurements hold on the figure.
    ax = fig.add_axes((_LEFT / fig_w, bottom / fig_h, width / fig_w, height / fig_h))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    to_screen = ax.transData.transform
    label_drop = [(0, 0), (0, 16), (0, 32)]  # a dot and its label below it, in screen px
    for child, model in models.items():
        for parent in model.parents:
            others = [to_screen(layout[m]) - offset for m in models if m not in (child, parent)
                      for offset in label_drop]
            bend = _clear_bend(to_screen(layout[parent]), to_screen(layout[child]), others)
            ax.annotate("", xy=layout[child], xytext=layout[parent], zorder=1, arrowprops=dict(
                arrowstyle="-", connectionstyle=f"arc3,rad={bend}", shrinkA=7, shrinkB=7,
                color=_COLOURS["exploration"] if model.exploration else "#8b949e",
                lw=1.6 if model.exploration else 1.0, ls="--" if model.exploration else "-"))
    for model_id, (x, y) in layout.items():
        model = models[model_id]
        kind = ("foundation" if model.kind == "foundation"
                else "exploration" if model.exploration else "greedy")
        best = model_id == summary.best
        ax.scatter([x], [y], s=260 if best else 170, color=_COLOURS[kind], zorder=2,
                   edgecolors="black" if model_id in top_k else "white",
                   linewidths=2.2 if model_id in top_k else 1.0, marker="*" if best else "o")
        ax.annotate(_label(summary, model_id), (x, y), textcoords="offset points",
                    xytext=(0, -_LABEL_OFFSET_PT), ha="center", va="top", fontsize=LABEL_PT,
                    zorder=3, bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
    ax.set_yticks(list(tops.values()),
                  ["foundation" if g == 0 else f"gen {g}" for g in tops], fontsize=LABEL_PT + 1)
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    legend = [
        Line2D([], [], marker="o", ls="", color=_COLOURS["foundation"], label="foundation model"),
        Line2D([], [], marker="o", ls="", color=_COLOURS["greedy"], label="greedy merge"),
        Line2D([], [], marker="o", ls="", color=_COLOURS["exploration"], label="exploration merge"),
        Line2D([], [], marker="o", ls="", color="white", markeredgecolor="black", markeredgewidth=2,
               label="final top-k"),
        Line2D([], [], marker="*", ls="", color="#8b949e", markersize=12, label="best model"),
    ]
    ax.legend(handles=legend, fontsize=LABEL_PT, loc="upper center", bbox_to_anchor=(0.5, 0.0),
              ncol=5 if legend_rows == 1 else 3, frameon=False)
    ax.set_title("Family tree (label: model, fitness)", fontsize=LABEL_PT + 2)
    return fig
