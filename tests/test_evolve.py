"""The evolve loop end to end on tiny real models: mergekit merges, real kinship, a deterministic
stand-in evaluator that scores each merged folder from its weights (see evolution_helpers).

Covers: the summary contract, Algorithm 1 as executed (exploration partner, no pair twice, stop
rule), emitted YAML == what ran (and ``mergekit-yaml`` gives the same tensors), resume after
SIGKILL during a merge and during an evaluation with no finished work redone, re-scoring when the
evaluation changes, the lock, ``--keep``, ``plan`` with imported scores, and ``compare``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from evolution_helpers import build_tiny_family, load_tensors
from mergekit_kinship.cli import main
from mergekit_kinship.errors import UserError
from mergekit_kinship.evolution import evolve as _evolve
from mergekit_kinship.planning import plan_next as _plan_next
from mergekit_kinship.merging import validate_yaml
from mergekit_kinship.recipe import load_recipe
from mergekit_kinship.rundir import RunDir
from mergekit_kinship.summary import parse_summary

TESTS = Path(__file__).resolve().parent
STAND_IN = "evolution_helpers:stand_in_evaluate"


def evolve(recipe, run_dir, **options):
    """evolve with the stand-in evaluator; the summary as the JSON summary.json holds."""
    return _evolve(recipe, run_dir, evaluator=STAND_IN, **options).to_json()


def plan_next(recipe, run_dir, **options):
    return _plan_next(recipe, run_dir, evaluator=STAND_IN, **options)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny family, its recipe, and the environment the stand-in evaluator reads."""
    root = tmp_path_factory.mktemp("evolve")
    build_tiny_family(root / "fam")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "base": "./fam/base", "models": ["./fam/child0", "./fam/child1", "./fam/child2"],
        "top_k": 3, "strategy": "kinship",
        "merge": {"method": "slerp", "dtype": "float32"},
        "evaluation": {"tasks": ["skill0", "skill1", "skill2"]},
        "stopping": {"max_generations": 4}, "seed": 0}))
    env = {"EVOLVE_TEST_SKILLS": str(root / "fam")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield {"root": root, "recipe": recipe, "env": env}


@pytest.fixture(scope="module")
def clean(tiny):
    """One uninterrupted run: the reference every other run must reproduce."""
    run_dir = tiny["root"] / "clean"
    summary = evolve(load_recipe(tiny["recipe"]), run_dir, progress=False)
    return run_dir, summary


def lineage(summary):
    """What must not depend on the run directory: every model's lineage and scores."""
    return ({i: (m["name"], m["parents"], m["generation"], m["exploration"], m["scores"],
                 m["fitness"]) for i, m in summary["models"].items()},
            [{k: g[k] for k in ("index", "children", "top_k", "best")}
             for g in summary["generations"]],
            summary["stopped"], summary["best"])


def events(run_dir, kind):
    return RunDir(run_dir).events(kind)


def test_summary_contract_and_algorithm_1(clean):
    run_dir, s = clean
    assert s == json.loads((run_dir / "summary.json").read_text())
    assert s["format"] == 1 and s["strategy"] == "kinship" and s["top_k"] == 3
    assert s["metric"] == "pcc" and s["stopped"] in ("top-k unchanged", "max generations")
    assert s["base"]["path"].endswith("fam/base") and s["base"]["hub_id"] is None
    models = s["models"]
    assert [m["kind"] for m in models.values()][:3] == ["foundation"] * 3
    assert s["best"] == max(models, key=lambda i: models[i]["fitness"])
    names = s["pool_kinship"]["names"]
    kin = {(a, b): s["pool_kinship"]["pcc"][i][j]
           for i, a in enumerate(names) for j, b in enumerate(names)}
    seen_pairs, pool = set(), [i for i, m in models.items() if m["kind"] == "foundation"]
    explorations = 0
    for g in s["generations"]:
        for cid in g["children"]:
            m = models[cid]
            pair = frozenset(m["parents"])
            assert pair not in seen_pairs  # no pair merged twice
            seen_pairs.add(pair)
            parent_fit = [models[p]["fitness"] for p in m["parents"]]
            assert m["gain"] == pytest.approx(m["fitness"] - sum(parent_fit) / 2)
            assert m["parents_kinship"]["pcc"] == pytest.approx(kin[tuple(m["parents"])])
            assert m["generation"] == g["index"] and m["method"] == "slerp"
            assert parent_fit[0] >= parent_fit[1]  # parent A is the fitter one (t = 0 end)
            if m["exploration"]:
                explorations += 1
                best = m["parents"][0]
                assert best == s["generations"][g["index"] - 2]["best"]
                untried = [p for p in pool if p != best and frozenset((best, p)) not in
                           seen_pairs - {pair}]
                assert m["parents"][1] == min(untried, key=lambda p: kin[(best, p)])
        pool += g["children"]
        assert g["top_k"] == sorted(pool, key=lambda i: -models[i]["fitness"])[:3]
    assert explorations >= 1
    assert len(s["generations"][0]["children"]) == 3  # G1: every foundation pair
    last, before = s["generations"][-1], s["generations"][-2]
    if s["stopped"] == "top-k unchanged":
        assert set(last["top_k"]) == set(before["top_k"])
    # every child is better than the weaker parent on this concave stand-in: merges combine
    assert models[s["best"]]["kind"] == "child"


def test_yaml_is_what_ran_and_parses_with_mergekit(clean):
    run_dir, s = clean
    for cid, m in s["models"].items():
        if m["kind"] != "child":
            continue
        text = (run_dir / "yaml" / f"{cid}.yaml").read_text()
        assert text == m["yaml"]
        assert text == (run_dir / "models" / cid / "mergekit_config.yml").read_text()
        assert text.startswith(f"# mergekit-kinship child {m['name']} ({cid})")
        config = validate_yaml(text)
        parent_a = s["models"][m["parents"][0]]["path"]
        assert str(config.base_model.model.path) == parent_a  # slerp: parent A, never the ancestor
        assert all(os.path.isabs(str(x.model.model.path)) for x in config.models)


def test_mergekit_yaml_gives_the_same_tensors(clean, tmp_path):
    """The emitted YAML of a second-generation child (its parents are our merged children) runs
    unchanged with ``mergekit-yaml`` and gives bit-identical tensors (one subprocess, ~10 s)."""
    run_dir, s = clean
    cid = s["generations"][1]["children"][0]
    out = tmp_path / "out"
    subprocess.run(["mergekit-yaml", str(run_dir / "yaml" / f"{cid}.yaml"), str(out)],
                   check=True, capture_output=True, timeout=300)
    ours, theirs = load_tensors(run_dir / "models" / cid), load_tensors(out)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_rerun_does_no_work_and_changed_evaluation_rescores(tiny, clean, tmp_path):
    run_dir, s = clean
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    again = evolve(load_recipe(tiny["recipe"]), copy, progress=False)
    assert lineage(again) == lineage(s)
    n_merged, n_scored = len(events(copy, "merged")), len(events(copy, "scored"))
    assert n_merged == len(events(run_dir, "merged")) and n_scored == len(events(run_dir, "scored"))
    # Another evaluation fingerprint: everything is scored again, nothing is merged again.
    data = yaml.safe_load(tiny["recipe"].read_text())
    data["evaluation"]["num_fewshot"] = 1
    changed = tiny["root"] / "recipe-fewshot.yaml"
    changed.write_text(yaml.safe_dump(data))
    third = evolve(load_recipe(changed), copy, progress=False)
    assert lineage(third) == lineage(s)  # the stand-in ignores few-shot: same decisions
    assert len(events(copy, "merged")) == n_merged
    assert len(events(copy, "scored")) == n_scored + len(s["models"]) + len(s["references"])


def test_second_evolve_is_refused_while_the_run_dir_is_in_use(tiny, tmp_path):
    holder = RunDir(tmp_path / "busy")
    holder.lock()
    try:
        with pytest.raises(UserError, match="in use by another evolve"):
            evolve(load_recipe(tiny["recipe"]), tmp_path / "busy", progress=False)
        result = CliRunner().invoke(main, ["evolve", str(tiny["recipe"]), "--run-dir",
                                           str(tmp_path / "busy"), "--evaluator", STAND_IN])
        assert result.exit_code == 2 and "in use by another evolve" in result.output
    finally:
        holder.unlock()


def test_keep_best_prunes_weights_only(tiny, clean, tmp_path):
    run_dir, s = clean
    copy = tmp_path / "keep"
    shutil.copytree(run_dir, copy)
    pruned = evolve(load_recipe(tiny["recipe"]), copy, keep="best", progress=False)
    kept = [d.name for d in (copy / "models").iterdir()]
    assert kept == [s["best"]]
    children = [i for i, m in pruned["models"].items() if m["kind"] == "child"]
    assert all((pruned["models"][i]["path"] is None) == (i != s["best"]) for i in children)
    assert len(list((copy / "yaml").iterdir())) == len(children)  # YAML and scores stay
    assert lineage(pruned) == lineage(s)
    # Running it again merges nothing: a scored child needs no weights, so pruned stays pruned.
    merged = len(events(copy, "merged"))
    again = evolve(load_recipe(tiny["recipe"]), copy, keep="best", progress=False)
    assert len(events(copy, "merged")) == merged and lineage(again) == lineage(s)
    assert [d.name for d in (copy / "models").iterdir()] == [s["best"]]
    # plan after --keep: pruned children stay in the pool (their pairs were merged), so the plan
    # equals the one of the unpruned run, and every parent its YAML names is on disk.
    full = tmp_path / "full"
    shutil.copytree(run_dir, full)
    recipe = load_recipe(tiny["recipe"])
    want, got = plan_next(recipe, full, progress=False), plan_next(recipe, copy, progress=False)
    assert [(c["id"], c["exploration"]) for c in got["children"]] == \
        [(c["id"], c["exploration"]) for c in want["children"]]
    assert got["generation"] == want["generation"] == 1 + max(m["generation"] for m in
                                                             s["models"].values())
    for c in got["children"]:
        for p in c["parents"]:
            if p in children:
                assert (copy / "models" / p / "config.json").is_file()
    # Other evaluation settings: evolve's scores do not count; plan says so (not "not merged").
    data = yaml.safe_load(tiny["recipe"].read_text())
    data["evaluation"]["num_fewshot"] = 2
    changed = tiny["root"] / "recipe-plan-fewshot.yaml"
    changed.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="evolve merged them; it scored them under other settings"):
        plan_next(load_recipe(changed), full, progress=False)


