"""Kinship from two sketches, with a stated error bound.

Every metric of models a and b is a function of exact one-model moments (n, Σδ, Σδ² from each
:class:`~mergekit_kinship.sketch.Sketch`) and of one cross term C = Σδ_aδ_b. Only C is
estimated, tensor by tensor, and the bound of C becomes each metric's bound exactly (PCC and
cosine are linear in C; the euclidean distance is √(Q_a + Q_b − 2C)).

**The cross term.** For a hashed tensor t of width m (CountSketch, random buckets and signs),
two unbiased estimators are available (Charikar et al. 2002; Cormode & Muthukrishnan 2005):

- the inner product ⟨S_a, S_b⟩ over t's entries, of variance
  ``(Σa²·Σb² + C_t² − 2Σa_k²b_k²)/m ≤ (Q_a,t·Q_b,t + C_t²)/m``;
- ``(Q_a,t + Q_b,t − ‖S_a − S_b‖²)/2``, from the squared distance of the sketches, an unbiased
  estimate of ``D_t = ‖δ_a − δ_b‖²`` of variance ``≤ 2·D_t²/m``: far smaller for near copies
  (a grandchild at PCC 0.94, a merge and its parents).

Per tensor the estimator of smaller estimated variance is used (the variances are evaluated at
the estimates themselves, D_t inflated by 3·√(2/m) against being underestimated); exact tensors
add no variance. Summed over tensors (independent hashes), the total error is close to normal,
and the bound printed with every value is ``Z = 4`` standard deviations: exceeded with
probability about 6e-5 per value under that normal approximation. BENCHMARKS.md checks it
against exact values over many pairs.

**Sign conflict** is the conflict fraction over the sampled positions where both deltas are
non-zero; the sample is a uniform random subset of those positions, so Hoeffding's inequality
bounds the error by ``√(ln(2/6e-5)/(2·k))`` for k such positions, with the same failure
probability. A sample that holds every position (a model smaller than ``signs``) is exact.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from mergekit_kinship.metrics import parse_metrics

Z = 4.0
FAILURE = math.erfc(Z / math.sqrt(2))  # ≈ 6.3e-5: P(|normal| > Z sd)


def cross_bound(var: float) -> float:
    """The stated bound of an estimate whose (estimated) variance is ``var``: Z·√var."""
    return Z * math.sqrt(max(var, 0.0))


def sign_bound(both: float, exact: bool = False) -> float:
    """Hoeffding's bound on a fraction estimated from ``both`` sampled positions (0 when the
    sample is every position), at the same failure probability as :func:`cross_bound`."""
    if exact:
        return 0.0
    return math.sqrt(math.log(2 / FAILURE) / (2 * both)) if both > 0 else float("inf")


def check_comparable(sketches) -> None:
    """ValueError unless every sketch has the same layout (tensors, sizes and parameters)."""
    prints = {s.layout.fingerprint for s in sketches}
    if len(prints) > 1:
        raise ValueError("sketches of different layouts (tensors or sketch parameters) "
                         "cannot be compared")


def tensor_grams(sketches, rows: Optional[Sequence[int]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, diag): per tensor t, G[t, r, j] = ⟨S_rows[r], S_j⟩ over t's entries (T × R × N) and
    diag[t, j] = ‖S_j‖² over them (T × N). Exact for a tensor stored as it is."""
    layout = sketches[0].layout
    rows = list(range(len(sketches))) if rows is None else list(rows)
    T = len(layout.tensors)
    G = torch.empty(T, len(rows), len(sketches), dtype=torch.float64)
    diag = torch.empty(T, len(sketches), dtype=torch.float64)
    for t in range(T):
        # One tensor's entries of every sketch at a time: no second copy of all the sketches.
        lo, hi = int(layout.offset[t]), int(layout.offset[t] + layout.width[t])
        seg = torch.stack([s.values[lo:hi] for s in sketches])
        torch.mm(seg[rows], seg.T, out=G[t])
        diag[t] = torch.einsum("nk,nk->n", seg, seg)
    return G, diag


def cross_terms(sketches, rows: Optional[Sequence[int]] = None):
    """(C, V, per_tensor): estimated cross terms C[r, j] = Σδ_rδ_j (R × N), their variances V,
    and the per-tensor estimates (T × R × N) that :mod:`~mergekit_kinship.lineage` fits."""
    check_comparable(sketches)
    layout = sketches[0].layout
    rows = list(range(len(sketches))) if rows is None else list(rows)
    G, diag = tensor_grams(sketches, rows)
    q = torch.stack([s.sumsq for s in sketches], 1)  # T × N, exact
    qr = q[:, rows]
    width = torch.from_numpy(layout.width.astype(np.float64))[:, None, None]
    hashed = torch.from_numpy(~layout.exact)[:, None, None]
    qq = qr[:, :, None] * q[:, None, :]
    var1 = (qq + torch.minimum(G * G, qq)) / width
    D = (diag[:, rows][:, :, None] + diag[:, None, :] - 2 * G).clamp_min(0.0)
    c2 = (qr[:, :, None] + q[:, None, :] - D) / 2
    var2 = (D * (1 + 3 * torch.sqrt(2 / width))) ** 2 / (2 * width)
    use2 = hashed & (var2 < var1)
    c = torch.where(use2, c2, G)
    var = torch.where(hashed, torch.minimum(var1, var2), torch.zeros_like(var1))
    return c.sum(0), var.sum(0), c


