"""What each of a set of models most likely is, read back from their weights (their delta sketches).

Given fine-tunes and merges of one base, :func:`infer_lineage` says for each model whether it is
a fine-tune of the base, a fine-tune of another listed model, a merge of two (or more) listed
models with their proportions, unrelated to this base, or ambiguous (then with the explanations
it cannot choose between). Everything is computed from per-tensor inner products of the models'
deltas, G[t, i, j] = Σ over tensor t of δ_i·δ_j, estimated from sketches
(:func:`~mergekit_kinship.sketch_estimates.cross_terms`; exact for models smaller than the
sketch). The rules, and why:

1. **Merges.** A merge of A and B is, tensor by tensor, close to α_t·δ_A + β_t·δ_B: exactly for
   ``linear``/``task_arithmetic``, to second order for SLERP of related parents (which falls back
   to linear interpolation for near-parallel weights), roughly for TIES/DARE (sparsified, sign
   elected: a larger residual). Each tensor is fitted on its own because mergekit's parameters
   vary by tensor (SLERP's ``t`` gradients over layers). Evidence: the residual fraction
   ρ = Σ_t residual_t / ‖δ_X‖² and the coefficients, which must be non-negative.
2. **The family's template.** In a merge-heavy family many pairs fit equally well: a grandchild
   of a chain lies in the span of its ancestors as well. But every merge a tool like ``evolve``
   makes uses one recipe, so the per-tensor share of parent B, λ_t = β_t/(α_t+β_t), is the same
   for every true merge (the recipe's ``t`` per tensor), and differs for the spurious fits (their
   shares are products of the recipe's, e.g. t²). The template τ is the per-tensor median of
   the best fits' shares; a merge is accepted when its shares match τ (largest deviation over
   tensors whose parents differ, ≤ ``TEMPLATE_TOL``); with no shared template (few merges,
   mixed recipes) the lowest residual decides. Two fits that match equally well are
   **ambiguous**: reported as such with both, never guessed (in a LERP family some pairs are
   algebraically the same: (1−t)·A + t·((1−t)·S + t·R) = (1−t)·((1−t)·A + t·S) + t·((1−t)·A + t·R)).
3. **Fine-tunes.** A model that is no merge is a fine-tune of listed model P when its delta
   carries P's whole delta and adds an update: ⟨δ_X, δ_P⟩/‖δ_P‖² ≥ ``FT_COEF`` (the reverse
   direction gives ‖δ_P‖²/‖δ_X‖²-like values below it), ‖δ_X‖ > ‖δ_P‖ (for a small update
   both directions pass the coefficient test) and cos(δ_X, δ_P) ≥ ``FT_COSINE``, P
   not a descendant of X (counting an ambiguous merge's possible parents as its parents)
   and X not closer to one of P's own merge parents than to P (a linear merge ½(δ_A + δ_B)
   carries about all of δ_A: A reads as its fine-tune the wrong way round); else a fine-tune
   of the base. A fine-tune keeps P's whole delta beside any second model: when X's best fit
   α·δ_P + β·δ_Q (Q not X's descendant, β ≥ 0) has α < ``FT_COEF``, X is **ambiguous**
   between P's fine-tune and that merge (a TIES merge of P's sibling carries most of δ_P).
   MoTHer (arXiv 2405.18432) and Model Atlas (arXiv 2503.10633) recover such fine-tune trees
   (directed by weight kurtosis and distance); we direct edges by the coefficient instead and
   add the merges they do not handle.
4. **Unrelated**: a delta over ``UNRELATED_NORM`` times the median norm with no kin (|cos| <
   0.1 with everyone): not a fine-tune of this base at all (e.g. another pre-training).
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

MERGE_RESIDUAL = 0.35  # the largest residual fraction a merge may leave (TIES/DARE leave most)
MERGE_GAIN = 0.5  # a merge must leave at most this fraction of the best single parent's residual
NEAR_EXACT = 0.02  # ... unless it leaves less than this of the model (a linear or SLERP merge)
NEGATIVE = -0.05  # coefficients below this are not a merge (extrapolation)
TEMPLATE_TOL = 0.05  # largest deviation of a merge's per-tensor shares from the template
AMBIGUOUS = 2.0  # a rival within this factor (and TEMPLATE_MARGIN) of the best is a tie
TEMPLATE_MARGIN = 0.01
DETERMINED = 1e-3  # sin² of the parents' angle on a tensor above which its share is determined
FT_COEF = 0.9
FT_COSINE = 0.7
UNRELATED_NORM = 10.0
CANDIDATES = 40  # pairs are formed among each model's this many most related models


@dataclass
class Explanation:
    """One way to explain a model: ``parents`` (indices), their ``proportions`` (sum 1 for a
    merge, [1] for a fine-tune), the residual fraction ρ and the template deviation."""

    parents: tuple[int, ...]
    proportions: tuple[float, ...]
    residual: float
    deviation: Optional[float] = None
    shares: Optional[np.ndarray] = field(default=None, repr=False)


@dataclass
class LineageEntry:
    """What model ``index`` most likely is. ``kind``: ``base-fine-tune``, ``fine-tune``,
    ``merge``, ``ambiguous`` or ``unrelated``; ``parents``: indices (empty for a fine-tune of the
    base; None when ambiguous); ``evidence``: numbers behind the call; ``alternatives``: the
    explanations an ambiguous call could not choose between."""

    index: int
    kind: str
    parents: Optional[list[int]]
    proportions: Optional[list[float]] = None
    evidence: dict = field(default_factory=dict)
    alternatives: list[dict] = field(default_factory=list)


def infer_lineage(G: np.ndarray, noise: Optional[np.ndarray] = None) -> list[LineageEntry]:
    """Lineage of N models from their per-tensor Gram G (T × N × N, float64; G[t, i, i] the
    exact Σδ_i² over tensor t). ``noise``: per-pair standard deviation of the total cross term
    (N × N) of a sketched G, or None for exact values (reported with the evidence). Pure: no
    I/O. Every rule compares per-tensor values, so a sketch noisy per tensor (a sketch much
    smaller than the model) blurs the template and turns calls ambiguous or wrong
    (BENCHMARKS.md measures how much); a model smaller than the sketch is fitted exactly."""
    G = np.asarray(G, dtype=np.float64)
    n = G.shape[1]
    total = G.sum(0)
    norm2 = np.diag(total).copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.nan_to_num(total / np.sqrt(np.outer(norm2, norm2)))
    fits = {x: _merge_fits(G, x, cos) for x in range(n)}
    template = _template(G, fits)
    entries = _merges(G, fits, template, cos)
    parents_of = {x: e.parents for x, e in entries.items() if e.parents}
    # An ambiguous merge's possible parents count as its parents for the fine-tune rule: a
    # parent is never called a fine-tune of its own child (a linear merge ½(δ_A + δ_B) carries
    # about all of δ_A, the signature of a fine-tune, the wrong way round).
    for x, e in entries.items():
        if e.kind == "ambiguous":
            parents_of[x] = sorted({p for alt in e.alternatives for p in alt["parents"]})
    median = float(np.median(np.sqrt(norm2))) if n else 0.0
    for x in range(n):
        others = [abs(cos[x, j]) for j in range(n) if j != x]
        if (x not in entries and n > 2 and np.sqrt(norm2[x]) > UNRELATED_NORM * median
                and max(others) < 0.1):
            entries[x] = LineageEntry(x, "unrelated", [], evidence={
                "norm_over_median": float(np.sqrt(norm2[x]) / median)})
    for x in sorted((x for x in range(n) if x not in entries), key=lambda k: norm2[k]):
        entries[x] = _fine_tune_call(x, total, norm2, cos, parents_of)
        if entries[x].parents:
            parents_of[x] = entries[x].parents
    # Once every fine-tune is known (a parent is explained by its own fine-tunes and merges,
    # which must not count), a "fine-tune of the base" that two other models explain is not sure.
    for x in [x for x, e in entries.items() if e.kind == "base-fine-tune"]:
        entries[x] = _rough_merge(x, fits[x], cos, parents_of) or entries[x]
    if noise is not None:
        for entry in entries.values():
            if entry.parents:
                entry.evidence["cross_noise"] = [float(noise[entry.index, p]) for p in entry.parents]
    return [entries[x] for x in range(n)]


def _merges(G, fits, template, cos) -> dict[int, LineageEntry]:
    """The merge calls, made most confident first and never closing a cycle: a fit whose
    parent already descends from the model (by a call made before) is dropped, which often
    settles a tie (a merge also fits, spuriously, between two of its own children)."""
    options = {x: _acceptable(x, f, template, G, cos) for x, f in fits.items()}
    options = {x: o for x, o in options.items() if o}
    decided: dict[int, LineageEntry] = {}
    parents_of: dict[int, list[int]] = {}
    while True:
        best_x, best_gap = None, -1.0
        for x, opts in options.items():
            if x in decided:
                continue
            below = descendants(x, parents_of)
            opts[:] = [f for f in opts if not set(f.parents) & below]
            if not opts:
                continue
            if len(opts) > 1 and _tied(opts[0], opts[1], template):
                continue
            gap = _score(opts[1], template) - _score(opts[0], template) if len(opts) > 1 else 1.0
            if gap > best_gap:
                best_x, best_gap = x, gap
        if best_x is None:
            break
        f = options[best_x][0]
        decided[best_x] = LineageEntry(best_x, "merge", list(f.parents), list(f.proportions),
                                       _evidence(f, cos, best_x))
        parents_of[best_x] = list(f.parents)
    for x, opts in options.items():
        if x not in decided and len(opts) > 1:
            tied = [f for f in opts if _tied(opts[0], f, template)]
            decided[x] = LineageEntry(x, "ambiguous", None, evidence=_evidence(opts[0], cos, x),
                                      alternatives=[_explained(f, cos, x) for f in tied])
    return decided


def _score(f: Explanation, template) -> float:
    return f.deviation if template is not None else f.residual


def _tied(best: Explanation, other: Explanation, template) -> bool:
    if template is not None:
        return other.deviation <= max(AMBIGUOUS * best.deviation, best.deviation + TEMPLATE_MARGIN)
    return other.residual <= AMBIGUOUS * best.residual + 1e-6


def _merge_fits(G: np.ndarray, x: int, cos: np.ndarray) -> list[Explanation]:
    """Non-negative two-parent fits of model x among its most related models, best first;
    every pair is fitted at once (arrays of tensors × pairs)."""
    related = sorted(j for j in np.argsort(-np.abs(cos[x])) if j != x)[:CANDIDATES]
    qx = G[:, x, x]
    Qx = float(qx.sum())
    pairs = list(itertools.combinations(related, 2))
    if Qx <= 0 or not pairs:
        return []
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    gaa, gbb, gab = G[:, a, a], G[:, b, b], G[:, a, b]  # T × P
    gax, gbx = G[:, a, x], G[:, b, x]
    det = gaa * gbb - gab * gab
    with np.errstate(divide="ignore", invalid="ignore"):
        determined = det > DETERMINED * gaa * gbb
        # Parents equal on this tensor: one direction, split evenly (the share is unknown).
        even = np.nan_to_num((gax + gbx) / (gaa + gbb + 2 * gab))
        alpha = np.nan_to_num(np.where(determined, (gbb * gax - gab * gbx) / det, even))
        beta = np.nan_to_num(np.where(determined, (gaa * gbx - gab * gax) / det, even))
        shares = np.where(determined, beta / (alpha + beta), np.nan)
    residual = np.clip((qx[:, None] - alpha * gax - beta * gbx).sum(0) / Qx, 0.0, 1.0)
    weight = (qx / Qx)[:, None]
    negative = (weight * ((alpha < NEGATIVE) | (beta < NEGATIVE))).sum(0)
    wa, wb = (weight * alpha).sum(0), (weight * beta).sum(0)
    fits = []
    for k in np.flatnonzero(negative <= 0.01):
        props = (wa[k] / (wa[k] + wb[k]), wb[k] / (wa[k] + wb[k])) if wa[k] + wb[k] > 0 else (0.5, 0.5)
        fits.append(Explanation((int(a[k]), int(b[k])), (float(props[0]), float(props[1])),
                                float(residual[k]), shares=shares[:, k]))
    fits.sort(key=lambda f: f.residual)
    return fits


def _template(G: np.ndarray, fits: dict[int, list[Explanation]]) -> Optional[np.ndarray]:
    """The family's per-tensor share of parent B: the median over the models whose best fit is
    a near-exact merge, each oriented (B's share or A's) to agree with the others; None when
    fewer than three models have one."""
    shares = [f[0].shares for f in fits.values()
              if f and f[0].residual < 0.05 and np.isfinite(f[0].shares).any()]
    if len(shares) < 3:
        return None
    ref = shares[0]
    for _ in range(3):
        oriented = [s if _dev(s, ref) <= _dev(1 - s, ref) else 1 - s for s in shares]
        with warnings.catch_warnings():  # a tensor no fit determines stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            ref = np.nanmedian(np.stack(oriented), axis=0)
    return ref


def _dev(shares: np.ndarray, template: np.ndarray, weight: Optional[np.ndarray] = None) -> float:
    diff = np.abs(shares - template)
    ok = np.isfinite(diff)
    if not ok.any():
        return float("inf")
    if weight is None:
        return float(diff[ok].max())
    w = weight[ok]
    return float((w * diff[ok]).sum() / w.sum()) if w.sum() > 0 else float(diff[ok].mean())


def deviation(shares: np.ndarray, template: np.ndarray, weight: Optional[np.ndarray] = None) -> float:
    """How far a fit's per-tensor shares are from the template, in either orientation: the
    mean absolute difference over the tensors whose share is determined, weighted by the
    model's delta there (``weight``; sketch noise hits the small tensors hardest)."""
    return min(_dev(shares, template, weight), _dev(1 - shares, template, weight))


