"""The kinship engine against dense float64 numpy on tiny Llama models with known deltas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mergekit_kinship.kinship_accumulators as accumulators
import mergekit_kinship.kinship_stream as stream
from mergekit_kinship.errors import UserError
from mergekit_kinship.streaming_kinship import KinshipWarning, kinship, kinship_matrix
from tiny_models import (
    build_base,
    dense_deltas,
    dense_kinship,
    dense_metrics,
    make_child,
    read_weights,
    write_model,
)

RTOL = 1e-9
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def assert_close(values: dict, reference: dict, rtol: float = RTOL):
    """Every metric of ``values`` that ``reference`` has (at least one) equals it."""
    compared = [metric for metric in values if metric in reference]
    assert compared, "no metric to compare"
    for metric in compared:
        assert values[metric] == pytest.approx(reference[metric], rel=rtol, abs=1e-15), metric


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A fp32 base; children a, b (sharing half their delta), c (unrelated); each also in bf16/fp16."""
    root = tmp_path_factory.mktemp("family")
    base = build_base(root / "base")
    fam = {"root": root, "base": base}
    for name, seed, shared in (("a", 1, 9), ("b", 2, 9), ("c", 3, None)):
        fam[name] = make_child(base, root / name, seed=seed, shared_seed=shared)
    for tag, dtype in DTYPES.items():
        if tag == "fp32":
            continue
        weights = read_weights(base)
        fam[f"base_{tag}"] = write_model(root / f"base_{tag}", {k: v.to(dtype) for k, v in weights.items()}, base)
        for name in ("a", "b"):
            fam[f"{name}_{tag}"] = write_model(
                root / f"{name}_{tag}", {k: v.to(dtype) for k, v in read_weights(fam[name]).items()}, base
            )
    return fam


@pytest.fixture(params=["default", "tiny"])
def chunking(request, monkeypatch):
    """Default blocks, and blocks of 256 bytes reduced 16 elements at a time, so that every tensor
    spans many blocks and sub-chunks and the float64 merges between them are exercised."""
    if request.param == "tiny":
        monkeypatch.setattr(stream, "BLOCK_BYTES", 256)
        monkeypatch.setattr(accumulators, "CPU_SUBCHUNK", 16)
    return request.param


@pytest.mark.parametrize("tag", list(DTYPES))
def test_pair_equals_dense_float64(family, chunking, tag):
    suffix = "" if tag == "fp32" else f"_{tag}"
    base, a, b = family[f"base{suffix}"], family[f"a{suffix}"], family[f"b{suffix}"]
    result = kinship(a, b, base, metrics="all", progress=False)
    assert result.metrics == ["pcc", "cosine", "euclidean", "sign_conflict"]
    assert_close(result.values, dense_kinship(base, a, b))
    assert result.n_params == sum(t.numel() for t in read_weights(base).values())
    assert (result.model_a, result.model_b, result.base) == (a.name, b.name, base.name)
    # a and b share half of their deltas' variance; c shares nothing with a
    assert 0.3 < result.values["pcc"] < 0.7
    assert abs(kinship(a, family["c"], family["base"], progress=False).values["pcc"]) < 0.1


def test_mixed_dtypes_equal_dense(family):
    base, a, b = family["base"], family["a_bf16"], family["b_fp16"]
    assert_close(kinship(a, b, base, progress=False).values, dense_kinship(base, a, b))


def test_sharded_and_bin_equal_single_file(family):
    root, base = family["root"], family["base"]
    weights = read_weights(family["b"])
    sharded = write_model(root / "b_sharded", weights, base, shards=3)
    as_bin = write_model(root / "b_bin", weights, base, fmt="bin")
    assert len(list(sharded.glob("*.safetensors"))) == 3
    single = kinship(family["a"], family["b"], base, progress=False).values
    for other in (sharded, as_bin):
        values = kinship(family["a"], other, base, progress=False).values
        assert_close(values, single, rtol=1e-12)
    # a sharded base, too
    sharded_base = write_model(root / "base_sharded", read_weights(base), base, shards=2)
    assert_close(kinship(family["a"], family["b"], sharded_base, progress=False).values, single, rtol=1e-12)


