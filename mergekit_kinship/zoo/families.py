"""The zoo's families as data: which skills each has, how its models are trained, its tasks.

Two families share the architecture, the character vocabulary and the builder, and nothing else:

- ``builtin`` (the demo's): four letter skills, a child per skill and a grandchild;
- ``digits``: four digit skills and one letter skill, a child per skill and a grandchild; built for
  measurements that need a second family with other skills (kinship from slightly negative to
  near 1, staged evaluation, merge methods side by side).

A family's skills are its children's and its lm-eval tasks (one per skill,
``<task_prefix><skill>`` in ``tasks_dir``); what a child rehearses (``replay``) is its base's
training mix (:attr:`FamilyConfig.rehearsal`). Only the standard library is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mergekit_kinship.errors import UserError

HERE = Path(__file__).parent
BUILTIN = "builtin"
METRIC = "acc"  # every zoo task's one metric (what a recipe's evaluation.metrics names)


@dataclass(frozen=True)
class Stage:
    """One model of the family: fine-tuned from ``parent`` on a uniform mix of ``skills``."""

    name: str
    parent: str | None  # None: trained from a fresh initialisation (the base)
    skills: tuple[str, ...]
    steps: int
    lr: float
    replay: float = 0.0  # fraction of texts drawn from the base's training mix


@dataclass(frozen=True)
class FamilyDef:
    """A family of the zoo: ``skills`` in the family's order (children, tasks, fitness columns)."""

    name: str
    skills: tuple[str, ...]
    stages: tuple[Stage, ...]  # the default recipe; FamilyConfig may replace it
    task_prefix: str
    tasks_dir: Path
    init_offset: int = 0  # added to the seed of the base's initialisation
    title: str = ""  # how the task files name the family ("the built-in family")

    def task_name(self, skill: str) -> str:
        return self.task_prefix + skill

    @property
    def task_names(self) -> list[str]:
        return [self.task_name(s) for s in self.skills]

    def cache_folder(self, config_hash: str) -> str:
        """The folder name of a build in the cache (the built-in family's name predates others)."""
        return f"family-{config_hash}" if self.name == BUILTIN else f"family-{self.name}-{config_hash}"


def _builtin() -> FamilyDef:
    """The demo's family, calibrated on 2 CPU cores (numbers in docs/demo.md):

    - the base sees every skill briefly, so it is mediocre at most of them (room to improve);
    - each child trains hard on one skill (plus 20 % rehearsal of all skills) and becomes the best
      model at it while forgetting part of the others, so SLERP merges of two children can gain;
    - the grandchild continues its parent's skill and adds a sibling's, so it stays close kin.
    A weaker base (120 steps) made merges lose; a stronger one (300) left no room above it.
    """
    skills = ("reverse", "sort", "rotate", "shift")
    stages = [Stage("base", None, skills, steps=200, lr=2e-3)]
    stages += [Stage(s, "base", (s,), steps=200, lr=2e-3, replay=0.2) for s in skills]
    stages.append(Stage("reverse_sort", "reverse", ("reverse", "sort"), steps=100, lr=1e-3))
    return FamilyDef(BUILTIN, skills, tuple(stages), "kinship_", HERE / "tasks",
                     title="the built-in family")


def _digits() -> FamilyDef:
    """A second family with other skills, calibrated the same way (numbers in docs/demo.md):

    - the base sees the four digit skills for 300 steps (at 200 it was too weak for any merge to
      gain, at 400 it mastered them all), so it is mediocre at most of them;
    - each digit child trains like the built-in family's (200 steps, 20 % rehearsal of the
      base's mix): best at its skill, siblings of moderate kinship; a SLERP of two children can
      beat their mean, though none beats the strongest child (``increment``);
    - ``shift``, the letter skill shared with the built-in family, is new to the base, and its
      child trains without rehearsal: it moves away from all its siblings share (kinship
      slightly negative), forgets much of the digit skills, and merges with it lose;
    - the grandchild ``increment_double`` continues ``increment`` on increment + double.
    """
    digit_skills = ("increment", "double", "odd", "swap")
    stages = [Stage("base", None, digit_skills, steps=300, lr=2e-3)]
    stages += [Stage(s, "base", (s,), steps=200, lr=2e-3, replay=0.2) for s in digit_skills]
    stages.append(Stage("shift", "base", ("shift",), steps=200, lr=2e-3))
    stages.append(Stage("increment_double", "increment", ("increment", "double"), steps=100,
                        lr=1e-3))
    return FamilyDef("digits", (*digit_skills, "shift"), tuple(stages), "digits_",
                     HERE / "tasks_digits", init_offset=1, title="the digits family")


FAMILIES: dict[str, FamilyDef] = {f.name: f for f in (_builtin(), _digits())}


def family_def(name: str) -> FamilyDef:
    """The family called ``name`` (UserError naming the known ones otherwise)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise UserError(f"unknown family '{name}' (known: {', '.join(FAMILIES)})") from None


def default_stages() -> tuple[Stage, ...]:
    """The built-in family's stages."""
    return FAMILIES[BUILTIN].stages
