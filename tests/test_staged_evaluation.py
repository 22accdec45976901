"""Staged evaluation and uncertainty with a stand-in evaluator that gives per-item results
(evolution_helpers.stand_in_item_evaluate): fast, on tiny real models merged by mergekit.

Covers: the recipe keys and the fingerprint; nested seeded item subsets; the decision (paired
upper bound against the k-th best model); a staged run end to end (screened-out children never
in the top-k, every top-k model fully scored, the same items for every model, never an item
scored twice, decisions reproducible from the per-item results, the same scores as a run
without stages for every fully scored model); resume after kills; plan --scores with partial
scores; standard errors, the paired bootstrap and the Fisher interval; the refusals.
"""

from __future__ import annotations

import json
import math
import random
import re
import signal
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from evolution_helpers import ITEMS_PER_TASK, build_tiny_family
from mergekit_kinship.cli import main
from mergekit_kinship.errors import UserError
from mergekit_kinship.evaluation.settings import (EvaluationSettings, evaluation_fingerprint,
                                                  items_fingerprint)
from mergekit_kinship.evolution import evolve
from mergekit_kinship.item_results import read_items
from mergekit_kinship.planning import plan_next
from mergekit_kinship.recipe import parse_recipe
from mergekit_kinship.rundir import RunDir
from mergekit_kinship.staging import Decision, decide, stage_items, stage_size
from mergekit_kinship.summary import load_summary
from mergekit_kinship.uncertainty import contrast, paired_bootstrap

ITEMS = "evolution_helpers:stand_in_item_evaluate"
STAGES = [0.2, 0.5, 1.0]
TASKS = ["skill0", "skill1", "skill2"]


def recipe_data(**evaluation):
    return {"base": "./fam/base", "models": ["./fam/child0", "./fam/child1", "./fam/child2"],
            "top_k": 3, "strategy": "kinship", "merge": {"method": "slerp", "dtype": "float32"},
            "evaluation": {"tasks": list(TASKS), **evaluation},
            "stopping": {"max_generations": 4}, "seed": 0}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("staged")
    build_tiny_family(root / "fam")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVOLVE_TEST_SKILLS", str(root / "fam"))
        yield root


def recipe(root, **evaluation):
    return parse_recipe(recipe_data(**evaluation), root, "staged test recipe")


@pytest.fixture(scope="module")
def runs(tiny):
    """One run without stages and one with stages (confidence 0.8: the stand-in's children are
    close to each other, so a lower level screens some out), each uninterrupted."""
    full = evolve(recipe(tiny), tiny / "full", evaluator=ITEMS, progress=False)
    staged = evolve(recipe(tiny, stages=STAGES, confidence=0.8), tiny / "staged",
                    evaluator=ITEMS, progress=False)
    return full, staged


# ------------------------------------------------------------------------- recipe, fingerprint


@pytest.mark.parametrize("stages, message", [
    ([0.5, 0.3, 1.0], "strictly increasing"), ([0.2, 0.5], "the last stage must be 1.0"),
    ([0.0, 1.0], "not a fraction in (0, 1]"), ([], "at least one fraction")])
