"""evolve merges its children through the kinship hook: each child's folder holds kinship.json,
the run's kinship cache gets the parents' kinship with the child from it, and the pool's engine
(the ``kinship_fn`` hook of evolve) is no longer asked for those pairs."""

from __future__ import annotations

import pytest

from evolution_helpers import build_tiny_family
from mergekit_kinship.evolution import evolve
from mergekit_kinship.merge_kinship import read_merge_kinship
from mergekit_kinship.pool import default_kinship
from mergekit_kinship.recipe import parse_recipe
from mergekit_kinship.rundir import RunDir
from mergekit_kinship.streaming_kinship import kinship_matrix


@pytest.mark.parametrize("method", ["slerp", "ties"])
def test_child_parent_kinship_comes_from_the_merge(tmp_path, monkeypatch, method):
    fam = build_tiny_family(tmp_path / "fam")
    monkeypatch.setenv("EVOLVE_TEST_SKILLS", str(tmp_path / "fam"))
    params = {"t": 0.5} if method == "slerp" else {"weight": 0.5}
    recipe = parse_recipe({
        "base": str(fam["base"]), "models": [str(fam[f"child{i}"]) for i in range(3)],
        "top_k": 3, "merge": {"method": method, "dtype": "float32", "parameters": params},
        "evaluation": {"tasks": ["skill0", "skill1", "skill2"]},
        "stopping": {"max_generations": 2}, "seed": 0}, tmp_path)
    asked = []

    def counting(paths, base, metrics, pairs):
        asked.extend(frozenset(p) for p in pairs)
        return default_kinship(paths, base, metrics, pairs)

    summary = evolve(recipe, tmp_path / "run", evaluator="evolution_helpers:stand_in_evaluate",
                     kinship_fn=counting, progress=False)
    children = {i: m for i, m in summary.models.items() if m.kind == "child"}
    assert len(children) >= 3
    parent_child = {frozenset((c, p)) for c, m in children.items() for p in m.parents}
    assert asked and not set(asked) & parent_child  # the engine still relates the rest
    assert len(asked) == len(set(asked))

    recorded = {}
    for event in RunDir(tmp_path / "run").events("kinship"):
        recorded.setdefault(frozenset(event["pair"]), {}).update(event["values"])
    for child_id, child in children.items():
        assert read_merge_kinship(child.path) is not None
        for parent in child.parents:
            ref = kinship_matrix([summary.models[parent].path, child.path], fam["base"],
                                 progress=False)
            for metric in ("pcc", "cosine", "euclidean"):
                assert recorded[frozenset((parent, child_id))][metric] == pytest.approx(
                    ref.values[metric][0][1], rel=1e-9, abs=1e-12), (child_id, parent, metric)
    names = summary.pool_kinship.names
    for child_id, child in children.items():  # the pool (and so the summary) uses them
        for parent in child.parents:
            value = summary.pool_kinship.values[names.index(child_id)][names.index(parent)]
            assert value == recorded[frozenset((parent, child_id))]["pcc"]
