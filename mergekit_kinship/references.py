"""References: what a run's children are measured against besides their parents.

- the **base** model itself, scored once like a foundation model (the recipe's
  ``references.base``, on by default): a child that does not beat it is no gain at all;
- the **one-shot baselines** (:mod:`mergekit_kinship.baselines`): every foundation model merged at
  once, no search, made and scored when asked (``evolve --baselines``, ``compare``).

References are scored through the same executor and content keys as the pool, so they are never
redone, but they are never pool members: Algorithm 1's pool, its top-k and its plans are the same
with or without them. A reference whose evaluation fails is reported and left out; it never stops
the run.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from mergekit_kinship.identity import content_hash

if TYPE_CHECKING:
    from mergekit_kinship.pool import Pool, PoolModel

BASE_ID = "base"


def add_references(pool: "Pool", *, baselines: bool) -> list[str]:
    """The base (if the recipe scores it) and, with ``baselines``, the recipe's one-shot
    baselines enter ``pool.references`` (not the pool). Returns their ids. Merges nothing."""
    from mergekit_kinship.pool import PoolModel

    recipe = pool.recipe
    if recipe.references.base:
        spec = recipe.base
        pool.references[BASE_ID] = PoolModel(
            id=BASE_ID, name=spec.display_name, kind="base", identity=pool.base_identity,
            path=pool.base_folder, hub_id=spec.hub)
    if baselines:
        for name in recipe.references.baselines:
            baseline = _make_baseline(pool, name)
            pool.references[baseline.id] = baseline
            pool.rd.write_text(pool.rd.yaml_path(baseline.id), baseline.yaml)
    return list(pool.references)


def _make_baseline(pool: "Pool", name: str) -> "PoolModel":
    from mergekit_kinship.baselines import BASELINES, baseline_config
    from mergekit_kinship.children import reference
    from mergekit_kinship.merging import render_yaml
    from mergekit_kinship.pool import PoolModel

    recipe = pool.recipe
    baseline = BASELINES[name]
    foundation = [m.id for m in pool.models.values() if m.kind == "foundation"]
    tokenizer = (recipe.merge.tokenizer.model_dump(exclude_none=True)
                 if recipe.merge.tokenizer is not None else None)
    config = baseline_config(baseline, [reference(pool, i) for i in foundation],
                             reference(pool, None), recipe.merge.dtype, tokenizer)
    by_identity = baseline_config(baseline, [pool.models[i].identity for i in foundation],
                                  pool.base_identity, recipe.merge.dtype, tokenizer)
    seed = recipe.seed if baseline.random else None
    baseline_id = "b-" + content_hash({"config": by_identity, "seed": seed}, 12)
    header = [f"mergekit-kinship one-shot baseline {name} ({baseline_id}): "
              f"{baseline.description}, all {len(foundation)} foundation models at once",
              "run: mergekit-yaml THIS_FILE OUT_DIR"
              + (f" --random-seed {seed}" if seed is not None else "")]
    return PoolModel(id=baseline_id, name=f"{name} (one-shot)", kind="baseline",
                     identity=baseline_id, path=None, parents=foundation,
                     method=baseline.method, yaml=render_yaml(config, header), seed=recipe.seed)


def score_references(pool: "Pool", ids: list[str], executor) -> None:
    """Merge (baselines) and score the references ``ids``; one whose evaluation fails is warned
    about and left out (the next run tries it again)."""
    from mergekit_kinship.materialize import job_for

    if not ids:
        return
    jobs = [job_for(pool, pool.references[i], optional=True) for i in ids]
    for result in executor.run(jobs, progress=pool.progress):
        m = pool.references[result.model_id]
        if result.error is not None:
            m.failed = result.error
            print(f"warning: reference {m.name} left out: its evaluation failed "
                  f"({result.error})", file=sys.stderr)
            continue
        pool.take_result(m, result)
        if m.kind == "baseline":
            folder = pool.rd.model_dir(m.id)
            m.path = str(folder) if folder.exists() else None
