"""What every skill of the zoo is made of: the alphabet, an item, and distractor helpers.

A skill (``letter_skills``, ``digit_skills``) is a function of a :class:`random.Random` that
returns a prompt (``"rev abcd="``), its answer (``"dcba"``) and three distractors. Prompts carry a
three-letter operation tag so that one model can hold several skills at once; the answer follows
the ``=`` with no space, which is why the lm-eval tasks set ``target_delimiter: ""``.

Distractors are chosen to be *plausible* (another skill's answer on the same input, an off-by-one
sum) so that a model must actually know the skill to score, and are always distinct from the
answer and from each other, so no item is ambiguous. Everything here is pure Python and
deterministic for a given :class:`random.Random`.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass

LETTERS = string.ascii_lowercase
DIGITS = string.digits
# Every character a prompt or answer may contain; the tokenizer's vocabulary is built from it.
# "+" is used by no skill today; it stays, as the vocabulary decides every model's shape.
ALPHABET = LETTERS + DIGITS + " =+"

# A skill: rng -> (prompt, answer, three distractors).
Generator = Callable[[random.Random], tuple[str, str, list[str]]]


@dataclass(frozen=True)
class Item:
    """One example: ``prompt + answer`` is the training text; ``choices`` holds the answer once."""

    prompt: str
    answer: str
    choices: tuple[str, ...]

    @property
    def label(self) -> int:
        return self.choices.index(self.answer)


def pick(rng: random.Random, answer: str, candidates: list[str], n: int = 3) -> list[str]:
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


def swap(s: str, i: int) -> str:
    """``s`` with the characters at ``i`` and ``i + 1`` exchanged."""
    return s[:i] + s[i + 1] + s[i] + s[i + 2 :]
