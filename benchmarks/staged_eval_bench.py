"""Benchmark staged evaluation: ``evolve`` with and without ``evaluation.stages`` on the zoo's two
families, over several subset seeds; items scored, time, and whether the search went the same way.

    python benchmarks/staged_eval_bench.py                       # both families, seeds 0 1 2
    python benchmarks/staged_eval_bench.py --families digits --seeds 0 1 2 3 4
    python benchmarks/staged_eval_bench.py --plans 0.1,0.3,1 0.1,0.3,0.6,1 --write-md
    python benchmarks/staged_eval_bench.py --timing --confidence 0.8   # single-threaded times

For each family: one run without stages (the reference), then one run per stage plan and subset
seed, each in a fresh run directory under benchmarks/_work/staged/ (nothing is shared between
runs: every item a run needs is scored by that run). Every run uses real lm-eval on CPU with the
family's own recipe (:func:`mergekit_kinship.zoo.builtin_recipe`), the local executor, in this one
process, imports and lm-eval's task index warmed before the clock starts.

Measured per run: items scored (every model of the pool and the references, from the summary),
the children's share of them, wall and CPU seconds of ``evolve`` (CPU: this process, which does
all the work; on a shared machine wall time also counts other jobs), and against the run without
stages: each generation's top-k (by content identity, in order) and the final best model.
Results accumulate in benchmarks/_work/staged/results.json (a run already measured there is not
run again; --fresh forgets them); --write-md renders them into BENCHMARKS.md (its own
``staged-eval-bench`` section; prose after ``<!-- notes -->`` is kept). Times of those runs
depend on the other jobs of a shared machine; ``--timing`` measures them apart, single-threaded
(benchmarks/_work/staged/timing.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "_work" / "staged"
RESULTS = WORK / "results.json"
TIMING = WORK / "timing.json"
MD = REPO / "BENCHMARKS.md"
START, END = "<!-- staged-eval-bench:start -->", "<!-- staged-eval-bench:end -->"
FULL = "full"


def plan_label(stages) -> str:
    return FULL if not stages else ",".join(f"{f:g}" for f in stages)


def run_dir_for(family: str, plan: str, seed: int, confidence: float, root: Path = WORK
                ) -> Path:
    staged = plan != FULL
    return root / family / (plan.replace(",", "_") + (
        f"-c{confidence:g}" if staged and confidence != 0.95 else "")) / f"seed-{seed if staged else 0}"


def journal_facts(run_dir: Path) -> dict:
    """lm-eval calls (a staged child makes one per stage it reaches) and their seconds, from
    the run's journal."""
    from mergekit_kinship.rundir import RunDir

    events = RunDir(run_dir).events("scored") + RunDir(run_dir).events("scored-items")
    return {"evaluations": len(events), "eval_s": sum(e["seconds"] for e in events)}


def search_facts(summary) -> dict:
    """What the floor of staged evaluation needs from a run: each task's item count and how
    many distinct children entered a top-k (each must be scored on every item)."""
    models = summary.models
    foundation = models[summary.foundation_ids()[0]]
    # Children whose full fitness reaches the bar staged evaluation holds them against (the
    # k-th best model of the pool before their generation): the rule must score them in full.
    k = summary.top_k
    pool = [models[i].fitness for i in summary.foundation_ids()]
    above = 0
    for g in summary.generations:
        bar = sorted(pool, reverse=True)[k - 1] if len(pool) >= k else float("-inf")
        fitness = [models[i].fitness for i in g.children if models[i].fitness is not None]
        above += sum(f >= bar for f in fitness)
        pool += fitness
    return {"task_items": dict(foundation.items_total),
            "top_children": len({i for g in summary.generations for i in g.top_k
                                 if models[i].kind == "child"}),
            "above_bar": above}


def floor_items(full: dict, first: float, scored_in_full: str) -> int:
    """The fewest items a staged run that makes the full run's generations can score: the
    foundation models and references in full, the children ``scored_in_full`` counts
    (``top_children``: those that enter a top-k; ``above_bar``: those whose full fitness
    reaches the k-th best before their generation) in full, every other child on the first
    stage's items only (as if screening were never wrong and never late)."""
    from mergekit_kinship.staging import stage_size

    if "above_bar" not in full:  # measured before these facts were kept: read its summary
        from mergekit_kinship.summary import load_summary

        full.update(search_facts(load_summary(WORK / full["family"] / FULL / "seed-0")))
    totals = full["task_items"].values()
    stage1 = sum(stage_size(n, first) for n in totals)
    n = full[scored_in_full]
    return (full["items"] - full["child_items"] + n * sum(totals)
            + (full["children"] - n) * stage1)


