"""Scores of models evaluated elsewhere (``plan --scores FILE``), recorded like our own.

A scores file names foundation models by their recipe name and planned children by name
(``g1-2``) or id (``c-...``); a child merged elsewhere also gives the folder ``mergekit-yaml``
wrote, so that its kinship can be measured. Each entry becomes a score record keyed exactly like
an evaluation ``evolve`` ran itself, so the pool is rebuilt the same way from either.

A child may have been scored on part of each task's items only (staged evaluation done
elsewhere): its entry gives ``items: {TASK: count}``. A count below the task's item count makes
the score *partial*: the child is screened out (never in the top-k), as a child that staged
evaluation stops here is. The tasks' item counts come from the file's ``task_items``, else from
what the run directory knows, else from the tasks themselves (local lm-eval tasks, counted
offline). Foundation models are always scored on every item.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from mergekit_kinship.errors import UserError

if TYPE_CHECKING:
    from mergekit_kinship.pool import Pool

SCORES_FILE_HELP = """\
# Scores file for `mergekit-kinship plan --scores FILE` (YAML or JSON).
# One entry per model you evaluated elsewhere: a foundation model by its recipe name, or a
# planned child by its name (g1-2) or id (c-...). Scores are per task of the recipe's
# `evaluation.tasks`, as lm-eval reports them (0..1). Children also give the folder that
# `mergekit-yaml` wrote, so that kinship can be measured from their weights. A child scored on
# part of the items only gives `items` (per task, the items it was scored on): fewer than the
# task has makes a partial score, and the child is screened out (never in the top-k). Optional
# `task_items` gives each task's item count (else the run directory's or the task's own).
format: 1
task_items: {TASK: 100}
models:
  MODEL_NAME:
    scores: {TASK: 0.0}
  g1-1:
    path: /where/mergekit-yaml/wrote/g1-1
    scores: {TASK: 0.0}
    items: {TASK: 30}
"""


def _children(pool: "Pool") -> dict[str, str]:
    """Name or id -> child id, for every child this run directory planned or merged."""
    out: dict[str, str] = {}
    for event in pool.rd.events("planned"):
        for cid, name in (event.get("names") or {}).items():
            out[name] = out[cid] = cid
    for f in pool.rd.yaml_dir.glob("c-*.yaml"):
        out.setdefault(f.stem, f.stem)
    return out


def import_scores(pool: "Pool", scores_file: Path) -> None:
    """Record the file's scores (and children's folders) in the run directory; UserError (one
    line naming the entry) for anything malformed, before anything is recorded."""
    from mergekit_kinship.evaluation.scores import check_scores, fitness

    try:
        data = yaml.safe_load(Path(scores_file).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{scores_file}: cannot read scores file ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise UserError(f"{scores_file}: expected a mapping with 'models:' (see plan --help)")
    foundation = {m.name: m for m in pool.models.values() if m.kind == "foundation"}
    children = _children(pool)
    tasks = pool.recipe.evaluation.tasks
    totals = _task_items(pool, data, scores_file) if any(
        isinstance(e, dict) and e.get("items") is not None for e in data["models"].values()) else {}
    records = []
    for name, entry in data["models"].items():
        where = f"{scores_file}: models.{name}"
        if str(name) not in foundation and str(name) not in children:
            raise UserError(f"{where}: not a foundation model or planned child")
        if not isinstance(entry, dict) or not isinstance(entry.get("scores"), dict):
            raise UserError(f"{where}.scores: a mapping task -> score")
        missing = [t for t in tasks if t not in entry["scores"]]
        if missing:
            raise UserError(f"{where}.scores: no score for {', '.join(missing)}")
        scores = check_scores({t: entry["scores"][t] for t in tasks}, pool.recipe.evaluation,
                              f"{where}.scores")
        counts = _counts(entry.get("items"), totals, f"{where}.items")
        if str(name) in foundation and any(counts[t] < totals[t] for t in counts):
            raise UserError(f"{where}.items: a foundation model is always scored on every item "
                            f"({', '.join(f'{t} {totals[t]}' for t in counts)})")
        if str(name) in foundation:
            model_id, identity, path = foundation[str(name)].id, foundation[str(name)].identity, None
        else:
            model_id = identity = children[str(name)]
            path = None
            if not pool.rd.yaml_path(model_id).exists():  # not merged here: where is it?
                path = entry.get("path")
                if not path or not Path(path, "config.json").is_file():
                    raise UserError(f"{where}.path: the folder mergekit-yaml wrote for this "
                                    f"child (with config.json)")
                path = str(Path(path).resolve())
        records.append((model_id, identity, path, scores, counts))
    if totals:
        pool.rd.append({"event": "task-items", "items": totals})
        pool.item_totals.update(totals)
    for model_id, identity, path, scores, counts in records:
        if path is not None:
            pool.rd.append({"event": "external", "child": model_id, "path": path})
        key = pool.cache.score_key(identity)
        pool.rd.write_json(pool.rd.score_path(key), {
            "score_key": key, "model": model_id, "identity": identity,
            "imported": str(scores_file),
            "result": {"scores": scores, "fitness": fitness(scores, pool.recipe.evaluation),
                       "lm_eval_version": pool.cache.fingerprint.get("lm_eval_version"),
                       "seconds": 0.0,
                       **({"samples": counts, "items_total": totals} if counts else {})}})
        pool.rd.append({"event": "scores-imported", "model": model_id, "score_key": key})



def _task_items(pool: "Pool", data: dict, scores_file: Path) -> dict[str, int]:
    """Each task's item count: the file's ``task_items``, else the run directory's, else the
    task's own (local lm-eval tasks, counted offline); UserError naming a task without one."""
    given = data.get("task_items") or {}
    if not isinstance(given, dict) or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in given.values()):
        raise UserError(f"{scores_file}: task_items: a mapping task -> item count (1 or more)")
    totals = {t: given[t] if t in given else pool.item_totals.get(t)
              for t in pool.recipe.evaluation.tasks}
    if None in totals.values() and pool.evaluator is None:
        from mergekit_kinship.evaluation.task_plan import task_plans

        for plan in task_plans(pool.recipe.evaluation):
            if totals.get(plan.task) is None and plan.items is not None:
                totals[plan.task] = plan.items
    unknown = [t for t, n in totals.items() if n is None]
    if unknown:
        raise UserError(f"{scores_file}: the item count of {', '.join(unknown)} is not known "
                        f"here: give it as task_items: {{{unknown[0]}: N}}")
    return totals


def _counts(value, totals: dict[str, int], where: str) -> dict[str, int]:
    """An entry's ``items`` (task -> items scored), checked against the tasks' counts."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where}: a mapping task -> items scored")
    counts = {}
    for task, total in totals.items():
        n = value.get(task, total)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= total:
            raise UserError(f"{where}.{task}: {n!r} is not a count of items from 1 to {total}")
        counts[task] = n
    extra = [t for t in value if t not in totals]
    if extra:
        raise UserError(f"{where}: {extra[0]!r} is not one of evaluation.tasks")
    return counts