def _acceptable(x: int, fits: list[Explanation], template, G, cos) -> list[Explanation]:
    """The fits of model x that could be its merge, best first (by template deviation, or by
    residual without a template)."""
    Qx = float(G[:, x, x].sum())
    if not fits or Qx <= 0:
        return []
    best_single = min((1 - cos[x, j] ** 2 for j in range(G.shape[1]) if j != x), default=1.0)
    # A near-exact fit is a merge even beside a near copy of the model (a sibling merge); a
    # rougher one (TIES, DARE) must explain far more than any single model does.
    usable = [f for f in fits if f.residual <= NEAR_EXACT or (
        f.residual <= MERGE_RESIDUAL and f.residual <= MERGE_GAIN * best_single)]
    if template is None:
        return usable
    for f in usable:
        f.deviation = deviation(f.shares, template)
    usable = [f for f in usable if f.deviation <= TEMPLATE_TOL]
    return sorted(usable, key=lambda f: (f.deviation, f.residual))


def _evidence(f: Explanation, cos, x) -> dict:
    ev = {"residual": f.residual, "cosine_with_parents": [float(cos[x, p]) for p in f.parents]}
    if f.deviation is not None:
        ev["template_deviation"] = f.deviation
    return ev


def _explained(f: Explanation, cos, x) -> dict:
    return {"parents": list(f.parents), "proportions": list(f.proportions), **_evidence(f, cos, x)}


