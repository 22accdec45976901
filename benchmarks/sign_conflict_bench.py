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
reduced at once) in every run; ``--old-default`` adds a variant to the alternation: without
sign_conflict at the sub-chunk default before sign_conflict (2**18 / N, at least 65536 elements).
``--candidates`` adds a table of other exact ways to count, timed in-process on a synthetic block.
``--floor`` adds another variant: the pass with sign_conflict whose counting is replaced by a single
comparison of every float64 delta with zero (numpy, into a bool scratch) and nothing counted, a
lower bound for any exact method that reads the deltas once more (its values are not valid).
``--skip-cold`` times only the warm page cache, the CPU-bound case where counting shows most.
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
from bench_md import write_section  # noqa: E402

START, END = "<!-- sign-bench:start -->", "<!-- sign-bench:end -->"
WITHOUT = "pcc,cosine,euclidean"
WITH = WITHOUT + ",sign_conflict"


# The floor variant: the reducer's sign counting (private names, so this breaks loudly if they
# change) replaced by one comparison of the float64 deltas with zero, counting nothing.
FLOOR_SETUP = """
import threading
import numpy as np
import torch
_local = threading.local()
def _one_comparison(d, out, packed):
    dn = d.numpy()
    buf = getattr(_local, "buf", None)
    if buf is None or buf.shape[0] < dn.shape[0] or buf.shape[1] < dn.shape[1]:
        buf = _local.buf = np.empty(dn.shape, np.bool_)
    np.greater(dn, 0, out=buf[: dn.shape[0], : dn.shape[1]])
acc._BlockReducer._count_signs = staticmethod(_one_comparison)
acc._sign_counts = lambda codes, packed: (torch.zeros(codes[0].shape[1:], dtype=torch.int64),) * 2
"""


def case(kind: str, metrics: str, subchunk: int | None, floor: bool = False) -> dict:
    """A measurement for ``kb.measure``; its ``out`` holds the values and the process's CPU
    seconds (every thread), a steadier figure than wall time on a shared machine."""
    setup = "import time\nimport mergekit_kinship.kinship_accumulators as acc\n"
    if subchunk:
        setup += f"acc.CPU_SUBCHUNK = {subchunk}\n"
    if floor:
        setup += FLOOR_SETUP
    if kind == "pair":
        setup += "from mergekit_kinship.streaming_kinship import kinship"
        call = f"out = kinship(PATHS[1], PATHS[2], PATHS[0], metrics={metrics!r}, progress=False).values\n"
    else:
        setup += "from mergekit_kinship.streaming_kinship import kinship_matrix"
        call = (f"r = kinship_matrix(PATHS[1:], PATHS[0], metrics={metrics!r}, progress=False)\n"
                "out = {m: r.values[m][0][1] for m in r.metrics}\n")
    if floor:  # no counts: sign conflict is undefined, which the pass reports at its very end
        call = "try:\n" + "".join(f"    {line}\n" for line in call.splitlines()) + "except Exception:\n    out = {}\n"
    body = "cpu0 = time.process_time()\n" + call
    return dict(setup=setup, body=body + "out['cpu_seconds'] = time.process_time() - cpu0")


OLD = "old"  # the variant without sign_conflict at the sub-chunk default before it
FLOOR = "floor"  # with sign_conflict, counting replaced by one comparison pass (see FLOOR_SETUP)


