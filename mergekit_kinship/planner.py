"""Algorithm 1 of the paper (Top-k greedy merging with model kinship) and its baselines.

Pure functions over the pool: model ids, their fitness, the kinship between them and the set of
pairs merged so far. Nothing here reads or writes files, imports torch or mergekit, or looks at
a clock (its one import of ours, :mod:`mergekit_kinship.metrics`, is pure too), so the whole
search can be tested with a stand-in evaluator in milliseconds.

Algorithm 1 (Hu et al., arXiv 2410.12613, App. C.1), as planned here::

    G1 = every pair of the foundation models                        (first_generation)
    S  = top-k of the pool by fitness                               (top_k)
    repeat:
        G  = every pair of S not merged before                      (greedy step)
        m_best = best of S
        m_f = the model of the WHOLE pool with the lowest kinship to m_best,
              among those not merged with m_best before (nor in G)    (exploration)
        G += (m_best, m_f)
        pool += G; evaluate G; S' = top-k of the pool
    until S' == S                                                   (stop_reason)

Strategies live in one registry (:data:`STRATEGIES`): ``kinship`` (the algorithm above),
``greedy`` (no exploration merge) and ``random`` (the paper's baseline: as many random untried
pairs of the whole pool as the greedy step would have, k(k-1)/2).

Staged evaluation (:mod:`mergekit_kinship.staging`) adds one rule: a child *screened out* (its
evaluation stopped early, so its fitness is a partial score) never enters the top-k, so the
greedy step never merges it and it is never m_best. It stays a pool member otherwise: its pair
was merged, its kinship is known, and it may be the exploration partner m_f, which is chosen by
kinship alone (so with or without stages, a run whose top-k agree plans the same children).

One reading is ours: the paper takes m_f as the lowest-kinship model of the pool and never says
what happens when (m_best, m_f) was merged before. Merging a pair twice gives the same child, so
the partner is the least related model that m_best has *not* been merged with yet. Otherwise a
foundation model that stays best would never explore (its least related kin are the other
foundation models, all merged in G1), and the kinship strategy would silently become greedy.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

from mergekit_kinship.metrics import relatedness

# kinship(a, b) -> value of the recipe metric; None when unknown.
KinshipLookup = Callable[[str, str], Optional[float]]


@dataclass(frozen=True)
class Candidate:
    """A child to make: ``parents[0]`` is parent A (the better ranked; slerp's t = 0 end)."""

    parents: tuple[str, str]
    exploration: bool = False

    @property
    def pair(self) -> frozenset[str]:
        return frozenset(self.parents)


@dataclass(frozen=True)
class PoolState:
    """Everything a strategy may look at before planning generation ``generation``.

    ``models``: the pool in order of entry (foundation models first, then children generation by
    generation); that order breaks ties everywhere, so the plan is deterministic.
    ``fitness``: model id -> fitness (higher is better) for every model of the pool.
    ``kinship``: lookup of the recipe metric between two pool models.
    ``metric``: a name of :mod:`mergekit_kinship.metrics` (``pcc``, ``cosine``, ``euclidean``,
    ``sign_conflict`` or an alias); a distance (``euclidean``, ``sign_conflict``: larger = less
    related) is turned around by
    :func:`~mergekit_kinship.metrics.relatedness`.
    ``merged``: the parent pairs merged in earlier generations.
    ``screened``: models screened out by staged evaluation: never in the top-k (their fitness
    is a partial score), ranked after every other model when a pair is oriented.
    """

    models: tuple[str, ...]
    fitness: Mapping[str, float]
    kinship: KinshipLookup
    metric: str
    top_k: int
    generation: int
    merged: frozenset[frozenset[str]] = field(default_factory=frozenset)
    seed: int = 0
    screened: frozenset[str] = field(default_factory=frozenset)


def top_k(models: Sequence[str], fitness: Mapping[str, float], k: int,
          screened: frozenset[str] = frozenset()) -> list[str]:
    """The k fittest models, best first; ties go to the model that entered the pool first.
    ``screened`` models (a partial score) are never among them."""
    order = {m: i for i, m in enumerate(models)}
    return sorted((m for m in models if m not in screened),
                  key=lambda m: (-fitness[m], order[m]))[:k]


def exploration_partner(best: str, state: PoolState,
                        exclude: frozenset[frozenset[str]] = frozenset()) -> Optional[str]:
    """The model of the whole pool least related to ``best`` (lowest PCC or cosine, largest
    euclidean distance or sign conflict) that ``best`` has not been merged with (``state.merged``) and is not
    paired with in ``exclude``. None when every model has been merged with ``best``."""
    scored = []
    for i, m in enumerate(state.models):
        pair = frozenset((best, m))
        if m == best or pair in state.merged or pair in exclude:
            continue
        value = state.kinship(best, m)
        if value is None:
            raise ValueError(f"kinship of {best} and {m} is unknown")
        scored.append((relatedness(state.metric, value), i, m))
    return min(scored)[2] if scored else None


def oriented(a: str, b: str, state: PoolState) -> tuple[str, str]:
    """Order a pair as (parent A, parent B): the fitter model first (a screened-out model, whose
    fitness is a partial score, after every fully scored one)."""
    ranked = top_k(state.models, state.fitness, len(state.models), state.screened)
    ranked += [m for m in state.models if m in state.screened]
    return (a, b) if ranked.index(a) < ranked.index(b) else (b, a)


def first_generation(state: PoolState) -> list[Candidate]:
    """G1: every pair of the foundation models (the whole pool before any merge)."""
    return [Candidate(oriented(a, b, state)) for a, b in itertools.combinations(state.models, 2)]


def greedy_step(state: PoolState) -> list[Candidate]:
    """Every pair of the top-k not merged before, in rank order."""
    survivors = top_k(state.models, state.fitness, state.top_k, state.screened)
    return [Candidate((a, b)) for a, b in itertools.combinations(survivors, 2)
            if frozenset((a, b)) not in state.merged]


# ---------------------------------------------------------------------------------------------
# Strategy registry
# ---------------------------------------------------------------------------------------------

Strategy = Callable[[PoolState], list[Candidate]]
STRATEGIES: dict[str, Strategy] = {}


def register_strategy(name: str):
    """Register a strategy by name; a duplicate name is an error."""

    def deco(fn: Strategy) -> Strategy:
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} is already registered")
        STRATEGIES[name] = fn
        return fn

    return deco


