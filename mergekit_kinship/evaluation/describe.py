"""A run's evaluation settings, per task, in words: the one reading cards and the report share.

It reads the ``evaluation`` block of a run summary (``summary.json``): the recipe's settings as
:class:`~mergekit_kinship.evaluation.settings.EvaluationSettings` dumps them, plus ``n_shot``,
task -> the n-shot the run used as it resolved them when it started
(:func:`~mergekit_kinship.evaluation.task_plan.resolved_fewshot`). A summary written before
``n_shot`` was recorded falls back on the recipe's own value, and says "the task's default
n-shot" where the recipe gave none rather than guess it. Cheap to import (standard library).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from mergekit_kinship.evaluation.settings import DEFAULT_METRIC


def _for_task(value: Any, task: str) -> Any:
    return value.get(task) if isinstance(value, dict) else value


def task_fewshot(evaluation: Mapping[str, Any], task: str) -> Optional[int]:
    """The n-shot ``task`` was scored with; None when the summary does not say."""
    resolved = evaluation.get("n_shot")
    if isinstance(resolved, dict) and resolved.get(task) is not None:
        return int(resolved[task])
    requested = _for_task(evaluation.get("num_fewshot"), task)
    return int(requested) if requested is not None else None


def task_limit(evaluation: Mapping[str, Any], task: str) -> int | float | None:
    """The ``limit`` ``task`` was scored under (a count, or a fraction below 1); None: all items."""
    return _for_task(evaluation.get("limit"), task)


def task_metric(evaluation: Mapping[str, Any], task: str) -> str:
    return (evaluation.get("metrics") or {}).get(task, DEFAULT_METRIC)


def limit_text(limit: int | float) -> str:
    if isinstance(limit, float) and limit < 1:
        return f"first {limit:.0%} of the items"
    return f"first {int(limit)} items"


def task_label(evaluation: Mapping[str, Any], task: str) -> str:
    """``task``'s metric, n-shot and limit in a few words, e.g. ``acc, 5-shot, first 50 items``."""
    shots = task_fewshot(evaluation, task)
    parts = [task_metric(evaluation, task),
             f"{shots}-shot" if shots is not None else "the task's default n-shot"]
    limit = task_limit(evaluation, task)
    if limit is not None:
        parts.append(limit_text(limit))
    return ", ".join(parts)