def test_pruned_parent_is_merged_again(tiny, clean, tmp_path):
    """A run stopped early with --keep best, then continued: the pruned children the later
    generations merge from are merged again (only once each), and the result is the clean one."""
    run_dir, s = clean
    assert len(s["generations"]) >= 3
    recipe = load_recipe(tiny["recipe"])
    short = recipe.model_copy(update={"stopping": recipe.stopping.model_copy(
        update={"max_generations": 2})})
    d = tmp_path / "short"
    first = evolve(short, d, keep="best", progress=False)
    assert len(list((d / "models").iterdir())) == 1
    full = evolve(recipe, d, progress=False)
    assert lineage(full) == lineage(s)
    merged = Counter(e["child"] for e in events(d, "merged"))
    pruned = [i for i, m in first["models"].items() if m["kind"] == "child" and i != first["best"]]
    assert all(merged[i] == 2 for i in pruned) and max(merged.values()) == 2
    assert all((d / "models" / i / "config.json").is_file() for i in full["models"]
               if full["models"][i]["kind"] == "child")


def _cli(tiny, run_dir, kill_at=None, *args):
    """evolve through the CLI in a fresh interpreter, SIGKILLed at ``kill_at`` (point:n)."""
    env = {**os.environ, **tiny["env"], "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    command = ([sys.executable, str(TESTS / "cli_with_fault.py"), kill_at] if kill_at else
               [sys.executable, "-m", "mergekit_kinship"])
    return subprocess.run([*command, "evolve", str(tiny["recipe"]), "--run-dir", str(run_dir),
                           "--evaluator", STAND_IN, *args],
                          env=env, capture_output=True, text=True, timeout=300)