@register_strategy("kinship")
def kinship_strategy(state: PoolState) -> list[Candidate]:
    """Greedy step plus one exploration merge of the best model with its least related kin."""
    children = greedy_step(state)
    best = top_k(state.models, state.fitness, 1, state.screened)[0]
    partner = exploration_partner(best, state, frozenset(c.pair for c in children))
    if partner is not None:
        children.append(Candidate((best, partner), exploration=True))
    return children


@register_strategy("greedy")
def greedy_strategy(state: PoolState) -> list[Candidate]:
    """Plain Top-k greedy merging: the paper's baseline without exploration."""
    return greedy_step(state)


@register_strategy("random")
def random_strategy(state: PoolState) -> list[Candidate]:
    """k(k-1)/2 random untried pairs of the whole pool, seeded by (seed, generation)."""
    untried = [(a, b) for a, b in itertools.combinations(state.models, 2)
               if frozenset((a, b)) not in state.merged]
    rng = random.Random(f"{state.seed}:{state.generation}")
    count = min(len(untried), state.top_k * (state.top_k - 1) // 2)
    return [Candidate(oriented(a, b, state)) for a, b in rng.sample(untried, count)]


def plan_generation(strategy: str, state: PoolState, merges_left: Optional[int] = None
                    ) -> list[Candidate]:
    """The children of generation ``state.generation`` (1 = every foundation pair).

    ``merges_left`` caps the generation (a merge budget): candidates are kept in plan order,
    greedy pairs by rank first, the exploration merge last.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}")
    if state.generation == 1:
        children = first_generation(state)
    else:
        children = STRATEGIES[strategy](state)
    seen: set[frozenset[str]] = set()
    unique = []
    for c in children:  # a strategy must never merge a pair twice
        if c.pair not in state.merged and c.pair not in seen and len(c.pair) == 2:
            seen.add(c.pair)
            unique.append(c)
    return unique if merges_left is None else unique[:max(merges_left, 0)]


def mutual_kinship(models: Sequence[str], kinship: KinshipLookup) -> Optional[float]:
    """Mean pairwise kinship of a set of models (the paper's n-model kinship)."""
    values = [kinship(a, b) for a, b in itertools.combinations(models, 2)]
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)


def stop_reason(*, generation: int, previous_top: Sequence[str], new_top: Sequence[str],
                merges_done: int, planned_next: int, max_generations: int,
                max_merges: Optional[int], saturation: Optional[float],
                top_k_mutual_pcc: Optional[float]) -> Optional[str]:
    """Why the loop stops after ``generation``, or None to go on.

    The paper's rule is checked from generation 2 on (G1 is the seed of the search): the top-k
    set did not change, or the next generation has no untried pair (``planned_next == 0``).
    """
    if generation >= 2 and set(previous_top) == set(new_top):
        return "top-k unchanged"
    if saturation is not None and top_k_mutual_pcc is not None and top_k_mutual_pcc > saturation:
        return "saturation"
    if generation >= max_generations:
        return "max generations"
    if max_merges is not None and merges_done >= max_merges:
        return "max merges"
    if planned_next == 0:
        return "top-k unchanged"
    return None
