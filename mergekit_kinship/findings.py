"""What a run's summary shows beyond its records: the run's order of models, kinship against
merge gain, and saturation. Pure functions of a :class:`~mergekit_kinship.summary.RunSummary`,
shared by the report (HTML) and the ``report`` command's text output.
"""

from __future__ import annotations

from typing import Any, Optional

from mergekit_kinship.metrics import ALIASES
from mergekit_kinship.statistics import fisher_interval, pearson
from mergekit_kinship.summary import ModelEntry, RunSummary

PAPER_SATURATION = 0.9  # §4.4: above ~0.9 mutual PCC, merges of the top models stop gaining


def run_order(summary: RunSummary) -> list[str]:
    """Every model of the pool in the order the run made it: the foundation models in recipe
    order, then the children generation by generation as ``generations[].children`` lists them
    (so ``g1-2`` comes before ``g1-10``); a child no generation lists (imported from elsewhere)
    goes last in its generation."""
    listed = [m for m in (*summary.foundation_ids(), *summary.children_in_order())
              if m in summary.models]
    order = list(dict.fromkeys(listed))
    order += [m for m in summary.models if m not in set(order)]
    rank = {m: i for i, m in enumerate(order)}
    return sorted(order, key=lambda m: (summary.models[m].generation, rank[m]))


def merges(summary: RunSummary) -> list[str]:
    """The children of the pool, in the run's order."""
    return [m for m in run_order(summary) if summary.models[m].kind == "child"]


def parents_kinship(model: ModelEntry, metric: str) -> Optional[float]:
    """The kinship of ``model``'s parents under ``metric`` (summaries may key it by an alias)."""
    for key, value in (model.parents_kinship or {}).items():
        if ALIASES.get(key, key) == metric:
            return value
    return None


def studied_metrics(summary: RunSummary) -> list[str]:
    """The metrics set against merge gain: the run's kinship metric, PCC and sign conflict (the
    pool measures all three for every pair), each once."""
    return list(dict.fromkeys([summary.metric, "pcc", "sign_conflict"]))


def kinship_gain_points(summary: RunSummary, metric: Optional[str] = None
                        ) -> tuple[str, list[tuple[str, float, float]]]:
    """(metric, [(model id, parents' kinship, gain)]) over every merge that has both; ``metric``
    defaults to the run's."""
    metric = metric or summary.metric
    points = []
    for model_id in merges(summary):
        model = summary.models[model_id]
        kinship = parents_kinship(model, metric)
        if kinship is not None and model.gain is not None:
            points.append((model_id, float(kinship), float(model.gain)))
    return metric, points


def kinship_gain_statistics(summary: RunSummary, metric: Optional[str] = None) -> dict[str, Any]:
    """Pearson (r, p) of parents' kinship under ``metric`` (default: the run's) against the gain
    (``gain``) and against |gain| (``abs_gain``) over all merges, each None with fewer than 3
    merges; their 95% confidence intervals by Fisher's z (``gain_ci``, ``abs_gain_ci``: (low,
    high), None with fewer than 4 merges); ``n`` merges; ``metric``. A screened-out child's
    gain (a paired estimate on the items it was scored on) counts like any other."""
    metric, points = kinship_gain_points(summary, metric)
    kinship = [p[1] for p in points]
    out: dict[str, Any] = {"metric": metric, "n": len(points),
                           "gain": pearson(kinship, [p[2] for p in points]),
                           "abs_gain": pearson(kinship, [abs(p[2]) for p in points])}
    for key in ("gain", "abs_gain"):
        out[f"{key}_ci"] = out[key] and fisher_interval(out[key][0], len(points))
    return out


def kinship_gain_study(summary: RunSummary) -> list[dict[str, Any]]:
    """:func:`kinship_gain_statistics` for each of :func:`studied_metrics` that some merge has
    (a summary written before sign conflict was measured has none of it)."""
    return [stats for stats in (kinship_gain_statistics(summary, m) for m in studied_metrics(summary))
            if stats["n"] or stats["metric"] == summary.metric]


def saturation(summary: RunSummary) -> dict[str, Any]:
    """The top-k's mutual PCC per generation against the threshold (the recipe's, else the
    paper's 0.9): ``history`` [(generation, value)], ``passed`` (those above), ``last``,
    ``saturated`` (the last one is above), ``threshold`` and its ``source``."""
    threshold, source = summary.saturation_threshold, "recipe"
    if threshold is None:
        threshold, source = PAPER_SATURATION, "paper's heuristic (the recipe sets none)"
    history = [(g.index, g.top_k_mutual_pcc) for g in summary.generations]
    passed = [(index, value) for index, value in history if value is not None and value > threshold]
    last = history[-1][1] if history else None
    return {"threshold": threshold, "source": source, "history": history, "passed": passed,
            "saturated": last is not None and last > threshold, "last": last}
