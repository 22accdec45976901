"""Weights on disk when they are needed: a pool model's folder, and a child's unit of work.

A child pruned by ``--keep`` stays in the pool (its score and kinship are known); when a later
generation needs its weights (as a parent, or to relate a new child to it) it is merged again
from its YAML, its own pruned parents first. Merging is idempotent, so this costs nothing when
the folder is there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from mergekit_kinship.executors.job import ChildJob
    from mergekit_kinship.pool import Pool, PoolModel


def weights_of(pool: "Pool", model_id: str) -> str:
    """A loadable folder of a pool model; a pruned child is merged again first."""
    from mergekit_kinship.executors.job import ensure_merged, merge_done

    m = pool.models[model_id]
    if m.kind != "child" or m.external:
        return m.path
    folder = pool.rd.model_dir(m.id)
    if not merge_done(folder, m.id, m.identity):
        for parent in m.parents:  # parents of a pruned child may be pruned too
            weights_of(pool, parent)
        ensure_merged(job_for(pool, m))
    m.path = str(folder)
    return m.path


def job_for(pool: "Pool", m: "PoolModel", *, optional: bool = False,
            items: Optional[dict[str, list[int]]] = None) -> "ChildJob":
    """The self-contained unit of work that merges (a child or baseline of this run) and scores
    ``m``. ``optional``: a failed evaluation leaves ``m`` out instead of stopping the run.
    With staged evaluation (the recipe's ``evaluation.stages``) the job asks for ``items``
    (task -> indices; None: every item) instead of a score record."""
    from mergekit_kinship.children import reference
    from mergekit_kinship.executors.job import ChildJob
    from mergekit_kinship.pool_sketch import child_sketch_job

    own_child = m.kind in ("child", "baseline") and not m.external
    return ChildJob(run_dir=str(pool.rd.path), model_id=m.id, identity=m.identity,
                    model_path=str(pool.rd.model_dir(m.id)) if own_child else m.path,
                    score_key=pool.cache.score_key(m.identity),
                    evaluation=pool.recipe.evaluation.model_dump(mode="json"),
                    yaml_text=m.yaml if own_child else None, seed=m.seed,
                    tokenizer_from=pool.models[m.parents[0]].path if m.parents else None,
                    evaluator=pool.evaluator, optional=optional,
                    ancestor=reference(pool, None) if own_child else None,
                    sketch=child_sketch_job(pool, m) if own_child else None,
                    items_key=pool.cache.items_key(m.identity),
                    staged=pool.recipe.evaluation.staged, items=items)
