"""Model cards for any merged model: ``mergekit-kinship card PATH`` on a folder that
``mergekit-yaml`` or ``mergekit-multi`` (or ``mergekit-kinship merge``) wrote.

From the folder's ``mergekit_config.yml`` (mergekit's ``MergeConfiguration``):

- **the ancestor** the kinship is measured against: ``--base`` when given; else the config's
  ``base_model`` when the method takes it as the shared ancestor of task vectors
  (:mod:`mergekit_kinship.merge_methods` says which methods do: ``ties``, ``dare_*``,
  ``task_arithmetic``, ...); a method whose ``base_model`` is one of the merged models (``slerp``)
  or that has none (``linear``) needs ``--base`` (one line says so);
- **the inputs**: every model the config references, less the ancestor.

Kinship (inputs pairwise, each input with the merged model) comes from ``kinship.json`` in the
folder when it holds one about these inputs, else is measured
(:mod:`mergekit_kinship.card_kinship`).

The card is ``README.md`` (huggingface_hub's ``ModelCard``). An existing one (mergekit writes one)
is updated in place: its metadata keeps every key, with ``base_model`` set to the inputs' hub
ids, as mergekit lists them (a local path never: the Hub rejects it; with no hub id there is
no ``base_model``) and
``model-kinship`` added to the tags; its text is kept, and only our own section, between
:data:`BEGIN` and :data:`END`, is added or replaced. Without a README, that section also carries
mergekit's usual facts (method, inputs, the configuration).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from mergekit_kinship.atomic_io import write_text
from mergekit_kinship.errors import UserError
from mergekit_kinship.formatting import metric_value
from mergekit_kinship.hub import is_hub_id, split_revision
from mergekit_kinship.card_kinship import CardKinship, from_kinship_json, measure, same_model
from mergekit_kinship.merge_kinship import KINSHIP_FILE

CONFIG_FILE = "mergekit_config.yml"
CARD_FILE = "README.md"
BEGIN = "<!-- mergekit-kinship:begin (this section is rewritten by `mergekit-kinship card`) -->"
END = "<!-- mergekit-kinship:end -->"
TAGS = ["merge", "mergekit", "model-kinship"]
PAPER_URL = "https://arxiv.org/abs/2410.12613"
_SECTION = re.compile(r"<!-- mergekit-kinship:begin[^>]*-->.*?<!-- mergekit-kinship:end -->\n?",
                      re.S)


@dataclass
class MergedModel:
    """A merged model folder as its ``mergekit_config.yml`` describes it."""

    folder: Path
    config: Any  # mergekit.config.MergeConfiguration
    config_text: str
    method: str
    references: list[str]  # every model the config names (path or hub id[@revision]), once
    inputs: list[str]  # those, less the ancestor
    ancestor: str
    ancestor_from: str  # "config" (its task-vector base_model) or "--base"


def is_merged_model(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def read_merged_model(model_dir: str | os.PathLike, base: Optional[str] = None) -> MergedModel:
    """Read ``model_dir/mergekit_config.yml`` and resolve the inputs and the ancestor (see the
    module docstring). UserError (one line) for a folder without a readable config, a LoRA
    input, or no ancestor."""
    import yaml
    from mergekit.config import MergeConfiguration
    from pydantic import ValidationError

    from mergekit_kinship.merge_methods import method_info

    folder = Path(model_dir)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{folder}: no {CONFIG_FILE} (not a folder mergekit merged into)")
    text = path.read_text(encoding="utf-8")
    try:
        config = MergeConfiguration.model_validate(yaml.safe_load(text))
    except (yaml.YAMLError, ValidationError, ValueError) as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"{path}: not a mergekit configuration ({first})") from None
    refs = _references_in_order(config)
    lora = [r for r in refs if "+" in r]
    if lora:
        raise UserError(f"{path}: input {lora[0]} applies a LoRA; kinship of LoRA-applied inputs "
                        f"is not supported")
    try:
        role = method_info(config.merge_method).base
    except ValueError:
        role = None  # a method that does not merge two models the way a child is merged
    config_base = str(config.base_model) if config.base_model is not None else None
    if base is not None:
        ancestor, where = str(base), "--base"
    elif config_base is not None and role in ("ancestor", "optional"):
        ancestor, where = config_base, "config"
    else:
        why = ("its base_model is one of the merged models" if config_base else
               "the config names no base_model")
        raise UserError(f"{path}: {config.merge_method} takes no shared ancestor ({why}); pass "
                        f"--base MODEL, the model the inputs were fine-tuned from")
    inputs = [r for r in refs if same_model(r) != same_model(ancestor)]
    if not inputs:
        raise UserError(f"{path}: no merged model other than the ancestor {ancestor}")
    return MergedModel(folder=folder, config=config, config_text=text, method=config.merge_method,
                       references=refs, inputs=inputs, ancestor=ancestor, ancestor_from=where)


def _references_in_order(config) -> list[str]:
    """Every model ``config`` references, once, in the order the config names them (mergekit's
    ``referenced_models()`` is a set: its order changes from one process to the next)."""
    refs = [config.base_model] if config.base_model is not None else []
    groups = [config, *(config.modules or {}).values()]
    for group in groups:
        refs += [m.model for m in (getattr(group, "models", None) or [])]
        refs += [src.model for piece in (getattr(group, "slices", None) or []) for src in piece.sources]
    named = list(dict.fromkeys(str(r) for r in refs))
    rest = sorted({str(r) for r in config.referenced_models()} - set(named))
    return named + rest


def merge_kinship(merged: MergedModel, progress: bool = False) -> CardKinship:
    """``kinship.json``'s values when it is about these inputs (and this ancestor), else measured."""
    recorded = from_kinship_json(merged.folder, merged.inputs, merged.ancestor)
    if recorded is not None:
        return recorded
    return measure(merged.inputs, merged.ancestor, merged.folder, progress=progress)


