"""The tables ``evolve``, ``compare`` and the demo print: pure functions of the run summary."""

from __future__ import annotations

import sys

from mergekit_kinship.formatting import number, text_table
from mergekit_kinship.summary import RunSummary


def generation_table(summary: RunSummary, index: int) -> str:
    """Generation ``index`` as text: child, parents, parents' kinship, scores, fitness, gain over
    the parents' mean; then the best model so far and the top-k."""
    models = summary.models
    record = next(g for g in summary.generations if g.index == index)
    tasks = summary.tasks
    metric = summary.metric
    header = ["child", "parents", f"kinship ({metric})", *tasks, "fitness", "gain"]
    rows = []
    for cid in record.children:
        m = models[cid]
        parents = " x ".join(models[p].name for p in m.parents)
        if m.exploration:
            parents += " (explore)"
        kin = (m.parents_kinship or {}).get(metric)
        rows.append([m.name, parents, number(kin), *(number(m.scores.get(t)) for t in tasks),
                     number(m.fitness), number(m.gain, signed=True)])
    for cid in record.failed:
        m = summary.failed[cid]
        parents = " x ".join(models[p].name for p in m.parents)
        rows.append([m.name, parents, number((m.parents_kinship or {}).get(metric)),
                     *("-" for _ in tasks), "failed", "-"])
    title = (f"generation {index}: {len(rows)} children"
             + (f" ({len(record.failed)} failed, skipped)" if record.failed else ""))
    best = models[record.best]
    top = ", ".join(models[i].name for i in record.top_k)
    footer = (f"best so far: {best.name} fitness {number(best.fitness)}; top-k: {top}; "
              f"mutual pcc {number(record.top_k_mutual_pcc)}")
    return "\n".join([title, text_table(header, rows), footer])


def print_table(summary: RunSummary, record, stream=sys.stdout) -> None:
    """``on_generation`` callback of :func:`~mergekit_kinship.evolution.evolve`: print the table."""
    print(generation_table(summary, record.index), file=stream, flush=True)
