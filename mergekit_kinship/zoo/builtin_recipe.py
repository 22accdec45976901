"""The built-in family's recipe: one file, ``builtin-family.yaml`` beside this module (package
data), rendered for a built family of the zoo.

>>> family = build_family()
>>> data = builtin_recipe(family)        # the recipe mapping, with the family's absolute paths
>>> family.root / RECIPE_NAME            # the same, written by build_family: plan / evolve it

:func:`builtin_recipe` replaces three values of the file and nothing else: ``base`` and
``models`` (names of family members) by the members' folders, and ``evaluation.include_path``
(relative to the file) by the absolute folder. ``mergekit-kinship demo`` runs that mapping;
:func:`write_recipe` writes it into the family folder (build_family does so for every family it
returns), so users run the same recipe with ``plan`` and ``evolve``.

Another family of the zoo (``digits``) gets the same file with its own members and tasks: the
search (k, strategy, merge template, stopping, seed) and the evaluation settings are the built-in
recipe's, so two families are measured alike; ``models`` becomes the family's members in build
order and ``evaluation.tasks`` / ``metrics`` / ``include_path`` its tasks.

Only yaml, the standard library and the zoo's pure-Python definitions are imported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import yaml

from mergekit_kinship.atomic_io import write_text
from mergekit_kinship.errors import UserError
from mergekit_kinship.zoo.families import BUILTIN, METRIC, FamilyDef, family_def

if TYPE_CHECKING:
    from mergekit_kinship.zoo.family import Family

RECIPE_FILE = Path(__file__).with_name("builtin-family.yaml")
RECIPE_NAME = "recipe.yaml"  # the rendered recipe in a family folder


def recipe_template() -> dict:
    """The recipe file as it stands: members by name, ``include_path`` relative to the file."""
    return yaml.safe_load(RECIPE_FILE.read_text(encoding="utf-8"))


def _evaluation(template: dict, definition: FamilyDef) -> dict:
    evaluation = dict(template["evaluation"])
    if definition.name == BUILTIN:
        evaluation["include_path"] = str((RECIPE_FILE.parent / evaluation["include_path"]).resolve())
    else:
        tasks = definition.task_names
        evaluation.update(include_path=str(definition.tasks_dir.resolve()), tasks=tasks,
                          metrics={task: METRIC for task in tasks})
    return evaluation


def builtin_recipe(family: "Family") -> dict:
    """The built-in recipe for ``family``: the file with the family's absolute paths (and, for
    another family of the zoo, its members and tasks).

    Raises :class:`UserError` when the family lacks a member the recipe names (a family built
    from another :class:`~mergekit_kinship.zoo.family.FamilyConfig`).
    """
    data = recipe_template()
    definition = family_def(family.name)
    if definition.name != BUILTIN:
        data["models"] = list(family.models)
    members = {"base": family.base, **family.models}

    def folder(name: str) -> str:
        if name not in members:
            raise UserError(f"{family.root}: the built-in recipe names '{name}', which this "
                            f"family does not have (it has {', '.join(members)})")
        return str(members[name])

    data["base"] = folder(data["base"])
    data["models"] = [folder(name) for name in data["models"]]
    data["evaluation"] = _evaluation(data, definition)
    return data


def evaluation_settings(family: str = BUILTIN) -> dict:
    """The ``evaluation`` section of ``family``'s recipe, ``include_path`` absolute: how any
    model of the family (or a merge of its members) is scored.

    Keys are :class:`~mergekit_kinship.evaluation.EvaluationSettings` fields (``tasks``,
    ``metrics``, ``num_fewshot``, ``batch_size``, ``model_args``, ``include_path``). To score
    with lm-eval directly, pass ``include_path`` to ``lm_eval.tasks.TaskManager`` with
    ``include_defaults=False`` (indexing lm-eval's thousands of built-in tasks costs seconds);
    the fitness is the unweighted mean of each task's metric.
    """
    return _evaluation(recipe_template(), family_def(family))


def render(family: "Family") -> str:
    """The text of ``family``'s recipe.yaml: :func:`builtin_recipe` under a header that says
    where it comes from and how to run it."""
    path = Path(family.root) / RECIPE_NAME
    what = ("The built-in recipe with this family's paths" if family.name == BUILTIN else
            f"The built-in recipe on the {family.name} family's members and tasks")
    header = [
        f"# {what}, written by build_family (which rewrites",
        "# it: to change a setting, edit a copy). What each key means, in the source:",
        f"#   {RECIPE_FILE}",
        "# Run it:",
        f"#   mergekit-kinship plan   {path} --run-dir runs/{family.name} --dry-run",
        f"#   mergekit-kinship evolve {path} --run-dir runs/{family.name}",
    ]
    body = yaml.safe_dump(builtin_recipe(family), sort_keys=False, default_flow_style=False)
    return "\n".join(header) + "\n\n" + body


def write_recipe(family: "Family") -> Optional[Path]:
    """Write :func:`render` to ``family.root / recipe.yaml`` (atomically, only when it changed).

    Returns the path, or None when the family lacks a member the recipe names or its folder is
    not writable (nothing depends on the file: the demo renders the recipe in memory).
    """
    path = Path(family.root) / RECIPE_NAME
    try:
        text = render(family)
    except UserError:
        return None
    try:
        if not (path.is_file() and path.read_text(encoding="utf-8") == text):
            write_text(path, text)
    except OSError:
        return None
    return path