def hub_inputs(merged: MergedModel) -> list[str]:
    """The models the merge read that are Hub repos (``org/name``, revision dropped), each once,
    as mergekit lists them: the config's ``base_model`` included, an ancestor given only with
    ``--base`` not (the merge never read it). A reference that is an existing local folder is
    local even if it reads like ``org/name``."""
    repos = [split_revision(r)[0] for r in merged.references
             if is_hub_id(r, org_required=True) and not Path(split_revision(r)[0]).exists()]
    return list(dict.fromkeys(repos))


# ---------------------------------------------------------------------------------- the text


def _cell(ref: str) -> str:
    return f"`{ref}`"


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def kinship_section(merged: MergedModel, kinship: CardKinship, hub_ids: list[str]) -> str:
    """Our section of the card (Markdown, without the markers)."""
    metrics = kinship.metrics
    source = ("measured during the merge (`kinship.json`)" if kinship.source == KINSHIP_FILE
              else "measured from the weights by `mergekit-kinship card`")
    ancestor = ("the config's `base_model`" if merged.ancestor_from == "config"
                else "given with `--base`")
    lines = [
        "## Kinship of the merged models",
        f"Model kinship ([Hu et al., 2024]({PAPER_URL})) of the `{merged.method}` merge's inputs: "
        f"the similarity of their weight deltas from the shared ancestor {_cell(merged.ancestor)} "
        f"({ancestor}), {source}. PCC and cosine are 1 for deltas pointing the same way and near "
        f"0 for unrelated ones; euclidean is the distance between two deltas (0: the same model).",
    ]
    n = len(merged.inputs)
    if n > 1:
        rows = [_row(["input", "input", *metrics]), "|" + "---|" * (2 + len(metrics))]
        for (i, j), values in sorted(kinship.pairs.items()):
            rows.append(_row([_cell(merged.inputs[i]), _cell(merged.inputs[j]),
                              *(metric_value(values.get(m), m) for m in metrics)]))
        lines.append("\n".join(rows))
    lines.append("Each input against this merged model:")
    rows = [_row(["input", *metrics]), "|" + "---|" * (1 + len(metrics))]
    for i, ref in enumerate(merged.inputs):
        values = kinship.with_output[i] if i < len(kinship.with_output) else {}
        rows.append(_row([_cell(ref), *(metric_value(values.get(m), m) for m in metrics)]))
    lines.append("\n".join(rows))
    local = [r for r in merged.references if split_revision(r)[0] not in hub_ids]
    if hub_ids:
        lines.append("The models the merge read from the Hub are listed as `base_model` in the "
                     "metadata" + ("; local ones are named by the paths the merge read them from."
                                   if local else "."))
    else:
        lines.append("Every input is a local folder (no Hub id), named by the path the merge read "
                     "it from.")
    return "\n\n".join(lines)


