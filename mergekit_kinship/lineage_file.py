"""Lineage files: one ``mergekit-multi`` config per child that rebuilds it from the foundation
models alone.

A child's own YAML (``RUN_DIR/yaml/<id>.yaml``) names an intermediate parent by its folder in the
run directory, so it runs only while that folder exists (``--keep`` prunes it). A lineage file
is a multi-document config for ``mergekit-multi`` (mergekit 0.1.5): one document per ancestor
merge, oldest first, each the ancestor's own mergekit configuration plus ``name: <stage>``, and
last the child's configuration without a name (``mergekit-multi`` writes that one to
``--out-path``). Every reference to an intermediate is replaced by its stage name, which
``mergekit-multi`` resolves to ``INTERMEDIATE_DIR/<stage>`` (``multimerge.patched_config``);
foundation models and the shared base stay as the run's YAML names them: a hub id (with its
``@revision`` when the recipe pinned one) or an absolute local path.

Seeds: a sampling method (DARE, DELLA, ...) needs the run's seed. ``mergekit-multi
--random-seed N`` hands it to every stage, and mergekit seeds each merge with it when it starts
(``mergekit.merge.run_merge``), as ``evolve`` seeded each child, so one flag rebuilds every stage
with the seed it was made with. The file's header gives the exact command.

Built from the run summary alone (:class:`~mergekit_kinship.summary.RunSummary`): a lineage file
can be written after every intermediate was pruned. Imports nothing heavy.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Optional

import yaml

from mergekit_kinship.atomic_io import write_text
from mergekit_kinship.summary import RunSummary

LINEAGE_DIR = "lineage"  # RUN_DIR/lineage/<child id>.yaml
FILE_NAME = "lineage.yaml"  # next to a kept child's weights
_SEED = re.compile(r"--random-seed (\d+)")  # what a child's YAML header says (children.py)
_STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def stage_names(summary: RunSummary, model_id: str) -> dict[str, str]:
    """Stage name of every ancestor merge of ``model_id`` (not the child itself): its display
    name (``g1-2``) when that is a plain, unique file name, else its id."""
    models = summary.models
    # A child without a YAML (merged elsewhere) is no stage: it is named by its folder.
    merges = [m for m in summary.lineage(model_id)
              if m != model_id and models[m].kind == "child" and models[m].yaml]
    names = [models[m].name for m in merges]

    def plain(m: str) -> bool:  # a file name, unique, and no other model's id
        name = models[m].name
        return bool(_STAGE_NAME.match(name)) and names.count(name) == 1 and (
            name == m or name not in models)

    return {m: models[m].name if plain(m) else m for m in merges}


def seeds(summary: RunSummary, model_id: str) -> set[int]:
    """The ``--random-seed`` values the merges of this lineage were made with (empty: no merge
    of it samples). Read from each YAML's header, which says how to run it."""
    return {seed for m in summary.lineage(model_id) for seed in _seeds_of(summary.models[m].yaml)}


def _seeds_of(yaml_text: Optional[str]) -> list[int]:
    header = [line for line in (yaml_text or "").splitlines() if line.startswith("#")]
    return [int(s) for s in _SEED.findall("\n".join(header))]


def _refers_to(ref: str, child_id: str, recorded_path: Optional[str]) -> bool:
    """Whether the model reference ``ref`` of a YAML names the child ``child_id``: its run folder
    (``.../models/<id>``, wherever the run directory lies now) or its recorded folder."""
    path = ref.partition("@")[0]
    return Path(path).name == child_id or (recorded_path is not None and path == recorded_path)


def _stage_config(summary: RunSummary, model_id: str, stages: dict[str, str]) -> dict[str, Any]:
    """``model_id``'s mergekit configuration with each intermediate parent named by its stage."""
    model = summary.models[model_id]
    config = yaml.safe_load(model.yaml)
    wanted = {p: stages[p] for p in model.parents if p in stages}
    used: set[str] = set()

    def patch(value):
        if isinstance(value, dict):
            return {k: patch(v) for k, v in value.items()}
        if isinstance(value, list):
            return [patch(v) for v in value]
        if isinstance(value, str):
            for parent, stage in wanted.items():
                if _refers_to(value, parent, summary.models[parent].path):
                    used.add(parent)
                    return stage
        return value

    config = patch(config)
    missing = set(wanted) - used
    if missing:  # the summary and the YAML disagree: never write a file that would not rebuild
        raise ValueError(f"{model.name}: its YAML does not name its parent(s) "
                         f"{', '.join(sorted(summary.models[p].name for p in missing))}")
    return config


