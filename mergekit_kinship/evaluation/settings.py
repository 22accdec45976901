"""How every model of a run is scored (the recipe's ``evaluation:`` block) and its fingerprint.

Cheap to import (pydantic and the standard library only): the recipe schema imports it, and so
does every reader of a run directory. Nothing here asks lm-eval anything except its version;
checking the settings against lm-eval's task index is :mod:`mergekit_kinship.evaluation.tasks`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
from pathlib import Path
from typing import Any, Literal

import pydantic

from mergekit_kinship.errors import UserError

DEFAULT_METRIC = "acc"
# The seed lm-eval draws few-shot examples with unless told otherwise (its DEFAULT_OTHER_SEED);
# it chooses the examples, so it is part of what a score means and goes into the fingerprint.
FEWSHOT_SEED = 1234
FINGERPRINT_FORMAT = 1


class EvaluationSettings(pydantic.BaseModel, extra="forbid"):
    """How every model of a run is scored. Field names follow lm-eval's arguments."""

    tasks: list[str]
    include_path: str | None = None
    metrics: dict[str, str] = {}
    weights: dict[str, float] = {}
    # A number for every task, or task -> number; a task left out (or null) keeps its own
    # YAML's default (see :func:`effective_fewshot`) and is scored on every item.
    num_fewshot: int | dict[str, int | None] | None = None
    limit: int | float | dict[str, int | float | None] | None = None
    batch_size: int | str = 1
    apply_chat_template: bool = False
    backend: Literal["hf", "vllm"] = "hf"
    model_args: dict[str, Any] = {}
    device: str | None = None
    # What a child whose evaluation raises becomes (the error is journaled either way): the run
    # stops (resumable; Ray's --retries apply first), or it is retried ``retries`` more times
    # then skipped, or skipped at once. Not in the fingerprint: never changes a score.
    on_error: Literal["stop", "retry", "skip"] = "stop"
    retries: int = pydantic.Field(1, ge=0)
    # Staged evaluation (:mod:`mergekit_kinship.staging`): fractions of each task's items,
    # strictly increasing, the last 1.0; a child goes on to the next stage only while the
    # one-sided upper ``confidence`` bound on its fitness reaches the k-th best model's fitness.
    # The items of each stage are the first ones of a permutation seeded by ``subset_seed``, the
    # same for every model of the run. None (or [1.0]): every model scored on every item.
    # ``confidence`` and ``subset_seed`` are ignored without stages.
    stages: list[float] | None = None
    confidence: float = 0.95
    subset_seed: int = 0

    @pydantic.field_validator("tasks")
    @classmethod
    def _tasks_not_empty(cls, tasks):
        if not tasks:
            raise ValueError("list at least one lm-eval task")
        if len(set(tasks)) != len(tasks):
            raise ValueError("a task is listed twice")
        return tasks

    @pydantic.field_validator("num_fewshot", "limit", mode="before")
    @classmethod
    def _number_or_mapping(cls, value, info):
        # One line naming the task, where pydantic would list every member of the union.
        whole = info.field_name == "num_fewshot"
        what = "a whole number" if whole else "a number"

        def valid(item) -> bool:
            if item is None:
                return True
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                return False
            return not whole or float(item).is_integer()

        if isinstance(value, dict):
            for task, item in value.items():
                if not valid(item):
                    raise ValueError(f"{task}: {item!r} is not {what}")
        elif not valid(value):
            raise ValueError(f"{value!r} is not {what} or a mapping task -> {what[2:]}")
        return value

    @pydantic.field_validator("num_fewshot")
    @classmethod
    def _fewshot_not_negative(cls, value):
        for task, shots in _entries(value):
            if shots is not None and shots < 0:
                raise ValueError(f"{task}must be 0 or more")
        return value

    @pydantic.field_validator("limit")
    @classmethod
    def _limit_positive(cls, value):
        for task, limit in _entries(value):
            if limit is None:
                continue
            if not limit > 0:
                raise ValueError(f"{task}must be a count above 0 or a fraction in (0, 1)")
            if isinstance(limit, float) and limit >= 1 and not limit.is_integer():
                raise ValueError(f"{task}a fraction must be below 1; a count must be a whole number")
        return value

    @pydantic.field_validator("stages")
    @classmethod
    def _stages_plan(cls, stages):
        if stages is None:
            return None
        if not stages:
            raise ValueError("list at least one fraction, ending in 1.0 (or leave it out)")
        for fraction in stages:
            if not (math.isfinite(fraction) and 0 < fraction <= 1):
                raise ValueError(f"{fraction!r} is not a fraction in (0, 1]")
        if any(b <= a for a, b in zip(stages, stages[1:])):
            raise ValueError("fractions must be strictly increasing")
        if stages[-1] != 1.0:
            raise ValueError("the last stage must be 1.0 (the full tasks)")
        return None if stages == [1.0] else [float(f) for f in stages]

    @pydantic.field_validator("confidence")
    @classmethod
    def _confidence_level(cls, value):
        if not (0.5 <= value < 1):
            raise ValueError(f"{value!r}: a one-sided confidence level in [0.5, 1), e.g. 0.95")
        return value

    @pydantic.field_validator("weights")
    @classmethod
    def _weights_finite(cls, weights):
        for task, weight in weights.items():
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"weight of {task!r} must be a finite number >= 0")
        if weights and not sum(weights.values()) > 0:
            raise ValueError("the weights must not all be 0")
        return weights

    @pydantic.field_validator("batch_size")
    @classmethod
    def _batch_size(cls, value):
        if isinstance(value, int) and value < 1:
            raise ValueError("must be 1 or more, or 'auto'")
        if isinstance(value, str) and not (value == "auto" or value.startswith("auto:")):
            raise ValueError("must be a number or 'auto' / 'auto:N'")
        return value

    @pydantic.field_validator("model_args")
    @classmethod
    def _no_pretrained(cls, value):
        if "pretrained" in value:
            raise ValueError("'pretrained' is set to each model's path by mergekit-kinship; remove it")
        return value

    def metric_for(self, task: str) -> str:
        return self.metrics.get(task, DEFAULT_METRIC)

    def weight_for(self, task: str) -> float:
        return self.weights.get(task, 1.0)

    def fewshot_for(self, task: str) -> int | None:
        """The n-shot the recipe asks for ``task``; None: the task's own default."""
        return _for_task(self.num_fewshot, task)

    @property
    def staged(self) -> bool:
        """Scored in stages (:mod:`mergekit_kinship.staging`)."""
        return self.stages is not None

    def limit_for(self, task: str) -> int | float | None:
        """The recipe's ``limit`` for ``task`` (lm-eval's meaning: a count, or a fraction below
        1 of the task's items); None: every item."""
        return _for_task(self.limit, task)


