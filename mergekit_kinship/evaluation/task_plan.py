"""Per task of the recipe: the n-shot, the items and the metric a run uses.

One rule for both sides. The runner applies :func:`apply_fewshot` and :func:`limited_items` to
the tasks lm-eval built for a model; ``plan --dry-run`` describes the same (:func:`task_plans`)
from lm-eval's task index, and for local tasks from the tasks built the same way. Nothing is
downloaded: a task whose data is on the Hub is described from its YAML alone, and its item
count is "not known offline".

A recipe task may be an lm-eval group (``mmlu``): its ``num_fewshot`` and ``limit`` apply to each
task of the group, as lm-eval's own ``num_fewshot`` and ``limit`` do.

lm-eval is imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from mergekit_kinship.evaluation.settings import (FEWSHOT_SEED, EvaluationSettings,
                                                  effective_fewshot, include_dir)

# datasets' builders for local files: a task built on one of them (with its data_files) reads
# no network.
LOCAL_BUILDERS = frozenset({"json", "csv", "parquet", "arrow", "text", "pandas"})


# ------------------------------------------------------------------------- the runner's side


def leaf_tasks(loaded: dict, task: str) -> dict[str, Any]:
    """The lm-eval ``Task`` objects scored for the recipe task ``task`` (a task, or every task
    of a group), by name, from ``TaskManager.load``'s result."""
    groups = loaded.get("groups") or {}
    if task in groups:
        return {leaf.task_name: leaf for leaf in groups[task].get_all_tasks()}
    return {task: loaded["tasks"][task]}


def apply_fewshot(settings: EvaluationSettings, loaded: dict) -> None:
    """Set each built task's n-shot (:func:`~mergekit_kinship.evaluation.settings.effective_fewshot`
    of the recipe's value and the task's own) and its few-shot seed, as ``simple_evaluate`` does
    for one ``num_fewshot``."""
    for task in settings.tasks:
        requested = settings.fewshot_for(task)
        for leaf in leaf_tasks(loaded, task).values():
            leaf.set_config(key="num_fewshot",
                            value=effective_fewshot(requested, leaf.get_config("num_fewshot")))
            leaf.set_fewshot_seed(seed=FEWSHOT_SEED)


def item_count(leaf, limit: int | float | None) -> int:
    """How many items of the built task ``leaf`` lm-eval scores under ``limit`` (its own
    ``get_sample_size``: a count, or a fraction below 1 rounded up), at most all of them."""
    from lm_eval.evaluator_utils import get_sample_size

    total = len(leaf.eval_docs)
    count = get_sample_size(leaf, limit)
    return total if count is None else min(count, total)


def limited_items(settings: EvaluationSettings, loaded: dict) -> dict[str, list[int]]:
    """lm-eval's ``samples=`` for the recipe's per-task ``limit``: for each task of a recipe
    task with a limit, the indices of its first :func:`item_count` items (the items lm-eval's
    ``limit=`` scores); tasks without a limit are absent, so lm-eval scores them in full."""
    samples: dict[str, list[int]] = {}
    for task in settings.tasks:
        limit = settings.limit_for(task)
        if limit is None:
            continue
        for name, leaf in leaf_tasks(loaded, task).items():
            samples[name] = list(range(item_count(leaf, limit)))
    return samples


def mean_metric_tasks(settings: EvaluationSettings, loaded: dict) -> dict[str, Any]:
    """The recipe tasks whose score is the mean of their items' values, by name (the built
    lm-eval task): a task, not a group, whose chosen metric lm-eval aggregates with its own
    ``mean``. Their per-item results are recorded, and only they can be scored in stages."""
    from lm_eval.api.metrics import mean

    groups = loaded.get("groups") or {}
    out = {}
    for task in settings.tasks:
        if task in groups or task not in loaded["tasks"]:
            continue
        leaf = loaded["tasks"][task]
        metric = settings.metric_for(task).split(",", 1)[0]
        if (leaf.aggregation() or {}).get(metric) is mean:
            out[task] = leaf
    return out


