"""Score one model with lm-eval: :func:`evaluate`.

The user's lm-eval arguments (tasks, ``include_path``, ``num_fewshot``, ``limit``, batch size,
``apply_chat_template``, ``model_args``, backend ``hf`` or ``vllm``) are passed through unchanged;
``num_fewshot`` and ``limit`` may differ per task (:mod:`mergekit_kinship.evaluation.task_plan`).

lm-eval is driven through its public lower-level pieces, in the order ``simple_evaluate`` uses
them (:func:`run_lm_eval`): the model from lm-eval's model registry, the tasks from
``TaskManager.load``, then ``lm_eval.evaluate``. ``simple_evaluate`` would add an environment
report to every result (torch's ``collect_env``, about 1 s of subprocesses per model, and
``git describe`` of the working directory, which prints ``fatal: not a git repository``
outside one) and has no argument to skip it; nothing here reads that report. Tests check that
the scores equal ``simple_evaluate``'s, per task where the settings differ per task.

No function of another library is replaced. What :func:`evaluate` changes while it runs, and
restores afterwards: lm-eval's logger level and a filter on one of its loggers, transformers'
progress-bar switch, and the global random generators lm-eval seeds (Python's, NumPy's,
torch's). lm-eval is imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import math
import os
import random
import time
from pathlib import Path

from mergekit_kinship.errors import UserError
from mergekit_kinship.evaluation.quiet import quiet_libraries
from mergekit_kinship.evaluation.scores import EvaluationResult, check_scores, fitness
from mergekit_kinship.evaluation.settings import EvaluationSettings, lm_eval_version
from mergekit_kinship.evaluation.task_plan import (apply_fewshot, item_count, limited_items,
                                                   mean_metric_tasks, select_items)
from mergekit_kinship.evaluation.tasks import (
    resolve_metric_key,
    task_manager_for,
    task_specs,
    validate_evaluation,
)

# simple_evaluate's default bootstrap_iters (stderr of metrics without a closed form).
_BOOTSTRAP_ITERS = 100000
_REQUEST_METHODS = ("loglikelihood", "loglikelihood_rolling", "generate_until")


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


def _bars_off_by_default() -> bool:
    """tqdm's own default for ``disable=`` in this process: True under ``TQDM_DISABLE`` (tqdm
    reads its ``TQDM_*`` environment variables into its parameters' defaults when imported)."""
    from tqdm import tqdm

    return bool(inspect.signature(tqdm.__init__).parameters["disable"].default)


class _WithoutRequestBars:
    """``lm`` with its request bars off. lm-eval's hf and vllm models draw a bar per request type
    with ``disable=False`` unless the request method gets ``disable_tqdm=True``, which
    ``lm_eval.evaluate`` never passes, so tqdm's ``TQDM_DISABLE`` would not reach them. Every
    other attribute is ``lm``'s own (the pattern of lm-eval's own ``CachingLM``)."""

    def __init__(self, lm):
        self._lm = lm

    def __getattr__(self, name):
        attribute = getattr(self._lm, name)
        if name in _REQUEST_METHODS and "disable_tqdm" in inspect.signature(attribute).parameters:
            return lambda requests: attribute(requests, disable_tqdm=True)
        return attribute


@contextlib.contextmanager
def _seeded_like_lm_eval(device: str | None):
    """Python's, NumPy's and torch's global generators seeded as ``simple_evaluate`` seeds them
    (its defaults), so that a score does not depend on what ran before; the caller's generator
    states are back on exit."""
    import numpy as np
    import torch
    from lm_eval.defaults import DEFAULT_OTHER_SEED, DEFAULT_RANDOM_SEED

    cuda = device is not None and device.startswith("cuda") and torch.cuda.is_available()
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
        random.seed(DEFAULT_RANDOM_SEED)
        np.random.seed(DEFAULT_OTHER_SEED)
        torch.manual_seed(DEFAULT_OTHER_SEED)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def run_lm_eval(settings: EvaluationSettings, model_args: dict, device: str | None, manager,
                items: dict[str, list[int]] | None = None) -> tuple[dict | None, dict]:
    """lm-eval's results for ``settings`` and the tasks it built. The results are what
    ``lm_eval.simple_evaluate`` computes for the same arguments (``task_manager=manager``,
    ``log_samples=True``, ``fewshot_random_seed`` =
    :data:`~mergekit_kinship.evaluation.settings.FEWSHOT_SEED`, the rest at their defaults) but
    without its environment report and ``config`` block. A per-task ``num_fewshot`` or ``limit``
    gives each task what ``simple_evaluate`` run on that task alone with that task's values
    gives it (:func:`~mergekit_kinship.evaluation.task_plan.apply_fewshot`; the limit reaches
    lm-eval as ``samples=``, the indices of the items its ``limit=`` would score:
    :func:`~mergekit_kinship.evaluation.task_plan.limited_items`). ``items`` (task -> item
    indices) scores those items only, through ``samples=`` too
    (:func:`~mergekit_kinship.evaluation.task_plan.select_items`). Results are ``None`` where
    lm-eval returns none (not rank 0 of a distributed run). lm-eval's request bars follow
    tqdm's ``TQDM_DISABLE``."""
    import lm_eval
    from lm_eval.api.registry import get_model

    with _seeded_like_lm_eval(device):
        lm = get_model(settings.backend).create_from_arg_obj(
            model_args, {"batch_size": settings.batch_size, "max_batch_size": None, "device": device})
        with task_specs(settings, manager) as specs:
            loaded = manager.load(specs)
        apply_fewshot(settings, loaded)
        if items is None:
            task_dict, samples = loaded, limited_items(settings, loaded)
        else:
            task_dict, samples = select_items(settings, loaded, items)
        output = lm_eval.evaluate(
            lm=_WithoutRequestBars(lm) if _bars_off_by_default() else lm,
            task_dict=task_dict,
            # The per-task limit (or the chosen items) as item indices: lm-eval's own limit is
            # one for all tasks.
            samples=samples or None,
            bootstrap_iters=_BOOTSTRAP_ITERS,
            # Per-item results: recorded for every task whose score is a mean over its items.
            log_samples=True,
            apply_chat_template=settings.apply_chat_template,
            fewshot_as_multiturn=True,  # simple_evaluate's default (evaluate's is False)
        )
        return output, loaded


