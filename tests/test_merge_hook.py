"""The kinship hook inside mergekit's merge: exact (the streaming engine's values, from what the
merge loads), free (mergekit's bytes, no second read), and loud when mergekit changes under it.

Each merge runs twice, into folders of the same name under two parents (mergekit's card names
the folder): plainly through ``mergekit.merge.run_merge``, and through ``merge_with_kinship``.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from evolution_helpers import build_tiny_family
from tiny_models import build_base, make_child
from mergekit_kinship.errors import UserError
from mergekit_kinship.merge_kinship import (
    KINSHIP_FILE, KinshipNotComputed, merge_with_kinship, read_merge_kinship)
from mergekit_kinship.merge_methods import two_parent_methods
from mergekit_kinship.merging import child_config
from mergekit_kinship.recipe import parse_recipe
from mergekit_kinship.streaming_kinship import kinship_matrix


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    root = tmp_path_factory.mktemp("hook")
    return build_tiny_family(root / "fam")


def _config(text: str):
    from mergekit.config import MergeConfiguration

    return MergeConfiguration.model_validate(yaml.safe_load(text))


def _options(**over):
    from mergekit.options import MergeOptions

    return MergeOptions(quiet=True, **over)


def _plain(text: str, out: Path, **options) -> Path:
    from mergekit.io.tasks import LoaderCache
    from mergekit.merge import run_merge

    LoaderCache().loaders.clear()
    run_merge(_config(text), str(out), options=_options(**options), config_source=text)
    return out


def _hooked(text: str, out: Path, ancestor=None, **options):
    from mergekit.io.tasks import LoaderCache

    LoaderCache().loaders.clear()
    return merge_with_kinship(_config(text), out, _options(**options), config_source=text,
                              ancestor=None if ancestor is None else str(ancestor))


def _files(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir())
            if f.is_file() and f.name != KINSHIP_FILE}


def assert_engine_values(result, inputs, ancestor, out, exclude_for_output=None):
    """The hook's values are kinship_matrix's over the same models, to 1e-9 relative."""
    k = len(inputs)
    if k > 1:
        ref = kinship_matrix(inputs, ancestor, metrics="all", progress=False)
        for m in result.metrics:
            for i in range(k):
                for j in range(k):
                    assert result.models_kinship[m][i][j] == pytest.approx(
                        ref.values[m][i][j], rel=1e-9, abs=1e-12), (m, i, j)
        assert result.params == ref.n_params
    ref = kinship_matrix([*inputs, out], ancestor, metrics="all", exclude=exclude_for_output,
                         progress=False)
    for m in result.metrics:
        got = result.output_kinship[m]
        want = [ref.values[m][i][k] for i in range(k)]
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), m
    assert result.output_params == ref.n_params


def _method_configs(fam, tmp_path):
    """One child YAML per two-parent method (both layouts where the base is optional), built
    as evolve builds them."""
    for name, info in two_parent_methods().items():
        params = {p: 0.5 for p in info.required}
        if "density" in info.per_model:
            params["density"] = 0.5
        for use_base in ((True, False) if info.base == "optional" else (None,)):
            merge = {"method": name, "parameters": params, "dtype": "float32"}
            if use_base is not None:
                merge["use_base"] = use_base
            recipe = parse_recipe({"base": str(fam["base"]),
                                   "models": [str(fam["child0"]), str(fam["child1"])],
                                   "merge": merge, "evaluation": {"tasks": ["t"]}}, tmp_path)
            config = child_config(recipe.merge, str(fam["child0"]), str(fam["child1"]),
                                  str(fam["base"]))
            yield f"{name}{'' if use_base is None else f'-base={use_base}'}", info, config


def test_every_two_parent_method_byte_identical_and_equal_to_the_engine(fam, tmp_path):
    seen = []
    for label, info, config in _method_configs(fam, tmp_path):
        text = yaml.safe_dump(config, sort_keys=False)
        seed = 7 if info.random else None
        plain = _plain(text, tmp_path / "plain" / label, random_seed=seed)
        result = _hooked(text, tmp_path / "hook" / label, ancestor=fam["base"], random_seed=seed)
        hooked = tmp_path / "hook" / label
        assert _files(hooked) == _files(plain), label
        assert read_merge_kinship(hooked).to_dict() == result.to_dict()
        assert result.models == [str(fam["child0"]), str(fam["child1"])]
        assert_engine_values(result, [fam["child0"], fam["child1"]], fam["base"], hooked)
        assert result.notes == [], (label, result.notes)
        seen.append(label)
    assert {"slerp", "linear", "ties", "nuslerp-base=True", "nuslerp-base=False"} <= set(seen)


def test_a_multi_model_config_and_sharded_output(fam, tmp_path):
    """ties over three models with the ancestor as base (its default ancestor), written in
    several shards: the index's order and the shards are mergekit's."""
    models = "".join(f"  - model: {fam[c]}\n    parameters: {{weight: 0.4, density: 0.6}}\n"
                     for c in ("child0", "child1", "child2"))
    text = f"merge_method: ties\nbase_model: {fam['base']}\nmodels:\n{models}dtype: float32\n"
    plain = _plain(text, tmp_path / "plain" / "out", out_shard_size=3000)
    result = _hooked(text, tmp_path / "hook" / "out", out_shard_size=3000)
    assert (plain / "model.safetensors.index.json").exists()
    assert _files(tmp_path / "hook" / "out") == _files(plain)
    assert result.ancestor == str(fam["base"]) and len(result.models) == 3
    assert result.extra_bytes == 0  # the ancestor is the method's base: loaded once, by the merge
    assert_engine_values(result, [fam[c] for c in ("child0", "child1", "child2")], fam["base"],
                         tmp_path / "hook" / "out")


def test_the_built_in_family_with_the_built_in_recipe(family, tmp_path):
    from mergekit_kinship.recipe import load_recipe

    recipe = load_recipe(family.root / "recipe.yaml")
    a, b = sorted(family.children)[:2]
    config = child_config(recipe.merge, str(family.children[a]), str(family.children[b]),
                          str(family.base))
    text = yaml.safe_dump(config, sort_keys=False)
    plain = _plain(text, tmp_path / "plain" / "child")
    result = _hooked(text, tmp_path / "hook" / "child", ancestor=family.base)
    assert _files(tmp_path / "hook" / "child") == _files(plain)
    assert_engine_values(result, [family.children[a], family.children[b]], family.base,
                         tmp_path / "hook" / "child")


def test_nothing_is_loaded_twice_and_the_ancestor_once(fam, tmp_path, monkeypatch):
    """The hook reads what the merge gathers (mergekit loads exactly what it loads without the
    hook); SLERP's ancestor, which the merge does not load, is read alongside, once per tensor."""
    from mergekit.io.tasks import LoadTensor

    from mergekit_kinship.models import Model

    loads, reads = [], []
    load, read = LoadTensor.execute, Model.read

    def counting_load(self):
        loads.append((str(self.model), self.tensor))
        return load(self)

    def counting_read(self, info, start, count, buffer):
        reads.append((self.name, info.name, start, count))
        return read(self, info, start, count, buffer)

    monkeypatch.setattr(LoadTensor, "execute", counting_load)
    monkeypatch.setattr(Model, "read", counting_read)
    ties = (f"merge_method: ties\nbase_model: {fam['base']}\nmodels:\n"
            f"  - model: {fam['child0']}\n    parameters: {{weight: 0.5}}\n"
            f"  - model: {fam['child1']}\n    parameters: {{weight: 0.5}}\ndtype: float32\n")
    slerp = (f"merge_method: slerp\nbase_model: {fam['child0']}\nmodels:\n"
             f"  - model: {fam['child0']}\n  - model: {fam['child1']}\n"
             f"parameters: {{t: 0.5}}\ndtype: float32\n")
    for label, text, ancestor_read in (("ties", ties, False), ("slerp", slerp, True)):
        loads.clear()
        _plain(text, tmp_path / label / "plain" / "o")
        plain_loads = sorted(loads)
        assert len(set(plain_loads)) == len(plain_loads)
        loads.clear()
        reads.clear()
        result = _hooked(text, tmp_path / label / "hook" / "o", ancestor=fam["base"])
        assert sorted(loads) == plain_loads, label  # mergekit loads nothing more
        if ancestor_read:
            assert {r[0] for r in reads} == {"base"}
            assert sorted(r[1] for r in reads) == sorted(set(r[1] for r in reads))  # once each
            assert all(r[2] == 0 for r in reads) and len(reads) == result.tensors
            assert result.extra_bytes == 4 * result.params  # the fp32 ancestor's weights
        else:
            assert reads == [] and result.extra_bytes == 0


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """An fp32 ancestor with bf16-stored children, and fp32-stored children (a shared part
    makes their kinship non-trivial)."""
    root = tmp_path_factory.mktemp("dtypes")
    base = build_base(root / "base")
    return {"base": base,
            "a16": make_child(base, root / "a16", seed=1, shared_seed=9, dtype=torch.bfloat16),
            "b16": make_child(base, root / "b16", seed=2, shared_seed=9, dtype=torch.bfloat16),
            "a32": make_child(base, root / "a32", seed=1, shared_seed=9),
            "b32": make_child(base, root / "b32", seed=2, shared_seed=9)}


