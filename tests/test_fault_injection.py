"""Fault injection: ``evolve`` SIGKILLed at random moments, resumed each time, ends exactly where an
uninterrupted run ends, and redoes a merge or an evaluation only when a kill hit it.

Each interrupted run is a process forked from this one (mergekit, torch and lm-eval are imported
once, here: a fresh interpreter per kill would cost ~10 s of imports each). The kill comes at a
named checkpoint (a fault hook installed with ``rundir.set_fault_hook``: after a merge's weights are written but before
the rename, after an evaluation but before its score is recorded, in the middle of a journal line)
or from this process after a random delay. The schedule is seeded: a failure reproduces.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from evolution_helpers import build_tiny_family
from mergekit_kinship.evolution import evolve
from mergekit_kinship.recipe import load_recipe, parse_recipe
from mergekit_kinship.rundir import RunDir

TESTS = Path(__file__).resolve().parent
STAND_IN = "evolution_helpers:stand_in_evaluate"
KILLS = 20
SEED = 20241016


@pytest.fixture(scope="module")
def single_thread():
    """Forked children use torch too: the parent's thread pool must not be live across fork."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, single_thread):
    root = tmp_path_factory.mktemp("faults")
    build_tiny_family(root / "fam")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "base": "./fam/base", "models": ["./fam/child0", "./fam/child1", "./fam/child2"],
        "top_k": 3, "merge": {"method": "slerp", "dtype": "float32"},
        "evaluation": {"tasks": ["skill0", "skill1", "skill2"]},
        "stopping": {"max_generations": 4}, "seed": 0}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVOLVE_TEST_SKILLS", str(root / "fam"))
        yield {"root": root, "recipe": load_recipe(recipe)}


def _evolve_child(recipe, run_dir, kill_at, evaluator):
    """Body of a forked run: install the fault hook (counts start at 0 in this process), evolve."""
    import torch

    from cli_with_fault import kill_at as fault
    from mergekit_kinship.rundir import set_fault_hook

    # A fork inherits the parent's OpenMP/BLAS thread pool in a state it cannot use (a parallel
    # einsum in the child waits forever for threads that were not forked); one thread never
    # enters a parallel region. A real run is a fresh process and has no such pool.
    torch.set_num_threads(1)

    set_fault_hook(fault(kill_at) if kill_at else None)
    evolve(recipe, run_dir, progress=False, evaluator=evaluator)


def run_forked(recipe, run_dir, kill_at=None, kill_after=None, timeout=300.0,
               evaluator=STAND_IN) -> int:
    """Run evolve in a forked process; SIGKILL it after ``kill_after`` s if still alive.
    Returns the exit code (-9: killed)."""
    proc = multiprocessing.get_context("fork").Process(
        target=_evolve_child, args=(recipe, run_dir, kill_at, evaluator))
    proc.start()
    proc.join(kill_after if kill_after is not None else timeout)
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
    return proc.exitcode


def outcome(summary):
    """What a resumed run must reproduce: the pool, every model's lineage and scores, the
    generations, the stop and the best child."""
    models = {i: (m["name"], m["kind"], m["parents"], m["generation"], m["exploration"],
                  m["scores"], m["fitness"], m["gain"], m["identity"])
              for i, m in summary["models"].items()}
    gens = [{k: g[k] for k in ("index", "children", "top_k", "best", "best_fitness")}
            for g in summary["generations"]]
    return models, gens, summary["stopped"], summary["best"], summary["merges"]


def repeats_within_kills(run_dir):
    """Check from the journal that each merge / evaluation ran at most 1 + (kills that hit it)
    times: a kill hit it when its process wrote the start event and never the matching end."""
    events = RunDir(run_dir).events()
    processes: list[list[dict]] = []
    for e in events:  # one process writes a contiguous stretch of the journal
        if not processes or processes[-1][-1]["pid"] != e["pid"] or e["event"] == "start":
            processes.append([])
        processes[-1].append(e)
    starts, hits = Counter(), Counter()
    for proc in processes:
        ended = {("merge", e["child"]) for e in proc if e["event"] == "merged"}
        ended |= {("eval", e["score_key"]) for e in proc if e["event"] == "scored"}
        for e in proc:
            key = (("merge", e["child"]) if e["event"] == "merge-start" else
                   ("eval", e["score_key"]) if e["event"] == "eval-start" else None)
            if key is not None:
                starts[key] += 1
                hits[key] += key not in ended
    over = {k: (n, hits[k]) for k, n in starts.items() if n > 1 + hits[k]}
    return starts, hits, over


