"""The pre-flight: every check ``evolve`` makes before its first merge that needs no weights.

One function, :func:`preflight`, used by ``evolve``, ``plan`` and ``plan --dry-run`` alike, so a
dry run promises only what ``evolve`` will accept. It reads recipe fields, ``config.json`` files
and safetensors headers (a few KB per file), lm-eval's task index, and the run directory's
recipe; it never reads a weight and never touches the network (hub models are checked when they
are fetched). What it cannot see without reading weights, a foundation model listed twice under
two folders with the same bytes, is refused when the pool computes content identities.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from mergekit_kinship.errors import UserError
from mergekit_kinship.recipe import Recipe
from mergekit_kinship.rundir import RunDir

# Recipe fields that decide which children exist: a run directory made with other values holds
# a different search. Evaluation (re-scored by content) and stopping (a longer or shorter run of
# the same search) may change between runs of one directory.
SEARCH_FIELDS = ("base", "models", "merge", "strategy", "top_k", "metric", "seed")

BUILD_HINT = ("if it is one of the toy families, build it first: `mergekit-kinship demo`, or "
              "`python -c \"from mergekit_kinship import build_family; build_family('DIR')\"`"
              " (family='digits' for the second one)")


def preflight(recipe: Recipe, *, run_dir: str | Path | None = None,
              lm_eval_tasks: bool = True) -> None:
    """Raise :class:`UserError` (one line naming the field, file or tensor) for anything in
    ``recipe`` (and ``run_dir``, when given and already used) that ``evolve`` would refuse.

    ``lm_eval_tasks``: check the evaluation against lm-eval's task index (off when a custom
    evaluator scores the models, which knows its own tasks).
    """
    check_models_exist(recipe)
    check_foundation_models(recipe)
    check_merge_template(recipe)
    if lm_eval_tasks:
        from mergekit_kinship.evaluation.tasks import validate_evaluation

        validate_evaluation(recipe.evaluation)
    if run_dir is not None:
        check_run_dir_compatible(RunDir(run_dir), recipe)


def check_models_exist(recipe: Recipe) -> None:
    """Every local model folder of the recipe exists and holds a config.json."""
    for label, spec in [("base", recipe.base), *(("models", m) for m in recipe.models)]:
        if spec.path is None:
            continue
        if not Path(spec.path, "config.json").is_file():
            hint = f"; {BUILD_HINT}" if _looks_like_the_builtin_family(spec.path) else ""
            raise UserError(f"{label}: {spec.path} is not a model folder (no config.json){hint}")


def _looks_like_the_builtin_family(path: str) -> bool:
    """A folder named like a member of one of the zoo's families (base, reverse, increment ...)."""
    from mergekit_kinship.zoo.families import FAMILIES

    members = {stage.name for family in FAMILIES.values() for stage in family.stages}
    return Path(path).name in members


def check_merge_template(recipe: Recipe) -> None:
    """A child YAML built from the template parses with mergekit's own schema."""
    from mergekit_kinship.merging import child_config, render_yaml, validate_yaml

    refs = [m.path if m.path is not None else m.reference for m in recipe.models]
    ancestor = recipe.base.path if recipe.base.path is not None else recipe.base.reference
    try:
        validate_yaml(render_yaml(child_config(recipe.merge, refs[0], refs[1], ancestor)))
    except Exception as err:  # pydantic's ValidationError from mergekit, with its field path
        first = (str(err).strip().splitlines() or [type(err).__name__])
        raise UserError(f"merge: mergekit refuses the child configuration "
                        f"({' '.join(first[:3])[:300]})") from None


def check_run_dir_compatible(rd: RunDir, recipe: Recipe) -> None:
    """Refuse a run directory whose recipe differs from ``recipe`` in a :data:`SEARCH_FIELDS`
    field (one line naming the fields and a free directory to use instead)."""
    if not rd.recipe_path.is_file():
        return
    try:
        old = yaml.safe_load(rd.recipe_path.read_text())
    except yaml.YAMLError:
        old = None
    if not isinstance(old, dict):
        raise UserError(f"{rd.recipe_path}: unreadable; this run directory was not written by "
                        f"mergekit-kinship evolve (use another --run-dir)")
    from mergekit_kinship.metrics import ALIASES

    new = recipe.to_dict()
    if isinstance(old.get("metric"), str):  # written with the paper's alias (cs, ed)
        old["metric"] = ALIASES.get(old["metric"], old["metric"])
    differ = [f for f in SEARCH_FIELDS if old.get(f) != new.get(f)]
    if not differ:
        return

    def show(v: Any) -> str:
        text = v if isinstance(v, (str, int, float)) else json.dumps(v, sort_keys=True)
        return str(text) if len(str(text)) <= 40 else str(text)[:37] + "..."

    changes = "; ".join(f"{f} {show(old.get(f))} -> {show(new.get(f))}" for f in differ)
    n = 2
    while rd.path.with_name(f"{rd.path.name}-{n}").exists():
        n += 1
    raise UserError(f"{rd.path}: made by an incompatible recipe ({changes}); evaluation and "
                    f"stopping may change, these may not: use a new --run-dir, e.g. "
                    f"{rd.path.with_name(f'{rd.path.name}-{n}')}")


def check_foundation_models(recipe: Recipe) -> None:
    """Every local foundation model shares the base's architecture, tensor names and shapes,
    is not the base itself and is listed once.

    Reads config.json and the safetensors headers only (a few KB per file, no weights); hub
    models are checked when fetched. Raises :class:`UserError` naming the model and the tensor.
    """
    from mergekit_kinship.models import check_compatible, open_model
    from mergekit_kinship.kinship_selection import added_vocab_rows

    seen: dict[Any, str] = {}
    for spec in recipe.models:
        where = Path(spec.path).resolve() if spec.path is not None else spec.reference
        if where in seen:
            raise UserError(f"models: {spec.display_name} and {seen[where]} are the same model "
                            f"({spec.reference}); list each foundation model once")
        seen[where] = spec.display_name
    if recipe.base.path is None:
        return
    with open_model(recipe.base.path) as base:
        for spec in recipe.models:
            if spec.path is None:
                continue
            if Path(spec.path).resolve() == Path(recipe.base.path).resolve():
                # Found only after scoring otherwise: its delta is zero, kinship is undefined.
                raise UserError(f"models: {spec.display_name} is the base itself "
                                f"({recipe.base.path}): a foundation model must be a fine-tune "
                                f"of the base")
            with open_model(spec.path) as model:
                check_compatible([model], base)
                _check_tensors(recipe, spec, model, base, added_vocab_rows)


def _check_tensors(recipe: Recipe, spec, model, base, added_vocab_rows) -> None:
    for name, info in base.tensors.items():
        other = model.tensors.get(name)
        if other is None:
            raise UserError(f"{spec.path}: no tensor '{name}' (the base {recipe.base.path} has "
                            f"it): not a fine-tune of the base")
        if tuple(other.shape) == tuple(info.shape):
            continue
        if added_vocab_rows(name, other, info, model):
            # Added tokens: kinship compares the shared rows; mergekit needs to be told which
            # vocabulary the children get.
            if recipe.merge.tokenizer is None:
                raise UserError(
                    f"{spec.path}: {other.shape[0]} vocabulary rows in '{name}', the base has "
                    f"{info.shape[0]} (added tokens): set merge.tokenizer (e.g. "
                    f"{{source: union}}) so that mergekit can merge parents with different "
                    f"vocabularies")
            continue
        raise UserError(f"{spec.path}: tensor '{name}' has shape {list(other.shape)}, the base's "
                        f"is {list(info.shape)}: not a fine-tune of the base")