def mergekit_facts(merged: MergedModel) -> str:
    """What mergekit's own card says (method, inputs, configuration), for a folder without one."""
    inputs = "\n".join(f"* {_cell(r)}" for r in merged.inputs)
    return "\n\n".join([
        f"# {merged.folder.resolve().name}",
        "This is a merge of pre-trained language models created using "
        "[mergekit](https://github.com/arcee-ai/mergekit).",
        f"## Merge details\n\nMerge method: `{merged.method}`"
        + (f", with {_cell(str(merged.config.base_model))} as `base_model`"
           if merged.config.base_model is not None else "") + ".",
        f"The models merged:\n\n{inputs}",
        "The configuration (`mergekit_config.yml`):",
        "```yaml\n" + merged.config_text.rstrip("\n") + "\n```",
    ])


def _body(existing: str, section: str, merged: MergedModel) -> str:
    """``existing`` with our section replaced (or appended); mergekit's facts join our section
    when nothing else is there."""
    outside = _SECTION.sub("", existing).strip()
    block = f"{BEGIN}\n{section}\n{END}\n"
    if not outside:
        return f"{BEGIN}\n{mergekit_facts(merged)}\n\n{section}\n{END}\n"
    if _SECTION.search(existing):
        return _SECTION.sub(lambda _: block, existing, count=1)
    return existing.rstrip("\n") + "\n\n" + block


def build_merged_card(merged: MergedModel, kinship: CardKinship, existing: Optional[str] = None):
    """The card (``huggingface_hub.ModelCard``): ``existing`` (README text) updated, or a new
    one. UserError if ``existing`` has metadata that is not valid YAML."""
    from huggingface_hub import ModelCard, ModelCardData

    if existing:
        try:
            card = ModelCard(existing)
        except ValueError as err:
            raise UserError(f"{merged.folder / CARD_FILE}: its metadata cannot be read ({err}); "
                            f"fix or remove it") from None
        data, text = card.data, card.text
    else:
        data, text = ModelCardData(library_name="transformers"), ""
    hub_ids = hub_inputs(merged)
    data.base_model = hub_ids or None
    data.base_model_relation = "merge" if hub_ids else None
    data.tags = list(dict.fromkeys([*(data.tags or []), *TAGS]))
    if not getattr(data, "library_name", None):
        data.library_name = "transformers"
    body = _body(text, kinship_section(merged, kinship, hub_ids), merged)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def write_merged_card(model_dir: str | os.PathLike, base: Optional[str] = None, *,
                      out_path: Optional[str | os.PathLike] = None,
                      progress: bool = False) -> Path:
    """Write the card of the merged model in ``model_dir`` (see the module docstring) to
    ``out_path`` (default ``model_dir/README.md``), updating the README already there. Returns
    the path. UserError for a folder that is not a merge, no ancestor, or a card that cannot be
    written; the kinship engine's UserErrors (an input that cannot be opened) pass through."""
    merged = read_merged_model(model_dir, base)
    kinship = merge_kinship(merged, progress=progress)
    target = Path(out_path) if out_path else merged.folder / CARD_FILE
    existing = None
    for candidate in (target, merged.folder / CARD_FILE):  # update --out, else mergekit's card
        if candidate.is_file():
            existing = candidate.read_text(encoding="utf-8")
            break
    card = build_merged_card(merged, kinship, existing)
    try:
        return write_text(target, str(card))
    except OSError as err:
        raise UserError(f"{target}: cannot write the card ({err.strerror or err})") from None
