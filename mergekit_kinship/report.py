"""The run report: one self-contained HTML file with embedded PNG figures.

Built from ``RUN_DIR/summary.json`` alone (see :func:`mergekit_kinship.card.load_summary`):

- best and mean fitness per generation (generation 0: the foundation models);
- the kinship heatmap of the whole pool and of the final top-k;
- the family tree (drawn with matplotlib: no graphviz needed);
- kinship between parents against merge gain over every merge of the run, with Pearson r and its
  two-sided p-value, against the signed gain and against |gain| (the paper's Table 2, on the
  user's own run);
- a saturation warning when the top-k's mutual PCC passes the threshold (the recipe's, or the
  paper's 0.9 when the recipe set none).

matplotlib runs on the Agg backend; figures are PNG, base64-embedded, so the file can be mailed or
attached to an issue as is. No scipy: the p-value comes from the t distribution computed here.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import tempfile
from pathlib import Path

from mergekit_kinship.card import lineage, load_summary

PAPER_SATURATION = 0.9  # §4.4: above ~0.9 mutual PCC, merges of the top models stop gaining
REPORT_FILE = "report.html"


# ---------------------------------------------------------------------------------- statistics


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz, Numerical Recipes)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return regularized_beta(df / 2.0, 0.5, df / (df + t * t))


def pearson(x: list[float], y: list[float]) -> tuple[float, float] | None:
    """Pearson r of two samples and its two-sided p-value (t test, n - 2 degrees of freedom), in
    float64; ``None`` with fewer than 3 pairs or a constant sample."""
    n = len(x)
    if n != len(y):
        raise ValueError("x and y differ in length")
    if n < 3:
        return None
    mean_x, mean_y = math.fsum(x) / n, math.fsum(y) / n
    sxx = math.fsum((v - mean_x) ** 2 for v in x)
    syy = math.fsum((v - mean_y) ** 2 for v in y)
    sxy = math.fsum((a - mean_x) * (b - mean_y) for a, b in zip(x, y))
    if sxx == 0 or syy == 0:
        return None
    r = max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))
    df = n - 2
    t = math.inf if abs(r) == 1.0 else r * math.sqrt(df / (1.0 - r * r))
    return r, t_two_sided_p(t, df)


# ---------------------------------------------------------------------------------- what to plot


def _merges(summary: dict) -> list[str]:
    return sorted((m for m, model in summary["models"].items() if model["kind"] == "child"),
                  key=lambda m: (summary["models"][m]["generation"], m))


def kinship_gain_points(summary: dict) -> tuple[str, list[tuple[str, float, float]]]:
    """(metric, [(model id, parents' kinship, gain)]) over every merge that has both."""
    metric = summary.get("metric") or "pcc"
    points = []
    for model_id in _merges(summary):
        model = summary["models"][model_id]
        kinship = (model.get("parents_kinship") or {}).get(metric)
        if kinship is not None and model.get("gain") is not None:
            points.append((model_id, float(kinship), float(model["gain"])))
    return metric, points


def kinship_gain_statistics(summary: dict) -> dict:
    """Pearson r and p of parents' kinship against the gain and against |gain| over all merges."""
    metric, points = kinship_gain_points(summary)
    kinship = [p[1] for p in points]
    signed = pearson(kinship, [p[2] for p in points])
    absolute = pearson(kinship, [abs(p[2]) for p in points])
    return {"metric": metric, "n": len(points), "gain": signed, "abs_gain": absolute}


def saturation(summary: dict) -> dict:
    """The top-k's mutual PCC per generation against the threshold (the recipe's or the paper's)."""
    threshold = summary.get("saturation_threshold")
    source = "recipe"
    if threshold is None:
        threshold, source = PAPER_SATURATION, "paper's heuristic (the recipe sets none)"
    history = [(g["index"], g.get("top_k_mutual_pcc")) for g in summary.get("generations") or []]
    passed = [(index, value) for index, value in history if value is not None and value > threshold]
    last = history[-1][1] if history else None
    return {"threshold": threshold, "source": source, "history": history, "passed": passed,
            "saturated": last is not None and last > threshold, "last": last}


def final_top_k(summary: dict) -> list[str]:
    generations = summary.get("generations") or []
    return list(generations[-1]["top_k"]) if generations else []


def _foundations(summary: dict) -> list[str]:
    return [m for m, model in summary["models"].items() if model["kind"] == "foundation"]


# ---------------------------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _short(name: str, width: int = 22) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def fitness_figure(summary: dict) -> str | None:
    plt = _pyplot()
    models = summary["models"]
    generations = summary.get("generations") or []
    foundation_fitness = [models[m]["fitness"] for m in _foundations(summary) if models[m].get("fitness") is not None]
    xs, best, mean = [], [], []
    if foundation_fitness:
        xs.append(0)
        best.append(max(foundation_fitness))
        mean.append(sum(foundation_fitness) / len(foundation_fitness))
    for generation in generations:
        xs.append(generation["index"])
        best.append(generation.get("best_fitness"))
        mean.append(generation.get("mean_fitness"))
    if not xs:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.plot(xs, best, "o-", color="#1f6feb", label="best fitness of the pool")
    ax.plot(xs, mean, "s--", color="#8b949e", label="mean fitness of the generation's models")
    if foundation_fitness:
        ax.axhline(max(foundation_fitness), color="#d29922", lw=1, ls=":", label="best foundation model")
    for x, y in zip(xs, best):
        if y is not None:
            ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set_xticks(xs)
    ax.set_xticklabels(["0\n(foundation)" if x == 0 else str(x) for x in xs])
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness")
    ax.set_title("Fitness per generation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def heatmap_figure(summary: dict, ids: list[str], title: str) -> str | None:
    """Heatmap of the pool's kinship matrix restricted to ``ids`` (in that order)."""
    import numpy as np

    plt = _pyplot()
    pool = summary.get("pool_kinship") or {}
    names = pool.get("names") or []
    matrix = pool.get(summary.get("metric") or "pcc") or pool.get("pcc") or pool.get("matrix")
    if matrix is None:
        matrix = next((v for k, v in pool.items() if k != "names" and isinstance(v, list)), None)
    if matrix is None or not ids or any(i not in names for i in ids):
        return None
    index = [names.index(i) for i in ids]
    values = np.array([[matrix[a][b] if matrix[a][b] is not None else np.nan for b in index] for a in index],
                      dtype=np.float64)
    metric = summary.get("metric") or "pcc"
    distance = metric == "ed"
    n = len(ids)
    size = max(3.5, min(0.55 * n + 2.0, 14))
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    if distance:
        image = ax.imshow(values, cmap="viridis_r")
    else:
        image = ax.imshow(values, cmap="RdBu_r", vmin=-1, vmax=1)
    labels = [_short(summary["models"].get(i, {}).get("name", i)) for i in ids]
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticklabels(labels, fontsize=8)
    if n <= 16:
        for a in range(n):
            for b in range(n):
                if not np.isnan(values[a, b]):
                    strong = (not distance) and abs(values[a, b]) > 0.6
                    ax.text(b, a, f"{values[a, b]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if strong else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=metric.upper())
    ax.set_title(title)
    return _png(fig)


def _tree_layout(summary: dict) -> dict[str, tuple[float, int]]:
    """x, y of every model: y is the generation, x orders each generation by the mean position of
    its parents (a barycentre pass), which keeps most edges short and uncrossed."""
    models = summary["models"]
    by_generation: dict[int, list[str]] = {}
    for model_id, model in models.items():
        by_generation.setdefault(model["generation"], []).append(model_id)
    x: dict[str, float] = {}
    for generation in sorted(by_generation):
        members = by_generation[generation]
        if generation != min(by_generation):  # the first generation keeps the summary's order
            def key(m):
                parents = [x[p] for p in models[m]["parents"] if p in x]
                return (sum(parents) / len(parents) if parents else 0.0, m)

            members.sort(key=key)
        for i, m in enumerate(members):
            x[m] = i - (len(members) - 1) / 2
    return {m: (x[m], models[m]["generation"]) for m in models}


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


def family_tree_figure(summary: dict) -> str:
    plt = _pyplot()
    from matplotlib.lines import Line2D

    models = summary["models"]
    layout = _tree_layout(summary)
    top_k = set(final_top_k(summary))
    best = summary.get("best")
    widest = max(sum(1 for m in models if models[m]["generation"] == g) for g in {v[1] for v in layout.values()})
    depth = max(v[1] for v in layout.values())
    fig, ax = plt.subplots(figsize=(max(6, 1.9 * widest + 1), max(3, 1.6 * (depth + 1) + 0.8)))
    xs = [v[0] for v in layout.values()]
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(depth + 0.8, -0.6)  # generation 0 at the top, descendants below
    to_screen = ax.transData.transform
    for child, model in models.items():
        for parent in model["parents"]:
            # Obstacles: the other models and their labels (about 22 px below each node).
            others = [to_screen(layout[m]) - offset for m in models if m not in (child, parent)
                      for offset in ((0, 0), (0, 22))]
            bend = _clear_bend(to_screen(layout[parent]), to_screen(layout[child]), others)
            ax.annotate("", xy=layout[child], xytext=layout[parent], zorder=1, arrowprops=dict(
                arrowstyle="-", connectionstyle=f"arc3,rad={bend}", shrinkA=7, shrinkB=7,
                color="#d29922" if model.get("exploration") else "#8b949e",
                lw=1.6 if model.get("exploration") else 1.0,
                ls="--" if model.get("exploration") else "-"))
    for model_id, (x, y) in layout.items():
        model = models[model_id]
        if model["kind"] == "foundation":
            color = "#6e7781"
        elif model.get("exploration"):
            color = "#d29922"
        else:
            color = "#1f6feb"
        ax.scatter([x], [y], s=260 if model_id == best else 170, color=color, zorder=2,
                   edgecolors="black" if model_id in top_k else "white",
                   linewidths=2.2 if model_id in top_k else 1.0, marker="*" if model_id == best else "o")
        fit = model.get("fitness")
        label = _short(model["name"], 18) + ("" if fit is None else f"\n{fit:.3f}")
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(0, -11), ha="center", va="top",
                    fontsize=7, zorder=3, bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
    ax.set_yticks(range(depth + 1))
    ax.set_yticklabels(["foundation" if g == 0 else f"gen {g}" for g in range(depth + 1)])
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    legend = [
        Line2D([], [], marker="o", ls="", color="#6e7781", label="foundation model"),
        Line2D([], [], marker="o", ls="", color="#1f6feb", label="greedy merge"),
        Line2D([], [], marker="o", ls="", color="#d29922", label="exploration merge"),
        Line2D([], [], marker="o", ls="", color="white", markeredgecolor="black", markeredgewidth=2,
               label="final top-k"),
        Line2D([], [], marker="*", ls="", color="#8b949e", markersize=12, label="best model"),
    ]
    ax.legend(handles=legend, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_title("Family tree (label: model, fitness)")
    return _png(fig)


def kinship_gain_figure(summary: dict) -> str | None:
    plt = _pyplot()
    import numpy as np

    metric, points = kinship_gain_points(summary)
    if not points:
        return None
    stats = kinship_gain_statistics(summary)
    exploration = {m for m, model in summary["models"].items() if model.get("exploration")}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, transform, ylabel in (
        (axes[0], "gain", lambda g: g, "gain over parents' mean"),
        (axes[1], "abs_gain", abs, "|gain|"),
    ):
        xs = np.array([p[1] for p in points])
        ys = np.array([transform(p[2]) for p in points])
        marks = np.array([p[0] in exploration for p in points])
        ax.scatter(xs[~marks], ys[~marks], color="#1f6feb", label="greedy merge", zorder=2)
        if marks.any():
            ax.scatter(xs[marks], ys[marks], color="#d29922", marker="D", label="exploration merge", zorder=2)
        result = stats[key]
        if result is not None:
            slope, intercept = np.polyfit(xs, ys, 1)
            grid = np.linspace(xs.min(), xs.max(), 50)
            ax.plot(grid, slope * grid + intercept, color="#cf222e", lw=1)
            ax.set_title(f"r = {result[0]:+.3f}, p = {result[1]:.3g} (n = {len(points)})", fontsize=10)
        else:
            ax.set_title(f"n = {len(points)}: too few merges for a correlation", fontsize=10)
        if key == "gain":
            ax.axhline(0, color="black", lw=0.6)
        ax.set_xlabel(f"parents' kinship ({metric.upper()})")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Kinship against merge gain over all merges of the run", fontsize=11)
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------------------------- HTML

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#1f2328}
h1{font-size:1.6em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.warn{background:#fff8c5;border:1px solid #d4a72c;padding:.7em 1em;border-radius:6px}
.ok{background:#dafbe1;border:1px solid #4ac26b;padding:.7em 1em;border-radius:6px}
img{max-width:100%;height:auto}code{background:#f6f8fa;padding:0 .2em}.muted{color:#656d76}
"""


def _e(value) -> str:
    return html.escape(str(value))


def _num(value, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _img(data: str | None, alt: str, missing: str) -> str:
    if data is None:
        return f'<p class="muted">{_e(missing)}</p>'
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_report(summary: dict, title: str = "mergekit-kinship run") -> str:
    """The report as one HTML string (figures embedded)."""
    models = summary["models"]
    name = lambda m: _e(models[m]["name"]) if m in models else _e(m)  # noqa: E731
    generations = summary.get("generations") or []
    merges = _merges(summary)
    top_k = final_top_k(summary)
    best = summary.get("best")
    sat = saturation(summary)
    stats = kinship_gain_statistics(summary)
    base = summary.get("base") or {}
    evaluation = summary.get("evaluation") or {}

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
             f"<style>{_STYLE}</style></head><body>", f"<h1>{_e(title)}</h1>"]
    facts = [
        ("strategy", summary.get("strategy")), ("top-k", summary.get("top_k")),
        ("kinship metric", summary.get("metric")),
        ("shared base", base.get("hub_id") or base.get("path") or base.get("name")),
        ("foundation models", ", ".join(models[m]["name"] for m in _foundations(summary))),
        ("tasks", ", ".join(evaluation.get("tasks") or [])),
        ("generations", len(generations)), ("merges", len(merges)),
        ("stopped", summary.get("stopped") or "not yet (run in progress or interrupted)"),
        ("best model", f"{models[best]['name']} (fitness {_num(models[best].get('fitness'))})" if best in models else "–"),
    ]
    parts.append(_table(["", ""], [[_e(k), _e(v)] for k, v in facts]))

    if sat["saturated"]:
        parts.append(
            f'<p class="warn"><b>Saturation:</b> the final top-k\'s mutual PCC is {sat["last"]:.3f}, above '
            f'{sat["threshold"]:.2f} ({_e(sat["source"])}). The paper finds that merges among models this '
            f'related stop gaining: further generations are unlikely to help; an exploration merge with a '
            f'less related model, or a new foundation model, is the way out.</p>')
    elif sat["passed"]:
        gens = ", ".join(str(i) for i, _ in sat["passed"])
        parts.append(f'<p class="warn"><b>Saturation:</b> the top-k\'s mutual PCC passed {sat["threshold"]:.2f} '
                     f'({_e(sat["source"])}) in generation(s) {gens}, and fell below it again.</p>')
    elif sat["last"] is not None:
        parts.append(f'<p class="ok">No saturation: the final top-k\'s mutual PCC is {sat["last"]:.3f}, '
                     f'below {sat["threshold"]:.2f} ({_e(sat["source"])}).</p>')

    parts.append("<h2>Fitness per generation</h2>")
    parts.append(_img(fitness_figure(summary), "fitness per generation", "No scores yet."))
    rows = [[str(g["index"]), str(len(g.get("children", []))), ", ".join(name(m) for m in g.get("top_k", [])),
             name(g["best"]) if g.get("best") else "–", _num(g.get("best_fitness")), _num(g.get("mean_fitness")),
             _num(g.get("top_k_mutual_pcc"))] for g in generations]
    parts.append(_table(["generation", "children", "top-k", "best", "best fitness", "mean fitness of its children",
                         "top-k mutual PCC"], rows, numeric={0, 1, 4, 5, 6}))

    metric = (summary.get("metric") or "pcc").upper()
    pool_ids = list((summary.get("pool_kinship") or {}).get("names") or [])
    parts.append(f"<h2>Kinship ({_e(metric)})</h2>")
    parts.append(_img(heatmap_figure(summary, pool_ids, f"Kinship of the pool ({metric})"),
                      "pool kinship heatmap", "No pool kinship matrix in the summary."))
    parts.append(_img(heatmap_figure(summary, top_k, f"Kinship of the final top-k ({metric})"),
                      "top-k kinship heatmap", "The final top-k is not in the pool kinship matrix."))

    parts.append("<h2>Family tree</h2>")
    parts.append(_img(family_tree_figure(summary), "family tree", ""))

    parts.append("<h2>Kinship against merge gain</h2>")
    parts.append(_img(kinship_gain_figure(summary), "kinship against gain", "No merge has both a kinship and a gain yet."))
    stat_rows = []
    for key, label in (("gain", "gain"), ("abs_gain", "|gain|")):
        result = stats[key]
        stat_rows.append([_e(f"{stats['metric'].upper()} vs {label}"), str(stats["n"]),
                          _num(result[0], signed=True) if result else "–",
                          f"{result[1]:.3g}" if result else "–"])
    parts.append(_table(["correlation", "merges", "Pearson r", "p (two-sided)"], stat_rows, numeric={1, 2, 3}))
    parts.append('<p class="muted">The paper (Table 2) finds kinship predicts the size of a merge\'s gain '
                 '(|gain|) rather than its sign. With few merges, p-values are wide: treat them as a hint.</p>')

    parts.append("<h2>All models</h2>")
    rows = []
    for model_id in sorted(models, key=lambda m: (models[m]["generation"], models[m]["kind"] != "foundation", m)):
        model = models[model_id]
        kinship = model.get("parents_kinship") or {}
        flags = [f for f, on in (("best", model_id == best), ("top-k", model_id in top_k),
                                 ("exploration", model.get("exploration"))) if on]
        rows.append([f"<code>{_e(model_id)}</code>", _e(model["name"]), str(model["generation"]),
                     _e(" × ".join(models[p]["name"] for p in model["parents"])) or "–",
                     _e(model.get("method") or "–"),
                     _e(", ".join(f"{k} {v:.3f}" for k, v in kinship.items() if v is not None) or "–"),
                     _num(model.get("fitness")), _num(model.get("gain"), signed=True), _e(", ".join(flags)),
                     str(len(lineage(summary, model_id)) - 1)])
    parts.append(_table(["id", "name", "gen", "parents", "method", "parents' kinship", "fitness", "gain",
                         "", "ancestors"], rows, numeric={2, 6, 7, 9}))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path:
    """Render the report of ``run_dir`` (from its ``summary.json``) to ``out_path`` (default
    ``RUN_DIR/report.html``), atomically. Returns the path."""
    summary = load_summary(run_dir)
    out_path = Path(out_path) if out_path is not None else Path(run_dir) / REPORT_FILE
    document = render_report(summary, title=f"mergekit-kinship run: {Path(run_dir).resolve().name}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=out_path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(document)
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_path