def _dump(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100)


def rebuild_command(summary: RunSummary, model_id: str, file: str = FILE_NAME) -> str:
    """The command that rebuilds ``model_id`` from its lineage file ``file``.

    ``-I ./intermediate``, not ``-I intermediate``: mergekit's card code takes a model path with
    one slash that exists locally (``intermediate/g1-2``) for a hub id and asks the Hub about
    it, which fails offline; ``./intermediate/g1-2`` or an absolute path is local to it."""
    found = seeds(summary, model_id)
    seed = f" --random-seed {next(iter(found))}" if len(found) == 1 else ""
    return f"mergekit-multi {file} -I ./intermediate --out-path OUT_DIR{seed}"


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def documents(summary: RunSummary, model_id: str) -> list[tuple[Optional[str], str, dict]]:
    """The lineage of ``model_id`` as ``(stage name or None for the child, model id, config)``,
    oldest first. ValueError if it is not a child with a YAML, or a YAML and the summary
    disagree about its parents."""
    model = summary.models[model_id]
    if model.kind != "child" or not model.yaml:
        raise ValueError(f"{model.name}: not a merge of this run (no mergekit YAML)")
    stages = stage_names(summary, model_id)
    out = [(stage, m, {"name": stage, **_stage_config(summary, m, stages)})
           for m, stage in stages.items()]
    return out + [(None, model_id, _stage_config(summary, model_id, stages))]


def local_models(summary: RunSummary, model_id: str) -> list[str]:
    """The local folders (models without a hub id that are not stages, and the base) that the
    lineage file of ``model_id`` names: they must be at these paths where it is run."""
    stages = stage_names(summary, model_id)
    local = [summary.models[m].path for m in summary.lineage(model_id)
             if m != model_id and m not in stages and not summary.models[m].hub_id]
    if summary.base is not None and not summary.base.hub_id:
        local.append(summary.base.path)
    named = {s for _, _, config in documents(summary, model_id) for s in _strings(config)}
    return [path for path in dict.fromkeys(local) if path and path in named]


def lineage_yaml(summary: RunSummary, model_id: str) -> str:
    """The lineage file of the child ``model_id`` (see the module docstring); ValueError as
    :func:`documents`."""
    models = summary.models
    model = models[model_id]
    docs = documents(summary, model_id)
    stages = {m: stage for stage, m, _ in docs if stage}
    found = seeds(summary, model_id)
    header = [
        f"Rebuilds {model.name} ({model_id}) from the foundation models alone:",
        f"{_count(len(stages), 'intermediate merge')}, then {model.name} itself.",
        f"run: {rebuild_command(summary, model_id, 'THIS_FILE')}",
        "Each document is a mergekit configuration; `name: X` makes it a stage that later",
        "documents use as a model (mergekit-multi writes it to ./intermediate/X); the last",
        "document, without a name, is the model itself (written to OUT_DIR). Keep the ./ in -I:",
        "mergekit takes a path with one slash (intermediate/g1-2) for a hub id.",
    ]
    if len(found) > 1:
        header.append(f"The stages were merged with different seeds ({sorted(found)}): run each "
                      f"stage with the --random-seed its comment gives.")
    local = local_models(summary, model_id)
    if local:
        header.append("Local models (no hub id), needed at these paths:")
        header += [f"  {path}" for path in local]
    parts = []
    for stage, m, config in docs:
        what = f"{models[m].method or '?'} of " + " x ".join(
            f"stage {stages[p]}" if p in stages else models[p].name for p in models[m].parents)
        label = (f"stage {stage}: {models[m].name} ({m}), generation {models[m].generation}"
                 if stage else f"{model.name} ({m}), generation {model.generation}")
        what += "".join(f", seed {seed}" for seed in _seeds_of(models[m].yaml))
        parts.append(f"# {label}, {what}\n" + _dump(config))
    return "\n".join(f"# {line}" for line in header) + "\n" + "---\n".join(parts)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def lineage_path(run_dir: str | os.PathLike, model_id: str) -> Path:
    return Path(run_dir) / LINEAGE_DIR / f"{model_id}.yaml"