def compare(kind: str, paths, cold: bool, repeats: int, subchunk: int | None, old: int | None,
            floor: bool = False) -> dict:
    """Alternate the variants ``repeats`` times; their walls, and the last values."""
    variants = {WITHOUT: (WITHOUT, subchunk, False), WITH: (WITH, subchunk, False)}
    if floor:
        variants[FLOOR] = (WITH, subchunk, True)
    if old:
        variants[OLD] = (WITHOUT, old, False)
    walls: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    out = {}
    for _ in range(repeats):
        for variant, (metrics, sub, fl) in variants.items():
            if not cold:
                kb.read_all(paths)
            result = kb.measure(case(kind, metrics, sub, fl), paths, cold=cold)
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
    ap.add_argument("--floor", action="store_true",
                    help="also time the pass whose sign counting is one comparison pass (a lower bound)")
    ap.add_argument("--candidates", action="store_true",
                    help="also time other exact ways to count signs, in this process (a table of its own)")
    ap.add_argument("--skip-matrix", action="store_true")
    ap.add_argument("--skip-cold", action="store_true", help="only the warm page cache (CPU-bound: the hard case)")
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
        for cold in (False,) if args.skip_cold else (False, True):
            result = compare(kind, use, cold, args.repeats, args.subchunk, old, args.floor)
            walls = result["walls"]
            w0, w1 = (statistics.median(walls[m]) for m in (WITHOUT, WITH))
            c0, c1 = (statistics.median(result["cpu"][m]) for m in (WITHOUT, WITH))
            rows.append(dict(case=f"{label} ({'cold' if cold else 'warm cache'})", without=w0, with_=w1,
                             min0=min(walls[WITHOUT]), min1=min(walls[WITH]), cpu0=c0, cpu1=c1,
                             old=statistics.median(walls[OLD]) if old else None, old_sub=old,
                             floor=statistics.median(walls[FLOOR]) if args.floor else None,
                             cpuf=statistics.median(result["cpu"][FLOOR]) if args.floor else None))
            print(f"  {rows[-1]['case']:<36} without {w0:6.2f} s  with {w1:6.2f} s  "
                  f"{(w1 / w0 - 1) * 100:+5.1f}%  CPU {(c1 / c0 - 1) * 100:+5.1f}%"
                  + (f"  floor CPU {(rows[-1]['cpuf'] / c0 - 1) * 100:+5.1f}%" if args.floor else "")
                  + (f"  old default {rows[-1]['old']:6.2f} s" if old else ""),
                  file=sys.stderr, flush=True)
            values[kind] = result["out"][WITH]
    cand = candidates(args.repeats) if args.candidates else None
    table = format_table(rows, cfg, args, values, cand[1] if cand else None)
    if cand:
        table += "\n\n" + cand[0]
    print(table)
    if args.write_md:
        write_md(table)
    return 0


def format_table(rows, cfg, args, values, extras=None) -> str:
    import platform

    import torch

    from mergekit_kinship.kinship_accumulators import default_subchunk

    sub = args.subchunk or default_subchunk(2, torch.device("cpu"))
    pair = values.get("pair", {})
    old, floor = args.old_default, args.floor
    lines = [
        f"Family of `kinship_bench.py`: {kb.n_params(cfg) / 1e9:.2f}B parameters per model, bf16, base + "
        f"{args.children} children. {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}, CPU sub-chunk {sub} elements for 2 models; 1-minute load average "
        f"{os.getloadavg()[0]:.1f} at the end (a shared machine). Median (and best) of {args.repeats} "
        f"fresh-interpreter runs per variant, the variants alternating; CPU: user + system time of the "
        f"whole process during the pass (every thread)."
        + (" Floor: the pass with sign_conflict whose sign counting is replaced by one comparison of "
           "every float64 delta with zero, nothing counted (`--floor`; a lower bound for any exact "
           "method that reads the deltas once more)." if floor else "")
        + (" Previous default: without sign_conflict at the sub-chunk default before it "
           "(131072 elements for 2 models, 65536 for 8)." if old else ""),
        "",
        "| case | without sign_conflict (s) | with sign_conflict (s) | extra wall time | best without / with (s) "
        "| CPU without / with (s) | extra CPU time |" + (" floor: CPU (s), extra |" if floor else "")
        + (" previous default, without (s) |" if old else ""),
        "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if floor else "") + ("---:|" if old else ""),
    ]
    for r in rows:
        lines.append(f"| {r['case']} | {r['without']:.2f} | {r['with_']:.2f} | "
                     f"{(r['with_'] / r['without'] - 1) * 100:+.1f}% | {r['min0']:.2f} / {r['min1']:.2f} | "
                     f"{r['cpu0']:.2f} / {r['cpu1']:.2f} | {(r['cpu1'] / r['cpu0'] - 1) * 100:+.1f}% |"
                     + (f" {r['cpuf']:.2f}, {(r['cpuf'] / r['cpu0'] - 1) * 100:+.1f}% |" if floor else "")
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
              "- where the time goes: the pass counts signs with two more passes over each sub-chunk of "
              "float64 deltas, already in L2 after the moments (an in-place clamp to packed sign codes, one "
              "more GEMM, exact integers); a pass that is CPU-bound (a warm page cache, two cores shared "
              "with other jobs) pays that in full"
              + (" (this table times only that case, `--skip-cold`)." if args.skip_cold else
                 "; one that waits on the disk hides part of it.")]
    if floor:
        floors = [(r["cpuf"] / r["cpu0"] - 1) * 100 for r in rows]
        lines.append(f"- the floor, one comparison of every delta with zero and nothing counted, costs "
                     f"{min(floors):+.1f}% to {max(floors):+.1f}% CPU in the same runs: what one more read of the "
                     "deltas costs on this CPU, the least any method that derives the signs from them can add; "
                     "the exact counting costs "
                     + ", ".join(f"{(r['cpu1'] - r['cpuf']) / r['cpu0'] * 100:.1f} points more ({r['case']})" for r in rows)
                     + ". "
                     "An exact count needs more: three states per delta (negative, zero, positive), hence two "
                     "comparisons or one read-and-write pass (the clamp), and then the counting per pair of "
                     "models, which for 8 models is an 8×8 GEMM as costly as the moments' own, or 36 "
                     "popcounts per 64 elements.")
    if extras:
        def best(n):
            exact = {k: v for k, v in extras[n].items() if k != PASS_METHOD and k in EXACT_METHODS}
            name = min(exact, key=exact.get)
            return (f"{n} models: the pass's {extras[n][PASS_METHOD]:.0f} µs per sub-chunk, the best other "
                    f"exact way {exact[name]:.0f} µs ({name}), the floor {extras[n][FLOOR_METHOD]:.0f} µs")
        lines.append("- the table below times, inside the reducer's loop, the other exact ways to count that "
                     "numpy and torch offer, each checked against dense counting: sign bits by two numpy "
                     "comparisons and popcounts (per block, or every 2**18 elements so that the bits stay in "
                     "L2, which was tried as the pass's counting and reverted), float32 codes and GEMMs, and "
                     "codes straight from the raw bf16 weights (torch's bf16 comparisons, or the 16-bit "
                     "patterns as order keys: these skip no pass, each needs several kernels over every "
                     "source). " + "; ".join(best(n) for n in sorted(extras)) + ".")
    lines.append("- what would: a compiled kernel that writes the sign bits while it widens and subtracts "
                 "(one pass, the floor or less), which the package does not have (Python over torch and "
                 "numpy, no build step); or reducing on a GPU (`--device cuda`: signs and two GEMMs per "
                 "sub-chunk of 8 Mi elements), which this benchmark does not time.")
    if args.old_default:
        lines.append("- against the previous release's sub-chunk default (without sign_conflict): "
                     + ", ".join(f"{r['case']} {r['old']:.2f} s" for r in rows) + ".")
    return "\n".join(lines)


