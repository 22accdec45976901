"""One model's scores: their record, the checks every score passes, and the fitness made of them.

Scores reach a run from lm-eval (:func:`mergekit_kinship.evaluation.runner.evaluate`), from a
scores file (``plan --scores``) and from stand-in evaluators; each path calls
:func:`check_scores` so that a percentage where a fraction belongs, a NaN, or a ``true`` never
becomes a fitness. Cheap to import (standard library only).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field
from typing import Mapping

from mergekit_kinship.errors import UserError
from mergekit_kinship.evaluation.settings import EvaluationSettings

# The range of each metric whose range is known whatever the task. lm-eval's registry records a
# metric's aggregation and direction, not its range, so the list is ours, from how lm-eval 0.4
# computes them: the mean of a 0/1 (or [0, 1]) value per document for the accuracies, exact
# match and TruthfulQA's mc1/mc2; Matthews' correlation for mcc. Left out on purpose: f1 and em
# (squadv2 and scrolls report them in percent, other tasks as fractions), bleu/chrf/ter (0-100
# or unbounded), perplexities: those are only checked for being finite numbers.
METRIC_RANGES: dict[str, tuple[float, float]] = {
    **{name: (0.0, 1.0) for name in ("acc", "acc_norm", "acc_mutual_info", "acc_bytes", "acc_all",
                                     "exact_match", "mc1", "mc2")},
    "mcc": (-1.0, 1.0),
}


def metric_range(metric: str) -> tuple[float, float] | None:
    """The range of ``metric`` (a name, or lm-eval's ``name,filter`` key), ``None`` if unknown."""
    return METRIC_RANGES.get(metric.split(",", 1)[0].strip())


def check_scores(scores: Mapping[str, object], settings: EvaluationSettings, where: str) -> dict[str, float]:
    """``scores`` (task -> score) as floats, after checking every entry.

    Refused, with a one-line UserError naming the entry as ``{where}.{task}`` (``where`` alone
    when it is empty): a value that is not a real number (a bool, a string, None, a list), a NaN
    or infinite value, and a value outside the range of the task's metric
    (``settings.metric_for(task)``, see :data:`METRIC_RANGES`) for tasks of ``settings.tasks``.
    Entries for tasks outside ``settings.tasks`` are checked for being finite numbers only (their
    metric is unknown); whether every task has a score is the caller's question.
    """
    checked: dict[str, float] = {}
    for task, value in scores.items():
        entry = f"{where}.{task}" if where else str(task)
        # bool is an int to Python (and numpy's bool_ is no number at all): `true` is no score.
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise UserError(f"{entry}: {value!r} is not a number")
        number = float(value)
        if not math.isfinite(number):
            raise UserError(f"{entry}: {number} is not a finite number")
        if task in settings.tasks:
            metric = settings.metric_for(task)
            bounds = metric_range(metric)
            if bounds is not None and not bounds[0] <= number <= bounds[1]:
                low, high = (f"{bound:g}" for bound in bounds)
                percent = bounds == (0.0, 1.0) and 1 < number <= 100
                hint = " (a percentage where a fraction belongs?)" if percent else ""
                raise UserError(f"{entry}: {number:g} is outside [{low}, {high}], the range of "
                                f"{metric.split(',', 1)[0]}{hint}")
        checked[task] = number
    return checked


def fitness(scores: Mapping[str, float], settings: EvaluationSettings) -> float:
    """Weighted mean of ``scores`` over ``settings.tasks`` (weight 1 unless ``settings.weights``
    says otherwise). Raises ``KeyError`` if a task has no score: a missing score is a bug upstream,
    not something to average around."""
    total = 0.0
    weight_sum = 0.0
    for task in settings.tasks:
        weight = settings.weight_for(task)
        total += weight * float(scores[task])
        weight_sum += weight
    return total / weight_sum


@dataclass
class EvaluationResult:
    """One model's scores.

    ``scores``: task -> the chosen metric as lm-eval reports it (checked by :func:`check_scores`).
    ``stderr``: task -> lm-eval's standard error of that score (absent where lm-eval gives none).
    ``samples``: task -> number of documents actually scored (after ``limit``).
    ``n_shot``: task -> few-shot examples lm-eval actually used (a task may pin its own).
    ``seconds``: wall-clock time of the evaluation, model loading included.
    ``items``: task -> item index -> the item's value of the task's metric, for the items
    scored, of the tasks whose score is the mean of those values (absent for other tasks, and
    from an evaluator that gives none); ``items_total``: task -> how many items the task has.
    ``fitness``: None when not every task was scored (a stage of staged evaluation).
    """

    scores: dict[str, float]
    fitness: float | None
    lm_eval_version: str
    seconds: float
    stderr: dict[str, float] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)
    n_shot: dict[str, int] = field(default_factory=dict)
    items: dict[str, dict[int, float]] = field(default_factory=dict)
    items_total: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """As a score record keeps it: without the per-item values (they go to
        :mod:`mergekit_kinship.item_results`), with the item counts."""
        data = asdict(self)
        data.pop("items")
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "EvaluationResult":
        return cls(**data)
