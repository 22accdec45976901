"""Delta sketches against the exact engine: their error against the printed bound, and their cost at scale.

    python benchmarks/sketch_bench.py                # both parts (about 10 minutes on 2 cores)
    python benchmarks/sketch_bench.py --models 40    # a smaller scale part, to try the script
    python benchmarks/sketch_bench.py --write-md     # also write the tables into BENCHMARKS.md

**Error.** Every pair of several families, sketched at several sizes, against the exact engine
(``kinship_matrix``), for all four metrics: the largest |sketched − exact| / printed bound (≤ 1
means every value was within its bound) and the median bound of PCC. Families:

- ``synthetic``: a 5.2M-weight Llama-shaped base and 9 fine-tunes, δ_i = s_i·(c_i·u + √(1−c_i²)·v_i)
  with one shared direction u and own directions v_i: PCC(i, j) = c_i·c_j spans −0.35 to 0.99;
  norms s_i from 0.5 to 2;
- ``zoo``: the built-in and digits families (trained; ``digits/shift`` is slightly anti-related
  to its siblings) and the 19 SLERP children of the demo's run (``lineage_bench.py``'s, when
  there), ~260k weights each, so only sketches much smaller than the default are tried.

**Scale.** ``--models`` (default 120) fine-tunes of a base, written by this script under
benchmarks/_work/ (not committed): ``small``, 1.05M weights in fp32 (4 sketches' worth), and
``large``, 16.8M weights in bf16 (64 sketches' worth; 4 GB for the family). Each measurement is a fresh interpreter
(``kinship_bench.measure``: wall time, peak RSS above the interpreter after its imports), every
file evicted from the page cache first: the exact N×N matrix; the same from sketches with an
empty sketch cache (reads every model once, stores its sketch) and again with the sketches
cached (reads no weights); then one more model added, exactly (reads all N + 1) and to the
sketched family (reads the new one).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import kinship_bench as kb  # noqa: E402  (shapes, eviction, the measuring subprocess)
from bench_md import write_section

WORK = HERE / "_work" / "sketch"
MD = HERE.parent / "BENCHMARKS.md"
START, END = "<!-- sketch-bench:start -->", "<!-- sketch-bench:end -->"
METRICS = ["pcc", "cosine", "euclidean", "sign_conflict"]
ERROR_CFG = dict(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=4)
SCALE_CFGS = {  # name -> (Llama shape, storage dtype)
    "small": (dict(vocab_size=1024, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2), "float32"),
    "large": (dict(vocab_size=4096, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                   num_attention_heads=8, num_key_value_heads=4), "bfloat16"),
}
SHARED = [-0.35, 0.1, 0.3, 0.5, 0.7, 0.85, 0.95, 0.995, 0.998]


def write_models(root: Path, cfg: dict, specs: list[tuple[float, float]], tag: str,
                 dtype: str = "float32") -> list[Path]:
    """base + one fine-tune per (c, s) in ``specs``, single files of ``dtype``; reused when present."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    spec = json.dumps({"cfg": cfg, "specs": specs, "tag": tag, "dtype": dtype, "v": 1}, sort_keys=True)
    paths = [root / "base"] + [root / f"m{k:03d}" for k in range(len(specs))]
    if (root / "spec.json").exists() and (root / "spec.json").read_text() == spec:
        return paths
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    shapes = kb.llama_shapes(cfg)
    config = LlamaConfig(**cfg, max_position_embeddings=256, tie_word_embeddings=False)
    largest = max(math.prod(s) for s in shapes.values())
    pool = torch.randn(largest + 2**21, generator=torch.Generator().manual_seed(0))

    def normal(shape, *key):
        n = math.prod(shape)
        start = zlib.crc32(repr(key).encode()) % (pool.numel() - n + 1)
        return pool[start:start + n].view(shape)

    store = getattr(torch, dtype)
    base = {n: normal(s, n, "base") * 0.02 for n, s in shapes.items()}
    for k, path in enumerate(paths):
        path.mkdir()
        config.save_pretrained(path)
        if k == 0:
            save_file({n: t.to(store).contiguous() for n, t in base.items()}, str(path / "model.safetensors"))
            continue
        c, s = specs[k - 1]
        own = math.sqrt(max(0.0, 1 - c * c))
        save_file({n: (base[n] + 2e-3 * s * (c * normal(shape, n, "shared")
                                            + own * normal(shape, n, "own", k))).to(store).contiguous()
                   for n, shape in shapes.items()}, str(path / "model.safetensors"))
    (root / "spec.json").write_text(spec)
    return paths


