"""Reliability: every bad input is one line naming the field or file, found before the first merge
or evaluation; every fault during a run (an evaluation that raises, a full disk, a torn or corrupt
journal, a second or dead evolve) is recorded, survived, and resumed from.

Runs the real CLI (click's runner, in this process) on tiny real models merged by mergekit, with
the deterministic stand-in evaluator of evolution_helpers (one test asks lm-eval's task index).
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from evolution_helpers import build_tiny_family, stand_in_evaluate
from mergekit_kinship.cli import main
from mergekit_kinship.rundir import RunDir

TESTS = Path(__file__).resolve().parent
ZOO_TASKS = TESTS.parent / "mergekit_kinship" / "zoo" / "tasks"
STAND_IN = "evolution_helpers:stand_in_evaluate"
FLAKY = "test_reliability:flaky_evaluate"
FAMILY: dict = {}


def flaky_evaluate(model_path, settings):
    """The stand-in evaluator, raising for the model folder named by FLAKY_FAIL; with
    FLAKY_ONCE set to a file, only the first time (the file then exists)."""
    if Path(model_path).name == os.environ.get("FLAKY_FAIL"):
        once = os.environ.get("FLAKY_ONCE")
        if not once or not Path(once).exists():
            if once:
                Path(once).write_text("failed once")
            raise RuntimeError("injected evaluation failure\nsecond line of the error")
    return stand_in_evaluate(model_path, settings)


def percent_evaluate(model_path, settings):
    """The stand-in evaluator, reporting skill1 of every child as a percentage (a bug)."""
    result = stand_in_evaluate(model_path, settings)
    if Path(model_path).parent.name == "models":
        result.scores["skill1"] *= 100
    return result


RECIPE = {
    "base": "./fam/base", "models": ["./fam/child0", "./fam/child1", "./fam/child2"],
    "top_k": 3, "merge": {"method": "slerp", "dtype": "float32"},
    "evaluation": {"tasks": ["skill0", "skill1", "skill2"]},
    "stopping": {"max_generations": 3}, "seed": 0}


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    """A tiny family, two models that are not fine-tunes of its base, and a clean run."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("reliability")
    build_tiny_family(root / "fam")
    FAMILY["path"] = root / "fam"
    common = dict(vocab_size=26, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=48, intermediate_size=64, **common)).save_pretrained(
        root / "fam" / "wide")  # another hidden size: config.json tells
    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=80, **common)).save_pretrained(
        root / "fam" / "fatmlp")  # same config keys, other MLP shape: only the headers tell
    (root / "fam" / "noweights").mkdir()
    shutil.copy(root / "fam" / "base" / "config.json", root / "fam" / "noweights")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVOLVE_TEST_SKILLS", str(root / "fam"))
        clean_recipe = write_recipe(root, "clean")
        result = evolve_cli(clean_recipe, root / "clean")
        assert result.exit_code == 0, result.output
        yield {"root": root, "clean": json.loads((root / "clean" / "summary.json").read_text())}


def write_recipe(root: Path, name: str, **changes) -> Path:
    """RECIPE with ``changes`` (``a__b`` sets data[a][b]) as ``root/name.yaml``; ``root/fam``
    links to the module's family (paths resolve to the same folders as the clean run's)."""
    if not (root / "fam").exists():
        (root / "fam").symlink_to(FAMILY["path"])
    data = json.loads(json.dumps(RECIPE))
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = data
        for p in parents:
            node = node[p]
        node[key] = value
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def evolve_cli(recipe: Path, run_dir: Path, *extra: str, evaluator: str | None = STAND_IN):
    """``evolve`` through the CLI (in this process), scored by ``evaluator`` (None: lm-eval)."""
    scorer = ["--evaluator", evaluator] if evaluator else []
    return CliRunner().invoke(main, ["evolve", str(recipe), "--run-dir", str(run_dir), *scorer,
                                     *extra])


