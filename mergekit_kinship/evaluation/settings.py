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
    num_fewshot: int | None = None
    limit: int | float | None = None
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

    @pydantic.field_validator("tasks")
    @classmethod
    def _tasks_not_empty(cls, tasks):
        if not tasks:
            raise ValueError("list at least one lm-eval task")
        if len(set(tasks)) != len(tasks):
            raise ValueError("a task is listed twice")
        return tasks

    @pydantic.field_validator("num_fewshot")
    @classmethod
    def _fewshot_not_negative(cls, value):
        if value is not None and value < 0:
            raise ValueError("must be 0 or more")
        return value

    @pydantic.field_validator("limit")
    @classmethod
    def _limit_positive(cls, value):
        if value is not None and not value > 0:
            raise ValueError("must be a count above 0 or a fraction in (0, 1)")
        if isinstance(value, float) and value >= 1 and not value.is_integer():
            raise ValueError("a fraction must be below 1; a count must be a whole number")
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

    In: the tasks, the metric taken from each, ``num_fewshot``, ``limit``,
    ``apply_chat_template``, backend, ``model_args`` (dtype ...), the few-shot seed, the lm-eval
    version, and a content digest of ``include_path`` (so an edited local task re-scores; the
    folder's location is not in, so a moved folder does not).
    Out: ``weights`` (they change the fitness, not a score: recompute it with
    :func:`~mergekit_kinship.evaluation.scores.fitness`), ``batch_size`` and ``device`` (they
    change floating-point rounding only, not the task).
    """
    include_path = include_dir(settings)
    return {
        "format": FINGERPRINT_FORMAT,
        "lm_eval_version": lm_eval_version(),
        "tasks": list(settings.tasks),
        "metrics": {task: settings.metric_for(task) for task in settings.tasks},
        "include_path_sha256": _folder_digest(include_path) if include_path else None,
        "num_fewshot": settings.num_fewshot,
        "limit": settings.limit,
        "apply_chat_template": settings.apply_chat_template,
        "backend": settings.backend,
        "model_args": dict(sorted(settings.model_args.items())),
        "fewshot_seed": FEWSHOT_SEED,
    }


def fingerprint_hash(settings: EvaluationSettings) -> str:
    """Short stable hash of :func:`evaluation_fingerprint`."""
    text = json.dumps(evaluation_fingerprint(settings), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
