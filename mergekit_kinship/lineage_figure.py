"""The inferred lineage as a picture (``lineage --plot``): the base on top, one row per generation.

Drawn the way the run report draws its family tree (:mod:`~mergekit_kinship.family_tree`):
matplotlib on the Agg canvas (:func:`~mergekit_kinship.report_figures.new_figure`), no pyplot
state, labels no smaller than :data:`~mergekit_kinship.report_figures.MIN_FONT_PT`. A fine-tune's
edge is grey, a merge's edges blue, each labelled with the parent's share; ambiguous models sit
in a last row, "not placed", with dotted edges to every parent they might have; unrelated ones
sit there too, red, with no edge.
"""

from __future__ import annotations

from pathlib import Path

from mergekit_kinship.lineage_tree import depths, tree_children

_COLOURS = {"base": "#6e7781", "base-fine-tune": "#2da44e", "fine-tune": "#2da44e",
            "merge": "#1f6feb", "ambiguous": "#d29922", "unrelated": "#cf222e"}
LABEL_PT = 8.5


def _order(result) -> list[str]:
    """Models in the text tree's order (parents before children, siblings together)."""
    children = tree_children(result)
    out: list[str] = []

    def walk(parent):
        for m in children.get(parent, []):
            out.append(m.path)
            walk(m.path)

    walk(None)
    return out


def lineage_figure(result, base_name: str = "base"):
    """The picture (a ``matplotlib.figure.Figure``) of a :class:`~mergekit_kinship.
    model_lineage.LineageResult`."""
    from matplotlib.lines import Line2D

    from mergekit_kinship.report_figures import MAX_WIDTH_IN, new_figure, short

    by_path = result.by_path()
    depth = depths(result)
    rows: dict[int, list[str]] = {}
    for path in _order(result):
        rows.setdefault(depth[path], []).append(path)
    unplaced = [m.path for m in result.models if m.kind in ("ambiguous", "unrelated")]
    last = max(rows, default=0) + 1
    if unplaced:
        rows[last] = unplaced
    widest = max([len(r) for r in rows.values()] + [1])
    fig_w = min(MAX_WIDTH_IN, max(4.0, 0.95 * widest + 1.2))
    fig_h = 1.0 + 0.95 * (max(rows, default=0) + 1)
    fig = new_figure(fig_w, fig_h)
    ax = fig.add_axes((0.11, 0.14, 0.87, 0.78))
    pos = {"__base__": (0.5, 0.0)}
    for d, paths in rows.items():
        for k, path in enumerate(paths):
            pos[path] = ((k + 0.5) / len(paths), float(d))
    for m in result.models:
        if m.kind in ("base-fine-tune", "fine-tune", "merge"):
            parents = m.parents or ["__base__"]
            for k, parent in enumerate(parents):
                merge = m.kind == "merge"
                ax.annotate("", xy=pos[m.path], xytext=pos[parent], zorder=1, arrowprops=dict(
                    arrowstyle="-|>", shrinkA=9, shrinkB=9, lw=1.2,
                    color=_COLOURS["merge"] if merge else "#8b949e"))
                if merge and m.proportions:
                    (x0, y0), (x1, y1) = pos[parent], pos[m.path]
                    ax.text(x0 + 0.6 * (x1 - x0), y0 + 0.6 * (y1 - y0), f"{m.proportions[k]:.2f}",
                            fontsize=LABEL_PT - 0.5, color=_COLOURS["merge"], ha="center",
                            va="center", zorder=2, bbox=dict(boxstyle="round,pad=0.1", fc="white",
                                                             ec="none", alpha=0.8))
        elif m.kind == "ambiguous":
            for alt in m.alternatives:
                for parent in alt["parents"]:
                    if parent in pos:
                        ax.annotate("", xy=pos[m.path], xytext=pos[parent], zorder=1, arrowprops=dict(
                            arrowstyle="-", shrinkA=9, shrinkB=9, lw=1.0, ls=":",
                            color=_COLOURS["ambiguous"]))
    ax.scatter([0.5], [0.0], s=200, color=_COLOURS["base"], zorder=3, edgecolors="white")
    ax.annotate(short(base_name), (0.5, 0.0), textcoords="offset points", xytext=(0, 9),
                ha="center", va="bottom", fontsize=LABEL_PT)
    for d, paths in rows.items():
        # A crowded row alternates its labels below and above the dots, so they do not overlap.
        crowded = len(paths) * 1.0 > fig_w * 0.87
        for k, path in enumerate(paths):
            m, (x, y) = by_path[path], pos[path]
            up = crowded and k % 2 == 1
            ax.scatter([x], [y], s=150, color=_COLOURS[m.kind], zorder=3, edgecolors="white")
            ax.annotate(short(m.name, 14), (x, y), textcoords="offset points",
                        xytext=(0, 9 if up else -9), ha="center", va="bottom" if up else "top",
                        fontsize=LABEL_PT, zorder=4,
                        bbox=dict(boxstyle="round,pad=0.12", fc="white", ec="none", alpha=0.85))
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(max(rows, default=0) + 0.6, -0.45)
    ticks = [0] + sorted(rows)
    ax.set_yticks(ticks, ["base"] + [("not placed" if unplaced and d == last else f"gen {d}")
                                     for d in sorted(rows)], fontsize=LABEL_PT + 0.5)
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    legend = [Line2D([], [], marker="o", ls="", color=_COLOURS[k], label=label) for k, label in (
        ("fine-tune", "fine-tune"), ("merge", "merge (edge: share)"), ("ambiguous", "ambiguous"),
        ("unrelated", "unrelated"))]
    ax.legend(handles=legend, fontsize=LABEL_PT, loc="upper center", bbox_to_anchor=(0.5, -0.02),
              ncol=4, frameon=False)
    ax.set_title("Lineage inferred from the weights", fontsize=LABEL_PT + 2)
    return fig


def plot_lineage(result, path, base_name: str = "base") -> Path:
    """Write the picture to ``path`` (the format from its suffix: .png, .svg, .pdf)."""
    from mergekit_kinship.report_figures import DPI

    fig = lineage_figure(result, base_name)
    fig.savefig(str(path), dpi=DPI, bbox_inches="tight")
    return Path(path)