PASS_METHOD = "clamp + float64 GEMM (the pass)"
FLOOR_METHOD = "one numpy comparison, nothing counted (floor)"
EXACT_METHODS = (PASS_METHOD, "two numpy comparisons, packbits, popcounts", "the same, popcounts every 2**18 elements",
                 "float32 codes, two float32 GEMMs")


def candidates(repeats: int) -> tuple[str, dict]:
    """Other exact ways to count signs, timed in this process on one synthetic bf16 block (4 Mi
    elements per model, the reducer's sub-chunks and torch threads): each runs the reducer's own
    per-sub-chunk moments (widen, subtract, sum, Gram) plus its sign work, and its extra time over
    the moments alone is reported. Every counting candidate is checked against numpy's dense count."""
    import numpy as np
    import torch

    from mergekit_kinship.kinship_accumulators import _CODE_NEG, _CODE_POS, _sign_counts, default_subchunk

    torch.set_num_threads(1)
    rows, summary = [], {}
    for n in (2, 8):
        g = torch.Generator().manual_seed(n)
        count, sub = 4 * 1024 * 1024, default_subchunk(n, torch.device("cpu"))
        base = (0.02 * torch.randn(count, generator=g)).bfloat16()
        models = [(base.float() + 2e-3 * torch.randn(count, generator=g)).bfloat16() for _ in range(n)]
        deltas = np.stack([m.double().numpy() - base.double().numpy() for m in models])
        want = (np.einsum("ik,jk->ij", (deltas != 0) * 1.0, (deltas != 0) * 1.0),
                np.einsum("ik,jk->ij", (deltas < 0) * 1.0, (deltas > 0) * 1.0))
        want = (want[0], want[1] + want[1].T)
        D, b = torch.empty(n, sub, dtype=torch.float64), torch.empty(sub, dtype=torch.float64)
        Dn, flags, G = D.numpy(), np.empty((2 * n, sub), np.bool_), torch.empty(n, n, dtype=torch.float64)
        F, keys = torch.empty(2 * n, sub), np.empty((n + 1, sub), np.int16)
        starts = range(0, count, sub)

        def clamp_gemm(k, L, acc):  # what the pass does: packed codes, one float64 GEMM
            torch.mm(D[:, :L].clamp_(-_CODE_NEG, _CODE_POS), D[:, :L].T, out=acc[k])

        packs = np.zeros((2 * n, count // 8), np.uint8)
        words, tmp = packs.view(np.uint64), np.empty((2, n, count // 64), np.uint64)
        ones = np.empty((n, count // 64), np.uint8)

        def two_comparisons(k, L, acc):  # sign and non-zero bits, popcounts once per block
            np.less(Dn[:, :L], 0, out=flags[:n, :L])
            np.not_equal(Dn[:, :L], 0, out=flags[n:, :L])
            packs[:, k * sub // 8 : (k * sub + L) // 8] = np.packbits(flags[:, :L], axis=1)
            if k == len(starts) - 1:  # B_ij = #(Z_i & Z_j), X_ij = #(Z_i & Z_j & (S_i ^ S_j))
                S, Z = words[:n], words[n:]
                acc["B"], acc["X"] = np.zeros((n, n), np.int64), np.zeros((n, n), np.int64)
                for i in range(n):
                    zz, sx, u = tmp[0, : n - i], tmp[1, : n - i], ones[: n - i]
                    np.bitwise_and(Z[i], Z[i:], out=zz)
                    np.bitwise_and(np.bitwise_xor(S[i], S[i:], out=sx), zz, out=sx)
                    acc["B"][i, i:] = np.add.reduce(np.bitwise_count(zz, out=u), axis=1, dtype=np.uint32)
                    acc["X"][i, i:] = np.add.reduce(np.bitwise_count(sx, out=u), axis=1, dtype=np.uint32)

        def windowed_bits(k, L, acc):  # the same, counted every 2**18 elements (in L2): a reducer tried
            if k == 0:
                acc["bits"] = WindowBits(n, 2**18)
            acc["bits"].add(Dn[:, :L])
            if k == len(starts) - 1:
                acc["B"], acc["X"] = acc["bits"].counts()

        def one_comparison(k, L, acc):  # the floor: not a count
            np.greater(Dn[:, :L], 0, out=flags[:n, :L])

        def raw_torch(k, L, acc):  # codes from the raw bf16 slices: m > b, m < b (codes only)
            s = k * sub
            for i, m in enumerate(models):
                torch.gt(m[s : s + L], base[s : s + L], out=flags_t[i, :L])
                torch.lt(m[s : s + L], base[s : s + L], out=flags_t[n + i, :L])

        def raw_keys(k, L, acc):  # raw 16-bit order keys (numpy int16), then comparisons (codes only)
            s = k * sub
            for i, t in enumerate([base] + models):
                u = t[s : s + L].view(torch.int16).numpy()
                sign = u >> 15
                np.subtract((u & 0x7FFF) ^ sign, sign, out=keys[i, :L])
            np.less(keys[1:, :L], keys[0, :L], out=flags[:n, :L])
            np.greater(keys[1:, :L], keys[0, :L], out=flags[n:, :L])

        grams = torch.empty(len(starts), 2, n, n)

        def f32_gemms(k, L, acc):  # codes ±1/0 in float32, two float32 GEMMs (exact below 2**24)
            c, a = F[:n, :L], F[n:, :L]
            torch.mul(D[:, :L], 2.0**149, out=c)
            c.clamp_(-1, 1)
            torch.abs(c, out=a)
            torch.mm(c, c.T, out=grams[k, 0])
            torch.mm(a, a.T, out=grams[k, 1])

        flags_t = torch.from_numpy(flags)
        methods = {PASS_METHOD: clamp_gemm, EXACT_METHODS[1]: two_comparisons, EXACT_METHODS[2]: windowed_bits,
                   FLOOR_METHOD: one_comparison,
                   "torch comparisons of the raw bf16 (codes only)": raw_torch,
                   "numpy int16 order keys of the raw bits (codes only)": raw_keys,
                   EXACT_METHODS[3]: f32_gemms}

        def run(method):
            acc = {} if method is not clamp_gemm else torch.empty(len(starts), n, n, dtype=torch.float64)
            for k, s in enumerate(starts):
                L = min(sub, count - s)
                b.copy_(base[s : s + L])
                for i, m in enumerate(models):
                    D[i, :L].copy_(m[s : s + L])
                D[:, :L].sub_(b[:L])
                torch.sum(D[:, :L], dim=1)
                torch.mm(D[:, :L], D[:, :L].T, out=G)
                if method:
                    method(k, L, acc)
            return acc

        def counts(method, acc):
            if method is clamp_gemm:
                B, X = _sign_counts([acc], True)
            elif method is two_comparisons:
                B, X = np.triu(acc["B"]) + np.triu(acc["B"], 1).T, acc["X"] + acc["X"].T
            elif method is windowed_bits:
                B, X = acc["B"], acc["X"]
            elif method is f32_gemms:
                cc, aa = grams.double().sum(0).unbind(0)
                B, X = aa, (aa - cc) / 2
            else:
                return None
            return np.allclose(np.asarray(B, dtype=float), want[0]) and np.allclose(np.asarray(X, dtype=float), want[1])

        def cpu(method):
            t = time.thread_time()
            run(method)
            return time.thread_time() - t

        base_times = []
        times = {name: [] for name in methods}
        for _ in range(repeats):
            base_times.append(cpu(None))
            for name, method in methods.items():
                times[name].append(cpu(method))
        t0 = statistics.median(base_times)
        for name, method in methods.items():
            exact = counts(method, run(method))
            extra = statistics.median(times[name]) - t0
            if exact or method is one_comparison:  # a count that is not exact is no candidate
                summary.setdefault(n, {})[name] = extra * 1e6 / len(starts)
            rows.append(f"| {n} | {name} | {extra * 1e3 / len(starts) * 1e3:.1f} | {extra / t0 * 100:+.0f}% | "
                        + {True: "yes", False: "NO", None: "(not a count)"}[exact] + " |")
        rows.append(f"| {n} | moments alone (the pass without sign_conflict) | {t0 * 1e6 / len(starts):.1f} | | |")
    return "\n".join([
        f"Other ways to count, one synthetic bf16 block of 4 Mi elements per model, CPU time of this "
        f"thread (median of {repeats}), in the reducer's sub-chunks (32768 elements for 2 models, 16384 for 8):",
        "", "| models | sign work per sub-chunk | extra µs per sub-chunk | extra CPU over the moments | exact |",
        "|---:|---|---:|---:|---|", *rows]), summary


class WindowBits:
    """Sign bits of float64 deltas counted by popcount every ``window`` elements, so that the bits
    stay in L2: the reducer's sign counting as once tried (slower than the clamp and GEMM for 2
    models, about as fast for 8). Rows: δ < 0 (S), then δ ≠ 0 (Z); B_ij = #(Z_i ∧ Z_j),
    X_ij = #(Z_i ∧ Z_j ∧ (S_i ⊕ S_j)). Sub-chunks must be multiples of 8 elements but the last."""

    def __init__(self, n: int, window: int):
        import numpy as np

        self.np, self.n, self.window, self.filled = np, n, window, 0
        self.flags = np.empty((2 * n, 0), np.bool_)
        self.bits = np.zeros((2 * n, window // 8), np.uint8)
        self.pairs = np.empty((2, n, window // 64), np.uint64)
        self.ones = np.empty((n, window // 64), np.uint8)
        self.B, self.X = np.zeros((n, n), np.int64), np.zeros((n, n), np.int64)

    def add(self, deltas) -> None:
        np, n, size = self.np, self.n, deltas.shape[1]
        if self.flags.shape[1] < size:
            self.flags = np.empty((2 * n, size), np.bool_)
        flags = self.flags[:, :size]
        np.less(deltas, 0, out=flags[:n])
        np.not_equal(deltas, 0, out=flags[n:])
        if self.filled + size > self.window:
            self._count()
        packed = np.packbits(flags, axis=1)
        self.bits[:, self.filled // 8 : self.filled // 8 + packed.shape[1]] = packed
        self.filled += size

    def _count(self) -> None:
        np, n, used = self.np, self.n, -(-self.filled // 8)
        words = -(-used // 8)
        self.bits[:, used : words * 8] = 0
        S, Z = self.bits[:n, : words * 8].view(np.uint64), self.bits[n:, : words * 8].view(np.uint64)
        for i in range(n):
            both, differ, ones = self.pairs[0, : n - i, :words], self.pairs[1, : n - i, :words], self.ones[: n - i, :words]
            np.bitwise_and(Z[i], Z[i:], out=both)
            np.bitwise_and(np.bitwise_xor(S[i], S[i:], out=differ), both, out=differ)
            self.B[i, i:] += np.add.reduce(np.bitwise_count(both, out=ones), axis=1, dtype=np.int64)
            self.X[i, i:] += np.add.reduce(np.bitwise_count(differ, out=ones), axis=1, dtype=np.int64)
        self.filled = 0

    def counts(self):
        self._count()
        return tuple(self.np.triu(M) + self.np.triu(M, 1).T for M in (self.B, self.X))


def write_md(table: str) -> None:
    args = " ".join(sys.argv[1:]) or "--write-md"
    section = (f"{START}\n## Sign conflict in the kinship pass\n\nMade by "
               f"`python benchmarks/sign_conflict_bench.py {args}` on {time.strftime('%Y-%m-%d')}.\n\n"
               f"{table}\n{END}")
    write_section(section, START, END, kb.MD)


if __name__ == "__main__":
    sys.exit(main())
