"""Staged evaluation with real lm-eval on the built-in family: one generation (40 items a task),
evolved once without stages and once with stages [0.25, 1] (10 items a task, then all 40).

The stand-in evaluator (test_staged_evaluation.py) covers the decisions, resume after kills and
``plan --scores``; this file checks what only lm-eval can show: that ``samples=`` scores the items
a stage names (the same values item by item as a full evaluation of the same model), that a
fully scored model's score is lm-eval's own, and that the search sees the same top-k as a full
evaluation among the children it did not screen out. About 40 s on 2 cores.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from mergekit_kinship.evolution import evolve
from mergekit_kinship.item_results import means, read_items
from mergekit_kinship.planner import top_k
from mergekit_kinship.recipe import parse_recipe
from mergekit_kinship.rundir import RunDir
from mergekit_kinship.staging import stage_items

LIMIT, STAGES = 40, [0.25, 1.0]


@pytest.fixture(scope="module")
def runs(family, tmp_path_factory):
    from mergekit_kinship.zoo import builtin_recipe

    root = tmp_path_factory.mktemp("staged-lm-eval")
    out = {}
    for name, extra in (("full", {}), ("staged", {"stages": STAGES})):
        data = builtin_recipe(family)
        data["evaluation"].update(limit=LIMIT, **extra)
        data["stopping"].update(max_generations=1)
        recipe = parse_recipe(data, root, f"built-in family, {name}")
        out[name] = (evolve(recipe, root / name, progress=False), RunDir(root / name), recipe)
    return out


def test_staged_against_full_evaluation_with_real_lm_eval(runs):
    full, full_rd, _ = runs["full"]
    staged, staged_rd, recipe = runs["staged"]
    tasks = recipe.evaluation.tasks
    screened = [i for i, m in staged.models.items() if m.partial]
    assert screened, "stage 1 (10 items a task) must screen out some children of this family"
    assert staged.items_scored() < full.items_scored()

    stage1 = stage_items({t: LIMIT for t in tasks}, STAGES[0], recipe.evaluation.subset_seed)
    for i, m in [*staged.models.items(), *staged.references.items()]:
        other = full.models.get(i) or full.references[i]
        mine, totals = read_items(staged_rd, m.items_key)
        theirs, _ = read_items(full_rd, other.items_key)
        assert totals == {t: LIMIT for t in tasks}
        if m.partial:  # exactly stage 1's items, each valued as the full evaluation values it
            assert {t: sorted(v) for t, v in mine.items()} == stage1, m.name
            assert m.screened_out.stage == 1 and m.screened_out.bound < m.screened_out.threshold
        else:  # every item: the same values, the same score, the same fitness as without stages
            assert m.scores == other.scores and m.fitness == other.fitness, m.name
        assert mine == {t: {j: theirs[t][j] for j in v} for t, v in mine.items()}, m.name
        # The score kept is the mean of the item values (lm-eval's own for a full one).
        assert means(mine) == pytest.approx(m.scores, abs=1e-12)
        assert means(theirs) == pytest.approx(other.scores, abs=1e-12)

    # Every item once per model, as lm-eval logged it (the journal counts each call's items).
    counted: dict[str, Counter] = defaultdict(Counter)
    for e in staged_rd.events("scored-items"):
        counted[e["items_key"]].update(e["items"])
    for m in [*staged.models.values(), *staged.references.values()]:
        assert dict(counted[m.items_key]) == m.items, m.name

    # The search: the top-k is the full run's ranking without the screened-out children, and
    # never holds one of them.
    k = recipe.top_k
    fitness = {i: m.fitness for i, m in full.models.items()}
    expected = top_k([i for i in fitness if i not in screened], fitness, k)
    assert staged.generations[0].top_k == expected
    assert not set(staged.generations[0].top_k) & set(screened)
    assert not staged.models[staged.best].partial


def test_dry_run_shows_the_stage_plan(family, tmp_path):
    from mergekit_kinship.dry_run import dry_run
    from mergekit_kinship.zoo import builtin_recipe

    data = builtin_recipe(family)
    data["evaluation"].update(stages=[0.1, 0.3, 1.0], limit={"kinship_sort": 50})
    text = dry_run(parse_recipe(data, tmp_path, "staged"), "staged")["text"]
    assert "staged: 0.1, 0.3, 1 of each task's items (subset seed 0)" in text
    assert "kinship_reverse 10/30/100, kinship_sort 5/15/50" in text
