"""The recipe's tasks against lm-eval's task index: validation, metric keys, and task specs.

Only lm-eval's public task API is used: ``TaskManager`` (its ``all_subtasks``, ``all_groups``,
``all_tags`` and ``task_index`` properties, whose entries carry ``yaml_path`` and the YAML as
``cfg``; ``load`` of a name or a YAML file), and ``lm_eval.api.registry.DEFAULT_METRIC_REGISTRY``
for the metrics a task without a ``metric_list`` reports.

Building a ``TaskManager`` indexes every YAML file lm-eval ships (~10 s on 2 busy CPU cores, of
which ~3 s is importing lm-eval), so one is cached per process and per ``include_path``. When every
requested task lives in ``include_path`` only that folder is indexed (a fraction of a second).

Local task YAML may give ``dataset_kwargs.data_files`` relative to the YAML file's own folder
(lm-eval itself resolves them against the current directory): :func:`task_specs` hands such a
task to lm-eval as a small YAML file that ``include:``\\ s the task's own file and gives the paths
made absolute, so a task folder works from any directory.

lm-eval is imported inside the functions, never at module level, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from mergekit_kinship.errors import UserError, did_you_mean
from mergekit_kinship.evaluation.settings import EvaluationSettings, include_dir


@functools.lru_cache(maxsize=8)
def _task_manager(include_path: str | None, include_defaults: bool):
    """One TaskManager per (folder, with lm-eval's own tasks or not) and process."""
    from lm_eval.tasks import TaskManager

    if include_path is None and not include_defaults:
        raise ValueError("a TaskManager needs include_path or lm-eval's own tasks")
    return TaskManager(include_path=include_path, include_defaults=include_defaults)


def task_manager_for(settings: EvaluationSettings):
    """The cached TaskManager that knows every task of ``settings`` (cheapest one that does)."""
    include_path = include_dir(settings)
    if include_path is not None:
        local = _task_manager(include_path, False)
        if all(task in local.task_index for task in settings.tasks):
            return local
    return _task_manager(include_path, True)


@dataclass(frozen=True)
class _Names:
    """A TaskManager's names by kind, as sets (its public lists, made cheap to look up)."""

    groups: frozenset[str]
    tags: frozenset[str]
    subtasks: frozenset[str]


@functools.lru_cache(maxsize=8)
def _names(manager) -> _Names:
    return _Names(frozenset(manager.all_groups), frozenset(manager.all_tags),
                  frozenset(manager.all_subtasks))


def is_yaml_task(manager, name: str) -> bool:
    """A task defined by YAML alone (a Python-defined task's YAML names its ``class``)."""
    entry = manager.task_index.get(name)
    return name in _names(manager).subtasks and entry is not None and "class" not in (entry.cfg or {})


def _reported_metrics(manager, name: str) -> list[str] | None:
    """The ``metric,filter`` keys lm-eval will report for a task or group, read from its YAML
    without building it (building a task loads its dataset). ``None`` when they cannot be known
    before running (Python-defined tasks)."""
    from lm_eval.api.registry import DEFAULT_METRIC_REGISTRY

    cfg = manager.task_index[name].cfg or {}
    if name in _names(manager).groups:
        keys = []
        for item in cfg.get("aggregate_metric_list") or []:
            filters = item.get("filter_list", "none")
            for filter_name in filters if isinstance(filters, list) else [filters]:
                keys.append(f"{item['metric']},{filter_name}")
        return keys
    if not is_yaml_task(manager, name):
        return None
    metric_list = cfg.get("metric_list")
    if metric_list:
        metrics = [item["metric"] for item in metric_list if isinstance(item.get("metric"), str)]
        if len(metrics) != len(metric_list):
            return None  # a metric given as a function: its name is only known at run time
    else:
        metrics = DEFAULT_METRIC_REGISTRY.get(cfg.get("output_type", "generate_until"), [])
    filters = [item["name"] for item in cfg.get("filter_list") or []] or ["none"]
    return [f"{metric},{filter_name}" for metric in metrics for filter_name in filters]


def resolve_metric_key(task: str, metric: str, reported: list[str]) -> str:
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

    Raises UserError (one line naming the field) for the vllm backend when vllm is not
    installed, a missing include_path, an unknown task (with the closest known name), a tag (it
    has no score of its own), weights or metrics naming a task that is not in ``tasks``, or a
    metric the task does not report. The tasks are checked before the metrics and weights that
    name them, so a misspelled task is reported against ``evaluation.tasks``.
    """
    if settings.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise UserError("evaluation.backend: vllm is not installed (pip install vllm), use 'hf'")
    manager = task_manager_for(settings)
    names = _names(manager)
    for task in settings.tasks:
        if task not in manager.task_index:
            where = f" or in {settings.include_path}" if settings.include_path else ""
            raise UserError(f"evaluation.tasks: unknown lm-eval task {task!r} (not in lm-eval{where})"
                            + did_you_mean(task, names.subtasks | names.groups, list_options=False))
        if task in names.tags:
            raise UserError(
                f"evaluation.tasks: {task!r} is an lm-eval tag with no score of its own; "
                f"list its tasks instead"
            )
    for field_name in ("metrics", "weights", "num_fewshot", "limit"):
        value = getattr(settings, field_name)
        for task in value if isinstance(value, dict) else ():
            if task not in settings.tasks:
                raise UserError(
                    f"evaluation.{field_name}: {task!r} is not one of evaluation.tasks "
                    f"({', '.join(settings.tasks)})" + did_you_mean(task, settings.tasks, list_options=False)
                )
    for task in settings.tasks:
        reported = _reported_metrics(manager, task)
        if reported is not None:
            resolve_metric_key(task, settings.metric_for(task), reported)
    if settings.staged:
        for task in settings.tasks:
            check_mean_over_items(manager, task, settings.metric_for(task))
    if isinstance(settings.num_fewshot, dict):
        for task, shots in settings.num_fewshot.items():
            pinned = [leaf for leaf, cfg in index_leaves(manager, task) if cfg.get("num_fewshot") == 0]
            if shots and pinned:
                # simple_evaluate's rule (effective_fewshot): lm-eval would score it 0-shot anyway.
                which = task if pinned == [task] else f"{task} ({pinned[0]} ...)"
                raise UserError(
                    f"evaluation.num_fewshot.{task}: {which} pins num_fewshot to 0 in its YAML "
                    f"(its prompt holds its own examples) and lm-eval ignores any other value; "
                    f"write 0 or leave it out")


def check_mean_over_items(manager, task: str, metric: str) -> None:
    """UserError unless ``task``'s score under ``metric`` is the mean of its items' values (lm-eval's
    ``mean`` aggregation), read from its YAML; staged evaluation scores a subset of the items, so
    a stage score must be a subset mean. A group is refused (its score is made of its tasks'), a
    Python-defined task is checked when it is built (the runner refuses it there)."""
    from lm_eval.api.metrics import mean
    from lm_eval.api.registry import get_aggregation, get_metric_aggregation

    name = metric.split(",", 1)[0]
    refuse = (f"evaluation.stages: {task}'s {name} is not a mean over its items "
              f"(lm-eval's aggregation: {{}}), so a stage cannot score part of its items; remove "
              f"evaluation.stages")
    if task in _names(manager).groups:
        raise UserError(f"evaluation.stages: {task} is a group of lm-eval tasks (its score is made "
                        f"of its tasks' scores); list its tasks instead, or remove evaluation.stages")
    if not is_yaml_task(manager, task):
        return
    cfg = manager.task_index[task].cfg or {}
    given = next((item.get("aggregation") for item in cfg.get("metric_list") or []
                  if item.get("metric") == name), None)
    try:
        aggregation = (get_aggregation(given) if isinstance(given, str) else given) \
            if given is not None else get_metric_aggregation(name)
    except (KeyError, ValueError, AttributeError):
        aggregation = None
    if aggregation is not mean:
        raise UserError(refuse.format(getattr(aggregation, "__name__", given or "unknown")))


def _group_fields() -> frozenset[str]:
    """The keys of a group's YAML that shape the group; the others are overrides that lm-eval
    applies to every task of the group."""
    import dataclasses

    from lm_eval.api.group import GroupConfig

    return frozenset(field.name for field in dataclasses.fields(GroupConfig))


def index_leaves(manager, name: str, overrides: dict | None = None) -> list[tuple[str, dict]]:
    """The tasks lm-eval scores for ``name`` (a task, group or tag), each with its
    configuration as lm-eval will build it, read from the task index without building anything
    (building loads the dataset): the task's YAML (includes resolved) under the overrides its
    groups apply (a group's non-structural keys, then each member entry's own keys, as lm-eval's
    task factory merges them). A Python-defined task's configuration is what its YAML says."""
    overrides = dict(overrides or {})
    names = _names(manager)
    entry = manager.task_index.get(name)
    if entry is None:  # an inline task of a group: its entry is its whole configuration
        return [(name, overrides)]
    cfg = dict(entry.cfg or {})
    if name in names.tags:
        return [leaf for member in sorted(entry.tags) for leaf in index_leaves(manager, member, overrides)]
    if name not in names.groups:
        return [(name, {**cfg, **overrides})]
    structural = _group_fields()
    merged = {**{k: v for k, v in cfg.items() if k not in structural}, **overrides}
    members = cfg.get("task") or []
    leaves = []
    for item in members if isinstance(members, list) else [members]:
        if isinstance(item, str):
            leaves += index_leaves(manager, item, merged)
        elif isinstance(item, dict) and isinstance(item.get("task"), str):
            leaves += index_leaves(manager, item["task"],
                                   {**merged, **{k: v for k, v in item.items() if k != "task"}})
        elif isinstance(item, dict) and isinstance(item.get("group"), str):
            rest = {k: v for k, v in item.items() if k != "group"}
            if item["group"] in manager.task_index:
                leaves += index_leaves(manager, item["group"], {**merged, **rest})
            else:  # an inline group: its own members, under its own overrides
                inner = {k: v for k, v in rest.items() if k not in structural}
                for member in rest.get("task") or []:
                    member_name = member if isinstance(member, str) else member.get("task")
                    extra = {} if isinstance(member, str) else {
                        k: v for k, v in member.items() if k != "task"}
                    leaves += index_leaves(manager, member_name, {**merged, **inner, **extra})
    return leaves


def _absolute_data_files(manager, name: str) -> dict | None:
    """The ``dataset_kwargs`` of a YAML task whose ``data_files`` are relative to its own folder,
    with those paths made absolute; ``None`` when nothing needs resolving."""
    entry = manager.task_index.get(name)
    if entry is None or entry.yaml_path is None or not is_yaml_task(manager, name):
        return None
    dataset_kwargs = (entry.cfg or {}).get("dataset_kwargs") or {}
    data_files = dataset_kwargs.get("data_files")
    if data_files is None:
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
    return {**dataset_kwargs, "data_files": resolved} if changed else None


@contextlib.contextmanager
def task_specs(settings: EvaluationSettings, manager) -> Iterator[list[str]]:
    """What to pass to ``manager.load`` (or ``lm_eval.simple_evaluate``'s ``tasks``) for
    ``settings.tasks``: each task's name, or for a local task with relative ``data_files`` the
    path of a YAML file that includes the task's own file and overrides its ``dataset_kwargs``
    with absolute paths (the task keeps its name, prompts and functions). The files live in a
    temporary folder until the context exits; lm-eval reads them when it builds the tasks."""
    import yaml

    with tempfile.TemporaryDirectory(prefix="mergekit-kinship-tasks-") as folder:
        specs = []
        for number, task in enumerate(settings.tasks):
            dataset_kwargs = _absolute_data_files(manager, task)
            if dataset_kwargs is None:
                specs.append(task)
                continue
            path = Path(folder) / f"task-{number}.yaml"  # task names may hold any character
            path.write_text(yaml.safe_dump({
                "include": str(Path(manager.task_index[task].yaml_path).resolve()),
                "dataset_kwargs": dataset_kwargs,
            }))
            specs.append(str(path))
        yield specs
