"""The built-in family's four letter skills: reverse, sort, rotate and shift.

Each maps a few distinct lowercase letters to a string of the same letters (or their
neighbours in the alphabet). See :mod:`~mergekit_kinship.zoo.items` for
what a skill returns and how its distractors are chosen.
"""

from __future__ import annotations

import random

from mergekit_kinship.zoo.items import LETTERS, Generator, pick, swap


def _letters(rng: random.Random, lo: int = 4, hi: int = 5) -> str:
    # Distinct letters: with a repeated letter two permutations can coincide and an item would
    # have two right answers.
    return "".join(rng.sample(LETTERS, rng.randint(lo, hi)))


def _shift(s: str, k: int) -> str:
    return "".join(LETTERS[(LETTERS.index(c) + k) % 26] for c in s)


def _nudge(s: str, i: int, k: int) -> str:
    """``s`` with the letter at ``i`` moved ``k`` places along the alphabet."""
    return s[:i] + _shift(s[i], k) + s[i + 1 :]


def _reverse(rng: random.Random) -> tuple[str, str, list[str]]:
    s = _letters(rng, 3, 4)
    answer = s[::-1]
    # Near misses (two neighbours swapped somewhere) and the input copied: knowing only the first
    # letter, or only that the answer is some permutation, is not enough.
    swaps = [swap(answer, i) for i in rng.sample(range(len(answer) - 1), len(answer) - 1)]
    return f"rev {s}=", answer, pick(rng, answer, [swaps[0], swaps[1], s, *swaps[2:]])


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
    return f"srt {s}=", answer, pick(rng, answer, [*near[:2], s, *near[2:]])


def _rotate(rng: random.Random) -> tuple[str, str, list[str]]:
    s = _letters(rng)
    answer = s[1:] + s[0]
    # Rotated the other way or twice, the input copied, and a near miss.
    return f"rot {s}=", answer, pick(rng, answer, [s[-1] + s[:-1], s, s[2:] + s[:2],
                                                   swap(answer, len(answer) - 2)])


def _shift_skill(rng: random.Random) -> tuple[str, str, list[str]]:
    s = _letters(rng, 3, 5)
    answer = _shift(s, 1)
    # One letter shifted by 0 or 2 instead of 1, and the input copied.
    near = [_nudge(answer, i, rng.choice((1, -1))) for i in rng.sample(range(len(s)), len(s))]
    return f"nxt {s}=", answer, pick(rng, answer, [near[0], near[1], s, *near[2:]])


# skill name -> generator, in the built-in family's order (children, tasks, fitness columns).
LETTER_SKILLS: dict[str, Generator] = {
    "reverse": _reverse,
    "sort": _sort,
    "rotate": _rotate,
    "shift": _shift_skill,
}