def run_once(family_name: str, stages, seed: int, confidence: float, root: Path = WORK) -> dict:
    from mergekit_kinship.evolution import evolve
    from mergekit_kinship.recipe import parse_recipe
    from mergekit_kinship.zoo import build_family, builtin_recipe

    family = build_family(family=family_name, progress=False)
    data = builtin_recipe(family)
    if stages:
        data["evaluation"].update(stages=list(stages), subset_seed=seed, confidence=confidence)
    recipe = parse_recipe(data, family.root, f"{family_name} recipe (bench)")
    run_dir = run_dir_for(family_name, plan_label(stages), seed, confidence, root)
    shutil.rmtree(run_dir, ignore_errors=True)
    wall, cpu = time.perf_counter(), time.process_time()
    summary = evolve(recipe, run_dir, progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    models = summary.models
    children = [m for m in models.values() if m.kind == "child"]
    return {**search_facts(summary), 
        "family": family_name, "plan": plan_label(stages), "seed": seed if stages else None,
        "confidence": confidence if stages else None,
        "items": summary.items_scored(),
        "child_items": sum(sum(m.items.values()) for m in children),
        "children": len(children), "screened": sum(1 for m in children if m.partial),
        "generations": len(summary.generations), "stopped": summary.stopped,
        "top_k": [[models[i].identity for i in g.top_k] for g in summary.generations],
        "best": models[summary.best].identity, "best_name": models[summary.best].name,
        "best_fitness": models[summary.best].fitness, "wall_s": wall, "cpu_s": cpu,
        **journal_facts(run_dir),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=["builtin", "digits"])
    ap.add_argument("--plans", nargs="+", default=["0.1,0.3,1"],
                    help="stage plans, fractions separated by commas")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--fresh", action="store_true", help="forget earlier results")
    ap.add_argument("--write-md", action="store_true")
    ap.add_argument("--timing", action="store_true",
                    help="time single-threaded runs (the full run and seed 0 of each plan) "
                         "into timing.json, apart from the item counts")
    args = ap.parse_args()

    import torch

    from mergekit_kinship.evaluation.tasks import validate_evaluation
    from mergekit_kinship.recipe import parse_recipe
    from mergekit_kinship.zoo import build_family, builtin_recipe

    WORK.mkdir(parents=True, exist_ok=True)
    results = [] if args.fresh or not RESULTS.exists() else json.loads(RESULTS.read_text())
    import lm_eval  # noqa: F401  (warm: paid once per process)
    import mergekit.merge  # noqa: F401

    for name in args.families:
        family = build_family(family=name, progress=False)
        validate_evaluation(parse_recipe(builtin_recipe(family), family.root, "bench").evaluation)
    plans = [None] + [[float(f) for f in p.split(",")] for p in args.plans]
    if args.timing:
        time_runs(args.families, plans, args.confidence)
    for name in args.families:
        for stages in plans:
            for seed in (args.seeds if stages else [0]):
                key = (name, plan_label(stages), seed if stages else None,
                       args.confidence if stages else None)
                if any((r["family"], r["plan"], r["seed"], r["confidence"]) == key
                       for r in results):
                    continue
                print(f"{name} {plan_label(stages)} seed {seed} ...", file=sys.stderr, flush=True)
                results.append(run_once(name, stages, seed, args.confidence))
                RESULTS.write_text(json.dumps(results, indent=1))
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    md = to_markdown(results, machine)
    if TIMING.exists():
        md += "\n\n" + timing_markdown(json.loads(TIMING.read_text()))
    print(md)
    if args.write_md:
        write_md(md)


def time_runs(families, plans, confidence: float) -> None:
    """Single-threaded runs for the time columns: one torch thread, so that a busy shared machine
    slows a run down (wall) without inflating its CPU seconds (spinning threads waiting for a
    core), which makes CPU seconds comparable between runs made minutes apart."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    timing = json.loads(TIMING.read_text()) if TIMING.exists() else []
    try:
        for name in families:
            for stages in plans:
                key = (name, plan_label(stages), confidence if stages else None)
                if any((r["family"], r["plan"], r["confidence"]) == key for r in timing):
                    continue
                print(f"timing: {name} {plan_label(stages)} ...", file=sys.stderr, flush=True)
                timing.append(run_once(name, stages, 0, confidence, WORK / "timing"))
                TIMING.write_text(json.dumps(timing, indent=1))
    finally:
        torch.set_num_threads(threads)


def timing_markdown(timing: list[dict]) -> str:
    lines = ["Time, single-threaded (one torch thread; seed 0 of each plan; CPU seconds of "
             "`evolve`'s process are the measure, wall seconds count the other jobs of the "
             "shared machine too):", "",
             "| family | stages (confidence) | items | lm-eval calls | CPU s | vs full | wall s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for family in dict.fromkeys(r["family"] for r in timing):
        rows = sorted((r for r in timing if r["family"] == family),
                      key=lambda r: r["plan"] != FULL)
        full = rows[0] if rows[0]["plan"] == FULL else None
        for r in rows:
            plan = r["plan"] + (f" ({r['confidence']:g})" if r["plan"] != FULL else "")
            share = f"{r['cpu_s'] / full['cpu_s']:.0%}" if full else "-"
            lines.append(f"| {family} | {plan} | {r['items']} | {r['evaluations']} | "
                         f"{r['cpu_s']:.0f} | {share} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def _same_top(r: dict, full: dict) -> str:
    """``3/3``: generations whose top-k equals the full run's (same models, same order), of the
    generations either run made."""
    same = sum(a == b for a, b in zip(r["top_k"], full["top_k"]))
    return f"{same}/{max(len(r['top_k']), len(full['top_k']))}"


def to_markdown(results: list[dict], machine: str) -> str:
    lines = ["## Staged evaluation", "",
             f"`benchmarks/staged_eval_bench.py` ({time.strftime('%Y-%m-%d')}, {machine}, "
             "lm-eval on CPU). Each family's own recipe (k = 3, kinship strategy, SLERP, the "
             "recipe's stopping rules; the built-in family 4 tasks, digits 5, 100 items each) run "
             "without stages and with each stage plan over several subset seeds, every run in a "
             "fresh run directory (every item a run needs is scored by that run). Items: over "
             "every model scored (foundation models, the base, children); children's items: the "
             "children's share, against the full run's children. Same top-k: generations whose "
             "top-k equals the full run's (same models, same order), of the generations either "
             "run made. lm-eval calls: a staged child makes one per stage it reaches. These runs "
             "used the machine's threads, on a machine shared with other jobs, so their times "
             "are not comparable (kept in results.json); time is measured apart, below, "
             "single-threaded.", "",
             "| family | stages (confidence) | seed | items | vs full | children's items "
             "| screened out | same top-k | same best | lm-eval calls |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    verdicts = []
    for family in dict.fromkeys(r["family"] for r in results):
        full = next((r for r in results if r["family"] == family and r["plan"] == FULL), None)
        if full is None:
            continue
        for r in sorted((x for x in results if x["family"] == family),
                        key=lambda x: x["plan"] != FULL):  # stable: the full run first
            if "evaluations" not in r:  # measured before these facts were kept
                r.update(journal_facts(run_dir_for(family, r["plan"], r["seed"],
                                                   r["confidence"])))
            staged = r["plan"] != FULL
            plan = r["plan"] + (f" ({r['confidence']:g})" if staged else "")
            lines.append(
                f"| {family} | {plan} | {r['seed'] if staged else '-'} | {r['items']} | "
                f"{r['items'] / full['items']:.1%} | {r['child_items']} "
                f"({r['child_items'] / max(full['child_items'], 1):.0%}) | "
                f"{r['screened']} of {r['children']} | {_same_top(r, full)} | "
                f"{'yes' if r['best'] == full['best'] else 'NO'} ({r['best_name']} "
                f"{r['best_fitness']:.4f}) | {r['evaluations']} |")
        for plan, conf in dict.fromkeys((r["plan"], r["confidence"]) for r in results
                                        if r["family"] == family and r["plan"] != FULL):
            rs = [r for r in results if r["family"] == family and (r["plan"], r["confidence"])
                  == (plan, conf)]
            shares = [r["items"] / full["items"] for r in rs]
            same = sum(r["best"] == full["best"] for r in rs)
            tops = sum(r["top_k"] == full["top_k"] for r in rs)
            goal = max(shares) <= 0.5 and same == len(rs)
            first = float(plan.split(",")[0])
            floor = floor_items(full, first, "top_children") / full["items"]
            rule = floor_items(full, first, "above_bar") / full["items"]
            verdicts.append(
                f"- {family}, stages {plan} (confidence {conf:g}): items {min(shares):.0%} to "
                f"{max(shares):.0%} of the full run's; the same final best in {same} of {len(rs)} "
                f"seeds, the same top-k in every generation in {tops} of {len(rs)}; goal (at most "
                f"half the items, the same best in every seed) {'met' if goal else 'not met'}; "
                f"floors on this search, every other child scored on the first stage only: "
                f"{floor:.0%} scoring in full only the {full['top_children']} children that "
                f"enter a top-k, {rule:.0%} scoring in full the {full['above_bar']} of "
                f"{full['children']} whose full fitness reaches the k-th best before their "
                f"generation (the bar this rule holds a child against).")
    return "\n".join(lines + [""] + verdicts)


def write_md(md: str) -> None:
    text = MD.read_text() if MD.exists() else "# Benchmarks\n"
    if START in text and END in text:
        head, tail = text[:text.index(START)], text[text.index(END) + len(END):]
        old = text[text.index(START) + len(START):text.index(END)]
        # Keep the prose written under the generated table (between the table and END).
        notes = old.split("<!-- notes -->", 1)[1] if "<!-- notes -->" in old else "\n"
        text = f"{head}{START}\n{md}\n<!-- notes -->{notes}{END}{tail}"
    else:
        text = text.rstrip() + f"\n\n{START}\n{md}\n<!-- notes -->\n{END}\n"
    MD.write_text(text)


if __name__ == "__main__":
    main()
