"""Model cards that carry a merged child's whole family tree.

A card is built from the run summary alone (:class:`~mergekit_kinship.summary.RunSummary`),
never from the weights, so a card can be (re)written after the child's weights were deleted. It
is a Hub-valid ``README.md`` (huggingface_hub's ``ModelCard``): the metadata of
:mod:`mergekit_kinship.card_metadata`, then a Markdown body with the child's scores against its
parents', the lineage across all generations as a text tree, one row per merge in that lineage
(method, parents, parents' kinship, fitness, gain), the models of the lineage (hub id or local
path), the evaluation settings, the lineage file that rebuilds it from the foundation models
(:mod:`~mergekit_kinship.lineage_file`) and its own mergekit YAML.

Importing this module is cheap (huggingface_hub is imported when a card is built).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mergekit_kinship import lineage_file
from mergekit_kinship.atomic_io import write_text
from mergekit_kinship.card_metadata import LM_EVAL_URL, card_data, hub_ancestors
from mergekit_kinship.errors import UserError
from mergekit_kinship.formatting import MISSING, metric_value, number, with_error
from mergekit_kinship.metrics import ALIASES
from mergekit_kinship.summary import RunSummary

PAPER_URL = "https://arxiv.org/abs/2410.12613"


# ---------------------------------------------------------------------------------- pieces


def _kinship_text(kinship: dict | None) -> str:
    if not kinship:
        return MISSING
    parts = [f"{ALIASES.get(metric, metric)} {metric_value(value, ALIASES.get(metric, metric))}"
             for metric, value in kinship.items() if value is not None]
    return ", ".join(parts) or MISSING


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _label(summary: RunSummary, model_id: str) -> str:
    """One line that says what a model is, for the lineage tree."""
    model = summary.models[model_id]
    name = model.name if model.name == model_id else f"{model.name} [{model_id}]"
    if model.kind == "foundation":
        where = f"hub {model.hub_id}" if model.hub_id else "local"
        return f"{name}  foundation ({where})  fitness {with_error(model.fitness, model.fitness_stderr)}"
    parts = [name, f"gen {model.generation}", model.method or "?",
             f"parents' kinship {_kinship_text(model.parents_kinship)}",
             f"fitness {with_error(model.fitness, model.fitness_stderr)}",
             f"gain {with_error(model.gain, model.gain_stderr, signed=True)}"]
    if model.exploration:
        parts.append("exploration merge")
    if model.partial:
        parts.append("screened out (partial score)")
    return "  ".join(parts)


def lineage_tree(summary: RunSummary, model_id: str) -> str:
    """The family tree of ``model_id`` as text, the child at the root and parents below it. An
    ancestor reached twice (families interbreed) is drawn once and referred to afterwards."""
    lines = [_label(summary, model_id)]
    drawn = {model_id}

    def walk(node: str, prefix: str) -> None:
        parents = summary.models[node].parents
        for i, parent in enumerate(parents):
            branch, extend = ("└── ", "    ") if i == len(parents) - 1 else ("├── ", "│   ")
            if parent in drawn and summary.models[parent].parents:
                lines.append(f"{prefix}{branch}{summary.models[parent].name} (drawn above)")
                continue
            lines.append(prefix + branch + _label(summary, parent))
            drawn.add(parent)
            walk(parent, prefix + extend)

    walk(model_id, "")
    return "\n".join(lines)


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def _scores_table(summary: RunSummary, model_id: str) -> str:
    models = summary.models
    model = models[model_id]
    tasks = summary.tasks or list(model.scores)
    parents = model.parents
    header = ["task", f"**{model.name}**", *(models[p].name for p in parents)]
    if parents:
        header += ["parents' mean", "difference"]
    rows = [_row(header), "|" + "---|" * len(header)]

    def row(label: str, value, parent_values, errors, gain=None) -> str:
        cells = [label, *(with_error(v, e) for v, e in zip([value, *parent_values], errors))]
        if parents:
            known = [v for v in parent_values if v is not None]
            mean = sum(known) / len(known) if len(known) == len(parent_values) else None
            diff = value - mean if value is not None and mean is not None else None
            cells += [number(mean), gain if gain is not None else number(diff, signed=True)]
        return _row(cells)

    for task in tasks:
        rows.append(row(task, model.scores.get(task), [models[p].scores.get(task) for p in parents],
                        [m.stderr.get(task) for m in (model, *(models[p] for p in parents))]))
    rows.append(row("**fitness**", model.fitness, [models[p].fitness for p in parents],
                    [m.fitness_stderr for m in (model, *(models[p] for p in parents))],
                    with_error(model.gain, model.gain_stderr, signed=True) if parents else None))
    return "\n".join(rows)


def _references_table(summary: RunSummary, model_id: str) -> str | None:
    """This model's fitness against the run's references (the base model, one-shot baselines),
    scored with the same evaluation; None when the run scored none."""
    refs = [m for m in summary.references.values() if m.fitness is not None]
    if not refs:
        return None
    model = summary.models[model_id]
    rows = [_row(["reference", "what it is", "fitness", f"{model.name} minus it"]), "|---|---|---|---|"]
    for ref in refs:
        what = ("the shared base model itself" if ref.kind == "base" else
                f"one `{ref.method}` merge of all {len(ref.parents)} foundation models, no search")
        diff = model.fitness - ref.fitness if model.fitness is not None else None
        rows.append(_row([ref.name, what, number(ref.fitness), number(diff, signed=True)]))
    return "\n".join(rows)


def _merges_table(summary: RunSummary, members: list[str]) -> str:
    models = summary.models
    rows = [_row(["model", "generation", "method", "parents", "parents' kinship", "fitness",
                  "gain over parents"]), "|---|---|---|---|---|---|---|"]
    for model_id in members:
        model = models[model_id]
        if model.kind != "child":
            continue
        rows.append(_row([
            model.name + (" (exploration)" if model.exploration else ""), str(model.generation),
            model.method or MISSING, " × ".join(models[p].name for p in model.parents),
            _kinship_text(model.parents_kinship),
            with_error(model.fitness, model.fitness_stderr)
            + (" (screened out, partial)" if model.partial else ""),
            with_error(model.gain, model.gain_stderr, signed=True)]))
    return "\n".join(rows)


def _models_table(summary: RunSummary, members: list[str]) -> str:
    rows = [_row(["id", "name", "kind", "generation", "hub id / local path"]), "|---|---|---|---|---|"]
    for model_id in members:
        model = summary.models[model_id]
        where = model.hub_id or (f"`{model.path}`" if model.path else "(weights not kept)")
        rows.append(_row([f"`{model_id}`", model.name, model.kind, str(model.generation), where]))
    base = summary.base
    if base is not None:
        where = base.hub_id or (f"`{base.path}`" if base.path else MISSING)
        rows.append(_row([MISSING, base.name, "shared base (ancestor of the deltas)", MISSING, where]))
    return "\n".join(rows)


def _evaluation_text(summary: RunSummary) -> str:
    from mergekit_kinship.evaluation.describe import task_label

    settings = summary.evaluation
    if not settings:
        return "No evaluation settings were recorded."
    tasks = ", ".join(f"`{t}` ({task_label(settings, t)})" for t in settings.get("tasks", []))
    lines = [f"Scored with [lm-evaluation-harness]({LM_EVAL_URL}) on {tasks}."]
    details = [f"{key} = {settings[key]}"
               for key in ("apply_chat_template", "backend", "batch_size")
               if settings.get(key) not in (None, False, {})]
    if settings.get("model_args"):
        details.append(f"model_args = {json.dumps(settings['model_args'], sort_keys=True)}")
    if settings.get("include_path"):
        details.append(f"local tasks from `{settings['include_path']}`")
    if details:
        lines.append("Settings: " + "; ".join(details) + ".")
    if settings.get("limit") is not None:
        lines.append("With a `limit`, a score is measured on the first items of its task only.")
    weights = settings.get("weights") or {}
    mean = "weighted mean " + json.dumps(weights, sort_keys=True) if weights else "mean"
    lines.append(f"Fitness is the {mean} of the task scores; gain is the fitness minus the mean "
                 f"of the parents' fitness. ± is one standard error: over the items where "
                 f"per-item results were recorded (a gain paired item by item with its parents), "
                 f"else from lm-eval's per-task standard errors.")
    if settings.get("stages"):
        lines.append(f"Children were scored in stages ({', '.join(f'{f:g}' for f in settings['stages'])} "
                     f"of each task's items, subset seed {settings.get('subset_seed', 0)}): a child "
                     f"went on only while the one-sided {settings.get('confidence', 0.95):g} upper "
                     f"bound on its fitness reached the k-th best model's; the others were "
                     f"screened out with a partial score.")
    return " ".join(lines)


def screened_text(model) -> str | None:
    """What a screened-out model's partial score means; None for a fully scored model."""
    if not model.partial:
        return None
    scored, total = sum(model.items.values()), sum(model.items_total.values())
    s = model.screened_out
    why = (f" after stage {s.stage}: the upper confidence bound on its fitness, "
           f"{number(s.bound)}, was below the fitness of the k-th best model of the pool, "
           f"{number(s.threshold)}" if s is not None and s.bound is not None else "")
    return (f"**Screened out** by staged evaluation{why}. Its scores are partial: measured on "
            f"{scored} of the tasks' {total} items, so it never entered the top-k.")


