"""``mergekit-kinship merge`` is a drop-in for ``mergekit-yaml``: the same options, spelled the
same, the same output folder byte for byte, plus kinship.json; user mistakes are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from evolution_helpers import build_tiny_family
from mergekit_kinship.cli import main
from mergekit_kinship.merge_kinship import KINSHIP_FILE, read_merge_kinship


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    return build_tiny_family(tmp_path_factory.mktemp("cmd") / "fam")


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _files(folder: Path) -> dict[str, bytes]:
    """Every file mergekit writes, byte for byte, but its model card: ``merge`` adds its kinship
    section to README.md (test_the_merged_model_gets_a_card_with_its_kinship)."""
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir())
            if f.is_file() and f.name not in (KINSHIP_FILE, "README.md")}


def _mergekit_yaml(args):
    from mergekit.io.tasks import LoaderCache
    from mergekit.scripts.run_yaml import main as mergekit_yaml

    LoaderCache().loaders.clear()
    result = CliRunner().invoke(mergekit_yaml, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def _ours(args, code=0):
    from mergekit.io.tasks import LoaderCache

    LoaderCache().loaders.clear()
    result = CliRunner().invoke(main, ["merge", *map(str, args)])
    assert result.exit_code == code, (result.output, result.exception)
    return result


def test_every_mergekit_yaml_option_is_accepted_as_spelled():
    from mergekit.options import MergeOptions
    from mergekit.scripts.run_yaml import main as mergekit_yaml

    from mergekit_kinship.commands.merge import MERGE_OPTIONS, merge_cmd

    assert [name for name, *_ in MERGE_OPTIONS] == list(MergeOptions.model_fields)

    def spellings(command, skip):
        return {(p.name, tuple(sorted(o for o in p.opts if o != "-q")), tuple(sorted(p.secondary_opts)))
                for p in command.params if p.name not in skip}

    # the same arguments (CONFIG OUT_DIR) and options; ours adds --base, --json and -q (the
    # package's short quiet flag, on top of mergekit's --quiet)
    assert spellings(merge_cmd, ("base", "as_json")) == spellings(mergekit_yaml, ())


def test_output_is_mergekit_yamls_plus_kinship_json(fam, tmp_path):
    config = _write(tmp_path, "ties.yml", (
        f"merge_method: dare_ties\nbase_model: {fam['base']}\nmodels:\n"
        f"  - model: {fam['child0']}\n    parameters: {{weight: 0.5, density: 0.5}}\n"
        f"  - model: {fam['child1']}\n    parameters: {{weight: 0.5, density: 0.5}}\n"
        "dtype: float32\n"))
    options = ["--random-seed", "3", "--out-shard-size", "3K", "--no-copy-tokenizer",
               "--lazy-unpickle"]
    _mergekit_yaml([config, tmp_path / "theirs" / "out", *options])
    result = _ours([config, tmp_path / "ours" / "out", *options, "-q", "--json"])
    ours, theirs = tmp_path / "ours" / "out", tmp_path / "theirs" / "out"
    assert (theirs / "model.safetensors.index.json").exists()
    assert not (theirs / "tokenizer.json").exists()
    assert _files(ours) == _files(theirs)
    printed = json.loads(result.output)
    assert printed == read_merge_kinship(ours).to_dict()
    assert printed["ancestor"] == str(fam["base"])  # the config's task-vector base
    assert set(printed["models_kinship"]) == {"pcc", "cosine", "euclidean", "sign_conflict"}


def test_slerp_with_base_prints_tables(fam, tmp_path):
    config = _write(tmp_path, "slerp.yml", (
        f"merge_method: slerp\nbase_model: {fam['child0']}\nmodels:\n"
        f"  - model: {fam['child0']}\n  - model: {fam['child1']}\n"
        "parameters: {t: 0.5}\ndtype: float32\n"))
    out = tmp_path / "out"
    result = _ours([config, out, "--base", fam["base"], "-q"])
    assert "child0 / child1" in result.output and "with the merged output" in result.output
    assert (out / "tokenizer.json").exists() and (out / KINSHIP_FILE).exists()
    kinship = read_merge_kinship(out)
    assert kinship.names == ["child0", "child1"] and kinship.ancestor_name == "base"


@pytest.mark.parametrize("text,args,message", [
    ("merge_method: slerp\nbase_model: {c0}\nmodels:\n  - model: {c0}\n  - model: {c1}\n"
     "parameters: {{t: 0.5}}\n", [], "slerp's base_model is one of the models"),
    ("merge_method: linear\nmodels:\n  - model: {c0}\n    parameters: {{weight: 1}}\n"
     "  - model: {c1}\n    parameters: {{weight: 1}}\n", [], "has no base_model: give --base"),
    ("merge_method: slerp\nmodels: [\n", [], "line 3, column 1"),
    ("merge_method: ties\nbase_model: {c0}\nmodelz: []\n", [], "mergekit's config schema"),
    ("merge_method: ties\nbase_model: {base}\nmodels:\n  - model: {c0}\n"
     "    parameters: {{weight: 1}}\n", ["--out-shard-size", "lots"], "--out-shard-size lots"),
])
def test_mistakes_are_one_line(fam, tmp_path, text, args, message):
    config = _write(tmp_path, "c.yml", text.format(c0=fam["child0"], c1=fam["child1"],
                                                   base=fam["base"]))
    result = _ours([config, tmp_path / "out", *args], code=2)
    assert result.output.startswith("Error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_config_that_cannot_be_read_is_one_line(tmp_path):
    result = _ours([tmp_path / "missing.yml", tmp_path / "out"], code=2)
    assert "missing.yml: cannot read the config" in result.output


def test_the_merged_model_gets_a_card_with_its_kinship(fam, tmp_path):
    """issue 11: merge writes mergekit's model card with a kinship section (from the
    kinship.json it just wrote); --no-write-model-card writes neither card."""
    from huggingface_hub import ModelCard

    from mergekit_kinship.merged_card import BEGIN

    config = _write(tmp_path, "ties.yml", f"""
merge_method: ties
base_model: {fam['base']}
models:
  - model: {fam['child0']}
    parameters: {{weight: 0.5, density: 0.5}}
  - model: {fam['child1']}
    parameters: {{weight: 0.5, density: 0.5}}
dtype: float32
""")
    _ours([config, tmp_path / "out", "-q"])
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert "model-kinship" in card.data.to_dict()["tags"]
    assert card.text.count(BEGIN) == 1 and "measured during the merge (`kinship.json`)" in card.text
    pcc = read_merge_kinship(tmp_path / "out").models_kinship["pcc"][0][1]
    assert f"| {pcc:.4f} |" in card.text
    _ours([config, tmp_path / "bare", "-q", "--no-write-model-card"])
    assert not (tmp_path / "bare" / "README.md").exists()
    assert (tmp_path / "bare" / KINSHIP_FILE).is_file()
