"""``mergekit-kinship check MERGE.yaml`` on the config shapes of mergekit's own examples/, with
tiny local models: gradient SLERP over slices, linear, TIES with per-model gradients,
task arithmetic, a passthrough frankenmerge; and the errors a user can meet."""

from __future__ import annotations

import json
import textwrap

import pytest
from click.testing import CliRunner

from mergekit_kinship.cli import main
from mergekit_kinship.config_check import CONFLICT_THRESHOLD, check_config, pair_advice
from mergekit_kinship.streaming_kinship import kinship_matrix
from tiny_models import build_base, dense_deltas, dense_sign_conflict, make_child


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    """a and b share half their deltas; c is unrelated (sign conflict ~0.5 with both); twin is a
    plus a small fine-tune of its own (PCC with a above 0.9)."""
    root = tmp_path_factory.mktemp("check")
    base = build_base(root / "base")
    fam = {"root": root, "base": base}
    for name, seed, shared in (("a", 1, 9), ("b", 2, 9), ("c", 3, None)):
        fam[name] = make_child(base, root / name, seed=seed, shared_seed=shared)
    fam["twin"] = make_child(fam["a"], root / "twin", seed=4, scale=0.005)
    return fam


def write(fam, name: str, text: str):
    path = fam["root"] / name
    path.write_text(textwrap.dedent(text).format(**{k: v for k, v in fam.items() if k != "root"}))
    return path


def run(*args):
    return CliRunner().invoke(main, ["check", *[str(a) for a in args], "-q"])


