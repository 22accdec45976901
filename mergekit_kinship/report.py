"""The run report: one self-contained HTML file with embedded PNG figures.

Built from the run summary alone (:func:`mergekit_kinship.summary.load_summary`):

- a title that says what the run is (strategy, foundation models, base, top-k), the run
  directory as subtitle, and the run's facts;
- best and mean fitness per generation (generation 0: the foundation models);
- the kinship heatmap of the whole pool and of the final top-k, on one colour scale;
- the family tree;
- kinship between parents against merge gain over every merge of the run, with Pearson r and its
  two-sided p-value, against the signed gain and against |gain| (the paper's Table 2, on the
  user's own run), for the run's metric, PCC and sign conflict side by side, so that the user
  sees which of them tracks the gain on their run;
- a saturation warning when the top-k's mutual PCC passes the threshold (the recipe's, or the
  paper's 0.9 when the recipe set none);
- every model of the run, generation by generation in the order the run made them.

Figures are PNG, base64-embedded, so the file can be mailed or attached to an issue as is.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Optional

from mergekit_kinship.atomic_io import write_text
from mergekit_kinship.evaluation.describe import task_label
from mergekit_kinship.findings import (
    kinship_gain_study,
    merges,
    parents_kinship,
    run_order,
    saturation,
    studied_metrics,
)
from mergekit_kinship.formatting import MISSING, metric_value, number, with_error
from mergekit_kinship.report_figures import PAGE_WIDTH_PX
from mergekit_kinship.summary import RunSummary, load_summary
from mergekit_kinship.tables import verdict_lines

REPORT_FILE = "report.html"
# How each strategy reads in the title; another registered strategy reads "Merging".
_STRATEGY_PHRASES = {"kinship": "Kinship-guided merging", "greedy": "Top-k greedy merging",
                     "random": "Random merging"}

_STYLE = f"""
body{{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:{PAGE_WIDTH_PX}px;margin:2em auto;padding:0 1em;color:#1f2328}}
h1{{font-size:1.6em;margin-bottom:.2em}}h2{{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.6em}}
.subtitle{{margin-top:0;color:#656d76}}
table{{border-collapse:collapse;font-size:.85em;margin:.6em 0}}th,td{{border:1px solid #d0d7de;padding:3px 8px;text-align:left}}
th{{background:#f6f8fa}}td.num{{text-align:right;font-variant-numeric:tabular-nums}}
.warn{{background:#fff8c5;border:1px solid #d4a72c;padding:.7em 1em;border-radius:6px}}
.ok{{background:#dafbe1;border:1px solid #4ac26b;padding:.7em 1em;border-radius:6px}}
img{{max-width:100%;height:auto}}code{{background:#f6f8fa;padding:0 .2em}}.muted{{color:#656d76}}
"""


def report_title(summary: RunSummary) -> str:
    """What the run is, e.g. "Kinship-guided merging of 5 fine-tunes of base (strategy kinship,
    k = 3)"."""
    n = len(summary.foundation_ids())
    phrase = _STRATEGY_PHRASES.get(summary.strategy, "Merging")
    if summary.base is not None:
        base = summary.base.hub_id or summary.base.name
        what = f"{n} fine-tune{'s' if n != 1 else ''} of {base}"
    else:
        what = f"{n} foundation model{'s' if n != 1 else ''}"
    return f"{phrase} of {what} (strategy {summary.strategy}, k = {summary.top_k})"


def _e(value) -> str:
    return html.escape(str(value))


def _img(fig, alt: str, missing: str) -> str:
    from mergekit_kinship.report_figures import png_bytes

    if fig is None:
        return f'<p class="muted">{_e(missing)}</p>'
    data = base64.b64encode(png_bytes(fig)).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list[str]], numeric: frozenset[int] = frozenset()) -> str:
    """A table; ``rows`` hold HTML already escaped, ``header`` plain text."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _facts(summary: RunSummary) -> str:
    """The run's facts as a two-column table whose first column heads each row."""
    models = summary.models
    base = summary.base
    best = summary.best
    facts = [
        ("strategy", summary.strategy), ("top-k", summary.top_k),
        ("kinship metric", summary.metric),
        ("shared base", (base.hub_id or base.path or base.name) if base else MISSING),
        ("foundation models", ", ".join(models[m].name for m in summary.foundation_ids())),
        ("tasks", "; ".join(f"{t} ({task_label(summary.evaluation, t)})" for t in summary.tasks)),
        ("generations", len(summary.generations)), ("merges", len(merges(summary))),
        ("stopped", summary.stopped or "not yet (run in progress or interrupted)"),
        ("best model", f"{models[best].name} (fitness "
         f"{with_error(models[best].fitness, models[best].fitness_stderr)})"
         if best in models else MISSING),
        *((("staged evaluation", _staged_fact(summary)),) if summary.evaluation.get("stages")
          else ()),
        *(("against the references", line) for line in verdict_lines(summary)
          if summary.references),
    ]
    rows = "".join(f'<tr><th scope="row">{_e(k)}</th><td>{_e(v)}</td></tr>' for k, v in facts)
    return f"<table><tbody>{rows}</tbody></table>"


def _staged_fact(summary: RunSummary) -> str:
    ev = summary.evaluation
    screened = [m for m in summary.models.values() if m.partial]
    full = sum(sum(m.items_total.values()) for m in [*summary.models.values(),
                                                     *summary.references.values()])
    return (f"stages {', '.join(f'{f:g}' for f in ev['stages'])} of each task's items (subset "
            f"seed {ev.get('subset_seed', 0)}, one-sided {ev.get('confidence', 0.95):g} bound); "
            f"{len(screened)} children screened out; {summary.items_scored()} items scored "
            f"of the {full} a full evaluation of the same models scores")


def _saturation_note(summary: RunSummary) -> Optional[str]:
    sat = saturation(summary)
    source = _e(sat["source"])
    if sat["saturated"]:
        return (f'<p class="warn"><b>Saturation:</b> the final top-k\'s mutual PCC is {sat["last"]:.3f}, '
                f'above {sat["threshold"]:.2f} ({source}). The paper finds that merges among models '
                f'this related stop gaining: further generations are unlikely to help; an exploration '
                f'merge with a less related model, or a new foundation model, is the way out.</p>')
    if sat["passed"]:
        gens = ", ".join(str(i) for i, _ in sat["passed"])
        return (f'<p class="warn"><b>Saturation:</b> the top-k\'s mutual PCC passed '
                f'{sat["threshold"]:.2f} ({source}) in generation(s) {gens}, and fell below it again.</p>')
    if sat["last"] is not None:
        return (f'<p class="ok">No saturation: the final top-k\'s mutual PCC is {sat["last"]:.3f}, '
                f'below {sat["threshold"]:.2f} ({source}).</p>')
    return None


def _models_table(summary: RunSummary) -> str:
    models = summary.models
    top_k = set(summary.final_top_k())
    # the run's metric, then PCC and sign conflict beside it (where the summary has them: a run
    # from before sign conflict was measured has none)
    metrics = [m for m in studied_metrics(summary) if m == summary.metric
               or any(parents_kinship(model, m) is not None for model in models.values())]
    rows = []
    for model_id in run_order(summary):
        model = models[model_id]
        kinship = [_e(metric_value(parents_kinship(model, m), m)) for m in metrics]
        notes = [note for note, on in (("best", model_id == summary.best),
                                       ("final top-k", model_id in top_k),
                                       ("exploration merge", model.exploration),
                                       (f"screened out ({sum(model.items.values())}/"
                                        f"{sum(model.items_total.values())} items)",
                                        model.partial)) if on]
        rows.append([f"<code>{_e(model_id)}</code>", _e(model.name), str(model.generation),
                     _e(" × ".join(models[p].name for p in model.parents) or MISSING),
                     _e(model.method or MISSING), *kinship,
                     with_error(model.fitness, model.fitness_stderr),
                     with_error(model.gain, model.gain_stderr, signed=True), _e(", ".join(notes)),
                     str(len(summary.lineage(model_id)) - 1)])
    k = len(metrics)
    return _table(["id", "name", "gen", "parents", "method",
                   *(f"parents' kinship ({m})" for m in metrics), "fitness", "gain", "notes", "ancestors"],
                  rows, numeric=frozenset({2, *range(5, 7 + k), 8 + k}))


def _gain_verdict(study: list[dict]) -> Optional[str]:
    """Which studied metric's parents' values follow |gain| most closely on this run (largest
    |r|), or None when fewer than two metrics have a correlation."""
    rated = [(abs(s["abs_gain"][0]), s) for s in study if s["abs_gain"] is not None]
    if len({s["metric"] for _, s in rated}) < 2:
        return None
    _, best = max(rated, key=lambda item: item[0])
    r, p = best["abs_gain"]
    return (f"On this run, |gain| follows the parents' {best['metric']} most closely "
            f"(r = {r:+.3f}, p = {p:.3g}, {best['n']} merges).")


def _references_table(summary: RunSummary) -> str:
    best = summary.best_child()
    best_fitness = summary.models[best].fitness if best else None
    rows = []
    for ref in summary.references.values():
        what = ("the shared base model" if ref.kind == "base" else
                f"{ref.method} of all {len(ref.parents)} foundation models")
        diff = (best_fitness - ref.fitness) if best_fitness is not None and \
            ref.fitness is not None else None
        rows.append([_e(ref.name), _e(what), with_error(ref.fitness, ref.fitness_stderr),
                     with_error(ref.vs_base, ref.vs_base_stderr, signed=True)
                     if ref.kind != "base" else MISSING,
                     number(diff, signed=True), _e(ref.failed or "")])
    return _table(["reference", "what it is", "fitness", "vs base", "best child minus it",
                   "notes"], rows, numeric=frozenset({2, 3, 4}))


def render_report(summary: RunSummary, title: Optional[str] = None,
                  subtitle: Optional[str] = None) -> str:
    """The report as one HTML string (figures embedded). ``title`` defaults to
    :func:`report_title`; ``subtitle`` (e.g. the run directory) is shown under it."""
    from mergekit_kinship.family_tree import family_tree_figure
    from mergekit_kinship.report_figures import (fitness_figure, heatmap_figure,
                                                 kinship_gain_figure, pool_limits)

    title = title or report_title(summary)
    models = summary.models
    name = lambda m: _e(models[m].name) if m in models else _e(m)  # noqa: E731
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
             f"<style>{_STYLE}</style></head><body>", f"<h1>{_e(title)}</h1>"]
    if subtitle:
        parts.append(f'<p class="subtitle">{_e(subtitle)}</p>')
    parts.append(_facts(summary))
    note = _saturation_note(summary)
    if note:
        parts.append(note)

    parts.append("<h2>Fitness per generation</h2>")
    parts.append(_img(fitness_figure(summary), "fitness per generation", "No scores yet."))
    rows = [[str(g.index), str(len(g.children)), ", ".join(name(m) for m in g.top_k),
             name(g.best) if g.best else MISSING, number(g.best_fitness), number(g.mean_fitness),
             number(g.top_k_mutual_pcc)] for g in summary.generations]
    parts.append(_table(["generation", "children", "top-k", "best", "best fitness",
                         "mean fitness of its children", "top-k mutual PCC"], rows,
                        numeric=frozenset({0, 1, 4, 5, 6})))

    metric = summary.pool_kinship.metric.upper()
    limits = pool_limits(summary)
    parts.append(f"<h2>Kinship ({_e(metric)})</h2>")
    parts.append(_img(heatmap_figure(summary, summary.pool_kinship.names,
                                     f"Kinship of the pool ({metric})", limits),
                      "pool kinship heatmap", "No pool kinship matrix in the summary."))
    parts.append(_img(heatmap_figure(summary, summary.final_top_k(),
                                     f"Kinship of the final top-k ({metric}, on the pool's scale)",
                                     limits),
                      "top-k kinship heatmap", "The final top-k is not in the pool kinship matrix."))

    parts.append("<h2>Family tree</h2>")
    parts.append(_img(family_tree_figure(summary), "family tree", ""))

    study = kinship_gain_study(summary)
    parts.append("<h2>Kinship against merge gain</h2>")
    parts.append(_img(kinship_gain_figure(summary), "kinship against gain",
                      "No merge has both a kinship and a gain yet."))
    stat_rows = []
    for stats in study:
        for key, label in (("gain", "gain"), ("abs_gain", "|gain|")):
            result = stats[key]
            ci = stats[f"{key}_ci"]
            stat_rows.append([_e(f"{stats['metric']} vs {label}"), str(stats["n"]),
                              number(result[0], signed=True) if result else MISSING,
                              f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else MISSING,
                              f"{result[1]:.3g}" if result else MISSING])
    parts.append(_table(["correlation", "merges", "Pearson r", "95% CI (Fisher z)",
                         "p (two-sided)"], stat_rows, numeric=frozenset({1, 2, 4})))
    verdict = _gain_verdict(study)
    if verdict:
        parts.append(f"<p>{_e(verdict)}</p>")
    parts.append('<p class="muted">The paper (Table 2) finds kinship predicts the size of a merge\'s '
                 'gain (|gain|) rather than its sign. Sign conflict is a distance: where it tracks '
                 'the gain, expect the sign of r opposite to PCC\'s. With few merges, p-values are '
                 'wide: treat them as a hint; the confidence interval says how wide. Fitness and '
                 'gain carry ± one standard error (a gain paired item by item with its '
                 'parents where per-item results were recorded).</p>')

    if summary.references:
        parts.append("<h2>References</h2>")
        parts.append('<p class="muted">Scored with the same evaluation, outside the search (not '
                     'pool members): the base model itself, and one-shot merges of every '
                     'foundation model at once.</p>')
        parts.append(_references_table(summary))
    parts.append("<h2>All models</h2>")
    parts.append(_models_table(summary))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path:
    """Render the report of ``run_dir`` (from its ``summary.json``) to ``out_path`` (default
    ``RUN_DIR/report.html``), atomically. Returns the path; UserError when the summary is
    missing or invalid, OSError when the file cannot be written."""
    summary = load_summary(run_dir)
    out_path = Path(out_path) if out_path is not None else Path(run_dir) / REPORT_FILE
    document = render_report(summary, subtitle=f"Run directory: {Path(run_dir).resolve()}")
    return write_text(out_path, document)
