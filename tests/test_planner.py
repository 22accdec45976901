"""Algorithm 1 and its baselines, with a deterministic stand-in evaluator (milliseconds, no I/O).

The synthetic family: every model is a vector; a merge is the mean of its parents' vectors; the
fitness is a concave function of the vector (so merging different skills helps), and kinship is
the Pearson correlation of two vectors. An independent transcription of the paper's Algorithm 1
(``reference_algorithm``) must make exactly the merges the planner makes, generation by
generation, including the exploration partner.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mergekit_kinship import planner
from mergekit_kinship.planner import (
    Candidate, PoolState, STRATEGIES, exploration_partner, plan_generation, register_strategy,
    stop_reason, top_k)


def make_family(seed=0, n=3, dim=12):
    rng = np.random.default_rng(seed)
    skills = np.eye(dim)[:n]
    # each foundation model masters one skill and has some random drift
    return {f"m{i}": skills[i] + 0.15 * rng.normal(size=dim) for i in range(n)}, skills


def fitness_of(vec, skills):
    return float(np.mean([1 - math.exp(-2 * max(vec @ s, 0.0)) for s in skills]))


def pcc(x, y):
    return float(np.corrcoef(x, y)[0, 1])


def run_planner(strategy, vectors, skills, k=3, max_generations=8, metric="pcc"):
    """Drive the planner's pure functions like the evolve loop does; return per-generation data."""
    vectors = dict(vectors)
    fitness = {m: fitness_of(v, skills) for m, v in vectors.items()}
    merged: set[frozenset[str]] = set()
    kin = (lambda a, b: pcc(vectors[a], vectors[b])) if metric == "pcc" else (
        lambda a, b: float(np.linalg.norm(vectors[a] - vectors[b])))
    history = []
    survivors = top_k(list(vectors), fitness, k)
    for generation in range(1, max_generations + 1):
        state = PoolState(models=tuple(vectors), fitness=fitness, kinship=kin, metric=metric,
                          top_k=k, generation=generation, merged=frozenset(merged))
        children = plan_generation(strategy, state)
        history.append({"state": state, "children": children, "top_before": survivors})
        for c in children:
            name = f"g{generation}-{'+'.join(c.parents)}"
            vectors[name] = (vectors[c.parents[0]] + vectors[c.parents[1]]) / 2
            fitness[name] = fitness_of(vectors[name], skills)
            merged.add(c.pair)
        new = top_k(list(vectors), fitness, k)
        history[-1]["top_after"] = new
        nxt = plan_generation(strategy, PoolState(
            models=tuple(vectors), fitness=fitness, kinship=kin, metric=metric, top_k=k,
            generation=generation + 1, merged=frozenset(merged)))
        reason = stop_reason(generation=generation, previous_top=survivors, new_top=new,
                             merges_done=len(merged), planned_next=len(nxt),
                             max_generations=max_generations, max_merges=None,
                             saturation=None, top_k_mutual_pcc=None)
        history[-1]["stopped"] = reason
        survivors = new
        if reason:
            break
    return history, vectors, fitness


def reference_algorithm(vectors, skills, k=3, max_generations=8):
    """Algorithm 1 of arXiv 2410.12613 (App. C.1), transcribed independently of the planner."""
    M = dict(vectors)
    f = {m: fitness_of(v, skills) for m, v in M.items()}
    order = list(M)
    rank = lambda: sorted(order, key=lambda m: (-f[m], order.index(m)))  # noqa: E731
    done = set()
    gens = []
    G = [(a, b) for a, b in itertools.combinations(list(M), 2)]
    for generation in range(1, max_generations + 1):
        if generation > 1:
            S = rank()[:k]
            G = [(a, b) for a, b in itertools.combinations(S, 2) if frozenset((a, b)) not in done]
            best = S[0]
            # lowest kinship to m_best over the whole pool, among pairs not merged yet
            untried = [m for m in order if m != best and frozenset((best, m)) not in done
                       and all(frozenset(p) != frozenset((best, m)) for p in G)]
            if untried:
                G.append((best, min(untried, key=lambda m: (pcc(M[best], M[m]),
                                                             order.index(m)))))
        gens.append([frozenset(p) for p in G])
        S_before = rank()[:k]
        for a, b in G:
            name = f"g{generation}-{'+'.join(_orient(a, b, f, order))}"
            M[name] = (M[a] + M[b]) / 2
            f[name] = fitness_of(M[name], skills)
            order.append(name)
            done.add(frozenset((a, b)))
        if generation > 1 and set(rank()[:k]) == set(S_before):
            break
    return gens


