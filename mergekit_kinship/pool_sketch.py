"""Relating a run's new models to its pool: every pair sketched, exact only where the run needs it.

Until sketches, :meth:`Pool.relate <mergekit_kinship.pool.Pool.relate>` read every model of the
pool again each generation to measure each new child against all of them. Now each model's delta
sketch (:mod:`~mergekit_kinship.sketch`) is made once, when the model is read anyway: the
foundation models in the pass that measures their kinship, each child inside its own merge (the
merge hook, :mod:`~mergekit_kinship.merge_observer`, writes ``RUN_DIR/sketches/<key>.sketch``).
A new child is then related to the whole pool from sketches, reading nothing. Exact values are
measured (:attr:`Pool.kinship_fn`) only for what the run reports or decides by:

- the foundation models' pairs (read once anyway, in the same pass as their sketches);
- each child with its parents, and the parents' pair (from the merge hook, as before);
- every pair of the top-k (the top-k mutual PCC and the saturation rule use them);
- the exploration partner: the planner takes the least related model to the best one from the
  sketched values; where the sketch cannot separate the lowest candidates (their intervals
  ``value ± bound`` overlap the lowest upper end), those candidates are measured exactly first,
  so the choice is the exact one (with the probability stated by the bound).

What each generation reads is therefore bounded by k + the unseparated candidates (plus a child
whose sketch the merge did not leave), not by the pool: the journal records every read as a
``kinship-read`` event (models, bytes, why). Sketched values are not journaled: they are
recomputed from the stored sketches. The summary's pool matrix shows them with their bounds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from mergekit_kinship.pool import Pool, PoolModel

# The run's sketch parameters: the defaults (a model smaller than 262144 weights is stored whole,
# its sketched values are exact). Benchmarks set a smaller size to exercise the bounds.
SKETCH_PARAMS = None


class PoolSketches:
    """The sketches of a pool's models and the sketched kinship between them."""

    def __init__(self, pool: "Pool"):
        from mergekit_kinship.kinship_selection import select_tensors
        from mergekit_kinship.models import open_model
        from mergekit_kinship.sketch import SketchLayout, SketchParams
        from mergekit_kinship.sketch_store import SketchStore, user_sketch_dir

        self.pool = pool
        self.params = SKETCH_PARAMS or SketchParams()
        with open_model(pool.base_folder) as base:  # headers only
            items, _ = select_tensors(base, [], [], [], None, None, None)
        self.layout = SketchLayout.cached(tuple((it.name, it.numel) for it in items), self.params)
        self.store = SketchStore([pool.rd.path / "sketches", user_sketch_dir()])
        self.sketches: dict = {}  # model id -> Sketch
        self.values: dict[str, dict[str, tuple]] = {}  # kinship key -> metric -> (value, bound)

    def key(self, model_id: str) -> str:
        from mergekit_kinship.sketch_store import sketch_key

        return sketch_key(self.pool.models[model_id].identity, self.pool.base_identity,
                          self.layout.fingerprint)

    def load(self, model_id: str) -> bool:
        """The stored sketch of a pool model (run directory, then user cache), if any."""
        if model_id not in self.sketches:
            sketch = self.store.get(self.key(model_id))
            if sketch is None or sketch.layout.fingerprint != self.layout.fingerprint:
                return False
            self.sketches[model_id] = sketch
        return True

    def keep(self, model_id: str, sketch) -> None:
        m = self.pool.models[model_id]
        sketch.meta = {"name": m.name, "model": m.identity, "base": self.pool.base_identity}
        self.sketches[model_id] = sketch
        # A folder model's sketch also serves later commands on the same family (user cache).
        self.store.put(self.key(model_id), sketch, everywhere=m.kind != "child")

    def lookup(self, a: str, b: str, metric: str) -> Optional[tuple[float, float]]:
        """(value, bound) of a pair: exact (bound 0) when measured, else sketched, else None."""
        key = self.pool._key(a, b)
        exact = self.pool.cache.kinship(key)
        if metric in exact:
            value = exact[metric]
            return None if value is None else (value, 0.0)
        return self.values.get(key, {}).get(metric)