def test_matrix_entries_equal_pairwise_runs(family, chunking):
    models = [family["a"], family["b"], family["c"], family["a_bf16"]]
    matrix = kinship_matrix(models, family["base"], metrics="all", progress=False)
    assert matrix.names == ["a", "b", "c", "a_bf16"]
    for i in range(4):
        assert matrix.values["pcc"][i][i] == 1.0 and matrix.values["cosine"][i][i] == 1.0
        assert matrix.values["euclidean"][i][i] == 0.0 and matrix.values["sign_conflict"][i][i] == 0.0
        for j in range(i + 1, 4):
            pair = kinship(models[i], models[j], family["base"], metrics="all", progress=False).values
            for metric in ("pcc", "cosine", "euclidean", "sign_conflict"):
                assert matrix.values[metric][i][j] == matrix.values[metric][j][i]
                assert matrix.values[metric][i][j] == pytest.approx(pair[metric], rel=1e-12)
            assert_close({m: matrix.values[m][i][j] for m in pair}, dense_kinship(family["base"], models[i], models[j]))
    pccs = [matrix.values["pcc"][i][j] for i in range(4) for j in range(i + 1, 4)]
    assert matrix.mean("pcc") == pytest.approx(sum(pccs) / len(pccs))
    assert matrix.to_dict()["values"]["pcc"] == matrix.values["pcc"]


def test_matrix_pairs_restrict_entries_and_reads(family, tmp_path):
    # A model in no requested pair is never read: NaN weights in it go unnoticed.
    poisoned = read_weights(family["c"])
    poisoned["model.layers.0.mlp.up_proj.weight"][0, 0] = float("nan")
    unread = write_model(tmp_path / "unread", poisoned, family["base"])
    models = [family["a"], family["b"], unread, family["c"]]
    matrix = kinship_matrix(models, family["base"], metrics="pcc", pairs=[(0, 1), (3, 0)], progress=False)
    grid = matrix.values["pcc"]
    assert grid[1][2] is None and grid[2][3] is None and grid[1][3] is None
    assert grid[0][3] == grid[3][0] == pytest.approx(dense_kinship(family["base"], family["a"], family["c"])["pcc"], rel=RTOL)
    assert matrix.metrics == ["pcc"]


@pytest.mark.parametrize("breakdown", ["layer", "module"])
def test_breakdown_groups_equal_dense_over_their_tensors(family, breakdown):
    base, a, b = family["base"], family["a"], family["b"]
    result = kinship(a, b, base, breakdown=breakdown, metrics="all", progress=False)
    patterns = {
        "layer": {
            "embeddings": ["*embed_tokens*"], "layer 0": ["model.layers.0.*"], "layer 1": ["model.layers.1.*"],
            "norm": ["model.norm.*"], "head": ["lm_head.*"],
        },
        "module": {
            "embeddings": ["*embed_tokens*"], "attention": ["*self_attn*"], "mlp": ["*.mlp.*"],
            "norm": ["*norm*"], "head": ["lm_head.*"],
        },
    }[breakdown]
    assert list(result.breakdown) == list(patterns)
    for group, include in patterns.items():
        entry = result.breakdown[group]
        assert_close(entry, dense_kinship(base, a, b, include=include))
        assert entry["params"] == dense_deltas(base, a, include=include)[0].size
    assert sum(e["params"] for e in result.breakdown.values()) == result.n_params
    assert sum(e["tensors"] for e in result.breakdown.values()) == result.n_tensors
    assert_close(result.values, dense_kinship(base, a, b))