def _orient(a, b, f, order):
    return (a, b) if (-f[a], order.index(a)) < (-f[b], order.index(b)) else (b, a)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_kinship_strategy_is_algorithm_1(seed):
    vectors, skills = make_family(seed)
    history, _, _ = run_planner("kinship", vectors, skills)
    ours = [[c.pair for c in h["children"]] for h in history]
    assert ours == reference_algorithm(vectors, skills)
    assert len(history) >= 2  # the search went past the first generation


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_exploration_partner_is_lowest_kinship_of_whole_pool(seed):
    vectors, skills = make_family(seed)
    history, vectors_after, _ = run_planner("kinship", vectors, skills)
    explorations = outside = 0
    for h in history[1:]:
        state = h["state"]
        best = top_k(state.models, state.fitness, 1)[0]
        greedy = {c.pair for c in h["children"] if not c.exploration}
        others = [m for m in state.models if m != best
                  and frozenset((best, m)) not in state.merged | greedy]  # never merged twice
        explored = [c for c in h["children"] if c.exploration]
        assert len(explored) == (1 if others else 0)
        if explored:
            explorations += 1
            lowest = min(others, key=lambda m: (state.kinship(best, m), state.models.index(m)))
            assert explored[0].parents == (best, lowest)
            outside += lowest not in top_k(state.models, state.fitness, state.top_k)
    assert explorations >= 1
    assert outside >= 1  # the partner comes from the whole pool, not only the top-k


@pytest.mark.parametrize("strategy", ["kinship", "greedy", "random"])
def test_no_pair_is_merged_twice_and_stop_rule(strategy):
    vectors, skills = make_family(5, n=4)
    history, _, _ = run_planner(strategy, vectors, skills, max_generations=12)
    pairs = [c.pair for h in history for c in h["children"]]
    assert len(pairs) == len(set(pairs))
    last = history[-1]
    if last["stopped"] == "top-k unchanged" and last["children"]:
        assert set(last["top_after"]) == set(last["top_before"])
    for h in history[:-1]:  # the loop went on only while the top-k changed
        assert h["state"].generation == 1 or set(h["top_after"]) != set(h["top_before"])


def test_first_generation_is_every_foundation_pair_fitter_parent_first():
    vectors, skills = make_family(0, n=4)
    history, _, _ = run_planner("greedy", vectors, skills, max_generations=1)
    state, children = history[0]["state"], history[0]["children"]
    assert {c.pair for c in children} == {frozenset(p) for p in itertools.combinations(vectors, 2)}
    for c in children:
        assert state.fitness[c.parents[0]] >= state.fitness[c.parents[1]]


def test_greedy_never_explores_and_kinship_adds_one():
    vectors, skills = make_family(1)
    greedy, _, _ = run_planner("greedy", vectors, skills)
    assert not any(c.exploration for h in greedy for c in h["children"])
    kinship, _, _ = run_planner("kinship", vectors, skills)
    assert sum(c.exploration for h in kinship for c in h["children"]) >= 1


