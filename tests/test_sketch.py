"""Delta sketches on the built-in family: sketched kinship agrees with the exact engine within
the bound printed with it, the user cache spares every read of a sketched model, and
``matrix --sketch`` shows each value with its bound."""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner

from mergekit_kinship.cli import main
from mergekit_kinship.sketch import SketchParams
from mergekit_kinship.sketched_kinship import model_sketches, sketch_matrix
from mergekit_kinship.streaming_kinship import kinship_matrix

METRICS = ["pcc", "cosine", "euclidean", "sign_conflict"]


def _members(family):
    return [str(p) for p in family.models.values()]


@pytest.mark.parametrize("size", [1024, 16384])
def test_sketched_values_are_within_their_bound_of_the_exact_ones(family, tmp_path, size):
    models = _members(family)
    exact = kinship_matrix(models, str(family.base), metrics=METRICS, progress=False)
    sketched = sketch_matrix(models, str(family.base), metrics=METRICS, progress=False,
                             params=SketchParams(size=size, signs=4096), cache_dir=tmp_path)
    assert not sketched.sketch["exact"]  # the model is larger than these sketches
    checked = 0
    for m in METRICS:
        for i in range(len(models)):
            for j in range(len(models)):
                if i == j:
                    continue
                value, bound = sketched.values[m][i][j], sketched.bounds[m][i][j]
                assert bound > 0
                assert abs(value - exact.values[m][i][j]) <= bound, (m, i, j)
                checked += 1
    assert checked == 4 * len(models) * (len(models) - 1)


def test_a_larger_sketch_has_smaller_bounds(family, tmp_path):
    models = _members(family)[:3]
    small, large = (sketch_matrix(models, str(family.base), metrics=["pcc"], progress=False,
                                  params=SketchParams(size=s, signs=0), cache_dir=tmp_path)
                    for s in (1024, 65536))
    assert large.bounds["pcc"][0][1] < small.bounds["pcc"][0][1] / 4


def test_cached_sketches_are_not_read_again_and_one_new_model_reads_only_itself(family, tmp_path):
    models = _members(family)
    params = SketchParams(size=4096, signs=0)
    first = model_sketches(models[:-1], str(family.base), params=params, cache_dir=tmp_path,
                           progress=False)
    assert len(first.read) == len(models) - 1 and first.bytes_read > 0
    again = model_sketches(models, str(family.base), params=params, cache_dir=tmp_path,
                           progress=False)
    assert again.read == [again.names[-1]]  # only the added model
    assert 0 < again.bytes_read < first.bytes_read
    for a, b in zip(first.sketches, again.sketches):
        assert a.values.equal(b.values) and a.sumsq.equal(b.sumsq)


def test_matrix_sketch_prints_each_value_with_its_bound(family):
    models = _members(family)[:3]
    result = CliRunner().invoke(main, ["matrix", *models, "--base", str(family.base), "--sketch",
                                       "--sketch-size", "2048", "-m", "pcc", "-q"])
    assert result.exit_code == 0, result.output
    assert "from sketches of" in result.output and "±" in result.output
    bad = CliRunner().invoke(main, ["matrix", *models, "--base", str(family.base),
                                    "--sketch-size", "2048"])
    assert bad.exit_code == 2 and "only with --sketch" in bad.output


def test_a_model_that_fits_in_its_sketch_is_compared_exactly(family, tmp_path):
    models = _members(family)[:3]
    exact = kinship_matrix(models, str(family.base), metrics=["pcc"], progress=False)
    whole = sketch_matrix(models, str(family.base), metrics=["pcc"], progress=False,
                          params=SketchParams(size=1 << 20, signs=0), cache_dir=tmp_path)
    assert whole.sketch["exact"]
    assert whole.bounds["pcc"][0][1] == 0.0
    assert math.isclose(whole.values["pcc"][0][1], exact.values["pcc"][0][1], abs_tol=1e-9)
