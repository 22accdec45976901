"""Strategies and merge methods side by side at an equal number of merges, against references.

A run's *best at N merges* is the fittest model among the foundation models and the first N
children it made (in the order it made them). Comparing runs at the same N is fair to a strategy
that spends more merges per generation, like ``kinship`` with its exploration merge. Every run is
also set against the same references, scored with the same evaluation: the base model itself and
the one-shot baselines (every foundation model merged at once, no search), so that a comparison
says whether searching paid at all, not only which strategy searched best.

Whether two runs' best models differ by more than noise is a paired bootstrap over the items both
were scored on (:func:`mergekit_kinship.uncertainty.paired_bootstrap`, seeded: the same runs give
the same interval), each run's best@N model against the leading run's. Where a run directory
holds no per-item results for a model (runs made before they were recorded, scores imported from
a file), the interval is the normal one of two independent estimates,
``difference +/- 1.96 sqrt(se_a^2 + se_b^2)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from mergekit_kinship.formatting import number, text_table, with_error
from mergekit_kinship.summary import RunSummary
from mergekit_kinship.tables import reference_label


def best_at(summary: RunSummary, merges: int) -> tuple[Optional[str], Optional[float]]:
    """(model id, fitness) of the best model using at most ``merges`` merges of this run."""
    ids = summary.foundation_ids() + summary.children_in_order()[:merges]
    scored = [(summary.models[i].fitness, -n, i) for n, i in enumerate(ids)
              if i in summary.models and summary.models[i].fitness is not None
              and not summary.models[i].partial]  # a screened-out child's score is partial
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
                      methods: Optional[dict[str, str]] = None,
                      run_dirs: Optional[dict[str, Path]] = None) -> dict[str, Any]:
    """Rows of the comparison, every run judged at the same merge count (default: the smallest
    number of merges any of the runs made), with the references and each run's difference to
    them. ``methods`` labels each run with the merge method it used (run label -> method).
    ``run_dirs`` (run label -> its directory) gives the per-item results for
    :func:`against_leader`."""
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
            "best_at_merges_stderr": s.models[best_id].fitness_stderr if best_id else None,
            "best_at_merges_id": best_id,
            "curve": best_curve(s),
        })
    against_leader(rows, summaries, run_dirs or {})
    return {"at_merges": budget, "runs": rows, "references": references,
            "best_baseline": top_baseline["name"] if top_baseline else None}


def against_leader(rows: list[dict[str, Any]], summaries: dict[str, RunSummary],
                   run_dirs: dict[str, Path], *, seed: int = 0, iterations: int = 2000) -> None:
    """Add ``vs_leader`` to each row: its best@N model minus the leading run's (the highest
    best@N), with a 95% interval and whether it ``differs`` by more than noise (see the module
    docstring); ``method``: ``paired bootstrap`` or ``independent``; None without scores."""
    from mergekit_kinship.evaluation.settings import EvaluationSettings
    from mergekit_kinship.uncertainty import independent_stderr, paired_bootstrap

    scored = [r for r in rows if r["best_at_merges"] is not None]
    if not scored:
        return
    leader = max(scored, key=lambda r: r["best_at_merges"])
    lead = summaries[leader["run"]].models[leader["best_at_merges_id"]]
    for row in rows:
        row["vs_leader"] = None
        if row["best_at_merges"] is None:
            continue
        s = summaries[row["run"]]
        model = s.models[row["best_at_merges_id"]]
        out = {"leader": leader["run"], "difference": model.fitness - lead.fitness}
        if row is leader or (model.identity is not None and model.identity == lead.identity):
            out.update(low=out["difference"], high=out["difference"], differs=False,
                       method="same model" if row is not leader else "leader")
        else:
            settings = EvaluationSettings.model_validate(
                {k: v for k, v in s.evaluation.items() if k in EvaluationSettings.model_fields}
            ) if s.tasks else None
            mine = _items(run_dirs.get(row["run"]), model)
            theirs = _items(run_dirs.get(leader["run"]), lead)
            boot = settings and mine and theirs and paired_bootstrap(
                mine, theirs, settings, seed=seed, iterations=iterations)
            if boot:
                out.update(low=boot["low"], high=boot["high"], differs=boot["differs"],
                           method="paired bootstrap", items=boot["items"])
            else:
                se = independent_stderr([(1.0, model.fitness_stderr), (-1.0, lead.fitness_stderr)])
                out.update(low=None if se is None else out["difference"] - 1.96 * se,
                           high=None if se is None else out["difference"] + 1.96 * se,
                           method="independent")
                out["differs"] = None if se is None else not (out["low"] <= 0 <= out["high"])
        row["vs_leader"] = out


def _items(run_dir: Optional[Path], model) -> Optional[dict]:
    if run_dir is None or model.items_key is None or model.partial:
        return None
    from mergekit_kinship.item_results import read_items
    from mergekit_kinship.rundir import RunDir

    items, _ = read_items(RunDir(run_dir), model.items_key)
    return items or None


def leader_text(row: dict[str, Any]) -> str:
    """``-0.0125 [-0.0350, +0.0100] noise`` / ``differs`` / ``(leader)``."""
    v = row.get("vs_leader")
    if not v:
        return "-"
    if v["method"] in ("leader", "same model"):
        return f"({v['method']})"
    if v["low"] is None:
        return f"{number(v['difference'], signed=True)} (no error known)"
    verdict = "differs" if v["differs"] else "within noise"
    return (f"{number(v['difference'], signed=True)} [{number(v['low'], signed=True)}, "
            f"{number(v['high'], signed=True)}] {verdict}")


def comparison_table(comparison: dict) -> str:
    """The comparison as text: one row per run, the references below, and, when several merge
    methods were run, a strategy × method grid of best@N."""
    n = comparison["at_merges"]
    runs = comparison["runs"]
    with_methods = len({r["method"] for r in runs}) > 1
    header = ["run", "strategy", *(["method"] if with_methods else []), "merges", "gens",
              "stopped", f"best@{n}", "model", "vs best foundation", "vs base",
              "vs best one-shot", "best (all merges)", "vs the leader (95% interval)"]
    rows = [[r["run"], r["strategy"], *([r["method"]] if with_methods else []), str(r["merges"]),
             str(r["generations"]), str(r["stopped"]),
             with_error(r["best_at_merges"], r.get("best_at_merges_stderr")),
             str(r["best_at_merges_model"]), number(r["gain_over_best_foundation"], signed=True),
             number(r["vs_base"], signed=True), number(r["vs_best_baseline"], signed=True),
             f"{number(r['best_final'])} ({r['best_final_model']})", leader_text(r)]
            for r in runs]
    lines = [f"best@{n}: the fittest of each run's foundation models and its first {n} children "
             f"(± one standard error); vs the leader: its best@{n} model minus the leading run's, "
             f"95% interval paired over the items both were scored on (bootstrap, seed 0)",
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
    """The summaries of finished run directories, labelled by folder name (the folders:
    :func:`run_labels`)."""
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


def run_labels(run_dirs: Sequence[str | Path]) -> dict[str, Path]:
    """Label -> folder, labelled as :func:`read_summaries` labels them."""
    out: dict[str, Path] = {}
    for d in run_dirs:
        label = Path(d).name
        while label in out:
            label += "'"
        out[label] = Path(d)
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
    summaries, labels, dirs = {}, {}, {}
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
        for folder in ("scores", "items"):  # per-item results are keyed by content too
            (sub / folder).mkdir(parents=True, exist_ok=True)
            for other in done:
                for f in (other / folder).glob("*.json"):
                    if not (sub / folder / f.name).exists():
                        shutil.copy2(f, sub / folder / f.name)
        label = f"{method}/{strategy}" if method else strategy
        summaries[label] = evolve(recipe.model_copy(update=update), sub, keep=keep,
                                  evaluator=evaluator, baselines=baselines and index == 0,
                                  kinship_fn=kinship_fn, progress=progress,
                                  on_generation=on_generation)
        labels[label] = method or recipe.merge.method
        done.append(sub)
        dirs[label] = sub
    return compare_summaries(summaries, merges, labels, dirs)
