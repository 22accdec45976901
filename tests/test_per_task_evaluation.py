"""Per-task ``num_fewshot`` and ``limit`` (issue 12, "the paper's evaluation, faithfully").

lm-eval's ``simple_evaluate`` takes one n-shot and one limit for all tasks; a recipe may give
each task its own. The scores are checked against ``simple_evaluate`` run once per task with
that task's values, on the built-in family's local tasks and on tests/data/tiny_mc (plus a copy
and a group of both); ``plan --dry-run`` must print what the run then uses, and the paper's two
recipes must validate offline with the paper's n-shots.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mergekit_kinship.cli import main
from mergekit_kinship.errors import UserError
from mergekit_kinship.evaluation.runner import run_lm_eval
from mergekit_kinship.evaluation.settings import (FEWSHOT_SEED, EvaluationSettings,
                                                  evaluation_fingerprint, fingerprint_hash,
                                                  lm_eval_version)
from mergekit_kinship.evaluation.task_plan import resolved_fewshot, task_plans
from mergekit_kinship.evaluation.tasks import task_manager_for, task_specs, validate_evaluation
from test_evaluation import TASK, TASKS
from test_evaluation_checks import family_settings, family_shaped_model, tiny_model  # noqa: F401

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="module")
def tiny_tasks(tmp_path_factory) -> Path:
    """tiny_mc, a second task on the same data (tiny_mc_b), a task whose YAML pins 0 shots,
    and a group of tiny_mc and tiny_mc_b; data paths absolute (a group's tasks are loaded by
    name, from any directory)."""
    folder = tmp_path_factory.mktemp("tiny_tasks")
    for data in TASKS.glob("*.jsonl"):
        shutil.copy(data, folder)
    config = yaml.safe_load((TASKS / "tiny_mc.yaml").read_text())
    config["dataset_kwargs"]["data_files"] = {
        split: str(folder / name) for split, name in config["dataset_kwargs"]["data_files"].items()}
    (folder / "tiny_mc.yaml").write_text(yaml.safe_dump(config))
    (folder / "tiny_mc_b.yaml").write_text(yaml.safe_dump({**config, "task": "tiny_mc_b"}))
    (folder / "tiny_pinned.yaml").write_text(yaml.safe_dump({**config, "task": "tiny_pinned",
                                                              "num_fewshot": 0}))
    (folder / "tiny_group.yaml").write_text(yaml.safe_dump({
        "group": "tiny_group", "task": [TASK, "tiny_mc_b"],
        "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}]}))
    return folder


def tiny(folder: Path, **fields) -> EvaluationSettings:
    return EvaluationSettings(**{"tasks": [TASK, "tiny_mc_b"], "include_path": str(folder),
                                 "device": "cpu", **fields})


def simple_evaluate_alone(settings: EvaluationSettings, task: str, model: Path) -> dict:
    """lm-eval's own scores for ``task`` with ``task``'s values of ``settings``."""
    import lm_eval

    alone = settings.model_copy(update={"tasks": [task], "num_fewshot": settings.fewshot_for(task),
                                        "limit": settings.limit_for(task)})
    manager = task_manager_for(alone)
    with task_specs(alone, manager) as specs:
        return lm_eval.simple_evaluate(
            model="hf", model_args={"pretrained": str(model)}, tasks=specs,
            num_fewshot=alone.num_fewshot, limit=alone.limit, batch_size=alone.batch_size,
            device="cpu", task_manager=manager, log_samples=False,
            fewshot_random_seed=FEWSHOT_SEED)


def assert_same_as_simple_evaluate(settings, model, monkeypatch, tmp_path) -> dict:
    monkeypatch.chdir(tmp_path)  # simple_evaluate's `git describe` runs here: not in a repository
    ours, _ = run_lm_eval(settings, {"pretrained": str(model)}, "cpu", task_manager_for(settings))
    for task in settings.tasks:
        theirs = simple_evaluate_alone(settings, task, model)
        for key in ("results", "n-samples", "n-shot"):
            assert set(theirs[key]) <= set(ours[key]), (task, key)
            for name in theirs[key]:
                assert json.dumps(ours[key][name], sort_keys=True) == json.dumps(
                    theirs[key][name], sort_keys=True), (task, key, name)
    return ours


def test_per_task_settings_score_as_simple_evaluate_per_task_on_the_family(
        family_shaped_model, monkeypatch, tmp_path):  # noqa: F811
    chosen = family_settings(tasks=["kinship_reverse", "kinship_sort", "kinship_rotate"],
                             num_fewshot={"kinship_reverse": 2, "kinship_sort": 0},
                             limit={"kinship_reverse": 6, "kinship_sort": 0.05})
    ours = assert_same_as_simple_evaluate(chosen, family_shaped_model, monkeypatch, tmp_path)
    assert {t: ours["n-shot"][t] for t in chosen.tasks} == {
        "kinship_reverse": 2, "kinship_sort": 0, "kinship_rotate": 0}
    assert {t: ours["n-samples"][t]["effective"] for t in chosen.tasks} == {
        "kinship_reverse": 6, "kinship_sort": 5, "kinship_rotate": 100}
    # The dry run's plan is what the run used: the same n-shot and item count per task.
    plans = {p.task: p for p in task_plans(chosen)}
    for task in chosen.tasks:
        assert plans[task].num_fewshot == ours["n-shot"][task]
        assert plans[task].items == ours["n-samples"][task]["effective"]
        assert plans[task].items_total == 100 and plans[task].items_note == "local data"


def test_per_task_settings_score_as_simple_evaluate_per_task_on_tiny_mc(
        tiny_model, tiny_tasks, monkeypatch, tmp_path):  # noqa: F811
    chosen = tiny(tiny_tasks, num_fewshot={TASK: 2, "tiny_mc_b": 1}, limit={TASK: 4})
    ours = assert_same_as_simple_evaluate(chosen, tiny_model, monkeypatch, tmp_path)
    assert ours["n-shot"][TASK] == 2 and ours["n-shot"]["tiny_mc_b"] == 1
    assert ours["n-samples"][TASK]["effective"] == 4
    assert ours["n-samples"]["tiny_mc_b"]["effective"] == 12


def test_a_group_gets_its_value_on_every_task(tiny_model, tiny_tasks, monkeypatch, tmp_path):  # noqa: F811
    chosen = tiny(tiny_tasks, tasks=["tiny_group"], num_fewshot={"tiny_group": 1},
                  limit={"tiny_group": 0.5})
    ours = assert_same_as_simple_evaluate(chosen, tiny_model, monkeypatch, tmp_path)
    assert ours["n-shot"][TASK] == ours["n-shot"]["tiny_mc_b"] == 1
    (plan,) = task_plans(chosen)
    assert (plan.subtasks, plan.num_fewshot, plan.items, plan.items_total) == (2, 1, 12, 24)


def test_a_task_that_pins_zero_shots(tiny_tasks):
    """lm-eval's rule: a task whose YAML sets num_fewshot 0 stays 0-shot under a number for
    every task; asking it for more by name is refused rather than silently ignored."""
    pinned = tiny(tiny_tasks, tasks=[TASK, "tiny_pinned"], num_fewshot=3)
    validate_evaluation(pinned)
    plans = {p.task: p for p in task_plans(pinned)}
    assert (plans[TASK].num_fewshot, plans[TASK].fewshot_source) == (3, "recipe")
    assert (plans["tiny_pinned"].num_fewshot, plans["tiny_pinned"].fewshot_source) == (
        0, "the task pins 0")
    assert resolved_fewshot(pinned) == {TASK: 3, "tiny_pinned": 0}
    with pytest.raises(UserError, match=r"^evaluation\.num_fewshot\.tiny_pinned: tiny_pinned pins "
                                        r"num_fewshot to 0 in its YAML"):
        validate_evaluation(tiny(tiny_tasks, tasks=[TASK, "tiny_pinned"],
                                 num_fewshot={"tiny_pinned": 2}))
    validate_evaluation(tiny(tiny_tasks, tasks=[TASK, "tiny_pinned"], num_fewshot={"tiny_pinned": 0}))
    defaults = tiny(tiny_tasks, tasks=[TASK, "tiny_pinned"])
    assert resolved_fewshot(defaults) == {TASK: 0, "tiny_pinned": 0}
    assert [p.fewshot_source for p in task_plans(defaults)] == ["lm-eval default", "task default"]
    # Scored by another evaluator: only the recipe's own values are known.
    assert resolved_fewshot(tiny(tiny_tasks, num_fewshot={TASK: 2}), lm_eval_tasks=False) == {
        TASK: 2, "tiny_mc_b": None}


@pytest.mark.parametrize("field, value, message", [
    ("num_fewshot", {"tiny_mc_c": 1}, r"evaluation\.num_fewshot: 'tiny_mc_c' is not one of "
                                      r"evaluation\.tasks .*did you mean 'tiny_mc_b'\?"),
    ("limit", {"other": 3}, r"evaluation\.limit: 'other' is not one of evaluation\.tasks"),
])
def test_a_mapping_naming_another_task_is_refused(tiny_tasks, field, value, message):
    with pytest.raises(UserError, match=message):
        validate_evaluation(tiny(tiny_tasks, **{field: value}))


@pytest.mark.parametrize("evaluation, message", [
    ({"num_fewshot": {"a": -1}}, "evaluation.num_fewshot: a: must be 0 or more"),
    ({"num_fewshot": {"a": "five"}}, "evaluation.num_fewshot: a: 'five' is not a whole number"),
    ({"num_fewshot": 2.5}, "evaluation.num_fewshot: 2.5 is not a whole number or a mapping"),
    ({"limit": {"b": 0}}, "evaluation.limit: b: must be a count above 0"),
    ({"limit": {"b": 1.5}}, "evaluation.limit: b: a fraction must be below 1"),
    ({"limit": {"b": True}}, "evaluation.limit: b: True is not a number"),
])
def test_malformed_per_task_values_are_one_line(evaluation, message):
    from mergekit_kinship.recipe import parse_recipe

    recipe = {"base": "org/base", "models": ["org/a", "org/b"], "top_k": 2,
              "evaluation": {"tasks": ["a", "b"], **evaluation}}
    with pytest.raises(UserError) as refused:
        parse_recipe(recipe, ".")
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_fingerprint_changes_exactly_with_a_tasks_n_shot_or_limit():
    two = ["a", "b"]

    def fp(**fields):
        return fingerprint_hash(EvaluationSettings(tasks=two, **fields))

    # The plain spellings fingerprint as before per-task values existed, so that scores cached
    # by earlier runs stay valid: the value itself under "num_fewshot" and "limit".
    for fields in [{}, {"num_fewshot": 0}, {"num_fewshot": 5, "limit": 4}, {"limit": 0.25}]:
        settings = EvaluationSettings(tasks=two, **fields)
        before = {"format": 1, "lm_eval_version": lm_eval_version(), "tasks": two,
                  "metrics": {"a": "acc", "b": "acc"}, "include_path_sha256": None,
                  "num_fewshot": fields.get("num_fewshot"), "limit": fields.get("limit"),
                  "apply_chat_template": False, "backend": "hf", "model_args": {},
                  "fewshot_seed": FEWSHOT_SEED}
        assert evaluation_fingerprint(settings) == before, fields
    # Another spelling of the same values per task: the same fingerprint.
    assert fp(num_fewshot=0) == fp(num_fewshot={"a": 0, "b": 0})
    assert fp() == fp(num_fewshot={}) == fp(num_fewshot={"a": None}) == fp(limit={"b": None})
    assert fp(num_fewshot={"a": 5}) == fp(num_fewshot={"a": 5, "b": None})
    assert fp(limit=0.5) == fp(limit={"a": 0.5, "b": 0.5})
    # Any task's value changed: another fingerprint.
    distinct = [fp(), fp(num_fewshot=5), fp(num_fewshot={"a": 5}), fp(num_fewshot={"b": 5}),
                fp(num_fewshot={"a": 5, "b": 3}), fp(num_fewshot={"a": 3, "b": 5}),
                fp(limit={"a": 10}), fp(limit={"b": 10}), fp(limit={"a": 10, "b": 0.5}),
                fp(limit={"a": 11})]
    assert len(set(distinct)) == len(distinct)


def test_paper_recipe_dry_run_prints_the_papers_n_shots_offline():
    """The paper scores Winogrande 5-shot, GSM8K 5-shot, TruthfulQA mc2 0-shot (Open LLM
    Leaderboard v1); Winogrande's own default would be 0-shot."""
    path = RECIPES / "mistral-7b-paper.yaml"
    report = json.loads(dry_run_output(path, "--json"))
    shots = {t["task"]: (t["metric"], t["num_fewshot"]) for t in report["tasks"]}
    assert shots == {"winogrande": ("acc", 5), "gsm8k": ("exact_match,strict-match", 5),
                     "truthfulqa_mc2": ("acc", 0)}
    assert all(t["items"] is None and "not known offline" in t["items_note"] for t in report["tasks"])
    text = dry_run_output(path)
    row = next(line for line in text.splitlines() if line.strip().startswith("winogrande"))
    assert row.split()[:4] == ["winogrande", "acc", "5", "(recipe)"]
    assert "not known offline (dataset allenai/winogrande on the Hub)" in row


