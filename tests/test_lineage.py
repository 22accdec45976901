"""``mergekit-kinship lineage`` against ground truth: the built-in family's recorded parents, and
an ``evolve`` run whose summary records every child's true parents (tiny models merged by
mergekit, the stand-in evaluator). Also: the children's sketches come from their merges (the
run reads no child again to relate it), and bad input is a one-line error."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from evolution_helpers import build_tiny_family
from mergekit_kinship.cli import main
from mergekit_kinship.evolution import evolve
from mergekit_kinship.recipe import load_recipe

STAND_IN = "evolution_helpers:stand_in_evaluate"


def lineage_json(models, base, *extra):
    result = CliRunner().invoke(main, ["lineage", *map(str, models), "--base", str(base), "--json",
                                       "-q", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An evolve run (SLERP, k = 3, three generations) over a tiny family, every child kept."""
    root = tmp_path_factory.mktemp("lineage")
    build_tiny_family(root / "fam", n_children=4)
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "base": "./fam/base", "models": [f"./fam/child{i}" for i in range(4)],
        "top_k": 3, "strategy": "kinship",
        "merge": {"method": "slerp", "dtype": "float32"},
        "evaluation": {"tasks": ["skill0", "skill1", "skill2", "skill3"]},
        "stopping": {"max_generations": 3}, "seed": 0}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVOLVE_TEST_SKILLS", str(root / "fam"))
        summary = evolve(load_recipe(recipe), root / "run", evaluator=STAND_IN, keep="all",
                         progress=False)
    return root, summary


def test_the_built_in_family_is_read_back_from_its_weights(family):
    names = list(family.models)
    paths = [str(family.models[n]) for n in names]
    out = lineage_json(paths, family.base)
    assert [m["path"] for m in out["models"]] == paths  # one entry per model, as given
    by_name = dict(zip(names, out["models"]))
    for name in names:
        truth = family.parent[name]
        got = by_name[name]
        if truth == "base":
            assert got["kind"] == "base-fine-tune" and got["parents"] == []
            assert got["edges"][0]["parent"] == str(family.base)
        else:  # the grandchild: a fine-tune of its parent, with the evidence on the edge
            assert got["kind"] == "fine-tune"
            assert got["parents"] == [str(family.models[truth])]
            assert got["edges"][0]["evidence"]["coefficient"] > 0.9


def test_an_evolve_runs_parents_are_recovered(run):
    root, summary = run
    ids = [i for i, m in summary.models.items() if m.kind in ("foundation", "child")]
    path = {i: summary.models[i].path or str(root / "run" / "models" / i) for i in ids}
    out = lineage_json([path[i] for i in ids], root / "fam" / "base")
    back = {p: i for i, p in path.items()}
    right, calls = 0, {}
    for i, entry in zip(ids, out["models"]):
        truth = set(summary.models[i].parents)
        got = None if entry["parents"] is None else {back[p] for p in entry["parents"]}
        right += got == truth
        calls[entry["kind"]] = calls.get(entry["kind"], 0) + 1
        if entry["kind"] == "merge":  # each edge carries its parent's share and cosine
            assert {e["parent"] for e in entry["edges"]} == set(entry["parents"])
            assert abs(sum(e["evidence"]["proportion"] for e in entry["edges"]) - 1) < 1e-6
        if entry["kind"] == "ambiguous":  # said so, never guessed
            assert entry["parents"] is None and len(entry["alternatives"]) >= 2
        if got is not None and got != truth:
            pytest.fail(f"{summary.models[i].name}: inferred {got}, true parents {truth}")
    assert sum(1 for i in ids if summary.models[i].kind == "child") >= 8
    assert right >= 0.9 * len(ids), calls


def test_children_are_sketched_by_their_merge_and_never_read_again(run):
    root, summary = run
    children = [i for i, m in summary.models.items() if m.kind == "child"]
    assert len(list((root / "run" / "sketches").glob("*.sketch"))) >= len(children)
    events = [json.loads(line) for line in (root / "run" / "journal.jsonl").read_text().splitlines()]
    reads = [e for e in events if e["event"] == "kinship-read"]
    assert reads and not any(e["sketched"] and set(e["sketched"]) & set(children) for e in reads)
    pool_sizes = 5 + len(children)
    # After the foundation pass, no read covers the whole pool: only top-k pairs and candidates.
    assert all(len(e["models"]) < pool_sizes for e in reads[1:])