def error_line(result) -> str:
    """The CLI's answer to a user mistake: exit 2 and exactly one line, 'Error: ...'."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    text = re.sub(r"merge \+ score:.*?child/s\]", "", result.output)  # tqdm's bar, if drawn
    lines = [part.strip() for line in text.splitlines() for part in line.split("\r")]
    lines = [line for line in lines if line]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def outcome(summary):
    return ({i: (m["name"], m["parents"], m["scores"], m["fitness"])
             for i, m in summary["models"].items()},
            [(g["children"], g["top_k"], g["best"]) for g in summary["generations"]],
            summary["stopped"], summary["best"])


def did_no_work(run_dir: Path) -> bool:
    """Nothing expensive happened: no identity hashed, no merge or evaluation started."""
    return not any(e["event"] in ("identity", "merge-start", "eval-start")
                   for e in RunDir(run_dir).events())


# --- bad input: one line naming the field or file, before any work ----------------------------

BAD_RECIPES = [
    ("unknown_key", {"topk": 3}, "topk: unknown key; did you mean 'top_k'?"),
    ("unknown_nested_key", {"stopping__max_generation": 3}, "stopping.max_generation"),
    ("misspelled_slerp_param", {"merge__parameters": {"tt": 0.5}}, "parameters.tt: not a parameter of slerp"),
    ("misspelled_ties_param", {"merge": {"method": "ties", "parameters": {"densty": 0.5},
                                         "model_parameters": {"weight": 0.5}}},
     "parameters.densty: not a parameter of ties"),
    ("unknown_method", {"merge__method": "slurp"}, "unknown merge method 'slurp'"),
    ("one_foundation_model", {"models": ["./fam/child0"]}, "models: List should have at least 2"),
    ("top_k_over_pool", {"top_k": 7}, "top_k: 7 is larger than the pool"),
    ("top_k_over_capped_pool", {"top_k": 5, "stopping__max_merges": 1}, "top_k: 5 is larger"),
    ("missing_folder", {"models": ["./fam/child0", "./fam/nope"]}, "fam/nope"),
    ("folder_not_a_model", {"models": ["./fam/child0", "./fam"]}, "no config.json"),
    ("config_but_no_weights", {"models": ["./fam/child0", "./fam/noweights"]},
     "noweights is not a model: no model.safetensors"),
    ("base_as_foundation_model", {"models": ["./fam/child0", "./fam/base"]},
     "models: base is the base itself"),
    ("same_model_twice", {"models": ["./fam/child0", {"path": "./fam/child0", "name": "again"}]},
     "models: again and child0 are the same model"),
    ("other_hidden_size", {"models": ["./fam/child0", "./fam/wide"]}, "hidden size 48"),
    ("other_tensor_shape", {"models": ["./fam/child0", "./fam/fatmlp"]},
     "fatmlp: tensor 'model.layers.0.mlp.down_proj.weight' has shape [32, 80]"),
]


@pytest.mark.parametrize("name, changes, expected", BAD_RECIPES, ids=[c[0] for c in BAD_RECIPES])
def test_bad_recipe_is_one_line_before_any_work(fam, name, changes, expected):
    root = fam["root"]
    run_dir = root / f"bad-{name}"
    line = error_line(evolve_cli(write_recipe(root, f"bad-{name}", **changes), run_dir))
    assert expected in line
    assert did_no_work(run_dir)


@pytest.mark.parametrize("evaluation, expected", [
    ({"tasks": ["kinship_reverse", "kinship_nosuchtask"]},
     "evaluation.tasks: unknown lm-eval task 'kinship_nosuchtask'"),
    ({"tasks": ["kinship_reverse"], "metrics": {"kinship_reverse": "bleu"}},
     "evaluation.metrics.kinship_reverse: task 'kinship_reverse' does not report 'bleu'"),
], ids=["unknown_task", "unreported_metric"])
def test_lm_eval_task_and_metric_checked_before_merging(fam, evaluation, expected):
    root = fam["root"]
    recipe = write_recipe(root, "bad-task", evaluation={"include_path": str(ZOO_TASKS),
                                                        **evaluation})
    # scored by lm-eval (no --evaluator): its task index decides
    line = error_line(evolve_cli(recipe, root / "bad-task-run", evaluator=None))
    assert expected in line
    assert not (root / "bad-task-run").exists()


def dry_run_cli(recipe: Path, run_dir: Path | None = None, evaluator: str | None = STAND_IN):
    scorer = ["--evaluator", evaluator] if evaluator else []
    where = ["--run-dir", str(run_dir)] if run_dir else []
    return CliRunner().invoke(main, ["plan", str(recipe), "--dry-run", *where, *scorer])


@pytest.mark.parametrize("name, changes, expected", BAD_RECIPES, ids=[c[0] for c in BAD_RECIPES])
def test_dry_run_refuses_what_evolve_refuses_with_the_same_message(fam, name, changes, expected):
    """issue 14: one pre-flight for both; a dry run never says "recipe OK" to a recipe evolve
    refuses before its first merge."""
    root = fam["root"]
    recipe = write_recipe(root, f"parity-{name}", **changes)
    from_evolve = error_line(evolve_cli(recipe, root / f"parity-{name}-run"))
    from_dry_run = error_line(dry_run_cli(recipe, root / f"parity-{name}-dry"))
    assert from_dry_run == from_evolve
    assert not (root / f"parity-{name}-dry").exists()


def test_dry_run_checks_lm_eval_tasks_and_the_run_directory_like_evolve(fam, tmp_path):
    root = fam["root"]
    recipe = write_recipe(root, "parity-task", evaluation={
        "include_path": str(ZOO_TASKS), "tasks": ["kinship_reverse", "kinship_nosuchtask"]})
    assert error_line(dry_run_cli(recipe, evaluator=None)) == error_line(
        evolve_cli(recipe, tmp_path / "never", evaluator=None))
    changed = write_recipe(tmp_path, "parity-seed", seed=5)
    line = error_line(dry_run_cli(changed, root / "clean"))
    assert line == error_line(evolve_cli(changed, root / "clean"))
    assert "incompatible recipe" in line and "seed 0 -> 5" in line
    ok = dry_run_cli(write_recipe(root, "clean"), root / "clean")
    assert ok.exit_code == 0 and ok.output.startswith("recipe OK: ")


def test_mistral_recipe_dry_run_offline():
    """The paper's recipe (hub models) validates offline: no weights, no network."""
    result = CliRunner().invoke(main, ["plan", str(TESTS.parent / "recipes" / "mistral-7b-paper.yaml"),
                                       "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    recipe = report["recipe"]
    assert recipe["base"]["hub"] == "mistralai/Mistral-7B-v0.1"
    assert [m["hub"] for m in recipe["models"]] == [
        "mistralai/Mistral-7B-Instruct-v0.2", "meta-math/MetaMath-Mistral-7B",
        "openchat/openchat-3.5-1210"]
    assert recipe["evaluation"]["tasks"] == ["winogrande", "gsm8k", "truthfulqa_mc2"]
    assert recipe["top_k"] == 3 and recipe["merge"]["method"] == "slerp"
    example = yaml.safe_load(report["example_yaml"])
    assert example["base_model"] == example["models"][0]["model"]  # parent A, not the ancestor
    assert "mistralai/Mistral-7B-v0.1" not in report["example_yaml"]
    assert len(report["generation_1_pairs"]) == 3


def test_a_copy_of_a_foundation_model_is_refused_before_scoring(fam, tmp_path):
    copy = tmp_path / "copy0"
    shutil.copytree(FAMILY["path"] / "child0", copy)
    recipe = write_recipe(fam["root"], "copy", models=["./fam/child0", str(copy)])
    line = error_line(evolve_cli(recipe, tmp_path / "run"))
    assert "copy0 and child0 are the same model (same weights)" in line
    assert not RunDir(tmp_path / "run").events("eval-start")


def test_top_k_over_the_pool_a_max_merges_flag_leaves(fam, tmp_path):
    recipe = write_recipe(fam["root"], "top5", top_k=5)  # 3 models + 3 children: fits
    line = error_line(evolve_cli(recipe, tmp_path / "run", "--max-merges", "1"))
    assert "--max-merges: top_k: 5 is larger than the pool" in line
    assert did_no_work(tmp_path / "run")


def test_unusable_run_dir_is_one_line(fam, tmp_path):
    (tmp_path / "afile").write_text("")
    line = error_line(evolve_cli(write_recipe(fam["root"], "clean"), tmp_path / "afile" / "run"))
    assert "afile/run: cannot use it as a run directory" in line


def test_incompatible_run_dir_names_fields_and_offers_a_new_one(fam, tmp_path):
    root = fam["root"]
    run_dir = tmp_path / "run"
    shutil.copytree(root / "clean", run_dir)
    (tmp_path / "run-2").mkdir()  # taken: the offer must be a free name
    changed = write_recipe(tmp_path, "changed", top_k=2, seed=5, strategy="greedy")
    line = error_line(evolve_cli(changed, run_dir))
    assert "incompatible recipe" in line
    assert "strategy kinship -> greedy" in line and "top_k 3 -> 2" in line and "seed 0 -> 5" in line
    assert f"{tmp_path / 'run-3'}" in line
    before = (run_dir / "journal.jsonl").read_text()
    # evaluation and stopping may change: a longer run of the same search resumes here
    longer = write_recipe(tmp_path, "longer", stopping__max_generations=4,
                          evaluation__weights={"skill0": 2.0})
    assert evolve_cli(longer, run_dir).exit_code == 0
    assert (run_dir / "journal.jsonl").read_text().startswith(before)


# --- faults during a run --------------------------------------------------------------------------

def first_child(fam) -> str:
    clean = fam["clean"]
    return clean["generations"][0]["children"][0]


def test_evaluation_error_skip_records_it_and_the_run_goes_on(fam, tmp_path, monkeypatch):
    child = first_child(fam)
    monkeypatch.setenv("FLAKY_FAIL", child)
    recipe = write_recipe(tmp_path, "skip", evaluation__on_error="skip")
    result = evolve_cli(recipe, tmp_path / "run", evaluator=FLAKY)
    assert result.exit_code == 0, result.output
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert child not in s["models"] and s["failed"][child]["failed"] == (
        "RuntimeError: injected evaluation failure")
    assert s["generations"][0]["failed"] == [child]
    assert all(child not in g["top_k"] for g in s["generations"])
    assert f"{s['failed'][child]['name']} " in result.output and "failed" in result.output
    failures = RunDir(tmp_path / "run").events("eval-failed")
    assert [(e["model"], e["attempt"], e["final"]) for e in failures] == [(child, 1, True)]
    # a resume keeps the verdict: the child is not evaluated again
    assert evolve_cli(recipe, tmp_path / "run", evaluator=FLAKY).exit_code == 0
    starts = [e for e in RunDir(tmp_path / "run").events("eval-start") if e["model"] == child]
    assert len(starts) == 1


def test_evaluation_error_retry_scores_the_child_on_its_second_try(fam, tmp_path, monkeypatch):
    child = first_child(fam)
    monkeypatch.setenv("FLAKY_FAIL", child)
    monkeypatch.setenv("FLAKY_ONCE", str(tmp_path / "once"))
    recipe = write_recipe(tmp_path, "retry", evaluation__on_error="retry", evaluation__retries=1)
    assert evolve_cli(recipe, tmp_path / "run", evaluator=FLAKY).exit_code == 0
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert outcome(s) == outcome(fam["clean"]) and not s["failed"]
    failures = RunDir(tmp_path / "run").events("eval-failed")
    assert [(e["model"], e["final"]) for e in failures] == [(child, False)]


def test_evaluation_error_stop_then_resume(fam, tmp_path, monkeypatch):
    child = first_child(fam)
    monkeypatch.setenv("FLAKY_FAIL", child)
    recipe = write_recipe(tmp_path, "stop", evaluation__on_error="stop")
    line = error_line(evolve_cli(recipe, tmp_path / "run", evaluator=FLAKY))
    assert f"evaluation of {child} failed (RuntimeError: injected evaluation failure)" in line
    monkeypatch.setenv("FLAKY_FAIL", "nothing")  # fixed: the resume scores it and goes on
    assert evolve_cli(recipe, tmp_path / "run", evaluator=FLAKY).exit_code == 0
    assert outcome(json.loads((tmp_path / "run" / "summary.json").read_text())) == outcome(
        fam["clean"])


def test_foundation_model_evaluation_error_stops_the_run(fam, tmp_path, monkeypatch):
    monkeypatch.setenv("FLAKY_FAIL", "child1")
    recipe = write_recipe(tmp_path, "foundation", evaluation__on_error="skip")
    line = error_line(evolve_cli(recipe, tmp_path / "run", evaluator=FLAKY))
    assert "evaluation of child1 failed" in line and "a foundation model" in line


def test_an_evaluator_returning_bad_scores_is_refused_like_a_failed_evaluation(fam, tmp_path):
    """issue 14: what an evaluator returns passes the same check as a scores file."""
    recipe = write_recipe(tmp_path, "percent", evaluation__on_error="stop")
    line = error_line(evolve_cli(recipe, tmp_path / "run", evaluator="test_reliability:percent_evaluate"))
    assert "skill1:" in line and "is outside [0, 1], the range of acc" in line
    assert "a percentage where a fraction belongs?" in line
    scored = {json.loads(f.read_text())["model"] for f in (tmp_path / "run" / "scores").glob("*.json")}
    assert scored == {"child0", "child1", "child2", "base"}  # no child: its scores were refused


def full_disk_merge(real_run_merge):
    """mergekit writes part of the child, then the disk is full."""
    def run_merge(config, out_path, **kwargs):
        real_run_merge(config, out_path, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(out_path) / "model.safetensors"))
    return run_merge


def test_full_disk_during_merge_leaves_no_partial_child_and_resumes(fam, tmp_path, monkeypatch):
    import mergekit.merge

    from mergekit_kinship import merge_hook

    recipe = write_recipe(tmp_path, "disk")
    with monkeypatch.context() as mp:
        mp.setattr(mergekit.merge, "run_merge", full_disk_merge(mergekit.merge.run_merge))
        # evolve's merges run mergekit's steps through the kinship hook
        mp.setattr(merge_hook, "run_merge_observed",
                   full_disk_merge(merge_hook.run_merge_observed))
        line = error_line(evolve_cli(recipe, tmp_path / "run"))
    assert "no space left on device while merging child" in line and "resumes" in line
    assert list((tmp_path / "run" / "models").iterdir()) == []  # no partial child, no temp
    assert evolve_cli(recipe, tmp_path / "run").exit_code == 0  # space freed: resumes
    assert outcome(json.loads((tmp_path / "run" / "summary.json").read_text())) == outcome(
        fam["clean"])


def test_full_tmpfs_during_merge_for_real(fam, tmp_path):
    """The same on a real full file system (a 48 KiB tmpfs under RUN/models; needs root)."""
    models = tmp_path / "run" / "models"
    models.mkdir(parents=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(models)],
                           capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode().strip()}")
    try:
        recipe = write_recipe(tmp_path, "tmpfs")
        line = error_line(evolve_cli(recipe, tmp_path / "run"))
        assert "no space left on device while merging child" in line
        assert list(models.iterdir()) == []
        subprocess.run(["mount", "-o", "remount,size=16m", str(models)], check=True)
        assert evolve_cli(recipe, tmp_path / "run").exit_code == 0
        assert outcome(json.loads((tmp_path / "run" / "summary.json").read_text())) == outcome(
            fam["clean"])
    finally:
        subprocess.run(["umount", "-l", str(models)], check=False)