def sketches_of(pool: "Pool") -> PoolSketches:
    ctx = getattr(pool, "sketch_context", None)
    if ctx is None:
        ctx = pool.sketch_context = PoolSketches(pool)
    return ctx


def child_sketch_job(pool: "Pool", m: "PoolModel") -> Optional[dict]:
    """What a child's unit of work needs to leave its sketch from the merge (see
    :class:`~mergekit_kinship.executors.job.ChildJob`), or None before the pool has sketches."""
    ctx = getattr(pool, "sketch_context", None)
    if ctx is None or m.kind != "child" or m.external:
        return None
    return {"path": str(ctx.store.path(ctx.key(m.id))), "params": ctx.params.to_dict(),
            "fingerprint": ctx.layout.fingerprint,
            "meta": {"name": m.name, "model": m.identity, "base": pool.base_identity}}


def relate(pool: "Pool", new_ids) -> None:
    """Relate ``new_ids`` to the pool (see the module docstring)."""
    from mergekit_kinship.pool import default_kinship

    ctx = sketches_of(pool)
    ids = list(pool.models)
    new = [i for i in new_ids if i in pool.models]
    first = not any(m.kind == "child" for m in pool.models.values())
    # 1. The foundation models' pairs, exact, measured in the pass that sketches them.
    exact = [(a, b) for a in new for b in ids if first and a != b and b in new
             and ids.index(b) < ids.index(a) and _unknown(pool, a, b)]
    unsketched = [i for i in new if not ctx.load(i)]
    if exact and pool.kinship_fn is default_kinship:
        _measure(pool, ctx, exact, sketch=unsketched, why="foundation models: kinship and sketches")
        unsketched = [i for i in new if i not in ctx.sketches]
    elif exact:
        _measure(pool, ctx, exact, why="foundation models")
    # 2. Models the merge left no sketch of (an external child, a merge without the hook).
    if unsketched:
        _measure(pool, ctx, [], sketch=unsketched, why="sketches")
    # 3. Every new model against the whole pool, from sketches: no read.
    _sketched_values(pool, ctx, new)
    # 4. What the run reports or decides by, exact.
    pairs = _top_k_pairs(pool) + _unseparated_exploration(pool, ctx, first)
    pairs = [p for p in dict.fromkeys(pairs) if _unknown(pool, *p)]
    if pairs:
        _measure(pool, ctx, pairs, why="top-k pairs and exploration candidates")


def _unknown(pool: "Pool", a: str, b: str) -> bool:
    known = pool.cache.kinship(pool._key(a, b))
    return any(m not in known for m in pool.metrics)


def _measure(pool: "Pool", ctx: PoolSketches, pairs, sketch=(), why: str = "") -> None:
    """Exact kinship of ``pairs`` (recorded in the run's cache) and the sketches of ``sketch``,
    in one pass when the pool uses the default engine; journals what was read."""
    from mergekit_kinship.materialize import weights_of
    from mergekit_kinship.pool import default_kinship

    needed = list(dict.fromkeys([m for p in pairs for m in p] + list(sketch)))
    paths = {m: weights_of(pool, m) for m in needed}
    if sketch and (not pairs or pool.kinship_fn is default_kinship):
        values = _pass(pool, ctx, paths, pairs, list(sketch))
    else:
        values = pool.kinship_fn(paths, pool.base_folder, pool.metrics, pairs) if pairs else {}
        if sketch:
            _pass(pool, ctx, {m: paths[m] for m in sketch}, [], list(sketch))
    for a, b in pairs:
        pool.cache.record_kinship(pool._key(a, b), [a, b], values[(a, b)])
    pool.rd.append({"event": "kinship-read", "why": why, "models": needed,
                    "bytes": _weight_bytes([pool.base_folder, *paths.values()]),
                    "pairs": len(pairs), "sketched": list(sketch)})


