"""The recipe schema: defaults, errors that name their field, paths relative to the recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mergekit_kinship.errors import UserError
from mergekit_kinship.merge_methods import method_info, two_parent_methods
from mergekit_kinship.recipe import PAPER_SLERP_T, load_recipe, parse_recipe

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
    (minimal(merge={"method": "ties", "parameters": {"densty": 0.5},
                    "model_parameters": {"weight": 0.5}}),
     "merge.parameters.densty: not a parameter of ties; did you mean 'density'?"),
    (minimal(merge={"method": "ties", "model_parameters": {"weight": 0.5, "t": 0.5}}),
     "merge.model_parameters.t: not a per-model parameter of ties"),
    (minimal(merge={"method": "slerp", "model_parameters": {"weight": 0.5},
                    "parameters": {"t": 0.5}}), "merge.model_parameters.weight"),
    (minimal(merge={"method": "slerp", "parameters": {}}), "needs parameter 't'"),
    (minimal(merge={"method": "slerpp"}), "merge.method: unknown merge method 'slerpp'; did you "
                                          "mean 'slerp'?"),
    (minimal(merge={"method": "passthrough"}), "merge.method: passthrough cannot merge two"),
    (minimal(merge={"method": "ties", "use_base": False, "model_parameters": {"weight": 1}}),
     "merge.use_base: ties has no optional base_model"),
    (minimal(merge={"method": "linear", "model_parameters": {"weight": 0.5}, "dtype": "fp8"}),
     "merge.dtype"),
    (minimal(strategy="genetic"), "genetic"),
    (minimal(metric="kl"), "metric: unknown metric 'kl'"),
    (minimal(models=["./a"]), "models"),
    (minimal(top_k=1), "top_k"),
    (minimal(models=["./x/a", "./y/a"]), "named 'a'"),
    (minimal(models=[{"path": "./a", "hub": "org/a"}, "./b"]), "exactly one"),
])
def test_errors_name_the_field(tmp_path, data, field):
    with pytest.raises(UserError) as err:
        parse_recipe(data, tmp_path, source="r.yaml")
    message = str(err.value)
    assert field in message and message.startswith("r.yaml: ") and "\n" not in message


@pytest.mark.parametrize("data, message", [
    (minimal(stoping={"max_generations": 3}), "stoping: unknown key; did you mean 'stopping'?"),
    (minimal(topk=3), "topk: unknown key; did you mean 'top_k'?"),
    (minimal(merge={"paramters": {"t": 0.5}}),
     "merge.paramters: unknown key; did you mean 'parameters'?"),
    # the misspelled key is also a missing 'tasks': the one error reported is the user's key
    ({"base": "./base", "models": ["./a", "./b"], "evaluation": {"task": ["x"]}},
     "evaluation.task: unknown key; did you mean 'tasks'?"),
    (minimal(evaluation={"tasks": ["x"], "fewshot": 5}),
     "evaluation.fewshot: unknown key; did you mean 'num_fewshot'?"),
    (minimal(stopping={"max_generation": 3}),
     "stopping.max_generation: unknown key; did you mean 'max_generations'?"),
    (minimal(models=[{"pth": "./a"}, "./b"]), "models.0.pth: unknown key; did you mean 'path'?"),
    (minimal(merge={"tokenizer": {"sorce": "union"}}),
     "merge.tokenizer.sorce: unknown key; did you mean 'source'?"),
    (minimal(merge={"parameters": {"t": [{"filtr": "mlp", "value": 0.5}]}}),
     "merge.parameters.t.0.filtr: unknown key; did you mean 'filter'?"),
    (minimal(zzzz=1), "zzzz: unknown key (valid: base, evaluation, merge, metric, models, references, seed, "
                      "stopping, strategy, top_k)"),
])
def test_unknown_keys_name_the_closest_valid_key(tmp_path, data, message):
    with pytest.raises(UserError) as err:
        parse_recipe(data, tmp_path, source="recipe.yaml")
    text = str(err.value)
    assert text.startswith("recipe.yaml: " + message), text
    assert "Extra inputs" not in text and "\n" not in text
    if "evaluation.task:" in message:
        assert "more)" not in text


@pytest.mark.parametrize("alias, name", [("pcc", "pcc"), ("cs", "cosine"), ("ed", "euclidean"),
                                         ("cosine", "cosine"), ("Euclidean", "euclidean"),
                                         ("pearson", "pcc")])
def test_metric_takes_one_vocabulary_and_keeps_the_canonical_name(tmp_path, alias, name):
    """Recipes written with the paper's cs / ed keep loading; what is stored is canonical."""
    recipe = load_recipe(write(tmp_path, minimal(metric=alias)))
    assert recipe.metric == name and recipe.to_dict()["metric"] == name


