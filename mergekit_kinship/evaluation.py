"""The lm-eval adapter: score one model on the recipe's tasks and turn the scores into a fitness.

Everything goes through lm-eval's public Python API (``lm_eval.simple_evaluate`` and
``lm_eval.tasks.TaskManager``); the user's lm-eval arguments (tasks, ``include_path``,
``num_fewshot``, ``limit``, batch size, ``apply_chat_template``, ``model_args``, backend ``hf`` or
``vllm``) are passed through unchanged. Scores are what lm-eval reports, in [0, 1] for accuracy-like
metrics; the fitness is their weighted mean (the paper's P̄ is the unweighted mean).

Building a ``TaskManager`` indexes every YAML file lm-eval ships (~10 s on 2 busy CPU cores, of
which ~3 s is importing lm-eval), so one is cached per process and per ``include_path``. When every
requested task lives in ``include_path`` only that folder is indexed (a fraction of a second).

Local task YAML may give ``dataset_kwargs.data_files`` relative to the YAML file's own folder
(lm-eval itself resolves them against the current directory): such tasks are handed to lm-eval as
an inline config with the paths made absolute, so a task folder works from any directory.

lm-eval is imported inside the functions, never at module level, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import logging
import importlib.metadata
import importlib.util
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydantic

from mergekit_kinship.errors import UserError

DEFAULT_METRIC = "acc"
# lm-eval's per-task default metrics when a task YAML has no metric_list (lm_eval.api.registry).
_DEFAULT_METRICS_BY_OUTPUT_TYPE = {
    "loglikelihood": ["perplexity", "acc"],
    "loglikelihood_rolling": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
    "multiple_choice": ["acc", "acc_norm"],
    "generate_until": ["exact_match"],
}
# Seeds lm-eval uses unless told otherwise; they choose the few-shot examples, so they are part of
# what a score means and go into the fingerprint.
_FEWSHOT_SEED = 1234
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


@dataclass
class EvaluationResult:
    """One model's scores.

    ``scores``: task -> the chosen metric as lm-eval reports it (accuracies in [0, 1]).
    ``stderr``: task -> lm-eval's standard error of that score (absent where lm-eval gives none).
    ``samples``: task -> number of documents actually scored (after ``limit``).
    ``n_shot``: task -> few-shot examples lm-eval actually used (a task may pin its own).
    ``seconds``: wall-clock time of the evaluation, model loading included.
    """

    scores: dict[str, float]
    fitness: float
    lm_eval_version: str
    seconds: float
    stderr: dict[str, float] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)
    n_shot: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "EvaluationResult":
        return cls(**data)


def lm_eval_version() -> str:
    return importlib.metadata.version("lm_eval")


def fitness(scores: dict[str, float], settings: EvaluationSettings) -> float:
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


# ---------------------------------------------------------------------------------- task index


def _include_dir(settings: EvaluationSettings) -> str | None:
    if settings.include_path is None:
        return None
    path = Path(settings.include_path).expanduser()
    if not path.is_dir():
        raise UserError(f"evaluation.include_path: {settings.include_path} is not a folder")
    return str(path.resolve())


@functools.lru_cache(maxsize=8)
def _task_manager(include_path: str | None, include_defaults: bool):
    """One TaskManager per (folder, with lm-eval's own tasks or not) and process."""
    from lm_eval.tasks import TaskManager

    if include_path is None and not include_defaults:
        raise ValueError("a TaskManager needs include_path or lm-eval's own tasks")
    return TaskManager(include_path=include_path, include_defaults=include_defaults)


def task_manager_for(settings: EvaluationSettings):
    """The cached TaskManager that knows every task of ``settings`` (cheapest one that does)."""
    include_path = _include_dir(settings)
    if include_path is not None:
        local = _task_manager(include_path, False)
        if all(task in local.task_index for task in settings.tasks):
            return local
    return _task_manager(include_path, True)


def _reported_metrics(entry) -> list[str] | None:
    """The ``metric,filter`` keys lm-eval will report for a task or group, read from its YAML
    without building it (building a task loads its dataset). ``None`` when they cannot be known
    before running (Python-defined tasks)."""
    from lm_eval.tasks._index import Kind

    cfg = entry.cfg or {}
    if entry.kind == Kind.GROUP:
        keys = []
        for item in cfg.get("aggregate_metric_list") or []:
            filters = item.get("filter_list", "none")
            for name in filters if isinstance(filters, list) else [filters]:
                keys.append(f"{item['metric']},{name}")
        return keys
    if entry.kind != Kind.TASK:
        return None
    metric_list = cfg.get("metric_list")
    if metric_list:
        metrics = [item["metric"] for item in metric_list if isinstance(item.get("metric"), str)]
        if len(metrics) != len(metric_list):
            return None  # a metric given as a function: its name is only known at run time
    else:
        metrics = _DEFAULT_METRICS_BY_OUTPUT_TYPE.get(cfg.get("output_type", "generate_until"), [])
    filters = [item["name"] for item in cfg.get("filter_list") or []] or ["none"]
    return [f"{metric},{name}" for metric in metrics for name in filters]


def _resolve_metric_key(task: str, metric: str, reported: list[str]) -> str:
    """Map the user's metric name ("acc", or "exact_match,strict-match") to the key lm-eval uses."""
    if metric in reported:
        return metric
    if f"{metric},none" in reported:
        return f"{metric},none"
    candidates = [key for key in reported if key.split(",", 1)[0] == metric]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise UserError(
            f"evaluation.metrics.{task}: {metric!r} is reported under several filters; "
            f"choose one of {', '.join(candidates)}"
        )
    names = sorted({key.split(",", 1)[0] for key in reported}) or ["(none)"]
    raise UserError(
        f"evaluation.metrics.{task}: task {task!r} does not report {metric!r} "
        f"(it reports {', '.join(names)})"
    )


def validate_evaluation(settings: EvaluationSettings) -> None:
    """Check the settings against lm-eval's task index without loading any model or dataset.

    Raises UserError (one line naming the field) for a missing include_path, an unknown task, a tag
    (it has no score of its own), a metric the task does not report, weights or metrics naming a
    task that is not in ``tasks``, or the vllm backend when vllm is not installed.
    """
    from lm_eval.tasks._index import Kind

    for field_name in ("metrics", "weights"):
        for task in getattr(settings, field_name):
            if task not in settings.tasks:
                raise UserError(
                    f"evaluation.{field_name}: {task!r} is not one of evaluation.tasks "
                    f"({', '.join(settings.tasks)})"
                )
    if settings.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise UserError("evaluation.backend: vllm is not installed (pip install vllm), use 'hf'")
    manager = task_manager_for(settings)
    for task in settings.tasks:
        entry = manager.task_index.get(task)
        if entry is None:
            where = f" or in {settings.include_path}" if settings.include_path else ""
            raise UserError(f"evaluation.tasks: unknown lm-eval task {task!r} (not in lm-eval{where})")
        if entry.kind == Kind.TAG:
            raise UserError(
                f"evaluation.tasks: {task!r} is an lm-eval tag with no score of its own; "
                f"list its tasks instead"
            )
        reported = _reported_metrics(entry)
        if reported is not None:
            _resolve_metric_key(task, settings.metric_for(task), reported)


# ---------------------------------------------------------------------------------- fingerprint


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
    Out: ``weights`` (they change the fitness, not a score: recompute it with :func:`fitness`),
    ``batch_size`` and ``device`` (they change floating-point rounding only, not the task).
    """
    include_path = _include_dir(settings)
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
        "fewshot_seed": _FEWSHOT_SEED,
    }


def fingerprint_hash(settings: EvaluationSettings) -> str:
    """Short stable hash of :func:`evaluation_fingerprint`."""
    import json

    text = json.dumps(evaluation_fingerprint(settings), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------- evaluation


def _with_absolute_data_files(entry) -> dict | None:
    """The full config of a local YAML task whose ``data_files`` are relative to its own folder,
    with those paths made absolute; ``None`` when nothing needs resolving."""
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = entry.cfg or {}
    data_files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if entry.yaml_path is None or data_files is None:
        return None
    folder = Path(entry.yaml_path).parent
    changed = False

    def absolute(value):
        nonlocal changed
        if isinstance(value, str):
            candidate = folder / value
            if not os.path.isabs(value) and "://" not in value and candidate.exists():
                changed = True
                return str(candidate.resolve())
            return value
        if isinstance(value, list):
            return [absolute(item) for item in value]
        if isinstance(value, dict):
            return {key: absolute(item) for key, item in value.items()}
        return value

    resolved = absolute(data_files)
    if not changed:
        return None
    full = load_yaml(entry.yaml_path, resolve_func=True, recursive=True)
    full.setdefault("dataset_kwargs", {})
    full["dataset_kwargs"] = {**full["dataset_kwargs"], "data_files": resolved}
    return full


def _task_specs(settings: EvaluationSettings, manager) -> list:
    from lm_eval.tasks._index import Kind

    specs = []
    for task in settings.tasks:
        entry = manager.task_index.get(task)
        inline = _with_absolute_data_files(entry) if entry and entry.kind == Kind.TASK else None
        specs.append(inline if inline is not None else task)
    return specs


def resolve_device(settings: EvaluationSettings) -> str:
    if settings.device is not None:
        return settings.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _as_float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _routine_warning(record: logging.LogRecord) -> bool:
    """False for two lm-eval warnings that every evaluation of a task repeats and that say
    nothing is wrong: a task with a ``custom_dataset`` loader (two lines per task and model; the
    built-in family's tasks have one), and ``num_fewshot`` set where the task has no default."""
    message = record.getMessage()
    return not ("Custom kwargs can be passed to `--metadata`" in message
                or (message.startswith("Overwriting default num_fewshot of ") and " from None to " in message))


@contextlib.contextmanager
def _quiet_libraries():
    """Silence lm-eval's INFO lines (several per task and model), its routine warnings
    (:func:`_routine_warning`) and transformers' weight-loading bar while one model is scored:
    over a run of dozens of children they bury the run's own progress and tables. Other warnings
    and errors still show."""
    from transformers.utils import logging as hf_logging

    logger = logging.getLogger("lm_eval")
    routine = [logging.getLogger(name) for name in ("lm_eval.api.task", "lm_eval.evaluator")]
    level, bars = logger.level, hf_logging.is_progress_bar_enabled()
    logger.setLevel(max(level, logging.WARNING))
    for emitter in routine:
        emitter.addFilter(_routine_warning)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        logger.setLevel(level)
        for emitter in routine:
            emitter.removeFilter(_routine_warning)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _no_environment_report():
    """lm-eval's ``simple_evaluate`` adds an environment report to every result: torch's
    ``collect_env`` (about 1 s of subprocesses per evaluation, as long as scoring a tiny model
    takes) and ``git describe`` of the working directory (which prints ``fatal: not a git
    repository`` to stderr outside one). Nothing here reads either: skip both while scoring."""
    import lm_eval.evaluator

    saved = {name: getattr(lm_eval.evaluator, name) for name in ("add_env_info", "get_git_commit_hash")
             if hasattr(lm_eval.evaluator, name)}
    if "add_env_info" in saved:
        lm_eval.evaluator.add_env_info = lambda storage: None
    if "get_git_commit_hash" in saved:
        lm_eval.evaluator.get_git_commit_hash = lambda: None
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(lm_eval.evaluator, name, function)


def evaluate(model_path: str | os.PathLike, settings: EvaluationSettings) -> EvaluationResult:
    """Score the model folder ``model_path`` on ``settings.tasks`` with ``lm_eval.simple_evaluate``.

    The model is loaded by lm-eval's ``hf`` (on ``settings.device``, default CUDA when available)
    or ``vllm`` backend and released afterwards, so a long run holds one model at a time. Requests
    are not cached and samples are not logged. Raises UserError for settings lm-eval rejects
    (see :func:`validate_evaluation`), a model path that is not a folder, or a task that did not
    report the chosen metric.
    """
    model_path = Path(model_path)
    if not model_path.is_dir():
        raise UserError(f"model {model_path} is not a folder")
    if "tokenizer" not in settings.model_args and not any(
        (model_path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    ):
        raise UserError(f"model {model_path} has no tokenizer files (lm-eval needs one; "
                        f"or name one with evaluation.model_args.tokenizer)")
    validate_evaluation(settings)
    manager = task_manager_for(settings)

    import lm_eval

    model_args = {"pretrained": str(model_path.resolve()), **settings.model_args}
    device = resolve_device(settings) if settings.backend == "hf" else None
    started = time.perf_counter()
    try:
        with _quiet_libraries(), _no_environment_report():
            output = lm_eval.simple_evaluate(
                model=settings.backend,
                model_args=model_args,
                tasks=_task_specs(settings, manager),
                num_fewshot=settings.num_fewshot,
                limit=settings.limit,
                batch_size=settings.batch_size,
                device=device,
                apply_chat_template=settings.apply_chat_template,
                task_manager=manager,
                log_samples=False,
                fewshot_random_seed=_FEWSHOT_SEED,
            )
    finally:
        # lm-eval keeps no reference to the model after returning; collect it now so that the next
        # child does not meet this one's memory (matters on a GPU).
        gc.collect()
        if device is not None and device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
    seconds = time.perf_counter() - started
    if output is None:  # not rank 0 of a distributed lm-eval run
        raise RuntimeError("lm-eval returned no results (not the main process?)")

    results = output["results"]
    scores, stderr, samples, n_shot = {}, {}, {}, {}
    for task in settings.tasks:
        if task not in results:
            raise UserError(f"evaluation.tasks: lm-eval returned no result for {task!r}")
        reported = [key for key in results[task] if "," in key and "_stderr," not in key]
        key = _resolve_metric_key(task, settings.metric_for(task), reported)
        value = _as_float(results[task][key])
        if value is None:
            raise UserError(f"evaluation.metrics.{task}: lm-eval reported {key}={results[task][key]!r}")
        scores[task] = value
        metric, _, filter_name = key.partition(",")
        err = _as_float(results[task].get(f"{metric}_stderr,{filter_name}"))
        if err is not None:
            stderr[task] = err
        count = (output.get("n-samples") or {}).get(task, {}).get("effective")
        if count is not None:
            samples[task] = int(count)
        shots = (output.get("n-shot") or {}).get(task)
        if shots is not None:
            n_shot[task] = int(shots)
    return EvaluationResult(
        scores=scores,
        fitness=fitness(scores, settings),
        lm_eval_version=lm_eval_version(),
        seconds=seconds,
        stderr=stderr,
        samples=samples,
        n_shot=n_shot,
    )
