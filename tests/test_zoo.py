"""The built-in family (issue 3): deterministic build, real skills scored by lm-eval, kinship
that follows the family tree, a SLERP merge that gains, and the ``demo`` command."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from mergekit_kinship.cli import main
from mergekit_kinship.zoo import FamilyConfig, Stage, build_family, evaluation_settings
from mergekit_kinship.zoo.skills import (
    GENERATORS, SKILLS, eval_items, held_out_prompts, training_stream)
from mergekit_kinship.zoo.taskfiles import TASKS_DIR, task_files

# How each skill maps its input to the answer, written independently of zoo.skills.
_RULES = {
    "reverse": lambda s: s[::-1],
    "sort": lambda s: "".join(sorted(s)),
    "rotate": lambda s: s[1:] + s[0],
    "shift": lambda s: "".join(chr((ord(c) - 97 + 1) % 26 + 97) for c in s),
}


def test_shipped_tasks_match_the_generator_and_are_unambiguous():
    shipped = {p.name: p.read_text() for p in TASKS_DIR.iterdir() if p.is_file()}
    assert shipped == task_files(), "zoo/tasks is stale: run python -m mergekit_kinship.zoo.taskfiles"
    assert set(_RULES) == set(SKILLS)
    for skill in SKILLS:
        rows = [json.loads(line) for line in (TASKS_DIR / f"{skill}.jsonl").read_text().splitlines()]
        assert len(rows) == len({r["prompt"] for r in rows}) >= 50
        for row in rows:
            word = row["prompt"].split(" ", 1)[1].rstrip("=")
            assert row["choices"][row["label"]] == _RULES[skill](word), row
            assert len(set(row["choices"])) == 4, row  # no duplicate, so one right answer


def test_training_never_sees_an_evaluation_prompt():
    held_out = held_out_prompts()  # every skill of the zoo's
    assert len(held_out) == sum(len(eval_items(s)) for s in GENERATORS)
    stream = training_stream(list(SKILLS), random.Random(0), held_out)
    texts = [next(stream) for _ in range(5000)]
    assert not {p for p, _ in texts} & held_out
    assert {p.split()[0] for p, _ in texts} == {"rev", "srt", "rot", "nxt"}


def _small_config(seed: int) -> FamilyConfig:
    skills = tuple(SKILLS)
    return FamilyConfig(seed=seed, batch=8, stages=(
        Stage("base", None, skills, steps=6, lr=2e-3),
        Stage("reverse", "base", ("reverse",), steps=4, lr=2e-3, replay=0.2),
        Stage("sort", "base", ("sort",), steps=4, lr=2e-3),
        Stage("reverse_sort", "reverse", ("reverse", "sort"), steps=3, lr=1e-3),
    ))


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def test_same_seed_same_weights_and_cache_reuse(tmp_path):
    a = build_family(tmp_path / "a", config=_small_config(0), progress=False)
    b = build_family(tmp_path / "b", config=_small_config(0), progress=False)
    c = build_family(tmp_path / "c", config=_small_config(1), progress=False)
    assert list(a.models) == ["reverse", "sort", "reverse_sort"] == list(b.models)
    assert a.parent == {"reverse": "base", "sort": "base", "reverse_sort": "reverse"}
    assert a.config_hash == b.config_hash != c.config_hash
    for name in ["base", *a.models]:
        wa, wb = _weights(a.root / name), _weights(b.root / name)
        assert wa.keys() == wb.keys()
        assert all(wa[k].equal(wb[k]) for k in wa), name
    wc = _weights(c.root / "base")
    assert not all(wc[k].equal(v) for k, v in _weights(a.base).items())

    stamp = (a.base / "model.safetensors").stat().st_mtime_ns
    again = build_family(tmp_path / "a", config=_small_config(0), progress=False)
    assert again.root == a.root and (a.base / "model.safetensors").stat().st_mtime_ns == stamp
    # Same folder, other recipe: rebuilt, not reused because the folder exists.
    rebuilt = build_family(tmp_path / "a", config=_small_config(1), progress=False)
    assert rebuilt.config_hash == c.config_hash
    assert all(v.equal(_weights(c.base)[k]) for k, v in _weights(rebuilt.base).items())


def test_refuses_a_folder_that_is_not_a_family(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, ["demo", "--quiet", "--out", str(tmp_path / "out"),
                                       "--family-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "Error:" in result.output and str(tmp_path) in result.output
    assert (tmp_path / "notes.txt").read_text() == "mine"
    blocked = CliRunner().invoke(main, ["demo", "--quiet", "--out", str(tmp_path / "out"),
                                        "--family-dir", str(tmp_path / "notes.txt" / "family")])
    assert blocked.exit_code == 2, blocked.output
    assert "cannot create the family's folder" in blocked.output


def _score(path: Path, task_manager, family: str = "builtin") -> dict[str, float]:
    """lm-eval accuracy of the model at ``path`` on ``family``'s tasks (test_zoo_digits uses it)."""
    import lm_eval

    from mergekit_kinship.zoo.train import single_threaded

    settings = evaluation_settings(family)
    # One thread: on a busy 2-core machine a ~250k-parameter model scores 5-10x faster than with
    # torch's default thread pool fighting other processes.
    with single_threaded():
        out = lm_eval.simple_evaluate(
            model="hf", model_args=f"pretrained={path},dtype=float32", tasks=settings["tasks"],
            task_manager=task_manager, num_fewshot=settings["num_fewshot"], batch_size=64,
            device="cpu",
        )
    return {t: out["results"][t][settings["metrics"][t] + ",none"] for t in settings["tasks"]}


