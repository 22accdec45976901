"""How often ``lineage`` recovers the true parents, on real evolve runs over the zoo's families.

    python benchmarks/lineage_bench.py               # the four runs below (a few minutes on 2 cores)
    python benchmarks/lineage_bench.py --write-md    # also write the table into BENCHMARKS.md

Each run is a real ``evolve`` (mergekit merges, lm-eval scores on the family's local tasks, every
child kept) under benchmarks/_work/lineage/ (reused when finished):

- ``demo``: the demo's run (the built-in family and recipe: SLERP, k = 3);
- ``builtin/task_arithmetic`` and ``digits/ties``: the same recipe with the merge method of
  ``compare --methods`` (:mod:`mergekit_kinship.method_templates`);
- ``digits/slerp``: the digits family (whose ``shift`` is unrelated to its siblings).

Both families hold a grandchild fine-tune (``reverse_sort``, ``increment_double``). Ground
truth: each child's parents as the run recorded them (summary.json, from the journal) and each
foundation model's parent from the family's manifest (the base: no parents). A model counts as
recovered when its inferred parent set is exactly the true one; an ambiguous call counts as not
recovered. Every model of a run is given to one ``model_lineage`` call, with sketches of the
default size (these models, ~260k weights, are compared almost exactly) and of 16,384 entries
(16x smaller than the model, as a 2^18 sketch is for a 4M-weight one: the noise the calls face).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from bench_md import write_section

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "lineage"
MD = HERE.parent / "BENCHMARKS.md"
START, END = "<!-- lineage-bench:start -->", "<!-- lineage-bench:end -->"
RUNS = [("demo", "builtin", "slerp"), ("builtin/task_arithmetic", "builtin", "task_arithmetic"),
        ("digits/slerp", "digits", "slerp"), ("digits/ties", "digits", "ties")]
SMALL = 16384


def run_evolve(label: str, family_name: str, method: str) -> Path:
    """The run's directory, evolved now unless finished before."""
    from mergekit_kinship.evolution import evolve
    from mergekit_kinship.method_templates import TEMPLATES
    from mergekit_kinship.recipe import parse_recipe
    from mergekit_kinship.zoo import build_family, builtin_recipe
    from mergekit_kinship.zoo.train import single_threaded

    out = WORK / label.replace("/", "-")
    run_dir = out / "run"
    if (run_dir / "summary.json").exists() and (out / "done").exists():
        return run_dir
    family = build_family(family=family_name, progress=False)
    data = builtin_recipe(family)
    if method != data["merge"]["method"]:
        data["merge"] = {**TEMPLATES[method], "dtype": data["merge"].get("dtype", "float32")}
    recipe = parse_recipe(data, out, source=f"lineage bench {label}")
    with single_threaded():
        evolve(recipe, run_dir, keep="all", progress=False)
    (out / "done").write_text("")
    return run_dir


def truth_of(run_dir: Path) -> tuple[list[str], dict, dict, dict, str]:
    """(ids, path by id, true parent ids by id, name by id, base path)."""
    from mergekit_kinship.zoo.family import Family

    summary = json.loads((run_dir / "summary.json").read_text())
    models = summary["models"]
    ids = [i for i, m in models.items() if m["kind"] in ("foundation", "child")]
    path = {i: models[i]["path"] or str(run_dir / "models" / i) for i in ids}
    family = Family.load(Path(summary["base"]["path"]).parent)
    by_path = {str(p): name for name, p in family.models.items()}
    id_of_name = {models[i]["name"]: i for i in ids}
    truth = {}
    for i in ids:
        if models[i]["kind"] == "child":
            truth[i] = set(models[i]["parents"])
        else:
            parent = family.parent[by_path[models[i]["path"]]]
            truth[i] = set() if parent == "base" else {id_of_name[parent]}
    names = {i: models[i]["name"] for i in ids}
    return ids, path, truth, names, summary["base"]["path"]