def descendants(k: int, parents_of: dict[int, list[int]]) -> set[int]:
    children: dict[int, set[int]] = {}
    for child, parents in parents_of.items():
        for p in parents:
            children.setdefault(p, set()).add(child)
    seen, todo = set(), [k]
    while todo:
        for c in children.get(todo.pop(), ()):
            if c not in seen:
                seen.add(c)
                todo.append(c)
    return seen


def _rough_merge(x: int, fits: list[Explanation], cos, parents_of) -> Optional[LineageEntry]:
    """Ambiguous, for a model that fits no rule but whose delta two listed models explain better
    than any single one does (a TIES or DARE merge among merges of the same parents, whose
    sparsified fits are all rough): the fits within ``AMBIGUOUS`` of the best, and the base."""
    below = descendants(x, parents_of)
    best_single = min((1 - cos[x, j] ** 2 for j in range(len(cos)) if j != x), default=1.0)
    rough = [f for f in fits if not set(f.parents) & below
             and f.residual <= min(MERGE_RESIDUAL, best_single)]
    if not rough:
        return None
    tied = [f for f in rough if f.residual <= AMBIGUOUS * rough[0].residual + 1e-6][:3]
    alternatives = [_explained(f, cos, x) for f in tied]
    alternatives.append({"parents": [], "largest_abs_cosine": float(np.sqrt(1 - best_single))})
    return LineageEntry(x, "ambiguous", None, evidence=_evidence(tied[0], cos, x),
                        alternatives=alternatives)


