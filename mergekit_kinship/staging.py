"""Staged evaluation: score a generation's children on a growing share of each task's items,
and stop scoring a child as soon as it cannot enter the top-k.

The recipe's ``evaluation.stages`` (fractions of each task's items, strictly increasing, ending in
1.0), ``evaluation.confidence`` and ``evaluation.subset_seed`` decide it. Absent stages: every
model is scored on every item, as always (:func:`score` then runs one plain job per model).

**Items.** Each task's items are put in one seeded order (a permutation of the item indices,
seeded by ``subset_seed`` and the task's name); stage k is the first ``ceil(f_k * N)`` items of
that order. The stages are nested and the same for every model of the run, so any two models are
compared on the same items (paired). Each model's per-item results are kept by content
(:mod:`mergekit_kinship.item_results`), so moving to the next stage scores only its new items.

**The decision.** Before a generation is scored, the *reference* is fixed: the k-th best model
of the pool among the fully scored ones (the generation's own children left out). After each
stage below the last, a child goes on only if the one-sided upper ``confidence`` bound on its
fitness over the *full* tasks reaches the reference's fitness. The bound is paired: the child
minus the reference, item by item over the stage's items, weighted by the recipe's task weights,
with the finite-population correction towards each task's N items
(:func:`mergekit_kinship.uncertainty.contrast`):
``bound = F_ref + D + z * se(D)``, where ``D`` is the estimated difference and ``z`` the normal
quantile of ``confidence``. (Where the reference has no per-item results, e.g. scores imported
from a file, the bound is the child's own stage fitness plus ``z`` times its standard error.)
A task with a single item at a stage, out of several, has no variance yet: the child goes on.

Why the top-k *before* the generation, and not the top-k as the generation's children come in:
the decisions then do not depend on the order in which an executor finishes the children (Ray
runs them at once), so a run is reproducible, and every child of a stage can be scored at once.
It is also the cautious choice: the k-th best fitness only rises while a generation is scored,
so a child screened out against the earlier top-k would be screened out against the later one.
With ``confidence`` c, a child whose full fitness would reach the reference is screened out
wrongly with probability about 1 - c at each stage (normal approximation).

A child that stops keeps its partial score (the means over the items it was scored on), its item
counts and its bound; it is *screened out*: never in the top-k (:mod:`mergekit_kinship.planner`),
still a pool member (its pair was merged; it may be an exploration partner, which is chosen by
kinship alone). Every model that enters the top-k was scored on every item. Foundation models
and references (the base, one-shot baselines) are always scored in full, and so is every child
while the pool has fewer than k fully scored models (there is no k-th best to compare with).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

from mergekit_kinship.errors import UserError
from mergekit_kinship.item_results import missing, read_items, select
from mergekit_kinship.uncertainty import contrast, z_quantile

if TYPE_CHECKING:
    from mergekit_kinship.pool import Pool, PoolModel


def stage_size(total: int, fraction: float) -> int:
    """Items of a task with ``total`` items at a stage of ``fraction``: ``ceil(fraction *
    total)``, at least 1 (a float product such as 0.3 * 100 = 30.000000000000004 counts as 30)."""
    return min(total, max(1, math.ceil(fraction * total - 1e-9)))


def stage_items(totals: Mapping[str, int], fraction: float, seed: int) -> dict[str, list[int]]:
    """The items of each task at the stage of ``fraction``: the first :func:`stage_size` of the
    task's permutation seeded by (``seed``, task name), sorted (as lm-eval's ``samples=`` takes
    them). Nested: a larger fraction keeps every item of a smaller one."""
    out = {}
    for task, total in totals.items():
        order = list(range(total))
        random.Random(f"{seed}:{task}").shuffle(order)
        out[task] = sorted(order[:stage_size(total, fraction)])
    return out


@dataclass(frozen=True)
class Decision:
    """One child after one stage: ``bound`` (the upper confidence bound on its full fitness;
    None when it cannot be computed yet) against ``threshold`` (the fitness of ``reference``,
    the k-th best model); ``paired``: the bound came from item-by-item differences."""

    stage: int
    fraction: float
    items: int
    bound: Optional[float]
    threshold: float
    reference: str
    paired: bool

    @property
    def go_on(self) -> bool:
        return self.bound is None or self.bound >= self.threshold


def decide(settings, stage: int, child_items, totals: Mapping[str, int],
           reference: "PoolModel") -> Decision:
    """The decision after ``stage`` (1-based) for a child with ``child_items`` (its results on
    the stage's items) against the k-th best model ``reference`` (see the module docstring)."""
    z = z_quantile(settings.confidence)
    count = sum(len(v) for v in child_items.values())
    fraction = settings.stages[stage - 1]
    paired = bool(reference.items) and contrast([child_items, reference.items], [1.0, -1.0],
                                                settings, totals)
    if paired:
        difference, se, _ = paired
        bound = reference.fitness + difference + z * se
    else:
        alone = contrast([child_items], [1.0], settings, totals)
        bound = None if alone is None else alone[0] + z * alone[1]
    return Decision(stage, fraction, count, bound, reference.fitness, reference.id, bool(paired))


def threshold_model(pool: "Pool", exclude: Sequence[str]) -> Optional["PoolModel"]:
    """The k-th best fully scored model of the pool, ``exclude`` left out; None when the pool
    has fewer than k of them."""
    from mergekit_kinship.planner import top_k

    k = pool.recipe.top_k
    eligible = [i for i, m in pool.models.items()
                if i not in exclude and m.fitness is not None and m.screened is None]
    if len(eligible) < k:
        return None
    return pool.models[top_k(eligible, {i: pool.models[i].fitness for i in eligible}, k)[-1]]


def check_evaluator(settings, evaluator: Optional[str]) -> None:
    """UserError when staged evaluation is asked of an evaluator (``--evaluator``) that cannot
    score chosen items: it must take an ``items`` keyword (task -> item indices, None: all) and
    return per-item results (``EvaluationResult.items`` and ``items_total``)."""
    if not settings.staged or evaluator is None:
        return
    import inspect

    from mergekit_kinship.executors.job import resolve_evaluator

    if "items" not in inspect.signature(resolve_evaluator(evaluator)).parameters:
        raise UserError(f"evaluation.stages: --evaluator {evaluator} takes no items= argument, so "
                        f"it cannot score a stage's items; remove evaluation.stages or extend it")


def score(pool: "Pool", ids: Sequence[str], executor) -> None:
    """Score the models ``ids`` through ``executor``: in one plain job each without stages;
    with stages, stage by stage (every child of ``ids`` at stage 1, the decisions, the children
    that go on at stage 2, ...), foundation models and references in full. Scores imported from
    a scores file (``plan --scores``) are taken as they are. A model whose evaluation failed for
    good leaves the pool (:meth:`Pool.run_jobs`)."""
    settings = pool.recipe.evaluation
    if not settings.staged:
        for model_id, result in pool.run_jobs(ids, executor).items():
            pool.take_result(pool.models[model_id], result)
        return
    ids = [i for i in ids if not pool.take_imported(pool.models[i])]
    reference = threshold_model(pool, ids)
    staged = [i for i in ids if reference is not None and pool.models[i].kind == "child"]
    full = [i for i in ids if i not in staged]
    if staged and not all(t in pool.item_totals for t in settings.tasks):
        unknown = [t for t in settings.tasks if t not in pool.item_totals]
        raise UserError(f"evaluation.stages: the item count of {', '.join(unknown)} is not known "
                        f"(no model of this run was scored on it item by item); score the "
                        f"foundation models here, or give task_items in the scores file")
    for stage, fraction in enumerate(settings.stages[:-1], 1):
        if not staged:
            break
        items = stage_items({t: pool.item_totals[t] for t in settings.tasks}, fraction,
                            settings.subset_seed)
        go_on = []
        for model_id, result in pool.run_jobs(staged, executor, items=items).items():
            decision = decide(settings, stage, result.items, pool.item_totals, reference)
            if result.scored_now:
                pool.rd.append({"event": "stage", "model": model_id, "stage": stage,
                                "fraction": fraction, "items": decision.items,
                                "bound": decision.bound, "threshold": decision.threshold,
                                "reference": decision.reference, "paired": decision.paired,
                                "go_on": decision.go_on})
            if decision.go_on:
                go_on.append(model_id)
            else:
                pool.take_result(pool.models[model_id], result, screened=decision)
        staged = go_on
    for model_id, result in pool.run_jobs(full + staged, executor).items():
        pool.take_result(pool.models[model_id], result)


def complete_from_cache(pool: "Pool", children: Sequence["PoolModel"]) -> bool:
    """Whether :func:`score` would finish ``children`` (a planned generation, not yet in the
    pool) without scoring any item: every child's staged evaluation reaches its end (screened
    out, or every item) on per-item results already recorded, or its scores were imported, or
    its evaluation failed for good. ``plan`` asks this before it replays a generation that
    ``evolve`` made. Changes nothing."""
    from mergekit_kinship.executors.job import recorded_failure

    settings = pool.recipe.evaluation
    reference = threshold_model(pool, [m.id for m in children])
    tasks = settings.tasks
    for m in children:
        key = pool.cache.score_key(m.identity)
        if pool.rd.read_score(key) is not None or recorded_failure(pool.rd, key) is not None:
            continue
        items, totals = read_items(pool.rd, pool.cache.items_key(m.identity))
        if not all(t in totals for t in tasks):
            return False
        stages = settings.stages[:-1] if reference is not None else []
        for stage, fraction in enumerate(stages, 1):
            wanted = stage_items({t: totals[t] for t in tasks}, fraction, settings.subset_seed)
            if missing(items, wanted):
                return False
            if not decide(settings, stage, select(items, wanted), totals, reference).go_on:
                break
        else:
            if missing(items, {t: list(range(totals[t])) for t in tasks}):
                return False
    return True


class CachedOnly:
    """An executor for ``plan``'s replay of generations that :func:`complete_from_cache` says
    are complete: runs each job in this process, which finds everything recorded (no merge, no
    evaluation)."""

    name = "cached"
    evaluates = False

    def run(self, jobs, progress: bool = True):
        from mergekit_kinship.executors.job import run_child_job

        return [run_child_job(job) for job in jobs]
