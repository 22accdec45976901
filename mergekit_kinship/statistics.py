"""Pearson correlation with its two-sided p-value, in pure Python (no scipy).

The p-value comes from Student's t distribution through the regularized incomplete beta function
(continued fraction, modified Lentz, as in Numerical Recipes), accurate to about 1e-12: enough to
report ``p`` to three significant digits.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz, Numerical Recipes)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    # The continued fraction converges fast on this side of the mean; use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return regularized_beta(df / 2.0, 0.5, df / (df + t * t))


def pearson(x: Sequence[float], y: Sequence[float]) -> Optional[tuple[float, float]]:
    """Pearson r of two samples and its two-sided p-value (t test, n - 2 degrees of freedom), in
    float64; ``None`` with fewer than 3 pairs or a constant sample. ValueError if the lengths
    differ."""
    n = len(x)
    if n != len(y):
        raise ValueError("x and y differ in length")
    if n < 3:
        return None
    mean_x, mean_y = math.fsum(x) / n, math.fsum(y) / n
    sxx = math.fsum((v - mean_x) ** 2 for v in x)
    syy = math.fsum((v - mean_y) ** 2 for v in y)
    sxy = math.fsum((a - mean_x) * (b - mean_y) for a, b in zip(x, y))
    if sxx == 0 or syy == 0:
        return None
    r = max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))
    df = n - 2
    t = math.inf if abs(r) == 1.0 else r * math.sqrt(df / (1.0 - r * r))
    return r, t_two_sided_p(t, df)


def fisher_interval(r: float, n: int, confidence: float = 0.95
                    ) -> Optional[tuple[float, float]]:
    """Two-sided ``confidence`` interval of a Pearson r over ``n`` pairs by Fisher's z
    transformation: ``tanh(atanh(r) -/+ z / sqrt(n - 3))`` with z the normal quantile of
    ``(1 + confidence) / 2`` (1.96 at 95%). None with fewer than 4 pairs; (r, r) at |r| = 1."""
    from statistics import NormalDist

    if n < 4:
        return None
    if abs(r) >= 1.0:
        return r, r
    z = NormalDist().inv_cdf((1.0 + confidence) / 2.0)
    centre, half = math.atanh(r), z / math.sqrt(n - 3)
    return math.tanh(centre - half), math.tanh(centre + half)
