"""A planned child as mergekit YAML: its identity, its name and the exact configuration to run.

A child's id is the hash of its merge configuration with every model reference replaced by that
model's content identity (plus the seed for random methods), so the same parents merged the same
way are the same child in any run directory, wherever the files lie.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergekit_kinship.identity import content_hash
from mergekit_kinship.planner import Candidate

if TYPE_CHECKING:
    from mergekit_kinship.pool import Pool, PoolModel


def make_child(pool: "Pool", candidate: Candidate, generation: int, index: int) -> "PoolModel":
    """The child of ``candidate`` (its name ``g<generation>-<index>``): identity and YAML.
    Does no work: nothing is merged or read."""
    from mergekit_kinship.merging import child_config, render_yaml
    from mergekit_kinship.pool import PoolModel

    recipe = pool.recipe
    template = recipe.merge
    a, b = candidate.parents
    ancestor = reference(pool, None)
    config = child_config(template, reference(pool, a), reference(pool, b), ancestor)
    by_identity = child_config(template, pool.models[a].identity, pool.models[b].identity,
                               pool.base_identity)
    seed = recipe.seed if template.spec.random else None
    child_id = "c-" + content_hash({"config": by_identity, "seed": seed}, 12)
    name = f"g{generation}-{index}"
    kinship = {m: pool.kinship(a, b, m) for m in pool.metrics}
    known = {m: v for m, v in kinship.items() if v is not None}
    header = [
        f"mergekit-kinship child {name} ({child_id}), generation {generation}"
        + (", exploration merge" if candidate.exploration else ""),
        f"parent A: {_label(pool, a)}",
        f"parent B: {_label(pool, b)}",
        f"kinship of parents: {', '.join(f'{m} {v:.4f}' for m, v in known.items()) or 'unknown'}"
        f" (ancestor {ancestor})",
        f"strategy {recipe.strategy}, top-k {recipe.top_k}, method {template.method}",
        "run: mergekit-yaml THIS_FILE OUT_DIR" + (f" --random-seed {seed}" if seed is not None else ""),
    ]
    return PoolModel(
        id=child_id, name=name, kind="child", identity=child_id, path=None,
        generation=generation, parents=[a, b], exploration=candidate.exploration,
        method=template.method, yaml=render_yaml(config, header),
        parents_kinship=known or None, seed=recipe.seed)


def reference(pool: "Pool", model_id: str | None) -> str:
    """How a child's YAML names a model (None: the shared ancestor): a hub id stays a hub id, so
    the YAML is portable; a local model is its absolute folder; a child is its run folder."""
    if model_id is None:
        spec = pool.recipe.base
        return spec.path if spec.path is not None else spec.reference
    m = pool.models[model_id]
    if m.hub_id is not None:
        spec = next(s for s in pool.recipe.models if s.display_name == m.id)
        return spec.reference
    if m.kind == "child" and m.path is None:
        return str(pool.rd.model_dir(m.id))
    return m.path


def _label(pool: "Pool", model_id: str) -> str:
    m = pool.models[model_id]
    return (f"{m.name} ({m.id}, generation {m.generation})" if m.kind == "child"
            else f"{m.name} (foundation, {m.path})")