def errors(models, base, sizes, cache) -> list[dict]:
    """Per sketch size: max |err|/bound per metric over every ordered pair, median PCC bound."""
    from mergekit_kinship.sketch import SketchParams
    from mergekit_kinship.sketched_kinship import sketch_matrix
    from mergekit_kinship.streaming_kinship import kinship_matrix

    exact = kinship_matrix(models, base, metrics=METRICS, progress=False)
    n = len(models)
    pcc = [exact.values["pcc"][i][j] for i in range(n) for j in range(n) if i < j]
    rows = []
    for size in sizes:
        sk = sketch_matrix(models, base, metrics=METRICS, progress=False,
                           params=SketchParams(size=size), cache_dir=cache)
        row = {"size": size, "pairs": len(pcc), "pcc_range": (min(pcc), max(pcc)),
               "model": sk.n_params}
        for m in METRICS:
            ratios, errs = [], []
            for i in range(n):
                for j in range(n):
                    if i == j:
                        continue
                    err = abs(sk.values[m][i][j] - exact.values[m][i][j])
                    bound = sk.bounds[m][i][j]
                    errs.append(err)
                    ratios.append(err / bound if bound > 0 else (0.0 if err < 1e-9 else math.inf))
            row[m] = max(ratios)
            row[m + "_err"] = max(errs)
        row["pcc_bound"] = statistics.median(sk.bounds["pcc"][i][j] for i in range(n)
                                             for j in range(n) if i != j)
        rows.append(row)
    return rows


