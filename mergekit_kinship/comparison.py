"""Strategies and merge methods side by side at an equal number of merges, against references.

A run's *best at N merges* is the fittest model among the foundation models and the first N
children it made (in the order it made them). Comparing runs at the same N is fair to a strategy
that spends more merges per generation, like ``kinship`` with its exploration merge. Every run is
also set against the same references, scored with the same evaluation: the base model itself and
the one-shot baselines (every foundation model merged at once, no search), so that a comparison
says whether searching paid at all, not only which strategy searched best.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from mergekit_kinship.formatting import number, text_table
from mergekit_kinship.summary import RunSummary
from mergekit_kinship.tables import reference_label


def best_at(summary: RunSummary, merges: int) -> tuple[Optional[str], Optional[float]]:
    """(model id, fitness) of the best model using at most ``merges`` merges of this run."""
    ids = summary.foundation_ids() + summary.children_in_order()[:merges]
    scored = [(summary.models[i].fitness, -n, i) for n, i in enumerate(ids)
              if i in summary.models and summary.models[i].fitness is not None]
    if not scored:
        return None, None
    fit, _, best = max(scored)
    return best, fit


def best_curve(summary: RunSummary) -> list[Optional[float]]:
    """Best fitness so far after 0, 1, 2, ... merges."""
    return [best_at(summary, n)[1] for n in range(len(summary.children_in_order()) + 1)]


def references_of(summaries: Sequence[RunSummary]) -> list[dict[str, Any]]:
    """Every scored reference of the runs, once each (by id: the same content in every run)."""
    seen: dict[str, dict[str, Any]] = {}
    for s in summaries:
        for ref_id, ref in s.references.items():
            if ref.fitness is not None and ref_id not in seen:
                seen[ref_id] = {"id": ref_id, "name": ref.name, "kind": ref.kind,
                                "method": ref.method, "fitness": ref.fitness}
    return list(seen.values())


def compare_summaries(summaries: dict[str, RunSummary], at_merges: Optional[int] = None,
                      methods: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Rows of the comparison, every run judged at the same merge count (default: the smallest
    number of merges any of the runs made), with the references and each run's difference to
    them. ``methods`` labels each run with the merge method it used (run label -> method)."""
    if not summaries:
        raise ValueError("nothing to compare")
    budget = at_merges if at_merges is not None else min(
        len(s.children_in_order()) for s in summaries.values())
    references = references_of(list(summaries.values()))
    base = next((r["fitness"] for r in references if r["kind"] == "base"), None)
    baselines = [r for r in references if r["kind"] == "baseline"]
    top_baseline = max(baselines, key=lambda r: r["fitness"]) if baselines else None
    rows = []
    for label, s in summaries.items():
        foundation = s.best_foundation_fitness()
        best_id, best_fit = best_at(s, budget)
        final = s.models[s.best]

        def minus(value):
            return None if best_fit is None or value is None else best_fit - value

        rows.append({
            "run": label, "strategy": s.strategy,
            "method": (methods or {}).get(label) or s.recipe.get("merge", {}).get("method"),
            "merges": len(s.children_in_order()), "generations": len(s.generations),
            "stopped": s.stopped, "at_merges": budget, "best_at_merges": best_fit,
            "best_at_merges_model": s.models[best_id].name if best_id else None,
            "gain_over_best_foundation": minus(foundation),
            "vs_base": minus(base),
            "vs_best_baseline": minus(top_baseline["fitness"] if top_baseline else None),
            "best_final": final.fitness, "best_final_model": final.name,
            "curve": best_curve(s),
        })
    return {"at_merges": budget, "runs": rows, "references": references,
            "best_baseline": top_baseline["name"] if top_baseline else None}