@pytest.mark.parametrize("pair,dtype,reread", [
    (("a16", "b16"), "float32", False),   # bf16 -> fp32 keeps every value: the gathered tensors
    (("a32", "b32"), "bfloat16", True),   # fp32 -> bf16 rounds: the stored tensors, read again
    (("a16", "b16"), "bfloat16", False),
])
def test_a_merge_dtype_that_rounds_the_inputs_reads_them_as_stored(stored, tmp_path, pair, dtype,
                                                                   reread):
    a, b = (stored[p] for p in pair)
    text = (f"merge_method: task_arithmetic\nbase_model: {stored['base']}\nmodels:\n"
            f"  - model: {a}\n    parameters: {{weight: 0.5}}\n"
            f"  - model: {b}\n    parameters: {{weight: 0.5}}\ndtype: {dtype}\n")
    plain = _plain(text, tmp_path / "plain" / "o")
    result = _hooked(text, tmp_path / "hook" / "o")
    assert _files(tmp_path / "hook" / "o") == _files(plain)
    assert_engine_values(result, [a, b], stored["base"], tmp_path / "hook" / "o")
    # the ancestor is stored fp32: under dtype bfloat16 it is read again too
    read_again = 3 if reread else (1 if dtype == "bfloat16" else 0)
    assert result.extra_bytes == read_again * 4 * result.params
    assert any("read again" in n for n in result.notes) == (read_again > 0)