def test_random_is_seeded_and_sized_like_greedy_step():
    vectors, skills = make_family(2, n=4)
    fitness = {m: fitness_of(v, skills) for m, v in vectors.items()}
    state = dict(models=tuple(vectors), fitness=fitness, kinship=lambda a, b: 0.0, metric="pcc",
                 top_k=3, generation=2)
    a = plan_generation("random", PoolState(**state, seed=7))
    b = plan_generation("random", PoolState(**state, seed=7))
    c = plan_generation("random", PoolState(**state, seed=8))
    assert a == b and len(a) == 3
    assert len(c) == 3
    plans = {tuple(x.pair for x in plan_generation("random", PoolState(**state, seed=s)))
             for s in range(10)}
    assert len(plans) > 1  # the seed matters
    pairs = {frozenset(p) for p in itertools.combinations(vectors, 2)}
    assert all(x.pair in pairs for x in a)


@pytest.mark.parametrize("distance, similarity", [("euclidean", "pcc"), ("ed", "cosine"),
                                                   ("ED", "cs")])
def test_euclidean_partner_is_the_most_distant(distance, similarity):
    """Every name of the one metric vocabulary (mergekit_kinship.metrics), aliases included."""
    state = PoolState(models=("a", "b", "c"), fitness={"a": 0.9, "b": 0.5, "c": 0.4},
                      kinship=lambda x, y: {"ab": 1.0, "ac": 3.0, "bc": 2.0}["".join(sorted(x + y))],
                      metric=distance, top_k=2, generation=2)
    assert exploration_partner("a", state) == "c"
    similar_state = PoolState(**{**state.__dict__, "metric": similarity})
    assert exploration_partner("a", similar_state) == "b"
    merged = PoolState(**{**state.__dict__, "merged": frozenset({frozenset("ac")})})
    assert exploration_partner("a", merged) == "b"  # the least related kin not merged yet
    assert exploration_partner("a", merged, frozenset({frozenset("ab")})) is None


def test_merge_budget_truncates_keeping_greedy_pairs_first():
    vectors, skills = make_family(0)
    history, _, _ = run_planner("kinship", vectors, skills, max_generations=2)
    state = history[1]["state"]
    full = plan_generation("kinship", state)
    assert full[-1].exploration
    assert plan_generation("kinship", state, merges_left=1) == full[:1]
    assert plan_generation("kinship", state, merges_left=0) == []


def test_stop_reasons():
    common = dict(merges_done=5, planned_next=2, max_generations=10, max_merges=None,
                  saturation=None, top_k_mutual_pcc=None)
    assert stop_reason(generation=1, previous_top=["a"], new_top=["a"], **common) is None
    assert stop_reason(generation=2, previous_top=["a", "b"], new_top=["b", "a"],
                       **common) == "top-k unchanged"
    assert stop_reason(generation=2, previous_top=["a"], new_top=["c"],
                       **{**common, "saturation": 0.9, "top_k_mutual_pcc": 0.95}) == "saturation"
    assert stop_reason(generation=10, previous_top=["a"], new_top=["c"], **common) == "max generations"
    assert stop_reason(generation=3, previous_top=["a"], new_top=["c"],
                       **{**common, "max_merges": 5}) == "max merges"
    assert stop_reason(generation=3, previous_top=["a"], new_top=["c"],
                       **{**common, "planned_next": 0}) == "top-k unchanged"


def test_strategy_registry_refuses_duplicates():
    assert set(STRATEGIES) >= {"kinship", "greedy", "random"}
    with pytest.raises(ValueError, match="already registered"):
        register_strategy("kinship")(lambda state: [])
    with pytest.raises(ValueError):
        plan_generation("nope", PoolState(models=("a", "b"), fitness={"a": 1, "b": 0},
                                          kinship=lambda a, b: 0, metric="pcc", top_k=2,
                                          generation=2))


def test_planner_is_pure():
    source = open(planner.__file__).read()
    for forbidden in ("import torch", "import mergekit", "open(", "Path(", "import os"):
        assert forbidden not in source
    assert Candidate(("a", "b")).pair == frozenset("ab")