def test_leaderboard_recipe_dry_run_prints_the_six_tasks_offline():
    report = json.loads(dry_run_output(RECIPES / "mistral-7b-leaderboard.yaml", "--json"))
    tasks = {t["task"]: t for t in report["tasks"]}
    assert {t: (v["metric"], v["num_fewshot"]) for t, v in tasks.items()} == {
        "arc_challenge": ("acc_norm", 25), "hellaswag": ("acc_norm", 10), "mmlu": ("acc", 5),
        "truthfulqa_mc2": ("acc", 0), "winogrande": ("acc", 5),
        "gsm8k": ("exact_match,strict-match", 5)}
    assert tasks["mmlu"]["subtasks"] == 57  # lm-eval's mmlu group: 57 subjects, all 5-shot
    assert report["recipe"]["evaluation"]["tasks"] == list(tasks)


def test_dry_run_counts_the_items_of_local_tasks(tmp_path):
    from evolution_helpers import build_tiny_family

    from mergekit_kinship.zoo import evaluation_settings

    paths = build_tiny_family(tmp_path / "fam")
    zoo = evaluation_settings()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "base": str(paths["base"]), "models": [str(paths[f"child{i}"]) for i in range(3)],
        "evaluation": {"tasks": zoo["tasks"][:3], "include_path": zoo["include_path"],
                       "num_fewshot": {zoo["tasks"][0]: 3}, "limit": {zoo["tasks"][1]: 0.25}}}))
    text = dry_run_output(recipe)
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith("    kinship_")}
    first, second, third = zoo["tasks"][:3]
    assert rows[first].split()[1:4] == ["acc", "3", "(recipe)"] and rows[first].endswith(" 100")
    assert rows[second].split()[1:5] == ["acc", "0", "(lm-eval", "default)"]
    assert rows[second].endswith("25 of 100 (limit 0.25)")
    assert rows[third].endswith(" 100")
    report = json.loads(dry_run_output(recipe, "--json"))
    assert [(t["items"], t["items_total"]) for t in report["tasks"]] == [(100, 100), (25, 100), (100, 100)]