def _item_values(output: dict, task: str, key: str) -> dict[int, float]:
    """Item index -> value of the metric ``key`` (``name,filter``) from lm-eval's logged
    samples of ``task``."""
    metric, _, filter_name = key.partition(",")
    return {int(sample["doc_id"]): float(sample[metric])
            for sample in (output.get("samples") or {}).get(task, [])
            if sample.get("filter", "none") == (filter_name or "none")}


def _items_scored(output: dict, task: str) -> int | None:
    """Items lm-eval scored for ``task``; for a group, summed over its tasks (lm-eval counts
    the tasks of a group only)."""
    counts = output.get("n-samples") or {}
    if task in counts:
        return int(counts[task]["effective"])
    children = (output.get("group_subtasks") or {}).get(task)
    if not children:
        return None
    parts = [_items_scored(output, child) for child in children]
    return None if None in parts else sum(parts)


def evaluate(model_path: str | os.PathLike, settings: EvaluationSettings,
             items: dict[str, list[int]] | None = None) -> EvaluationResult:
    """Score the model folder ``model_path`` on ``settings.tasks`` with lm-eval (:func:`run_lm_eval`).

    Per-item results (``EvaluationResult.items``, with each task's item count in
    ``items_total``) come with every task whose score is the mean of its items' values
    (:func:`~mergekit_kinship.evaluation.task_plan.mean_metric_tasks`). ``items`` (task ->
    item indices, for staged evaluation) scores only those items, of only the tasks named: the
    scores are then the means over them, their ``stderr`` the items' standard error, and
    ``fitness`` is None unless every task was scored.

    The model is loaded by lm-eval's ``hf`` (on ``settings.device``, default CUDA when available)
    or ``vllm`` backend and released afterwards, so a long run holds one model at a time. Requests
    are not cached and samples are not logged. Raises UserError for settings lm-eval rejects
    (see :func:`~mergekit_kinship.evaluation.tasks.validate_evaluation`), a model path that is not
    a folder or has no tokenizer, a task that did not report the chosen metric, or a score that
    :func:`~mergekit_kinship.evaluation.scores.check_scores` refuses.
    """
    model_path = Path(model_path)
    if not model_path.is_dir():
        raise UserError(f"model {model_path} is not a folder")
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    if "tokenizer" not in settings.model_args and not any((model_path / name).is_file()
                                                          for name in tokenizer_files):
        raise UserError(f"model {model_path} has no tokenizer files (lm-eval needs one; "
                        f"or name one with evaluation.model_args.tokenizer)")
    validate_evaluation(settings)
    manager = task_manager_for(settings)

    model_args = {"pretrained": str(model_path.resolve()), **settings.model_args}
    device = resolve_device(settings) if settings.backend == "hf" else None
    started = time.perf_counter()
    try:
        with quiet_libraries():
            output, loaded = run_lm_eval(settings, model_args, device, manager, items)
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
    capable = mean_metric_tasks(settings, loaded)
    tasks = settings.tasks if items is None else [t for t in settings.tasks if items.get(t)]
    reported_scores, stderr, samples, n_shot, values, totals = {}, {}, {}, {}, {}, {}
    for task in tasks:
        if task not in results:
            raise UserError(f"evaluation.tasks: lm-eval returned no result for {task!r}")
        reported = [key for key in results[task] if "," in key and "_stderr," not in key]
        key = resolve_metric_key(task, settings.metric_for(task), reported)
        reported_scores[task] = results[task][key]
        metric, _, filter_name = key.partition(",")
        err = _as_float(results[task].get(f"{metric}_stderr,{filter_name}"))
        if err is not None:
            stderr[task] = err
        count = _items_scored(output, task)
        if count is not None:
            samples[task] = count
        shots = (output.get("n-shot") or {}).get(task)
        if shots is not None:
            n_shot[task] = int(shots)
        if task in capable:
            values[task] = _item_values(output, task, key)
            totals[task] = item_count(capable[task], settings.limit_for(task))
    scores = check_scores(reported_scores, settings, f"model {model_path}: lm-eval scores")
    return EvaluationResult(
        scores=scores,
        fitness=fitness(scores, settings) if len(scores) == len(settings.tasks) else None,
        lm_eval_version=lm_eval_version(),
        seconds=seconds,
        stderr=stderr,
        samples=samples,
        n_shot=n_shot,
        items=values,
        items_total=totals,
    )