def _pass(pool: "Pool", ctx: PoolSketches, paths: dict, pairs, sketch: list) -> dict:
    """One streaming pass: exact values of ``pairs`` and the sketches of ``sketch``."""
    from mergekit_kinship.kinship_stream import run_pass

    names = list(paths)
    index = {n: i for i, n in enumerate(names)}
    run = run_pass([paths[n] for n in names], pool.base_folder, tuple(pool.metrics), None, None,
                   sorted((min(index[a], index[b]), max(index[a], index[b])) for a, b in pairs),
                   None, None, False, sketch=ctx.params, read=[index[m] for m in sketch])
    active = sorted({k for a, b in pairs for k in (index[a], index[b])} | {index[m] for m in sketch})
    for model_id in sketch:
        ctx.keep(model_id, run.sketches[active.index(index[model_id])])
    return {(a, b): {m: run.value(m, index[a], index[b]) for m in pool.metrics} for a, b in pairs}


def _sketched_values(pool: "Pool", ctx: PoolSketches, new: list[str]) -> None:
    import math

    from mergekit_kinship.sketch_estimates import estimates

    ids = [i for i in pool.models if i in ctx.sketches]
    rows = [ids.index(i) for i in new if i in ctx.sketches]
    if not rows or len(ids) < 2:
        return
    metrics = [m for m in pool.metrics if m != "sign_conflict" or ctx.params.signs > 0]
    result = estimates([ctx.sketches[i] for i in ids], metrics, rows=rows)
    for r, i in enumerate(rows):
        for j, other in enumerate(ids):
            if other == ids[i]:
                continue
            entry = ctx.values.setdefault(pool._key(ids[i], other), {})
            for metric, (value, bound) in result.items():
                v, b = float(value[r, j]), float(bound[r, j])
                entry[metric] = None if math.isnan(v) else (v, b)


def _top_k_pairs(pool: "Pool") -> list[tuple[str, str]]:
    top = pool.top_k()
    return [(a, b) for i, a in enumerate(top) for b in top[i + 1:]]


def _unseparated_exploration(pool: "Pool", ctx: PoolSketches, first: bool) -> list[tuple[str, str]]:
    """The (best, candidate) pairs the next exploration merge cannot choose between from
    sketches: candidates whose interval reaches below the lowest upper end (in relatedness)."""
    from mergekit_kinship.metrics import relatedness
    from mergekit_kinship.planner import greedy_step, top_k

    if first or pool.recipe.strategy != "kinship" or len(pool.models) < 2:
        return []  # the next generation is G1 (every foundation pair), or no exploration
    state = pool.state(0)
    best = top_k(state.models, state.fitness, 1)[0]
    taken = state.merged | {c.pair for c in greedy_step(state)}
    intervals = []
    for m in state.models:
        if m == best or frozenset((best, m)) in taken:
            continue
        found = ctx.lookup(best, m, pool.metric)
        if found is None:
            intervals.append((float("-inf"), float("inf"), m))
            continue
        r = relatedness(pool.metric, found[0])
        intervals.append((r - found[1], r + found[1], m))
    if len(intervals) < 2:
        return []
    lowest_upper = min(hi for _, hi, _ in intervals)
    close = [m for lo, _, m in intervals if lo <= lowest_upper]
    return [(best, m) for m in close] if len(close) > 1 else []


def _weight_bytes(folders) -> int:
    total = 0
    for folder in dict.fromkeys(str(f) for f in folders):
        for f in Path(folder).iterdir():
            if f.is_file() and f.suffix in (".safetensors", ".bin"):
                total += f.stat().st_size
    return total


def planning_value(pool: "Pool", a: str, b: str, metric: Optional[str] = None) -> Optional[float]:
    """The value the planner sees: exact when measured, else the sketched one."""
    ctx = getattr(pool, "sketch_context", None)
    if ctx is None:
        return pool.kinship(a, b, metric)
    found = ctx.lookup(a, b, metric or pool.metric)
    return None if found is None else found[0]


def bound_of(pool: "Pool", a: str, b: str, metric: Optional[str] = None) -> Optional[float]:
    """The bound of :func:`planning_value` (None for an exact value or an unknown one)."""
    ctx = getattr(pool, "sketch_context", None)
    if ctx is None:
        return None
    found = ctx.lookup(a, b, metric or pool.metric)
    return found[1] if found is not None and found[1] > 0 else None
