"""Bad input to ``kinship`` / ``matrix``: one line ``Error: ...`` naming the culprit, exit status 2."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from mergekit_kinship.cli import main
from mergekit_kinship.errors import UserError
from mergekit_kinship.streaming_kinship import kinship
from tiny_models import build_base, make_child, read_weights, write_model


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    base = build_base(root / "base")
    return {"root": root, "base": base, "a": make_child(base, root / "a", seed=1), "b": make_child(base, root / "b", seed=2)}


def run_cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def assert_user_error(result, *fragments):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def with_tensor(fam, name, tensor_name, value):
    weights = read_weights(fam["a"])
    weights[tensor_name].view(-1)[5] = value
    return write_model(fam["root"] / name, weights, fam["base"])


def test_unknown_metric_is_reported_before_anything_is_read(fam):
    # the base does not even exist: the metric is checked first
    result = run_cli("kinship", fam["a"], fam["b"], "--base", "/no/such/base", "--metric", "pcc,spearman")
    assert_user_error(result, "unknown metric 'spearman'", "pcc, cosine, euclidean")
    result = run_cli("matrix", fam["a"], fam["b"], "--base", "/no/such/base", "--metric", "kl")
    assert_user_error(result, "unknown metric 'kl'")


def test_matrix_needs_two_models(fam):
    assert_user_error(run_cli("matrix", fam["a"], "--base", fam["base"]), "at least two models, got 1")


def test_path_that_is_not_a_model(fam, tmp_path):
    assert_user_error(run_cli("kinship", fam["a"], tmp_path, "--base", fam["base"]), "is not a model", str(tmp_path))
    missing = tmp_path / "nowhere" / "model"
    assert_user_error(run_cli("kinship", missing, fam["b"], "--base", fam["base"]), str(missing), "not a model")
    assert_user_error(
        run_cli("kinship", fam["a"] / "config.json", fam["b"], "--base", fam["base"]), "is a file, not a model folder"
    )


def test_hub_id_that_cannot_be_fetched_offline(fam):
    line = assert_user_error(run_cli("kinship", "someone/no-such-model", fam["b"], "--base", fam["base"]))
    assert line.startswith("Error: someone/no-such-model: not a local folder and could not be fetched from the hub")
    # a revision is the hub's to resolve, and is named with the repo
    line = assert_user_error(run_cli("kinship", "someone/no-such-model@v2", fam["b"], "--base", fam["base"]))
    assert line.startswith("Error: someone/no-such-model@v2: not a local folder")


def test_different_architecture(fam):
    other = fam["root"] / "mistral"
    shutil.copytree(fam["a"], other, dirs_exist_ok=True)
    cfg = json.loads((other / "config.json").read_text())
    cfg["architectures"] = ["MistralForCausalLM"]
    (other / "config.json").write_text(json.dumps(cfg))
    assert_user_error(run_cli("kinship", other, fam["b"], "--base", fam["base"]), "MistralForCausalLM", "LlamaForCausalLM")


def test_different_hidden_size(fam):
    wide = build_base(fam["root"] / "wide", hidden_size=48, num_attention_heads=4)
    assert_user_error(run_cli("matrix", fam["a"], wide, "--base", fam["base"]), "hidden size 48", "32")


def test_model_identical_to_base(fam):
    copy = fam["root"] / "copy_of_base"
    shutil.copytree(fam["base"], copy, dirs_exist_ok=True)
    assert_user_error(run_cli("kinship", copy, fam["a"], "--base", fam["base"]), "copy_of_base", "identical to the base", "undefined")
    assert_user_error(run_cli("kinship", fam["base"], fam["a"], "--base", fam["base"]), "is the base itself", "undefined")
    # euclidean distance is defined for a zero delta
    result = run_cli("kinship", copy, fam["a"], "--base", fam["base"], "--metric", "ed", "--json", "-q")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["values"]["euclidean"] > 0


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_in_a_weight_names_the_tensor(fam, value):
    bad = with_tensor(fam, f"bad_{value}", "model.layers.1.mlp.up_proj.weight", value)
    assert_user_error(
        run_cli("kinship", fam["b"], bad, "--base", fam["base"]), "NaN or Inf", "'model.layers.1.mlp.up_proj.weight'", bad.name
    )
    # left out, it does not matter
    result = run_cli("kinship", fam["b"], bad, "--base", fam["base"], "--exclude", "*up_proj*", "-q")
    assert result.exit_code == 0, result.output


def test_nan_in_the_base_names_the_base(fam):
    weights = read_weights(fam["base"])
    weights["model.norm.weight"][0] = float("nan")
    base = write_model(fam["root"] / "nan_base", weights, fam["base"])
    with pytest.raises(UserError, match=r"NaN or Inf in tensor 'model.norm.weight' of model nan_base"):
        kinship(fam["a"], fam["b"], base, progress=False)


def test_truncated_safetensors_file(fam):
    cut = fam["root"] / "truncated"
    shutil.copytree(fam["a"], cut, dirs_exist_ok=True)
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[:-100])
    assert_user_error(run_cli("kinship", cut, fam["b"], "--base", fam["base"]), "truncated", "model.safetensors")


@pytest.mark.parametrize("damage", ["garbage header", "empty file", "huge header length"])
def test_corrupt_safetensors_file(fam, damage):
    bad = fam["root"] / f"corrupt_{damage.replace(' ', '_')}"
    shutil.copytree(fam["a"], bad, dirs_exist_ok=True)
    file = bad / "model.safetensors"
    data = bytearray(file.read_bytes())
    if damage == "garbage header":
        data[8:40] = b"\x00\xff" * 16
    elif damage == "empty file":
        data = bytearray()
    else:
        data[:8] = (2**40).to_bytes(8, "little")
    file.write_bytes(bytes(data))
    assert_user_error(run_cli("kinship", bad, fam["b"], "--base", fam["base"]), "model.safetensors")
    with pytest.raises(UserError, match="corrupt|truncated"):
        kinship(bad, fam["b"], fam["base"], progress=False)


def test_missing_shard_of_a_sharded_model(fam):
    sharded = write_model(fam["root"] / "sharded", read_weights(fam["a"]), fam["base"], shards=2)
    (sharded / "model-00002-of-00002.safetensors").unlink()
    assert_user_error(run_cli("kinship", sharded, fam["b"], "--base", fam["base"]), "model-00002-of-00002.safetensors", "missing")


def test_missing_tensor_is_named_and_can_be_excluded(fam):
    weights = read_weights(fam["a"])
    del weights["model.layers.0.self_attn.k_proj.weight"]
    partial = write_model(fam["root"] / "partial", weights, fam["base"])
    assert_user_error(
        run_cli("kinship", partial, fam["b"], "--base", fam["base"]), "'model.layers.0.self_attn.k_proj.weight'", "--exclude"
    )
    result = run_cli("kinship", partial, fam["b"], "--base", fam["base"], "--exclude", "*layers.0.self_attn.k_proj*", "-q")
    assert result.exit_code == 0, result.output


def test_shape_mismatch_is_named(fam):
    weights = read_weights(fam["a"])
    name = "model.layers.1.mlp.gate_proj.weight"
    weights[name] = weights[name].T.contiguous()
    swapped = write_model(fam["root"] / "swapped", weights, fam["base"])
    assert_user_error(run_cli("kinship", swapped, fam["b"], "--base", fam["base"]), f"'{name}'", "[32, 64]", "[64, 32]")


def test_smaller_vocabulary_than_the_base_is_an_error(fam):
    weights = read_weights(fam["a"])
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        weights[name] = weights[name][:60].contiguous()
    small = write_model(fam["root"] / "small_vocab", weights, fam["base"], config_updates={"vocab_size": 60})
    assert_user_error(run_cli("kinship", small, fam["b"], "--base", fam["base"]), "shape [60, 32]", "[64, 32]")


def test_integer_tensor_must_be_excluded(fam):
    weights = read_weights(fam["a"])
    weights["model.step"] = torch.tensor([3], dtype=torch.int64)
    base_weights = read_weights(fam["base"])
    base_weights["model.step"] = torch.tensor([1], dtype=torch.int64)
    base = write_model(fam["root"] / "int_base", base_weights, fam["base"])
    a = write_model(fam["root"] / "int_a", weights, fam["base"])
    assert_user_error(run_cli("kinship", a, fam["b"], "--base", base), "'model.step'", "I64")


@pytest.mark.parametrize("option", ["--csv", "--plot"])
def test_output_file_in_a_missing_folder_fails_before_reading(fam, tmp_path, option):
    target = tmp_path / "no_such_dir" / ("k.csv" if option == "--csv" else "k.png")
    line = assert_user_error(run_cli("matrix", fam["a"], fam["b"], "--base", fam["base"], "-q", option, target),
                             option, "no such folder")
    assert str(target.parent) in line


@pytest.mark.parametrize("device", ["meta", "mps"])
def test_device_that_cannot_hold_float64_sums(fam, device):
    assert_user_error(run_cli("kinship", fam["a"], fam["b"], "--base", fam["base"], "--device", device),
                      f"device '{device}'", "'cpu' or 'cuda'")


@pytest.mark.parametrize("field, value", [("data_offsets", ["0", "128"]), ("data_offsets", [0.0, 128.0]),
                                          ("shape", [-32, -1])])
def test_safetensors_header_with_bad_numbers(fam, field, value):
    import struct

    bad = fam["root"] / f"header_{field}_{value}"
    shutil.copytree(fam["a"], bad, dirs_exist_ok=True)
    file = bad / "model.safetensors"
    data = file.read_bytes()
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + hlen])
    header["model.norm.weight"][field] = value
    raw = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + hlen :])
    assert_user_error(run_cli("kinship", bad, fam["b"], "--base", fam["base"]), "corrupt safetensors header",
                      "'model.norm.weight'")


def test_hub_retries_are_not_printed(fam, tmp_path):
    """Offline, huggingface_hub logs every retry on stderr (a dozen lines, with real network
    errors); the user sees only our one line. A real process, so the hub's own log handler is live."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import logging
        import huggingface_hub
        def snapshot_download(*args, **kwargs):
            logging.getLogger("huggingface_hub.utils._http").warning("'Name or service not known' thrown while requesting")
            raise OSError("Name or service not known")
        huggingface_hub.snapshot_download = snapshot_download
        from mergekit_kinship.cli import main
        main(["kinship", "someone/no-such-model", {str(fam['b'])!r}, "--base", {str(fam['base'])!r}, "-q"])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "Error: someone/no-such-model: not a local folder and could not be fetched from the hub "
        "(OSError: Name or service not known)"
    ]


@pytest.mark.parametrize("shard, fragment", [(5, "corrupt shard index"), (".", "missing")])
def test_shard_index_naming_no_file(fam, shard, fragment):
    sharded = write_model(fam["root"] / f"bad_index_{shard}", read_weights(fam["a"]), fam["base"], shards=2)
    index_file = sharded / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    index["weight_map"]["lm_head.weight"] = shard
    index_file.write_text(json.dumps(index))
    assert_user_error(run_cli("kinship", sharded, fam["b"], "--base", fam["base"]), "model.safetensors.index.json", fragment)
