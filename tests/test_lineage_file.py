"""Lineage files: a child of a run rebuilt by ``mergekit-multi`` from the foundation models alone,
bit for bit, after ``--keep best`` pruned every intermediate."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from evolution_helpers import build_tiny_family, load_tensors
from mergekit_kinship.card import build_card
from mergekit_kinship.cli import main
from mergekit_kinship.lineage_file import (lineage_yaml, rebuild_command, seeds, stage_names,
                                           write_lineage_files)
from mergekit_kinship.summary import load_summary
from test_card import synthetic_summary

OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1"}


def rebuild(run_dir: Path, model_id: str, work: Path) -> Path:
    """Run the command the card gives on ``RUN_DIR/lineage/<id>.yaml`` in ``work`` (a fresh
    folder, another process); returns the rebuilt model's folder."""
    summary = load_summary(run_dir)
    lineage = run_dir / "lineage" / f"{model_id}.yaml"
    command = rebuild_command(summary, model_id, str(lineage)).replace("OUT_DIR", "rebuilt")
    work.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(shlex.split(command), cwd=work, env=OFFLINE, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return work / "rebuilt"


def assert_rebuilds_bit_for_bit(run_dir: Path, model_id: str, work: Path) -> None:
    """``model_id``'s intermediates are all gone from the run, and its lineage file rebuilds it:
    the same tensors, bit for bit, as the weights the run kept."""
    summary = load_summary(run_dir)
    stages = stage_names(summary, model_id)
    assert stages, "a child with no intermediate merge proves nothing here"
    assert not any((run_dir / "models" / m).exists() for m in stages)
    rebuilt = rebuild(run_dir, model_id, work)
    assert sorted(p.name for p in (work / "intermediate").iterdir()) == sorted(stages.values())
    ours, theirs = load_tensors(run_dir / "models" / model_id), load_tensors(rebuilt)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    """A real run to its stopping rule, ``--keep best``: DARE-TIES (it samples, so the seed
    matters) on a tiny family; scored by the stand-in evaluator."""
    from mergekit_kinship.evolution import evolve
    from mergekit_kinship.recipe import parse_recipe

    root = tmp_path_factory.mktemp("lineage")
    paths = build_tiny_family(root)
    recipe = parse_recipe({
        "base": str(paths["base"]), "models": [str(paths[f"child{i}"]) for i in range(3)],
        "merge": {"method": "dare_ties", "dtype": "float32",
                  "parameters": {"density": 0.5, "weight": 0.5}},
        "evaluation": {"tasks": ["skill0", "skill1", "skill2"]},
        "stopping": {"max_generations": 3}, "seed": 7,
    }, root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EVOLVE_TEST_SKILLS", str(root))
        summary = evolve(recipe, root / "run", keep="best", progress=False,
                         evaluator="evolution_helpers:stand_in_evaluate")
    return root / "run", summary


def test_mergekit_multi_rebuilds_the_best_child_after_keep_best(pruned_run, tmp_path,
                                                                monkeypatch):
    run_dir, summary = pruned_run
    best = summary.best
    assert summary.models[best].generation >= 2
    assert seeds(summary, best) == {7}  # the recipe's seed, handed to every stage
    assert "--random-seed 7" in rebuild_command(summary, best)
    assert_rebuilds_bit_for_bit(run_dir, best, tmp_path)
    # The copy beside the kept weights is the same file, and the card quotes it.
    lineage = (run_dir / "lineage" / f"{best}.yaml").read_text()
    assert (run_dir / "models" / best / "lineage.yaml").read_text() == lineage
    assert "```yaml\n" + lineage in (run_dir / "models" / best / "README.md").read_text()

    # card MODEL_DIR on the folder mergekit-multi wrote: its inputs are the rebuilt stages.
    from mergekit_kinship.streaming_kinship import kinship

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["card", "rebuilt", "-q", "--json"])
    assert result.exit_code == 0, result.output
    card = (tmp_path / "rebuilt" / "README.md").read_text()
    parents = [f"./intermediate/{stage_names(summary, best).get(p, p)}"
               for p in summary.models[best].parents]
    expected = kinship(*parents, str(summary.base.path), metrics="all", progress=False).values
    row = next(line for line in card.splitlines() if line.startswith(f"| `{parents[0]}` | `"))
    assert row.endswith(f"| {expected['pcc']:.4f} | {expected['cosine']:.4f} | "
                        f"{expected['euclidean']:.4g} | {expected['sign_conflict']:.4f} |")


def test_every_child_has_a_lineage_file_that_mergekit_multi_reads(pruned_run, tmp_path):
    """mergekit-multi's own loader takes every lineage file, and its stage dependencies are the
    child's ancestors: each document depends on exactly its parents that are merges."""
    from mergekit.scripts.multimerge import load_config

    run_dir, summary = pruned_run
    children = summary.child_ids()
    assert sorted(p.stem for p in (run_dir / "lineage").iterdir()) == sorted(children)
    for child in children:
        text = (run_dir / "lineage" / f"{child}.yaml").read_text()
        assert str(run_dir / "models") not in text  # no reference into the run directory
        configs, dependencies = load_config(text, str(tmp_path))
        stages = stage_names(summary, child)
        by_name = {name: m for m, name in stages.items()} | {None: child}
        assert set(configs) == set(by_name)
        for name, model_id in by_name.items():
            want = {stages[p] for p in summary.models[model_id].parents if p in stages}
            assert dependencies[name] == want, (child, name)


def test_synthetic_lineage_names_stages_and_keeps_foundations(tmp_path):
    synthetic_summary(tmp_path)
    summary = load_summary(tmp_path)
    documents = list(yaml.safe_load_all(lineage_yaml(summary, "g3x")))
    assert [d.get("name") for d in documents] == ["kin-g1a", "kin-g1b", "kin-g2a", "kin-g2x", None]
    assert documents[-1]["base_model"] == "kin-g2a" and documents[-1]["models"] == [{"model": "kin-g2x"}]
    # A parent that is a foundation model keeps its reference (g2x = g1b x code).
    assert documents[3]["models"] == [{"model": "/runs/x/models/code"}]
    assert seeds(summary, "g3x") == set()
    assert "--random-seed" not in rebuild_command(summary, "g3x")


def test_a_yaml_that_does_not_name_its_parents_gets_no_lineage_file(tmp_path):
    data = synthetic_summary(tmp_path)
    data["models"]["g2a"]["yaml"] = data["models"]["g2a"]["yaml"].replace("/g1a", "/elsewhere")
    (tmp_path / "summary.json").write_text(json.dumps(data))
    summary = load_summary(tmp_path)
    with pytest.raises(ValueError, match="does not name its parent"):
        lineage_yaml(summary, "g3x")
    written = write_lineage_files(tmp_path, summary)
    assert "g3x" not in written and "g2a" not in written and "g1a" in written
    text = str(build_card(summary, "g3x"))
    assert "No lineage file" in text and "## Rebuild it" not in text
    assert summary.models["g3x"].yaml in text  # its own YAML is still quoted


def test_card_command_writes_the_lineage_file_of_an_older_run(tmp_path):
    synthetic_summary(tmp_path)
    result = CliRunner().invoke(main, ["card", str(tmp_path), "g3a"])
    assert result.exit_code == 0, result.output
    summary = load_summary(tmp_path)
    expected = lineage_yaml(summary, "g3a")
    assert (tmp_path / "lineage" / "g3a.yaml").read_text() == expected
    assert (tmp_path / "models" / "g3a" / "lineage.yaml").read_text() == expected  # kept