def select_items(settings: EvaluationSettings, loaded: dict, items: dict[str, list[int]]
                 ) -> tuple[dict, dict[str, list[int]]]:
    """lm-eval's ``task_dict`` and ``samples=`` that score exactly ``items`` (task -> sorted
    item indices, each below the task's :func:`item_count`): the tasks with at least one item,
    no group (lm-eval takes a non-empty sorted list per task: its ``doc_iterator`` maps the
    n-th document it yields to ``samples[n]``). UserError for a task whose score is not a mean
    over its items (:func:`mean_metric_tasks`)."""
    from mergekit_kinship.errors import UserError

    capable = mean_metric_tasks(settings, loaded)
    chosen, samples = {}, {}
    for task, indices in items.items():
        if not indices:
            continue
        if task not in capable:
            raise UserError(f"evaluation.stages: {task}'s {settings.metric_for(task)} is not a "
                            f"mean over its items (lm-eval's aggregation), so it cannot be "
                            f"scored on a subset of them; remove evaluation.stages")
        total = item_count(capable[task], settings.limit_for(task))
        ordered = sorted(set(indices))
        if ordered[-1] >= total or ordered[0] < 0:
            raise ValueError(f"{task}: item {ordered[-1]} of {total}")
        chosen[task], samples[task] = capable[task], ordered
    return {"tasks": chosen, "groups": {}}, samples


# ------------------------------------------------------------------------- the dry run's side


@dataclass(frozen=True)
class TaskPlan:
    """What a run does for one recipe task.

    ``num_fewshot``: the n-shot every lm-eval task under it uses (None when unknown, or when
    the tasks of a group differ: see ``fewshot_source``). ``items``: how many items are scored
    (after ``limit``), ``items_total`` how many the task has; None when not known offline
    (``items_note`` says why). ``subtasks``: how many lm-eval tasks are scored for it (1, or
    the tasks of a group)."""

    task: str
    metric: str
    num_fewshot: Optional[int]
    fewshot_source: str
    limit: int | float | None
    items: Optional[int]
    items_total: Optional[int]
    items_note: str
    subtasks: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fewshot_source(requested: int | None, task_default: int | None) -> str:
    if task_default == 0 and requested:
        return "the task pins 0"
    if requested is not None:
        return "recipe"
    return "task default" if task_default is not None else "lm-eval default"


def _combine_fewshot(pairs: list[tuple[int | None, str]]) -> tuple[int | None, str]:
    """One (n-shot, source) for a recipe task from those of its lm-eval tasks."""
    shots = {shot for shot, _ in pairs}
    sources = sorted({source for _, source in pairs})
    if len(shots) == 1:
        return next(iter(shots)), " / ".join(sources)
    known = sorted(shot for shot in shots if shot is not None)
    return None, f"varies by task of the group: {known[0]} to {known[-1]}" if known else "unknown"


def _index_plan(settings: EvaluationSettings, manager, task: str, leaves) -> tuple:
    """(n-shot, source) from the task index alone (the YAML as lm-eval will build it)."""
    from mergekit_kinship.evaluation.tasks import is_yaml_task

    requested = settings.fewshot_for(task)
    pairs = []
    for name, cfg in leaves:
        if name in manager.task_index and not is_yaml_task(manager, name):
            # A Python-defined task: its default is in its code, not known without building it.
            pairs.append((requested, "recipe") if requested is not None
                         else (None, "task default, not known offline"))
            continue
        default = cfg.get("num_fewshot")
        pairs.append((effective_fewshot(requested, default), _fewshot_source(requested, default)))
    return _combine_fewshot(pairs)


def _data_is_local(manager, leaves, include_path: str | None) -> bool:
    """Every task reads local files: datasets' builder for local files with ``data_files``, or
    a ``custom_dataset`` loader of a task YAML in the recipe's ``include_path`` (the user's own
    code, which the run calls too)."""
    from pathlib import Path

    for name, cfg in leaves:
        entry = manager.task_index.get(name)
        if cfg.get("custom_dataset") is not None:
            where = entry.yaml_path if entry is not None else None
            if include_path is None or where is None or Path(include_path) not in Path(where).resolve().parents:
                return False
        elif not (cfg.get("dataset_path") in LOCAL_BUILDERS
                  and (cfg.get("dataset_kwargs") or {}).get("data_files")):
            return False
    return True


def _hub_note(leaves) -> str:
    paths = sorted({str(cfg.get("dataset_path")) for _, cfg in leaves if cfg.get("dataset_path")})
    shown = ", ".join(paths[:2]) + (" ..." if len(paths) > 2 else "")
    return f"not known offline (dataset {shown} on the Hub)" if paths else "not known offline"


