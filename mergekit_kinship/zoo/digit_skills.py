"""The digits family's own skills: increment, double, count the odd digits, swap pairs.

Four kinds of work on the digits of the shared character vocabulary: a successor with carries
(``increment``), arithmetic where every digit carries into its neighbour (``double``), a count
over the whole input (``odd``) and a fixed permutation (``swap``). See
:mod:`~mergekit_kinship.zoo.items` for what a skill returns. Distractors have the answer's
length, so that lm-eval's summed log-likelihood (``acc``) cannot prefer a choice for being
shorter, and every skill offers at least three of them for any input (``items.pick`` would
otherwise look for permutations of a one-character answer forever).
"""

from __future__ import annotations

import random

from mergekit_kinship.zoo.items import DIGITS, Generator, pick, swap


def _same_length(answer: str, candidates: list[int]) -> list[str]:
    return [str(c) for c in candidates if c >= 0 and len(str(c)) == len(answer)]


def _increment(rng: random.Random) -> tuple[str, str, list[str]]:
    # Half the inputs end in one or two 9s, so the carry matters (uniform inputs rarely carry).
    nines = rng.choice((0, 0, 1, 2))
    if nines:
        head = str(rng.randint(10 if nines < 2 else 1, 99))
        x = int(head[:-1] + str(rng.randint(0, 8)) + "9" * nines)
    else:
        x = rng.randint(100, 999)
    answer = str(x + 1)
    # The carry dropped (...9 -> ...0 with the digit before unchanged), the input itself, off by
    # one, and a tens or hundreds digit wrong.
    dropped = [x - 9] if x % 10 == 9 else []
    near = _same_length(answer, [*dropped, x, x + 2, x + 11, x + 10, x - 1, x - 9, x + 101, x - 99])
    return f"inc {x}=", answer, pick(rng, answer, near)


def _double(rng: random.Random) -> tuple[str, str, list[str]]:
    a = rng.randint(100, 999)
    answer = str(2 * a)
    # Every digit doubled with its carry dropped (the leading 1 kept), then near misses in the
    # units, tens and hundreds.
    dropped = "".join(str(2 * int(c) % 10) for c in str(a))
    if len(answer) == 4:
        dropped = "1" + dropped
    offsets = [rng.choice((1, -1, 2, -2)), rng.choice((10, -10)), rng.choice((100, -100)),
               20, -20, 200]
    near = [dropped, *_same_length(answer, [2 * a + d for d in offsets])]
    return f"dbl {a}=", answer, pick(rng, answer, near)


def _odd(rng: random.Random) -> tuple[str, str, list[str]]:
    s = "".join(rng.choice(DIGITS) for _ in range(5))
    n = sum(int(c) % 2 for c in s)
    answer = str(n)
    # The neighbouring counts, nearest first (a count off by one is the likely mistake).
    offsets = [*rng.sample((1, -1), 2), *rng.sample((2, -2), 2), 3, -3, 4, -4]
    near = [str(n + d) for d in offsets if 0 <= n + d <= len(s)]
    return f"odd {s}=", answer, pick(rng, answer, near)


def _swap_pairs(rng: random.Random) -> tuple[str, str, list[str]]:
    # Distinct digits: with a repeated digit two permutations can coincide.
    s = "".join(rng.sample(DIGITS, rng.randint(4, 5)))
    answer = "".join(s[i + 1] + s[i] for i in range(0, len(s) - 1, 2)) + s[len(s) // 2 * 2 :]
    # Other permutations of the input (reversed, copied, rotated, one pair swapped) and a near
    # miss of the answer.
    near = [s[::-1], s, s[1:] + s[0], swap(s, 0), swap(s, len(s) - 2), swap(answer, 1)]
    return f"swp {s}=", answer, pick(rng, answer, near)


# skill name -> generator. Names and prompt tags are unique across the zoo (see zoo.skills).
DIGIT_SKILLS: dict[str, Generator] = {
    "increment": _increment,
    "double": _double,
    "odd": _odd,
    "swap": _swap_pairs,
}