def test_torn_last_journal_line_is_recovered_on_resume(fam, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(fam["root"] / "clean", run_dir)
    torn = b'{"child": "c-0123", "event": "mer'
    with open(run_dir / "journal.jsonl", "ab") as fh:
        fh.write(torn)  # power loss mid-append
    result = evolve_cli(fam["root"] / "clean.yaml", run_dir)
    assert result.exit_code == 0, result.output
    assert "dropped a torn last line" in result.output
    lines = (run_dir / "journal.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)
    assert (run_dir / "journal.torn").read_bytes() == torn + b"\n"


def test_corrupt_journal_line_in_the_middle_is_an_error_naming_it(fam, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(fam["root"] / "clean", run_dir)
    lines = (run_dir / "journal.jsonl").read_text().splitlines()
    lines[2] = lines[2][:10] + "#garbage#"
    (run_dir / "journal.jsonl").write_text("\n".join(lines) + "\n")
    line = error_line(evolve_cli(fam["root"] / "clean.yaml", run_dir))
    assert "journal.jsonl: line 3 is not a JSON event" in line


def _hold_lock_then_die(run_dir, ready):
    holder = RunDir(run_dir)
    holder.lock()
    ready.set()
    signal.pause()
    holder.unlock()  # never reached: SIGKILL


def test_second_evolve_refused_while_first_lives_and_dead_holder_taken_over(fam, tmp_path):
    run_dir = tmp_path / "run"
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock_then_die, args=(run_dir, ready))
    holder.start()
    try:
        assert ready.wait(30)
        line = error_line(evolve_cli(fam["root"] / "clean.yaml", run_dir))
        assert f"in use by another evolve (pid {holder.pid})" in line
        assert did_no_work(run_dir)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    # the dead holder's lock file still names it; the next evolve takes it over and runs
    assert (run_dir / "lock").read_text().strip() == f"pid {holder.pid}"
    result = evolve_cli(fam["root"] / "clean.yaml", run_dir)
    assert result.exit_code == 0, result.output
    assert outcome(json.loads((run_dir / "summary.json").read_text())) == outcome(fam["clean"])
