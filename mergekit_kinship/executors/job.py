"""The unit of work: merge one child (if it has a YAML) and score it, all inside the run directory.

A :class:`ChildJob` carries everything needed as plain data, and :func:`run_child_job` writes its
results into the run directory before returning, so it can run in another process or on another
machine that mounts the run directory. It is idempotent: a finished merge (a model folder whose
marker names this child) and a finished score (a score file with this key) are never redone.

A job of staged evaluation (``staged``, :mod:`mergekit_kinship.staging`) asks for items instead:
the model's per-item results (:mod:`mergekit_kinship.item_results`) are read, only the items
not there yet are scored (the merge runs only if there are some), and the result holds the
asked items' values. It writes no score record: which stage a model stops at depends on the
pool, not on the model, so the per-item results are the only fact it records.
"""

from __future__ import annotations

import errno
import importlib
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from mergekit_kinship.rundir import RunDir, checkpoint


@dataclass
class ChildJob:
    """Inputs of one unit of work. ``yaml_text`` is None for a model that is only scored."""

    run_dir: str
    model_id: str
    identity: str
    model_path: str
    score_key: str
    evaluation: dict[str, Any]
    yaml_text: Optional[str] = None
    seed: Optional[int] = None
    tokenizer_from: Optional[str] = None
    evaluator: Optional[str] = None  # "module:function" scoring the model; None: lm-eval
    optional: bool = False  # a reference (the base, a baseline): failing leaves it out, never stops
    ancestor: Optional[str] = None  # the family's ancestor: the merge records kinship.json
    sketch: Optional[dict] = None  # where the merge leaves the child's delta sketch (pool_sketch)
    items_key: Optional[str] = None  # where its per-item results are kept (item_results)
    staged: bool = False  # staged evaluation: score ``items`` (None: every item), no record
    items: Optional[dict[str, list[int]]] = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class JobResult:
    model_id: str
    scores: dict[str, float]
    stderr: dict[str, float] = field(default_factory=dict)
    merged_now: bool = False  # this call ran mergekit
    scored_now: bool = False  # this call ran the evaluation
    merge_seconds: float = 0.0
    eval_seconds: float = 0.0
    error: Optional[str] = None  # the evaluation failed for good (evaluation.on_error): skipped
    # The child's kinship.json (merge_kinship.MergeKinship.to_dict) when its folder has one: the
    # driver records the parents' kinship with the child from it (workers never write the cache).
    kinship: Optional[dict] = None
    # Per-item results (task -> index -> value): a staged job's asked items; a plain job's all
    # (when the evaluator gives them). items_total: task -> the task's item count.
    items: dict[str, dict[int, float]] = field(default_factory=dict)
    items_total: dict[str, int] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)  # items scored per task, when known


def merge_done(model_path: str | Path, model_id: str, identity: str) -> bool:
    """True when ``model_path`` is a finished merge of exactly this child."""
    from mergekit_kinship.merging import read_marker

    marker = read_marker(model_path)
    return bool(marker) and marker.get("child") == model_id and marker.get("identity") == identity


def ensure_merged(job: ChildJob) -> tuple[bool, float]:
    """Merge the child unless its finished folder is there. Returns (merged now, seconds)."""
    from mergekit_kinship.merging import merge_yaml

    if job.yaml_text is None or merge_done(job.model_path, job.model_id, job.identity):
        return False, 0.0
    run = RunDir(job.run_dir)
    path = Path(job.model_path)
    if path.exists():  # not a finished merge of this child: never trusted, never used
        shutil.rmtree(path)
    run.append({"event": "merge-start", "child": job.model_id})
    started = time.perf_counter()
    try:
        merge_yaml(job.yaml_text, path, seed=job.seed, tokenizer_from=job.tokenizer_from,
                   marker={"child": job.model_id, "identity": job.identity},
                   ancestor=job.ancestor, sketch=job.sketch)
    except Exception as err:
        # safetensors reports a full disk as its own error type, with the OS message inside.
        if not (getattr(err, "errno", None) == errno.ENOSPC
                or os.strerror(errno.ENOSPC) in str(err)):
            raise
        from mergekit_kinship.errors import UserError

        # merge_yaml removed its partial folder; nothing of this child is left to trust.
        run.append({"event": "merge-failed", "child": job.model_id, "error": str(err)})
        raise UserError(f"{path.parent}: no space left on device while merging child "
                        f"{job.model_id} (no partial child kept); free space and run evolve "
                        f"again: it resumes here") from None
    seconds = time.perf_counter() - started
    run.append({"event": "merged", "child": job.model_id, "seconds": round(seconds, 3)})
    return True, seconds