def test_every_two_parent_method_of_mergekit_takes_its_parameters(tmp_path):
    methods = two_parent_methods()
    assert {"slerp", "linear", "ties", "dare_ties", "nuslerp"} <= set(methods)
    for name, info in methods.items():
        params = {p: 0.5 for p in info.required}
        recipe = parse_recipe(minimal(merge={"method": name, "parameters": params}), tmp_path)
        assert recipe.merge.spec == info


def test_base_roles_per_method(tmp_path):
    role = lambda merge: parse_recipe(minimal(merge=merge), tmp_path).merge.base_role  # noqa: E731
    assert role({"method": "slerp", "parameters": {"t": 0.5}}) == "parent_a"
    assert role({"method": "linear", "parameters": {"weight": 0.5}}) == "none"
    for m in ("task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "della"):
        assert role({"method": m, "parameters": {"weight": 0.5}}) == "ancestor"
    assert role({"method": "model_stock"}) == "ancestor"
    for m in ("nuslerp", "multislerp"):  # the base is optional: use_base decides
        assert role({"method": m, "parameters": {"weight": 0.5}}) == "ancestor"
        assert role({"method": m, "parameters": {"weight": 0.5}, "use_base": False}) == "none"
        assert role({"method": m, "parameters": {"weight": 0.5}, "use_base": True}) == "ancestor"
    assert role({"method": "nearswap", "parameters": {"t": 0.5}}) == "parent_a"


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
    bad.write_text("- a list\n")
    with pytest.raises(UserError, match="mapping"):
        load_recipe(bad)


@pytest.mark.parametrize("text, where", [
    ("base: [unclosed\n", "line 2, column 1"),
    ("base: ./base\nmodels:\n  - ./a\n   bad: x\n", "line 4, column 7"),
    ("base: ./base\nmetric:\tpcc\n", "line 2, column 8"),
])
def test_yaml_syntax_errors_give_pyyaml_line_and_column(tmp_path, text, where):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(yaml.MarkedYAMLError) as raw:
        yaml.safe_load(text)
    mark = raw.value.problem_mark
    assert where == f"line {mark.line + 1}, column {mark.column + 1}"  # as PyYAML reports it
    with pytest.raises(UserError) as err:
        load_recipe(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {where}: not valid YAML: {raw.value.problem}"), message
    assert "\n" not in message


# mergekit has no unregister: the fixture takes back what a test added to its registry.
@pytest.fixture
def register_in_mergekit():
    from mergekit.merge_methods import registry

    added = []

    def register(name, parameters, **contract):
        from mergekit.merge_methods.base import (
            FunctionalGroupMergeMethod, InputContract, MergeMethodSpec)

        spec = MergeMethodSpec(name=name, parameters=tuple(parameters),
                               contract=InputContract(**contract))
        first = lambda group, **_: group.entries[0].tensor  # noqa: E731 (never run here)
        registry.register(FunctionalGroupMergeMethod(spec, first))
        added.append(name)

    yield register
    for name in added:
        registry._METHODS.pop(name, None)


def test_a_method_mergekit_adds_is_taken_without_an_edit_here(tmp_path, register_in_mergekit):
    from mergekit.merge_methods.base import BasePolicy, ParameterScope, ParameterSpec

    scale = ParameterSpec("scale", float, ParameterScope.INPUT)  # required, base included
    shift = ParameterSpec("shift", float, ParameterScope.SHARED, default=0.0)
    register_in_mergekit("kinship_test_delta", [scale, shift], base=BasePolicy.REQUIRED)
    register_in_mergekit("kinship_test_pair", [shift], base=BasePolicy.FORBIDDEN)
    register_in_mergekit("kinship_test_single", [], base=BasePolicy.IGNORED, max_inputs=1)

    merge = {"method": "kinship_test_delta", "parameters": {"scale": 0.5, "shift": 0.1}}
    template = parse_recipe(minimal(merge=merge), tmp_path).merge
    assert template.base_role == "ancestor"
    assert (template.spec.shared, template.spec.per_model, template.spec.required) == (
        {"shift"}, {"scale"}, {"scale"})
    # mergekit binds an `input` parameter for base_model too: per parent only is not enough
    with pytest.raises(UserError, match="model_parameters.scale: kinship_test_delta also needs "
                                        "it for base_model"):
        parse_recipe(minimal(merge={"method": "kinship_test_delta",
                                    "model_parameters": {"scale": 0.5}}), tmp_path)
    with pytest.raises(UserError, match="merge.parameters.shfit: not a parameter of "
                                        "kinship_test_delta; did you mean 'shift'"):
        parse_recipe(minimal(merge={**merge, "parameters": {"scale": 1, "shfit": 1}}), tmp_path)
    pair = parse_recipe(minimal(merge={"method": "kinship_test_pair"}), tmp_path).merge
    assert pair.base_role == "none" and not pair.spec.random
    with pytest.raises(UserError, match="kinship_test_single cannot merge two models"):
        parse_recipe(minimal(merge={"method": "kinship_test_single"}), tmp_path)
    assert "kinship_test_single" not in two_parent_methods()
    assert {"kinship_test_delta", "kinship_test_pair"} <= set(two_parent_methods())


def test_registry_agrees_with_mergekit():
    """What we read from mergekit's specs is what mergekit does. The roles the paper, the README
    and the built-in recipe rely on are pinned; for every two-parent method, mergekit's own
    kernel merges tensors laid out as the method's base role says, given only the required
    parameters, and draws from torch's generator exactly when ``random`` says so (the recipe
    seed then goes to mergekit and into the child's identity)."""
    import torch
    from mergekit.merge_methods import merge_tensors

    methods = two_parent_methods()
    pinned = {"slerp": ("parent_a", {"t"}), "linear": ("none", {"weight"}),
              "nuslerp": ("optional", {"weight"}), "task_arithmetic": ("ancestor", {"weight"}),
              "ties": ("ancestor", {"weight"}), "dare_ties": ("ancestor", {"weight"}),
              "della": ("ancestor", {"weight"})}
    assert {name: (methods[name].base, methods[name].required) for name in pinned} == pinned
    assert methods["slerp"].shared == {"t"} and not methods["slerp"].per_model
    assert {"weight", "density"} <= methods["ties"].per_model
    assert method_info("slerp") == methods["slerp"]

    gen = torch.Generator().manual_seed(0)
    ancestor = torch.randn(1000, 1001, generator=gen)  # over 1e6 values: arcee_fusion samples
    a, b = (ancestor + 0.1 * torch.randn(ancestor.shape, generator=gen) for _ in range(2))
    layouts = {"ancestor": ([ancestor, a, b], 0), "parent_a": ([a, b], 0), "none": ([a, b], None)}
    for name, info in methods.items():
        params = {p: 0.5 for p in info.required}
        if "density" in info.per_model:
            params["density"] = 0.5  # DARE and DELLA sample only when they drop something
        for role in (("ancestor", "none") if info.base == "optional" else (info.base,)):
            tensors, base = layouts[role]
            before = torch.random.get_rng_state()
            merged = merge_tensors(tensors, name, parameters=params, base_index=base)
            drew = not torch.equal(before, torch.random.get_rng_state())
            assert merged.shape == a.shape and torch.isfinite(merged).all(), (name, role)
            assert drew == info.random, (name, role, drew)


def test_builtin_family_recipe_follows_the_zoo(tmp_path):
    """The built-in recipe is one file of the package: it names the zoo's models and tasks,
    carries the demo's settings, ships as package data, and builtin_recipe() replaces only the
    family's paths in it (a stand-in family: nothing is built)."""
    import tomllib
    from fnmatch import fnmatch

    from mergekit_kinship.zoo.builtin_recipe import (
        RECIPE_FILE, builtin_recipe, evaluation_settings, recipe_template, write_recipe)
    from mergekit_kinship.zoo.family import TASKS_DIR, Family, default_stages
    from mergekit_kinship.zoo.skills import SKILLS

    template = recipe_template()
    stages = [s.name for s in default_stages()]
    assert template["base"] == stages[0] == "base"
    assert template["models"] == stages[1:]  # every child of the base and the grandchild
    assert template["evaluation"]["tasks"] == [f"kinship_{s}" for s in SKILLS]

    members = {n: tmp_path / n for n in stages}
    family = Family(root=tmp_path, base=members["base"],
                    children={n: members[n] for n in SKILLS}, grandchildren={
                        n: members[n] for n in stages[1:] if n not in SKILLS},
                    parent={}, skill_of={}, task_names=[])
    data = builtin_recipe(family)
    assert data["base"] == str(tmp_path / "base")
    assert data["models"] == [str(tmp_path / n) for n in stages[1:]]
    assert data["evaluation"]["include_path"] == str(TASKS_DIR.resolve())
    assert data["evaluation"] == evaluation_settings()
    unchanged = {k: v for k, v in template.items() if k not in ("base", "models", "evaluation")}
    assert {k: v for k, v in data.items() if k in unchanged} == unchanged
    assert {k: v for k, v in data["evaluation"].items() if k != "include_path"} == {
        k: v for k, v in template["evaluation"].items() if k != "include_path"}

    recipe = parse_recipe(data, tmp_path, "built-in recipe")  # the demo's settings
    assert (recipe.top_k, recipe.strategy, recipe.metric, recipe.seed) == (3, "kinship", "pcc", 0)
    assert (recipe.merge.method, recipe.merge.dtype) == ("slerp", "float32")
    assert recipe.merge.model_dump()["parameters"] == parse_recipe(
        minimal(), tmp_path).merge.model_dump()["parameters"]  # the paper's t template
    ev = recipe.evaluation
    assert (ev.num_fewshot, ev.batch_size, ev.model_args) == (0, 32, {"dtype": "float32"})
    assert all(ev.metric_for(t) == "acc" for t in ev.tasks)
    assert (recipe.stopping.max_generations, recipe.stopping.saturation) == (8, 0.95)

    # Written into the family folder as recipe.yaml, and refreshed when stale.
    written = write_recipe(family)
    assert written == tmp_path / "recipe.yaml"
    assert yaml.safe_load(written.read_text()) == data
    written.write_text("stale")
    write_recipe(family)
    assert yaml.safe_load(written.read_text()) == data
    # A family without a member the recipe names gets no recipe, and builtin_recipe says why.
    del family.grandchildren["reverse_sort"]
    (tmp_path / "recipe.yaml").unlink()
    assert write_recipe(family) is None and not (tmp_path / "recipe.yaml").exists()
    with pytest.raises(UserError, match="names 'reverse_sort', which this family does not have"):
        builtin_recipe(family)

    # Shipped: the package data of pyproject.toml covers the file (a wheel carries it).
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["mergekit_kinship"]
    relative = RECIPE_FILE.relative_to(REPO / "mergekit_kinship").as_posix()
    assert any(fnmatch(relative, p) for p in patterns), patterns
    assert not (REPO / "recipes" / "builtin-family.yaml").exists()  # no second copy