def test_killed_during_merge_and_evaluation_resumes_exactly(tiny, clean):
    """SIGKILL in the middle of the 4th merge (weights written, not yet renamed into place),
    then in the middle of an evaluation (scored, not yet recorded); the third run finishes
    with the clean run's result and no finished merge or evaluation done twice."""
    _, reference = clean
    run_dir = tiny["root"] / "killed"
    first = _cli(tiny, run_dir, "merge:4")
    assert first.returncode == -9, first.stderr[-2000:]
    assert list((run_dir / "models").glob(".partial-*/*"))  # a half-written child was left
    assert len(events(run_dir, "merged")) == 3
    second = _cli(tiny, run_dir, "evaluate:2")
    assert second.returncode == -9, second.stderr[-2000:]
    third = _cli(tiny, run_dir, None, "--json")
    assert third.returncode == 0, third.stderr[-2000:]
    summary = json.loads(third.stdout)
    assert lineage(summary) == lineage(reference)
    assert "generation 1" in third.stderr  # tables go to stderr with --json
    merged = Counter(e["child"] for e in events(run_dir, "merged"))
    scored = Counter(e["score_key"] for e in events(run_dir, "scored"))
    children = [i for i, m in summary["models"].items() if m["kind"] == "child"]
    assert sorted(merged) == sorted(children) and set(merged.values()) == {1}
    scored_models = len(summary["models"]) + len(summary["references"])  # the base too
    assert len(scored) == scored_models and set(scored.values()) == {1}
    starts = Counter(e["child"] for e in events(run_dir, "merge-start"))
    assert sum(starts.values()) == len(children) + 1  # only the killed merge started twice
    evals = Counter(e["score_key"] for e in events(run_dir, "eval-start"))
    assert sum(evals.values()) == scored_models + 1  # only the killed one twice
    assert not list((run_dir / "models").glob(".partial-*"))


