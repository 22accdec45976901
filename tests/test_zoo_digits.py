"""The zoo's second family, ``digits`` (issues 12, 13, 16 measure on it): skills as data of the
family, deterministic build, each child best at its own lm-eval task, kinship from about zero to
near one, and a SLERP merge that gains."""

from __future__ import annotations

import json
import logging
import random
from itertools import combinations
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from mergekit_kinship.cli import main
from mergekit_kinship.errors import UserError
from mergekit_kinship.zoo import FAMILIES, FamilyConfig, Stage, build_family, evaluation_settings
from test_zoo import _score as score_with_lm_eval
from mergekit_kinship.zoo.skills import GENERATORS, held_out_prompts, training_stream
from mergekit_kinship.zoo.taskfiles import task_files
from mergekit_kinship.zoo.train import SEQ_LEN

DIGITS = FAMILIES["digits"]

# How each skill maps its prompt's input to the answer, written independently of zoo.
_RULES = {
    "increment": lambda s: str(int(s) + 1),
    "double": lambda s: str(2 * int(s)),
    "odd": lambda s: str(sum(c in "13579" for c in s)),
    "swap": lambda s: "".join(s[i:i + 2][::-1] for i in range(0, len(s), 2)),
    "shift": lambda s: "".join(chr((ord(c) - 97 + 1) % 26 + 97) for c in s),
}


def test_shipped_digit_tasks_match_the_generator_and_are_unambiguous():
    shipped = {p.name: p.read_text() for p in DIGITS.tasks_dir.iterdir() if p.is_file()}
    assert shipped == task_files("digits"), \
        "zoo/tasks_digits is stale: run python -m mergekit_kinship.zoo.taskfiles"
    assert set(_RULES) == set(DIGITS.skills)
    for skill in DIGITS.skills:
        rows = [json.loads(line) for line in (DIGITS.tasks_dir / f"{skill}.jsonl").read_text()
                .splitlines()]
        assert len(rows) == len({r["prompt"] for r in rows}) >= 50
        for row in rows:
            word = row["prompt"].split(" ", 1)[1].rstrip("=")
            assert row["choices"][row["label"]] == _RULES[skill](word), row
            assert len(set(row["choices"])) == 4, row  # no duplicate, so one right answer
            # Same length: lm-eval's acc sums log-likelihoods, a shorter choice would be favoured.
            assert len({len(c) for c in row["choices"]}) == 1, row
    # The skill the two families share has the same items in both.
    shared = (FAMILIES["builtin"].tasks_dir / "shift.jsonl").read_text()
    assert (DIGITS.tasks_dir / "shift.jsonl").read_text() == shared


def test_skills_are_unique_across_the_zoo_and_fit_the_models_context():
    rng = random.Random(0)
    tags = {}
    for name, generate in GENERATORS.items():
        for _ in range(2000):
            prompt, answer, distractors = generate(rng)
            assert len(prompt + max([answer, *distractors], key=len)) <= SEQ_LEN, (name, prompt)
            tags.setdefault(prompt.split(" ")[0], set()).add(name)
    assert all(len(names) == 1 for names in tags.values()), tags  # one held-out set serves all
    for family in FAMILIES.values():
        assert set(family.skills) <= set(GENERATORS) and len(set(family.skills)) == len(family.skills)


def test_a_child_rehearses_its_bases_mix():
    """``replay`` draws from the base's training mix: the built-in family's four skills (as
    before the zoo had two families), the digits family's four digit skills (not ``shift``, which
    its base never saw)."""
    assert FamilyConfig().rehearsal == FAMILIES["builtin"].skills
    digit_mix = FamilyConfig(family="digits").rehearsal
    assert digit_mix == tuple(s for s in DIGITS.skills if s != "shift")
    held_out = held_out_prompts()
    assert held_out >= held_out_prompts(DIGITS.skills) | held_out_prompts(FAMILIES["builtin"].skills)
    stream = training_stream(["shift"], random.Random(0), held_out, replay=0.5, rehearsal=digit_mix)
    texts = [next(stream) for _ in range(3000)]
    assert not {p for p, _ in texts} & held_out
    tags = {p.split()[0] for p, _ in texts}
    assert tags == {GENERATORS[s](random.Random(0))[0].split()[0] for s in DIGITS.skills}
    with pytest.raises(ValueError):
        next(training_stream(["shift"], random.Random(0), held_out, replay=0.5))