@pytest.fixture(scope="module")
def scores(family):
    """lm-eval accuracy of the base and every member of the family, per task."""
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    tm = TaskManager(include_path=str(family.tasks_dir), include_defaults=False)
    return {name: _score(path, tm) for name, path in {"base": family.base, **family.models}.items()}, tm


def test_each_child_is_best_at_its_own_skill(family, scores):
    scores, _ = scores
    assert len(family.children) >= 4 and len(family.grandchildren) >= 1
    assert sorted(family.skill_of.values()) == sorted(family.task_names)
    for child, task in family.skill_of.items():
        own = scores[child][task]
        assert own >= scores["base"][task] + 0.05, (child, own, scores["base"][task])
        assert all(own > scores[other][task] for other in family.children if other != child), child
    # No model is best at everything, so the mean over skills is a fitness merging can raise.
    for name, s in scores.items():
        assert any(s[t] < max(o[t] for o in scores.values()) for t in family.task_names), name


def test_grandchild_is_more_akin_to_its_parent_than_siblings_are(family):
    from mergekit_kinship.streaming_kinship import kinship_matrix

    names = list(family.models)
    pcc = kinship_matrix([str(family.models[n]) for n in names], str(family.base),
                         metrics=("pcc",), progress=False).values["pcc"]
    (grandchild, parent), = [(g, family.parent[g]) for g in family.grandchildren]
    own = pcc[names.index(grandchild)][names.index(parent)]
    siblings = [pcc[names.index(a)][names.index(b)] for a in family.children
                for b in family.children if a < b]
    assert own > max(siblings), (own, siblings)
    assert all(0.0 < s < 0.9 for s in siblings), siblings  # related (one base) yet distinct


def test_slerp_of_two_children_beats_their_mean(family, scores, tmp_path):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    scores, tm = scores
    a, b = "rotate", "shift"
    config = MergeConfiguration.model_validate({
        "merge_method": "slerp", "base_model": str(family.children[a]),
        "models": [{"model": str(family.children[b])}], "parameters": {"t": 0.5}, "dtype": "float32",
    })
    run_merge(config, str(tmp_path / "merged"), options=MergeOptions(copy_tokenizer=True))
    merged = _score(tmp_path / "merged", tm)

    def fitness(s):
        return sum(s.values()) / len(s)

    assert fitness(merged) > (fitness(scores[a]) + fitness(scores[b])) / 2 + 0.03
    assert fitness(merged) > max(fitness(scores[n]) for n in family.children)


def test_demo_prints_the_family_kinship(family, tmp_path):
    result = CliRunner().invoke(main, ["demo", "--json", "--quiet", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "it/s" not in result.stderr  # --quiet: no bar, lm-eval's and datasets' included
    summary = json.loads(result.stdout)
    assert summary["family"]["root"] == str(family.root)
    kin = summary["kinship"]
    assert kin["names"] == list(family.models)
    assert json.loads((tmp_path / "kinship.json").read_text()) == kin
    n = len(kin["names"])
    assert all(kin["values"][i][i] == pytest.approx(1.0) for i in range(n))
    assert all(kin["values"][i][j] == kin["values"][j][i] for i in range(n) for j in range(n))

    table = CliRunner().invoke(main, ["demo", "--quiet", "--out", str(tmp_path)])
    assert table.exit_code == 0 and "reverse_sort" in table.stdout and "{" not in table.stdout

    # The best child descends from merges that --keep survivors pruned: mergekit-multi rebuilds
    # it from its lineage file alone, bit for bit (issue 11).
    from test_lineage_file import assert_rebuilds_bit_for_bit

    from mergekit_kinship.summary import load_summary

    best = load_summary(tmp_path / "run").best
    assert_rebuilds_bit_for_bit(tmp_path / "run", best, tmp_path / "rebuild")


def test_demo_refuses_an_out_holding_another_familys_run(family, tmp_path):
    """A demo run of another family (another --seed) under --out is one line that names --out
    (evolve's advice, a new --run-dir, is not a demo option), and kinship.json is left alone."""
    import yaml

    from mergekit_kinship.commands.demo import _check_out_holds_this_family
    from mergekit_kinship.recipe import parse_recipe
    from mergekit_kinship.zoo import builtin_recipe

    same = parse_recipe(builtin_recipe(family), tmp_path).to_dict()
    other = dict(same, seed=same["seed"] + 1)  # any search field of another family's run
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recipe.yaml").write_text(yaml.safe_dump(same))
    _check_out_holds_this_family(family, tmp_path)  # the demo's own run: resumed, not refused
    (tmp_path / "run" / "recipe.yaml").write_text(yaml.safe_dump(other))
    (tmp_path / "kinship.json").write_text("earlier")
    result = CliRunner().invoke(main, ["demo", "--quiet", "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert f"Error: --out {tmp_path}: holds the demo run of another family" in result.output
    assert "--run-dir" not in result.output
    assert (tmp_path / "kinship.json").read_text() == "earlier"


def test_build_family_writes_the_builtin_recipe_ready_for_plan(family, tmp_path):
    """build_family leaves the built-in recipe, with the family's paths, in the family folder;
    `plan --dry-run` takes it as it is, through the CLI."""
    import yaml

    from mergekit_kinship.zoo import builtin_recipe

    path = family.root / "recipe.yaml"
    assert yaml.safe_load(path.read_text()) == builtin_recipe(family)
    result = CliRunner().invoke(main, ["plan", str(path), "--run-dir", str(tmp_path / "run"),
                                       "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"recipe OK: {path}" in result.output
    for name, folder in family.models.items():  # every child and the grandchild, all built
        assert f"foundation: {name} = {folder}" in result.output
    assert "generation 1 merges 10 pairs" in result.output
    assert "not built yet" not in result.output
    assert "saturation pcc > 0.95" in result.output
    assert not (tmp_path / "run").exists()  # a dry run writes nothing
