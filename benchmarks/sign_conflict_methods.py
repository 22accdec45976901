"""Does sign conflict tell SLERP from TIES on the built-in family? A small measured experiment.

    python benchmarks/sign_conflict_methods.py [--out benchmarks/_work/methods]

For every pair of the built-in family's foundation models it measures PCC and sign conflict (one
streaming pass), merges the pair twice through mergekit, with the built-in recipe's SLERP
(``base_model`` = the fitter parent, the paper's t gradients) and with TIES (the shared ancestor as
``base_model``, density 0.5, weight 1 each, mergekit's defaults otherwise), scores the parents and
both merges with the recipe's lm-eval tasks, and prints one row per pair: PCC, sign conflict, each
merge's gain over the parents' mean fitness, and TIES minus SLERP; then Pearson r (and p) of
sign conflict and PCC against that difference. Everything is local and CPU-only: 20 merges and
25 evaluations, a few minutes on 2 idle cores (11 on a busy machine).
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(HERE / "_work" / "methods"), help="scratch folder (emptied)")
    args = ap.parse_args(argv)

    from mergekit_kinship.evaluation.runner import evaluate
    from mergekit_kinship.evaluation.scores import fitness
    from mergekit_kinship.merging import merge_yaml
    from mergekit_kinship.recipe import load_recipe
    from mergekit_kinship.statistics import pearson
    from mergekit_kinship.streaming_kinship import kinship_matrix
    from mergekit_kinship.zoo import build_family

    family = build_family(progress=False)
    recipe = load_recipe(family.root / "recipe.yaml")
    settings = recipe.evaluation
    names = [m.display_name for m in recipe.models]
    paths = {m.display_name: m.path for m in recipe.models}
    base = recipe.base.path
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    def score(path) -> float:
        return fitness(evaluate(path, settings).scores, settings)

    matrix = kinship_matrix([paths[n] for n in names], base, metrics="pcc,sign_conflict", progress=False)
    fit = {n: score(paths[n]) for n in names}
    t = [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
         {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]}, {"value": 0.5}]
    rows = []
    for i, j in itertools.combinations(range(len(names)), 2):
        a, b = sorted((names[i], names[j]), key=lambda n: -fit[n])  # parent A: the fitter
        slerp = (f"slices:\n  - sources:\n      - {{model: {paths[a]}, layer_range: [0, 3]}}\n"
                 f"      - {{model: {paths[b]}, layer_range: [0, 3]}}\n"
                 f"merge_method: slerp\nbase_model: {paths[a]}\nparameters: {{t: {t}}}\ndtype: float32\n")
        ties = (f"models:\n  - {{model: {paths[a]}, parameters: {{density: 0.5, weight: 1.0}}}}\n"
                f"  - {{model: {paths[b]}, parameters: {{density: 0.5, weight: 1.0}}}}\n"
                f"merge_method: ties\nbase_model: {base}\ndtype: float32\n")
        mean = (fit[a] + fit[b]) / 2
        gains = {}
        for method, text in (("slerp", slerp), ("ties", ties)):
            merged = merge_yaml(text, out / f"{a}-{b}-{method}", cuda=False, tokenizer_from=str(paths[a]))
            gains[method] = score(merged) - mean
        rows.append((a, b, matrix.values["pcc"][i][j], matrix.values["sign_conflict"][i][j],
                     gains["slerp"], gains["ties"]))
        print(f"  {a} x {b}: done", file=sys.stderr, flush=True)

    print("| pair | PCC | sign conflict | SLERP gain | TIES gain | TIES − SLERP |")
    print("|---|---:|---:|---:|---:|---:|")
    for a, b, pcc, sc, gs, gt in sorted(rows, key=lambda r: r[3]):
        print(f"| {a} × {b} | {pcc:.4f} | {sc:.4f} | {gs:+.4f} | {gt:+.4f} | {gt - gs:+.4f} |")
    diff = [r[5] - r[4] for r in rows]
    for label, k in (("sign conflict", 3), ("PCC", 2)):
        result = pearson([r[k] for r in rows], diff)
        text = f"r = {result[0]:+.3f}, p = {result[1]:.3g}" if result else "undefined"
        print(f"\n{label} vs TIES − SLERP over {len(rows)} pairs: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
