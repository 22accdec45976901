"""Strategies side by side at an equal number of merges (the comparison the paper did not make).

A run's *best at N merges* is the fittest model among the foundation models and the first N
children it made (in the order it made them). Comparing runs at the same N is fair to a strategy
that spends more merges per generation, like ``kinship`` with its exploration merge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from mergekit_kinship.formatting import number, text_table
from mergekit_kinship.summary import RunSummary


def best_at(summary: RunSummary, merges: int) -> tuple[Optional[str], Optional[float]]:
    """(model id, fitness) of the best model using at most ``merges`` merges of this run."""
    ids = summary.foundation_ids() + summary.children_in_order()[:merges]
    scored = [(summary.models[i].fitness, -n, i) for n, i in enumerate(ids)
              if summary.models[i].fitness is not None]
    if not scored:
        return None, None
    fit, _, best = max(scored)
    return best, fit


def best_curve(summary: RunSummary) -> list[Optional[float]]:
    """Best fitness so far after 0, 1, 2, ... merges."""
    return [best_at(summary, n)[1] for n in range(len(summary.children_in_order()) + 1)]


def compare_summaries(summaries: dict[str, RunSummary], at_merges: Optional[int] = None
                      ) -> dict[str, Any]:
    """Rows of the comparison, every run judged at the same merge count (default: the smallest
    number of merges any of the runs made)."""
    if not summaries:
        raise ValueError("nothing to compare")
    budget = at_merges if at_merges is not None else min(
        len(s.children_in_order()) for s in summaries.values())
    rows = []
    for label, s in summaries.items():
        foundation = s.best_foundation_fitness()
        best_id, best_fit = best_at(s, budget)
        final = s.models[s.best]
        rows.append({
            "run": label, "strategy": s.strategy, "merges": len(s.children_in_order()),
            "generations": len(s.generations), "stopped": s.stopped,
            "at_merges": budget, "best_at_merges": best_fit,
            "best_at_merges_model": s.models[best_id].name if best_id else None,
            "gain_over_best_foundation": None if best_fit is None or foundation is None
            else best_fit - foundation,
            "best_final": final.fitness, "best_final_model": final.name,
            "curve": best_curve(s),
        })
    return {"at_merges": budget, "runs": rows}


def comparison_table(comparison: dict) -> str:
    n = comparison["at_merges"]
    header = ["run", "strategy", "merges", "gens", "stopped", f"best@{n}", "model",
              "gain vs foundation", "best (all merges)"]
    rows = [[r["run"], r["strategy"], str(r["merges"]), str(r["generations"]), str(r["stopped"]),
             number(r["best_at_merges"]), str(r["best_at_merges_model"]),
             number(r["gain_over_best_foundation"], signed=True),
             f"{number(r['best_final'])} ({r['best_final_model']})"] for r in comparison["runs"]]
    return text_table(header, rows)


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
                       merges: Optional[int] = None, keep: str = "all", evaluator=None,
                       kinship_fn=None, progress: bool = True, on_generation=None
                       ) -> dict[str, Any]:
    """Run ``evolve`` once per strategy on the same recipe into ``run_dir/<strategy>`` (each
    with at most ``merges`` merges when given) and compare them at an equal number of merges.
    Scores are shared between the runs (same content, same key); merges are not."""
    import shutil

    from mergekit_kinship.evolution import evolve

    summaries = {}
    done: list[Path] = []
    for strategy in strategies:
        update: dict[str, Any] = {"strategy": strategy}
        if merges is not None:
            update["stopping"] = recipe.stopping.model_copy(update={"max_merges": merges})
        sub = Path(run_dir) / strategy
        # Scores are keyed by content (model identity + evaluation fingerprint), so a score one
        # strategy measured is valid for the others: the foundation models and the shared first
        # generation are evaluated once.
        (sub / "scores").mkdir(parents=True, exist_ok=True)
        for other in done:
            for f in (other / "scores").glob("*.json"):
                if not (sub / "scores" / f.name).exists():
                    shutil.copy2(f, sub / "scores" / f.name)
        summaries[strategy] = evolve(recipe.model_copy(update=update), sub, keep=keep,
                                     evaluator=evaluator, kinship_fn=kinship_fn,
                                     progress=progress, on_generation=on_generation)
        done.append(sub)
    return compare_summaries(summaries, merges)
