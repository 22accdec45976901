"""The card's Hub metadata (the YAML block of ``README.md``), built with huggingface_hub's
``ModelCardData``.

- ``base_model`` lists only the model's hub ancestors (the foundation models it descends from
  that have a hub id, and the shared base's hub id): the Hub rejects local paths there. With no
  hub ancestor there is no ``base_model`` (and no ``base_model_relation``).
- ``base_model_relation: merge``; tags ``merge``, ``mergekit``, ``model-kinship``;
- a ``model-index`` with one result per lm-eval task scored, with that task's n-shot.

huggingface_hub is imported when metadata is built, not with this module.
"""

from __future__ import annotations

from mergekit_kinship.hub import is_hub_id, split_revision
from mergekit_kinship.summary import RunSummary

TAGS = ["merge", "mergekit", "model-kinship"]
LM_EVAL_URL = "https://github.com/EleutherAI/lm-evaluation-harness"


def _hub_repo(value) -> str | None:
    """``org/name`` of a hub id (its revision dropped: ``base_model`` names repos), else None."""
    if not isinstance(value, str) or not is_hub_id(value, org_required=True):
        return None
    return split_revision(value)[0]


def hub_ancestors(summary: RunSummary, model_id: str) -> list[str]:
    """The Hub repos ``model_id`` descends from: its foundation ancestors' and the shared base's,
    each once, oldest first."""
    repos = [_hub_repo(summary.models[m].hub_id) for m in summary.lineage(model_id)
             if summary.models[m].kind == "foundation"]
    repos.append(_hub_repo(summary.base.hub_id) if summary.base else None)
    return list(dict.fromkeys(r for r in repos if r))


def eval_results(summary: RunSummary, model_id: str) -> list:
    """One ``huggingface_hub.EvalResult`` per task ``model_id`` was scored on."""
    from huggingface_hub import EvalResult

    from mergekit_kinship.evaluation.describe import task_fewshot, task_metric

    settings = summary.evaluation
    results = []
    for task, value in summary.models[model_id].scores.items():
        if value is None:
            continue
        metric = task_metric(settings, task)
        fewshot = task_fewshot(settings, task)  # each task's own: they may differ
        results.append(EvalResult(
            task_type="text-generation", dataset_type=task, dataset_name=task,
            dataset_args={"num_few_shot": fewshot} if fewshot is not None else None,
            metric_type=metric.split(",")[0], metric_name=metric, metric_value=float(value),
            source_name="lm-evaluation-harness", source_url=LM_EVAL_URL))
    return results


def card_data(summary: RunSummary, model_id: str):
    """The card's metadata (``huggingface_hub.ModelCardData``)."""
    from huggingface_hub import ModelCardData

    hub_ids = hub_ancestors(summary, model_id)
    results = eval_results(summary, model_id)
    return ModelCardData(
        base_model=hub_ids or None,
        base_model_relation="merge" if hub_ids else None,
        library_name="transformers",
        tags=list(TAGS),
        model_name=summary.models[model_id].name if results else None,
        eval_results=results or None,
    )
