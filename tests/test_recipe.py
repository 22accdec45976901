"""The recipe schema: defaults, errors that name their field, paths relative to the recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mergekit_kinship.errors import UserError
from mergekit_kinship.recipe import (
    MERGE_METHODS, MergeMethodSpec, PAPER_SLERP_T, load_recipe, parse_recipe, register_method)

REPO = Path(__file__).resolve().parents[1]


def minimal(**over):
    data = {"base": "./base", "models": ["./a", "./b"],
            "evaluation": {"tasks": ["arc_easy"]}}
    data.update(over)
    return data


def write(tmp_path, data, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_are_the_papers(tmp_path):
    recipe = parse_recipe(minimal(), tmp_path)
    assert (recipe.top_k, recipe.strategy, recipe.metric, recipe.seed) == (3, "kinship", "pcc", 0)
    assert recipe.merge.method == "slerp" and recipe.merge.dtype == "bfloat16"
    t = [c.model_dump(exclude_none=True) for c in recipe.merge.parameters["t"]]
    assert t == [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                 {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]}, {"value": 0.5}]
    assert PAPER_SLERP_T[0]["value"] == [0, 0.5, 0.3, 0.7, 1]
    assert recipe.merge.base_role == "parent_a"
    assert recipe.stopping.saturation is None and recipe.stopping.max_merges is None


@pytest.mark.parametrize("data, field", [
    (minimal(topk=3), "topk"),
    (minimal(merge={"method": "ties", "parameters": {"densty": 0.5},
                    "model_parameters": {"weight": 0.5}}), "densty"),
    (minimal(merge={"method": "ties", "model_parameters": {"weight": 0.5, "t": 0.5}}), "t"),
    (minimal(merge={"method": "slerp", "model_parameters": {"weight": 0.5},
                    "parameters": {"t": 0.5}}), "weight"),
    (minimal(merge={"method": "slerp", "parameters": {}}), "needs parameter 't'"),
    (minimal(merge={"method": "slerpp"}), "slerpp"),
    (minimal(merge={"method": "ties", "use_base": False, "model_parameters": {"weight": 1}}),
     "use_base"),
    (minimal(merge={"method": "linear", "model_parameters": {"weight": 0.5}, "dtype": "fp8"}),
     "merge.dtype"),
    (minimal(strategy="genetic"), "genetic"),
    (minimal(metric="kl"), "metric"),
    (minimal(models=["./a"]), "models"),
    (minimal(top_k=1), "top_k"),
    (minimal(evaluation={"tasks": ["x"], "fewshot": 5}), "evaluation.fewshot"),
    (minimal(stopping={"max_generation": 3}), "stopping.max_generation"),
    (minimal(models=["./x/a", "./y/a"]), "named 'a'"),
    (minimal(models=[{"path": "./a", "hub": "org/a"}, "./b"]), "exactly one"),
])
def test_errors_name_the_field(tmp_path, data, field):
    with pytest.raises(UserError) as err:
        parse_recipe(data, tmp_path, source="r.yaml")
    message = str(err.value)
    assert field in message and message.startswith("r.yaml: ") and "\n" not in message


def test_every_registered_method_takes_its_parameters(tmp_path):
    for name, spec in MERGE_METHODS.items():
        params = {p: 0.5 for p in spec.required}
        recipe = parse_recipe(minimal(merge={"method": name, "parameters": params}), tmp_path)
        assert recipe.merge.spec is spec


def test_base_roles_per_method(tmp_path):
    role = lambda merge: parse_recipe(minimal(merge=merge), tmp_path).merge.base_role  # noqa: E731
    assert role({"method": "slerp", "parameters": {"t": 0.5}}) == "parent_a"
    assert role({"method": "linear", "parameters": {"weight": 0.5}}) == "none"
    for m in ("task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "della"):
        assert role({"method": m, "parameters": {"weight": 0.5}}) == "ancestor"
    assert role({"method": "nuslerp", "parameters": {"weight": 0.5}}) == "ancestor"
    assert role({"method": "nuslerp", "parameters": {"weight": 0.5}, "use_base": False}) == "none"


def test_paths_are_relative_to_the_recipe_file(tmp_path, monkeypatch):
    (tmp_path / "fam" / "org" / "local").mkdir(parents=True)
    data = minimal(base="./fam/base", models=["org/local", "other/hubmodel",
                                            {"name": "x", "path": "fam/x"}],
                   evaluation={"tasks": ["t"], "include_path": "tasks"})
    data["models"][0] = "fam/org/local"  # exists beside the recipe: a folder
    path = write(tmp_path, data)
    monkeypatch.chdir("/")
    recipe = load_recipe(path)
    assert recipe.base.path == str(tmp_path / "fam" / "base")
    assert recipe.models[0].path == str(tmp_path / "fam" / "org" / "local")
    assert recipe.models[1].hub == "other/hubmodel" and recipe.models[1].path is None
    assert recipe.models[2].path == str(tmp_path / "fam" / "x")
    assert recipe.evaluation.include_path == str(tmp_path / "tasks")
    assert recipe.foundation_names == ["local", "hubmodel", "x"]


def test_load_recipe_errors(tmp_path):
    with pytest.raises(UserError, match="no such recipe"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_recipe(bad)
    bad.write_text("- a list\n")
    with pytest.raises(UserError, match="mapping"):
        load_recipe(bad)


def test_method_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_method(MergeMethodSpec("slerp", "parent_a"))


def test_registry_agrees_with_mergekit():
    """Our names, parameter scopes and base_model roles match mergekit's own method specs."""
    from mergekit.merge_methods import registry

    theirs = {m.spec.name: m.spec for m in registry.registered_methods()}
    for name, ours in MERGE_METHODS.items():
        assert name in theirs, name
        spec = theirs[name]
        params = {p.name: p for p in spec.parameters}
        assert ours.shared | ours.per_model == set(params), name
        for p in ours.per_model:
            assert params[p].scope.value in ("input", "non_base"), (name, p)
        for p in ours.shared:
            assert params[p].scope.value == "shared", (name, p)
        assert ours.required == {p for p, s in params.items() if s.required}, name
        policy = spec.contract.base.value
        expected = {"parent_a": "required", "ancestor": "required", "none": "ignored",
                    "optional": "optional"}[ours.base]
        assert policy == expected, name


def test_builtin_family_recipe_follows_the_zoo():
    """recipes/builtin-family.yaml names the zoo's current children and tasks (no build)."""
    from mergekit_kinship.zoo.family import default_stages, evaluation_settings

    data = yaml.safe_load((REPO / "recipes" / "builtin-family.yaml").read_text())
    children = [s.name for s in default_stages() if s.parent == "base"]
    assert [Path(m).name for m in data["models"]] == children
    assert Path(data["base"]).name == "base"
    assert data["evaluation"]["tasks"] == evaluation_settings()["tasks"]
    recipe = parse_recipe(data, REPO / "recipes", "builtin-family.yaml")
    assert recipe.evaluation.include_path == str(REPO / "mergekit_kinship" / "zoo" / "tasks")
    assert recipe.merge.method == "slerp" and recipe.merge.dtype == "float32"