# ---------------------------------------------------------------------------------- the card


def card_body(summary: RunSummary, model_id: str) -> str:
    """The card's Markdown body (everything below the metadata)."""
    models = summary.models
    model = models[model_id]
    members = summary.lineage(model_id)
    merges = [m for m in members if models[m].kind == "child"]
    intro = (
        f"**{model.name}** is a merge of pre-trained language models created with "
        f"[mergekit](https://github.com/arcee-ai/mergekit), chosen by mergekit-kinship's "
        f"Top-k greedy search guided by model kinship ([Hu et al., 2024]({PAPER_URL})): "
        f"strategy `{summary.strategy}`, top-k {summary.top_k}, kinship metric `{summary.metric}`. "
    )
    if model.kind == "child":
        parents = " and ".join(f"`{models[p].name}`" for p in model.parents)
        foundations = len([m for m in members if models[m].kind == "foundation"])
        intro += (
            f"It is a generation-{model.generation} `{model.method or '?'}` merge of {parents} "
            f"(parents' kinship {_kinship_text(model.parents_kinship)}"
            f"{'; the exploration merge of its generation' if model.exploration else ''}), "
            f"descending from {_count(foundations, 'foundation model')} through "
            f"{_count(len(merges), 'merge')}."
        )
    else:
        intro += "It is a foundation model of the run (not a merge)."
    if summary.best == model_id:
        intro += " It is the best model of the run."
    base = summary.base_reference()
    if base is not None and model.fitness is not None and model.kind == "child":
        diff = model.vs_base if model.vs_base is not None else model.fitness - base.fitness
        intro += (f" It {'beats' if diff > 0 else 'does not beat'} the base model itself "
                  f"({number(model.fitness)} against {number(base.fitness)}, "
                  f"{with_error(diff, model.vs_base_stderr, signed=True)}).")
    if screened_text(model):
        intro += " " + screened_text(model)
    # Say what the metadata holds, never point at a field it lacks.
    if hub_ancestors(summary, model_id):
        models_intro = ("Local intermediate models are not on the Hub, so `base_model` above lists "
                        "only the original hub ancestors; all of them are here.")
    else:
        models_intro = "No model of this lineage has a Hub id (owner/name); here is where each one is."

    sections = [
        f"# {model.name}",
        intro,
        "## Scores against its parents",
        _scores_table(summary, model_id),
        *(["## Against the references", "Scored with the same evaluation as every merge of the "
           "run, outside its search.", table]
          if (table := _references_table(summary, model_id)) else []),
        _evaluation_text(summary),
        "## Lineage",
        "The child at the top, each model's parents below it, down to the foundation models "
        "(kinship is measured between the parents' deltas from the shared base).",
        "```text\n" + lineage_tree(summary, model_id) + "\n```",
        "### Merges in this lineage",
        _merges_table(summary, members),
        "### Models in this lineage",
        models_intro,
        _models_table(summary, members),
    ]
    sections += lineage_file.card_sections(summary, model_id)  # lineage file and own YAML
    return "\n\n".join(sections) + "\n"


