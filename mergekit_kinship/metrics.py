"""The kinship metrics' names: one vocabulary for the CLI, the Python API, recipes and summaries.

Canonical names are ``pcc``, ``cosine``, ``euclidean`` and ``sign_conflict``; ``cs``/``cos``,
``ed``, ``pearson`` and ``sign``/``sign-conflict`` are accepted everywhere as aliases (recipes
written with the paper's ``cs``/``ed`` keep working) and stored under the canonical name. Pure and
cheap to import: no torch.

``euclidean`` and ``sign_conflict`` are distances for relatedness purposes: larger means less
related, and a model's value with itself is 0 (its delta is at no distance from itself and never
disagrees with itself in sign). ``pcc`` and ``cosine`` are similarities (1 with itself).
"""

from __future__ import annotations

from typing import Iterable

from mergekit_kinship.errors import UserError

METRICS = ("pcc", "cosine", "euclidean", "sign_conflict")
# What kinship/matrix and kinship()/kinship_matrix() compute when no metric is named. Not
# sign_conflict: counting signs adds two passes over each sub-chunk's deltas, 16-33% more CPU
# time for a pass on 2 CPU cores (BENCHMARKS.md); "all" (or naming it) asks for it. `check` and
# evolve's pool always measure it.
DEFAULT_METRICS = ("pcc", "cosine", "euclidean")
ALL = "all"  # shorthand for every metric in parse_metrics
ALIASES = {"cs": "cosine", "cos": "cosine", "ed": "euclidean", "pearson": "pcc",
           "sign": "sign_conflict", "sign-conflict": "sign_conflict"}
DISTANCES = frozenset({"euclidean", "sign_conflict"})  # larger = less related
FRACTIONS = frozenset({"sign_conflict"})  # in [0, 1]: printed with fixed decimals, like pcc


def canonical(name: str) -> str:
    """The canonical name of one metric (aliases resolved, case-insensitive); UserError if unknown."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in METRICS:
        raise UserError(f"unknown metric '{name}': choose from {', '.join(METRICS)} "
                        f"(aliases {', '.join(f'{a}={c}' for a, c in ALIASES.items())})")
    return key


def parse_metrics(metrics: str | Iterable[str]) -> tuple[str, ...]:
    """Canonical metric names from ``"pcc,cs"`` or a sequence, each once, in the order given;
    ``"all"`` stands for every metric.

    Raises :class:`UserError` for an unknown or empty list, before anything is read.
    """
    if isinstance(metrics, str):
        metrics = metrics.split(",")
    out: list[str] = []
    for raw in metrics:
        if not str(raw).strip():
            continue
        if str(raw).strip().lower() == ALL:
            out += [m for m in METRICS if m not in out]
            continue
        key = canonical(raw)
        if key not in out:
            out.append(key)
    if not out:
        raise UserError(f"no metric given: choose from {', '.join(METRICS)}")
    return tuple(out)


def is_distance(metric: str) -> bool:
    """Whether larger values mean less related (euclidean, sign_conflict)."""
    return canonical(metric) in DISTANCES


def is_unbounded(metric: str) -> bool:
    """Whether the metric has no fixed range (euclidean): printed to significant digits."""
    key = canonical(metric)
    return key in DISTANCES and key not in FRACTIONS


def relatedness(metric: str, value: float) -> float:
    """Kinship as 'larger = more related' for every metric (a distance is negated)."""
    return -value if is_distance(metric) else value


def self_kinship(metric: str) -> float:
    """A model's kinship with itself: 0 for a distance, 1 for a similarity."""
    return 0.0 if is_distance(metric) else 1.0