def test_added_vocabulary_rows_and_a_tokenizer_section(fam, tmp_path):
    """An input with an added token: the inputs are compared on the ancestor's rows; the
    tokenizer section re-orders the output's vocabulary, so the embeddings and the head count
    for the inputs' kinship only (a note says so)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    added = tmp_path / "added"
    tok = AutoTokenizer.from_pretrained(fam["child1"])
    tok.add_tokens(["<tool>"])
    model = LlamaForCausalLM.from_pretrained(fam["child1"])
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(added)
    tok.save_pretrained(added)
    text = (f"merge_method: slerp\nbase_model: {fam['child0']}\nmodels:\n"
            f"  - model: {fam['child0']}\n  - model: {added}\nparameters: {{t: 0.4}}\n"
            "dtype: float32\ntokenizer:\n  source: union\n")
    plain = _plain(text, tmp_path / "plain" / "o")
    result = _hooked(text, tmp_path / "hook" / "o", ancestor=fam["base"])
    out = tmp_path / "hook" / "o"
    assert _files(out) == _files(plain)
    vocab = ["model.embed_tokens.weight", "lm_head.weight"]
    assert_engine_values(result, [fam["child0"], added], fam["base"], out,
                         exclude_for_output=vocab)
    assert result.tensors == result.output_tensors + 2
    assert any("vocabulary" in n and "lm_head.weight" in n for n in result.notes)


def test_configs_the_hook_cannot_observe_are_refused_before_writing(fam, tmp_path):
    slerp = (f"merge_method: slerp\nbase_model: {fam['child0']}\nmodels:\n"
             f"  - model: {fam['child0']}\n  - model: {fam['child1']}\n"
             "parameters: {t: 0.5}\ndtype: float32\n")
    with pytest.raises(UserError, match="slerp's base_model is one of the models it interpolates"
                                        ".*give --base"):
        _hooked(slerp, tmp_path / "o1")
    linear = (f"merge_method: linear\nmodels:\n  - model: {fam['child0']}\n"
              f"  - model: {fam['child1']}\nparameters: {{weight: 0.5}}\ndtype: float32\n")
    with pytest.raises(UserError, match=r"has no base_model.*--base"):
        _hooked(linear, tmp_path / "o2")
    moved = (f"merge_method: linear\nslices:\n  - sources:\n"
             f"    - model: {fam['child0']}\n      layer_range: [0, 1]\n      parameters: {{weight: 0.5}}\n"
             f"    - model: {fam['child1']}\n      layer_range: [1, 2]\n      parameters: {{weight: 0.5}}\n"
             "dtype: float32\n")
    with pytest.raises(UserError, match="same-named tensors"):
        _hooked(moved, tmp_path / "o3", ancestor=fam["base"])
    assert not any((tmp_path / n).exists() for n in ("o1", "o2", "o3"))


def test_a_failed_kinship_keeps_the_merge_and_says_why(fam, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(fam["child1"], broken)
    weights = load_file(broken / "model.safetensors")
    weights["model.norm.weight"][0] = float("nan")
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    text = (f"merge_method: task_arithmetic\nbase_model: {fam['base']}\nmodels:\n"
            f"  - model: {fam['child0']}\n    parameters: {{weight: 0.5}}\n"
            f"  - model: {broken}\n    parameters: {{weight: 0.5}}\ndtype: float32\n")
    with pytest.raises(KinshipNotComputed, match="NaN or Inf in tensor 'model.norm.weight'"):
        _hooked(text, tmp_path / "o")
    assert (tmp_path / "o" / "model.safetensors").exists()
    assert not (tmp_path / "o" / KINSHIP_FILE).exists()


def test_the_hook_leaves_torch_threads_of_every_other_thread_alone(fam, tmp_path):
    """The reducing thread runs single-threaded torch, set for itself only: in a fresh
    interpreter (where mergekit's thread has not used torch yet), mergekit's thread and any
    thread started later still get torch's default (else the merge's reductions would split
    differently and the weights change in their last bits)."""
    import subprocess
    import sys

    text = (f"merge_method: slerp\nbase_model: {fam['child0']}\nmodels:\n"
            f"  - model: {fam['child0']}\n  - model: {fam['child1']}\n"
            "parameters: {t: 0.5}\ndtype: float32\n")
    code = (
        "import sys, threading, yaml, torch\n"
        "from mergekit.config import MergeConfiguration\n"
        "from mergekit.options import MergeOptions\n"
        "from mergekit_kinship import merge_observer\n"
        "from mergekit_kinship.merge_kinship import merge_with_kinship\n"
        "seen = []\n"
        "class Spy(merge_observer.MergeObserver):\n"
        "    def _reduce(self, *job):\n"
        "        seen.append(torch.get_num_threads())\n"
        "        super()._reduce(*job)\n"
        f"text = {text!r}\n"
        "config = MergeConfiguration.model_validate(yaml.safe_load(text))\n"
        "merge_observer.MergeObserver = Spy\n"
        f"merge_with_kinship(config, {str(tmp_path / 'o')!r}, MergeOptions(quiet=True), "
        f"config_source=text, ancestor={str(fam['base'])!r})\n"
        "later = []\n"
        "t = threading.Thread(target=lambda: later.append(torch.get_num_threads())); t.start(); t.join()\n"
        "print(torch.get_num_threads(), later[0], sorted(set(seen)))\n")
    default = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                             capture_output=True, text=True, check=True).stdout.split()[0]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    main, later, reducer = out.stdout.split(maxsplit=2)
    assert (main, later) == (default, default)
    assert reducer.strip() == "[1]"  # the reducing thread itself: one thread


# --- the contract with mergekit's internals (mergekit_kinship/merge_hook.py) -------------------

def _source_of(dotted: str):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return inspect.getsource(obj)
    raise ImportError(dotted)


def test_mergekit_functions_the_hook_mirrors_are_unchanged():
    """If this fails, a mergekit release changed code that merge_hook.py copies or relies on:
    compare the new source with merge_hook.run_merge_observed / planned_tensors /
    resolved_name / load_cast, update them, then the hashes."""
    from mergekit_kinship.merge_hook import MIRRORED_SOURCES

    changed = [name for name, digest in MIRRORED_SOURCES.items()
               if hashlib.sha256(_source_of(name).encode()).hexdigest()[:16] != digest]
    assert not changed, f"mergekit changed under the kinship hook: {changed}"


def test_mergekit_names_fields_and_signatures_the_hook_uses():
    from mergekit import merge as mergekit_merge
    from mergekit.graph import Executor, Task
    from mergekit.io.tasks import GatherTensors, LoadTensor, SaveTensor
    from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask
    from mergekit.tokenizer import PermutedVocabulary
    from mergekit.tokenizer.truncate import TruncatedVocabulary

    assert {"tensor_name", "tensor_task", "dtype"} <= set(SaveTensor.model_fields)
    assert {"gather_tensors", "output_weight", "method_name"} <= set(ExecuteMergeMethodTask.model_fields)
    assert {"weight_info", "dtype", "device"} <= set(GatherTensors.model_fields)
    assert {"model", "tensor", "dtype", "device", "optional", "aliases", "tied_names"} <= set(
        LoadTensor.model_fields)
    for wrapper in (PermutedVocabulary, TruncatedVocabulary):
        assert wrapper.model_fields["gather_tensors"].annotation is GatherTensors
    for name, params in {"_model_out_config": ["config", "arch_info", "trust_remote_code"],
                         "_update_config_vocab": ["config", "arch_info", "tokenizer",
                                                  "pad_to_multiple_of"],
                         "_set_chat_template": ["tokenizer", "merge_config", "trust_remote_code"],
                         "_copy_tokenizer": ["merge_config", "out_path", "options"],
                         "_copy_tagalong_files": ["merge_config", "out_path", "files", "options"]
                         }.items():
        assert list(inspect.signature(getattr(mergekit_merge, name)).parameters) == params, name
    assert list(inspect.signature(Executor.__init__).parameters)[:4] == [
        "self", "targets", "math_device", "storage_device"]
    assert {"arguments", "execute", "group_label", "priority"} <= set(vars(Task))


def test_resolved_name_is_mergekits_own(fam):
    """merge_hook.resolved_name mirrors LoadTensor._resolve_name (which group_label returns)."""
    from mergekit.common import ModelReference
    from mergekit.io.tasks import LoaderCache, LoadTensor

    from mergekit_kinship.merge_hook import resolved_name

    model = ModelReference.parse(str(fam["child0"]))
    LoaderCache().get(model)
    for tensor, tied in (("lm_head.weight", None), ("no.such.weight", ("lm_head.weight",)),
                         ("no.such.weight", None)):
        load = LoadTensor(model=model, tensor=tensor, tied_names=tied, optional=True)
        assert resolved_name(load) == load.group_label()