def test_stage_plans_are_checked(stages, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        EvaluationSettings(tasks=["a"], stages=stages)


def test_the_fingerprint_changes_with_the_stage_plan_and_only_with_it():
    plain = EvaluationSettings(tasks=["a", "b"])
    # Without stages, confidence and subset seed are not in: runs without stages keep the
    # fingerprint (and the cached scores) they had before stages existed.
    assert evaluation_fingerprint(plain) == items_fingerprint(plain)
    assert not {"stages", "confidence", "subset_seed"} & set(evaluation_fingerprint(plain))
    for ignored in ({"confidence": 0.8}, {"subset_seed": 3}, {"stages": [1.0]}):
        assert evaluation_fingerprint(EvaluationSettings(tasks=["a", "b"], **ignored)) == \
            evaluation_fingerprint(plain)
    staged = EvaluationSettings(tasks=["a", "b"], stages=[0.2, 1.0])
    assert evaluation_fingerprint(staged) != evaluation_fingerprint(plain)
    assert items_fingerprint(staged) == items_fingerprint(plain)  # items are shared
    for change in ({"stages": [0.3, 1.0]}, {"confidence": 0.9}, {"subset_seed": 1}):
        assert evaluation_fingerprint(EvaluationSettings(
            **{"tasks": ["a", "b"], "stages": [0.2, 1.0], **change})) != \
            evaluation_fingerprint(staged)


def test_stage_items_are_nested_seeded_and_sorted():
    totals = {"a": 100, "b": 7}
    small, large = stage_items(totals, 0.3, 0), stage_items(totals, 0.6, 0)
    assert [len(small["a"]), len(small["b"])] == [30, 3]  # ceil, and 0.3 * 100 counts as 30
    assert all(small[t] == sorted(small[t]) and set(small[t]) <= set(large[t]) for t in totals)
    assert stage_items(totals, 0.3, 0) == small
    assert stage_items(totals, 0.3, 1) != small
    assert stage_items(totals, 1.0, 5)["a"] == list(range(100))
    assert stage_size(10, 0.01) == 1


def _model(items, fitness, model_id="ref"):
    from mergekit_kinship.pool import PoolModel

    return PoolModel(id=model_id, name=model_id, kind="foundation", identity=model_id, path=None,
                     items=items, fitness=fitness)


def test_the_decision_is_a_paired_upper_bound_against_the_kth_best():
    settings = EvaluationSettings(tasks=["a", "b"], stages=[0.5, 1.0], confidence=0.95)
    rng = random.Random(0)
    reference = {t: {i: float(rng.random() < 0.7) for i in range(40)} for t in ("a", "b")}
    totals = {"a": 40, "b": 40}
    ref = _model(reference, fitness=sum(sum(v.values()) / 40 for v in reference.values()) / 2)
    subset = stage_items(totals, 0.5, 0)
    # A copy of the reference: no difference, no variance: it may still enter the top-k.
    same = decide(settings, 1, {t: {i: reference[t][i] for i in subset[t]} for t in totals},
                  totals, ref)
    assert same.go_on and same.paired and same.bound == pytest.approx(ref.fitness)
    # Wrong on every item the reference got right: screened out.
    worse = decide(settings, 1, {t: {i: 0.0 for i in subset[t]} for t in totals}, totals, ref)
    assert not worse.go_on and worse.bound < ref.fitness
    # The bound is the reference's fitness plus the paired difference plus z standard errors,
    # with the finite-population correction (half the items known).
    child = {t: {i: float(rng.random() < 0.6) for i in subset[t]} for t in totals}
    d = decide(settings, 1, child, totals, ref)
    diffs = {t: [child[t][i] - reference[t][i] for i in subset[t]] for t in totals}
    mean = sum(sum(v) / len(v) for v in diffs.values()) / 2
    var = sum((sum((x - sum(v) / len(v)) ** 2 for x in v) / (len(v) - 1)) / len(v) * 0.5
              for v in diffs.values()) / 4
    assert d.bound == pytest.approx(ref.fitness + mean + 1.6448536269514722 * math.sqrt(var))
    assert d.items == 40 and d.threshold == ref.fitness and d.reference == "ref"


# ------------------------------------------------------------------------- a staged run


def _scored_items(run_dir) -> dict[str, Counter]:
    """items_key -> task -> items scored, summed over the journal's scored-items events."""
    out: dict[str, Counter] = defaultdict(Counter)
    for e in RunDir(run_dir).events("scored-items"):
        out[e["items_key"]].update(e["items"])
    return out


def test_a_staged_run_screens_out_children_and_keeps_the_top_k_fully_scored(tiny, runs):
    full, staged = runs
    models = staged.models
    screened = [i for i, m in models.items() if m.partial]
    assert screened, "the test recipe must screen out some children"
    assert {i for g in staged.generations for i in g.screened} == set(screened)
    for g in staged.generations:
        for i in g.top_k:  # every model that enters the top-k was scored on every item
            assert not models[i].partial and models[i].items == models[i].items_total
    assert not models[staged.best].partial
    for i, m in [*models.items(), *staged.references.items()]:
        if m.kind != "child":
            assert m.items == {t: ITEMS_PER_TASK for t in TASKS}, i
    # A screened child keeps its partial score, its item counts and its bound.
    for i in screened:
        m = models[i]
        assert sum(m.items.values()) < sum(m.items_total.values())
        assert m.screened_out.bound < m.screened_out.threshold
        assert m.screened_out.against in models and m.fitness is not None


def test_every_model_is_scored_on_the_same_items_and_never_twice(tiny, runs):
    _, staged = runs
    run_dir = tiny / "staged"
    counted = _scored_items(run_dir)
    settings = EvaluationSettings(tasks=TASKS, stages=STAGES)
    for i, m in [*staged.models.items(), *staged.references.items()]:
        items, totals = read_items(RunDir(run_dir), m.items_key)
        assert {t: len(v) for t, v in items.items()} == m.items
        assert dict(counted[m.items_key]) == m.items, f"{m.name}: an item scored twice"
        if m.partial:  # exactly the items of a stage: the same ones for every model
            stage = m.screened_out.stage
            wanted = stage_items(totals, settings.stages[stage - 1], settings.subset_seed)
            assert {t: sorted(v) for t, v in items.items()} == wanted


def test_decisions_follow_from_the_recorded_items(tiny, runs):
    """Every screened-out child's bound is what the decision rule gives on its recorded items
    against the recorded reference; every child that went on had a bound at the threshold."""
    _, staged = runs
    rd = RunDir(tiny / "staged")
    settings = EvaluationSettings(tasks=TASKS, stages=STAGES, confidence=0.8)
    by_key = {m.items_key: m for m in staged.models.values()}
    for e in rd.events("stage"):
        m = staged.models[e["model"]]
        ref = staged.models[e["reference"]]
        items, totals = read_items(rd, m.items_key)
        ref_items, _ = read_items(rd, ref.items_key)
        wanted = stage_items(totals, e["fraction"], 0)
        mine = {t: {i: items[t][i] for i in wanted[t]} for t in wanted}
        d = decide(settings, e["stage"], mine, totals, _model(ref_items, ref.fitness, ref.name))
        assert d.bound == pytest.approx(e["bound"]) and d.go_on == e["go_on"]
        assert e["go_on"] == (not m.partial or m.screened_out.stage > e["stage"])
    assert by_key


def test_fully_scored_models_score_as_without_stages(runs):
    full, staged = runs
    by_identity = {m.identity: m for m in full.models.values()}
    both = [m for m in staged.models.values() if not m.partial and m.identity in by_identity]
    assert len(both) > len(staged.foundation_ids())
    for m in both:
        other = by_identity[m.identity]
        assert m.scores == other.scores and m.fitness == other.fitness
        assert m.fitness_stderr == pytest.approx(other.fitness_stderr)
    assert staged.items_scored() < full.items_scored()


def test_tables_cards_and_report_show_screening_and_errors(runs):
    from mergekit_kinship.card import card_body
    from mergekit_kinship.report import render_report
    from mergekit_kinship.tables import generation_table

    _, staged = runs
    screened = next(i for i, m in staged.models.items() if m.partial)
    g = next(g for g in staged.generations if screened in g.screened)
    table = generation_table(staged, g.index)
    m = staged.models[screened]
    assert f"screened out: {sum(m.items.values())}/{sum(m.items_total.values())} items" in table
    assert f"({len(g.screened)} screened out)" in table.splitlines()[0]
    assert f"{m.fitness:.4f} ±{m.fitness_stderr:.4f}" in table
    assert "**Screened out** by staged evaluation" in card_body(staged, screened)
    best = staged.models[staged.best]
    assert f"±{best.fitness_stderr:.4f}" in card_body(staged, staged.best)
    html = render_report(staged)
    assert "screened out (" in html and "staged evaluation" in html and "Fisher z" in html
    assert f"{best.fitness:.4f} ±{best.fitness_stderr:.4f}" in html
    assert f"{m.gain:+.4f} ±{m.gain_stderr:.4f}" in html
    # summary.json keeps the errors and the screening of every model.
    data = staged.to_json()["models"]
    assert data[screened]["screened_out"]["stage"] == m.screened_out.stage
    assert all(d["fitness_stderr"] is not None and d["fitness_stderr"] > 0 for d in data.values())
    assert all(d["gain_stderr"] is not None for d in data.values() if d["kind"] == "child")


# ------------------------------------------------------------------------- resume, plan


def test_kills_during_staged_evaluation_resume_to_the_same_run(tiny, runs):
    from test_fault_injection import outcome, run_forked

    _, staged = runs
    clean = json.loads((tiny / "staged" / "summary.json").read_text())
    rng = random.Random(12)
    run_dir = tiny / "killed"
    kills = 0
    for attempt in range(12):
        point = rng.choice(["evaluate", "evaluate", "journal", "merge"])
        code = run_forked(recipe(tiny, stages=STAGES, confidence=0.8), run_dir,
                          kill_at=f"{point}:{rng.randint(1, 6)}", evaluator=ITEMS)
        assert code in (0, -signal.SIGKILL)
        kills += code == -signal.SIGKILL
        if code == 0:
            break
    assert kills >= 2
    assert run_forked(recipe(tiny, stages=STAGES, confidence=0.8), run_dir, evaluator=ITEMS) == 0
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert outcome(resumed) == outcome(clean)
    assert {i: m["screened_out"] for i, m in resumed["models"].items()} == \
        {i: m["screened_out"] for i, m in clean["models"].items()}


def test_plan_replays_a_staged_run_and_takes_partial_scores(tiny, runs):
    _, staged = runs
    run_dir = tiny / "staged"
    # plan on the staged run directory rebuilds the same pool (screened children included,
    # from their recorded items, nothing scored) and plans past the last generation.
    before = len(RunDir(run_dir).events("scored-items"))
    planned = plan_next(recipe(tiny, stages=STAGES, confidence=0.8), run_dir, evaluator=ITEMS,
                        progress=False)
    assert planned["generation"] == len(staged.generations) + 1
    assert set(planned["top_k"]) == set(staged.final_top_k())
    assert len(RunDir(run_dir).events("scored-items")) == before

    # plan --scores: scores measured elsewhere (children merged by mergekit-yaml's code there),
    # one child scored on part of its items only.
    from mergekit_kinship.merging import merge_yaml

    plan_dir = tiny / "plan"
    r = recipe(tiny, stages=STAGES)
    first = plan_next(r, plan_dir, evaluator=ITEMS, progress=False)
    partial = first["children"][0]
    models = {name: {"scores": {t: 0.5 for t in TASKS}} for name in ("child0", "child1", "child2")}
    for c in first["children"]:
        merge_yaml(c["yaml"], tiny / "elsewhere" / c["name"])
        models[c["name"]] = {"path": str(tiny / "elsewhere" / c["name"]),
                             "scores": {t: 0.55 for t in TASKS}}
    # the partial child would be the best model, were its score complete
    models[partial["name"]].update(scores={t: 0.9 for t in TASKS}, items={t: 12 for t in TASKS})
    scores_file = tiny / "scores.yaml"
    scores_file.write_text(yaml.safe_dump({"format": 1, "task_items": {t: ITEMS_PER_TASK
                                                                       for t in TASKS},
                                           "models": models}))
    second = plan_next(r, plan_dir, scores_file=scores_file, evaluator=ITEMS, progress=False)
    assert second["generation"] == 2
    assert partial["id"] not in second["top_k"]  # screened out: never in the top-k
    assert all(partial["id"] not in c["parents"] for c in second["children"]
               if not c["exploration"])


def test_plan_scores_file_refuses_partial_foundation_models(tiny):
    plan_dir = tiny / "plan-refuse"
    r = recipe(tiny, stages=STAGES)
    plan_next(r, plan_dir, evaluator=ITEMS, progress=False)
    bad = tiny / "bad.yaml"
    bad.write_text(yaml.safe_dump({"task_items": {t: 60 for t in TASKS}, "models": {
        "child0": {"scores": {t: 0.5 for t in TASKS}, "items": {t: 10 for t in TASKS}}}}))
    with pytest.raises(UserError, match="a foundation model is always scored on every item"):
        plan_next(r, plan_dir, scores_file=bad, evaluator=ITEMS, progress=False)
    bad.write_text(yaml.safe_dump({"models": {
        "child0": {"scores": {t: 0.5 for t in TASKS}, "items": {t: 10 for t in TASKS}}}}))
    with pytest.raises(UserError, match="item count of skill0, skill1, skill2 is not known"):
        plan_next(r, plan_dir, scores_file=bad, evaluator=ITEMS, progress=False)


# ------------------------------------------------------------------------- refusals


def test_an_evaluator_without_items_cannot_stage(tiny):
    with pytest.raises(UserError, match="takes no items= argument"):
        evolve(recipe(tiny, stages=STAGES), tiny / "refused",
               evaluator="evolution_helpers:stand_in_evaluate", progress=False)


def test_a_metric_that_is_no_mean_over_items_cannot_stage(tmp_path):
    from mergekit_kinship.evaluation.tasks import validate_evaluation

    task = yaml.safe_load((Path(__file__).parent / "data" / "tiny_mc" / "tiny_mc.yaml").read_text())
    task["metric_list"] = [{"metric": "acc", "aggregation": "median", "higher_is_better": True}]
    task["task"] = "tiny_median"
    (tmp_path / "tiny_median.yaml").write_text(yaml.safe_dump(task))
    settings = EvaluationSettings(tasks=["tiny_median"], include_path=str(tmp_path),
                                  stages=[0.5, 1.0])
    with pytest.raises(UserError, match="tiny_median's acc is not a mean over its items"):
        validate_evaluation(settings)
    validate_evaluation(settings.model_copy(update={"stages": None}))  # fine without stages


def test_a_group_cannot_stage(tmp_path):
    from mergekit_kinship.evaluation.tasks import validate_evaluation

    with pytest.raises(UserError, match="is a group of lm-eval tasks"):
        validate_evaluation(EvaluationSettings(tasks=["mmlu"], stages=[0.5, 1.0]))


# ------------------------------------------------------------------------- uncertainty


def test_standard_errors_and_the_paired_bootstrap():
    settings = EvaluationSettings(tasks=["a", "b"], weights={"a": 3, "b": 1})
    rng = random.Random(1)
    a = {t: {i: float(rng.random() < 0.7) for i in range(200)} for t in ("a", "b")}
    noise = {t: {i: v if rng.random() < 0.9 else 1.0 - v for i, v in a[t].items()} for t in a}
    estimate, se, n = contrast([a], [1.0], settings)
    means = {t: sum(v.values()) / 200 for t, v in a.items()}
    assert estimate == pytest.approx((3 * means["a"] + means["b"]) / 4) and n == 400
    sd = {t: math.sqrt(sum((x - means[t]) ** 2 for x in v.values()) / 199) for t, v in a.items()}
    assert se == pytest.approx(math.sqrt((3 * sd["a"]) ** 2 / 200 + sd["b"] ** 2 / 200) / 4)
    # A model against itself: no difference, no noise; against a noisy copy: within noise.
    same = paired_bootstrap(a, a, settings, seed=3)
    assert same["difference"] == 0 and same["low"] == same["high"] == 0 and not same["differs"]
    near = paired_bootstrap(noise, a, settings, seed=3)
    assert near == paired_bootstrap(noise, a, settings, seed=3)  # seeded: reproducible
    assert near["low"] < near["difference"] < near["high"]
    worse = {t: {i: 0.0 for i in v} for t, v in a.items()}
    assert paired_bootstrap(worse, a, settings, seed=3)["differs"]


def test_fisher_interval():
    from mergekit_kinship.statistics import fisher_interval

    low, high = fisher_interval(0.5, 28)
    half = 1.959963984540054 / 5
    assert (low, high) == pytest.approx((math.tanh(math.atanh(0.5) - half),
                                         math.tanh(math.atanh(0.5) + half)))
    assert fisher_interval(0.5, 3) is None and low < 0.5 < high


def test_compare_says_whether_the_best_models_differ_by_more_than_noise(tiny, runs):
    result = CliRunner().invoke(main, ["compare", str(tiny / "full"), str(tiny / "staged"),
                                       "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["runs"]
    leader = max(rows, key=lambda r: r["best_at_merges"])
    for row in rows:
        verdict = row["vs_leader"]
        assert verdict["leader"] == leader["run"]
        assert row["best_at_merges"] - leader["best_at_merges"] == pytest.approx(
            verdict["difference"])
        if row is not leader and verdict["method"] == "paired bootstrap":
            assert verdict["low"] <= verdict["difference"] <= verdict["high"]
    text = CliRunner().invoke(main, ["compare", str(tiny / "full"), str(tiny / "staged")])
    assert "vs the leader" in text.output