def test_include_and_exclude_patterns(family):
    base, a, b = family["base"], family["a"], family["b"]
    exclude = ["*embed_tokens*", "lm_head.*"]
    result = kinship(a, b, base, exclude=exclude, progress=False)
    assert_close(result.values, dense_kinship(base, a, b, exclude=exclude))
    assert result.n_tensors == len(read_weights(base)) - 2
    only_mlp = kinship(a, b, base, include="*mlp*", progress=False)
    assert_close(only_mlp.values, dense_kinship(base, a, b, include=["*mlp*"]))
    with pytest.warns(KinshipWarning, match="'no_such_tensor' matches no tensor"):
        kinship(a, b, base, exclude=["no_such_tensor"], metrics="pcc", progress=False)


def test_added_vocabulary_rows_are_left_out_with_one_warning(family, tmp_path):
    base = family["base"]
    bigger = make_child(base, tmp_path / "bigger", seed=4, shared_seed=9, extra_vocab=5)
    with pytest.warns(KinshipWarning) as caught:
        result = kinship(family["a"], bigger, base, progress=False)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "69 vocabulary rows" in message and "leaving out 5 rows" in message and "lm_head.weight" in message
    assert result.warnings == [message]
    assert_close(result.values, dense_kinship(base, family["a"], bigger))


def test_near_identical_models_keep_euclidean_exact(family, tmp_path):
    # ‖δa − δa'‖² is ~1e-12 of ‖δa‖²: from moments alone it would keep about four digits.
    weights = read_weights(family["a"])
    weights["model.layers.1.mlp.down_proj.weight"][3, 7] += 1e-5
    twin = write_model(tmp_path / "twin", weights, family["base"])
    ref = dense_kinship(family["base"], family["a"], twin)
    assert ref["euclidean"] == pytest.approx(1e-5, rel=1e-3)
    result = kinship(family["a"], twin, family["base"], progress=False)
    assert_close(result.values, ref)


def test_pcc_is_stable_when_deltas_have_a_large_mean(family, tmp_path, monkeypatch):
    # Deltas ≈ 30 + 1e-4·noise: Σxy/n − x̄ȳ cancels ~7 digits; centred moments must not.
    monkeypatch.setattr(accumulators, "CPU_SUBCHUNK", 1000)
    base = family["base"]
    weights = read_weights(base)
    gen = torch.Generator().manual_seed(5)
    shared = {k: torch.randn(v.shape, generator=gen) for k, v in weights.items()}
    children = []
    for k in range(2):
        w = {n: v + 30.0 + 1e-4 * (shared[n] + torch.randn(v.shape, generator=gen)) for n, v in weights.items()}
        children.append(write_model(tmp_path / f"offset{k}", w, base))
    x, y = dense_deltas(base, *children)
    ref = dense_metrics(x, y)
    naive = (np.mean(x * y) - x.mean() * y.mean()) / np.sqrt((np.mean(x * x) - x.mean() ** 2) * (np.mean(y * y) - y.mean() ** 2))
    assert abs(naive - ref["pcc"]) > 1e-6 * abs(ref["pcc"])  # the case really is ill-conditioned
    assert_close(kinship(*children, base, progress=False).values, ref)


def test_metric_names_and_aliases(family):
    result = kinship(family["a"], family["b"], family["base"], metrics="ED, cs", progress=False)
    assert result.metrics == ["euclidean", "cosine"] and set(result.values) == {"euclidean", "cosine"}


def test_device_choice(family):
    a, b, base = family["a_bf16"], family["b_bf16"], family["base_bf16"]
    cpu = kinship(a, b, base, device="cpu", metrics="all", progress=False).values
    assert_close(cpu, dense_kinship(base, a, b))
    with pytest.raises(UserError, match="device 'tpu9'"):
        kinship(a, b, base, device="tpu9", progress=False)
    if torch.cuda.is_available():  # the GPU path: same float64 arithmetic, other reduction order
        # (sign counts there take the two-GEMM path: GPU sub-chunks are too long to pack)
        assert_close(kinship(a, b, base, device="cuda", metrics="all", progress=False).values, cpu, rtol=1e-12)
    else:
        with pytest.raises(UserError, match="no CUDA GPU"):
            kinship(a, b, base, device="cuda", progress=False)