def test_plan_with_imported_scores(tiny, clean, tmp_path):
    """plan executes nothing: YAML + plan.json; scores and folders from elsewhere come back in
    through a scores file, and the next plan explores like evolve does."""
    from evolution_helpers import stand_in_evaluate
    from mergekit_kinship.merging import merge_yaml

    recipe = load_recipe(tiny["recipe"])
    run_dir = tmp_path / "plan"
    first = plan_next(recipe, run_dir, progress=False)
    assert first["generation"] == 1 and len(first["children"]) == 3 and not first["scored"]
    assert not (run_dir / "models").exists() or not any((run_dir / "models").iterdir())
    with pytest.raises(UserError, match="not merged and scored yet"):
        plan_next(recipe, run_dir, progress=False)
    # The user merges the plan elsewhere and scores everything.
    models = {}
    for spec in recipe.models:
        r = stand_in_evaluate(spec.path, recipe.evaluation)
        models[spec.display_name] = {"scores": r.scores}
    for c in first["children"]:
        out = merge_yaml(Path(c["yaml_file"]).read_text(), tmp_path / "elsewhere" / c["name"])
        models[c["name"]] = {"path": str(out),
                             "scores": stand_in_evaluate(out, recipe.evaluation).scores}
    scores_file = tmp_path / "scores.yaml"
    scores_file.write_text(yaml.safe_dump({"format": 1, "models": models}))
    second = plan_next(recipe, run_dir, scores_file=scores_file, progress=False)
    assert second["generation"] == 2 and second["scored"]
    assert any(c["exploration"] for c in second["children"])
    for c in second["children"]:
        validate_yaml(Path(c["yaml_file"]).read_text())
    # Scores given for generation 1 equal what evolve found, so the plan equals its generation 2
    # (evolve orients generation 1 by fitness; this plan had no scores yet, so only if the
    # recipe order happened to agree do the ids match).
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"models": {"child0": {"scores": {"skill0": 0.5}}}}))
    with pytest.raises(UserError, match="no score for skill1"):
        plan_next(recipe, run_dir, scores_file=bad, progress=False)
    for value, why in ((None, "is not a number"), ("high", "is not a number"),
                       (float("nan"), "is not a finite number"), (True, "is not a number"),
                       (1.7, "is outside [0, 1], the range of acc"),
                       (-0.1, "is outside [0, 1], the range of acc")):
        bad.write_text(yaml.safe_dump({"models": {"child0": {"scores": {
            "skill0": 0.5, "skill1": value, "skill2": 0.5}}}}))
        with pytest.raises(UserError, match=re.escape("models.child0.scores.skill1: ") + ".*"
                           + re.escape(why)) as err:
            plan_next(recipe, run_dir, scores_file=bad, progress=False)
        assert str(err.value).startswith(str(bad))


