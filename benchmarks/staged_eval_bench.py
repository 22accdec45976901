"""Benchmark staged evaluation: ``evolve`` with and without ``evaluation.stages`` on the zoo's two
families, over several subset seeds; items scored, time, and whether the search went the same way.

    python benchmarks/staged_eval_bench.py                       # both families, seeds 0 1 2
    python benchmarks/staged_eval_bench.py --families digits --seeds 0 1 2 3 4
    python benchmarks/staged_eval_bench.py --plans 0.1,0.3,1 0.1,0.3,0.6,1 --write-md

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
run again; --fresh forgets them); --write-md renders them into BENCHMARKS.md.
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
MD = REPO / "BENCHMARKS.md"
START, END = "<!-- staged-eval-bench:start -->", "<!-- staged-eval-bench:end -->"
FULL = "full"


def plan_label(stages) -> str:
    return FULL if not stages else ",".join(f"{f:g}" for f in stages)


def run_once(family_name: str, stages, seed: int, confidence: float) -> dict:
    from mergekit_kinship.evolution import evolve
    from mergekit_kinship.recipe import parse_recipe
    from mergekit_kinship.zoo import build_family, builtin_recipe

    family = build_family(family=family_name, progress=False)
    data = builtin_recipe(family)
    if stages:
        data["evaluation"].update(stages=list(stages), subset_seed=seed, confidence=confidence)
    recipe = parse_recipe(data, family.root, f"{family_name} recipe (bench)")
    run_dir = WORK / family_name / plan_label(stages).replace(",", "_") / f"seed-{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    wall, cpu = time.perf_counter(), time.process_time()
    summary = evolve(recipe, run_dir, progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    models = summary.models
    children = [m for m in models.values() if m.kind == "child"]
    return {
        "family": family_name, "plan": plan_label(stages), "seed": seed if stages else None,
        "confidence": confidence if stages else None,
        "items": summary.items_scored(),
        "child_items": sum(sum(m.items.values()) for m in children),
        "children": len(children), "screened": sum(1 for m in children if m.partial),
        "generations": len(summary.generations), "stopped": summary.stopped,
        "top_k": [[models[i].identity for i in g.top_k] for g in summary.generations],
        "best": models[summary.best].identity, "best_name": models[summary.best].name,
        "best_fitness": models[summary.best].fitness, "wall_s": wall, "cpu_s": cpu,
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
    print(md)
    if args.write_md:
        write_md(md)


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
             "run made. Time: `evolve` alone, CPU seconds of its process and wall seconds (the "
             "machine is shared: wall time counts other jobs too).", "",
             "| family | stages (confidence) | seed | items | vs full | children's items "
             "| screened out | same top-k | same best | CPU s | wall s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    verdicts = []
    for family in dict.fromkeys(r["family"] for r in results):
        full = next((r for r in results if r["family"] == family and r["plan"] == FULL), None)
        if full is None:
            continue
        for r in [x for x in results if x["family"] == family]:
            staged = r["plan"] != FULL
            plan = r["plan"] + (f" ({r['confidence']:g})" if staged else "")
            lines.append(
                f"| {family} | {plan} | {r['seed'] if staged else '-'} | {r['items']} | "
                f"{r['items'] / full['items']:.0%} | {r['child_items']} "
                f"({r['child_items'] / max(full['child_items'], 1):.0%}) | "
                f"{r['screened']} of {r['children']} | {_same_top(r, full)} | "
                f"{'yes' if r['best'] == full['best'] else 'NO'} ({r['best_name']} "
                f"{r['best_fitness']:.4f}) | {r['cpu_s']:.0f} | {r['wall_s']:.0f} |")
        for plan, conf in dict.fromkeys((r["plan"], r["confidence"]) for r in results
                                        if r["family"] == family and r["plan"] != FULL):
            rs = [r for r in results if r["family"] == family and (r["plan"], r["confidence"])
                  == (plan, conf)]
            shares = [r["items"] / full["items"] for r in rs]
            same = sum(r["best"] == full["best"] for r in rs)
            tops = sum(r["top_k"] == full["top_k"] for r in rs)
            goal = max(shares) <= 0.5 and same == len(rs)
            verdicts.append(
                f"- {family}, stages {plan} (confidence {conf:g}): items {min(shares):.0%} to "
                f"{max(shares):.0%} of the full run's; the same final best in {same} of {len(rs)} "
                f"seeds, the same top-k in every generation in {tops} of {len(rs)}; goal (at most "
                f"half the items, the same best in every seed) {'met' if goal else 'not met'}.")
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