def ok(*args):
    result = run(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def test_gradient_slerp_over_slices_needs_the_ancestor(fam):
    # examples/gradient-slerp.yml: slices with layer ranges, base_model = one end of the SLERP
    config = write(fam, "slerp.yml", """\
        slices:
          - sources:
              - model: {a}
                layer_range: [0, 2]
              - model: {twin}
                layer_range: [0, 2]
        merge_method: slerp
        base_model: {a}
        parameters:
          t:
            - filter: self_attn
              value: [0, 0.5, 0.3, 0.7, 1]
            - filter: mlp
              value: [1, 0.5, 0.7, 0.3, 0]
            - value: 0.5
        dtype: float16
        """)
    result = run(config)
    assert result.exit_code == 2
    assert "slerp uses base_model as an end point" in result.stderr and "--base" in result.stderr
    out = ok(config, "--base", fam["base"])
    assert out.splitlines()[0] == f"check of {config}: slerp of 2 models, ancestor base (--base)"
    assert "kinship compares the whole models" in out and "layers [0, 2)" in out
    for metric in ("pcc", "cosine", "euclidean", "sign_conflict"):
        assert f"{metric}  (mean over pairs" in out
    advice = [line for line in out.splitlines() if line.startswith("  a × twin: ")]
    assert len(advice) == 1 and "near-duplicates (PCC" in advice[0]


def test_ties_with_per_model_gradients_takes_its_base_model_as_ancestor(fam):
    # examples/ties.yml and bio-merge.yml: models with per-model (gradient) parameters
    config = write(fam, "ties.yml", """\
        models:
          - model: {a}
            parameters:
              density: [0.8, 0.3, 0.1]
              weight: [1.0, 0.8, 0.5]
          - model: {b}
            parameters: {{density: 0.5, weight: 0.5}}
          - model: {c}
            parameters: {{density: 0.5, weight: 0.5}}
          - model: {twin}
        merge_method: ties
        base_model: {base}
        parameters:
          normalize: false
          int8_mask: true
        dtype: bfloat16
        """)
    data = json.loads(ok(config, "--json"))
    assert data["ancestor"] == "base" and "ties takes the models' deltas from it" in data["ancestor_source"]
    assert data["models"] == ["a", "b", "c", "twin"] and data["sign_consensus"] is True
    models = [fam[n] for n in data["models"]]
    api = kinship_matrix(models, fam["base"], metrics="all", progress=False)
    assert data["matrix"]["values"] == json.loads(json.dumps(api.to_dict()["values"]))
    deltas = dict(zip(data["models"], dense_deltas(fam["base"], *models)))
    pairs = {(p["a"], p["b"]): p for p in data["pairs"]}
    assert len(pairs) == 6
    for (x, y), pair in pairs.items():
        assert abs(pair["sign_conflict"] - dense_sign_conflict(deltas[x], deltas[y])) <= 1e-12
        assert pair["near_duplicates"] == (pair["pcc"] > 0.9)
        assert pair["conflicting"] == (pair["sign_conflict"] >= CONFLICT_THRESHOLD)
    assert pairs[("a", "twin")]["near_duplicates"] and not pairs[("a", "b")]["near_duplicates"]
    assert pairs[("a", "c")]["conflicting"] and "ties elects one sign" in pairs[("a", "c")]["advice"]
    assert "no warning" in pairs[("a", "b")]["advice"]  # shared deltas: sign conflict ~1/3


def test_linear_has_no_ancestor_and_suggests_a_sign_consensus_method(fam):
    # examples/linear.yml: models with weights, no base_model
    config = write(fam, "linear.yml", """\
        models:
          - model: {a}
            parameters: {{weight: 1.0}}
          - model: {b}
            parameters: {{weight: 0.3}}
          - model: {c}
            parameters: {{weight: 0.5}}
        merge_method: linear
        dtype: float16
        """)
    result = run(config)
    assert result.exit_code == 2 and "linear takes no base_model: give the shared ancestor with --base" in result.stderr
    out = ok(config, "--base", fam["base"], "--conflict", "0.45", "--saturation", "0.95")
    lines = {line.split(":")[0].strip(): line for line in out.splitlines() if " × " in line}
    assert set(lines) == {"a × b", "a × c", "b × c"}
    assert "a sign-consensus method (ties, dare_ties) may fit better" in lines["a × c"]
    assert "≥ 0.45" in lines["a × c"] and "no warning" in lines["a × b"]


def test_task_arithmetic_leaves_out_the_ancestor_listed_among_its_models(fam):
    config = write(fam, "ta.yml", """\
        models:
          - model: {base}
          - model: {a}
            parameters: {{weight: 0.5}}
          - model: {b}
            parameters: {{weight: 0.5}}
        merge_method: task_arithmetic
        base_model: {base}
        dtype: float32
        """)
    result = check_config(config, progress=False)
    assert result.models == ["a", "b"] and result.ancestor == "base"
    assert any("is the ancestor itself: not compared" in note for note in result.notes)
    x, y = dense_deltas(fam["base"], fam["a"], fam["b"])
    assert abs(result.pairs[0].sign_conflict - dense_sign_conflict(x, y)) <= 1e-12


def test_passthrough_frankenmerge_with_base(fam):
    # examples/orcamini-platy-44layer.yml: one model per slice, different layer ranges
    config = write(fam, "passthrough.yml", """\
        slices:
          - sources:
            - model: {a}
              layer_range: [0, 1]
          - sources:
            - model: {c}
              layer_range: [1, 2]
        merge_method: passthrough
        dtype: float16
        """)
    assert "passthrough cannot merge two models" in run(config).stderr
    out = ok(config, "--base", fam["base"])
    assert "a layers [0, 1)" in out and "c layers [1, 2)" in out and "  a × c: " in out


def test_configs_that_cannot_be_checked_say_why_in_one_line(fam, tmp_path):
    cases = {
        "hub.yml": ("models:\n  - model: psmathur/orca_mini_v3_13b\n  - model: garage-bAInd/Platypus2-13B\n"
                    "merge_method: ties\nbase_model: TheBloke/Llama-2-13B-fp16\n",
                    "could not be fetched from the hub"),
        "multi.yml": (f"models:\n  - model: {fam['a']}\nmerge_method: linear\n---\n"
                      f"models:\n  - model: {fam['b']}\nmerge_method: linear\n", "2 documents (a mergekit-multi config)"),
        "broken.yml": ("merge_method: [\n", "not valid YAML (line 2"),
        "schema.yml": (f"models:\n  - model: {fam['a']}\n", "not a mergekit config: merge_method: Field required"),
        "one.yml": (f"models:\n  - model: {fam['a']}\nmerge_method: ties\nbase_model: {fam['base']}\n",
                    "1 model(s) besides the ancestor"),
        "unknown.yml": (f"models:\n  - model: {fam['a']}\n  - model: {fam['b']}\nmerge_method: ranked_tie\n"
                        f"base_model: {fam['base']}\n", "unknown merge method 'ranked_tie'"),
        "lora.yml": (f"models:\n  - model: {fam['a']}+{fam['b']}\n  - model: {fam['b']}\nmerge_method: ties\n"
                     f"base_model: {fam['base']}\n", "LoRA references"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        result = run(path)
        assert result.exit_code == 2, (name, result.output)
        errors = result.stderr.strip().splitlines()
        assert len(errors) == 1 and errors[0].startswith("Error: ") and message in errors[0], (name, errors)
    assert "no such file" in run(tmp_path / "missing.yml").stderr.lower()


def test_pair_advice_thresholds():
    near, clash, text = pair_advice(0.95, 0.1, method="slerp", consensus=False, saturation=0.9, threshold=0.4)
    assert near and not clash and text.startswith("near-duplicates")
    near, clash, text = pair_advice(0.2, 0.4, method="slerp", consensus=False, saturation=0.9, threshold=0.4)
    assert clash and not near and "averaged by slerp, they partly cancel" in text
    assert pair_advice(0.9, 0.39, method="ties", consensus=True, saturation=0.9, threshold=0.4)[2].startswith(
        "no warning (PCC 0.9000 ≤ 0.90, sign conflict 0.3900 < 0.40)")
