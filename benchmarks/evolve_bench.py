"""Benchmark the evolve loop on the built-in family: our own overhead per child, and our merge
time against ``mergekit-yaml`` on the same YAML.

    python benchmarks/evolve_bench.py                  # kinship strategy, full tasks
    python benchmarks/evolve_bench.py --limit 25       # quicker, noisier scores
    python benchmarks/evolve_bench.py --write-md       # also write the table into BENCHMARKS.md

One process, imports (torch, mergekit, lm-eval and its task index) warmed before the clock
starts: they are paid once per run, not per child. Then ``evolve`` runs in a fresh run directory
under benchmarks/_work/ and the journal gives, per child, mergekit's merge time (``run_merge``
and our atomic rename) and lm-eval's evaluation time (``simple_evaluate`` with model loading).
Kinship (our streaming engine, reading weights) is timed separately. Everything else is the
loop's own overhead: planning, hashing, YAML, journal fsyncs, summary writes. Goal: under 5% of
a child's total time.

Then the first three children's YAML are merged again, by ``merge_yaml`` in this process and by
``mergekit-yaml`` in a subprocess (its wall time includes Python start-up and importing
mergekit, which a long-lived ``evolve`` pays once), and the tensors are compared.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "_work" / "evolve"
MD = REPO / "BENCHMARKS.md"
START, END = "<!-- evolve-bench:start -->", "<!-- evolve-bench:end -->"


def recipe_for(family, limit, strategy, max_merges):
    from mergekit_kinship.recipe import parse_recipe
    from mergekit_kinship.zoo import builtin_recipe

    data = builtin_recipe(family)
    data["evaluation"]["limit"] = limit
    data["strategy"] = strategy
    data["stopping"]["max_merges"] = max_merges
    return parse_recipe(data, REPO, "built-in recipe (bench)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="lm-eval limit per task")
    ap.add_argument("--strategy", default="kinship")
    ap.add_argument("--max-merges", type=int, default=None)
    ap.add_argument("--write-md", action="store_true")
    args = ap.parse_args()

    import torch

    from mergekit_kinship.evaluation.tasks import validate_evaluation
    from mergekit_kinship.evolution import evolve
    from mergekit_kinship.pool import default_kinship
    from mergekit_kinship.merging import merge_yaml
    from mergekit_kinship.rundir import RunDir
    from mergekit_kinship.zoo import build_family

    family = build_family(progress=False)
    recipe = recipe_for(family, args.limit, args.strategy, args.max_merges)
    import lm_eval  # noqa: F401  (warm: paid once per process)
    import mergekit.merge  # noqa: F401

    validate_evaluation(recipe.evaluation)  # warms lm-eval's task index for include_path

    kinship_seconds = 0.0

    def timed_kinship(*a, **k):
        nonlocal kinship_seconds
        t = time.perf_counter()
        try:
            return default_kinship(*a, **k)
        finally:
            kinship_seconds += time.perf_counter() - t

    run_dir = WORK / f"run-{args.strategy}"
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.perf_counter()
    summary = evolve(recipe, run_dir, kinship_fn=timed_kinship, progress=False).to_json()
    total = time.perf_counter() - started

    rd = RunDir(run_dir)
    merge_s = sum(e["seconds"] for e in rd.events("merged"))
    eval_s = sum(e["seconds"] for e in rd.events("scored"))
    n_children = len(rd.events("merged"))
    n_models = len(rd.events("scored"))
    overhead = total - merge_s - eval_s - kinship_seconds
    per_child_total = total / max(n_children, 1)
    best = summary["models"][summary["best"]]
    foundation_best = max(m["fitness"] for m in summary["models"].values()
                          if m["kind"] == "foundation")

    # Our merge vs mergekit-yaml on the same YAML.
    rows = []
    for cid in summary["generations"][0]["children"][:3]:
        text = (run_dir / "yaml" / f"{cid}.yaml").read_text()
        ours_dir, theirs_dir = WORK / "ours" / cid, WORK / "theirs" / cid
        for d in (ours_dir, theirs_dir):
            shutil.rmtree(d, ignore_errors=True)
        t = time.perf_counter()
        merge_yaml(text, ours_dir, seed=recipe.seed)
        ours = time.perf_counter() - t
        t = time.perf_counter()
        subprocess.run(["mergekit-yaml", str(run_dir / "yaml" / f"{cid}.yaml"), str(theirs_dir)],
                       check=True, capture_output=True)
        theirs = time.perf_counter() - t
        from safetensors.torch import load_file

        a = {k: v for f in sorted(ours_dir.glob("*.safetensors")) for k, v in load_file(f).items()}
        b = {k: v for f in sorted(theirs_dir.glob("*.safetensors")) for k, v in load_file(f).items()}
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        rows.append((summary["models"][cid]["name"], ours, theirs, same))

    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "strategy": args.strategy, "limit": args.limit, "stopped": summary["stopped"],
        "generations": len(summary["generations"]), "children": n_children,
        "models_scored": n_models, "total_s": total, "merge_s": merge_s, "eval_s": eval_s,
        "kinship_s": kinship_seconds, "overhead_s": overhead,
        "overhead_per_child_s": overhead / max(n_children, 1),
        "overhead_share": overhead / total, "per_child_total_s": per_child_total,
        "best": best["name"], "best_fitness": best["fitness"],
        "best_foundation_fitness": foundation_best, "merge_vs_mergekit_yaml": rows,
    }
    md = to_markdown(result)
    print(md)
    print(json.dumps({k: v for k, v in result.items() if k != "merge_vs_mergekit_yaml"}, indent=1),
          file=sys.stderr)
    if args.write_md:
        write_md(md)


def to_markdown(r: dict) -> str:
    lines = [
        f"### evolve on the built-in family ({time.strftime('%Y-%m-%d')}, {r['machine']})",
        "",
        f"Strategy `{r['strategy']}`, lm-eval limit {r['limit']}: {r['generations']} generations, "
        f"{r['children']} children, {r['models_scored']} models scored, stopped: {r['stopped']}. "
        f"Best {r['best']} {r['best_fitness']:.4f} (best foundation model "
        f"{r['best_foundation_fitness']:.4f}).",
        "",
        "| part | seconds | share |",
        "|---|---:|---:|",
    ]
    for label, key in (("mergekit merges", "merge_s"), ("lm-eval evaluations", "eval_s"),
                       ("kinship (streaming engine)", "kinship_s"),
                       ("loop overhead (plan, hashes, YAML, journal, summary)", "overhead_s")):
        lines.append(f"| {label} | {r[key]:.2f} | {r[key] / r['total_s']:.1%} |")
    lines += [f"| **total** | {r['total_s']:.2f} | 100% |", "",
              f"Loop overhead per child: {r['overhead_per_child_s']:.3f} s "
              f"({r['overhead_share']:.2%} of the run; goal < 5%).", "",
              "| child | merge_yaml in-process (s) | mergekit-yaml subprocess (s) | same tensors |",
              "|---|---:|---:|---|"]
    for name, ours, theirs, same in r["merge_vs_mergekit_yaml"]:
        lines.append(f"| {name} | {ours:.2f} | {theirs:.2f} | {'yes' if same else 'NO'} |")
    lines.append("")
    lines.append("mergekit-yaml's time includes starting Python and importing mergekit, which "
                 "`evolve` pays once per run.")
    return "\n".join(lines)


def write_md(md: str) -> None:
    text = MD.read_text() if MD.exists() else "# Benchmarks\n"
    block = f"{START}\n{md}\n{END}"
    if START in text and END in text:
        text = text[:text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n## Evolution loop\n\n" + block + "\n"
    MD.write_text(text)


if __name__ == "__main__":
    main()