def test_compare_at_equal_merges(tiny, clean, tmp_path):
    from mergekit_kinship.comparison import best_at, compare_summaries

    _, kinship_summary = clean
    greedy_dir = tmp_path / "greedy"
    runner = CliRunner()
    result = runner.invoke(main, ["evolve", str(tiny["recipe"]), "--run-dir", str(greedy_dir),
                                  "--strategy", "greedy", "--evaluator", STAND_IN])
    assert result.exit_code == 0, result.output
    assert "generation 1: 3 children" in result.output and "stopped:" in result.output
    greedy_summary = json.loads((greedy_dir / "summary.json").read_text())
    assert not any(m["exploration"] for m in greedy_summary["models"].values())
    typed = {k: parse_summary(v) for k, v in (("kinship", kinship_summary), ("greedy", greedy_summary))}
    comparison = compare_summaries(typed)
    n = comparison["at_merges"]
    assert n == min(kinship_summary["merges"], greedy_summary["merges"])
    for row, s in zip(comparison["runs"], (kinship_summary, greedy_summary)):
        firsts = [c for g in s["generations"] for c in g["children"]][:n]
        pool = [i for i, m in s["models"].items() if m["kind"] == "foundation"] + firsts
        assert row["best_at_merges"] == max(s["models"][i]["fitness"] for i in pool)
        assert best_at(parse_summary(s), n)[1] == row["best_at_merges"]
    result = runner.invoke(main, ["compare", str(clean[0]), str(greedy_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["at_merges"] == n
    # compare RECIPE: one run per strategy at the same budget; scores are shared by content.
    result = runner.invoke(main, ["compare", str(tiny["recipe"]), "--run-dir",
                                  str(tmp_path / "cmp"), "--strategies", "kinship,random",
                                  "--merges", "5", "--evaluator", STAND_IN])
    assert result.exit_code == 0, result.output
    table = result.stdout.splitlines()
    assert table[0].startswith("best@5: the fittest of each run's foundation models")
    assert "references (the same evaluation, no search):" in table
    random_run = json.loads((tmp_path / "cmp" / "random" / "summary.json").read_text())
    assert random_run["merges"] == 5 and random_run["stopped"] == "max merges"
    scored = {e["model"] for e in events(tmp_path / "cmp" / "random", "scored")}
    assert not scored & {"child0", "child1", "child2"}  # foundation scores came from kinship/


def test_builtin_family_kinship_run_beats_every_foundation_model(tmp_path, monkeypatch):
    """The evidence: the built-in recipe as shipped (real lm-eval on the full tasks; with a
    `limit` the first items favour one foundation model and the claim does not hold), on the
    family this test builds or finds in the cache, as the demo runs it. Strategy
    kinship runs to its stopping rule on CPU (not to a generation or merge budget) and its best
    child beats every foundation model on the average fitness. About 3 minutes on 2 cores."""
    from mergekit_kinship.recipe import parse_recipe
    from mergekit_kinship.zoo import build_family, builtin_recipe

    family = build_family(progress=False)
    recipe = parse_recipe(builtin_recipe(family), tmp_path, "built-in recipe (test)")
    summary = _evolve(recipe, tmp_path / "run", progress=False).to_json()  # the real lm-eval
    # stopped by a rule of the search (top-k unchanged, or the recipe's saturation), not a budget
    assert summary["stopped"] in ("top-k unchanged", "saturation")
    models = summary["models"]
    best = models[summary["best"]]
    assert best["kind"] == "child"
    foundation = [m["fitness"] for m in models.values() if m["kind"] == "foundation"]
    assert best["fitness"] > max(foundation)
    assert any(m["exploration"] for m in models.values())


def test_compare_without_strategies_is_one_line(tiny, tmp_path):
    result = CliRunner().invoke(main, ["compare", str(tiny["recipe"]), "--run-dir",
                                       str(tmp_path / "cmp"), "--strategies", " , "])
    assert result.exit_code == 2 and "--strategies: name at least one" in result.output


def test_hub_model_identity_is_the_snapshot_commit(tiny, tmp_path, monkeypatch):
    """A hub model on a branch that moves gets a new identity (so new scores, kinship, children),
    not the same 'org/name@main' for other weights."""
    import huggingface_hub

    from mergekit_kinship.run_cache import RunCache

    snapshots = {}
    for sha in ("a" * 40, "b" * 40):
        snapshots[sha] = tmp_path / "models--org--child0" / "snapshots" / sha
        shutil.copytree(tiny["root"] / "fam" / "child0", snapshots[sha])
    current = ["a" * 40]
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, revision=None, **_: str(snapshots[current[0]]))
    recipe = load_recipe(tiny["recipe"])
    spec = recipe.models[0].model_copy(update={"path": None, "hub": "org/child0"})
    cache = RunCache(RunDir(tmp_path / "run").create(), fingerprint={})
    assert cache.identity(spec) == "hub:org/child0@" + "a" * 40
    current[0] = "b" * 40
    assert cache.identity(spec) == "hub:org/child0@" + "b" * 40


def test_compare_a_corrupt_summary_is_one_line(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text('{"format": 1, "mod')
    result = CliRunner().invoke(main, ["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert result.exit_code == 2 and "summary.json: not valid JSON" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_plan_then_evolve_in_one_directory_make_the_same_children(tiny, tmp_path):
    """plan records the generation it wrote; evolve on the same directory merges those very
    children (same ids), instead of re-planning generation 1 in another parent order."""
    recipe = load_recipe(tiny["recipe"])
    run_dir = tmp_path / "both"
    planned = plan_next(recipe, run_dir, progress=False)
    summary = evolve(recipe, run_dir, progress=False)
    assert summary["generations"][0]["children"] == [c["id"] for c in planned["children"]]
    assert [summary["models"][c["id"]]["parents"] for c in planned["children"]] == \
        [c["parents"] for c in planned["children"]]


def test_an_evaluator_that_cannot_be_imported_is_one_line(tiny, tmp_path):
    for reference, expected in (("no_such_module:score", "cannot import it"),
                                ("evolution_helpers:no_such_function", "cannot import it"),
                                ("evolution_helpers:SKILLS", "not a function")):
        result = CliRunner().invoke(main, ["evolve", str(tiny["recipe"]), "--run-dir",
                                           str(tmp_path / "run"), "--evaluator", reference])
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"Error: --evaluator {reference}: {expected}")
        assert not (tmp_path / "run").exists()


def test_scores_of_another_evaluator_are_kept_apart(tiny, clean, tmp_path):
    """The evaluator is part of what a score means: a run scored by the stand-in and the same
    run scored by lm-eval never share a score file."""
    from mergekit_kinship.evaluation.settings import evaluation_fingerprint
    from mergekit_kinship.identity import content_hash

    run_dir, s = clean
    recipe = load_recipe(tiny["recipe"])
    lm_eval_key = content_hash({"model": s["models"]["child0"]["identity"],
                                "evaluation": evaluation_fingerprint(recipe.evaluation)})
    assert not (run_dir / "scores" / f"{lm_eval_key}.json").exists()
    assert len(list((run_dir / "scores").glob("*.json"))) == len(s["models"]) + len(s["references"])