def comparison_table(comparison: dict) -> str:
    """The comparison as text: one row per run, the references below, and, when several merge
    methods were run, a strategy × method grid of best@N."""
    n = comparison["at_merges"]
    runs = comparison["runs"]
    with_methods = len({r["method"] for r in runs}) > 1
    header = ["run", "strategy", *(["method"] if with_methods else []), "merges", "gens",
              "stopped", f"best@{n}", "model", "vs best foundation", "vs base",
              "vs best one-shot", "best (all merges)"]
    rows = [[r["run"], r["strategy"], *([r["method"]] if with_methods else []), str(r["merges"]),
             str(r["generations"]), str(r["stopped"]), number(r["best_at_merges"]),
             str(r["best_at_merges_model"]), number(r["gain_over_best_foundation"], signed=True),
             number(r["vs_base"], signed=True), number(r["vs_best_baseline"], signed=True),
             f"{number(r['best_final'])} ({r['best_final_model']})"] for r in runs]
    lines = [f"best@{n}: the fittest of each run's foundation models and its first {n} children",
             text_table(header, rows)]
    if comparison["references"]:
        lines += ["", "references (the same evaluation, no search):",
                  text_table(["reference", "fitness"], [
                      [reference_label(r["name"], r["kind"]),
                       number(r["fitness"])] for r in comparison["references"]])]
    if with_methods:
        strategies = list(dict.fromkeys(r["strategy"] for r in runs))
        methods = list(dict.fromkeys(r["method"] for r in runs))
        cell = {(r["strategy"], r["method"]): r for r in runs}
        grid = [[s, *(number(cell[(s, m)]["best_at_merges"]) if (s, m) in cell else "-"
                      for m in methods)] for s in strategies]
        lines += ["", f"best@{n} by strategy (rows) and two-parent merge method (columns):",
                  text_table(["strategy", *methods], grid)]
    return "\n".join(lines)


def read_summaries(run_dirs: Sequence[str | Path]) -> dict[str, RunSummary]:
    """The summaries of finished run directories, labelled by folder name."""
    from mergekit_kinship.errors import UserError
    from mergekit_kinship.summary import load_summary, summary_path

    out = {}
    for d in run_dirs:
        if not summary_path(d).is_file():
            raise UserError(f"{d}: no summary.json (not an evolve run directory)")
        label = Path(d).name
        while label in out:
            label += "'"
        out[label] = load_summary(d)
    return out


def compare_strategies(recipe, run_dir: str | Path, strategies: Sequence[str],
                       merges: Optional[int] = None, keep: str = "all",
                       methods: Optional[Sequence[str]] = None, baselines: bool = True,
                       evaluator=None, kinship_fn=None, progress: bool = True,
                       on_generation=None) -> dict[str, Any]:
    """Run ``evolve`` once per strategy (and per two-parent merge method in ``methods``) on the
    same recipe, into ``run_dir/<strategy>`` (``run_dir/<method>/<strategy>`` with ``methods``),
    each with at most ``merges`` merges when given, and compare them at an equal number of
    merges. The first run also makes the one-shot ``baselines``; every run scores the base.
    Scores are shared between the runs (same content, same key); merges are not."""
    import shutil

    from mergekit_kinship.evolution import evolve
    from mergekit_kinship.method_templates import template_for

    cells = [(m, s) for m in (methods or [None]) for s in strategies]
    templates = {m: template_for(m, recipe) for m in (methods or [])}  # errors before any work
    summaries, labels = {}, {}
    done: list[Path] = []
    for index, (method, strategy) in enumerate(cells):
        update: dict[str, Any] = {"strategy": strategy}
        if method is not None:
            update["merge"] = templates[method]
        if merges is not None:
            update["stopping"] = recipe.stopping.model_copy(update={"max_merges": merges})
        sub = Path(run_dir) / method / strategy if method else Path(run_dir) / strategy
        # Scores are keyed by content (model identity + evaluation fingerprint), so a score one
        # run measured is valid for the others: the foundation models, the base and the
        # children two runs share are evaluated once.
        (sub / "scores").mkdir(parents=True, exist_ok=True)
        for other in done:
            for f in (other / "scores").glob("*.json"):
                if not (sub / "scores" / f.name).exists():
                    shutil.copy2(f, sub / "scores" / f.name)
        label = f"{method}/{strategy}" if method else strategy
        summaries[label] = evolve(recipe.model_copy(update=update), sub, keep=keep,
                                  evaluator=evaluator, baselines=baselines and index == 0,
                                  kinship_fn=kinship_fn, progress=progress,
                                  on_generation=on_generation)
        labels[label] = method or recipe.merge.method
        done.append(sub)
    return compare_summaries(summaries, merges, labels)