def score(run_dir: Path, size=None) -> dict:
    from mergekit_kinship.model_lineage import model_lineage
    from mergekit_kinship.sketch import SketchParams

    ids, path, truth, names, base = truth_of(run_dir)
    started = time.perf_counter()
    params = SketchParams(size=size) if size else None
    result = model_lineage([path[i] for i in ids], base, params=params,
                           cache_dir=WORK / "cache")
    seconds = time.perf_counter() - started
    back = {p: i for i, p in path.items()}
    right, missed, kinds = 0, [], {}
    for i, entry in zip(ids, result.models):
        got = None if entry.parents is None else {back[p] for p in entry.parents}
        kinds[entry.kind] = kinds.get(entry.kind, 0) + 1
        if got == truth[i]:
            right += 1
            continue
        said = ("ambiguous" if entry.kind == "ambiguous" else
                "+".join(sorted(names[p] for p in got)) if got else entry.kind)
        missed.append(f"{names[i]} ({'+'.join(sorted(names[p] for p in truth[i])) or 'base'}; "
                      f"said {said})")
    return {"models": len(ids), "children": sum(1 for i in ids if truth[i] and len(truth[i]) > 1),
            "right": right, "kinds": kinds, "missed": missed, "seconds": seconds,
            "exact": result.exact}


def table(rows: list[tuple[str, dict, dict]]) -> str:
    lines = ["| run | models (merges) | recovered, default sketch | ambiguous | wrong | "
             f"recovered, {SMALL:,}-entry sketch | not recovered (default sketch) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for label, full, small in rows:
        wrong = len(full["missed"]) - full["kinds"].get("ambiguous", 0)
        lines.append(
            f"| {label} | {full['models']} ({full['children']}) | {full['right']}/{full['models']} "
            f"({100 * full['right'] / full['models']:.0f}%) | {full['kinds'].get('ambiguous', 0)} | "
            f"{wrong} | {small['right']}/{small['models']} ({100 * small['right'] / small['models']:.0f}%) | "
            f"{'; '.join(full['missed']) or '–'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write-md", action="store_true", help="write the table into BENCHMARKS.md")
    args = ap.parse_args(argv)
    rows = []
    for label, family, method in RUNS:
        t0 = time.time()
        run_dir = run_evolve(label, family, method)
        print(f"{label}: run in {time.time() - t0:.0f} s", file=sys.stderr)
        rows.append((label, score(run_dir), score(run_dir, SMALL)))
        print(json.dumps({"run": label, "default": rows[-1][1], "small": rows[-1][2]}), file=sys.stderr)
    text = table(rows)
    print(text)
    if args.write_md:
        write_md(text)
    return 0


def write_md(text: str) -> None:
    section = (f"{START}\n## Lineage read back from the weights\n\nMade by `python "
               f"benchmarks/lineage_bench.py --write-md` on {time.strftime('%Y-%m-%d')}: "
               "`model_lineage` on every model of real `evolve` runs (every child kept), against "
               "the parents each run recorded and the family's manifest (see the script's "
               "docstring). Merges: children of the run. Recovered: the inferred parent set is "
               "exactly the true one (a fine-tune of the base: empty). Ambiguous calls name "
               "their alternatives and are counted as not recovered.\n\n"
               f"{text}\n\n"
               "Reading: with the default sketch these models are compared exactly, so every "
               "miss on the SLERP and task-arithmetic runs is an honest `ambiguous`, never a "
               "wrong parent set: in a family of linear merges of equal weights some merges are "
               "the same model (½·(½(A + B) + ½(A + C)) = ½·(A + ½(B + C)): a merge of two "
               "sibling merges is also a merge of their shared parent and a third merge), and "
               "SLERP's per-layer `t` makes a few such coincidences too. A TIES merge "
               "trims and sign-elects each parent's delta, so no pair of listed models fits it "
               "closely, sibling merges fit it as well as its parents, and a merge with a "
               "sibling's fine-tune carries most of that sibling's delta (the signature of a "
               "fine-tune): on the TIES run nearly every call is an honest `ambiguous` with its "
               "alternatives, and one is wrong (a merge read as a fine-tune of a merge it shares "
               "a parent with). A sketch 16x smaller than the model "
               "blurs the per-tensor fits the template rule compares: fewer merges recovered, "
               f"and some wrong calls.\n{END}")
    write_section(section, START, END, MD)


if __name__ == "__main__":
    sys.exit(main())