def test_text_tree_and_picture(family, tmp_path):
    paths = [str(p) for p in family.models.values()]
    plot = tmp_path / "tree.png"
    result = CliRunner().invoke(main, ["lineage", *paths, "--base", str(family.base), "-q",
                                       "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "└─ reverse_sort" in result.output and "fine-tune of reverse" in result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000


@pytest.mark.parametrize("args, message", [
    (lambda f: [f.models["sort"], f.models["sort"]], "given twice"),
    (lambda f: [f.models["sort"], f.base], "also given as a model"),
    (lambda f: [f.models["sort"], "--plot", "tree.txt"], "give a .png, .svg or .pdf"),
    (lambda f: [f.models["sort"], "--plot", "/no/such/dir/t.png"], "no such folder"),
    (lambda f: [f.models["sort"], "/no/such/model"], "/no/such/model"),
])
def test_bad_input_is_a_one_line_error(family, args, message):
    result = CliRunner().invoke(main, ["lineage", *map(str, args(family)), "--base", str(family.base)])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_infer_lineage_on_known_deltas():
    """The pure rules on deltas whose story is known: two fine-tunes of the base, a linear merge
    of them, a fine-tune of the first, and a model of another pre-training (far larger, no kin)."""
    import numpy as np

    from mergekit_kinship.lineage import infer_lineage

    rng = np.random.default_rng(0)
    T, n = 6, 4000  # tensors, elements each
    a, b, other, update = (rng.normal(size=(T, n)) for _ in range(4))
    deltas = [a, b, 0.4 * a + 0.6 * b, a + 0.3 * update, 30 * other]
    X = np.stack(deltas, 1)  # T × N × n
    G = np.einsum("tik,tjk->tij", X, X)
    calls = infer_lineage(G)
    assert [c.kind for c in calls] == ["base-fine-tune", "base-fine-tune", "merge", "fine-tune",
                                       "unrelated"]
    assert sorted(calls[2].parents) == [0, 1]
    share = dict(zip(calls[2].parents, calls[2].proportions))
    assert abs(share[0] - 0.4) < 0.01 and abs(share[1] - 0.6) < 0.01
    assert calls[3].parents == [0]


def test_a_ties_merge_of_a_sibling_is_ambiguous_not_a_fine_tune():
    """TIES merges (trimmed to half, sign elected, agreeing entries averaged, as mergekit does) of
    d with i and of d with j, a fine-tune of i: the second carries about all of the first's delta,
    which alone reads as a fine-tune; both are said to be ambiguous, the true calls stay."""
    import numpy as np

    from mergekit_kinship.lineage import infer_lineage

    def ties(*deltas):
        kept = np.stack([np.where(np.abs(x) >= np.median(np.abs(x), -1, keepdims=True), x, 0.0)
                         for x in deltas])
        agree = (np.sign(kept) == np.sign(kept.sum(0))) & (kept != 0)
        return (kept * agree).sum(0) / np.maximum(agree.sum(0), 1)

    rng = np.random.default_rng(0)
    d, i, update, other = (rng.normal(size=(6, 4000)) for _ in range(4))
    j = i + 0.3 * update
    X = np.stack([d, i, j, other, ties(d, i), ties(d, j)], 1)
    calls = infer_lineage(np.einsum("tik,tjk->tij", X, X))
    assert [c.kind for c in calls[:4]] == ["base-fine-tune", "base-fine-tune", "fine-tune",
                                           "base-fine-tune"]
    assert calls[2].parents == [1]
    for merge in calls[4:]:
        assert merge.kind == "ambiguous" and merge.parents is None
        assert len(merge.alternatives) >= 2
    assert any(alt["parents"] == [4] for alt in calls[5].alternatives)  # the fine-tune reading