def _entries(value) -> list[tuple[str, Any]]:
    """(prefix naming the task for an error message, value) of a per-task setting."""
    if isinstance(value, dict):
        return [(f"{task}: ", item) for task, item in value.items()]
    return [("", value)]


def _for_task(value, task: str):
    return value.get(task) if isinstance(value, dict) else value


def effective_fewshot(requested: int | None, task_default: int | None) -> int:
    """The n-shot lm-eval uses for one task: ``simple_evaluate``'s rule, applied per task.

    ``requested``: the recipe's value for the task (:meth:`EvaluationSettings.fewshot_for`);
    ``task_default``: ``num_fewshot`` in the task's YAML (None when it sets none). A task whose
    YAML pins 0 stays 0-shot (its prompt holds its own examples, e.g. TruthfulQA's); otherwise
    the recipe's value, else the task's default, else 0. The runner and ``plan --dry-run`` both
    use this function, so the dry run prints what the run will use.
    """
    if task_default == 0:
        return 0
    if requested is not None:
        return requested
    return task_default if task_default is not None else 0


def per_task_spelling(value, tasks: list[str]):
    """One canonical spelling of a per-task setting (``num_fewshot`` or ``limit``) over
    ``tasks``: the single value when every task gets the same one (so ``0`` and
    ``{every task: 0}`` are one setting, and a plain number keeps the spelling earlier versions
    fingerprinted), else task -> value for every task (None: the task's default / every item)."""
    values = {task: _for_task(value, task) for task in tasks}
    distinct = {json.dumps(v) for v in values.values()}
    if len(distinct) == 1:
        return next(iter(values.values()))
    return values


