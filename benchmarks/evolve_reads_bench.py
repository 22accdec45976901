"""What ``evolve`` reads to relate each generation's children to the pool, against the exact path.

    python benchmarks/evolve_reads_bench.py              # one long run + lineage_bench's runs
    python benchmarks/evolve_reads_bench.py --write-md   # also write the table into BENCHMARKS.md

Since delta sketches, ``evolve`` relates new children to the whole pool from sketches (the
merge sketches each child) and reads weights only for the exact values it reports or decides by
(top-k pairs, exploration candidates the sketch cannot separate). Every read is a
``kinship-read`` event in the run's journal, with its bytes. This script sums those events per
generation and puts beside them what the exact path read: before sketches, ``Pool.relate``
measured every new child against every pool model exactly, one streaming pass over the base and
every model of the pool (the pool's weight bytes after the generation's children joined, plus the
base), computed here from the model folders (every run keeps all children).

Runs: ``long`` (made here, under benchmarks/_work/evolve-reads/: the built-in family and recipe
with k = 4 and no saturation rule, so the pool grows until the top-k stops changing or 8
generations) and, when present, the runs of ``lineage_bench.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from bench_md import write_section

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "evolve-reads"
MD = HERE.parent / "BENCHMARKS.md"
START, END = "<!-- evolve-reads-bench:start -->", "<!-- evolve-reads-bench:end -->"


def long_run() -> Path:
    from mergekit_kinship.evolution import evolve
    from mergekit_kinship.recipe import parse_recipe
    from mergekit_kinship.zoo import build_family, builtin_recipe
    from mergekit_kinship.zoo.train import single_threaded

    run_dir = WORK / "long" / "run"
    if (WORK / "long" / "done").exists():
        return run_dir
    data = builtin_recipe(build_family(progress=False))
    data["top_k"] = 4
    data["stopping"] = {"max_generations": 8}
    recipe = parse_recipe(data, WORK / "long", source="evolve reads bench")
    with single_threaded():
        evolve(recipe, run_dir, keep="all", progress=False)
    (WORK / "long" / "done").write_text("")
    return run_dir


def weight_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.suffix in (".safetensors", ".bin"))


def per_generation(run_dir: Path) -> list[dict]:
    """Per generation (0: the foundation models): pool size, bytes read (journal) and what the
    exact path read (base + every pool model)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    models = summary["models"]
    size = {i: weight_bytes(Path(m["path"] or run_dir / "models" / i)) for i, m in models.items()
            if m["kind"] in ("foundation", "child")}
    base = weight_bytes(Path(summary["base"]["path"]))
    events = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    rows, read, models_read, generation = [], 0, 0, 0
    for e in events:
        if e["event"] == "kinship-read":
            if "foundation" in e.get("why", "") and generation == 0:
                rows.append({"generation": 0, "read": e["bytes"], "models": len(e["models"])})
                continue
            read += e["bytes"]
            models_read += len(e["models"])
        elif e["event"] == "generation":
            generation = e["index"]
            rows.append({"generation": generation, "read": read, "models": models_read})
            read = models_read = 0
    foundation = [i for i, m in models.items() if m["kind"] == "foundation"]
    for row in rows:
        pool = foundation + [i for i, m in models.items() if m["kind"] == "child"
                             and m["generation"] <= row["generation"]]
        row["pool"] = len(pool)
        row["exact"] = base + sum(size[i] for i in pool)
    return rows


def table(runs: list[tuple[str, list[dict]]]) -> str:
    lines = ["| run | generation | pool after it | read with sketches (MB, models) | exact path (MB) |",
             "|---|---:|---:|---:|---:|"]
    for label, rows in runs:
        for r in rows:
            lines.append(f"| {label} | {r['generation']} | {r['pool']} | {r['read'] / 1e6:.1f} "
                         f"({r['models']}) | {r['exact'] / 1e6:.1f} |")
    totals = [(label, sum(r["read"] for r in rows[1:]), sum(r["exact"] for r in rows[1:]))
              for label, rows in runs]
    lines += ["", "From generation 1 on, in total: " + "; ".join(
        f"{label} {s / 1e6:.1f} MB against {e / 1e6:.1f} MB ({100 * s / e:.0f}%)"
        for label, s, e in totals) + "."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write-md", action="store_true", help="write the table into BENCHMARKS.md")
    args = ap.parse_args(argv)
    t0 = time.time()
    runs = [("long (builtin, k = 4)", per_generation(long_run()))]
    print(f"long run: {time.time() - t0:.0f} s", file=sys.stderr)
    for folder in sorted((HERE / "_work" / "lineage").glob("*/run")):
        if (folder.parent / "done").exists():
            runs.append((folder.parent.name, per_generation(folder)))
    text = table(runs)
    print(text)
    if args.write_md:
        write_md(text)
    return 0


def write_md(text: str) -> None:
    section = (f"{START}\n## What evolve reads per generation\n\nMade by `python "
               f"benchmarks/evolve_reads_bench.py --write-md` on {time.strftime('%Y-%m-%d')}: "
               "the bytes of weights `evolve` read to relate each generation's children to the "
               "pool (the journal's `kinship-read` events: top-k pairs, unseparated exploration "
               "candidates; generation 0 is the foundation models' one pass, which also "
               "sketches them), against what the exact path read (every pool model and the "
               "base, once per generation). Models ~1 MB each (the toy families).\n\n"
               f"{text}\n{END}")
    write_section(section, START, END, MD)


if __name__ == "__main__":
    sys.exit(main())