def _fine_tune_call(x: int, total, norm2, cos, parents_of) -> LineageEntry:
    below = descendants(x, parents_of)
    candidates = []
    for p in range(len(norm2)):
        # A fine-tune adds an update to its parent's delta, so its delta is the longer one; a
        # small update passes the coefficient test both ways (1/(1 + ‖u‖²/‖δ_P‖²) ≥ FT_COEF).
        if p == x or p in below or norm2[p] <= 0 or norm2[p] >= norm2[x]:
            continue
        # A parent of a merge reads as a fine-tune of the merge the wrong way round (it carries
        # about all of the merge's delta); a true fine-tune of a merge is closer to the merge
        # than to any of the merge's parents.
        if any(cos[x, q] > cos[x, p] for q in parents_of.get(p, ())):
            continue
        coef = float(total[x, p] / norm2[p])
        if coef >= FT_COEF and cos[x, p] >= FT_COSINE:
            update2 = norm2[x] - 2 * total[x, p] + norm2[p]
            candidates.append((float(cos[x, p]), p, coef, float(max(update2, 0.0) / norm2[x])))
    if not candidates:
        best = max((abs(float(cos[x, j])) for j in range(len(norm2)) if j != x), default=0.0)
        return LineageEntry(x, "base-fine-tune", [], evidence={"largest_abs_cosine": best})
    candidates.sort(reverse=True)
    c, p, coef, update = candidates[0]
    evidence = {"cosine": c, "coefficient": coef, "update_fraction": update}
    merge = _shared_fit(x, p, total, below)
    if merge is not None:  # P's delta is not whole in X once a second model is fitted beside it
        return LineageEntry(x, "ambiguous", None, evidence=evidence, alternatives=[
            {"parents": [p], "cosine": c, "coefficient": coef}, merge])
    rivals = [r for r in candidates[1:] if r[0] >= c - 0.01]
    if rivals:
        return LineageEntry(x, "ambiguous", None, evidence=evidence, alternatives=[
            {"parents": [q], "cosine": cc, "coefficient": k} for cc, q, k, _ in candidates[:1 + len(rivals)]])
    return LineageEntry(x, "fine-tune", [p], [1.0], evidence)


def _shared_fit(x: int, p: int, total, below) -> Optional[dict]:
    """X's best fit α·δ_P + β·δ_Q (β ≥ 0, Q neither X's descendant nor P) when it keeps less than
    ``FT_COEF`` of δ_P (a TIES merge of P's sibling reads as P's fine-tune), else None."""
    best = None
    for q in range(len(total)):
        if q in (x, p) or q in below or total[q, q] <= 0:
            continue
        A = total[np.ix_([p, q], [p, q])]
        det = A[0, 0] * A[1, 1] - A[0, 1] ** 2
        if det <= DETERMINED * A[0, 0] * A[1, 1]:
            continue
        a = (A[1, 1] * total[p, x] - A[0, 1] * total[q, x]) / det
        b = (A[0, 0] * total[q, x] - A[0, 1] * total[p, x]) / det
        residual = (total[x, x] - a * total[p, x] - b * total[q, x]) / total[x, x]
        if b >= 0 and (best is None or residual < best[0]):
            best = (float(residual), float(a), float(b), q)
    if best is None or best[1] >= FT_COEF:
        return None
    residual, a, b, q = best
    return {"parents": [p, q], "proportions": [a / (a + b), b / (a + b)], "residual": residual}