def dry_run_output(recipe: Path, *flags: str) -> str:
    result = CliRunner().invoke(main, ["plan", str(recipe), "--dry-run", *flags])
    assert result.exit_code == 0, result.output
    return result.output


def test_summary_cards_and_report_show_each_tasks_n_shot(tmp_path, monkeypatch):
    """A run records the n-shot of every task; its cards (text and model-index) and its report
    show each task's own."""
    from evolution_helpers import build_tiny_family

    from mergekit_kinship.card import card_body
    from mergekit_kinship.card_metadata import eval_results
    from mergekit_kinship.evolution import evolve
    from mergekit_kinship.recipe import parse_recipe
    from mergekit_kinship.report import write_report
    from mergekit_kinship.summary import load_summary

    paths = build_tiny_family(tmp_path)
    recipe = parse_recipe({
        "base": str(paths["base"]), "models": [str(paths[f"child{i}"]) for i in range(3)],
        "merge": {"method": "slerp", "dtype": "float32"},
        "evaluation": {"tasks": ["skill0", "skill1", "skill2"],
                       "num_fewshot": {"skill0": 5, "skill1": 0}, "limit": {"skill2": 40}},
        "stopping": {"max_generations": 1}}, tmp_path)
    monkeypatch.setenv("EVOLVE_TEST_SKILLS", str(tmp_path))
    evolve(recipe, tmp_path / "run", progress=False, evaluator="evolution_helpers:stand_in_evaluate")
    summary = load_summary(tmp_path / "run")
    # Scored by a stand-in: what the recipe asks for is all that is known.
    assert summary.evaluation["n_shot"] == {"skill0": 5, "skill1": 0, "skill2": None}
    body = card_body(summary, summary.best)
    assert ("`skill0` (acc, 5-shot), `skill1` (acc, 0-shot), `skill2` (acc, the task's default "
            "n-shot, first 40 items)") in body
    shots = {r.dataset_name: r.dataset_args for r in eval_results(summary, summary.best)}
    assert shots == {"skill0": {"num_few_shot": 5}, "skill1": {"num_few_shot": 0}, "skill2": None}
    html = Path(write_report(tmp_path / "run", tmp_path / "report.html")).read_text()
    assert "skill0 (acc, 5-shot); skill1 (acc, 0-shot)" in html