def estimates(sketches, metrics, rows: Optional[Sequence[int]] = None) -> dict[str, tuple]:
    """Per metric, (values, bounds): R × N float64 numpy arrays of the sketched kinship of
    ``sketches[rows[r]]`` and ``sketches[j]`` and its bound (NaN where undefined: a zero delta,
    no position changed in both). A model with itself gets the exact self value and bound 0."""
    metrics = parse_metrics(metrics)
    rows = list(range(len(sketches))) if rows is None else list(rows)
    layout = sketches[0].layout
    out: dict[str, tuple] = {}
    need_cross = any(m != "sign_conflict" for m in metrics)
    if need_cross:
        C, V, _ = cross_terms(sketches, rows)
        C, B = C.numpy(), Z * np.sqrt(np.maximum(V.numpy(), 0.0))
        Q = np.array([s.norm2() for s in sketches])
        s1 = np.array([float(s.sums.sum()) for s in sketches])
        n = float(layout.n)
        Qr, sr = Q[rows][:, None], s1[rows][:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            for metric in metrics:
                if metric == "pcc":
                    var_r, var_c = Qr - sr * sr / n, (Q - s1 * s1 / n)[None, :]
                    den = np.sqrt(np.maximum(var_r, 0) * np.maximum(var_c, 0))
                    value = (C - sr * s1[None, :] / n) / den
                    out[metric] = _clip(value, B / den, den > 0)
                elif metric == "cosine":
                    den = np.sqrt(Qr * Q[None, :])
                    out[metric] = _clip(C / den, B / den, den > 0)
                elif metric == "euclidean":
                    d2 = Qr + Q[None, :] - 2 * C
                    d = np.sqrt(np.maximum(d2, 0))
                    hi = np.sqrt(np.maximum(d2, 0) + 2 * B) - d
                    lo = d - np.sqrt(np.maximum(d2 - 2 * B, 0))
                    out[metric] = (d, np.maximum(hi, lo))
    if "sign_conflict" in metrics:
        out["sign_conflict"] = _sign_conflict(sketches, rows)
    for metric, (value, bound) in out.items():  # a model with itself: exact
        for r, i in enumerate(rows):
            defined = not np.isnan(value[r, i])
            value[r, i] = (0.0 if metric in ("euclidean", "sign_conflict") else 1.0) if defined else np.nan
            bound[r, i] = 0.0 if defined else np.nan
    return {m: out[m] for m in metrics}


def _clip(value, bound, defined):
    value = np.where(defined, np.clip(value, -1.0, 1.0), np.nan)
    return value, np.where(defined, bound, np.nan)


def _sign_conflict(sketches, rows) -> tuple[np.ndarray, np.ndarray]:
    layout = sketches[0].layout
    if layout.threshold == 0:
        raise ValueError("these sketches have no sign sample (signs = 0): no sign-conflict estimate")
    codes = torch.stack([s.signs for s in sketches]).to(torch.float64)
    nonzero = (codes != 0).to(torch.float64)
    both = (nonzero[rows] @ nonzero.T).numpy()
    agree_minus_conflict = (codes[rows] @ codes.T).numpy()
    conflict = (both - agree_minus_conflict) / 2
    exact = layout.threshold >= 2**32
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(both > 0, conflict / both, np.nan)
        bound = np.where(both > 0, 0.0 if exact else np.sqrt(math.log(2 / FAILURE) / (2 * both)), np.nan)
    return value, bound


def pair(a, b, metrics) -> dict[str, tuple[Optional[float], float]]:
    """Sketched kinship of two models: metric -> (value or None, bound)."""
    result = estimates([a, b], metrics, rows=[0])
    return {m: (None if np.isnan(v[0, 1]) else float(v[0, 1]), float(bd[0, 1]))
            for m, (v, bd) in result.items()}


def with_bound(value: Optional[float], bound: Optional[float], metric: str) -> str:
    """``0.3720 ± 0.0040`` (the value as every table prints it; ± 0 for an exact one)."""
    from mergekit_kinship.formatting import metric_value

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return metric_value(None, metric)
    text = metric_value(value, metric)
    if bound is None or math.isnan(bound):
        return text
    return f"{text} ± {metric_value(bound, metric)}"
