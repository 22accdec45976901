"""Child -> mergekit YAML -> mergekit's pipeline, on tiny real Llama models (CPU, seconds)."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from evolution_helpers import build_tiny_family, load_tensors
from mergekit_kinship.merging import (
    MARKER, child_config, merge_yaml, read_marker, render_yaml, validate_yaml)
from mergekit_kinship.merge_methods import two_parent_methods
from mergekit_kinship.recipe import MergeTemplate


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return build_tiny_family(tmp_path_factory.mktemp("tiny"))


def template(method, **extra):
    """The method with its required parameters where their mergekit scope puts them: shared
    ones under ``parameters``, per-model ones under each parent's ``parameters``."""
    info = two_parent_methods()[method]
    return MergeTemplate(method=method, dtype="float32",
                         parameters={p: 0.5 for p in info.required & info.shared},
                         model_parameters={p: 0.5 for p in info.required & info.per_model},
                         **extra)


def test_base_model_per_method(family):
    a, b, anc = str(family["child0"]), str(family["child1"]), str(family["base"])
    slerp = child_config(MergeTemplate(dtype="float32"), a, b, anc)
    assert slerp["base_model"] == a and [m["model"] for m in slerp["models"]] == [a, b]
    assert anc not in yaml.safe_dump(slerp)  # the ancestor is never in a slerp
    assert "base_model" not in child_config(template("linear"), a, b, anc)
    assert child_config(template("ties"), a, b, anc)["base_model"] == anc
    assert child_config(template("nuslerp"), a, b, anc)["base_model"] == anc
    assert "base_model" not in child_config(template("nuslerp", use_base=False), a, b, anc)
    per_model = child_config(MergeTemplate(method="ties", model_parameters={"weight": 0.7,
                                                                            "density": 0.4}),
                             a, b, anc)
    assert all(m["parameters"] == {"weight": 0.7, "density": 0.4} for m in per_model["models"])


# Every two-parent method mergekit has (read from its registry), and the base-less variants.
@pytest.mark.parametrize("method", sorted(two_parent_methods()) + [
    f"{m}-no-base" for m, info in two_parent_methods().items() if info.base == "optional"])
def test_every_method_merges_two_parents(family, tmp_path, method):
    extra = {"use_base": False} if method == "nuslerp-no-base" else {}
    tpl = template(method.removesuffix("-no-base"), **extra)
    text = render_yaml(child_config(tpl, str(family["child0"]), str(family["child1"]),
                                    str(family["base"])), ["lineage line"])
    assert text.startswith("# lineage line\n")
    validate_yaml(text)
    out = merge_yaml(text, tmp_path / "child", seed=0, marker={"child": "x"})
    merged = load_tensors(out)
    parent = load_tensors(family["child0"])
    assert merged.keys() == parent.keys()
    assert all(torch.isfinite(t).all() for t in merged.values())
    assert (out / "tokenizer.json").exists()  # lm-eval needs a tokenizer beside the weights
    assert read_marker(out) == {"child": "x"}
    assert (out / "mergekit_config.yml").read_text() == text  # config_source kept verbatim
    assert not list(tmp_path.glob(".partial-*"))


def test_slerp_at_ends_returns_the_parents(family, tmp_path):
    a, b, anc = str(family["child0"]), str(family["child1"]), str(family["base"])
    for t, parent in ((0.0, "child0"), (1.0, "child1")):
        text = render_yaml(child_config(MergeTemplate(dtype="float32", parameters={"t": t}),
                                        a, b, anc))
        out = merge_yaml(text, tmp_path / f"t{t}")
        expected = load_tensors(family[parent])
        for k, v in load_tensors(out).items():
            torch.testing.assert_close(v, expected[k])


def test_random_methods_follow_the_seed(family, tmp_path):
    text = render_yaml(child_config(MergeTemplate(method="dare_ties", dtype="float32",
                                                  model_parameters={"weight": 0.5,
                                                                    "density": 0.3}),
                                    str(family["child0"]), str(family["child1"]),
                                    str(family["base"])))
    one, two, other = (load_tensors(merge_yaml(text, tmp_path / n, seed=s))
                       for n, s in (("one", 1), ("two", 1), ("other", 2)))
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert any(not torch.equal(one[k], other[k]) for k in one)


def test_never_overwrites_and_sees_rewritten_parents(family, tmp_path):
    """A path is never merged over; a parent folder rewritten in place is read afresh
    (mergekit caches opened models per process)."""
    b = tmp_path / "b"
    shutil.copytree(family["child1"], b)
    text = render_yaml(child_config(MergeTemplate(dtype="float32", parameters={"t": 1.0}),
                                    str(family["child0"]), str(b), str(family["base"])))
    first = load_tensors(merge_yaml(text, tmp_path / "first"))
    with pytest.raises(FileExistsError):
        merge_yaml(text, tmp_path / "first")
    shutil.rmtree(b)
    shutil.copytree(family["child2"], b)
    second = load_tensors(merge_yaml(text, tmp_path / "second"))
    expected = load_tensors(family["child2"])
    assert all(torch.equal(second[k], expected[k]) for k in second)
    assert any(not torch.equal(first[k], second[k]) for k in first)
    assert not (tmp_path / "second" / MARKER).exists()  # no marker asked, none written
