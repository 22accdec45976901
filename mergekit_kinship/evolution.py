"""The evolution loop: Algorithm 1 run for real, through mergekit and lm-eval, resumable.

:func:`evolve` reads like the paper's Algorithm 1 (Hu et al., arXiv 2410.12613, App. C.1): the
foundation models are scored and related; then generation after generation the planner (pure,
:mod:`~mergekit_kinship.planner`) chooses the children, the executor merges and scores them (one
self-contained unit of work each, :mod:`~mergekit_kinship.executors.job`), their kinship to the
pool is measured, the top-k is selected, and the recipe's rule says when to stop. The
bookkeeping of each step lives in :class:`~mergekit_kinship.pool.Pool`. Every fact is keyed by
content in the run directory, so running it again after a kill redoes no finished merge or
evaluation and reaches the same result.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import yaml

from mergekit_kinship.errors import UserError
from mergekit_kinship.pool import KinshipFn, Pool
from mergekit_kinship.preflight import check_run_dir_compatible, preflight
from mergekit_kinship.recipe import Recipe
from mergekit_kinship.references import add_references, score_references
from mergekit_kinship.rundir import KEEP_CHOICES, RunDir
from mergekit_kinship.staging import check_evaluator
from mergekit_kinship.summary import GenerationRecord, RunSummary, write_summary

OnGeneration = Callable[[RunSummary, GenerationRecord], None]


def evolve(recipe: Recipe, run_dir: str | Path, *, keep: str = "all", executor: Any = "local",
           evaluator: Optional[str] = None, baselines: bool = False,
           kinship_fn: Optional[KinshipFn] = None, progress: bool = True,
           on_generation: Optional[OnGeneration] = None) -> RunSummary:
    """Run Algorithm 1 to its stopping rule in ``run_dir``; returns the run summary.

    Safe to interrupt at any moment and to call again on the same directory: finished merges
    and evaluations are found by content and never redone. ``on_generation(summary, record)``
    is called after every generation (the CLI prints its table there). ``keep`` chooses which
    children's weights stay once the run stops: ``best``, ``survivors`` (the final top-k) or
    ``all``; a pruned child is merged again if a later run needs it. ``executor`` is a
    registered name or an executor object (e.g. a configured Ray executor; its caller closes
    it). ``evaluator`` is ``"module:function"`` scoring a model folder instead of lm-eval (see
    :func:`mergekit_kinship.executors.job.resolve_evaluator`); its scores are kept apart.
    References, outside the pool (:mod:`~mergekit_kinship.references`): the base model is scored
    when the recipe says so; ``baselines`` also merges and scores the one-shot baselines.
    """
    from mergekit_kinship.executors import get_executor

    if keep not in KEEP_CHOICES:
        raise UserError(f"--keep: one of {', '.join(KEEP_CHOICES)}, not {keep!r}")
    work = get_executor(executor) if isinstance(executor, str) else executor
    with open_pool(recipe, run_dir, evaluator=evaluator, kinship_fn=kinship_fn,
                   progress=progress) as pool:
        # Generation 0: the foundation models enter the pool, are scored and related.
        foundation = pool.add_foundation()
        pool.merge_and_score(foundation, work)
        pool.relate(foundation)
        score_references(pool, add_references(pool, baselines=baselines), work)  # not in the pool
        top = pool.top_k()
        for generation in itertools.count(1):
            # Plan: G1 = every foundation pair; then the untried pairs of the top-k plus the
            # exploration merge of the best model with its least related kin.
            children = pool.plan(generation)
            pool.add_children(children)
            # Merge and score them, then relate them to the whole pool.
            pool.merge_and_score([c.id for c in children], work)
            pool.relate([c.id for c in children])
            # Select the top-k and stop by the recipe's rule.
            new_top = pool.top_k()
            stopped = pool.stop_reason(generation, top, new_top)
            pool.record_generation(generation, children, new_top, stopped)
            summary = pool.summary(stopped)
            write_summary(pool.rd.path, summary)
            if on_generation is not None:
                on_generation(summary, summary.generations[-1])
            if stopped:
                return finish(pool, keep, new_top, stopped)
            top = new_top
    raise AssertionError("unreachable")


@contextmanager
def open_pool(recipe: Recipe, run_dir: str | Path, *, evaluator: Optional[str] = None,
              kinship_fn: Optional[KinshipFn] = None, progress: bool = True) -> Iterator[Pool]:
    """The pre-flight (nothing is created when it refuses), then the locked run directory with
    the recipe recorded, and an empty :class:`Pool` over it."""
    preflight(recipe, run_dir=run_dir, lm_eval_tasks=evaluator is None)
    check_evaluator(recipe.evaluation, evaluator)
    rd = RunDir(run_dir)
    with rd:
        check_run_dir_compatible(rd, recipe)  # again, now that the lock is ours
        rd.clean_partials()
        rd.write_text(rd.recipe_path, yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        rd.append({"event": "start", "strategy": recipe.strategy})
        yield Pool(recipe, rd, evaluator=evaluator, kinship_fn=kinship_fn, progress=progress)


def finish(pool: Pool, keep: str, survivors: list[str], stopped: str) -> RunSummary:
    """Prune weights per ``keep``, write the final summary, every child's lineage file and
    card."""
    from mergekit_kinship.card import write_cards
    from mergekit_kinship.lineage_file import write_lineage_files
    from mergekit_kinship.materialize import weights_of

    rd = pool.rd
    best = pool.top_k(1)[0]
    keep_ids = {"all": list(pool.models), "survivors": survivors, "best": [best]}[keep]
    rd.prune(keep_ids)
    for i in keep_ids:  # kept, but pruned by an earlier --keep: merged again
        if pool.models[i].kind == "child":
            weights_of(pool, i)
    for m in pool.models.values():
        if m.kind == "child" and not m.external and not rd.model_dir(m.id).exists():
            m.path = None
    rd.append({"event": "stop", "stopped": stopped, "best": best})
    summary = pool.summary(stopped)
    write_summary(rd.path, summary)
    # Every child gets a lineage file that rebuilds it from the foundation models alone
    # (RUN_DIR/lineage/, and in its folder when kept), and its Hub card that quotes it.
    write_lineage_files(rd.path, summary)
    write_cards(rd.path, summary)
    return summary
