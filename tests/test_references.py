"""issue 16: the base model's own score, the one-shot baselines, and merge methods side by side.

Tiny real models merged by mergekit and scored by the stand-in evaluator of evolution_helpers
(one test with the real lm-eval on the built-in family): the references are scored once, keyed
by content, never enter the pool, and appear in the tables, summary, cards, report and compare.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from evolution_helpers import build_tiny_family, load_tensors
from mergekit_kinship.cli import main
from mergekit_kinship.evolution import evolve
from mergekit_kinship.recipe import load_recipe
from mergekit_kinship.rundir import RunDir
from mergekit_kinship.summary import load_summary

STAND_IN = "evolution_helpers:stand_in_evaluate"
RECIPE = {"base": "./fam/base", "models": ["./fam/child0", "./fam/child1", "./fam/child2"],
          "top_k": 3, "merge": {"method": "slerp", "dtype": "float32"},
          "evaluation": {"tasks": ["skill0", "skill1", "skill2"]},
          "stopping": {"max_generations": 3}, "seed": 0}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("references")
    build_tiny_family(root / "fam")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVOLVE_TEST_SKILLS", str(root / "fam"))
        yield root


def recipe_file(root: Path, name: str, **changes) -> Path:
    data = json.loads(json.dumps(RECIPE))
    data.update(changes)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def with_baselines(tiny):
    run_dir = tiny / "with-baselines"
    summary = evolve(load_recipe(recipe_file(tiny, "plain")), run_dir, evaluator=STAND_IN,
                     baselines=True, progress=False)
    return run_dir, summary


def events(run_dir, kind):
    return RunDir(run_dir).events(kind)


def test_references_never_change_the_search(tiny, with_baselines):
    """Algorithm 1's pool, plans and top-k are the same with the base scored or not."""
    _, summary = with_baselines
    off = evolve(load_recipe(recipe_file(tiny, "no-base", references={"base": False})),
                 tiny / "no-base", evaluator=STAND_IN, progress=False)
    assert not off.references
    assert [(g.children, g.top_k) for g in off.generations] == \
        [(g.children, g.top_k) for g in summary.generations]
    assert list(off.models) == list(summary.models)  # no reference in the pool
    assert all(m.vs_base is None for m in off.models.values())


def test_the_base_is_scored_once_and_every_model_is_measured_against_it(tiny, with_baselines):
    run_dir, summary = with_baselines
    base = summary.base_reference()
    assert base is not None and base.kind == "base" and base.fitness is not None
    for model in summary.models.values():
        assert model.vs_base == pytest.approx(model.fitness - base.fitness)
    scored = Counter(e["model"] for e in events(run_dir, "scored"))
    assert scored["base"] == 1
    # the same again: nothing is merged or scored twice, references included
    n_merged, n_scored = len(events(run_dir, "merged")), len(events(run_dir, "scored"))
    again = evolve(load_recipe(recipe_file(tiny, "plain")), run_dir, evaluator=STAND_IN,
                   baselines=True, progress=False)
    assert len(events(run_dir, "merged")) == n_merged and len(events(run_dir, "scored")) == n_scored
    assert again.references.keys() == summary.references.keys()


def test_one_shot_baselines_merge_every_foundation_model_at_once(tiny, with_baselines):
    run_dir, summary = with_baselines
    baselines = summary.baselines()
    assert {m.method for m in baselines.values()} == {"ties", "dare_ties", "linear",
                                                      "task_arithmetic"}
    foundation = summary.foundation_ids()
    for baseline_id, m in baselines.items():
        assert baseline_id.startswith("b-") and m.parents == foundation
        config = yaml.safe_load(m.yaml)
        assert [x["model"] for x in config["models"]] == [summary.models[f].path for f in foundation]
        assert ("base_model" in config) == (m.method != "linear")
        assert m.gain == pytest.approx(m.fitness - sum(summary.models[f].fitness
                                                       for f in foundation) / len(foundation))
    # linear with equal weights is the plain average of the foundation models' weights
    linear = next(i for i, m in baselines.items() if m.method == "linear")
    merged = load_tensors(run_dir / "models" / linear)
    models = [load_tensors(summary.models[f].path) for f in foundation]
    for name, tensor in merged.items():
        mean = sum(m[name].double() for m in models) / len(models)
        assert (tensor.double() - mean).abs().max() < 1e-6, name
    assert not set(baselines) & set(summary.models)  # not pool members
    assert all(b not in g.top_k for g in summary.generations for b in baselines)


def test_the_cli_tables_and_the_final_verdict(tiny):
    result = CliRunner().invoke(main, ["evolve", str(recipe_file(tiny, "plain")), "--run-dir",
                                       str(tiny / "cli"), "--evaluator", STAND_IN,
                                       "--baselines"])
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert out[0].startswith("references (not in the pool): base model 0.0000; ties (one-shot) ")
    header = next(line for line in out if line.startswith("child "))
    assert header.split()[-1] == "base" and "vs base" in header
    verdict = next(line for line in out if "beat the base model" in line)
    assert " children beat the base model (0.0000); the best, " in verdict
    assert any("the best one-shot baseline" in line for line in out)


