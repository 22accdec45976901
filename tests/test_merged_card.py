"""``mergekit-kinship card MODEL_DIR``: the card of a folder plain ``mergekit-yaml`` wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from evolution_helpers import build_tiny_family
from mergekit_kinship.cli import main
from mergekit_kinship.card_kinship import from_kinship_json
from mergekit_kinship.merge_kinship import MergeKinship
from mergekit_kinship.merged_card import BEGIN, END, merge_kinship, read_merged_model

OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    """A TIES merge of two fine-tunes against their base, by ``mergekit-yaml`` in a subprocess:
    the folder as mergekit leaves it (weights, mergekit_config.yml, mergekit's README.md)."""
    root = tmp_path_factory.mktemp("merged")
    paths = build_tiny_family(root)
    config = root / "ties.yaml"
    config.write_text(yaml.safe_dump({
        "merge_method": "ties", "base_model": str(paths["base"]),
        "models": [{"model": str(paths["child0"]), "parameters": {"density": 0.6, "weight": 0.5}},
                   {"model": str(paths["child1"]), "parameters": {"density": 0.6, "weight": 0.5}}],
        "dtype": "float32"}))
    done = subprocess.run(["mergekit-yaml", str(config), str(root / "out")], env=OFFLINE,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return root / "out", paths


def card(*args):
    return CliRunner().invoke(main, ["card", *map(str, args)])


def test_card_of_a_plain_mergekit_folder(merged, tmp_path):
    from huggingface_hub import ModelCard

    from mergekit_kinship.streaming_kinship import kinship_matrix

    out, paths = merged
    folder = tmp_path / "out"
    shutil.copytree(out, folder)
    mergekits = ModelCard.load(folder / "README.md")
    result = card(folder, "-q", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["card"] == str(folder / "README.md")
    written = ModelCard.load(folder / "README.md")
    # mergekit's text is kept; our section follows it, once.
    assert written.text.startswith(mergekits.text.rstrip("\n"))
    assert written.text.count(BEGIN) == 1 and written.text.count(END) == 1
    data = written.data.to_dict()
    assert {"merge", "mergekit", "model-kinship"} <= set(data["tags"])
    assert data["library_name"] == "transformers"
    # Every input is a local folder: no base_model (the Hub rejects paths), and the text does
    # not point at one (it names the config's base_model, which the config has).
    assert "base_model" not in data and "in the metadata" not in written.text
    assert "Every input is a local folder" in written.text
    # The kinship is the engine's: inputs pairwise and each with the merged model.
    inputs = [str(paths["child0"]), str(paths["child1"])]
    engine = kinship_matrix([*inputs, str(folder)], str(paths["base"]), progress=False)
    ours = merge_kinship(read_merged_model(folder))
    assert ours.source == "measured" and ours.inputs == inputs
    for metric in ("pcc", "cosine", "euclidean"):
        assert ours.pairs[(0, 1)][metric] == engine.values[metric][0][1]
        assert [v[metric] for v in ours.with_output] == [engine.values[metric][i][2] for i in (0, 1)]
    pair_row = f"| `{inputs[0]}` | `{inputs[1]}` | {engine.values['pcc'][0][1]:.4f} |"
    assert pair_row in written.text
    assert "measured from the weights" in written.text
    assert f"shared ancestor `{paths['base']}` (the config's `base_model`)" in written.text


def test_rerun_keeps_the_users_text_and_rewrites_only_our_section(merged, tmp_path):
    out, _ = merged
    folder = tmp_path / "out"
    shutil.copytree(out, folder)
    assert card(folder, "-q").exit_code == 0
    first = (folder / "README.md").read_text()
    assert card(folder, "-q").exit_code == 0
    assert (folder / "README.md").read_text() == first  # idempotent
    (folder / "README.md").write_text(first + "\n## My notes\n\nkeep me\n")
    # Numbers measured during the merge (kinship.json) now replace the measured ones.
    merged_model = read_merged_model(folder)
    recorded(merged_model.inputs, merged_model.ancestor, pairwise=0.1234,
             output=[0.5678, 0.9012]).write(folder)
    assert card(folder, "-q").exit_code == 0
    text = (folder / "README.md").read_text()
    assert text.endswith("## My notes\n\nkeep me\n")
    assert text.count(BEGIN) == 1 and "| 0.1234 |" in text and "| 0.9012 |" in text
    assert "measured during the merge (`kinship.json`)" in text
    assert first.split(BEGIN)[0] == text.split(BEGIN)[0]  # mergekit's part untouched


def test_no_readme_gets_mergekits_facts_and_hub_inputs_become_base_model(tmp_path):
    """A folder with only a config and kinship.json (no weights are read): hub inputs, with or
    without a revision, are base_model; the ancestor is not an input of the kinship tables."""
    from huggingface_hub import ModelCard

    folder = tmp_path / "hub-merge"
    folder.mkdir()
    config = {"merge_method": "ties", "base_model": "org/base",
              "models": [{"model": "org/math@0123abc", "parameters": {"weight": 0.5}},
                         {"model": "org/code", "parameters": {"weight": 0.5}}],
              "dtype": "bfloat16"}
    (folder / "mergekit_config.yml").write_text(yaml.safe_dump(config))
    record = recorded(["org/math@0123abc", "org/code"], "org/base", pairwise=0.25,
                      output=[0.7, 0.6])
    record.models_kinship["cosine"] = [[1.0, 0.3], [0.3, 1.0]]
    record.models_kinship["euclidean"] = [[0.0, 12.5], [12.5, 0.0]]
    record.output_kinship["cosine"] = [0.8, None]
    record.output_kinship["euclidean"] = [1.0, None]
    record.write(folder)
    result = card(folder)
    assert result.exit_code == 0, result.output
    written = ModelCard.load(folder / "README.md")
    # As mergekit lists them: the config's base_model too (the merge read it), no revision.
    assert sorted(written.data.base_model) == ["org/base", "org/code", "org/math"]
    assert written.data.to_dict()["base_model_relation"] == "merge"
    text = written.text
    assert "`base_model` in the metadata" in text
    assert "Merge method: `ties`" in text and "merge_method: ties" in text  # mergekit's facts
    assert "| `org/math@0123abc` | `org/code` | 0.2500 | 0.3000 | 12.5 |" in text
    assert "| `org/code` | 0.6000 | - | - |" in text  # an undefined value is shown missing


def recorded(models, ancestor, *, pairwise, output) -> MergeKinship:
    """A kinship.json as the merge hook writes it (mergekit_kinship.merge_kinship), pcc only
    filled in; other metrics undefined."""
    n = len(models)
    grid = [[1.0 if i == j else pairwise for j in range(n)] for i in range(n)]
    none = [[None] * n for _ in range(n)]
    return MergeKinship(
        method="ties", ancestor=ancestor, ancestor_name=Path(ancestor).name, models=list(models),
        names=[Path(m).name for m in models], metrics=["pcc", "cosine", "euclidean"],
        models_kinship={"pcc": grid, "cosine": none, "euclidean": [r[:] for r in none]},
        output_kinship={"pcc": list(output), "cosine": [None] * n, "euclidean": [None] * n},
        tensors=1, params=1, output_tensors=1, output_params=1)


def test_kinship_json_is_used_only_for_the_same_inputs_and_ancestor(tmp_path):
    inputs = ["/m/a", "/m/b", "/m/c"]
    # the file lists them in another order: values follow the models, not the positions
    record = recorded(["/m/c", "/m/a", "/m/b"], "/m/base", pairwise=0.0, output=[0.9, 0.8, 0.7])
    record.models_kinship["pcc"] = [[1.0, 0.1, 0.2], [0.1, 1.0, 0.3], [0.2, 0.3, 1.0]]
    record.write(tmp_path)
    got = from_kinship_json(tmp_path, inputs, "/m/base")
    assert got.source == "kinship.json"
    assert got.pairs[(0, 1)]["pcc"] == 0.3 and got.pairs[(0, 2)]["pcc"] == 0.1
    assert got.pairs[(1, 2)]["pcc"] == 0.2
    assert [v["pcc"] for v in got.with_output] == [0.8, 0.7, 0.9]
    # about other models, another ancestor, or not a kinship.json: None (the card measures)
    assert from_kinship_json(tmp_path, ["/m/a", "/m/b"], "/m/base") is None
    assert from_kinship_json(tmp_path, ["/m/a", "/m/b", "/m/x"], "/m/base") is None
    assert from_kinship_json(tmp_path, inputs, "/m/other-base") is None
    (tmp_path / "kinship.json").write_text("{not json")
    assert from_kinship_json(tmp_path, inputs, "/m/base") is None
    (tmp_path / "kinship.json").unlink()
    assert from_kinship_json(tmp_path, inputs, "/m/base") is None


def test_card_of_a_merge_kinship_made_quotes_its_kinship_json(tmp_path):
    """`mergekit-kinship merge` writes kinship.json during the merge; `card` on its folder takes
    the numbers from there (the same as measuring them), reading no weight again."""
    from mergekit_kinship.streaming_kinship import kinship_matrix
    from tiny_models import build_base, make_child

    base = build_base(tmp_path / "base")
    a = make_child(base, tmp_path / "a", seed=1, shared_seed=9)
    b = make_child(base, tmp_path / "b", seed=2, shared_seed=9)
    config = tmp_path / "ties.yml"
    config.write_text(yaml.safe_dump({
        "merge_method": "ties", "base_model": str(base),
        "models": [{"model": str(a), "parameters": {"weight": 0.5, "density": 0.5}},
                   {"model": str(b), "parameters": {"weight": 0.5, "density": 0.5}}],
        "dtype": "float32"}))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["merge", str(config), str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert (out / "kinship.json").is_file()
    got = merge_kinship(read_merged_model(out))
    assert got.source == "kinship.json"
    engine = kinship_matrix([str(a), str(b), str(out)], str(base), progress=False)
    assert got.pairs[(0, 1)]["pcc"] == pytest.approx(engine.values["pcc"][0][1], rel=1e-9)
    assert got.with_output[1]["pcc"] == pytest.approx(engine.values["pcc"][1][2], rel=1e-9)
    assert card(out, "-q").exit_code == 0
    assert "measured during the merge (`kinship.json`)" in (out / "README.md").read_text()


def test_slerp_needs_base_and_errors_are_one_line(tmp_path, merged):
    folder = tmp_path / "slerp"
    folder.mkdir()
    (folder / "mergekit_config.yml").write_text(yaml.safe_dump({
        "merge_method": "slerp", "base_model": "org/a",
        "models": [{"model": "org/a"}, {"model": "org/b"}], "parameters": {"t": 0.5},
        "dtype": "float32"}))
    no_base = card(folder)
    assert no_base.exit_code == 2
    assert "slerp takes no shared ancestor (its base_model is one of the merged models); pass " \
           "--base MODEL" in no_base.output
    recorded(["org/a", "org/b"], "org/base", pairwise=0.4, output=[0.5, 0.6]).write(folder)
    with_base = card(folder, "--base", "org/base")
    assert with_base.exit_code == 0, with_base.output
    text = (folder / "README.md").read_text()
    assert "shared ancestor `org/base` (given with `--base`)" in text and "| 0.4000 |" in text

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text("{}")
    assert "is a run directory: name the model" in card(run_dir).output
    empty = tmp_path / "empty"
    empty.mkdir()
    neither = card(empty)
    assert neither.exit_code == 2 and "neither a merged model folder" in neither.output
    assert "--base applies to a merged model folder" in card(run_dir, "g1-1", "--base", "x").output
    (folder / "mergekit_config.yml").write_text("merge_method: [\n")
    broken = card(folder, "--base", "org/base")
    assert broken.exit_code == 2 and "not a mergekit configuration" in broken.output
    assert len(broken.output.strip().splitlines()) == 1


def test_push_of_a_merged_folder_fails_clearly_offline(merged, tmp_path, monkeypatch):
    from huggingface_hub import constants

    out, _ = merged
    folder = tmp_path / "out"
    shutil.copytree(out, folder)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    result = card(folder, "-q", "--push-to-hub", "me/kin")
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("Error: --push-to-hub: offline mode")
    assert (folder / "README.md").read_text().count(BEGIN) == 1  # written before the push
