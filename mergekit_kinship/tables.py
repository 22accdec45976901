"""The tables ``evolve``, ``compare`` and the demo print: pure functions of the run summary."""

from __future__ import annotations

import sys

from mergekit_kinship.formatting import number, text_table, with_error
from mergekit_kinship.summary import ModelEntry, RunSummary


def items_text(m: ModelEntry) -> str:
    """``400`` items, or ``screened out: 40/400 items (bound 0.6512 < 0.7000)``."""
    scored, total = sum(m.items.values()), sum(m.items_total.values())
    if m.screened_out is None:
        return str(scored) if scored else "-"
    s = m.screened_out
    bound = (f" (bound {number(s.bound)} < {number(s.threshold)})"
             if s.bound is not None and s.threshold is not None else "")
    return f"screened out: {scored}/{total} items{bound}"


def generation_table(summary: RunSummary, index: int) -> str:
    """Generation ``index`` as text: child, parents, parents' kinship, scores, fitness, gain over
    the parents' mean and, when the base model was scored, the difference to the base, each with
    its standard error (``±``, :mod:`mergekit_kinship.uncertainty`); with staged evaluation the
    items each child was scored on, and which were screened out; then the best model so far and
    the top-k. Generation 1's table starts with the references."""
    models = summary.models
    record = next(g for g in summary.generations if g.index == index)
    tasks = summary.tasks
    metric = summary.metric
    base = summary.base_reference()
    staged = bool(summary.evaluation.get("stages")) or any(
        models[c].partial for c in record.children)
    header = ["child", "parents", f"kinship ({metric})", *tasks, "fitness", "gain",
              *(["vs base"] if base else []), *(["items"] if staged else [])]
    rows = []
    for cid in record.children:
        m = models[cid]
        parents = " x ".join(models[p].name for p in m.parents)
        if m.exploration:
            parents += " (explore)"
        kin = (m.parents_kinship or {}).get(metric)
        rows.append([m.name, parents, number(kin), *(number(m.scores.get(t)) for t in tasks),
                     with_error(m.fitness, m.fitness_stderr),
                     with_error(m.gain, m.gain_stderr, signed=True),
                     *([with_error(m.vs_base, m.vs_base_stderr, signed=True)] if base else []),
                     *([items_text(m)] if staged else [])])
    for cid in record.failed:
        m = summary.failed[cid]
        parents = " x ".join(models[p].name for p in m.parents)
        rows.append([m.name, parents, number((m.parents_kinship or {}).get(metric)),
                     *("-" for _ in tasks), "failed", "-", *(["-"] if base else []),
                     *(["-"] if staged else [])])
    notes = ([f"{len(record.failed)} failed, skipped"] if record.failed else []) + (
        [f"{len(record.screened)} screened out"] if record.screened else [])
    title = (f"generation {index}: {len(rows)} children"
             + (f" ({'; '.join(notes)})" if notes else ""))
    best = models[record.best]
    top = ", ".join(models[i].name for i in record.top_k)
    footer = (f"best so far: {best.name} fitness {with_error(best.fitness, best.fitness_stderr)}"
              f"; top-k: {top}; mutual pcc {number(record.top_k_mutual_pcc)}")
    lines = [title, text_table(header, rows), footer]
    if index == 1 and summary.references:
        lines.insert(0, references_line(summary))
    return "\n".join(lines)


def references_line(summary: RunSummary) -> str:
    """``references (not in the pool): base 0.6300; ties (one-shot) 0.7000 ...``"""
    parts = []
    for m in summary.references.values():
        label = reference_label(m.name, m.kind)
        parts.append(f"{label} {number(m.fitness)}" if m.fitness is not None
                     else f"{label} not scored ({m.failed or 'no score'})")
    return "references (not in the pool): " + "; ".join(parts)


def reference_label(name: str, kind: str) -> str:
    """``base model`` (its name too when it is not just "base"), or the baseline's own name."""
    if kind != "base":
        return name
    return "base model" if name == "base" else f"base model {name}"


def verdict_lines(summary: RunSummary) -> list[str]:
    """How the run's best child compares with the references: whether any child beat the base
    model, and the best one-shot baseline."""
    best_id = summary.best_child()
    base = summary.base_reference()
    lines = []
    if best_id is None:
        return ["no child was scored"]
    best = summary.models[best_id]
    if base is not None:
        winners = [i for i in summary.children_in_order()
                   if i in summary.models and (summary.models[i].vs_base or 0) > 0]
        if winners:
            lines.append(f"{len(winners)} of {len(summary.children_in_order())} children beat "
                         f"the base model ({number(base.fitness)}); the best, "
                         f"{best.name}, by {number(best.vs_base, signed=True)}")
        else:
            lines.append(f"no child beat the base model ({number(base.fitness)}): "
                         f"the best child, {best.name}, scores {number(best.fitness)} "
                         f"({number(best.vs_base, signed=True)})")
    baselines = summary.baselines()
    if baselines:
        top_id = max(baselines, key=lambda i: baselines[i].fitness)
        top = baselines[top_id]
        diff = best.fitness - top.fitness
        verb = "beats" if diff > 0 else ("ties" if diff == 0 else "falls short of")
        lines.append(f"the best child {best.name} ({number(best.fitness)}) {verb} the best "
                     f"one-shot baseline, {top.name} ({number(top.fitness)}), "
                     f"{number(diff, signed=True)}")
    return lines


def print_table(summary: RunSummary, record, stream=sys.stdout) -> None:
    """``on_generation`` callback of :func:`~mergekit_kinship.evolution.evolve`: print the table."""
    print(generation_table(summary, record.index), file=stream, flush=True)
