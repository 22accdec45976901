"""``plan --dry-run``: the pre-flight ``evolve`` makes, and what the recipe will do; no weights.

The checks are :func:`mergekit_kinship.preflight.preflight` itself, so a dry run says "recipe OK"
only for a recipe ``evolve`` accepts up to its first merge.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Optional

from mergekit_kinship.recipe import Recipe


def _fitness_text(ev) -> str:
    if not ev.weights:
        return "mean of the scores"
    return "weighted mean (" + ", ".join(f"{t} {ev.weight_for(t):g}" for t in ev.tasks) + ")"


def _tasks_table(plans) -> str:
    """One row per task: metric, n-shot (and where it comes from), items scored."""
    from mergekit_kinship.evaluation.task_plan import items_text
    from mergekit_kinship.formatting import text_table

    def shots(plan) -> str:
        number = "?" if plan.num_fewshot is None else str(plan.num_fewshot)
        return f"{number} ({plan.fewshot_source})"

    def name(plan) -> str:
        return plan.task + (f" (group of {plan.subtasks})" if plan.subtasks > 1 else "")

    return text_table(["task", "metric", "n-shot", "items"],
                      [[name(p), p.metric, shots(p), items_text(p)] for p in plans])


def _stages_text(ev, plans) -> str:
    """The stage plan, and each stage's items per task where the task's item count is known."""
    from mergekit_kinship.staging import stage_size

    sizes = {p.task: "/".join(str(stage_size(p.items, f)) for f in ev.stages)
             for p in plans if p.items is not None}
    return (f"  staged: {', '.join(f'{f:g}' for f in ev.stages)} of each task's items (subset "
            f"seed {ev.subset_seed}); a child goes on while the one-sided {ev.confidence:g} upper "
            f"bound on its fitness reaches the k-th best model's"
            + (f"; items per stage: {', '.join(f'{t} {n}' for t, n in sizes.items())}"
               if sizes else ""))


def dry_run(recipe: Recipe, source: str, *, run_dir: str | Path | None = None,
            evaluator: Optional[str] = None) -> dict[str, Any]:
    """Run the pre-flight on ``recipe`` (and ``run_dir`` when it was used before) and describe
    the run: models, strategy, merge template, evaluation (per task: the metric, the n-shot and
    the items that will be scored, :func:`~mergekit_kinship.evaluation.task_plan.task_plans`),
    stopping, generation 1's pairs and an example child YAML (it parses with mergekit). Raises
    UserError like ``evolve`` would."""
    from mergekit_kinship.evaluation.task_plan import task_plans
    from mergekit_kinship.merging import child_config, render_yaml
    from mergekit_kinship.preflight import preflight

    preflight(recipe, run_dir=run_dir, lm_eval_tasks=evaluator is None)
    plans = task_plans(recipe.evaluation, lm_eval_tasks=evaluator is None)
    refs = [m.path if m.path is not None else m.reference for m in recipe.models]
    ancestor = recipe.base.path if recipe.base.path is not None else recipe.base.reference
    pairs = list(itertools.combinations(range(len(refs)), 2))
    example = render_yaml(child_config(recipe.merge, refs[0], refs[1], ancestor))
    role = {"parent_a": "parent A", "ancestor": "the shared ancestor", "none": "none"}
    ev, stopping = recipe.evaluation, recipe.stopping
    names = [m.display_name for m in recipe.models]
    lines = [
        f"recipe OK: {source}",
        f"  base (ancestor): {recipe.base.reference}",
        *[f"  foundation: {m.display_name} = {m.reference}" for m in recipe.models],
        f"  strategy {recipe.strategy}, top-k {recipe.top_k}, kinship metric {recipe.metric}, "
        f"seed {recipe.seed}",
        f"  merge: {recipe.merge.method} ({recipe.merge.dtype}), base_model = "
        f"{role[recipe.merge.base_role]}",
        f"  evaluation: {len(ev.tasks)} task{'s' if len(ev.tasks) > 1 else ''}, backend "
        f"{ev.backend}, fitness = {_fitness_text(ev)}"
        + ("" if evaluator is None else f"; scored by {evaluator}"),
        *["    " + line for line in _tasks_table(plans).splitlines()],
        *([_stages_text(ev, plans)] if ev.staged else []),
        f"  stopping: top-k unchanged; max {stopping.max_generations} generations"
        + (f"; max {stopping.max_merges} merges" if stopping.max_merges else "")
        + (f"; saturation pcc > {stopping.saturation}" if stopping.saturation is not None
           else ""),
        f"  generation 1 merges {len(pairs)} pairs: "
        + ", ".join(f"{names[i]} x {names[j]}" for i, j in pairs),
        "  example child YAML (parses with mergekit):",
        *["    " + line for line in example.splitlines()],
    ]
    return {"recipe": recipe.to_dict(), "example_yaml": example,
            "generation_1_pairs": [[names[i], names[j]] for i, j in pairs],
            "tasks": [plan.to_dict() for plan in plans],
            "text": "\n".join(lines)}
