"""Every synthetic skill of the zoo by name, their held-out evaluation items, and training texts.

The skills themselves live in :mod:`~mergekit_kinship.zoo.letter_skills` (the built-in family's)
and :mod:`~mergekit_kinship.zoo.digit_skills` (the digits family's); which skills a family has is
a property of the family (:mod:`~mergekit_kinship.zoo.families`). Skill names are unique across
the zoo, and so are their prompt tags, so one held-out set serves every family. Everything here
is pure Python and deterministic for a given :class:`random.Random`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from mergekit_kinship.zoo.digit_skills import DIGIT_SKILLS
from mergekit_kinship.zoo.items import ALPHABET, Generator, Item
from mergekit_kinship.zoo.letter_skills import LETTER_SKILLS

__all__ = ["ALPHABET", "GENERATORS", "SKILLS", "Item", "eval_items", "held_out_prompts",
           "make_item", "training_stream"]

# skill name -> generator, for every skill of every family of the zoo.
GENERATORS: dict[str, Generator] = {**LETTER_SKILLS, **DIGIT_SKILLS}
# The built-in family's skills, in its order (the name callers outside the zoo know).
SKILLS = LETTER_SKILLS


def make_item(skill: str, rng: random.Random) -> Item:
    """One random item of ``skill``; choices are shuffled by ``rng``."""
    prompt, answer, distractors = GENERATORS[skill](rng)
    choices = [answer, *distractors]
    rng.shuffle(choices)
    return Item(prompt, answer, tuple(choices))


# Seed of the held-out evaluation items; training never sees their prompts.
EVAL_SEED = 20241016
EVAL_ITEMS = 100


def eval_items(skill: str, n: int = EVAL_ITEMS) -> list[Item]:
    """The fixed evaluation items of ``skill`` (distinct prompts), as shipped in the family's task
    folder. They depend on the skill alone, so a skill two families share has the same items."""
    rng = random.Random(f"{EVAL_SEED}-{skill}")
    items: list[Item] = []
    seen: set[str] = set()
    while len(items) < n:
        item = make_item(skill, rng)
        if item.prompt not in seen:
            seen.add(item.prompt)
            items.append(item)
    return items


def held_out_prompts(skills: Sequence[str] | None = None) -> frozenset[str]:
    """The evaluation prompts of ``skills`` (default: every skill of the zoo)."""
    return frozenset(item.prompt for skill in (GENERATORS if skills is None else skills)
                     for item in eval_items(skill))


def training_stream(skills: Sequence[str], rng: random.Random, exclude: frozenset[str],
                    replay: float = 0.0, rehearsal: Sequence[str] = ()):
    """Endless training texts ``(prompt, answer)``, prompts in ``exclude`` skipped.

    Skills are drawn uniformly from ``skills``, except that a fraction ``replay`` of the texts is
    drawn from ``rehearsal``, the whole family's skills (a fine-tune keeps some general ability).
    """
    if replay and not rehearsal:
        raise ValueError("replay needs the family's skills to rehearse")
    everything = list(rehearsal)
    while True:
        pool = everything if replay and rng.random() < replay else skills
        skill = pool[rng.randrange(len(pool))]
        prompt, answer, _ = GENERATORS[skill](rng)
        if prompt not in exclude:
            yield prompt, answer
