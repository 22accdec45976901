"""What counting sign conflicts adds to a streaming kinship pass.

    python benchmarks/sign_conflict_bench.py              # 0.5B-parameter bf16 family (kinship_bench's)
    python benchmarks/sign_conflict_bench.py --quick      # a 30M-parameter family, to try the script
    python benchmarks/sign_conflict_bench.py --write-md   # also write the table into BENCHMARKS.md

On the synthetic family of ``kinship_bench.py`` (same files, reused when present), it times the
same pass with ``pcc,cosine,euclidean`` and with ``sign_conflict`` added: the kinship of two
children, and the 8-model matrix, each warm (files in the page cache) and cold (our files evicted
first). Every run is a fresh interpreter (``kinship_bench.measure``); the two variants alternate,
``--repeats`` times each, so that the load of a shared machine falls on both alike. The figure that
counts is the ratio of the medians. ``--subchunk`` sets the CPU sub-chunk (elements per model
reduced at once) in every run; ``--old-default`` adds a third variant to the alternation: without
sign_conflict at the sub-chunk default before sign_conflict (2**18 / N, at least 65536 elements).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import kinship_bench as kb  # noqa: E402  (the family writer, eviction and the subprocess runner)

START, END = "<!-- sign-bench:start -->", "<!-- sign-bench:end -->"
WITHOUT = "pcc,cosine,euclidean"
WITH = WITHOUT + ",sign_conflict"


def case(kind: str, metrics: str, subchunk: int | None) -> dict:
    """A measurement for ``kb.measure``; its ``out`` holds the values and the process's CPU
    seconds (every thread), a steadier figure than wall time on a shared machine."""
    setup = "import time\nimport mergekit_kinship.kinship_accumulators as acc\n"
    if subchunk:
        setup += f"acc.CPU_SUBCHUNK = {subchunk}\n"
    if kind == "pair":
        setup += "from mergekit_kinship.streaming_kinship import kinship"
        body = ("cpu0 = time.process_time()\n"
                f"out = kinship(PATHS[1], PATHS[2], PATHS[0], metrics={metrics!r}, progress=False).values\n")
    else:
        setup += "from mergekit_kinship.streaming_kinship import kinship_matrix"
        body = ("cpu0 = time.process_time()\n"
                f"r = kinship_matrix(PATHS[1:], PATHS[0], metrics={metrics!r}, progress=False)\n"
                "out = {m: r.values[m][0][1] for m in r.metrics}\n")
    return dict(setup=setup, body=body + "out['cpu_seconds'] = time.process_time() - cpu0")


OLD = "old"  # the variant without sign_conflict at the sub-chunk default before it


def compare(kind: str, paths, cold: bool, repeats: int, subchunk: int | None, old: int | None) -> dict:
    """Alternate the variants ``repeats`` times; their walls, and the last values."""
    variants = {WITHOUT: (WITHOUT, subchunk), WITH: (WITH, subchunk)}
    if old:
        variants[OLD] = (WITHOUT, old)
    walls: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    out = {}
    for _ in range(repeats):
        for variant, (metrics, sub) in variants.items():
            if not cold:
                kb.read_all(paths)
            result = kb.measure(case(kind, metrics, sub), paths, cold=cold)
            walls[variant].append(result["wall"])
            cpu[variant].append(result["out"].pop("cpu_seconds"))
            out[variant] = result["out"]
    return {"walls": walls, "cpu": cpu, "out": out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 30M-parameter family instead of 0.5B")
    ap.add_argument("--children", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--subchunk", type=int, default=None, help="CPU sub-chunk (elements per model)")
    ap.add_argument("--old-default", action="store_true",
                    help="also time the pass without sign_conflict at the previous sub-chunk default")
    ap.add_argument("--skip-matrix", action="store_true")
    ap.add_argument("--write-md", action="store_true", help="write the table into BENCHMARKS.md")
    args = ap.parse_args(argv)

    cfg = kb.QUICK if args.quick else kb.FULL
    root = kb.WORK / ("kinship_quick" if args.quick else "kinship")
    paths = kb.write_family(cfg, args.children, root)
    rows = []
    cases = [("pair", paths[:3], "kinship of 2 children", 2)]
    if not args.skip_matrix:
        cases.append(("matrix", paths, f"{args.children}-model matrix", args.children))
    values = {}
    for kind, use, label, n_models in cases:
        old = max(65536, 2**18 // n_models) if args.old_default else None
        for cold in (False, True):
            result = compare(kind, use, cold, args.repeats, args.subchunk, old)
            walls = result["walls"]
            w0, w1 = (statistics.median(walls[m]) for m in (WITHOUT, WITH))
            c0, c1 = (statistics.median(result["cpu"][m]) for m in (WITHOUT, WITH))
            rows.append(dict(case=f"{label} ({'cold' if cold else 'warm cache'})", without=w0, with_=w1,
                             min0=min(walls[WITHOUT]), min1=min(walls[WITH]), cpu0=c0, cpu1=c1,
                             old=statistics.median(walls[OLD]) if old else None, old_sub=old))
            print(f"  {rows[-1]['case']:<36} without {w0:6.2f} s  with {w1:6.2f} s  "
                  f"{(w1 / w0 - 1) * 100:+5.1f}%" + (f"  old default {rows[-1]['old']:6.2f} s" if old else ""),
                  file=sys.stderr, flush=True)
            values[kind] = result["out"][WITH]
    table = format_table(rows, cfg, args, values)
    print(table)
    if args.write_md:
        write_md(table)
    return 0


def format_table(rows, cfg, args, values) -> str:
    import platform

    import torch

    from mergekit_kinship.kinship_accumulators import default_subchunk

    sub = args.subchunk or default_subchunk(2, torch.device("cpu"))
    pair = values.get("pair", {})
    old = args.old_default
    lines = [
        f"Family of `kinship_bench.py`: {kb.n_params(cfg) / 1e9:.2f}B parameters per model, bf16, base + "
        f"{args.children} children. {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}, CPU sub-chunk {sub} elements for 2 models; 1-minute load average "
        f"{os.getloadavg()[0]:.1f} at the end (a shared machine). Median (and best) of {args.repeats} "
        f"fresh-interpreter runs per variant, the variants alternating"
        + ("; the last column: without sign_conflict at the previous sub-chunk default "
           "(131072 elements for 2 models, 65536 for 8)." if old else "."),
        "",
        "| case | without sign_conflict (s) | with sign_conflict (s) | extra wall time | best without / with (s) "
        "| CPU without / with (s) | extra CPU time |" + (" previous default, without (s) |" if old else ""),
        "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if old else ""),
    ]
    for r in rows:
        lines.append(f"| {r['case']} | {r['without']:.2f} | {r['with_']:.2f} | "
                     f"{(r['with_'] / r['without'] - 1) * 100:+.1f}% | {r['min0']:.2f} / {r['min1']:.2f} | "
                     f"{r['cpu0']:.2f} / {r['cpu1']:.2f} | {(r['cpu1'] / r['cpu0'] - 1) * 100:+.1f}% |"
                     + (f" {r['old']:.2f} |" if old else ""))
    if pair:
        lines += ["", "Values of child_1 and child_2 (with sign_conflict): "
                  + ", ".join(f"{m} {v:.6g}" for m, v in pair.items()) + "."]
    walls = [(r["with_"] / r["without"] - 1) * 100 for r in rows]
    cpus = [(r["cpu1"] / r["cpu0"] - 1) * 100 for r in rows]
    lines += ["", "Reading:", "",
              f"- extra CPU time with sign_conflict: {min(cpus):+.1f}% to {max(cpus):+.1f}%; extra wall "
              f"time (medians): {min(walls):+.1f}% to {max(walls):+.1f}%.",
              f"- issue 15's goal, at most 10% more wall time: "
              + ("met in every row." if max(walls) <= 10 and max(cpus) <= 10 else
                 "not met on this machine: the extra CPU time alone exceeds 10%." if max(cpus) > 10 else
                 "not met in every row."),
              "- sign counting is two more passes over each sub-chunk of float64 deltas (an in-place "
              "clamp to sign codes, one more GEMM), so a pass that is CPU-bound (a warm page cache, "
              "two cores shared with other jobs) pays about that much more; one that waits on the "
              "disk, or reduces on a GPU, hides it."]
    if args.old_default:
        lines.append("- against the previous release's sub-chunk default (without sign_conflict): "
                     + ", ".join(f"{r['case']} {r['old']:.2f} s" for r in rows) + ".")
    return "\n".join(lines)


def write_md(table: str) -> None:
    section = (f"{START}\n## Sign conflict in the kinship pass\n\nMade by "
               f"`python benchmarks/sign_conflict_bench.py --write-md` on {time.strftime('%Y-%m-%d')}.\n\n"
               f"{table}\n{END}")
    text = kb.MD.read_text() if kb.MD.exists() else "# Benchmarks\n"
    if START in text and END in text:
        text = text[: text.index(START)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    kb.MD.write_text(text)
    print(f"wrote {kb.MD}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
