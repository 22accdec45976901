"""The four synthetic skills of the built-in family, and their multiple-choice items.

A skill turns a random input into a prompt (``"rev abcd="``), its answer (``"dcba"``) and three
distractors. Prompts carry an operation tag so that one model can hold every skill at once; the
answer follows the ``=`` with no space, which is why the lm-eval tasks set ``target_delimiter: ""``.

Distractors are chosen to be *plausible* (another skill's answer on the same input, an off-by-one
sum) so that a model must actually know the skill to score, and are always distinct from the
answer and from each other, so no item is ambiguous. Everything here is pure Python and
deterministic for a given :class:`random.Random`.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Callable

LETTERS = string.ascii_lowercase
DIGITS = string.digits
# Every character a prompt or answer may contain; the tokenizer's vocabulary is built from it.
ALPHABET = LETTERS + DIGITS + " =+"  # digits and "+" unused by the current skills


@dataclass(frozen=True)
class Item:
    """One example: ``prompt + answer`` is the training text; ``choices`` holds the answer once."""

    prompt: str
    answer: str
    choices: tuple[str, ...]

    @property
    def label(self) -> int:
        return self.choices.index(self.answer)


def _letters(rng: random.Random, lo: int = 4, hi: int = 5) -> str:
    # Distinct letters: with a repeated letter two permutations can coincide and an item would
    # have two right answers.
    return "".join(rng.sample(LETTERS, rng.randint(lo, hi)))


def _shift(s: str, k: int) -> str:
    return "".join(LETTERS[(LETTERS.index(c) + k) % 26] for c in s)


def _pick(rng: random.Random, answer: str, candidates: list[str], n: int = 3) -> list[str]:
    """``n`` distinct distractors from ``candidates`` (in order of preference), padded at random."""
    out: list[str] = []
    for c in candidates:
        if c != answer and c not in out:
            out.append(c)
        if len(out) == n:
            break
    pool = list(answer)
    while len(out) < n:  # random permutations of the answer's own characters
        rng.shuffle(pool)
        c = "".join(pool)
        if c != answer and c not in out:
            out.append(c)
    return out


def _swap(s: str, i: int) -> str:
    return s[:i] + s[i + 1] + s[i] + s[i + 2 :]


def _nudge(s: str, i: int, k: int) -> str:
    """``s`` with the letter at ``i`` moved ``k`` places along the alphabet."""
    return s[:i] + _shift(s[i], k) + s[i + 1 :]


def _reverse(rng: random.Random) -> tuple[str, str, list[str]]:
    s = _letters(rng, 3, 4)
    answer = s[::-1]
    # Near misses (two neighbours swapped somewhere) and the input copied: knowing only the first
    # letter, or only that the answer is some permutation, is not enough.
    swaps = [_swap(answer, i) for i in rng.sample(range(len(answer) - 1), len(answer) - 1)]
    return f"rev {s}=", answer, _pick(rng, answer, [swaps[0], swaps[1], s, *swaps[2:]])


def _sort(rng: random.Random) -> tuple[str, str, list[str]]:
    s = _letters(rng)
    answer = "".join(sorted(s))
    # Sorted strings with one letter off by one (still sorted, so "is it in order?" does not
    # decide), plus the input itself.
    near = []
    for i in rng.sample(range(len(answer)), len(answer)):
        for k in (1, -1):
            c = _nudge(answer, i, k)
            if c == "".join(sorted(c)) and len(set(c)) == len(c):
                near.append(c)
    return f"srt {s}=", answer, _pick(rng, answer, [*near[:2], s, *near[2:]])


def _rotate(rng: random.Random) -> tuple[str, str, list[str]]:
    s = _letters(rng)
    answer = s[1:] + s[0]
    # Rotated the other way or twice, the input copied, and a near miss.
    return f"rot {s}=", answer, _pick(rng, answer, [s[-1] + s[:-1], s, s[2:] + s[:2],
                                                   _swap(answer, len(answer) - 2)])


def _shift_skill(rng: random.Random) -> tuple[str, str, list[str]]:
    s = _letters(rng, 3, 5)
    answer = _shift(s, 1)
    # One letter shifted by 0 or 2 instead of 1, and the input copied.
    near = [_nudge(answer, i, rng.choice((1, -1))) for i in rng.sample(range(len(s)), len(s))]
    return f"nxt {s}=", answer, _pick(rng, answer, [near[0], near[1], s, *near[2:]])


# skill name -> generator. Order is the family's order (children, tasks, fitness columns).
SKILLS: dict[str, Callable[[random.Random], tuple[str, str, list[str]]]] = {
    "reverse": _reverse,
    "sort": _sort,
    "rotate": _rotate,
    "shift": _shift_skill,
}


def make_item(skill: str, rng: random.Random) -> Item:
    """One random item of ``skill``; choices are shuffled by ``rng``."""
    prompt, answer, distractors = SKILLS[skill](rng)
    choices = [answer, *distractors]
    rng.shuffle(choices)
    return Item(prompt, answer, tuple(choices))


# Seed of the held-out evaluation items; training never sees their prompts.
EVAL_SEED = 20241016
EVAL_ITEMS = 100


def eval_items(skill: str, n: int = EVAL_ITEMS) -> list[Item]:
    """The fixed evaluation items of ``skill`` (distinct prompts), as shipped in ``tasks/``."""
    rng = random.Random(f"{EVAL_SEED}-{skill}")
    items: list[Item] = []
    seen: set[str] = set()
    while len(items) < n:
        item = make_item(skill, rng)
        if item.prompt not in seen:
            seen.add(item.prompt)
            items.append(item)
    return items


def held_out_prompts() -> frozenset[str]:
    return frozenset(item.prompt for skill in SKILLS for item in eval_items(skill))


def training_stream(skills: list[str], rng: random.Random, exclude: frozenset[str],
                    replay: float = 0.0):
    """Endless training texts ``(prompt, answer)``, held-out prompts skipped.

    Skills are drawn uniformly from ``skills``, except that a fraction ``replay`` of the texts is
    drawn from every skill of the family (rehearsal: a fine-tune keeps some general ability).
    """
    everything = list(SKILLS)
    while True:
        pool = everything if replay and rng.random() < replay else skills
        skill = pool[rng.randrange(len(pool))]
        prompt, answer, _ = SKILLS[skill](rng)
        if prompt not in exclude:
            yield prompt, answer