def assert_clean_run_dir(run_dir):
    run_dir = Path(run_dir)
    assert not list((run_dir / "models").glob(".partial-*")), "a partial merge was left behind"
    assert not list(run_dir.rglob(".*.tmp-*")), "a temporary file was left behind"
    for number, line in enumerate((run_dir / "journal.jsonl").read_text().splitlines(), 1):
        json.loads(line)  # every line whole after the last resume


def test_twenty_random_kills_resume_to_the_uninterrupted_result(tiny):
    root, recipe = tiny["root"], tiny["recipe"]
    started = time.perf_counter()
    assert run_forked(recipe, root / "clean") == 0
    clean_seconds = time.perf_counter() - started
    clean = json.loads((root / "clean" / "summary.json").read_text())
    assert clean["merges"] >= 6  # enough work for the kills to land in

    # Kills go to one run directory until a resume runs to the end unkilled; that episode is
    # checked against the clean run and the next episode starts, until KILLS kills have landed.
    rng = random.Random(SEED)
    kills, landed, attempts, episodes, redone = 0, Counter(), 0, 0, 0
    while kills < KILLS:
        episodes += 1
        run_dir = root / f"killed-{episodes}"
        code = None
        while code != 0:
            attempts += 1
            assert attempts <= 5 * KILLS, f"only {kills} kills landed in {attempts} runs"
            kind = rng.choice(["merge", "evaluate", "journal", "timer"])
            if kills >= KILLS:
                kind = "none"  # the final resume of the last episode
            if kind == "timer":
                code = run_forked(recipe, run_dir, kill_after=rng.uniform(0.02, clean_seconds))
            elif kind == "none":
                code = run_forked(recipe, run_dir)
            else:
                count = rng.randint(1, 40 if kind == "journal" else 3)
                code = run_forked(recipe, run_dir, kill_at=f"{kind}:{count}")
            assert code in (0, -signal.SIGKILL), f"run {attempts} ({kind}) failed: exit {code}"
            if code == -signal.SIGKILL:
                kills += 1
                landed[kind] += 1

        resumed = json.loads((run_dir / "summary.json").read_text())
        assert outcome(resumed) == outcome(clean), f"episode {episodes} differs"
        ids = list(clean["models"])
        for a, row in enumerate(clean["pool_kinship"]["pcc"]):
            for b, value in enumerate(row):
                other = resumed["pool_kinship"]["pcc"][a][b]
                assert (value is None and other is None) or math.isclose(
                    value, other, rel_tol=1e-9, abs_tol=1e-12), (episodes, ids[a], ids[b])
        assert_clean_run_dir(run_dir)
        starts, hits, over = repeats_within_kills(run_dir)
        assert not over, f"episode {episodes}: work repeated more often than kills hit it: {over}"
        assert sum(1 for k in starts if k[0] == "merge") == clean["merges"]
        redone += sum(hits.values())
    # the kills landed in merges, evaluations and journal writes, and forced real redo
    assert landed["merge"] and landed["evaluate"] and landed["journal"], landed
    assert redone >= 3
    print(f"{KILLS} kills in {episodes} episodes, {attempts} runs: {dict(landed)}; "
          f"{redone} merges/evaluations redone after a kill hit them", file=sys.stderr)


def test_real_mergekit_and_lm_eval_killed_twice_resume_exactly(tmp_path, monkeypatch,
                                                               single_thread):
    """The built-in family, real merges and real lm-eval scores (limit 4, 2 merges): killed
    once during a merge and once after an evaluation, resumed, equal to an uninterrupted run."""
    from mergekit_kinship.zoo import build_family, builtin_recipe

    family = build_family(progress=False)
    data = builtin_recipe(family)
    data["evaluation"].update(limit=4, batch_size=4)
    data["stopping"].update(max_merges=2, max_generations=1)
    recipe = parse_recipe(data, tmp_path, "builtin-family (fault test)")
    import lm_eval.evaluator  # noqa: F401  (imported once, before the forks)

    assert run_forked(recipe, tmp_path / "clean", evaluator=None) == 0  # real lm-eval
    clean = json.loads((tmp_path / "clean" / "summary.json").read_text())
    assert clean["merges"] == 2 and all(m["scores"] for m in clean["models"].values())

    run_dir = tmp_path / "killed"
    assert run_forked(recipe, run_dir, kill_at="merge:2", evaluator=None) == -signal.SIGKILL
    assert run_forked(recipe, run_dir, kill_at="evaluate:1", evaluator=None) == -signal.SIGKILL
    assert run_forked(recipe, run_dir, evaluator=None) == 0
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert outcome(resumed) == outcome(clean)
    assert_clean_run_dir(run_dir)
    starts, hits, over = repeats_within_kills(run_dir)
    assert not over, over
    assert sum(hits.values()) == 2  # both kills hit real work, which was then redone once
