"""``plan``: the next generation as mergekit YAML, from what is known; executes nothing.

:func:`plan_next` rebuilds the pool exactly as :func:`~mergekit_kinship.evolution.evolve` does
(the same :class:`~mergekit_kinship.pool.Pool`, the same plans, the same content keys), replaying
the generations whose children are all scored (by ``evolve``, or elsewhere and imported with
``--scores``), and writes the first generation that is not: one YAML per child that
``mergekit-yaml`` runs unchanged, and ``plan.json``. The plan is recorded in the run directory,
so a later ``plan`` or ``evolve`` on the same directory makes the same children.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Optional

from mergekit_kinship.errors import UserError
from mergekit_kinship.evolution import open_pool
from mergekit_kinship.pool import KinshipFn, Pool, PoolModel
from mergekit_kinship.recipe import Recipe
from mergekit_kinship.scores_file import SCORES_FILE_HELP, import_scores
from mergekit_kinship.staging import CachedOnly, complete_from_cache


def plan_next(recipe: Recipe, run_dir: str | Path, *, scores_file: Optional[Path] = None,
              evaluator: Optional[str] = None, kinship_fn: Optional[KinshipFn] = None,
              progress: bool = True) -> dict[str, Any]:
    """Work out the next generation from the pool's known scores and kinship; merge nothing.

    Writes ``RUN/plan/gen-N/<child>.yaml`` and ``RUN/plan/gen-N/plan.json``; returns the plan.
    Generation 1 needs no scores (parents then stay in recipe order: without scores no model is
    known to be fitter); later generations need a score for every model of the pool.
    """
    with open_pool(recipe, run_dir, evaluator=evaluator, kinship_fn=kinship_fn,
                   progress=progress) as pool:
        foundation = pool.add_foundation()
        if scores_file is not None:
            import_scores(pool, Path(scores_file))
        unscored = [m.name for m in (pool.models[i] for i in foundation) if not _take_score(pool, m)]
        pool.relate(foundation)
        for generation in itertools.count(1):
            children = pool.plan(generation)
            if children and _known(pool, children):
                _replay(pool, children)
                continue
            if generation > 1 and unscored:
                raise UserError(f"no scores for {', '.join(unscored)}; evaluate them and give "
                                f"the scores with --scores FILE")
            _refuse_unscored(pool, generation, children)
            return _write_plan(pool, generation, children, scored=not unscored)
    raise AssertionError("unreachable")


def _take_score(pool: Pool, m: PoolModel) -> bool:
    """A foundation model's recorded scores (with stages: every item's result, or scores
    imported from a file), if there are some."""
    if pool.scored(m):
        pool.merge_and_score([m.id], CachedOnly())
        return True
    return False


def _known(pool: Pool, children: list[PoolModel]) -> bool:
    """Every child of a generation was merged and scored (here by evolve, or elsewhere and
    imported), or its evaluation failed for good; with stages, every child's staged evaluation
    reached its end (:func:`~mergekit_kinship.staging.complete_from_cache`)."""
    from mergekit_kinship.executors.job import recorded_failure

    if pool.recipe.evaluation.staged:
        return complete_from_cache(pool, children)
    keys = [pool.cache.score_key(c.identity) for c in children]
    return all(pool.rd.read_score(k) is not None or recorded_failure(pool.rd, k) is not None
               for k in keys)


def _replay(pool: Pool, children: list[PoolModel]) -> None:
    """A generation made earlier enters the pool with its recorded scores (no work): the same
    steps as evolve's, through an executor that finds everything recorded."""
    external = {e["child"]: e["path"] for e in pool.rd.events("external")}
    pool.add_children(children)
    for child in children:
        if child.id in external:
            child.path, child.external = external[child.id], True
        elif pool.rd.model_dir(child.id).exists():
            child.path = str(pool.rd.model_dir(child.id))
    pool.merge_and_score([c.id for c in children], CachedOnly())
    pool.relate([c.id for c in children if c.id in pool.models])


def _refuse_unscored(pool: Pool, generation: int, children: list[PoolModel]) -> None:
    """A generation that was merged (by evolve) or planned before but lacks scores: say what to
    do instead of planning it again."""
    merged = {e["child"] for e in pool.rd.events("merged")}
    evolved = [c.name for c in children if c.id in merged]
    if evolved:
        raise UserError(f"no scores under this recipe's evaluation settings for "
                        f"{', '.join(evolved)} (evolve merged them; it scored them under other "
                        f"settings, or was stopped first): run evolve on this run directory to "
                        f"score them first")
    planned = {cid for e in pool.rd.events("planned") if e["generation"] == generation
               for cid in e.get("children", [])}
    pending = [c.name for c in children if c.id in planned and not _known(pool, [c])]
    if pending:
        raise UserError(f"children planned but not merged and scored yet: {', '.join(pending)};"
                        f" give their folders and scores with --scores FILE")


def _write_plan(pool: Pool, generation: int, children: list[PoolModel], scored: bool
                ) -> dict[str, Any]:
    from mergekit_kinship.materialize import weights_of

    rd = pool.rd
    for parent in {p for c in children for p in c.parents}:
        if pool.models[parent].kind == "child" and pool.models[parent].path is None:
            # Pruned by --keep: the YAML names its folder, so it must exist.
            weights_of(pool, parent)
    out_dir = rd.plan_dir / f"gen-{generation}"
    entries = []
    for child in children:
        rd.write_text(out_dir / f"{child.name}.yaml", child.yaml)
        entries.append({"id": child.id, "name": child.name, "generation": generation,
                        "parents": child.parents,
                        "parent_names": [pool.models[p].name for p in child.parents],
                        "exploration": child.exploration, "method": child.method,
                        "yaml_file": str(out_dir / f"{child.name}.yaml"), "yaml": child.yaml,
                        "parents_kinship": child.parents_kinship})
    plan = {"format": 1, "generation": generation, "strategy": pool.recipe.strategy,
            "top_k": pool.top_k() if scored else None, "scored": scored,
            "merges_so_far": pool.merges_done(), "children": entries,
            "scores_file_format": SCORES_FILE_HELP}
    rd.write_json(out_dir / "plan.json", plan)
    rd.append({"event": "planned", "generation": generation,
               "children": [c.id for c in children],
               "names": {c.id: c.name for c in children},
               "candidates": [{"parents": c.parents, "exploration": c.exploration}
                              for c in children]})
    return plan
