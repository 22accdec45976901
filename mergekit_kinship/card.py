"""Model cards that carry a merged child's whole family tree.

A card is built from the run summary alone (``RUN_DIR/summary.json``, written by the evolution
engine; its format is described in :func:`load_summary`), never from the weights, so a card can be
(re)written after the child's weights were deleted.

The card is a Hub-valid ``README.md`` built with huggingface_hub's ``ModelCard`` /
``ModelCardData``:

- metadata: ``base_model`` lists only the child's original hub ancestors (the foundation models it
  descends from that have a ``hub_id``, and the shared base's ``hub_id``) because the Hub rejects
  local paths there; ``base_model_relation: merge``; tags ``merge``, ``mergekit``,
  ``model-kinship``; a ``model-index`` with one result per lm-eval task.
- body: the child's scores against its parents', the lineage across all generations as a text
  tree, one row per merge in that lineage (method, parents, parents' kinship, fitness, gain), the
  models of the lineage (hub id or local path), the evaluation settings, and the exact mergekit
  YAML of this child and of every ancestor merge.

Importing this module is cheap (huggingface_hub is imported when a card is built).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from mergekit_kinship.errors import UserError

SUMMARY_FORMAT = 1
SUMMARY_FILE = "summary.json"
TAGS = ["merge", "mergekit", "model-kinship"]
LM_EVAL_URL = "https://github.com/EleutherAI/lm-evaluation-harness"
PAPER_URL = "https://arxiv.org/abs/2410.12613"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ---------------------------------------------------------------------------------- the summary


def load_summary(run_dir: str | os.PathLike) -> dict:
    """Read and check ``RUN_DIR/summary.json``.

    The summary (format 1) holds ``models`` (id -> name, path, kind "foundation" | "child", hub_id,
    generation, parents, exploration, method, yaml, parents_kinship, scores, fitness, gain),
    ``generations`` (index, children, top_k, best, best_fitness, mean_fitness, top_k_mutual_pcc),
    ``pool_kinship`` (names, matrix under the recipe's metric), ``evaluation`` (the lm-eval
    settings), ``base``, ``strategy``, ``top_k``, ``metric``, ``saturation_threshold``, ``stopped``
    and ``best``. Raises UserError (one line naming the file and field) when it is missing or
    inconsistent.
    """
    path = Path(run_dir) / SUMMARY_FILE
    if not Path(run_dir).is_dir():
        raise UserError(f"RUN_DIR {run_dir} is not a folder")
    if not path.is_file():
        raise UserError(f"{path} not found: run `mergekit-kinship evolve` on this run directory first")
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    check_summary(summary, str(path))
    return summary


def check_summary(summary: dict, where: str = SUMMARY_FILE) -> None:
    """UserError if ``summary`` lacks what cards and the report read."""
    if not isinstance(summary, dict):
        raise UserError(f"{where}: not a JSON object")
    if summary.get("format") != SUMMARY_FORMAT:
        raise UserError(f"{where}: format {summary.get('format')!r} is not {SUMMARY_FORMAT}")
    models = summary.get("models")
    if not isinstance(models, dict) or not models:
        raise UserError(f"{where}: models is missing or empty")
    for model_id, model in models.items():
        for key in ("name", "kind", "generation", "parents"):
            if key not in model:
                raise UserError(f"{where}: models.{model_id}.{key} is missing")
        for parent in model["parents"]:
            if parent not in models:
                raise UserError(f"{where}: models.{model_id}.parents names unknown model {parent!r}")
    for index, generation in enumerate(summary.get("generations") or []):
        for key in ("children", "top_k"):
            for model_id in generation.get(key, []):
                if model_id not in models:
                    raise UserError(f"{where}: generations[{index}].{key} names unknown model {model_id!r}")


def find_model(summary: dict, child: str) -> str:
    """The id of the model called ``child`` (its id, or its display name if that is unique)."""
    models = summary["models"]
    if child in models:
        return child
    named = [model_id for model_id, model in models.items() if model.get("name") == child]
    if len(named) == 1:
        return named[0]
    if named:
        raise UserError(f"CHILD: several models are named {child!r}; use its id ({', '.join(named)})")
    known = ", ".join(sorted(models))
    raise UserError(f"CHILD: no model {child!r} in this run (ids: {known})")


def lineage(summary: dict, model_id: str) -> list[str]:
    """``model_id`` and all its ancestors, each once, oldest generation first (within a generation,
    in the summary's order)."""
    models = summary["models"]
    seen: set[str] = set()
    stack = [model_id]
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(models[current]["parents"])
    order = {m: i for i, m in enumerate(models)}  # the run's own order (foundations as in the recipe)
    return sorted(seen, key=lambda m: (models[m]["generation"], models[m]["kind"] != "foundation", order[m]))


def hub_ancestors(summary: dict, model_id: str) -> list[str]:
    """The Hub ids the child descends from: its foundation ancestors' and the shared base's."""
    models = summary["models"]
    hub_ids = []
    for ancestor in lineage(summary, model_id):
        model = models[ancestor]
        if model["kind"] == "foundation" and _is_hub_id(model.get("hub_id")):
            hub_ids.append(model["hub_id"])
    base_hub = (summary.get("base") or {}).get("hub_id")
    if _is_hub_id(base_hub):
        hub_ids.append(base_hub)
    return list(dict.fromkeys(hub_ids))


def _is_hub_id(value) -> bool:
    return isinstance(value, str) and bool(_HUB_ID.match(value)) and not os.path.isabs(value)


# ---------------------------------------------------------------------------------- formatting


def _kinship_text(kinship: dict | None) -> str:
    if not kinship:
        return "–"
    return ", ".join(f"{metric} {value:.3f}" for metric, value in kinship.items() if value is not None)


def _number(value, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _label(summary: dict, model_id: str) -> str:
    """One line that says what a model is, for the lineage tree."""
    model = summary["models"][model_id]
    name = model["name"] if model["name"] == model_id else f"{model['name']} [{model_id}]"
    if model["kind"] == "foundation":
        where = f"hub {model['hub_id']}" if model.get("hub_id") else "local"
        return f"{name}  foundation ({where})  fitness {_number(model.get('fitness'))}"
    parts = [
        name,
        f"gen {model['generation']}",
        model.get("method") or "?",
        f"parents' kinship {_kinship_text(model.get('parents_kinship'))}",
        f"fitness {_number(model.get('fitness'))}",
        f"gain {_number(model.get('gain'), signed=True)}",
    ]
    if model.get("exploration"):
        parts.append("exploration merge")
    return "  ".join(parts)


def lineage_tree(summary: dict, model_id: str) -> str:
    """The family tree of ``model_id`` as text, the child at the root and parents below it. An
    ancestor reached twice (families interbreed) is drawn once and referred to afterwards."""
    lines = [_label(summary, model_id)]
    drawn = {model_id}

    def walk(node: str, prefix: str) -> None:
        parents = summary["models"][node]["parents"]
        for i, parent in enumerate(parents):
            last = i == len(parents) - 1
            branch, extend = ("└── ", "    ") if last else ("├── ", "│   ")
            if parent in drawn and summary["models"][parent]["parents"]:
                lines.append(f"{prefix}{branch}{summary['models'][parent]['name']} (drawn above)")
                continue
            lines.append(prefix + branch + _label(summary, parent))
            drawn.add(parent)
            walk(parent, prefix + extend)

    walk(model_id, "")
    return "\n".join(lines)


def _scores_table(summary: dict, model_id: str) -> str:
    models = summary["models"]
    model = models[model_id]
    tasks = list((summary.get("evaluation") or {}).get("tasks") or model.get("scores", {}))
    parents = model["parents"]
    header = ["task", f"**{model['name']}**", *(models[p]["name"] for p in parents)]
    if parents:
        header += ["parents' mean", "difference"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def row(label: str, value, parent_values) -> str:
        cells = [label, _number(value), *(_number(v) for v in parent_values)]
        known = [v for v in parent_values if v is not None]
        if parents:
            mean = sum(known) / len(known) if len(known) == len(parent_values) else None
            diff = value - mean if value is not None and mean is not None else None
            cells += [_number(mean), _number(diff, signed=True)]
        return "| " + " | ".join(cells) + " |"

    for task in tasks:
        rows.append(row(task, model.get("scores", {}).get(task),
                        [models[p].get("scores", {}).get(task) for p in parents]))
    rows.append(row("**fitness**", model.get("fitness"), [models[p].get("fitness") for p in parents]))
    return "\n".join(rows)


def _merges_table(summary: dict, members: list[str]) -> str:
    models = summary["models"]
    rows = [
        "| model | generation | method | parents | parents' kinship | fitness | gain over parents |",
        "|---|---|---|---|---|---|---|",
    ]
    for model_id in members:
        model = models[model_id]
        if model["kind"] != "child":
            continue
        name = model["name"] + (" (exploration)" if model.get("exploration") else "")
        parents = " × ".join(models[p]["name"] for p in model["parents"])
        rows.append(
            f"| {name} | {model['generation']} | {model.get('method') or '–'} | {parents} | "
            f"{_kinship_text(model.get('parents_kinship'))} | {_number(model.get('fitness'))} | "
            f"{_number(model.get('gain'), signed=True)} |"
        )
    return "\n".join(rows)


def _models_table(summary: dict, members: list[str]) -> str:
    models = summary["models"]
    rows = ["| id | name | kind | generation | hub id / local path |", "|---|---|---|---|---|"]
    for model_id in members:
        model = models[model_id]
        where = model.get("hub_id") or (f"`{model['path']}`" if model.get("path") else "(weights not kept)")
        rows.append(f"| `{model_id}` | {model['name']} | {model['kind']} | {model['generation']} | {where} |")
    base = summary.get("base") or {}
    if base:
        where = base.get("hub_id") or (f"`{base['path']}`" if base.get("path") else "–")
        rows.append(f"| – | {base.get('name', 'base')} | shared base (ancestor of the deltas) | – | {where} |")
    return "\n".join(rows)


def _evaluation_text(summary: dict) -> str:
    settings = summary.get("evaluation") or {}
    if not settings:
        return "No evaluation settings were recorded."
    metrics = settings.get("metrics") or {}
    tasks = ", ".join(f"`{t}` ({metrics.get(t, 'acc')})" for t in settings.get("tasks", []))
    lines = [f"Scored with [lm-evaluation-harness]({LM_EVAL_URL}) on {tasks}."]
    details = []
    for key in ("num_fewshot", "limit", "apply_chat_template", "backend", "batch_size"):
        if settings.get(key) not in (None, False, {}):
            details.append(f"{key} = {settings[key]}")
    if settings.get("model_args"):
        details.append(f"model_args = {json.dumps(settings['model_args'], sort_keys=True)}")
    if settings.get("include_path"):
        details.append(f"local tasks from `{settings['include_path']}`")
    if details:
        lines.append("Settings: " + "; ".join(details) + ".")
    if settings.get("limit") is not None:
        lines.append("With `limit` set, every score is measured on a subset of each task.")
    weights = settings.get("weights") or {}
    lines.append(
        "Fitness is the " + ("weighted mean " + json.dumps(weights, sort_keys=True) if weights else "mean")
        + " of the task scores; gain is the fitness minus the mean of the parents' fitness."
    )
    return " ".join(lines)


def _eval_results(summary: dict, model_id: str) -> list:
    from huggingface_hub import EvalResult

    settings = summary.get("evaluation") or {}
    metrics = settings.get("metrics") or {}
    fewshot = settings.get("num_fewshot")
    results = []
    for task, value in (summary["models"][model_id].get("scores") or {}).items():
        if value is None:
            continue
        results.append(
            EvalResult(
                task_type="text-generation",
                dataset_type=task,
                dataset_name=task,
                dataset_args={"num_few_shot": fewshot} if fewshot is not None else None,
                metric_type=metrics.get(task, "acc").split(",")[0],
                metric_name=metrics.get(task, "acc"),
                metric_value=float(value),
                source_name="lm-evaluation-harness",
                source_url=LM_EVAL_URL,
            )
        )
    return results


# ---------------------------------------------------------------------------------- the card


def card_data(summary: dict, model_id: str):
    """The card's metadata (``huggingface_hub.ModelCardData``)."""
    from huggingface_hub import ModelCardData

    model = summary["models"][model_id]
    hub_ids = hub_ancestors(summary, model_id)
    eval_results = _eval_results(summary, model_id)
    return ModelCardData(
        base_model=hub_ids or None,
        base_model_relation="merge" if hub_ids else None,
        library_name="transformers",
        tags=list(TAGS),
        model_name=model["name"] if eval_results else None,
        eval_results=eval_results or None,
    )


def card_body(summary: dict, model_id: str) -> str:
    """The card's Markdown body (everything below the metadata)."""
    models = summary["models"]
    model = models[model_id]
    members = lineage(summary, model_id)
    merges = [m for m in members if models[m]["kind"] == "child"]
    strategy = summary.get("strategy", "kinship")
    intro = (
        f"**{model['name']}** is a merge of pre-trained language models created with "
        f"[mergekit](https://github.com/arcee-ai/mergekit), chosen by mergekit-kinship's "
        f"Top-k greedy search guided by model kinship ([Hu et al., 2024]({PAPER_URL})): "
        f"strategy `{strategy}`, top-k {summary.get('top_k', '?')}, kinship metric "
        f"`{summary.get('metric', 'pcc')}`. "
    )
    if model["kind"] == "child":
        parents = " and ".join(f"`{models[p]['name']}`" for p in model["parents"])
        intro += (
            f"It is a generation-{model['generation']} `{model.get('method') or '?'}` merge of "
            f"{parents} (parents' kinship {_kinship_text(model.get('parents_kinship'))}"
            f"{'; the exploration merge of its generation' if model.get('exploration') else ''}), "
            f"descending from {_count(len([m for m in members if models[m]['kind'] == 'foundation']), 'foundation model')} "
            f"through {_count(len(merges), 'merge')}."
        )
    else:
        intro += "It is a foundation model of the run (not a merge)."
    if summary.get("best") == model_id:
        intro += " It is the best model of the run."

    sections = [
        f"# {model['name']}",
        intro,
        "## Scores against its parents",
        _scores_table(summary, model_id),
        _evaluation_text(summary),
        "## Lineage",
        "The child at the top, each model's parents below it, down to the foundation models "
        "(kinship is measured between the parents' deltas from the shared base).",
        "```text\n" + lineage_tree(summary, model_id) + "\n```",
        "### Merges in this lineage",
        _merges_table(summary, members),
        "### Models in this lineage",
        "Local intermediate models are not on the Hub, so `base_model` above lists only the "
        "original hub ancestors; all of them are here.",
        _models_table(summary, members),
    ]
    if model.get("yaml"):
        sections += ["## Merge configuration",
                     "The exact mergekit YAML that produced this model (`mergekit-yaml` runs it unchanged):",
                     "```yaml\n" + model["yaml"].rstrip("\n") + "\n```"]
    earlier = [m for m in merges if m != model_id and models[m].get("yaml")]
    if earlier:
        sections.append("### Configurations of the ancestor merges")
        for ancestor in earlier:
            sections.append(
                f"<details><summary>{models[ancestor]['name']} (generation {models[ancestor]['generation']})"
                f"</summary>\n\n```yaml\n{models[ancestor]['yaml'].rstrip(chr(10))}\n```\n\n</details>"
            )
    return "\n\n".join(sections) + "\n"


def build_card(summary: dict, model_id: str):
    """The whole card as a ``huggingface_hub.ModelCard`` (metadata + body)."""
    from huggingface_hub import ModelCard

    if model_id not in summary["models"]:
        raise UserError(f"CHILD: no model {model_id!r} in this run")
    data = card_data(summary, model_id)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{card_body(summary, model_id)}")


def write_card(summary: dict, model_id: str, out_path: str | os.PathLike) -> Path:
    """Build the card of ``model_id`` from ``summary`` (the dict of ``summary.json``) and write it
    to ``out_path`` atomically (a temporary file renamed into place). Returns the path."""
    check_summary(summary)
    card = build_card(summary, model_id)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".card-", suffix=".md", dir=out_path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(str(card))
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_path


def default_card_path(run_dir: str | os.PathLike, summary: dict, model_id: str) -> Path:
    """``README.md`` inside a child's folder when its weights are kept, else
    ``RUN_DIR/cards/<id>/README.md``. A foundation model's folder is the user's (or the Hub
    cache's), never the run's: its card always goes under ``RUN_DIR/cards``."""
    model = summary["models"][model_id]
    path = model.get("path")
    if model["kind"] == "child" and path and Path(path).is_dir():
        return Path(path) / "README.md"
    return Path(run_dir) / "cards" / model_id / "README.md"


def write_cards(run_dir: str | os.PathLike, summary: dict) -> dict[str, Path]:
    """Write the card of every child of ``summary`` to :func:`default_card_path` (its model folder
    when the weights are kept, else ``RUN_DIR/cards/<id>/README.md``). Returns id -> path."""
    check_summary(summary)
    return {model_id: write_card(summary, model_id, default_card_path(run_dir, summary, model_id))
            for model_id, model in summary["models"].items() if model["kind"] == "child"}


# ---------------------------------------------------------------------------------- the Hub


def push_to_hub(card_path: str | os.PathLike, repo_id: str, model_dir: str | os.PathLike | None = None,
                private: bool = False) -> str:
    """Upload the model folder ``model_dir`` (weights, tokenizer, card) to the Hub repo
    ``repo_id``, or only the card when the weights are gone. Returns the repo URL.

    Raises UserError (one line) when offline (``HF_HUB_OFFLINE``), not logged in, the repo id is
    malformed, or the Hub refuses.
    """
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if not _is_hub_id(repo_id):
        raise UserError(f"--push-to-hub: {repo_id!r} is not a Hub repo id (owner/name)")
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
        raise UserError("--push-to-hub: offline mode is on (HF_HUB_OFFLINE is set); unset it to push")
    token = get_token()
    if not token:
        raise UserError("--push-to-hub: not logged in to the Hugging Face Hub (run `hf auth login` or set HF_TOKEN)")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if model_dir is not None and Path(model_dir).is_dir():
            # The card goes up on its own below, so a stale README.md in the folder never wins.
            api.upload_folder(repo_id=repo_id, folder_path=str(model_dir), ignore_patterns=["README.md"],
                              commit_message="Upload merged model (mergekit-kinship)")
        api.upload_file(path_or_fileobj=str(card_path), path_in_repo="README.md", repo_id=repo_id,
                        commit_message="Model card with the family tree (mergekit-kinship)")
    except OfflineModeIsEnabled:
        raise UserError("--push-to-hub: offline mode is on (HF_HUB_OFFLINE is set); unset it to push") from None
    except HfHubHTTPError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--push-to-hub: the Hub refused {repo_id}: {first}") from None
    except (OSError, *_transport_errors()) as err:
        raise UserError(f"--push-to-hub: cannot reach the Hugging Face Hub ({type(err).__name__})") from None
    return f"https://huggingface.co/{repo_id}"


def _transport_errors() -> tuple:
    """Connection errors of the HTTP client huggingface_hub uses (httpx from 1.0, requests before)."""
    errors = []
    for module, name in (("httpx", "TransportError"), ("requests", "ConnectionError")):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)
