"""Standard errors and confidence bounds of fitness and gain: pure functions over scores.

Per-item results (``Items``: task -> item index -> the item's value of the task's metric, e.g.
0/1 for ``acc``) are the first source. A task's score is the mean of its items' values (the only
kind of task staged evaluation accepts, and the only kind whose items are recorded), so every
quantity here is a weighted mean of per-item *contrasts*:

- fitness ``F = sum_t w_t * mean_i x_i / W`` (``W = sum_t w_t``, the recipe's task weights);
- a child's gain over its parents' mean ``sum_t w_t * mean_i (c_i - (a_i + b_i) / 2) / W``,
  computed item by item on the items all three were scored on (*paired*: the item-to-item
  variation the three models share cancels, which is why a paired gain's error is far smaller
  than the three fitness errors combined);
- a model minus another (vs the base, a stage decision, two strategies' best models).

The standard error of such a contrast treats each task's items as a sample of the task's
population, as lm-eval's own ``stderr`` does: ``se^2 = sum_t w_t^2 * s_t^2 / n_t / W^2``, with
``s_t^2`` the sample variance (n - 1) of the contrast's values over the task's ``n_t`` items.
With ``totals`` (the task's item count ``N_t``), the question is instead what the score over
*all* ``N_t`` items will be, given ``n_t`` of them (a stage decision): the finite-population
correction ``(1 - n_t / N_t)`` multiplies each ``s_t^2 / n_t``, so a fully scored task adds no
uncertainty. Without per-item results, lm-eval's per-task standard errors ``se_t`` combine the
same way, ``se(F) = sqrt(sum_t w_t^2 se_t^2) / W``, and a difference of models is taken as one of
independent estimates, ``sqrt(sum_j c_j^2 se(F_j)^2)`` (an over-estimate when the models agree
item by item, as relatives do). Bounds use the normal approximation.

Nothing here reads files or imports torch; the bootstrap uses NumPy when it runs.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Mapping, Optional, Sequence

Items = Mapping[str, Mapping[int, float]]


def z_quantile(confidence: float) -> float:
    """z with P(Z <= z) = ``confidence`` (one-sided: 0.95 -> 1.645)."""
    return NormalDist().inv_cdf(confidence)


def _weights(settings, tasks: Optional[Sequence[str]] = None) -> dict[str, float]:
    return {t: settings.weight_for(t) for t in (tasks or settings.tasks)}


def _mean_var(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = math.fsum(values) / n
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, var


def contrast(models: Sequence[Items], coefficients: Sequence[float], settings,
             totals: Optional[Mapping[str, int]] = None) -> Optional[tuple[float, float, int]]:
    """(estimate, standard error, items) of ``sum_j c_j F_j`` from per-item results, paired on
    the items every model of ``models`` was scored on, task by task (see the module docstring;
    ``totals``: apply the finite-population correction towards each task's ``N_t`` items).
    None when a weighted task has no common item, or only one out of several (no variance)."""
    weights = _weights(settings)
    total_weight = math.fsum(weights.values())
    estimate = variance = 0.0
    count = 0
    for task, weight in weights.items():
        if weight == 0:
            continue
        if any(task not in m for m in models):
            return None
        common = sorted(set.intersection(*(set(m[task]) for m in models)))
        n = len(common)
        full = totals.get(task) if totals else None
        if n == 0 or (n == 1 and full != 1):
            return None
        values = [math.fsum(c * m[task][i] for c, m in zip(coefficients, models)) for i in common]
        mean, var = _mean_var(values)
        shrink = max(0.0, 1.0 - n / full) if full else 1.0
        estimate += weight * mean
        variance += weight * weight * var / n * shrink
        count += n
    return estimate / total_weight, math.sqrt(variance) / total_weight, count


def fitness_stderr(items: Optional[Items], stderr: Mapping[str, float], settings
                   ) -> Optional[float]:
    """Standard error of a fitness: from per-item results when there are some for every task,
    else from lm-eval's per-task ``stderr`` (None when a weighted task has neither)."""
    if items:
        found = contrast([items], [1.0], settings)
        if found is not None:
            return found[1]
    return tasks_stderr(stderr, settings)


def tasks_stderr(stderr: Mapping[str, float], settings) -> Optional[float]:
    """``sqrt(sum_t w_t^2 se_t^2) / W`` from per-task standard errors (tasks independent)."""
    weights = _weights(settings)
    if any(w and t not in stderr for t, w in weights.items()):
        return None
    total = math.fsum(weights.values())
    return math.sqrt(math.fsum((w * stderr[t]) ** 2 for t, w in weights.items() if w)) / total


def independent_stderr(parts: Sequence[tuple[float, Optional[float]]]) -> Optional[float]:
    """``sqrt(sum_j c_j^2 se_j^2)`` for (coefficient, standard error) pairs; None if one is
    unknown."""
    if any(se is None for _, se in parts):
        return None
    return math.sqrt(math.fsum((c * se) ** 2 for c, se in parts))


def paired_bootstrap(a: Items, b: Items, settings, *, seed: int = 0, iterations: int = 2000,
                     confidence: float = 0.95) -> Optional[dict]:
    """The fitness difference ``F_a - F_b`` over the items both were scored on, with a
    two-sided percentile interval from a paired bootstrap: each resample draws, task by task,
    as many items as the task has, with replacement, the same items for both models (seeded:
    the same ``seed`` gives the same interval). ``differs``: the interval excludes 0. None when
    a weighted task has no common item."""
    import numpy as np

    weights = {t: w for t, w in _weights(settings).items() if w}
    total = math.fsum(weights.values())
    rng = np.random.default_rng(seed)
    point = 0.0
    draws = np.zeros(iterations)
    count = 0
    for task in sorted(weights):
        if task not in a or task not in b:
            return None
        common = sorted(set(a[task]) & set(b[task]))
        if not common:
            return None
        d = np.array([a[task][i] - b[task][i] for i in common], dtype=np.float64)
        picks = rng.integers(0, len(d), size=(iterations, len(d)))
        draws += weights[task] * d[picks].mean(axis=1) / total
        point += weights[task] * float(d.mean()) / total
        count += len(d)
    tail = (1.0 - confidence) / 2.0
    low, high = (float(q) for q in np.quantile(draws, [tail, 1.0 - tail]))
    return {"difference": point, "low": low, "high": high, "confidence": confidence,
            "items": count, "iterations": iterations, "seed": seed,
            "differs": low > 0 or high < 0}


def minus_mean(model, others: Sequence, settings) -> tuple[Optional[float], Optional[float]]:
    """(value, standard error) of ``model``'s fitness minus the mean of ``others``' (a child's
    gain over its parents, a model against the base). Each argument has ``fitness``,
    ``fitness_stderr``, ``items`` (per-item results, maybe empty) and ``partial`` (scored on a
    subset). The value is the plain difference of fitnesses when every model was fully scored
    (as it always was), else the paired estimate over the items all of them were scored on;
    the error is paired whenever they all have per-item results, else that of independent
    estimates."""
    if model.fitness is None or any(o.fitness is None for o in others):
        return None, None
    share = 1.0 / len(others)
    plain = model.fitness - math.fsum(o.fitness for o in others) * share
    paired = None
    if model.items and all(o.items for o in others):
        paired = contrast([model.items, *(o.items for o in others)],
                          [1.0, *([-share] * len(others))], settings)
    if paired is not None:
        partial = model.partial or any(o.partial for o in others)
        return (paired[0] if partial else plain), paired[1]
    return plain, independent_stderr([(1.0, model.fitness_stderr),
                                      *((-share, o.fitness_stderr) for o in others)])