def resolve_evaluator(reference: Optional[str] = None):
    """The function that scores a model folder: lm-eval through
    :func:`mergekit_kinship.evaluation.evaluate`, or the ``"module:function"`` a job names (a
    function ``(model_path, EvaluationSettings) -> EvaluationResult``, e.g. a stand-in in tests
    or a user's own scorer given with ``evolve --evaluator``)."""
    if reference is None:
        from mergekit_kinship.evaluation.runner import evaluate

        return evaluate
    from mergekit_kinship.errors import UserError

    module, _, attr = reference.partition(":")
    try:
        function = importlib.import_module(module)
        for part in attr.split("."):
            function = getattr(function, part)
    except (ImportError, AttributeError, ValueError) as err:
        raise UserError(f"--evaluator {reference}: cannot import it ({type(err).__name__}: "
                        f"{err}); give module:function importable from this Python") from None
    if not attr or not callable(function):
        raise UserError(f"--evaluator {reference}: not a function (give module:function)")
    return function


def run_child_job(job: ChildJob) -> JobResult:
    """Merge (if needed) and score (if needed) one model; results land in the run directory."""
    from mergekit_kinship.evaluation.settings import EvaluationSettings

    run = RunDir(job.run_dir)
    if job.staged:
        return _run_staged(run, job)
    record = run.read_score(job.score_key)
    failure = recorded_failure(run, job.score_key) if record is None else None
    if failure is not None:  # skipped for good earlier in this run: stays skipped on resume
        return JobResult(job.model_id, {}, error=failure)
    # A scored child needs no weights (one pruned by --keep stays pruned unless it is needed
    # again as a parent or for kinship: Run.model_path merges it then).
    merged_now, merge_seconds = (False, 0.0) if record is not None else ensure_merged(job)
    scored_now, eval_seconds = False, 0.0
    if record is None:
        settings = EvaluationSettings.model_validate(job.evaluation)
        result = _evaluate_with_policy(run, job, settings)
        if isinstance(result, str):
            return JobResult(job.model_id, {}, merged_now=merged_now,
                             merge_seconds=merge_seconds, error=result)
        checkpoint("evaluate")  # tests kill the process here: scored, not yet recorded
        if result.items and job.items_key is not None:
            from mergekit_kinship.item_results import record_items

            record_items(run, job.items_key, job.model_id, job.identity, result.items,
                         result.items_total)
        record = {"score_key": job.score_key, "model": job.model_id, "identity": job.identity,
                  "result": result.to_dict()}
        run.write_json(run.score_path(job.score_key), record)
        run.append({"event": "scored", "model": job.model_id, "score_key": job.score_key,
                    "seconds": round(result.seconds, 3)})
        scored_now, eval_seconds = True, result.seconds
    result = record["result"]
    from mergekit_kinship.item_results import read_items

    items, totals = read_items(run, job.items_key)
    return JobResult(job.model_id, dict(result["scores"]), dict(result.get("stderr") or {}),
                     merged_now, scored_now, merge_seconds, eval_seconds,
                     kinship=_merge_kinship(job), items=items,
                     items_total=dict(result.get("items_total") or totals),
                     samples=dict(result.get("samples") or {}))