def _built_local(settings: EvaluationSettings, manager, tasks: list[str]) -> dict[str, Any]:
    """lm-eval's tasks for the local recipe tasks ``tasks``, built as the runner builds them;
    a task lm-eval cannot build maps to the error's first line."""
    from mergekit_kinship.evaluation.quiet import quiet_libraries
    from mergekit_kinship.evaluation.tasks import task_specs

    built: dict[str, Any] = {}
    with quiet_libraries():
        for task in tasks:
            one = settings.model_copy(update={"tasks": [task]})
            try:
                with task_specs(one, manager) as specs:
                    built[task] = manager.load(specs)
            except Exception as err:  # reported in the plan; evolve would stop on it
                built[task] = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    return built


def task_plans(settings: EvaluationSettings, *, lm_eval_tasks: bool = True) -> list[TaskPlan]:
    """:class:`TaskPlan` of every task of ``settings``, read offline.

    ``lm_eval_tasks`` False (another evaluator scores the models, ``--evaluator``): only the
    recipe's own values are known. Otherwise the settings must have passed
    :func:`~mergekit_kinship.evaluation.tasks.validate_evaluation`. Local tasks (data files in
    the recipe's ``include_path``, or its ``custom_dataset`` loaders) are built by lm-eval to
    count their items exactly; a task on the Hub is never built (that would download it).
    """
    if not lm_eval_tasks:
        why = "not known: another evaluator"
        return [TaskPlan(task, settings.metric_for(task), settings.fewshot_for(task),
                         "recipe" if settings.fewshot_for(task) is not None else why,
                         settings.limit_for(task), None, None, why, 1)
                for task in settings.tasks]
    from mergekit_kinship.evaluation.tasks import index_leaves, task_manager_for

    manager = task_manager_for(settings)
    include_path = include_dir(settings)
    leaves = {task: index_leaves(manager, task) for task in settings.tasks}
    local = [t for t in settings.tasks if _data_is_local(manager, leaves[t], include_path)]
    built = _built_local(settings, manager, local)
    plans = []
    for task in settings.tasks:
        limit = settings.limit_for(task)
        shots, source = _index_plan(settings, manager, task, leaves[task])
        items = total = None
        if isinstance(built.get(task), dict):
            tasks = leaf_tasks(built[task], task)
            requested = settings.fewshot_for(task)
            shots, source = _combine_fewshot([
                (effective_fewshot(requested, leaf.get_config("num_fewshot")),
                 _fewshot_source(requested, leaf.get_config("num_fewshot"))) for leaf in tasks.values()])
            items = sum(item_count(leaf, limit) for leaf in tasks.values())
            total = sum(len(leaf.eval_docs) for leaf in tasks.values())
            note = "local data"
        elif task in built:
            note = f"not known (lm-eval could not build it: {built[task]})"
        else:
            note = _hub_note(leaves[task])
        plans.append(TaskPlan(task, settings.metric_for(task), shots, source, limit, items, total,
                              note, len(leaves[task])))
    return plans


def resolved_fewshot(settings: EvaluationSettings, *, lm_eval_tasks: bool = True) -> dict[str, int | None]:
    """Task -> the n-shot a run uses (as :func:`task_plans` says, from the task index alone:
    nothing is built); None where it is not known (a custom evaluator and no value in the
    recipe, a Python-defined task, or a group whose tasks differ)."""
    if not lm_eval_tasks:
        return {task: settings.fewshot_for(task) for task in settings.tasks}
    from mergekit_kinship.evaluation.tasks import index_leaves, task_manager_for

    manager = task_manager_for(settings)
    return {task: _index_plan(settings, manager, task, index_leaves(manager, task))[0]
            for task in settings.tasks}


def items_text(plan: TaskPlan) -> str:
    """The item count of ``plan`` as the dry run prints it."""
    if plan.items is not None:
        if plan.items == plan.items_total:
            return str(plan.items)
        return f"{plan.items} of {plan.items_total} (limit {plan.limit})"
    if plan.limit is None:
        return plan.items_note
    each = " of each task of the group" if plan.subtasks > 1 else ""
    if isinstance(plan.limit, int) or float(plan.limit) >= 1:
        return f"at most {int(plan.limit)}{each} (limit); count {plan.items_note}"
    return f"{plan.limit:g}{each} (limit); count {plan.items_note}"