def test_verdict_when_no_child_beats_the_base(with_baselines):
    from mergekit_kinship.tables import verdict_lines

    _, summary = with_baselines
    worse = summary.model_copy(deep=True)
    base = worse.references["base"]
    base.fitness = max(m.fitness for m in worse.models.values()) + 0.1
    for m in worse.models.values():
        m.vs_base = m.fitness - base.fitness
    line = verdict_lines(worse)[0]
    assert line.startswith(f"no child beat the base model ({base.fitness:.4f}): the best child, ")


def test_card_and_report_show_the_references(with_baselines):
    from mergekit_kinship.card import card_body
    from mergekit_kinship.report import render_report

    run_dir, summary = with_baselines
    body = card_body(summary, summary.best)
    assert "## Against the references" in body and "the shared base model itself" in body
    assert "beats the base model itself" in body
    for m in summary.baselines().values():
        assert f"| {m.name} | one `{m.method}` merge of all 3 foundation models" in body
    html = render_report(summary)
    assert "<h2>References</h2>" in html and "against the references" in html
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert set(on_disk["references"]) == set(summary.references)


def test_compare_methods_grid_with_references_and_resume(tiny):
    """compare RECIPE --methods: every strategy with every two-parent method at one merge
    budget, scores shared by content, the references in the table; a second call does no work."""
    args = ["compare", str(recipe_file(tiny, "plain")), "--run-dir", str(tiny / "grid"),
            "--strategies", "kinship,greedy", "--methods", "slerp,task_arithmetic,ties",
            "--merges", "4", "--evaluator", STAND_IN, "--json"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    comparison = json.loads(first.output[first.output.index("{\n"):])
    cells = {(r["strategy"], r["method"]) for r in comparison["runs"]}
    assert cells == {(s, m) for s in ("kinship", "greedy") for m in ("slerp", "task_arithmetic", "ties")}
    assert comparison["at_merges"] == 4
    kinds = Counter(r["kind"] for r in comparison["references"])
    assert kinds == {"base": 1, "baseline": 4}
    base = next(r["fitness"] for r in comparison["references"] if r["kind"] == "base")
    for row in comparison["runs"]:
        assert row["vs_base"] == pytest.approx(row["best_at_merges"] - base)
        summary = load_summary(tiny / "grid" / row["method"] / row["strategy"])
        assert summary.recipe["merge"]["method"] == row["method"]
    # the baselines were made once, in the first cell, and the base scored once in all
    made = [e for d in (tiny / "grid").glob("*/*") for e in events(d, "merged")
            if e["child"].startswith("b-")]
    assert len(made) == 4
    scored = Counter(e["model"] for d in (tiny / "grid").glob("*/*") for e in events(d, "scored"))
    assert scored["base"] == 1
    text = CliRunner().invoke(main, args[:-1])
    assert text.exit_code == 0, text.output
    assert "best@4 by strategy (rows) and two-parent merge method (columns):" in text.output
    assert "references (the same evaluation, no search):" in text.output
    merged_after = sum(len(events(d, "merged")) for d in (tiny / "grid").glob("*/*"))
    scored_after = sum(len(events(d, "scored")) for d in (tiny / "grid").glob("*/*"))
    again = CliRunner().invoke(main, args)  # resumed: every merge and score is found
    assert again.exit_code == 0
    assert json.loads(again.output[again.output.index("{\n"):]) == comparison
    assert sum(len(events(d, "merged")) for d in (tiny / "grid").glob("*/*")) == merged_after
    assert sum(len(events(d, "scored")) for d in (tiny / "grid").glob("*/*")) == scored_after


def test_unknown_method_or_baseline_is_one_line(tiny):
    result = CliRunner().invoke(main, ["compare", str(recipe_file(tiny, "plain")), "--run-dir",
                                       str(tiny / "bad"), "--methods", "slerp,slurp",
                                       "--evaluator", STAND_IN])
    assert result.exit_code == 2
    assert result.output.startswith("Error: --methods: no default template for 'slurp'")
    result = CliRunner().invoke(main, ["evolve", str(recipe_file(
        tiny, "bad-baseline", references={"baselines": ["tiez"]})), "--run-dir",
        str(tiny / "bad2"), "--evaluator", STAND_IN])
    assert result.exit_code == 2
    assert "references.baselines: unknown baseline 'tiez'; did you mean 'ties'?" in result.output


def test_real_lm_eval_scores_the_base_and_the_baselines(family, tmp_path):
    """The built-in family with lm-eval (limit 20, two merges): the base and the four one-shot
    baselines are scored by the same evaluation as the pool."""
    from mergekit_kinship.recipe import parse_recipe
    from mergekit_kinship.zoo import builtin_recipe

    data = builtin_recipe(family)
    data["evaluation"].update(limit=20)
    data["stopping"].update(max_merges=2, max_generations=1)
    summary = evolve(parse_recipe(data, tmp_path, "built-in (test)"), tmp_path / "run",
                     baselines=True, progress=False)
    assert summary.base_reference() is not None
    assert len(summary.baselines()) == 4
    for ref in summary.references.values():
        assert set(ref.scores) == set(summary.tasks)
        assert all(0.0 <= v <= 1.0 for v in ref.scores.values())