def _run_staged(run: RunDir, job: ChildJob) -> JobResult:
    """A staged job: score the asked items not scored yet, return the asked items' results."""
    from mergekit_kinship.evaluation.settings import EvaluationSettings
    from mergekit_kinship.item_results import means, missing, read_items, record_items, select
    from mergekit_kinship.item_results import stderrs

    failure = recorded_failure(run, job.score_key)
    if failure is not None:
        return JobResult(job.model_id, {}, error=failure)
    settings = EvaluationSettings.model_validate(job.evaluation)
    items, totals = read_items(run, job.items_key)
    wanted = job.items
    if wanted is None and all(t in totals for t in settings.tasks):
        wanted = {t: list(range(totals[t])) for t in settings.tasks}
    need = None if wanted is None else missing(items, wanted)  # None: every item of every task
    merged_now, merge_seconds, eval_seconds = False, 0.0, 0.0
    if need is None or need:
        merged_now, merge_seconds = ensure_merged(job)
        result = _evaluate_with_policy(run, job, settings, items=need)
        if isinstance(result, str):
            return JobResult(job.model_id, {}, merged_now=merged_now,
                             merge_seconds=merge_seconds, error=result)
        asked = settings.tasks if need is None else list(need)
        lacking = [t for t in asked if t not in result.items or t not in result.items_total]
        if lacking:
            from mergekit_kinship.errors import UserError

            raise UserError(f"evaluation.stages: the evaluator gave no per-item results for "
                            f"{', '.join(lacking)} (staged evaluation needs them)")
        checkpoint("evaluate")  # tests kill the process here: scored, not yet recorded
        items, totals = record_items(run, job.items_key, job.model_id, job.identity,
                                     result.items, result.items_total)
        eval_seconds = result.seconds
        run.append({"event": "scored-items", "model": job.model_id, "items_key": job.items_key,
                    "score_key": job.score_key, "seconds": round(result.seconds, 3),
                    "items": {t: len(v) for t, v in result.items.items()}})
        if wanted is None:
            wanted = {t: list(range(totals[t])) for t in settings.tasks}
    chosen = select(items, wanted)
    return JobResult(job.model_id, means(chosen), stderrs(chosen), merged_now,
                     eval_seconds > 0, merge_seconds, eval_seconds, kinship=_merge_kinship(job),
                     items=chosen, items_total={t: totals[t] for t in chosen})


def _merge_kinship(job: ChildJob) -> Optional[dict]:
    """The kinship.json of the child's folder, if the hook wrote one against this ancestor."""
    if job.yaml_text is None or job.ancestor is None:
        return None
    from mergekit_kinship.merge_kinship import read_merge_kinship

    found = read_merge_kinship(job.model_path)
    return found.to_dict() if found is not None else None


class EvaluationFailed(RuntimeError):
    """An evaluation raised and the run stops (``evaluation.on_error: stop``, or a foundation
    model); the message is one line naming the model and the error."""


def recorded_failure(run: RunDir, score_key: str) -> Optional[str]:
    """The error of an evaluation with this key that failed for good, or None."""
    for event in reversed(run.events("eval-failed")):
        if event.get("score_key") == score_key and event.get("final"):
            return event["error"]
    return None


def _evaluate_with_policy(run: RunDir, job: ChildJob, settings, *, items=None):
    """Run the evaluator under ``evaluation.on_error``; returns its result, or the error text
    (one line) of a child that is skipped. A staged job passes ``items`` (task -> indices, None:
    all) to the evaluator; a plain job calls it with the model and the settings only. A foundation model's failure always stops the run:
    the pool would lose a model the user chose."""
    from mergekit_kinship.errors import UserError

    child = job.yaml_text is not None
    tries = 1 + (settings.retries if settings.on_error == "retry" and child else 0)
    if job.optional:  # a reference: one try, then left out whatever the policy says
        tries = 1
    for attempt in range(1, tries + 1):
        run.append({"event": "eval-start", "model": job.model_id, "score_key": job.score_key})
        try:
            scorer = resolve_evaluator(job.evaluator)
            result = (scorer(job.model_path, settings, items=items) if job.staged
                      else scorer(job.model_path, settings))
            if job.evaluator is not None:  # lm-eval's scores are checked by evaluate() itself
                from mergekit_kinship.evaluation.scores import check_scores

                result.scores = check_scores(result.scores, settings,
                                             f"--evaluator {job.evaluator} on {job.model_id}")
            return result
        except Exception as err:  # lm-eval, CUDA, a broken child: recorded, then policy
            first = (str(err).strip().splitlines() or [""])[0][:300]
            error = f"{type(err).__name__}: {first}" if first else type(err).__name__
            stop = not job.optional and (settings.on_error == "stop" or not child)
            # A UserError (e.g. no tokenizer) would fail again the same way: not retried.
            final = not stop and not job.optional and (attempt == tries
                                                       or isinstance(err, UserError))
            run.append({"event": "eval-failed", "model": job.model_id,
                        "score_key": job.score_key, "attempt": attempt, "error": error,
                        "final": final})
            if stop and isinstance(err, UserError):
                raise  # already one line naming what to fix
            if stop:
                why = "evaluation.on_error: stop" if child else "a foundation model"
                message = (f"evaluation of {job.model_id} failed ({error}); the run stopped "
                           f"({why}); fix it and run evolve again to resume")
                # Not a UserError: an executor with its own retries (Ray) retries it; the local
                # executor shows it as one line.
                raise EvaluationFailed(message) from err
            if final:
                return error
            if job.optional:  # left out this time; the next run tries it again
                return error
    raise AssertionError("unreachable")