def lm_eval_version() -> str:
    return importlib.metadata.version("lm_eval")


def include_dir(settings: EvaluationSettings) -> str | None:
    """``settings.include_path`` as an absolute folder; UserError when it is not a folder."""
    if settings.include_path is None:
        return None
    path = Path(settings.include_path).expanduser()
    if not path.is_dir():
        raise UserError(f"evaluation.include_path: {settings.include_path} is not a folder")
    return str(path.resolve())


def _folder_digest(folder: str) -> str:
    """SHA-256 over the relative names and bytes of every file under ``folder`` (task YAML and
    data are small; a changed question or prompt must change the fingerprint)."""
    digest = hashlib.sha256()
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def evaluation_fingerprint(settings: EvaluationSettings) -> dict:
    """Everything that changes a task's score, as a JSON-able dict; hash it to key cached scores.

    In: the tasks, the metric taken from each, ``num_fewshot`` and ``limit`` (as
    :func:`per_task_spelling` writes them: a change of either for any task changes the
    fingerprint, another spelling of the same per-task values does not; a task's default written
    out, e.g. ``gsm8k: 5`` where gsm8k's YAML says 5, counts as a change, since the defaults are
    not known without lm-eval's task index),
    ``apply_chat_template``, backend, ``model_args`` (dtype ...), the few-shot seed, the lm-eval
    version, and a content digest of ``include_path`` (so an edited local task re-scores; the
    folder's location is not in, so a moved folder does not).
    With ``stages``: the stage plan, ``confidence`` and ``subset_seed`` too (they decide which
    items a model is scored on, so a model's recorded evaluation means something else); without
    them none of the three is in, so the fingerprint of a recipe without stages is the one
    earlier versions wrote and their cached scores stay valid.
    Out: ``weights`` (they change the fitness, not a score: recompute it with
    :func:`~mergekit_kinship.evaluation.scores.fitness`), ``batch_size`` and ``device`` (they
    change floating-point rounding only, not the task), ``on_error`` and ``retries``.
    """
    fingerprint = items_fingerprint(settings)
    if settings.staged:
        fingerprint.update(stages=list(settings.stages), confidence=settings.confidence,
                           subset_seed=settings.subset_seed)
    return fingerprint


def items_fingerprint(settings: EvaluationSettings) -> dict:
    """What one item's result depends on: :func:`evaluation_fingerprint` without the stage plan
    (equal to it for a recipe without stages). Per-item results are cached under it, so a run
    with other stages, confidence or subset seed reuses every item already scored."""
    include_path = include_dir(settings)
    return {
        "format": FINGERPRINT_FORMAT,
        "lm_eval_version": lm_eval_version(),
        "tasks": list(settings.tasks),
        "metrics": {task: settings.metric_for(task) for task in settings.tasks},
        "include_path_sha256": _folder_digest(include_path) if include_path else None,
        "num_fewshot": per_task_spelling(settings.num_fewshot, settings.tasks),
        "limit": per_task_spelling(settings.limit, settings.tasks),
        "apply_chat_template": settings.apply_chat_template,
        "backend": settings.backend,
        "model_args": dict(sorted(settings.model_args.items())),
        "fewshot_seed": FEWSHOT_SEED,
    }


def fingerprint_hash(settings: EvaluationSettings) -> str:
    """Short stable hash of :func:`evaluation_fingerprint`."""
    text = json.dumps(evaluation_fingerprint(settings), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
