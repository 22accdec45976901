"""Parents with different vocabularies (a fine-tune that added tokens, like openchat-3.5 over
Mistral-7B): mergekit refuses them unless the config says which tokenizer the child gets, so the
recipe's ``merge.tokenizer`` must reach every child's YAML."""

from __future__ import annotations

import pytest
import yaml

from evolution_helpers import build_tiny_family, load_tensors
from mergekit_kinship.errors import UserError
from mergekit_kinship.merging import child_config, merge_yaml, render_yaml, validate_yaml
from mergekit_kinship.recipe import parse_recipe


@pytest.fixture(scope="module")
def parents(tmp_path_factory):
    from transformers import AutoTokenizer, LlamaForCausalLM

    root = tmp_path_factory.mktemp("vocab")
    paths = build_tiny_family(root, n_children=2)
    # child1 + one added token: embeddings and head grow by a row, as after resize_token_embeddings
    tok = AutoTokenizer.from_pretrained(paths["child1"])
    tok.add_tokens(["<tool>"])
    model = LlamaForCausalLM.from_pretrained(paths["child1"])
    model.resize_token_embeddings(len(tok))
    paths["added"] = root / "added"
    model.save_pretrained(paths["added"])
    tok.save_pretrained(paths["added"])
    return paths


def _recipe(paths, merge):
    return parse_recipe({"base": str(paths["base"]),
                         "models": [str(paths["child0"]), str(paths["added"])],
                         "merge": merge, "evaluation": {"tasks": ["t"]}}, paths["base"].parent)


def test_tokenizer_union_reaches_the_yaml_and_mergekit_merges_the_two_vocabularies(parents, tmp_path):
    recipe = _recipe(parents, {"method": "slerp", "dtype": "float32", "tokenizer": {"source": "union"}})
    config = child_config(recipe.merge, str(parents["child0"]), str(parents["added"]), str(parents["base"]))
    assert config["tokenizer"] == {"source": "union"}
    text = render_yaml(config)
    validate_yaml(text)
    merge_yaml(text, tmp_path / "child")
    merged = load_tensors(tmp_path / "child")
    assert merged["model.embed_tokens.weight"].shape[0] == 27  # 26 shared tokens + <tool>


def test_without_a_tokenizer_choice_mergekit_refuses_the_vocabulary_mismatch(parents, tmp_path):
    recipe = _recipe(parents, {"method": "slerp", "dtype": "float32"})
    config = child_config(recipe.merge, str(parents["child0"]), str(parents["added"]), str(parents["base"]))
    assert "tokenizer" not in config
    with pytest.raises(Exception, match="size mismatch"):
        merge_yaml(render_yaml(config), tmp_path / "child")
    assert not (tmp_path / "child").exists()


def test_tokenizer_keys_are_checked(parents):
    with pytest.raises(UserError, match="tokenizer"):
        _recipe(parents, {"method": "slerp", "tokenizer": {"sorce": "union"}})
    with pytest.raises(UserError, match="tokenizer"):
        _recipe(parents, {"method": "slerp", "tokenizer": {"source": ""}})


def test_preflight_accepts_added_tokens_only_with_a_tokenizer_choice(parents):
    from mergekit_kinship.preflight import check_foundation_models

    with pytest.raises(UserError, match=r"27 vocabulary rows .*set merge.tokenizer"):
        check_foundation_models(_recipe(parents, {"method": "slerp"}))
    check_foundation_models(_recipe(parents, {"method": "slerp", "tokenizer": {"source": "union"}}))
