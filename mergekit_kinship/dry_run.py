"""``plan --dry-run``: the pre-flight ``evolve`` makes, and what the recipe will do; no weights.

The checks are :func:`mergekit_kinship.preflight.preflight` itself, so a dry run says "recipe OK"
only for a recipe ``evolve`` accepts up to its first merge.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Optional

from mergekit_kinship.recipe import Recipe


def dry_run(recipe: Recipe, source: str, *, run_dir: str | Path | None = None,
            evaluator: Optional[str] = None) -> dict[str, Any]:
    """Run the pre-flight on ``recipe`` (and ``run_dir`` when it was used before) and describe
    the run: models, strategy, merge template, evaluation, stopping, generation 1's pairs and
    an example child YAML (it parses with mergekit). Raises UserError like ``evolve`` would."""
    from mergekit_kinship.merging import child_config, render_yaml
    from mergekit_kinship.preflight import preflight

    preflight(recipe, run_dir=run_dir, lm_eval_tasks=evaluator is None)
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
        f"  evaluation: {', '.join(ev.tasks)} (backend {ev.backend}, num_fewshot "
        f"{ev.num_fewshot}, limit {ev.limit})"
        + ("" if evaluator is None else f"; scored by {evaluator}"),
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
            "text": "\n".join(lines)}