def error_part() -> str:
    from mergekit_kinship.zoo import build_family

    cache = WORK / "cache-error"
    shutil.rmtree(cache, ignore_errors=True)
    rng = [(c, 0.5 + 1.5 * k / (len(SHARED) - 1)) for k, c in enumerate(SHARED)]
    synth = write_models(WORK / "error", ERROR_CFG, rng, "error")
    sets = [(f"synthetic ({len(SHARED)} models)", [str(p) for p in synth[1:]], str(synth[0]),
             [2**12, 2**14, 2**16, 2**18])]
    for name in ("builtin", "digits"):
        fam = build_family(family=name, progress=False)
        members = [str(p) for p in fam.models.values()]
        if name == "builtin":
            demo = HERE / "_work" / "lineage" / "demo" / "run" / "models"
            members += sorted(str(p) for p in demo.glob("c-*")) if demo.exists() else []
        sets.append((f"zoo: {name}" + (" + demo run's children" if len(members) > 6 else "")
                     + f" ({len(members)} models)", members, str(fam.base), [2**12, 2**14]))
    lines = ["| models | weights | sketch entries | pairs | exact PCC | max \\|err\\|/bound: pcc | "
             "cosine | euclidean | sign conflict | median PCC bound | max PCC \\|err\\| |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    worst = 0.0
    for label, models, base, sizes in sets:
        for row in errors(models, base, sizes, cache):
            worst = max([worst] + [row[m] for m in METRICS])
            lo, hi = row["pcc_range"]
            lines.append(f"| {label} | {row['model']:,} | {row['size']:,} | {row['pairs']} | "
                         f"{lo:.2f} to {hi:.3f} | " + " | ".join(f"{row[m]:.2f}" for m in METRICS)
                         + f" | {row['pcc_bound']:.4f} | {row['pcc_err']:.4f} |")
            print(lines[-1], file=sys.stderr)
    verdict = ("every sketched value was within its printed bound" if worst <= 1 else
               "SOME SKETCHED VALUES FELL OUTSIDE THEIR BOUND")
    return "\n".join(lines) + f"\n\nLargest \\|error\\|/bound over every pair, size and metric: " \
                              f"**{worst:.2f}** ({verdict})."


SCALE_SETUP = ("import shutil\nfrom pathlib import Path\n"
               "from mergekit_kinship.streaming_kinship import kinship_matrix\n"
               "from mergekit_kinship.sketched_kinship import sketch_matrix")


def scale_part(n_models: int, which: str) -> str:
    cfg, dtype = SCALE_CFGS[which]
    rng = [(0.2 + 0.75 * (k % 10) / 9, 0.5 + (k % 7) / 4) for k in range(n_models + 1)]
    paths = write_models(WORK / f"scale-{which}", cfg, rng, "scale", dtype)
    base, members = paths[0], paths[1:]
    family, extra = members[:n_models], members[n_models]
    cache = WORK / f"cache-scale-{which}"
    shutil.rmtree(cache, ignore_errors=True)
    weights = kb.model_bytes([members[0]])
    cases = [
        ("exact matrix", "exact", family, False),
        ("sketched matrix, nothing cached (sketches made and stored)", "sketch", family, False),
        ("sketched matrix, sketches cached", "sketch", family, False),
        ("add one model: exact matrix of N + 1", "exact", family + [extra], False),
        ("add one model: sketched matrix of N + 1 (N cached)", "sketch", family + [extra], False),
    ]
    rows = []
    for label, kind, models, _ in cases:
        if kind == "exact":
            body = ("r = kinship_matrix(PATHS[1:], PATHS[0], progress=False)\n"
                    "out = {'pcc01': r.values['pcc'][0][1], 'read': len(PATHS) - 1}")
        else:
            body = (f"r = sketch_matrix(PATHS[1:], PATHS[0], progress=False, cache_dir={str(cache)!r})\n"
                    "out = {'pcc01': r.values['pcc'][0][1], 'bound01': r.bounds['pcc'][0][1], "
                    "'read': len(r.read), 'bytes': r.bytes_read}")
        result = kb.measure(dict(setup=SCALE_SETUP, body=body), [base, *models], cold=True)
        rows.append((label, len(models), result))
        print(label, json.dumps(result), file=sys.stderr)
    lines = [f"**{which}**: {n_models} fine-tunes of a {kb.n_params(cfg) / 1e6:.2f}M-weight base "
             f"({weights / 1e6:.1f} MB each, {dtype}), default sketch (262,144 entries + 65,536 "
             "sign samples), files evicted before each measurement:", "",
             "| measurement | models | models read | wall (s) | peak RSS above interpreter (MB) | pcc(m0, m1) |",
             "|---|---:|---:|---:|---:|---|"]
    for label, n, r in rows:
        out = r["out"]
        value = f"{out['pcc01']:.4f}" + (f" ± {out['bound01']:.4f}" if "bound01" in out else "")
        lines.append(f"| {label} | {n} | {out['read']} | {r['wall']:.1f} | "
                     f"{r['peak_above'] / 1e6:.0f} | {value} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=120, help="fine-tunes in the scale part")
    ap.add_argument("--skip-error", action="store_true")
    ap.add_argument("--scale", nargs="*", default=list(SCALE_CFGS), choices=list(SCALE_CFGS),
                    help="which model sizes the scale part uses")
    ap.add_argument("--write-md", action="store_true", help="write the tables into BENCHMARKS.md")
    args = ap.parse_args(argv)
    parts = []
    if not args.skip_error:
        parts.append("### Sketched against exact\n\n" + error_part())
    parts.append("### Scale\n\n" + "\n\n".join(scale_part(args.models, w) for w in args.scale))
    text = "\n\n".join(parts)
    print(text)
    if args.write_md:
        write_md(text)
    return 0


def write_md(text: str) -> None:
    section = (f"{START}\n## Delta sketches\n\nMade by `python benchmarks/sketch_bench.py "
               f"--write-md` on {time.strftime('%Y-%m-%d')} (2 shared CPU cores). Each sketched "
               "value is printed with a bound of 4 standard deviations of its estimate "
               "(Hoeffding's at the same failure probability for sign conflict): "
               "\\|error\\|/bound ≤ 1 means the value was inside it.\n\n"
               f"{text}\n{END}")
    write_section(section, START, END, MD)


if __name__ == "__main__":
    sys.exit(main())
