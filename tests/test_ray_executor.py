"""The Ray executor on a local two-worker CPU cluster, with the tiny family of evolution_helpers.

A run on Ray must give the local executor's run (same children, scores, journal facts) while the
children of a generation really run at once; a failing child is retried, recorded with its error
and resumed; Ctrl-C kills the workers and a second run resumes. The evaluator is the stand-in of
evolution_helpers, steered per test by a control file (sleep, fail, block) that the workers read.
Skipped when Ray is not installed, except the test of that very case.
"""

from __future__ import annotations

import _thread
import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from evolution_helpers import build_tiny_family, stand_in_evaluate

TESTS = Path(__file__).resolve().parent
CONTROLLED = "test_ray_executor:controlled_evaluate"


def controlled_evaluate(model_path, settings):
    """``stand_in_evaluate``, steered by the JSON file named by ``RAY_TEST_CONTROL``.

    ``sleep``: seconds added to each child's evaluation (so that overlap is measurable);
    ``fail``: {child id: n} raises on the first n evaluations of that child;
    ``crash``: {child id: n} ends the worker process on the first n evaluations of that child;
    ``user_error``: [child id] raises a UserError (the user's to fix);
    ``block``: [child id] writes ``marks/started-ID`` (this pid) and sleeps 120 s, then
    ``marks/finished-ID``.
    """
    control_file = Path(os.environ["RAY_TEST_CONTROL"])
    control = json.loads(control_file.read_text()) if control_file.exists() else {}
    marks = control_file.parent / "marks"
    marks.mkdir(exist_ok=True)
    name = Path(model_path).name
    failures = marks / f"failures-{name}"
    if name in control.get("user_error", []):
        from mergekit_kinship.errors import UserError

        raise UserError(f"{name}: injected user error")
    for how in ("fail", "crash"):
        if name in control.get(how, {}):
            n = int(failures.read_text()) if failures.exists() else 0
            if n < control[how][name]:
                failures.write_text(str(n + 1))
                if how == "crash":
                    (marks / f"crashed-{name}").write_text(str(os.getpid()))
                    os._exit(3)  # the worker process dies, as when killed for memory
                raise RuntimeError(f"injected failure {n + 1} of {name}")
    if name in control.get("block", []):
        (marks / f"started-{name}").write_text(str(os.getpid()))
        time.sleep(120)
        (marks / f"finished-{name}").write_text("")
    if Path(model_path).parent.name == "models":
        time.sleep(control.get("sleep", 0))
    return stand_in_evaluate(model_path, settings)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A tiny family, its recipe, and a local Ray cluster of 2 CPUs whose workers inherit the
    environment the controlled evaluator reads and the PYTHONPATH it is imported from (set
    before ``ray.init``); each job names the evaluator itself."""
    ray = pytest.importorskip("ray")
    root = tmp_path_factory.mktemp("ray")
    build_tiny_family(root / "fam")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "base": "./fam/base", "models": ["./fam/child0", "./fam/child1", "./fam/child2"],
        "top_k": 3, "strategy": "kinship", "merge": {"method": "slerp", "dtype": "float32"},
        "evaluation": {"tasks": ["skill0", "skill1", "skill2"]},
        "stopping": {"max_generations": 2}, "seed": 0}))
    env = {"EVOLVE_TEST_SKILLS": str(root / "fam"),
           "RAY_TEST_CONTROL": str(root / "control.json"),
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "RAY_USAGE_STATS_ENABLED": "0"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20,
                 log_to_driver=False, configure_logging=False)
        try:
            yield {"root": root, "recipe": recipe, "ray": ray}
        finally:
            ray.shutdown()


def control(cluster, **settings):
    (cluster["root"] / "control.json").write_text(json.dumps(settings))


@pytest.fixture(scope="module")
def executor(cluster):
    """One Ray executor (two workers) for the module: workers import mergekit once."""
    from mergekit_kinship.executors import get_executor

    work = get_executor("ray", retries=1)
    yield work
    work.close()


@pytest.fixture(scope="module")
def local_run(cluster):
    """The reference: the same recipe run by the local executor."""
    from mergekit_kinship.evolution import evolve
    from mergekit_kinship.recipe import load_recipe

    control(cluster)
    run_dir = cluster["root"] / "local"
    return run_dir, evolve(load_recipe(cluster["recipe"]), run_dir, progress=False,
                           evaluator=CONTROLLED).to_json()


def evolve_on(cluster, executor, name):
    from mergekit_kinship.evolution import evolve
    from mergekit_kinship.recipe import load_recipe

    return evolve(load_recipe(cluster["recipe"]), cluster["root"] / name, executor=executor,
                  progress=False, evaluator=CONTROLLED).to_json()


def lineage(summary):
    return ({i: (m["name"], m["parents"], m["generation"], m["exploration"], m["scores"],
                 m["fitness"], m["gain"]) for i, m in summary["models"].items()},
            [{k: g[k] for k in ("index", "children", "top_k", "best")}
             for g in summary["generations"]],
            summary["stopped"], summary["best"])


def journal(run_dir):
    """Every journal line as JSON (a torn or clobbered line fails the test)."""
    lines = (Path(run_dir) / "journal.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def facts(events):
    """The journal's content without timings, pids and the Ray executor's own records."""
    drop = {"pid", "seconds"}
    return Counter(json.dumps({k: v for k, v in e.items() if k not in drop}, sort_keys=True)
                   for e in events if not e["event"].startswith("worker-job"))


def test_a_generation_runs_in_parallel_and_matches_the_local_executor(cluster, executor,
                                                                       local_run):
    local_dir, reference = local_run
    control(cluster, sleep=0.5)
    summary = evolve_on(cluster, executor, "parallel")
    assert lineage(summary) == lineage(reference)
    events = journal(cluster["root"] / "parallel")
    assert facts(events) == facts(journal(local_dir))

    # The driver alone wrote the workers' events (they carry the workers' pids): each job's
    # events form one block just before its worker-job record, even though jobs overlapped.
    worker_pids = {e["pid"] for e in events if e["event"] in ("merged", "scored")}
    assert os.getpid() not in worker_pids and len(worker_pids) == 2
    for k, e in enumerate(events):
        if e["event"] == "worker-job":
            own = [j for j, f in enumerate(events[:k])
                   if e["model"] in (f.get("child"), f.get("model"))]
            assert own == list(range(k - len(own), k)), (e["model"], own, k)
    # Generation 1's children: two ran at the same time on two different workers.
    jobs = {e["model"]: e for e in events if e["event"] == "worker-job"}
    children = summary["generations"][0]["children"]
    assert len(children) == 3
    overlapping = [(a, b) for i, a in enumerate(children) for b in children[i + 1:]
                   if jobs[a]["started"] < jobs[b]["ended"]
                   and jobs[b]["started"] < jobs[a]["ended"]]
    assert overlapping, {c: (jobs[c]["started"], jobs[c]["ended"]) for c in children}
    a, b = overlapping[0]
    assert jobs[a]["worker_pid"] != jobs[b]["worker_pid"]
    # Merges happened on the workers (one each), none in the driver.
    merged = Counter(e["child"] for e in events if e["event"] == "merged")
    assert set(merged) == {i for i, m in summary["models"].items() if m["kind"] == "child"}
    assert set(merged.values()) == {1}


def test_a_failing_child_is_retried_recorded_and_resumed(cluster, executor, local_run):
    from mergekit_kinship.executors.ray import ChildJobFailed

    _, reference = local_run
    crashing, broken, healthy = reference["generations"][0]["children"]
    control(cluster, crash={crashing: 1}, fail={broken: 99})
    executor.retries = 1
    with pytest.raises(ChildJobFailed, match=f"{broken} failed 2 time.*injected failure 2"):
        evolve_on(cluster, executor, "failing")
    events = journal(cluster["root"] / "failing")
    failures = [e for e in events if e["event"] == "worker-job-failed"]
    by_child = {c: [(e["attempt"], e["final"]) for e in failures if e["model"] == c]
                for c in (crashing, broken, healthy)}
    assert by_child == {crashing: [(1, False)], broken: [(1, False), (2, True)], healthy: []}
    assert all("RuntimeError: injected failure" in e["error"] and "Traceback" in e["traceback"]
               for e in failures if e["model"] == broken)
    crash = next(e for e in failures if e["model"] == crashing)
    assert crash["error"].startswith("ActorDiedError"), crash["error"]
    done = {e["model"]: e for e in events if e["event"] == "worker-job"}
    assert {crashing, healthy} <= set(done) and broken not in done
    # The crashed child ran again on a fresh worker.
    dead = int((cluster["root"] / "marks" / f"crashed-{crashing}").read_text())
    assert done[crashing]["worker_pid"] != dead
    assert not [e for e in events if e["event"] == "generation"]

    control(cluster)  # the cause is gone: running again finishes the run, redoing nothing done
    summary = evolve_on(cluster, executor, "failing")
    assert lineage(summary) == lineage(reference)
    again = journal(cluster["root"] / "failing")[len(events):]
    assert [e["model"] for e in again if e["event"] == "scored"
            and summary["models"].get(e["model"], {}).get("generation") == 1] == [broken]
    merged = Counter(e["child"] for e in journal(cluster["root"] / "failing")
                     if e["event"] == "merged")
    # A dead worker's events are lost with it; its finished merge was kept, not redone.
    assert merged[broken] == merged[healthy] == 1 and merged[crashing] <= 1


def test_a_user_error_on_a_worker_is_not_retried(cluster, executor, local_run):
    from mergekit_kinship.errors import UserError

    _, reference = local_run
    child = reference["generations"][0]["children"][1]
    control(cluster, user_error=[child])
    executor.retries = 2
    with pytest.raises(UserError, match=f"^{child}: injected user error$"):
        evolve_on(cluster, executor, "user-error")
    failures = [e for e in journal(cluster["root"] / "user-error")
                if e["event"] == "worker-job-failed"]
    assert [(e["model"], e["attempt"], e["final"]) for e in failures] == [(child, 1, True)]
    assert failures[0]["error"] == f"UserError: {child}: injected user error"


def test_ctrl_c_kills_the_workers_and_the_run_resumes(cluster, executor, local_run):
    psutil = pytest.importorskip("psutil")
    _, reference = local_run
    blocked = reference["generations"][0]["children"][0]
    control(cluster, block=[blocked])
    started = cluster["root"] / "marks" / f"started-{blocked}"
    interrupted_at, give_up = [], threading.Event()

    def interrupt_when_blocked():  # Ctrl-C while the blocked child runs on a worker
        while not started.exists():
            if give_up.wait(0.1):
                return
        interrupted_at.append(time.time())
        _thread.interrupt_main()

    threading.Thread(target=interrupt_when_blocked, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            evolve_on(cluster, executor, "interrupted")
    finally:
        give_up.set()
    assert started.exists() and time.time() - interrupted_at[0] < 10
    worker = int(started.read_text())
    deadline = time.time() + 15
    while psutil.pid_exists(worker) and psutil.Process(worker).status() != psutil.STATUS_ZOMBIE \
            and time.time() < deadline:
        time.sleep(0.2)
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE
    events = journal(cluster["root"] / "interrupted")
    assert events[-1]["event"] == "interrupted" and blocked in events[-1]["cancelled"]
    assert blocked not in {e["model"] for e in events if e["event"] == "scored"}

    control(cluster)
    summary = evolve_on(cluster, executor, "interrupted")
    assert lineage(summary) == lineage(reference)
    assert not (cluster["root"] / "marks" / f"finished-{blocked}").exists()


def test_cli_options_reach_the_executor(cluster, tmp_path):
    from mergekit_kinship.cli import main

    runner = CliRunner()
    args = ["evolve", str(cluster["recipe"]), "--run-dir", str(tmp_path / "run"),
            "--evaluator", CONTROLLED]
    result = runner.invoke(main, [*args, "--executor", "ray", "--num-gpus", "1"])
    assert result.exit_code == 2, result.output
    assert "--num-gpus 1: the Ray cluster has 0 GPUs" in result.output
    result = runner.invoke(main, [*args, "--retries", "3"])
    assert result.exit_code == 2 and "--retries: only with --executor ray" in result.output


def test_without_ray_the_ray_executor_is_a_one_line_error(monkeypatch, tmp_path):
    from mergekit_kinship import executors
    from mergekit_kinship.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, find_spec says None
    result = CliRunner().invoke(main, ["evolve", str(tmp_path / "r.yaml"), "--run-dir",
                                       str(tmp_path / "run"), "--executor", "ray"])
    assert result.exit_code == 2
    assert result.output.strip() == \
        'Error: --executor ray needs Ray: pip install "mergekit-kinship[ray]"'