def _small_digits(seed: int) -> FamilyConfig:
    return FamilyConfig(seed=seed, batch=8, family="digits", stages=(
        Stage("base", None, ("increment", "odd"), steps=6, lr=2e-3),
        Stage("increment", "base", ("increment",), steps=4, lr=2e-3, replay=0.2),
        Stage("shift", "base", ("shift",), steps=4, lr=2e-3),
        Stage("increment_odd", "increment", ("increment", "odd"), steps=3, lr=1e-3),
    ))


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def test_same_seed_same_weights_and_its_own_initialisation(tmp_path):
    a = build_family(tmp_path / "a", config=_small_digits(0), progress=False)
    b = build_family(tmp_path / "b", config=_small_digits(0), progress=False)
    assert a.name == "digits" and a.tasks_dir == DIGITS.tasks_dir
    assert a.parent == {"increment": "base", "shift": "base", "increment_odd": "increment"}
    assert a.skill_of == {"increment": "digits_increment", "shift": "digits_shift"}
    assert a.task_names == DIGITS.task_names
    assert a.config_hash == b.config_hash
    for name in ["base", *a.models]:
        wa, wb = _weights(a.root / name), _weights(b.root / name)
        assert wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa), name

    # Untrained bases: the digits family does not start where the built-in family starts, so
    # the two families share nothing but the architecture and the vocabulary.
    def untrained(family: str, skill: str) -> dict:
        config = FamilyConfig(family=family, batch=8,
                              stages=(Stage("base", None, (skill,), steps=0, lr=1e-3),))
        return _weights(build_family(tmp_path / family, config=config, progress=False).base)

    digits_init, builtin_init = untrained("digits", "odd"), untrained("builtin", "sort")
    assert not any(v.equal(digits_init[k]) for k, v in builtin_init.items() if "norm" not in k)
    assert FamilyConfig(family="digits").stages == DIGITS.stages  # its own recipe by default
    with pytest.raises(UserError, match="not all skills of the digits family"):
        FamilyConfig(family="digits", stages=(Stage("base", None, ("sort",), 1, 1e-3),))
    with pytest.raises(UserError, match="unknown family 'letters'"):
        build_family(tmp_path / "x", family="letters", progress=False)


@pytest.fixture(scope="module")
def digits():
    """The digits family, built once into default_cache_dir() (about a minute on 2 cores)."""
    return build_family(family="digits", progress=False)


def _score(path: Path, task_manager) -> dict[str, float]:
    return score_with_lm_eval(path, task_manager, "digits")


@pytest.fixture(scope="module")
def scores(digits):
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    tm = TaskManager(include_path=str(digits.tasks_dir), include_defaults=False)
    return {name: _score(path, tm) for name, path in {"base": digits.base, **digits.models}.items()}, tm


def _fitness(s: dict) -> float:
    return sum(s.values()) / len(s)


def test_each_digits_child_is_best_at_its_own_skill(digits, scores):
    scores, _ = scores
    assert list(digits.children) == list(DIGITS.skills) and len(digits.grandchildren) >= 1
    for child, task in digits.skill_of.items():
        own = scores[child][task]
        assert own >= scores["base"][task] + 0.05, (child, own, scores["base"][task])
        assert all(own > scores[other][task] for other in digits.children if other != child), child
    for name, s in scores.items():  # no model is best at everything
        assert any(s[t] < max(o[t] for o in scores.values()) for t in digits.task_names), name


def test_digits_kinship_spans_unrelated_to_near_copies(digits):
    from mergekit_kinship.streaming_kinship import kinship_matrix

    names = list(digits.models)
    pcc = kinship_matrix([str(digits.models[n]) for n in names], str(digits.base),
                         metrics=("pcc",), progress=False).values["pcc"]
    at = {(a, b): pcc[names.index(a)][names.index(b)] for a in names for b in names}
    siblings = {(a, b): at[a, b] for a, b in combinations(digits.children, 2)}
    for grandchild in digits.grandchildren:
        parent = digits.parent[grandchild]
        assert at[grandchild, parent] > 0.85 > max(siblings.values()), (grandchild, at)
    assert min(siblings.values()) < 0.05, siblings  # the letter child: about unrelated
    assert max(siblings.values()) > 0.3, siblings  # digit siblings: clearly related


def test_slerp_of_two_digits_children_beats_their_mean(digits, scores, tmp_path):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    scores, tm = scores
    a, b = "double", "swap"
    config = MergeConfiguration.model_validate({
        "merge_method": "slerp", "base_model": str(digits.children[a]),
        "models": [{"model": str(digits.children[b])}], "parameters": {"t": 0.5},
        "dtype": "float32"})
    run_merge(config, str(tmp_path / "merged"), options=MergeOptions(copy_tokenizer=True))
    merged = _fitness(_score(tmp_path / "merged", tm))
    assert merged > (_fitness(scores[a]) + _fitness(scores[b])) / 2 + 0.03
    assert merged > max(_fitness(scores[a]), _fitness(scores[b]))


def test_digits_recipe_is_the_builtin_search_on_its_members_and_tasks(digits, tmp_path):
    import yaml

    from mergekit_kinship.zoo import builtin_recipe
    from mergekit_kinship.zoo.builtin_recipe import recipe_template

    path = digits.root / "recipe.yaml"
    data = yaml.safe_load(path.read_text())
    assert data == builtin_recipe(digits)
    assert data["base"] == str(digits.base)
    assert data["models"] == [str(p) for p in digits.models.values()]
    assert data["evaluation"] == evaluation_settings("digits")
    assert data["evaluation"]["tasks"] == DIGITS.task_names
    assert data["evaluation"]["include_path"] == str(DIGITS.tasks_dir)
    template = recipe_template()
    for key in ("top_k", "strategy", "metric", "merge", "stopping", "seed"):
        assert data[key] == template[key], key
    result = CliRunner().invoke(main, ["plan", str(path), "--run-dir", str(tmp_path / "run"),
                                       "--dry-run"])
    assert result.exit_code == 0, result.output
    for name, folder in digits.models.items():
        assert f"foundation: {name} = {folder}" in result.output
    n = len(digits.models)
    assert f"generation 1 merges {n * (n - 1) // 2} pairs" in result.output