def build_card(summary: RunSummary, model_id: str):
    """The whole card as a ``huggingface_hub.ModelCard`` (metadata + body); UserError if
    ``model_id`` is not a model of the run."""
    from huggingface_hub import ModelCard

    if model_id not in summary.models:
        raise UserError(f"CHILD: no model {model_id!r} in this run")
    data = card_data(summary, model_id)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{card_body(summary, model_id)}")


def write_card(summary: RunSummary, model_id: str, out_path: str | os.PathLike) -> Path:
    """Build the card of ``model_id`` and write it to ``out_path`` atomically. Returns the path;
    OSError as the file system reports it."""
    return write_text(out_path, str(build_card(summary, model_id)))


def default_card_path(run_dir: str | os.PathLike, summary: RunSummary, model_id: str) -> Path:
    """``README.md`` inside a child's folder when its weights are kept, else
    ``RUN_DIR/cards/<id>/README.md``. A foundation model's folder is the user's (or the Hub
    cache's), never the run's: its card always goes under ``RUN_DIR/cards``."""
    model = summary.models[model_id]
    if model.kind == "child" and model.path and Path(model.path).is_dir():
        return Path(model.path) / "README.md"
    return Path(run_dir) / "cards" / model_id / "README.md"


def write_cards(run_dir: str | os.PathLike, summary: RunSummary) -> dict[str, Path]:
    """Write the card of every child of ``summary`` to :func:`default_card_path`. Returns
    id -> path."""
    return {model_id: write_card(summary, model_id, default_card_path(run_dir, summary, model_id))
            for model_id in summary.child_ids()}
