"""sign_conflict: exact integer counts in the streaming pass, against dense numpy counting."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import mergekit_kinship.kinship_accumulators as accumulators
import mergekit_kinship.kinship_stream as stream
from mergekit_kinship.errors import UserError
from mergekit_kinship.formatting import metric_value
from mergekit_kinship.kinship_accumulators import KinshipAccumulator
from mergekit_kinship.metrics import canonical, is_distance, relatedness, self_kinship
from mergekit_kinship.streaming_kinship import KinshipWarning, kinship, kinship_matrix
from tiny_models import build_base, dense_deltas, dense_sign_conflict, make_child, read_weights, write_model

TOL = 1e-12


@pytest.fixture(params=["default", "tiny blocks", "two GEMMs"])
def reduction(request, monkeypatch):
    """Three ways through the reducer: default blocks (packed sign codes, one GEMM); 256-byte
    blocks of 16-element sub-chunks (many blocks and sub-chunks whose counts add up); and the
    general path of float64 sources and GPU-sized sub-chunks (signs and two GEMMs)."""
    if request.param == "tiny blocks":
        monkeypatch.setattr(stream, "BLOCK_BYTES", 256)
        monkeypatch.setattr(accumulators, "CPU_SUBCHUNK", 16)
    elif request.param == "two GEMMs":
        monkeypatch.setattr(accumulators, "_SIGN_BASE", 1)  # no sub-chunk is short enough to pack
    return request.param


def test_builtin_family_matrix_equals_dense_counting(family, reduction):
    """Every pair of the built-in family, to 1e-12 of numpy counting over the whole deltas."""
    names = list(family.models)
    paths = [family.models[n] for n in names]
    matrix = kinship_matrix(paths, family.base, metrics="sign_conflict,pcc", progress=False)
    deltas = dense_deltas(family.base, *paths)
    for i, j in itertools.combinations(range(len(names)), 2):
        reference = dense_sign_conflict(deltas[i], deltas[j])
        assert abs(matrix.values["sign_conflict"][i][j] - reference) <= TOL, (names[i], names[j])
        assert matrix.values["sign_conflict"][j][i] == matrix.values["sign_conflict"][i][j]
    assert all(matrix.values["sign_conflict"][i][i] == 0.0 for i in range(len(names)))
    # The family's kinship shows in both metrics: the grandchild and its parent agree most.
    pair = (names.index("reverse"), names.index("reverse_sort"))
    conflicts = [matrix.values["sign_conflict"][i][j] for i, j in itertools.combinations(range(len(names)), 2)]
    assert matrix.values["sign_conflict"][pair[0]][pair[1]] == min(conflicts) < 0.2
    assert max(conflicts) < 0.5  # siblings of one base still agree more often than chance


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("signs")
    base = build_base(root / "base")
    fam = {"base": base}
    for name, seed, shared in (("a", 1, 9), ("b", 2, 9), ("c", 3, None)):
        fam[name] = make_child(base, root / name, seed=seed, shared_seed=shared)
    fam["bigger"] = make_child(base, root / "bigger", seed=4, shared_seed=9, extra_vocab=5)
    # bf16 children whose deltas are exactly zero in many weights (unchanged after rounding)
    weights = read_weights(base)
    for name, seed in (("sparse1", 5), ("sparse2", 6)):
        gen = torch.Generator().manual_seed(seed)
        fam[name] = write_model(root / name, {
            k: (v + 1e-4 * torch.randn(v.shape, generator=gen)).to(torch.bfloat16) for k, v in weights.items()
        }, base)
    fam["base_bf16"] = write_model(root / "base_bf16", {k: v.to(torch.bfloat16) for k, v in weights.items()}, base)
    return fam


def test_added_vocabulary_rows_are_left_out_of_the_counts(tiny, reduction):
    with pytest.warns(KinshipWarning, match="leaving out 5 rows"):
        result = kinship(tiny["a"], tiny["bigger"], tiny["base"], metrics="sign_conflict", progress=False)
    x, y = dense_deltas(tiny["base"], tiny["a"], tiny["bigger"])
    assert abs(result.values["sign_conflict"] - dense_sign_conflict(x, y)) <= TOL
    assert 0.2 < result.values["sign_conflict"] < 0.45  # they share half their deltas' variance
    unrelated = kinship(tiny["a"], tiny["c"], tiny["base"], metrics="sign_conflict", progress=False)
    assert abs(unrelated.values["sign_conflict"] - 0.5) < 0.02


def test_zero_deltas_count_only_where_both_changed(tiny, reduction):
    """bf16 weights that rounding left unchanged are zero deltas: not in the denominator."""
    base, a, b = tiny["base_bf16"], tiny["sparse1"], tiny["sparse2"]
    x, y = dense_deltas(base, a, b)
    assert (x == 0).mean() > 0.2 and ((x != 0) & (y != 0)).mean() < 0.95  # the case is real
    value = kinship(a, b, base, metrics="sign_conflict", progress=False).values["sign_conflict"]
    assert abs(value - dense_sign_conflict(x, y)) <= TOL


@pytest.mark.parametrize("breakdown", ["layer", "module"])
def test_breakdown_groups_count_their_own_tensors(tiny, breakdown):
    base, a, b = tiny["base"], tiny["a"], tiny["b"]
    result = kinship(a, b, base, breakdown=breakdown, metrics="pcc,sign", progress=False)
    patterns = {"layer": {"layer 0": ["model.layers.0.*"], "head": ["lm_head.*"]},
                "module": {"attention": ["*self_attn*"], "mlp": ["*.mlp.*"], "norm": ["*norm*"]}}[breakdown]
    for group, include in patterns.items():
        x, y = dense_deltas(base, a, b, include=include)
        assert abs(result.breakdown[group]["sign_conflict"] - dense_sign_conflict(x, y)) <= TOL, group
    x, y = dense_deltas(base, a, b)
    assert abs(result.values["sign_conflict"] - dense_sign_conflict(x, y)) <= TOL


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_accumulator_counts_exactly_at_the_edges_of_each_dtype(dtype):
    """The smallest non-zero deltas a dtype can hold (subnormals), zeros, signed zeros and huge
    values: every sign counted as dense numpy counts it, through add() (the merge hook's way)."""
    info = torch.finfo(dtype)
    tiny = info.tiny * info.eps  # the smallest subnormal
    big = min(info.max / 4, 1e30)  # squares stay finite in float64 (the moments need them)
    base = torch.tensor([0.0, 0.0, 1.0, -1.0, 0.0, 2 * big, 3.0, 0.0, -0.0, 2.0], dtype=torch.float64)
    steps = [
        [tiny, -tiny, 1.0, -1.0, 0.0, -big, 0.5, -0.0, 0.0, -2.0],
        [tiny, tiny, -1.0, -1.0, 5.0, big, 0.5, 0.0, -0.0, 0.0],
        [-tiny, 0.0, 0.25, 0.5, -5.0, -big / 2, -0.5, 0.0, 0.0, 1.0],
    ]
    base_t = base.to(dtype)
    models = [(base + torch.tensor(s, dtype=torch.float64)).to(dtype) for s in steps]
    acc = KinshipAccumulator(3)
    for _ in range(3):  # the same tensor three times: counts add up
        acc.add(base_t, models)
    deltas = [m.to(torch.float64).numpy() - base_t.to(torch.float64).numpy() for m in models]
    for i, j in itertools.combinations(range(3), 2):
        assert acc.value("sign_conflict", i, j) == dense_sign_conflict(deltas[i], deltas[j]), (i, j)
    assert acc.value("sign", 0, 0) == 0.0  # an alias; a model never conflicts with itself


@pytest.mark.parametrize("subchunk", [13, 16, 40, None])
def test_counts_add_up_over_odd_sub_chunks(subchunk):
    """Odd sub-chunk lengths, tensors shorter than one sub-chunk, several tensors into one group:
    the raw counts of every pair (and of each delta with itself) equal dense numpy counting."""
    gen = torch.Generator().manual_seed(7)
    acc = KinshipAccumulator(4, subchunk=subchunk, metrics="sign_conflict")
    deltas = []
    for size in (1, 7, 100, 1000, 333):
        base = torch.randn(size, generator=gen)
        steps = torch.randn(4, size, generator=gen) * (torch.rand(4, size, generator=gen) > 0.3)
        models = [base + step for step in steps]
        acc.add(base, models)
        deltas.append(torch.stack([m.double() - base.double() for m in models]).numpy())
    deltas = np.concatenate(deltas, axis=1)
    moments = acc.moments()
    for i, j in itertools.product(range(4), repeat=2):
        both = (deltas[i] != 0) & (deltas[j] != 0)
        assert int(moments.B[i, j]) == int(both.sum()), (i, j)
        assert int(moments.X[i, j]) == int((both & (np.signbit(deltas[i]) != np.signbit(deltas[j]))).sum())


def test_undefined_and_not_counted():
    acc = KinshipAccumulator(3, metrics="pcc,sign_conflict")
    base = torch.zeros(6)
    acc.add(base, [torch.tensor([1.0, 2, 0, 0, 0, 0]), torch.tensor([0.0, 0, 3, -4, 0, 0]),
                   torch.zeros(6)])
    assert acc.value("sign_conflict", 0, 1) is None  # never both changed
    assert acc.value("sign_conflict", 2, 2) is None  # a zero delta has no sign
    acc.add(base, [torch.ones(6), -torch.ones(6), torch.ones(6)])
    assert acc.value("sign_conflict", 0, 1) == 1.0 and acc.value("sign_conflict", 0, 2) == 0.0
    # An accumulator told its metrics keeps no counts it was not asked for.
    lean = KinshipAccumulator(2, metrics="pcc")
    lean.add(base, [torch.ones(6), -torch.ones(6)])
    with pytest.raises(ValueError, match="does not count signs"):
        lean.value("sign_conflict", 0, 1)
    bad = torch.ones(6)
    bad[2] = float("nan")
    with pytest.raises(UserError, match="NaN or Inf"):
        acc.add(base, [bad, bad, bad])


def test_a_model_identical_to_the_base_is_named(tiny):
    same = tiny["base"]
    with pytest.raises(UserError, match="sign conflict are undefined"):
        kinship(tiny["a"], same, tiny["base"], metrics="sign_conflict", progress=False)


def test_one_vocabulary_for_a_distance_in_zero_one():
    assert canonical("sign") == canonical("Sign-Conflict") == "sign_conflict"
    assert is_distance("sign_conflict") and self_kinship("sign_conflict") == 0.0
    assert relatedness("sign_conflict", 0.4) > relatedness("sign_conflict", 0.5)  # less conflict: closer
    assert metric_value(0.05, "sign_conflict") == "0.0500" and metric_value(0.05, "euclidean") == "0.05"


def test_all_names_every_metric_and_the_default_leaves_sign_conflict_out(tiny):
    from mergekit_kinship.metrics import DEFAULT_METRICS, METRICS, parse_metrics

    assert parse_metrics("all") == METRICS and parse_metrics("sign, ALL") == ("sign_conflict", "pcc", "cosine", "euclidean")
    result = kinship(tiny["a"], tiny["b"], tiny["base"], progress=False)
    assert result.metrics == list(DEFAULT_METRICS) and "sign_conflict" not in result.values
