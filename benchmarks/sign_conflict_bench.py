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
reduced at once) in every run, to compare with an older default.
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
    setup = "import mergekit_kinship.kinship_accumulators as acc\n"
    if subchunk:
        setup += f"acc.CPU_SUBCHUNK = {subchunk}\n"
    if kind == "pair":
        setup += "from mergekit_kinship.streaming_kinship import kinship"
        body = f"out = kinship(PATHS[1], PATHS[2], PATHS[0], metrics={metrics!r}, progress=False).values"
    else:
        setup += "from mergekit_kinship.streaming_kinship import kinship_matrix"
        body = (f"r = kinship_matrix(PATHS[1:], PATHS[0], metrics={metrics!r}, progress=False)\n"
                "out = {m: r.values[m][0][1] for m in r.metrics}")
    return dict(setup=setup, body=body)


def compare(kind: str, paths, cold: bool, repeats: int, subchunk: int | None) -> dict:
    """Alternate the two variants ``repeats`` times; their walls, and the last values."""
    walls: dict[str, list[float]] = {WITHOUT: [], WITH: []}
    out = {}
    for _ in range(repeats):
        for metrics in (WITHOUT, WITH):
            if not cold:
                kb.read_all(paths)
            result = kb.measure(case(kind, metrics, subchunk), paths, cold=cold)
            walls[metrics].append(result["wall"])
            out[metrics] = result["out"]
    return {"walls": walls, "out": out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 30M-parameter family instead of 0.5B")
    ap.add_argument("--children", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--subchunk", type=int, default=None, help="CPU sub-chunk (elements per model)")
    ap.add_argument("--skip-matrix", action="store_true")
    ap.add_argument("--write-md", action="store_true", help="write the table into BENCHMARKS.md")
    args = ap.parse_args(argv)

    cfg = kb.QUICK if args.quick else kb.FULL
    root = kb.WORK / ("kinship_quick" if args.quick else "kinship")
    paths = kb.write_family(cfg, args.children, root)
    rows = []
    cases = [("pair", paths[:3], "kinship of 2 children")]
    if not args.skip_matrix:
        cases.append(("matrix", paths, f"{args.children}-model matrix"))
    values = {}
    for kind, use, label in cases:
        for cold in (False, True):
            result = compare(kind, use, cold, args.repeats, args.subchunk)
            w0, w1 = (statistics.median(result["walls"][m]) for m in (WITHOUT, WITH))
            rows.append(dict(case=f"{label} ({'cold' if cold else 'warm cache'})", without=w0, with_=w1,
                             min0=min(result["walls"][WITHOUT]), min1=min(result["walls"][WITH]),
                             gbs=kb.model_bytes(use) / w1 / 1e9))
            print(f"  {rows[-1]['case']:<36} without {w0:6.2f} s  with {w1:6.2f} s  "
                  f"{(w1 / w0 - 1) * 100:+5.1f}%", file=sys.stderr, flush=True)
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
    lines = [
        f"Family of `kinship_bench.py`: {kb.n_params(cfg) / 1e9:.2f}B parameters per model, bf16, base + "
        f"{args.children} children. {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}, CPU sub-chunk {sub} elements for 2 models; 1-minute load average "
        f"{os.getloadavg()[0]:.1f} at the end (a shared machine). Median (and best) of {args.repeats} "
        "fresh-interpreter runs per variant, the two variants alternating.",
        "",
        f"| case | without sign_conflict (s) | with sign_conflict (s) | extra wall time | best without / with (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['case']} | {r['without']:.2f} | {r['with_']:.2f} | "
                     f"{(r['with_'] / r['without'] - 1) * 100:+.1f}% | {r['min0']:.2f} / {r['min1']:.2f} |")
    if pair:
        lines += ["", "Values of child_1 and child_2 (with sign_conflict): "
                  + ", ".join(f"{m} {v:.6g}" for m, v in pair.items()) + "."]
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
