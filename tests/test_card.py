"""Model cards: Hub-valid metadata, the whole lineage, scores against parents, the exact YAML."""

import json
import re
import shutil
from pathlib import Path

import yaml

import pytest
from click.testing import CliRunner

from mergekit_kinship.card import build_card, write_card, write_cards
from mergekit_kinship.card_metadata import hub_ancestors
from mergekit_kinship.cli import main
from mergekit_kinship.errors import UserError
from mergekit_kinship.lineage_file import lineage_yaml
from mergekit_kinship.summary import RunSummary, load_summary


def slerp_yaml(a: str, b: str) -> str:
    return (f"# child of {a} x {b}\nmerge_method: slerp\nbase_model: /runs/x/models/{a}\n"
            f"models:\n  - model: /runs/x/models/{b}\nparameters:\n  t: 0.5\ndtype: float32\n")


def synthetic_summary(run_dir: Path) -> dict:
    """A three-generation kinship run over three foundation models, shaped as the evolution engine
    writes it (summary format 1): greedy merges, one exploration merge per generation, a grandchild
    whose two parents share ancestors. Weights of two children are "kept" (folders exist)."""
    models = {}

    def foundation(model_id, hub_id, scores):
        models[model_id] = {"name": model_id.split("/")[-1], "path": f"/hub/{model_id}", "kind": "foundation",
                            "hub_id": hub_id, "generation": 0, "parents": [], "exploration": False,
                            "method": None, "yaml": None, "parents_kinship": None,
                            "scores": scores, "fitness": sum(scores.values()) / 2, "gain": None}

    def child(model_id, generation, a, b, kinship, scores, exploration=False, kept=False):
        fitness = sum(scores.values()) / 2
        path = None
        if kept:
            path = run_dir / "models" / model_id
            path.mkdir(parents=True)
        models[model_id] = {"name": f"kin-{model_id}", "path": str(path) if path else None, "kind": "child",
                            "hub_id": None, "generation": generation, "parents": [a, b],
                            "exploration": exploration, "method": "slerp", "yaml": slerp_yaml(a, b),
                            # as evolve records them: PCC and sign conflict of the parents
                            "parents_kinship": {"pcc": kinship, "sign_conflict": round(0.5 - kinship / 3, 4)},
                            "scores": scores, "fitness": fitness,
                            "gain": fitness - (models[a]["fitness"] + models[b]["fitness"]) / 2}

    foundation("math", "org/math-7b", {"arith": 0.90, "words": 0.30})
    foundation("code", "org/code-7b", {"arith": 0.40, "words": 0.50})
    foundation("chat", None, {"arith": 0.35, "words": 0.85})  # a local fine-tune: no hub id
    child("g1a", 1, "math", "code", 0.12, {"arith": 0.80, "words": 0.55})
    child("g1b", 1, "math", "chat", 0.05, {"arith": 0.75, "words": 0.70})
    child("g1c", 1, "code", "chat", 0.21, {"arith": 0.45, "words": 0.80})
    child("g2a", 2, "g1b", "g1a", 0.62, {"arith": 0.82, "words": 0.68})
    child("g2b", 2, "g1b", "g1c", 0.55, {"arith": 0.66, "words": 0.82})
    child("g2c", 2, "g1a", "g1c", 0.58, {"arith": 0.70, "words": 0.71})
    child("g2x", 2, "g1b", "code", 0.08, {"arith": 0.62, "words": 0.66}, exploration=True)
    child("g3a", 3, "g2a", "g2b", 0.88, {"arith": 0.80, "words": 0.80}, kept=True)
    child("g3x", 3, "g2a", "g2x", 0.31, {"arith": 0.85, "words": 0.79}, exploration=True, kept=True)
    ids = list(models)
    rng = __import__("random").Random(0)
    matrix = [[1.0 if i == j else None for j in ids] for i in ids]
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            matrix[i][j] = matrix[j][i] = round(rng.uniform(-0.1, 0.95), 3)
    summary = {
        "format": 1, "recipe": {"top_k": 3}, "strategy": "kinship", "top_k": 3, "metric": "pcc",
        "base": {"name": "base-7b", "path": "/hub/base", "hub_id": "org/base-7b"},
        "evaluation": {"tasks": ["arith", "words"], "include_path": "/tasks", "metrics": {}, "weights": {},
                       "num_fewshot": 0, "limit": None, "batch_size": 1, "apply_chat_template": False,
                       "backend": "hf", "model_args": {}, "device": None},
        "models": models,
        "generations": [
            {"index": 1, "children": ["g1a", "g1b", "g1c"], "top_k": ["g1b", "g1a", "g1c"], "best": "g1b",
             "best_fitness": 0.725, "mean_fitness": 0.675, "top_k_mutual_pcc": 0.46},
            {"index": 2, "children": ["g2a", "g2b", "g2c", "g2x"], "top_k": ["g2b", "g2a", "g1b"],
             "best": "g2b", "best_fitness": 0.74, "mean_fitness": 0.735, "top_k_mutual_pcc": 0.71},
            {"index": 3, "children": ["g3a", "g3x"], "top_k": ["g3x", "g3a", "g2b"], "best": "g3x",
             "best_fitness": 0.82, "mean_fitness": 0.793, "top_k_mutual_pcc": 0.93},
        ],
        "pool_kinship": {"names": ids, "pcc": matrix},
        "saturation_threshold": None, "stopped": "top-k unchanged", "best": "g3x",
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


_FINISHED_RUNS: dict[str, Path] = {}


def finished_run(tmp_path_factory) -> Path:
    """A real run directory: ``evolve`` (mergekit merges, kinship engine) on a tiny Llama family
    to its stopping rule, scored by the deterministic stand-in evaluator of the evolution tests
    (lm-eval on every child would cost minutes). Built once per test session (~15 s)."""
    if "run" not in _FINISHED_RUNS:
        from evolution_helpers import build_tiny_family

        from mergekit_kinship.evolution import evolve
        from mergekit_kinship.recipe import parse_recipe

        root = tmp_path_factory.mktemp("finished_run")
        paths = build_tiny_family(root)
        recipe = parse_recipe({
            "base": str(paths["base"]), "models": [str(paths[f"child{i}"]) for i in range(3)],
            "merge": {"method": "slerp", "dtype": "float32"},
            "evaluation": {"tasks": ["skill0", "skill1", "skill2"]},
            "stopping": {"max_generations": 4, "saturation": 0.95},
        }, root)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("EVOLVE_TEST_SKILLS", str(root))
            evolve(recipe, root / "run", keep="survivors", progress=False,
                   evaluator="evolution_helpers:stand_in_evaluate")
        _FINISHED_RUNS["run"] = root / "run"
    return _FINISHED_RUNS["run"]


def parents_from_yaml(run_dir: Path, summary: RunSummary) -> dict[str, list[str]]:
    """{child id: parent ids} read from the mergekit YAML files the run wrote (RUN/yaml/<id>.yaml),
    not from the summary: a parent is recognised by its folder."""
    by_path = {m.path: i for i, m in summary.models.items() if m.kind == "foundation"}
    by_path.update({str(run_dir / "models" / i): i for i in summary.child_ids()})
    parents = {}
    for path in sorted((run_dir / "yaml").glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        refs = [config["base_model"]] if config.get("base_model") else []
        refs += [m["model"] for m in config["models"] if m["model"] not in refs]
        parents[path.stem] = [by_path[str(Path(r).resolve())] for r in refs]
    return parents


@pytest.fixture
def run(tmp_path):
    """(run directory, its summary as card and report read it: a format-1 summary.json loaded)."""
    synthetic_summary(tmp_path)
    return tmp_path, load_summary(tmp_path)


def parse_tree(card_text: str) -> dict[str, list[str]]:
    """Rebuild {model name: [parent names]} from the lineage tree drawn in a card."""
    block = re.search(r"## Lineage.*?```text\n(.*?)```", card_text, re.S).group(1)
    edges: dict[str, list[str]] = {}
    stack: list[tuple[int, str]] = []
    for line in block.splitlines():
        match = re.match(r"^((?:[│ ]   )*)(?:[├└]── )?(\S+)", line)
        depth = len(match.group(1)) // 4 + (1 if re.search(r"[├└]── ", line) else 0)
        name = match.group(2)
        stack = stack[:depth]
        if stack:
            edges.setdefault(stack[-1][1], []).append(name)
        if "(drawn above)" not in line:
            stack.append((depth, name))
    return edges


def test_metadata_round_trips_through_huggingface_hub(run, tmp_path):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    run_dir, summary = run
    path = write_card(summary, "g3x", tmp_path / "card" / "README.md")
    loaded = ModelCard.load(path)
    assert loaded.data.to_dict() == build_card(summary, "g3x").data.to_dict()

    data = loaded.data.to_dict()
    # Hub ancestors only: the foundation models with a hub id and the shared base; no local paths.
    assert data["base_model"] == ["org/math-7b", "org/code-7b", "org/base-7b"]
    assert data["base_model_relation"] == "merge"
    assert set(data["tags"]) >= {"merge", "mergekit", "model-kinship"}
    name, results = model_index_to_eval_results(data["model-index"])
    assert name == "kin-g3x"
    assert {r.dataset_name: r.metric_value for r in results} == summary.models["g3x"].scores
    assert {r.metric_type for r in results} == {"acc"}


def test_base_model_lists_only_the_childs_own_hub_ancestors(run):
    _, summary = run
    # g1c descends from code (hub) and chat (local): chat is not a hub id.
    assert hub_ancestors(summary, "g1c") == ["org/code-7b", "org/base-7b"]
    summary.base.hub_id = None
    summary.models["code"].hub_id = None
    assert "base_model" not in build_card(summary, "g1c").data.to_dict()


def test_card_mentions_base_model_only_when_its_metadata_has_one(run):
    _, summary = run
    with_hub = build_card(summary, "g1c")
    assert with_hub.data.base_model == ["org/code-7b", "org/base-7b"]
    assert "`base_model` above lists only the original hub ancestors" in with_hub.text
    # All ancestors local: no base_model in the metadata, and the body does not point at one.
    summary.base.hub_id = None
    summary.models["code"].hub_id = None
    local = build_card(summary, "g1c")
    assert local.data.base_model is None
    assert "`base_model`" not in local.text  # (the mergekit YAML has its own base_model key)
    assert "No model of this lineage has a Hub id" in local.text


def test_lineage_in_the_card_matches_the_run(run):
    _, summary = run
    models = summary.models
    for model_id in ("g3x", "g3a", "g2x", "g1a"):
        text = str(build_card(summary, model_id))
        edges = parse_tree(text)
        expected = {models[m].name: [models[p].name for p in models[m].parents]
                    for m in summary.lineage(model_id) if models[m].parents}
        assert edges == expected, model_id
        # One row per merge of the lineage, with its method and parents' kinship: PCC and sign
        # conflict side by side.
        merges = [m for m in summary.lineage(model_id) if models[m].kind == "child"]
        table = text.split("### Merges in this lineage")[1].split("###")[0]
        for merge in merges:
            kin = models[merge].parents_kinship
            kinship = f"pcc {kin['pcc']:.4f}, sign_conflict {kin['sign_conflict']:.4f}"
            assert re.search(rf"\| {re.escape(models[merge].name)}( \(exploration\))? \| "
                             rf"{models[merge].generation} \| slerp \|.*\| {kinship} \|", table), merge
        assert table.count("\n| ") == len(merges) + 1  # header row + one per merge


def test_scores_against_parents_and_exact_yaml(run):
    _, summary = run
    text = str(build_card(summary, "g3x"))
    table = text.split("## Scores against its parents")[1].split("\n\n")[1]
    assert table.splitlines()[0] == "| task | **kin-g3x** | kin-g2a | kin-g2x | parents' mean | difference |"
    arith = next(line for line in table.splitlines() if line.startswith("| arith"))
    assert arith == "| arith | 0.8500 | 0.8200 | 0.6200 | 0.7200 | +0.1300 |"
    assert "```yaml\n" + summary.models["g3x"].yaml in text
    # Every ancestor merge is a stage of the quoted lineage file, named, not a run folder.
    section = text.split("## Rebuild it from the foundation models")[1].split("### This merge alone")[0]
    quoted = section.split("```yaml\n")[1].split("```")[0]
    assert quoted == lineage_yaml(summary, "g3x")
    documents = list(yaml.safe_load_all(quoted))
    assert [d.get("name") for d in documents] == ["kin-g1a", "kin-g1b", "kin-g2a", "kin-g2x", None]
    assert "/runs/x/models/g" not in quoted
    assert "mergekit-multi lineage.yaml -I ./intermediate --out-path OUT_DIR" in section


def test_card_command_writes_where_the_weights_are(run):
    run_dir, summary = run
    runner = CliRunner()
    kept = runner.invoke(main, ["card", str(run_dir), "kin-g3a"])  # by display name
    assert kept.exit_code == 0, kept.output
    assert (run_dir / "models" / "g3a" / "README.md").is_file()
    gone = runner.invoke(main, ["card", str(run_dir), "g2b", "--json"])
    assert gone.exit_code == 0, gone.output
    assert json.loads(gone.output)["card"] == str(run_dir / "cards" / "g2b" / "README.md")
    assert "kin-g2b" in (run_dir / "cards" / "g2b" / "README.md").read_text()


def test_card_of_a_foundation_model_never_writes_into_its_folder(run, tmp_path):
    run_dir, summary = run
    own = tmp_path / "users-math-model"
    own.mkdir()
    (own / "README.md").write_text("the user's own card")
    summary.models["math"].path = str(own)
    (run_dir / "summary.json").write_text(json.dumps(summary.to_json()))
    result = CliRunner().invoke(main, ["card", str(run_dir), "math"])
    assert result.exit_code == 0, result.output
    assert (own / "README.md").read_text() == "the user's own card"
    assert (run_dir / "cards" / "math" / "README.md").is_file()


def test_card_command_user_errors(run, tmp_path):
    run_dir, _ = run
    runner = CliRunner()
    unknown = runner.invoke(main, ["card", str(run_dir), "nobody"])
    assert unknown.exit_code == 2
    assert "Error: CHILD: no model 'nobody'" in unknown.output
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = runner.invoke(main, ["card", str(empty), "g3x"])
    assert missing.exit_code == 2 and "summary.json not found" in missing.output
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    unwritable = runner.invoke(main, ["card", str(run_dir), "g3x", "--out", str(blocked / "README.md")])
    assert unwritable.exit_code == 2 and "Error: --out" in unwritable.output, unwritable.output
    private = runner.invoke(main, ["card", str(run_dir), "g3x", "--private"])
    assert private.exit_code == 2 and "--private applies to --push-to-hub" in private.output
    broken = json.loads((run_dir / "summary.json").read_text())
    broken["models"]["g3x"]["parents"] = ["g2a", "ghost"]
    (run_dir / "summary.json").write_text(json.dumps(broken))
    with pytest.raises(UserError, match=r"models\.g3x\.parents: unknown model 'ghost'"):
        load_summary(run_dir)


def test_push_fails_clearly_offline_and_when_not_logged_in(run, tmp_path, monkeypatch):
    from huggingface_hub import constants

    run_dir, _ = run
    runner = CliRunner()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    offline = runner.invoke(main, ["card", str(run_dir), "g3x", "--push-to-hub", "me/kin"])
    assert offline.exit_code == 2
    assert offline.output.strip().splitlines()[-1].startswith("Error: --push-to-hub: offline mode is on")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    anonymous = runner.invoke(main, ["card", str(run_dir), "g3x", "--push-to-hub", "me/kin"])
    assert anonymous.exit_code == 2
    assert "Error: --push-to-hub: not logged in" in anonymous.output
    bad_repo = runner.invoke(main, ["card", str(run_dir), "g3x", "--push-to-hub", "/abs/path"])
    assert bad_repo.exit_code == 2 and "is not a Hub repo id" in bad_repo.output


def test_cards_of_a_finished_run_follow_its_mergekit_configs(tmp_path_factory, tmp_path):
    from huggingface_hub import ModelCard

    run_dir = finished_run(tmp_path_factory)
    summary = load_summary(run_dir)
    models = summary.models
    on_disk = parents_from_yaml(run_dir, summary)
    children = summary.child_ids()
    assert sorted(on_disk) == sorted(children) and len(children) >= 6
    for child in children:
        card = ModelCard.load(write_card(summary, child, tmp_path / child / "README.md"))
        # Lineage: the tree in the card, against the parents each mergekit YAML names.
        expected = {}
        stack = [child]
        while stack:
            node = stack.pop()
            if node in on_disk and models[node].name not in expected:
                expected[models[node].name] = [models[p].name for p in on_disk[node]]
                stack.extend(on_disk[node])
        assert parse_tree(card.text) == expected, child
        assert (run_dir / "yaml" / f"{child}.yaml").read_text() in card.text
        data = card.data.to_dict()
        assert "base_model" not in data  # every ancestor is a local folder
        assert "`base_model`" not in card.text  # so the body does not point at it
        assert {r.dataset_name for r in card.data.eval_results} == {"skill0", "skill1", "skill2"}


def test_write_cards_covers_every_child_kept_or_not(tmp_path_factory, tmp_path):
    run_dir = finished_run(tmp_path_factory)
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    summary = load_summary(copy)
    # Point the summary at the copy so that no card lands in the shared run.
    for model in summary.models.values():
        if model.path and model.path.startswith(str(run_dir)):
            model.path = str(copy) + model.path[len(str(run_dir)):]
    written = write_cards(copy, summary)
    children = set(summary.child_ids())
    assert set(written) == children
    kept = {i for i in children if summary.models[i].path}
    assert kept and kept != children  # --keep survivors pruned some weights
    for model_id, path in written.items():
        where = copy / "models" / model_id if model_id in kept else copy / "cards" / model_id
        assert path == where / "README.md" and path.is_file()


def test_evolve_leaves_a_card_for_every_child(tmp_path_factory):
    from huggingface_hub import ModelCard

    run_dir = finished_run(tmp_path_factory)
    summary = load_summary(run_dir)
    for model_id in summary.child_ids():
        model = summary.models[model_id]
        where = Path(model.path) if model.path else run_dir / "cards" / model_id
        card = ModelCard.load(where / "README.md")
        assert "model-kinship" in card.data.tags
        assert (run_dir / "yaml" / f"{model_id}.yaml").read_text() in card.text