def write_lineage(run_dir: str | os.PathLike, summary: RunSummary, model_id: str) -> list[Path]:
    """Write the lineage file of ``model_id`` to ``RUN_DIR/lineage/<id>.yaml`` and, when its
    weights are kept, to ``lineage.yaml`` in its folder (so it travels with the model, e.g. to
    the Hub). Returns the paths written."""
    text = lineage_yaml(summary, model_id)
    written = [write_text(lineage_path(run_dir, model_id), text)]
    folder = summary.models[model_id].path
    if folder and Path(folder).is_dir():
        written.append(write_text(Path(folder) / FILE_NAME, text))
    return written


def write_lineage_files(run_dir: str | os.PathLike, summary: RunSummary) -> dict[str, list[Path]]:
    """:func:`write_lineage` for every child of the run that has a YAML. Returns id -> paths. A
    child whose YAML does not name its parents as the summary says gets none (its card says
    why): a run that ends writes what it can."""
    written = {}
    for model_id in summary.child_ids():
        if summary.models[model_id].yaml:
            try:
                written[model_id] = write_lineage(run_dir, summary, model_id)
            except ValueError:
                continue
    return written


def card_sections(summary: RunSummary, model_id: str) -> list[str]:
    """The model card's Markdown sections on rebuilding a child: its lineage file (which rebuilds
    it anywhere) and its own YAML (one merge, for people who merge each child themselves)."""
    models = summary.models
    model = models[model_id]
    if model.kind != "child" or not model.yaml:
        return []
    own = ("The mergekit YAML of this merge alone, as `plan` and `evolve` wrote it "
           f"(`yaml/{model_id}.yaml` in the run directory): "
           "`mergekit-yaml` runs it unchanged where every model it names exists.")
    try:
        text = lineage_yaml(summary, model_id)
    except ValueError as err:
        return ["## Merge configuration", f"{own} (No lineage file: {err}.)", _block(model.yaml)]
    stages = stage_names(summary, model_id)
    intermediate = [models[p].name for p in model.parents if p in stages]
    if intermediate:
        many = len(intermediate) > 1
        own += (f" Its parent{'s' if many else ''} " + " and ".join(f"`{n}`" for n in intermediate)
                + (" are named by their folders" if many else " is named by its folder")
                + " in the run directory: merge " + ("them" if many else "it") + " there first, "
                "or use the lineage file, which needs no such folder.")
    else:
        own += " Its parents are foundation models: it is the lineage file's only document."
    intro = (f"`{FILE_NAME}` below rebuilds this model from the foundation models alone with "
             "`mergekit-multi` (part of mergekit): each ancestor merge is a named stage, merged "
             "into `./intermediate/<stage>`, and the last document is this model. The run "
             f"directory keeps it as `{LINEAGE_DIR}/{model_id}.yaml`"
             + (f"; the model's folder, as `{FILE_NAME}`." if model.path else "."))
    if seeds(summary, model_id):
        intro += (" Some merges sample (e.g. DARE): `--random-seed` gives every stage the seed "
                  "the run merged it with.")
    local = local_models(summary, model_id)
    if local:
        intro += (" Models without a hub id are named by their folders on the machine that ran "
                  "the search (" + ", ".join(f"`{p}`" for p in local) + "): put them there or "
                  "edit those paths.")
    return ["## Rebuild it from the foundation models", intro,
            "```bash\n" + rebuild_command(summary, model_id) + "\n```",
            "```yaml\n" + text.rstrip("\n") + "\n```",
            "### This merge alone", own, _block(model.yaml)]


def _block(yaml_text: str) -> str:
    return "```yaml\n" + yaml_text.rstrip("\n") + "\n```"