def test_package_level_api(family):
    # The engine module has its own name, so importing it never shadows the package's function.
    import mergekit_kinship.streaming_kinship  # noqa: F401
    from mergekit_kinship import kinship as package_kinship, kinship_matrix as package_matrix

    assert package_kinship is kinship and package_matrix is kinship_matrix
    result = package_kinship(family["a"], family["b"], family["base"], metrics="pcc", progress=False)
    assert result.values == kinship(family["a"], family["b"], family["base"], metrics="pcc", progress=False).values


def test_empty_tensor_adds_nothing(family, tmp_path):
    # A zero-element tensor (shape [0, 4]) in every model: no item size to divide blocks by.
    base, a, b = family["base"], family["a"], family["b"]
    out = {}
    for name in ("base", "a", "b"):
        weights = read_weights(family[name])
        weights["model.empty"] = torch.zeros(0, 4)
        out[name] = write_model(tmp_path / name, weights, base)
    result = kinship(out["a"], out["b"], out["base"], progress=False)
    assert_close(result.values, dense_kinship(base, a, b))
    assert result.n_tensors == len(read_weights(base)) + 1


def test_accumulator_fed_in_memory_equals_the_streaming_pass(family, tmp_path):
    """The public accumulator, fed whole tensors already in memory (as a merge hook would), gives
    the streaming engine's values, per group too; a model with added vocabulary rows is fed its
    first base.shape[0] rows."""
    from mergekit_kinship.kinship_accumulators import KinshipAccumulator
    from mergekit_kinship.kinship_selection import group_of

    base = family["base"]
    bigger = make_child(base, tmp_path / "bigger", seed=4, shared_seed=9, extra_vocab=5)
    paths = [family["a"], family["b"], bigger]
    weights = [read_weights(p) for p in (base, *paths)]
    acc = KinshipAccumulator(len(paths))
    for name, b in weights[0].items():
        acc.add(b, [w[name][: b.shape[0]] for w in weights[1:]], group_of(name, "module"), tensor=name)
    with pytest.warns(KinshipWarning):
        matrix = kinship_matrix(paths, base, metrics="all", progress=False)
    assert acc.n_params() == matrix.n_params
    for i in range(3):
        for j in range(i + 1, 3):
            for metric in ("pcc", "cosine", "euclidean", "sign_conflict"):
                assert acc.value(metric, i, j) == pytest.approx(matrix.values[metric][i][j], rel=1e-12)
    assert_close({m: acc.value(m, 0, 1) for m in ("pcc", "cosine", "euclidean", "sign_conflict")},
                 dense_kinship(base, family["a"], family["b"]))
    assert acc.value("cs", 0, 1) == acc.value("cosine", 0, 1)  # the one metric vocabulary
    split = kinship(family["a"], family["b"], base, breakdown="module", metrics="all", progress=False)
    for group, entry in split.breakdown.items():
        assert acc.n_params(group) == entry["params"]
        assert acc.value("pcc", 0, 1, group) == pytest.approx(entry["pcc"], rel=1e-12)
        assert acc.value("sign_conflict", 0, 1, group) == entry["sign_conflict"]  # exact counts


def test_accumulator_rejects_what_it_cannot_compare(family):
    from mergekit_kinship.kinship_accumulators import KinshipAccumulator

    acc = KinshipAccumulator(2)
    b = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="expected 2 model tensors"):
        acc.add(b, [b + 1])
    with pytest.raises(ValueError, match=r"'w': shape \[3, 4\]"):
        acc.add(b, [b + 1, (b + 1).T], tensor="w")
    bad = b.clone()
    bad[1, 1] = float("inf")
    with pytest.raises(UserError, match="NaN or Inf in tensor 'w' of model 1"):
        acc.add(b, [b + 1, bad], tensor="w")
    assert acc.groups == {}  # nothing was merged
    acc.add(b, [b + 1, b - 1])
    assert acc.value("cosine", 0, 1) == -1.0 and acc.value("pcc", 0, 1) is None  # constant deltas
